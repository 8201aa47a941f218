//! The split-mode bus while an engine goes down and comes back, through
//! `scripts/services.sh stop|start <engine>`.
//!
//! A test binary of its own, its tests one at a time: stopping an engine would fail any other
//! test running against it. Both engines are running again when a test ends, pass or fail.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backends::{SplitBus, SplitBusConfig};
use common::bus::{Bus, BusError, Inbound};
use common::envelope::{Body, ConnectorCommand, DeliveryReport, Envelope};
use common::frame::Feature;
use common::ids::{ConnectorName, MessageId, SocketAddress, UserId};
use serde_json::value::RawValue;
use tokio::sync::mpsc;

/// One engine stopped at a time, by one test at a time.
static ENGINES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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

fn config(test: &str) -> SplitBusConfig {
    let (nats_url, kafka_brokers) = engines();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    SplitBusConfig {
        domain: format!("t-{test}-{}-{nanos}", std::process::id()),
        nats_url,
        kafka_brokers,
        ..SplitBusConfig::default()
    }
}

fn services(action: &str, engine: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/services.sh");
    let status = std::process::Command::new("bash")
        .args([script, action, engine])
        .status()
        .expect("scripts/services.sh runs");
    assert!(
        status.success(),
        "scripts/services.sh {action} {engine} failed"
    );
}

/// Stops an engine; starts it again when dropped, so a failing test leaves it running.
struct Stopped(&'static str);

impl Stopped {
    fn engine(engine: &'static str) -> Stopped {
        services("stop", engine);
        Stopped(engine)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        services("start", self.0);
    }
}

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

fn user() -> UserId {
    UserId::parse("ANZ-4242").expect("valid test id")
}

/// Waits until `ids` have all arrived (acknowledging them), ignoring anything else.
async fn receive_all(rx: &mut mpsc::Receiver<Inbound>, mut ids: HashSet<MessageId>, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ids.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let inbound = tokio::time::timeout(left, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .unwrap_or_else(|| panic!("inbound stream ended while waiting for {what}"));
        ids.remove(&inbound.envelope.id);
        inbound.ack.done();
    }
}

/// Publishes until one is accepted; returns its id and how long it took.
async fn publish_until_accepted(bus: &SplitBus, feature: Feature) -> (MessageId, Duration) {
    let started = Instant::now();
    loop {
        let e = envelope(&user(), feature, 1);
        let id = e.id;
        match bus.publish(e).await {
            Ok(()) => return (id, started.elapsed()),
            Err(BusError::Unavailable(_)) if started.elapsed() < Duration::from_secs(90) => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => panic!("publish after the restart: {e}"),
        }
    }
}

#[tokio::test]
async fn reliable_publish_fails_while_kafka_is_down_and_works_after_restart() {
    let _one_at_a_time = ENGINES.lock().await;
    let bus = SplitBus::connect(&config("kafka-restart")).await.unwrap();
    let mut rx = bus.consume("processor-1").await.unwrap();
    let before = envelope(&user(), Feature::Reliable, 0);
    let id = before.id;
    bus.publish(before).await.unwrap();
    receive_all(&mut rx, HashSet::from([id]), "the envelope before the stop").await;

    let stopped = Stopped::engine("kafka");
    let t = Instant::now();
    let result = bus.publish(envelope(&user(), Feature::Reliable, 0)).await;
    let detected = t.elapsed();
    assert!(
        matches!(result, Err(BusError::Unavailable(_))),
        "RELIABLE publish with Kafka down: {result:?}"
    );
    assert!(
        detected < Duration::from_secs(10),
        "failed within {detected:?}"
    );
    // FAST does not depend on Kafka: its partitions' subjects stay taken, also once the
    // consumer's session timed out and it counts its assignment as lost.
    let config = bus.config().clone();
    let past_session = Instant::now() + config.session_timeout() + Duration::from_secs(3);
    let mut fast = 0;
    while Instant::now() < past_session {
        let e = envelope(&user(), Feature::Fast, 0);
        let id = e.id;
        bus.publish(e)
            .await
            .expect("FAST goes on while Kafka is down");
        receive_all(&mut rx, HashSet::from([id]), "FAST while Kafka is down").await;
        fast += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    drop(stopped);
    let (id, recovered) = publish_until_accepted(&bus, Feature::Reliable).await;
    receive_all(
        &mut rx,
        HashSet::from([id]),
        "the envelope after the restart",
    )
    .await;
    eprintln!(
        "kafka restart: publish failed after {detected:?} while down; {fast} FAST envelopes \
         went through while down; accepted {recovered:?} after `start kafka` returned; \
         consumed on the same bus"
    );
}

#[tokio::test]
async fn fast_publish_and_requests_fail_while_nats_is_down_and_work_after_restart() {
    let _one_at_a_time = ENGINES.lock().await;
    let bus = Arc::new(SplitBus::connect(&config("nats-restart")).await.unwrap());
    let mut rx = bus.consume("processor-1").await.unwrap();
    let name = ConnectorName::new("connector-01");
    let mut commands = bus.listen(&name).await.unwrap();
    let answering = tokio::spawn(async move {
        while let Some(c) = commands.recv().await {
            if let Some(r) = c.reply {
                r.reply(DeliveryReport {
                    written: vec![true],
                    ..Default::default()
                })
            }
        }
    });
    let command = || ConnectorCommand::Close {
        targets: vec![],
        reason: "x".into(),
    };
    let fast = envelope(&user(), Feature::Fast, 0);
    let id = fast.id;
    bus.publish(fast).await.unwrap();
    receive_all(&mut rx, HashSet::from([id]), "FAST before the stop").await;
    bus.request(&name, command(), Duration::from_secs(5))
        .await
        .expect("a report before the stop");

    let stopped = Stopped::engine("nats");
    // The client sees the connection close at once; allow it a moment to notice.
    let t = Instant::now();
    let detected = loop {
        match bus.publish(envelope(&user(), Feature::Fast, 0)).await {
            Err(BusError::Unavailable(_)) => break t.elapsed(),
            Ok(()) if t.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            other => panic!("FAST publish with NATS down: {other:?}"),
        }
    };
    let request = bus.request(&name, command(), Duration::from_secs(2)).await;
    assert!(
        matches!(
            request,
            Err(BusError::Unavailable(_) | BusError::TimedOut(_))
        ),
        "request with NATS down: {request:?}"
    );
    // RELIABLE does not depend on NATS.
    bus.publish(envelope(&user(), Feature::Reliable, 0))
        .await
        .expect("RELIABLE goes on while NATS is down");

    drop(stopped);
    let (_, recovered) = publish_until_accepted(&bus, Feature::Fast).await;
    // The subscriptions come back with the connection: a FAST envelope and a report go through.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let fast = envelope(&user(), Feature::Fast, 2);
        let id = fast.id;
        bus.publish(fast).await.unwrap();
        let got = tokio::time::timeout(Duration::from_millis(500), async {
            loop {
                match rx.recv().await {
                    Some(i) if i.envelope.id == id => return true,
                    Some(_) => continue,
                    None => return false,
                }
            }
        })
        .await;
        if got == Ok(true) {
            break;
        }
        assert!(Instant::now() < deadline, "FAST consumed after the restart");
    }
    let report = bus
        .request(&name, command(), Duration::from_secs(5))
        .await
        .expect("a report after the restart");
    assert_eq!(report.written, vec![true]);
    eprintln!(
        "nats restart: publish failed {detected:?} after the stop; accepted {recovered:?} after \
         `start nats` returned; consumed and answered on the same bus"
    );
    drop(bus);
    answering.abort();
}
