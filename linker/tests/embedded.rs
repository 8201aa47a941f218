//! Every protocol scenario against `linker domain` (the embedded defaults), one process per
//! test, over real sockets.

use std::path::Path;

use testkit::Embedded;

async fn domain() -> anyhow::Result<Embedded> {
    Embedded::start(Path::new(env!("CARGO_BIN_EXE_linker"))).await
}

testkit::every_scenario!(domain());
