//! The `linker` process itself: durability across SIGKILL, clean exit on SIGTERM, and a bad
//! config refused at start with the field and exit code 64.

use std::path::Path;

use serde_json::json;
use testkit::{Client, Deployment, Embedded, unique_user};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_linker"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reliable_message_survives_sigkill_and_is_fetched_once() {
    let mut d = Embedded::start(bin()).await.unwrap();
    let (a_id, b_id) = (unique_user(), unique_user());
    let mut a = Client::login(&d.ws_url(0), &a_id).await.unwrap();
    a.message(&b_id, "survives a crash", "RELIABLE", Some("dur-1"))
        .await
        .unwrap();
    // One sender's envelopes are handled in order: once this comes back, the message above
    // is in the store.
    a.sync().await.unwrap();
    d.kill().await.unwrap();
    d.restart().await.unwrap();

    let mut b = Client::login(&d.ws_url(0), &b_id).await.unwrap();
    b.send(&json!({"type":"FETCH_MISSING_MESSAGES_REQUEST","data":{"count":10}}))
        .await
        .unwrap();
    let m = b.expect("MESSAGE").await.unwrap();
    assert_eq!(
        m,
        json!({"type":"MESSAGE","data":{"from":a_id,"content":"survives a crash"},"reference":"dur-1"})
    );
    let done = b.expect("FETCH_MISSING_MESSAGES_COMPLETE").await.unwrap();
    assert_eq!(done["data"]["leftMissingCount"], 0);
    // Once: a second fetch finds nothing.
    b.send(&json!({"type":"FETCH_MISSING_MESSAGES_REQUEST","data":{"count":10}}))
        .await
        .unwrap();
    let done = b.expect("FETCH_MISSING_MESSAGES_COMPLETE").await.unwrap();
    assert_eq!(done["data"]["leftMissingCount"], 0);
    // The sender was offline when it was delivered: its confirmation waits in the store.
    let mut a = Client::login(&d.ws_url(0), &a_id).await.unwrap();
    a.send(&json!({"type":"FETCH_MISSING_MESSAGES_REQUEST","data":{"count":10}}))
        .await
        .unwrap();
    let c = a.expect("MESSAGE_CONFIRMATION").await.unwrap();
    assert_eq!(c["data"]["reference"], "dur-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_clients_with_going_away_and_exits_cleanly() {
    let mut d = Embedded::start(bin()).await.unwrap();
    let mut c = Client::login(&d.ws_url(0), &unique_user()).await.unwrap();
    let code = d.terminate().await.unwrap();
    assert_eq!(code, Some(0), "{}", d.log_tail());
    match c.ended().await.unwrap() {
        (testkit::client::Ended::Closed(Some(f)), _) => assert_eq!(u16::from(f.code), 1001),
        other => panic!("expected close 1001, got {other:?}"),
    }
}

#[test]
fn a_bad_config_is_refused_at_start_with_the_field_and_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "domains:\n  - name: domain-01\ndomainLinks:\n  - n1: domain-01\n    n2: domain-09\n",
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["domain", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("domainLinks[0].n2"), "{stderr}");
    assert!(stderr.contains("domain-09"), "{stderr}");

    std::fs::write(&file, "linker:\n  connector:\n    max_frame_bytez: 5\n").unwrap();
    let out = std::process::Command::new(bin())
        .args(["domain", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("max_frame_bytez"), "{stderr}");
}
