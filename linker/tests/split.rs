//! Every protocol scenario against a split deployment: two `linker connector` and two
//! `linker processor` processes on the real NATS, Kafka, Redis and MongoDB that
//! `scripts/services.sh` runs. Clients of one scenario are spread over both connectors.

use std::path::Path;

use testkit::Split;

async fn split() -> anyhow::Result<Split> {
    Split::start(Path::new(env!("CARGO_BIN_EXE_linker"))).await
}

testkit::every_scenario!(split());
