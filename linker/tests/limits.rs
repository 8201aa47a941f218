//! The limits hold, and the client is told why: frame rate, connections per address and in
//! total, idle sockets, slow readers, and the processor's per-user bound of kept messages.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use testkit::client::Ended;
use testkit::{Client, Deployment, Embedded, EmbeddedOptions, http_get, metric, unique_user};

async fn domain(extra: &str) -> Embedded {
    domain_with(extra, EmbeddedOptions::default()).await
}

async fn domain_with(extra: &str, options: EmbeddedOptions) -> Embedded {
    let options = EmbeddedOptions {
        extra_connector_yaml: extra.into(),
        ..options
    };
    Embedded::start_with(Path::new(env!("CARGO_BIN_EXE_linker")), options)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_over_the_rate_are_refused_then_the_socket_is_closed() {
    let options = EmbeddedOptions {
        max_bad_frames: 3,
        ..EmbeddedOptions::default()
    };
    let d = domain_with("    max_frames_per_sec: 2\n    frame_burst: 5\n", options).await;
    let mut c = Client::login(&d.ws_url(0), &unique_user()).await.unwrap();
    let me = c.user.clone();
    // The burst of 5: AUTH_CLIENT, two messages and the sync's two messages all go through.
    for i in 0..2 {
        c.message(&me, &format!("m{i}"), "FAST", None)
            .await
            .unwrap();
    }
    let echoed = c.sync().await.unwrap();
    assert_eq!(echoed.len(), 2, "{echoed:?}");
    // Then the rate (2/s): a quick stream of frames is refused, each with an answer, until
    // the bad-frame limit (3) is passed.
    for i in 0..20 {
        let _ = c.message(&me, &format!("n{i}"), "FAST", None).await;
    }
    let (end, seen) = c.ended().await.unwrap();
    let limited = seen
        .iter()
        .filter(|f| f["type"] == "INVALID_MESSAGE" && f["data"]["reason"] == "RATE_LIMITED")
        .count();
    assert_eq!(limited, 4, "{seen:?}");
    match end {
        Ended::Closed(Some(f)) => {
            assert_eq!(u16::from(f.code), 1008);
            assert!(f.reason.contains("rate"), "{f:?}");
        }
        other => panic!("expected close 1008, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_per_address_and_in_total() {
    let d = domain("    max_connections_per_ip: 3\n    max_connections: 100\n").await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(Client::connect(&d.ws_url(0)).await.unwrap());
    }
    let refused = Client::connect(&d.ws_url(0))
        .await
        .err()
        .expect("fourth refused");
    assert!(format!("{refused:#}").contains("503"), "{refused:#}");
    open.pop().unwrap().close().await;
    // The slot comes back once the server has seen the close.
    let mut again = None;
    for _ in 0..50 {
        if let Ok(c) = Client::connect(&d.ws_url(0)).await {
            again = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        again.is_some(),
        "a slot is given back when a connection ends"
    );

    let d = domain("    max_connections_per_ip: 100\n    max_connections: 2\n").await;
    let _a = Client::connect(&d.ws_url(0)).await.unwrap();
    let _b = Client::connect(&d.ws_url(0)).await.unwrap();
    let refused = Client::connect(&d.ws_url(0))
        .await
        .err()
        .expect("third refused");
    assert!(format!("{refused:#}").contains("503"), "{refused:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_socket_is_closed_and_one_that_answers_pings_is_not() {
    let d = domain("    ping_interval_ms: 200\n    idle_timeout_ms: 700\n").await;
    let mut silent = Client::login(&d.ws_url(0), &unique_user()).await.unwrap();
    let mut alive = Client::login(&d.ws_url(0), &unique_user()).await.unwrap();
    // `alive` keeps reading, so its client answers the server's pings; `silent` reads nothing
    // (and so sends no pong) until it looks for the close.
    let watching = tokio::time::timeout(Duration::from_millis(1500), alive.ended()).await;
    assert!(watching.is_err(), "a socket that answers pings stays open");
    // The close frame may be lost behind the pongs `silent` tries to send to a closed socket:
    // the socket ends either way, and the server counts why.
    if let (Ended::Closed(Some(f)), _) = silent.ended().await.unwrap() {
        assert_eq!(u16::from(f.code), 4002);
        assert!(f.reason.contains("idle"), "{f:?}");
    }
    let (_, text) = http_get(&d.metrics_addrs()[0], "/metrics").await.unwrap();
    assert_eq!(
        metric(&text, "linker_connector_idle_closed_total", &[]),
        1.0,
        "{text}"
    );
    alive.sync().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_cut_off_while_others_keep_receiving() {
    let d = domain(
        "    outbound_queue: 4\n    slow_reader_timeout_ms: 300\n    max_frames_per_sec: 0\n",
    )
    .await;
    let (slow_id, other_id) = (unique_user(), unique_user());
    let mut slow = Client::login(&d.ws_url(0), &slow_id).await.unwrap();
    let mut other = Client::login(&d.ws_url(0), &other_id).await.unwrap();
    let mut sender = Client::login(&d.ws_url(0), &unique_user()).await.unwrap();
    let big = "x".repeat(60_000);
    let metrics = d.metrics_addrs()[0].clone();
    let mut cut_off = false;
    // Bounded: at most 2000 frames (120 MB offered; the queue holds 4).
    for i in 0..2000 {
        sender
            .send(&json!({"type":"MESSAGE","feature":"FAST","data":{"to":slow_id,"content":big}}))
            .await
            .unwrap();
        if i % 50 == 49 {
            // Others are not held up by the slow reader.
            sender
                .message(&other_id, "still here", "FAST", None)
                .await
                .unwrap();
            let m = other.expect("MESSAGE").await.unwrap();
            assert_eq!(m["data"]["content"], "still here");
            let (_, text) = http_get(&metrics, "/metrics").await.unwrap();
            if metric(&text, "linker_connector_slow_reader_closed_total", &[]) >= 1.0 {
                cut_off = true;
                break;
            }
        }
    }
    assert!(cut_off, "the slow reader was never closed");
    let (_, text) = http_get(&metrics, "/metrics").await.unwrap();
    assert!(
        metric(
            &text,
            "linker_connector_queue_full_total",
            &["feature=\"fast\""]
        ) >= 1.0,
        "FAST frames past the queue are dropped and counted"
    );
    // The slow reader's socket ends (what was already in flight may still be read first).
    let (end, _) = slow.ended().await.unwrap();
    if let Ended::Closed(Some(f)) = end {
        assert_eq!(u16::from(f.code), 4003, "{f:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_per_user_bound_the_sender_is_told_inbox_full() {
    // The processor section follows the connector's extra lines.
    let d = domain("  processor:\n    max_kept_per_user: 3\n").await;
    let (a_id, b_id) = (unique_user(), unique_user());
    let mut a = Client::login(&d.ws_url(0), &a_id).await.unwrap();
    for i in 0..4 {
        a.message(&b_id, &format!("k{i}"), "RELIABLE", Some(&format!("r{i}")))
            .await
            .unwrap();
    }
    let e = a.expect("GENERAL_ERROR").await.unwrap();
    assert_eq!(e["data"]["reason"], "INBOX_FULL", "{e}");
    assert_eq!(e["reference"], "r3", "{e}");
    let mut b = Client::login(&d.ws_url(0), &b_id).await.unwrap();
    b.send(&json!({"type":"FETCH_MISSING_MESSAGES_REQUEST","data":{"count":10}}))
        .await
        .unwrap();
    let mut got = Vec::new();
    loop {
        let f = b.next().await.unwrap();
        if f["type"] == "FETCH_MISSING_MESSAGES_COMPLETE" {
            break;
        }
        got.push(f["data"]["content"].clone());
    }
    assert_eq!(got, [json!("k0"), json!("k1"), json!("k2")]);
    let (status, body) = http_get(&d.page_addr(), "/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(metric(&body, "linker_inbox_full_total", &[]), 1.0);
}
