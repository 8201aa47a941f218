//! The split-mode bus against the real NATS and Kafka started by `scripts/services.sh`.
//!
//! Each test runs on a domain of its own, so subjects, topics and groups never clash with
//! another test or an earlier run. Loss and duplication are counted by message id.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backends::{SplitBus, SplitBusConfig};
use common::bus::{Bus, Inbound};
use common::envelope::{Body, Envelope};
use common::frame::Feature;
use common::ids::{ConnectorName, MessageId, SocketAddress, UserId};
use serde_json::value::RawValue;
use testkit::contracts;
use tokio::sync::mpsc;

/// The engines' addresses, from `eval "$(scripts/services.sh env)"`.
fn engines() -> (String, String) {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!(
                "{name} is not set: run `scripts/services.sh start` and \
                 `eval \"$(scripts/services.sh env)\"` before these tests"
            )
        })
    };
    (
        var("LINKER_TEST_NATS_URL"),
        var("LINKER_TEST_KAFKA_BROKERS"),
    )
}

/// A domain no other test or run uses.
fn config(test: &str) -> SplitBusConfig {
    let (nats_url, kafka_brokers) = engines();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    SplitBusConfig {
        domain: format!("t-{test}-{}-{nanos}", std::process::id()),
        nats_url,
        kafka_brokers,
        ..SplitBusConfig::default()
    }
}

async fn connect(config: &SplitBusConfig) -> SplitBus {
    // `RUST_LOG=backends=debug,librdkafka=info` shows the engines' side of a failure.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    SplitBus::connect(config)
        .await
        .expect("both engines reachable")
}

fn user(n: u64) -> UserId {
    UserId::parse(&format!("ANZ-{n}")).expect("valid test id")
}

/// A RELIABLE envelope from `from` whose content is the sequence number `n`.
fn envelope(from: &UserId, feature: Feature, n: u32) -> Envelope {
    Envelope {
        id: MessageId::new(),
        from: from.clone(),
        origin: SocketAddress {
            connector: ConnectorName::new("connector-01"),
            socket: 1,
        },
        feature,
        reference: None,
        confirm: false,
        created_at: common::now_millis(),
        hops: 0,
        ack: false,
        body: Body::Message {
            to: from.clone(),
            content: RawValue::from_string(n.to_string()).expect("a number is JSON"),
        },
    }
}

fn sequence(envelope: &Envelope) -> u32 {
    match &envelope.body {
        Body::Message { content, .. } => content.get().parse().expect("a sequence number"),
        other => panic!("body changed on the bus: {other:?}"),
    }
}

/// The next inbound envelope, or a failure naming what was awaited.
async fn next(rx: &mut mpsc::Receiver<Inbound>, what: &str) -> Inbound {
    tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap_or_else(|| panic!("inbound stream ended while waiting for {what}"))
}

#[tokio::test]
async fn split_bus_keeps_the_bus_contract() {
    let bus = connect(&config("contract")).await;
    contracts::bus_contract(Arc::new(bus), "connector-01")
        .await
        .unwrap();
}

#[tokio::test]
async fn reliable_envelopes_come_again_until_acknowledged() {
    let config = config("redeliver");
    let senders: Vec<UserId> = (1..=3).map(user).collect();
    let first = connect(&config).await;
    let mut published = HashSet::new();
    for n in 0..5 {
        for s in &senders {
            let e = envelope(s, Feature::Reliable, n);
            published.insert(e.id);
            first.publish(e).await.unwrap();
        }
    }

    // A processor takes them and dies before acknowledging any.
    let mut rx = first.consume("processor-1").await.unwrap();
    let mut unacked = Vec::new();
    while unacked.len() < published.len() {
        unacked.push(next(&mut rx, "the first delivery").await);
    }
    let ids: HashSet<MessageId> = unacked.iter().map(|i| i.envelope.id).collect();
    assert_eq!(ids, published);
    drop(unacked);
    drop(rx);
    drop(first);

    // The next one gets them all again, and acknowledges them.
    let second = connect(&config).await;
    let mut rx = second.consume("processor-2").await.unwrap();
    let mut again = HashSet::new();
    while again.len() < published.len() {
        let inbound = next(&mut rx, "the redelivery").await;
        again.insert(inbound.envelope.id);
        inbound.ack.done();
    }
    assert_eq!(again, published, "every unacknowledged envelope came again");
    drop(rx);
    second.shutdown().await;
    drop(second);

    // A third sees only what is new: a marker behind each sender's old envelopes.
    let third = connect(&config).await;
    let mut rx = third.consume("processor-3").await.unwrap();
    let mut markers = HashSet::new();
    for s in &senders {
        let e = envelope(s, Feature::Reliable, 99);
        markers.insert(e.id);
        third.publish(e).await.unwrap();
    }
    while !markers.is_empty() {
        let inbound = next(&mut rx, "the markers").await;
        assert!(
            !published.contains(&inbound.envelope.id),
            "an acknowledged envelope was delivered again: {:?}",
            inbound.envelope.id
        );
        markers.remove(&inbound.envelope.id);
        inbound.ack.done();
    }
}

#[tokio::test]
async fn a_second_processor_takes_over_when_one_goes_away() {
    let config = config("takeover");
    let a = connect(&config).await;
    let b = connect(&config).await;
    let mut rx_a = a.consume("processor-a").await.unwrap();
    let mut rx_b = b.consume("processor-b").await.unwrap();

    let mut published = HashSet::new();
    for n in 0..20 {
        for s in 0..20 {
            let e = envelope(&user(1000 + s), Feature::Reliable, n);
            published.insert(e.id);
            a.publish(e).await.unwrap();
        }
    }

    // A processes some, holds a few unacknowledged, and goes away mid-stream.
    let mut done = HashSet::new();
    let mut held = Vec::new();
    while done.len() + held.len() < 60 {
        let inbound = next(&mut rx_a, "processor A's share").await;
        if held.len() < 5 && done.len() >= 40 {
            held.push(inbound);
        } else {
            done.insert(inbound.envelope.id);
            inbound.ack.done();
        }
    }
    let held_ids: HashSet<MessageId> = held.iter().map(|i| i.envelope.id).collect();
    drop(held);
    drop(rx_a);
    let gone = Instant::now();
    drop(a);

    // B ends up with everything A did not finish.
    let mut first_of_a_after = None;
    let mut received_b = HashSet::new();
    while !published
        .iter()
        .all(|id| done.contains(id) || received_b.contains(id))
    {
        let inbound = next(&mut rx_b, "the rest, on processor B").await;
        if held_ids.contains(&inbound.envelope.id) && first_of_a_after.is_none() {
            first_of_a_after = Some(gone.elapsed());
        }
        received_b.insert(inbound.envelope.id);
        inbound.ack.done();
    }
    assert!(
        held_ids.is_subset(&received_b),
        "what A held unacknowledged went to B"
    );
    eprintln!(
        "takeover: A finished {}, B received {}; A's unacknowledged envelopes reached B {:?} after A left",
        done.len(),
        received_b.len(),
        first_of_a_after
    );
}

#[tokio::test]
async fn each_sender_s_order_holds_across_partitions() {
    const SENDERS: u64 = 40;
    const EACH: u32 = 25;
    let config = config("order");
    let bus = Arc::new(connect(&config).await);
    let mut rx = bus.consume("processor-1").await.unwrap();
    // The first publish waits for the new topic's metadata and the producer id.
    let warm_up = user(4999);
    let t = Instant::now();
    bus.publish(envelope(&warm_up, Feature::Reliable, 0))
        .await
        .unwrap();
    let first = t.elapsed();
    let t = Instant::now();
    for n in 1..=20 {
        bus.publish(envelope(&warm_up, Feature::Reliable, n))
            .await
            .unwrap();
    }
    eprintln!(
        "order: first RELIABLE publish after connect took {first:?}; then one sender alone: {:?} each",
        t.elapsed() / 20
    );

    let started = Instant::now();
    let mut publishers = tokio::task::JoinSet::new();
    for s in 0..SENDERS {
        let bus = bus.clone();
        publishers.spawn(async move {
            let from = user(5000 + s);
            let mut latencies = Vec::with_capacity(EACH as usize);
            for n in 0..EACH {
                let t = Instant::now();
                bus.publish(envelope(&from, Feature::Reliable, n))
                    .await
                    .unwrap();
                latencies.push(t.elapsed());
            }
            latencies
        });
    }
    let mut latencies = Vec::new();
    while let Some(l) = publishers.join_next().await {
        latencies.extend(l.unwrap());
    }
    let publish_time = started.elapsed();
    latencies.sort();
    let pct = |p: usize| latencies[(latencies.len() * p / 100).min(latencies.len() - 1)];
    eprintln!(
        "order: {} RELIABLE publishes from {SENDERS} concurrent senders in {publish_time:?}; \
         latency p50 {:?} p99 {:?} max {:?}",
        latencies.len(),
        pct(50),
        pct(99),
        latencies[latencies.len() - 1]
    );

    let mut next_expected: HashMap<UserId, u32> = HashMap::new();
    let mut total = 0;
    while total < SENDERS as usize * EACH as usize {
        let inbound = next(&mut rx, "every sender's envelopes").await;
        if inbound.envelope.from == warm_up {
            inbound.ack.done();
            continue;
        }
        let n = sequence(&inbound.envelope);
        let expected = next_expected
            .entry(inbound.envelope.from.clone())
            .or_default();
        assert_eq!(
            n, *expected,
            "sender {} out of order",
            inbound.envelope.from
        );
        *expected += 1;
        total += 1;
        inbound.ack.done();
    }
    assert_eq!(next_expected.len(), SENDERS as usize);
    eprintln!(
        "order: all received {:?} after the first publish",
        started.elapsed()
    );
}

/// The sequence number of a probe, which [`receive_fast`] leaves out.
const PROBE: u32 = 999;

/// Receives from both processors until every sender in `expected` has its `count` FAST
/// envelopes or nothing more comes, recording per sender which processor took each and in
/// what order: `(sender -> sequence numbers, sender -> processors that took any)`.
async fn receive_fast(
    rx: &mut [&mut mpsc::Receiver<Inbound>],
    senders: &HashSet<UserId>,
    count: usize,
) -> (HashMap<UserId, Vec<u32>>, HashMap<UserId, HashSet<usize>>) {
    let (mut seen, mut took) = (HashMap::<UserId, Vec<u32>>::new(), HashMap::new());
    let all = |seen: &HashMap<UserId, Vec<u32>>| {
        senders
            .iter()
            .all(|s| seen.get(s).is_some_and(|v| v.len() >= count))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut quiet_since = None;
    while Instant::now() < deadline {
        let mut got = None;
        for (i, r) in rx.iter_mut().enumerate() {
            if let Ok(inbound) = r.try_recv() {
                got = Some((i, inbound));
                break;
            }
        }
        let Some((i, inbound)) = got else {
            // Once all arrived, a moment more for a duplicate on the other processor.
            if all(&seen) {
                let q = *quiet_since.get_or_insert_with(Instant::now);
                if q.elapsed() > Duration::from_millis(300) {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let from = inbound.envelope.from.clone();
        if senders.contains(&from) && sequence(&inbound.envelope) != PROBE {
            seen.entry(from.clone())
                .or_default()
                .push(sequence(&inbound.envelope));
            took.entry(from).or_insert_with(HashSet::new).insert(i);
        }
    }
    (seen, took)
}

/// `rounds` FAST envelopes from each of `senders`, numbered from 0, one round after another.
async fn publish_rounds(connector: &SplitBus, senders: &HashSet<UserId>, rounds: u32) {
    for n in 0..rounds {
        for s in senders {
            connector
                .publish(envelope(s, Feature::Fast, n))
                .await
                .unwrap();
        }
    }
}

#[tokio::test]
async fn fast_envelopes_go_to_the_owner_of_the_sender_s_partition_in_order() {
    const SENDERS: u64 = 16;
    const EACH: u32 = 50;
    let config = config("fast-owner");
    let connector = connect(&config).await;
    let a = connect(&config).await;
    let b = connect(&config).await;
    let mut rx_a = a.consume("processor-a").await.unwrap();
    // Returns once B has its partitions, taken over from A.
    let mut rx_b = b.consume("processor-b").await.unwrap();

    let senders: HashSet<UserId> = (0..SENDERS).map(|s| user(7000 + s)).collect();
    publish_rounds(&connector, &senders, EACH).await;
    let (seen, took) = receive_fast(&mut [&mut rx_a, &mut rx_b], &senders, EACH as usize).await;
    let in_order: Vec<u32> = (0..EACH).collect();
    let on_a = took.values().filter(|p| p.contains(&0)).count();
    println!(
        "fast-owner: {} of {} envelopes arrived; senders on A {on_a}, on B {}",
        seen.values().map(Vec::len).sum::<usize>(),
        SENDERS * EACH as u64,
        took.len() - on_a
    );
    for s in &senders {
        assert_eq!(seen.get(s), Some(&in_order), "{s}: all, once, in order");
        assert_eq!(
            took[s].len(),
            1,
            "{s}: one processor took all of its envelopes"
        );
    }
    assert!(
        on_a > 0 && on_a < senders.len(),
        "both processors own some senders: A has {on_a}"
    );

    // B leaves: A owns every partition again, and takes B's senders' FAST envelopes.
    b.shutdown().await;
    drop(rx_b);
    let left = Instant::now();
    let mut probed: HashSet<UserId> = HashSet::new();
    while probed.len() < senders.len() {
        assert!(
            left.elapsed() < Duration::from_secs(30),
            "A took B's partitions"
        );
        for s in senders.iter().filter(|s| !probed.contains(*s)) {
            connector
                .publish(envelope(s, Feature::Fast, PROBE))
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        while let Ok(inbound) = rx_a.try_recv() {
            probed.insert(inbound.envelope.from.clone());
        }
    }
    println!(
        "fast-owner: A took every sender {:?} after B left",
        left.elapsed()
    );
    // Probes still on their way are left out below.
    publish_rounds(&connector, &senders, EACH).await;
    let (seen, _) = receive_fast(&mut [&mut rx_a], &senders, EACH as usize).await;
    for s in &senders {
        assert_eq!(seen.get(s), Some(&in_order), "{s} after the rebalance");
    }
}

#[tokio::test]
async fn a_sender_s_partition_is_the_one_librdkafka_s_default_partitioner_picks() {
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    // Creates the topic with its partitions.
    let config = config("partitioner");
    let _bus = connect(&config).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka_brokers)
        .create()
        .unwrap();
    for n in 0..40 {
        let key = format!("ANZ-{}", 123_456 + n * 7_919);
        let delivery = producer
            .send(
                FutureRecord::to(&config.inbound_name())
                    .key(&key)
                    .payload("x"),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
        assert_eq!(
            delivery.partition,
            backends::partitions::partition_of(key.as_bytes(), config.partitions),
            "{key}"
        );
    }
}

#[tokio::test]
async fn requests_to_a_connector_that_is_not_listening_fail_fast() {
    let bus = connect(&config("nobody")).await;
    let nobody = ConnectorName::new("connector-nobody");
    let command = common::envelope::ConnectorCommand::Close {
        targets: vec![],
        reason: "x".into(),
    };
    // Just after connecting, a connector may not have subscribed (again) yet: retryable.
    let t = Instant::now();
    let result = bus
        .request(&nobody, command.clone(), Duration::from_secs(5))
        .await;
    assert!(
        matches!(result, Err(common::bus::BusError::Unavailable(_))),
        "{result:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(2), "known at once");
    // Past that grace, nobody listening means no such connector.
    tokio::time::sleep(backends::RESUBSCRIBE_GRACE).await;
    let t = Instant::now();
    let result = bus.request(&nobody, command, Duration::from_secs(5)).await;
    assert!(
        matches!(result, Err(common::bus::BusError::NoSuchConnector(_))),
        "{result:?}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "no responders is known at once"
    );
}

/// Set in a child copy of this test binary: the domain in which it consumes as a processor
/// that never acknowledges, printing what it receives, until it is killed.
const CHILD_DOMAIN: &str = "LINKER_TEST_SPLIT_BUS_CHILD_DOMAIN";
const KILLED_TEST: &str = "a_killed_processor_s_partitions_move_to_another_within_seconds";

#[tokio::test]
async fn a_killed_processor_s_partitions_move_to_another_within_seconds() {
    if let Ok(domain) = std::env::var(CHILD_DOMAIN) {
        // The child: takes, never acknowledges, never leaves the group by itself.
        let bus = connect(&SplitBusConfig {
            domain,
            ..config("child")
        })
        .await;
        let mut rx = bus.consume("processor-doomed").await.unwrap();
        let mut held = Vec::new();
        while let Some(inbound) = rx.recv().await {
            println!("received {}", inbound.envelope.id);
            held.push(inbound);
        }
        unreachable!("killed before its stream ends");
    }

    let config = config("killed");
    let bus = connect(&config).await;
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", KILLED_TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD_DOMAIN, &config.domain)
        // Its partitions and errors on stderr, should it not receive.
        .env("RUST_LOG", "backends=info,librdkafka=warn")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (child_tx, mut child_rx) = mpsc::unbounded_channel();
    let stdout = child.stdout.take().unwrap();
    tokio::spawn(async move {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match line.strip_prefix("received ") {
                Some(id) => {
                    let _ = child_tx.send(id.to_owned());
                }
                None => eprintln!("child: {line}"),
            }
        }
    });

    let mut published = HashSet::new();
    for n in 0..10 {
        for s in 0..20 {
            let e = envelope(&user(3000 + s), Feature::Reliable, n);
            published.insert(e.id.to_string());
            bus.publish(e).await.unwrap();
        }
    }
    // The child owns every partition until a second processor joins and takes half.
    let mut child_took = HashSet::new();
    while child_took.len() < published.len() {
        let id = tokio::time::timeout(Duration::from_secs(60), child_rx.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the child processor received {} of {} in time",
                    child_took.len(),
                    published.len()
                )
            })
            .expect("the child is running");
        child_took.insert(id);
    }
    let mut rx = bus.consume("processor-survivor").await.unwrap();
    let mut received = HashSet::new();
    // Half the partitions move over while the child lives (their records come again here).
    while received.is_empty() {
        received.insert(
            next(&mut rx, "the moved partitions")
                .await
                .envelope
                .id
                .to_string(),
        );
    }

    child.kill().await.unwrap();
    let killed = Instant::now();
    while !published.iter().all(|id| received.contains(id)) {
        let inbound = next(&mut rx, "the killed processor's partitions").await;
        received.insert(inbound.envelope.id.to_string());
        inbound.ack.done();
    }
    eprintln!(
        "killed: the survivor had every record {:?} after the SIGKILL (session timeout {} ms)",
        killed.elapsed(),
        config.session_timeout_ms
    );
    assert!(
        killed.elapsed() < Duration::from_secs(20),
        "partitions moved within seconds"
    );
}
