//! The resume hold's safeguard, on a real connector and its in-process bus, with the test
//! standing in for the processor so that it can lose a resume's end on purpose: an acking
//! socket whose resume does not end in time is closed with 4004, the live frame it held back
//! is reported unwritten (so it stays kept), and a resume that does end keeps the socket open.

use std::sync::Arc;
use std::time::Duration;

use backends::{MemoryBus, MemoryPresence};
use common::bus::{Bus, Inbound};
use common::config::NetworkConfig;
use common::envelope::{AckMark, Body, ConnectorCommand, Target};
use common::frame::{Feature, out_message, out_resume_complete};
use common::ids::{ConnectorName, DomainName, MessageId, SocketAddress, UserId};
use common::network::{Network, NetworkHandle};
use connector::{Config, Connector};
use serde_json::value::RawValue;
use testkit::client::{Client, Ended};
use testkit::deployment::TEST_NETWORK;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const RESUME_TIMEOUT_MS: u64 = 600;

/// A connector on an in-process bus; the bus, its address and what reaches processors.
async fn start() -> (
    Arc<MemoryBus>,
    String,
    mpsc::Receiver<Inbound>,
    CancellationToken,
) {
    let network = NetworkConfig::from_yaml(TEST_NETWORK).expect("the test network is valid");
    let network = Arc::new(NetworkHandle::new(Network::new(
        network,
        DomainName::new("domain-01"),
    )));
    let bus = Arc::new(MemoryBus::new(1024));
    let inbound = bus
        .consume("processor-01")
        .await
        .expect("memory bus consumes");
    let config = Config {
        listen: "127.0.0.1:0".parse().expect("an address"),
        resume_timeout_ms: RESUME_TIMEOUT_MS,
        ..Config::default()
    };
    let connector = Connector::bind(
        config,
        network,
        bus.clone(),
        Arc::new(MemoryPresence::new()),
    )
    .await
    .expect("bind on port 0");
    let url = format!("ws://{}/ws", connector.local_addr());
    let shutdown = CancellationToken::new();
    tokio::spawn(connector.run(shutdown.clone()));
    (bus, url, inbound, shutdown)
}

/// The next resume the connector asks processors for: the socket it is for.
async fn resume_asked(inbound: &mut mpsc::Receiver<Inbound>) -> SocketAddress {
    loop {
        let next = tokio::time::timeout(Duration::from_secs(5), inbound.recv()).await;
        let Inbound { envelope, ack } = next.expect("a resume is asked for").expect("bus open");
        ack.done();
        if matches!(envelope.body, Body::Resume) {
            return envelope.origin;
        }
    }
}

fn numbered(
    user: &UserId,
    socket: &SocketAddress,
    id: MessageId,
    mark: AckMark,
) -> ConnectorCommand {
    let content = RawValue::from_string("\"kept\"".into()).expect("valid JSON");
    ConnectorCommand::Deliver {
        targets: vec![Target {
            user: user.clone(),
            socket: socket.socket,
        }],
        frame: out_message(
            &UserId::parse("ANZ-200").expect("a user id"),
            &content,
            None,
        ),
        feature: Feature::Reliable,
        id: Some(id),
        ack: Some(mark),
    }
}

#[tokio::test]
async fn a_resume_whose_end_is_lost_closes_with_4004_and_the_held_frame_stays_kept() {
    let (bus, url, mut inbound, shutdown) = start().await;
    let connector = ConnectorName::new("connector-01");
    let user = UserId::parse("ANZ-100").expect("a user id");
    let mut c = Client::login_ack(&url, user.as_str()).await.unwrap();
    let socket = resume_asked(&mut inbound).await;
    // A live frame arrives while the resume runs: it is held back. The resume's end is lost.
    let id = MessageId::new();
    let started = tokio::time::Instant::now();
    let held = tokio::spawn({
        let (bus, connector, command) = (
            bus.clone(),
            connector.clone(),
            numbered(&user, &socket, id, AckMark::Seq(7)),
        );
        async move {
            bus.request(&connector, command, Duration::from_secs(10))
                .await
        }
    });
    let (ended, frames) = c.ended().await.unwrap();
    let waited = started.elapsed();
    match ended {
        Ended::Closed(Some(f)) => {
            assert_eq!(u16::from(f.code), 4004);
            assert_eq!(
                f.reason.as_str(),
                format!("resume not completed within {RESUME_TIMEOUT_MS} ms; reconnect")
            );
        }
        other => panic!("expected close 4004, got {other:?}"),
    }
    assert!(
        waited >= Duration::from_millis(RESUME_TIMEOUT_MS / 2),
        "closed after {waited:?}, before the resume had its time"
    );
    assert!(
        frames.iter().all(|f| f["type"] != "MESSAGE"),
        "the held frame was not written: {frames:?}"
    );
    // Reported unwritten: the processor keeps it for the next resume.
    let report = held.await.unwrap().expect("the connector reports");
    assert_eq!(report.written, vec![false], "{report:?}");

    // The client logs in again; this resume ends, with the kept frame first.
    let mut c = Client::login_ack(&url, user.as_str()).await.unwrap();
    let socket = resume_asked(&mut inbound).await;
    let report = bus
        .request(
            &connector,
            numbered(&user, &socket, id, AckMark::Resent(7)),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(report.written, vec![true]);
    let end = ConnectorCommand::Deliver {
        targets: vec![Target {
            user: user.clone(),
            socket: socket.socket,
        }],
        frame: out_resume_complete(1),
        feature: Feature::Reliable,
        id: None,
        ack: Some(AckMark::ResumeEnd),
    };
    bus.send(&connector, end).await.unwrap();
    let m = c.expect("MESSAGE").await.unwrap();
    assert_eq!(
        (m["seq"].as_u64(), m["id"].as_str()),
        (Some(7), Some(id.to_string().as_str()))
    );
    c.expect("RESUME_COMPLETE").await.unwrap();
    // Well past the timeout, the socket is still open and takes frames.
    tokio::time::sleep(Duration::from_millis(2 * RESUME_TIMEOUT_MS)).await;
    let later = MessageId::new();
    let report = bus
        .request(
            &connector,
            numbered(&user, &socket, later, AckMark::Seq(8)),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(report.written, vec![true]);
    let m = c.expect("MESSAGE").await.unwrap();
    assert_eq!(m["seq"].as_u64(), Some(8));
    shutdown.cancel();
}
