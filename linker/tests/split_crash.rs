//! Crash tests of a split deployment under a steady RELIABLE load: a processor SIGKILLed
//! mid-stream loses nothing and duplicates nothing; a SIGKILLed connector's users get what
//! was sent to them once they reconnect elsewhere. Every message carries a unique id and is
//! counted.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde_json::json;
use testkit::{Client, Deployment, Split, SplitOptions, unique_user};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_linker"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_killed_mid_stream_loses_and_duplicates_nothing() {
    let mut d = Split::start(bin()).await.unwrap();
    let (a_id, b_id) = (unique_user(), unique_user());
    let mut a = Client::login(&d.ws_url(0), &a_id).await.unwrap();
    let mut b = Client::login(&d.ws_url(1), &b_id).await.unwrap();
    const TOTAL: usize = 300;
    let receiver = tokio::spawn(async move {
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut order = Vec::new();
        while seen.len() < TOTAL {
            let f = match b.next().await {
                Ok(f) => f,
                Err(_) => break, // nothing more within the wait
            };
            if f["type"] == "MESSAGE" {
                let c = f["data"]["content"].as_str().unwrap_or_default().to_owned();
                order.push(c.clone());
                *seen.entry(c).or_default() += 1;
            }
        }
        // Anything late (a duplicate) would show up in a barrier round trip.
        let extra = b.sync().await.unwrap_or_default();
        (seen, order, extra)
    });
    for i in 0..TOTAL {
        a.message(&b_id, &format!("m{i:04}"), "RELIABLE", None)
            .await
            .unwrap();
        if i == TOTAL / 3 {
            d.processors[0].kill().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (seen, order, extra) = receiver.await.unwrap();
    let lost: Vec<_> = (0..TOTAL)
        .map(|i| format!("m{i:04}"))
        .filter(|c| !seen.contains_key(c))
        .collect();
    let duplicated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    println!(
        "sent {TOTAL}, received {}, lost {}, duplicated {}",
        order.len(),
        lost.len(),
        duplicated.len()
    );
    assert!(lost.is_empty(), "lost {lost:?}\n{}", d.diagnostics());
    assert!(duplicated.is_empty(), "duplicated {duplicated:?}");
    assert!(extra.iter().all(|f| f["type"] != "MESSAGE"), "{extra:?}");
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "one sender's messages arrive in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_connectors_users_fetch_what_was_sent_to_them_elsewhere() {
    let options = SplitOptions {
        presence_ttl_ms: 2_000,
        ..SplitOptions::default()
    };
    let mut d = Split::start_with(bin(), options).await.unwrap();
    let (a_id, b_id) = (unique_user(), unique_user());
    let mut a = Client::login(&d.ws_url(0), &a_id).await.unwrap();
    let _b = Client::login(&d.ws_url(1), &b_id).await.unwrap();
    d.connectors[1].kill().await.unwrap();
    for i in 0..20 {
        a.message(&b_id, &format!("k{i:02}"), "RELIABLE", None)
            .await
            .unwrap();
    }
    a.sync().await.unwrap();
    let mut b = Client::login(&d.ws_url(0), &b_id).await.unwrap();
    b.send(&json!({"type":"FETCH_MISSING_MESSAGES_REQUEST","data":{"count":100}}))
        .await
        .unwrap();
    let mut got = Vec::new();
    loop {
        let f = b.next().await.unwrap();
        if f["type"] == "FETCH_MISSING_MESSAGES_COMPLETE" {
            assert_eq!(f["data"]["leftMissingCount"], 0);
            break;
        }
        got.push(f["data"]["content"].as_str().unwrap_or_default().to_owned());
    }
    let expected: Vec<_> = (0..20).map(|i| format!("k{i:02}")).collect();
    assert_eq!(got, expected, "{}", d.diagnostics());
}
