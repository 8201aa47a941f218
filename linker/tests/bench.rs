//! `linker-bench` against the real `linker domain` binary: a short self-echo run per feature,
//! a pairs run and broadcasts (GROUP_MESSAGE and one channel), each of which must get every
//! measured message back exactly once.
//!
//! It lives in `linker/tests/` because only this crate's tests know where the `linker`
//! binary is; the bench is a library of `test-script`. No assertion is on timings.

use std::path::Path;

use clap::Parser;
use test_script::bench::{self, Options, Summary};
use testkit::{Deployment, Embedded};

async fn domain() -> anyhow::Result<Embedded> {
    Embedded::start(Path::new(env!("CARGO_BIN_EXE_linker"))).await
}

async fn bench_against(server: &Embedded, args: &[&str]) -> anyhow::Result<Summary> {
    let url = server.ws_url(0);
    let mut all = vec![
        "linker-bench",
        "--targets",
        &url,
        "--connections",
        "20",
        "--interval-ms",
        "100",
        "--size",
        "1000",
        "--connect-rate",
        "200",
        "--warmup-secs",
        "1",
        "--duration-secs",
        "2",
        "--drain-secs",
        "10",
        "--quiet",
    ];
    all.extend_from_slice(args);
    bench::run(Options::try_parse_from(all)?).await
}

fn assert_everything_arrived_once(s: &Summary, server: &Embedded) {
    let context = format!("{s}\n{}", server.diagnostics());
    assert_eq!(s.connected, 20, "{context}");
    assert!(s.sent > 0, "{context}");
    assert_eq!(s.lost, 0, "{context}");
    assert_eq!(s.duplicated, 0, "{context}");
    assert_eq!(s.received, s.sent, "{context}");
    assert_eq!(s.unknown, 0, "{context}");
    assert_eq!(s.errors.total(), 0, "{context}");
    assert_eq!(s.latency.count, s.received, "{context}");
}

#[tokio::test(flavor = "multi_thread")]
async fn self_echo_gets_every_message_back_once_fast_and_reliable() -> anyhow::Result<()> {
    let server = domain().await?;
    // Each run has its own users, so the first run's closing sockets never meet the second's.
    for (feature, users) in [("FAST", "1000000"), ("RELIABLE", "1100000")] {
        let s = bench_against(&server, &["--feature", feature, "--user-base", users]).await?;
        assert_everything_arrived_once(&s, &server);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn pairs_get_every_message_of_their_partner_once() -> anyhow::Result<()> {
    let server = domain().await?;
    let s = bench_against(
        &server,
        &[
            "--workload",
            "pairs",
            "--feature",
            "RELIABLE",
            "--user-base",
            "2000000",
        ],
    )
    .await?;
    assert_everything_arrived_once(&s, &server);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn broadcast_copies_reach_every_subscriber_once_and_connections_stay_idle()
-> anyhow::Result<()> {
    let server = domain().await?;
    for (feature, users) in [("FAST", "3000000"), ("RELIABLE", "3100000")] {
        let s = bench_against(
            &server,
            &[
                "--workload",
                "broadcast",
                "--publishers",
                "3",
                "--subscribers",
                "25",
                "--feature",
                feature,
                "--user-base",
                users,
            ],
        )
        .await?;
        let context = format!("{s}\n{}", server.diagnostics());
        assert_eq!(s.connected, 28, "{context}");
        // One GROUP_MESSAGE per publisher, one copy per subscriber.
        assert_eq!(s.sent, 3 * 25, "{context}");
        assert_eq!(s.received, s.sent, "{context}");
        assert_eq!((s.lost, s.duplicated, s.unknown), (0, 0, 0), "{context}");
        assert_eq!(s.errors.total(), 0, "{context}");
        assert_eq!(s.latency.count, s.received, "{context}");
    }
    let s = bench_against(
        &server,
        &["--workload", "connections", "--user-base", "3200000"],
    )
    .await?;
    assert_eq!(s.connected, 20, "{s}");
    assert_eq!(s.sent_total, 0, "{s}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn broadcast_through_one_channel_reaches_every_subscriber_once() -> anyhow::Result<()> {
    let server = domain().await?;
    for (feature, users) in [("FAST", "3300000"), ("RELIABLE", "3400000")] {
        let s = bench_against(
            &server,
            &[
                "--workload",
                "broadcast",
                "--channel",
                "--publishers",
                "3",
                "--subscribers",
                "25",
                "--feature",
                feature,
                "--user-base",
                users,
            ],
        )
        .await?;
        let context = format!("{s}\n{}", server.diagnostics());
        assert!(s.channel, "{context}");
        assert_eq!(s.connected, 28, "{context}");
        // One CHANNEL_MESSAGE per publisher, one copy per member (publishers did not join).
        assert_eq!(s.sent, 3 * 25, "{context}");
        assert_eq!(s.received, s.sent, "{context}");
        assert_eq!((s.lost, s.duplicated, s.unknown), (0, 0, 0), "{context}");
        assert_eq!(s.errors.total(), 0, "{context}");
    }
    Ok(())
}
