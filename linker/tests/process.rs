//! The `linker` process itself: durability across SIGKILL (a crash in the middle of a fetch or
//! of a resume loses nothing, and resends nothing acknowledged), clean exit on SIGTERM, and a
//! bad config refused at start with the field and exit code 64.

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

/// Sends `n` RELIABLE messages `c000..` from a fresh sender to `to` (offline), so they are
/// stored; returns once they are.
async fn store_for(d: &Embedded, to: &str, n: usize) -> Vec<String> {
    let mut a = Client::login(&d.ws_url(0), &unique_user()).await.unwrap();
    let sent: Vec<String> = (0..n).map(|i| format!("c{i:03}")).collect();
    for c in &sent {
        a.message(to, c, "RELIABLE", None).await.unwrap();
    }
    a.sync().await.unwrap();
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_in_the_middle_of_a_fetch_loses_nothing() {
    let mut d = Embedded::start(bin()).await.unwrap();
    let b_id = unique_user();
    let sent = store_for(&d, &b_id, 300).await;
    let mut b = Client::login(&d.ws_url(0), &b_id).await.unwrap();
    b.send(&json!({"type":"FETCH_MISSING_MESSAGES_REQUEST","data":{"count":300}}))
        .await
        .unwrap();
    let mut got = std::collections::HashSet::new();
    for _ in 0..50 {
        let f = b.expect("MESSAGE").await.unwrap();
        got.insert(f["data"]["content"].as_str().unwrap().to_owned());
    }
    d.kill().await.unwrap();
    d.restart().await.unwrap();
    let mut b = Client::login(&d.ws_url(0), &b_id).await.unwrap();
    b.send(&json!({"type":"FETCH_MISSING_MESSAGES_REQUEST","data":{"count":2000}}))
        .await
        .unwrap();
    let mut after = 0;
    loop {
        let f = b.next().await.unwrap();
        if f["type"] == "FETCH_MISSING_MESSAGES_COMPLETE" {
            assert_eq!(f["data"]["leftMissingCount"], 0);
            break;
        }
        after += 1;
        got.insert(f["data"]["content"].as_str().unwrap().to_owned());
    }
    println!(
        "before the crash 50, after it {after}, distinct {}",
        got.len()
    );
    let lost: Vec<_> = sent.iter().filter(|c| !got.contains(*c)).collect();
    assert!(lost.is_empty(), "lost {lost:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_in_the_middle_of_a_resume_loses_nothing_and_resends_nothing_acknowledged() {
    let mut d = Embedded::start(bin()).await.unwrap();
    let b_id = unique_user();
    let sent = store_for(&d, &b_id, 300).await;
    let mut b = Client::login_ack(&d.ws_url(0), &b_id).await.unwrap();
    let mut acked = std::collections::HashSet::new();
    for _ in 0..50 {
        let f = b.expect("MESSAGE").await.unwrap();
        b.ack(&[&f]).await.unwrap();
        acked.insert(f["data"]["content"].as_str().unwrap().to_owned());
    }
    // The acknowledgements are handled before this barrier comes back (one sender's frames
    // are handled in order); the rest of the resume may still be arriving meanwhile.
    let mut seen = acked.clone();
    for f in b.sync().await.unwrap() {
        if f["type"] == "MESSAGE" {
            seen.insert(f["data"]["content"].as_str().unwrap().to_owned());
        }
    }
    d.kill().await.unwrap();
    d.restart().await.unwrap();
    let mut b = Client::login_ack(&d.ws_url(0), &b_id).await.unwrap();
    let mut resent = Vec::new();
    loop {
        let f = b.next().await.unwrap();
        if f["type"] == "RESUME_COMPLETE" {
            break;
        }
        let c = f["data"]["content"].as_str().unwrap().to_owned();
        if !c.starts_with("sync-") {
            resent.push(c);
        }
    }
    println!(
        "acknowledged before the crash {}, resent after it {}",
        acked.len(),
        resent.len()
    );
    let again: Vec<_> = resent.iter().filter(|c| acked.contains(*c)).collect();
    assert!(again.is_empty(), "acknowledged and sent again: {again:?}");
    let mut sorted = resent.clone();
    sorted.sort();
    assert_eq!(resent, sorted, "resent in order");
    seen.extend(resent);
    let lost: Vec<_> = sent.iter().filter(|c| !seen.contains(*c)).collect();
    assert!(lost.is_empty(), "lost {lost:?}");
}
