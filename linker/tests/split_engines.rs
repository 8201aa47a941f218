//! A split deployment (2 connectors, 2 processors) under a steady RELIABLE stream between users
//! on different connectors, while Kafka and then Redis are stopped and started again through
//! `scripts/services.sh` (testkit's `StoppedEngine`, which brings an engine back however the
//! test ends).
//!
//! What it shows: a message sent while an engine was down either got a `GENERAL_ERROR` naming
//! the reason or arrived; once the engines are back, every message whose send was accepted
//! arrives exactly once (counted by content id, live or by fetch); no linker process exited or
//! was restarted. Every wait is a bounded poll.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::{Client, Deployment, Split, StoppedEngine, unique_user};
use tokio::sync::watch;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_linker"))
}

/// Pause between two messages of one sender (the sender reads its replies meanwhile).
const PACE: Duration = Duration::from_millis(50);
/// Longest wait for any one phase (the stream to flow, an error to show, recovery).
const PHASE: Duration = Duration::from_secs(60);
/// A receiver that got nothing for this long fetches what was stored for it.
const QUIET: Duration = Duration::from_secs(3);

/// One sender -> receiver stream. Content ids are `<name>-<seq>`; `seq` counts up.
struct Pair {
    name: &'static str,
    sent: AtomicU64,
    /// Highest `seq` the receiver has seen.
    received: AtomicU64,
}

impl Pair {
    fn new(name: &'static str) -> Arc<Pair> {
        Arc::new(Pair {
            name,
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
        })
    }

    fn id(&self, seq: u64) -> String {
        format!("{}-{seq:06}", self.name)
    }

    fn seq(&self, id: &str) -> Option<u64> {
        id.strip_prefix(self.name)?.strip_prefix('-')?.parse().ok()
    }
}

/// What a sender saw of its own messages.
#[derive(Default)]
struct SenderLog {
    sent: Vec<String>,
    /// Content id -> the `reason` of the `GENERAL_ERROR` that refused it.
    refused: HashMap<String, String>,
    confirmed: HashSet<String>,
    unexpected: Vec<Value>,
    /// The end marker did not come back within `PHASE`.
    stuck: bool,
}

impl SenderLog {
    fn record(&mut self, frame: Value, errors: &AtomicUsize) {
        let reference = frame["reference"].as_str().map(str::to_owned);
        match (frame["type"].as_str(), reference) {
            (Some("GENERAL_ERROR"), Some(r)) => {
                errors.fetch_add(1, Ordering::Relaxed);
                let reason = frame["data"]["reason"].as_str().unwrap_or_default();
                self.refused.insert(r, reason.to_owned());
            }
            (Some("MESSAGE_CONFIRMATION"), _) => {
                if let Some(r) = frame["data"]["reference"].as_str() {
                    self.confirmed.insert(r.to_owned());
                }
            }
            _ => self.unexpected.push(frame),
        }
    }
}

/// Sends a RELIABLE message every `PACE` until `stop`, reading replies in between; then a
/// barrier, after which every refusal of what it sent has arrived.
async fn send_until(
    mut c: Client,
    to: String,
    pair: Arc<Pair>,
    stop: Arc<AtomicBool>,
    errors: Arc<AtomicUsize>,
) -> (Client, SenderLog) {
    let mut log = SenderLog::default();
    while !stop.load(Ordering::Relaxed) {
        let seq = pair.sent.fetch_add(1, Ordering::Relaxed) + 1;
        let id = pair.id(seq);
        c.message(&to, &id, "RELIABLE", Some(&id))
            .await
            .expect("the socket stays open");
        log.sent.push(id);
        let until = Instant::now() + PACE;
        while let Ok(Ok(frame)) = tokio::time::timeout_at(until.into(), c.next()).await {
            log.record(frame, &errors);
        }
    }
    log.stuck = !barrier(&mut c, &format!("{}-sent", pair.name), |f| {
        log.record(f, &errors)
    })
    .await;
    (c, log)
}

/// Sends a RELIABLE marker to oneself, which is handled after everything the client sent
/// before it, and hands every other frame to `frame` until it comes back; false if it did not
/// within `PHASE`.
async fn barrier(c: &mut Client, marker: &str, mut frame: impl FnMut(Value)) -> bool {
    let me = c.user.clone();
    c.message(&me, marker, "RELIABLE", None)
        .await
        .expect("the socket stays open");
    let deadline = Instant::now() + PHASE;
    loop {
        match tokio::time::timeout_at(deadline.into(), c.next()).await {
            Ok(Ok(f)) if f["data"]["content"] == json!(marker) => return true,
            Ok(Ok(f)) => frame(f),
            Ok(Err(_)) => {}
            Err(_) => return false,
        }
    }
}

/// Counts the sender's messages by content id, live, until every id of `expected` (once it is
/// known) has arrived or `PHASE` has passed; then fetches what was stored, and finishes with a
/// barrier so a late duplicate would be counted too.
async fn receive(
    mut c: Client,
    from: String,
    pair: Arc<Pair>,
    mut expected: watch::Receiver<Option<HashSet<String>>>,
) -> Received {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let count = |frame: &Value, seen: &mut HashMap<String, usize>| {
        if frame["type"] == "MESSAGE" && frame["data"]["from"] == json!(from) {
            let id = frame["data"]["content"].as_str().unwrap_or_default();
            if let Some(seq) = pair.seq(id) {
                pair.received.fetch_max(seq, Ordering::Relaxed);
            }
            *seen.entry(id.to_owned()).or_default() += 1;
        }
    };
    let mut deadline: Option<Instant> = None;
    let mut last_frame = Instant::now();
    loop {
        if let Some(want) = expected.borrow_and_update().as_ref() {
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + PHASE);
            let all = want.iter().all(|id| seen.contains_key(id));
            // What is still missing may be stored (its user looked offline while presence
            // was being rebuilt): once nothing has come for a while, fetch it.
            if all || Instant::now() > deadline || last_frame.elapsed() > QUIET {
                break;
            }
        }
        match tokio::time::timeout(Duration::from_millis(100), c.next()).await {
            Ok(Ok(frame)) => {
                last_frame = Instant::now();
                count(&frame, &mut seen)
            }
            Ok(Err(e)) => panic!("receiver socket: {e}"),
            Err(_) => {}
        }
    }
    let mut fetched = 0;
    for round in 0.. {
        let reference = format!("fetch-{round}");
        c.send(
            &json!({"type":"FETCH_MISSING_MESSAGES_REQUEST","reference":reference,
                       "data":{"count":2000}}),
        )
        .await
        .expect("fetch sent");
        let left = loop {
            let frame = c.next().await.expect("fetch answers");
            if frame["type"] == "FETCH_MISSING_MESSAGES_COMPLETE" && frame["reference"] == reference
            {
                break frame["data"]["leftMissingCount"].as_u64().unwrap_or(0);
            }
            if frame["type"] == "MESSAGE" {
                fetched += 1;
            }
            count(&frame, &mut seen);
        };
        if left == 0 || round >= 10 {
            break;
        }
    }
    // Anything late (a duplicate) shows up before a round trip of the receiver's own.
    let back = barrier(&mut c, &format!("{}-received", pair.name), |f| {
        count(&f, &mut seen)
    })
    .await;
    Received {
        seen,
        fetched,
        stuck: !back,
    }
}

/// What a receiver counted.
struct Received {
    /// Content id -> how often it arrived.
    seen: HashMap<String, usize>,
    fetched: usize,
    /// Its own marker did not come back within `PHASE`.
    stuck: bool,
}

/// Polls until `done()` or `PHASE` passes; returns how long it took, or panics with `what`.
async fn wait_for(what: &str, done: impl Fn() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < PHASE, "{what}: not within {PHASE:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

async fn stop(engine: &'static str) -> StoppedEngine {
    tokio::task::spawn_blocking(move || StoppedEngine::stop(engine))
        .await
        .expect("stop task")
        .unwrap_or_else(|e| panic!("stop {engine}: {e:#}"))
}

async fn start(engine: StoppedEngine) {
    tokio::task::spawn_blocking(move || engine.start())
        .await
        .expect("start task")
        .expect("the engine is back up");
}

/// Waits until every pair's receiver has a message sent after this moment.
async fn flowing_again(what: &str, pairs: &[Arc<Pair>]) -> Duration {
    let marks: Vec<u64> = pairs
        .iter()
        .map(|p| p.sent.load(Ordering::Relaxed))
        .collect();
    wait_for(what, || {
        pairs
            .iter()
            .zip(&marks)
            .all(|(p, mark)| p.received.load(Ordering::Relaxed) > *mark)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_across_connectors_survives_kafka_and_redis_restarts() {
    let mut d = Split::start(bin()).await.unwrap();
    // a on connector 1 -> b on connector 2, and c on connector 2 -> e on connector 1.
    let ids: Vec<String> = (0..4).map(|_| unique_user()).collect();
    let a = Client::login(&d.ws_url(0), &ids[0]).await.unwrap();
    let b = Client::login(&d.ws_url(1), &ids[1]).await.unwrap();
    let c = Client::login(&d.ws_url(1), &ids[2]).await.unwrap();
    let e = Client::login(&d.ws_url(0), &ids[3]).await.unwrap();
    let pairs = [Pair::new("ab"), Pair::new("ce")];
    let stopping = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicUsize::new(0));
    let (expect_tx, expect_rx) = watch::channel(None);
    let senders = [(a, &ids[1], &pairs[0]), (c, &ids[3], &pairs[1])].map(|(client, to, p)| {
        tokio::spawn(send_until(
            client,
            to.clone(),
            p.clone(),
            stopping.clone(),
            errors.clone(),
        ))
    });
    let receivers = [(b, &ids[0], &pairs[0]), (e, &ids[2], &pairs[1])].map(|(client, from, p)| {
        tokio::spawn(receive(client, from.clone(), p.clone(), expect_rx.clone()))
    });

    let progress = |phase: &str| {
        let sent: Vec<u64> = pairs
            .iter()
            .map(|p| p.sent.load(Ordering::Relaxed))
            .collect();
        let got: Vec<u64> = pairs
            .iter()
            .map(|p| p.received.load(Ordering::Relaxed))
            .collect();
        eprintln!(
            "{phase}: sent {sent:?}, highest received {got:?}, refusals {}",
            errors.load(Ordering::Relaxed)
        );
    };
    let warm = flowing_again("the stream flows", &pairs).await;
    progress("flowing");
    let stopping_kafka = Instant::now();
    let kafka = stop("kafka").await;
    let kafka_stop = stopping_kafka.elapsed();
    let refused_in = wait_for("a refusal while Kafka is down", || {
        errors.load(Ordering::Relaxed) > 0
    })
    .await;
    progress("Kafka down, a send refused");
    start(kafka).await;
    progress("Kafka up");
    let kafka_back = flowing_again("the stream after Kafka is back", &pairs).await;

    progress("flowing after Kafka");
    let redis = stop("redis").await;
    // Down while every sender sends 40 more messages.
    let marks: Vec<u64> = pairs
        .iter()
        .map(|p| p.sent.load(Ordering::Relaxed) + 40)
        .collect();
    wait_for("40 more sends while Redis is down", || {
        pairs
            .iter()
            .zip(&marks)
            .all(|(p, mark)| p.sent.load(Ordering::Relaxed) >= *mark)
    })
    .await;
    start(redis).await;
    progress("Redis up");
    let redis_back = flowing_again("the stream after Redis is back", &pairs).await;
    progress("flowing after Redis");

    stopping.store(true, Ordering::Relaxed);
    let mut logs = Vec::new();
    for s in senders {
        let (client, log) = s.await.expect("sender task");
        assert!(
            !log.stuck,
            "{}: its end marker did not come back within {PHASE:?} ({} sent, {} refused, {} \
             confirmed)\n{}",
            client.user,
            log.sent.len(),
            log.refused.len(),
            log.confirmed.len(),
            d.diagnostics()
        );
        logs.push(log);
        client.close().await;
    }
    let accepted: HashSet<String> = logs
        .iter()
        .flat_map(|l| l.sent.iter().filter(|id| !l.refused.contains_key(*id)))
        .cloned()
        .collect();
    expect_tx.send_replace(Some(accepted.clone()));
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut fetched = 0;
    for r in receivers {
        let got = r.await.expect("receiver task");
        assert!(
            !got.stuck,
            "a receiver's own marker did not come back within {PHASE:?}\n{}",
            d.diagnostics()
        );
        seen.extend(got.seen);
        fetched += got.fetched;
    }

    let sent: Vec<&String> = logs.iter().flat_map(|l| &l.sent).collect();
    let refused: HashMap<&String, &String> = logs.iter().flat_map(|l| &l.refused).collect();
    let mut reasons: HashMap<&str, usize> = HashMap::new();
    for reason in refused.values() {
        *reasons.entry(reason.as_str()).or_default() += 1;
    }
    let lost: Vec<_> = accepted
        .iter()
        .filter(|id| !seen.contains_key(*id))
        .collect();
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    let neither: Vec<_> = sent
        .iter()
        .filter(|id| !refused.contains_key(*id) && !seen.contains_key(id.as_str()))
        .collect();
    let confirmed: usize = logs.iter().map(|l| l.confirmed.len()).sum();
    println!(
        "sent {}, refused {} {reasons:?}, accepted {}, received {} ({fetched} by fetch), \
         confirmed {confirmed}, lost {}, duplicated {}; stream flowed after {warm:?}; stopping \
         Kafka took {kafka_stop:?}, first refusal {refused_in:?} after that; flowing {kafka_back:?} after Kafka was \
         up, {redis_back:?} after Redis was up",
        sent.len(),
        refused.len(),
        accepted.len(),
        seen.len(),
        lost.len(),
        twice.len(),
    );
    if !(lost.is_empty() && twice.is_empty() && neither.is_empty()) {
        let to = std::env::temp_dir().join(format!("split-engines-{}", d.domain));
        match d.keep_logs(&to) {
            Ok(()) => eprintln!("process logs kept in {}", to.display()),
            Err(e) => eprintln!("process logs not kept: {e}"),
        }
    }
    let unexpected: Vec<&Value> = logs.iter().flat_map(|l| &l.unexpected).collect();
    assert!(unexpected.is_empty(), "senders got {unexpected:?}");
    assert!(
        refused.values().all(|r| r.as_str() == "BUS_UNAVAILABLE"),
        "refusals name the reason: {reasons:?}"
    );
    assert!(
        neither.is_empty(),
        "neither refused nor received: {neither:?}\n{}",
        d.diagnostics()
    );
    assert!(lost.is_empty(), "accepted but lost: {lost:?}");
    assert!(twice.is_empty(), "received more than once: {twice:?}");
    for p in d.processors.iter_mut().chain(d.connectors.iter_mut()) {
        assert!(!p.has_exited(), "a linker process exited\n{}", p.log_tail());
    }
}
