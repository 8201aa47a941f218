//! Two ways a connected acking socket could miss a message that was kept for its user while
//! the user looked offline, each forced on purpose on a real connector and processor:
//!
//! - the **login race**: a processor looks the user up just before the login adds the socket,
//!   the login's resume reads the store, and only then is the message kept. The processor
//!   looks again after keeping, and writes the message to the socket it finds now.
//! - **presence lost while connected** (Redis down past the ttl, or restarted without its
//!   data): the connector's refresh finds the socket missing, adds it again, and closes the
//!   acking socket with 4005 so that its login resumes what was kept meanwhile.
//!
//! The first runs on in-process presence with one lookup made stale on purpose (the seam that
//! forces the interleaving); the second on the real Redis of `scripts/services.sh`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use backends::{EmbeddedStore, MemoryBus, MemoryPresence, RedisPresence};
use common::bus::Bus;
use common::channel::Channel;
use common::config::NetworkConfig;
use common::ids::{DomainName, MessageId, SocketAddress, UserId};
use common::network::{Network, NetworkHandle};
use common::presence::{LockToken, Presence, PresenceError};
use common::store::Store;
use serde_json::{Value, json};
use testkit::client::{Client, Ended};
use testkit::deployment::TEST_NETWORK;
use tokio_util::sync::CancellationToken;

/// A connector and a processor of one domain on an in-process bus, an embedded store and
/// the given presence; its client URL.
struct Domain {
    url: String,
    shutdown: CancellationToken,
    _data: tempfile::TempDir,
}

impl Drop for Domain {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(presence: Arc<dyn Presence>, refresh_ms: u64) -> Domain {
    let network = NetworkConfig::from_yaml(TEST_NETWORK).expect("the test network is valid");
    let network = Arc::new(NetworkHandle::new(Network::new(
        network,
        DomainName::new("domain-01"),
    )));
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::default());
    let data = tempfile::tempdir().expect("a temporary directory");
    let store: Arc<dyn Store> =
        Arc::new(EmbeddedStore::open(data.path()).expect("the embedded store opens"));
    let config = connector::Config {
        listen: "127.0.0.1:0".parse().expect("an address"),
        presence_refresh_ms: refresh_ms,
        ..connector::Config::default()
    };
    let connector =
        connector::Connector::bind(config, network.clone(), bus.clone(), presence.clone())
            .await
            .expect("bind on port 0");
    let processor =
        processor::Processor::new(processor::Config::default(), network, bus, store, presence);
    let url = format!("ws://{}/ws", connector.local_addr());
    let shutdown = CancellationToken::new();
    tokio::spawn(connector.run(shutdown.clone()));
    tokio::spawn(processor.run(shutdown.clone()));
    Domain {
        url,
        shutdown,
        _data: data,
    }
}

fn user(n: u64) -> String {
    // Users of domain-01 in the test network, distinct per test run.
    format!("ANZ-{}", 1_000_000 + (common::now_millis() % 900_000) + n)
}

/// The next numbered MESSAGE on an acking socket (skipping confirmations and the like).
async fn next_message(c: &mut Client) -> anyhow::Result<Value> {
    loop {
        let f = c.next().await?;
        if f["type"] == json!("MESSAGE") {
            return Ok(f);
        }
    }
}

/// In-process presence whose next lookup of one user, once armed, answers "nobody": as if it
/// had been read just before that user's login added the socket.
struct StaleOnce {
    inner: MemoryPresence,
    user: Mutex<Option<UserId>>,
    used: AtomicBool,
}

#[async_trait]
impl Presence for StaleOnce {
    async fn add(&self, user: &UserId, socket: &SocketAddress) -> Result<(), PresenceError> {
        self.inner.add(user, socket).await
    }
    async fn remove(&self, user: &UserId, socket: &SocketAddress) -> Result<(), PresenceError> {
        self.inner.remove(user, socket).await
    }
    async fn lookup(&self, user: &UserId) -> Result<Vec<SocketAddress>, PresenceError> {
        let stale = {
            let mut armed = self.user.lock().expect("not poisoned");
            if armed.as_ref() == Some(user) {
                armed.take();
                true
            } else {
                false
            }
        };
        if stale {
            self.used.store(true, Ordering::SeqCst);
            return Ok(Vec::new());
        }
        self.inner.lookup(user).await
    }
    async fn lookup_all(&self, users: &[UserId]) -> Result<Vec<Vec<SocketAddress>>, PresenceError> {
        self.inner.lookup_all(users).await
    }
    async fn lock(
        &self,
        user: &UserId,
        ttl: Duration,
        wait: Duration,
    ) -> Result<LockToken, PresenceError> {
        self.inner.lock(user, ttl, wait).await
    }
    async fn unlock(&self, user: &UserId, token: LockToken) -> Result<(), PresenceError> {
        self.inner.unlock(user, token).await
    }
    async fn refresh(
        &self,
        sockets: &[(UserId, SocketAddress)],
    ) -> Result<Vec<usize>, PresenceError> {
        self.inner.refresh(sockets).await
    }
    async fn is_processed(&self, id: MessageId) -> Result<bool, PresenceError> {
        self.inner.is_processed(id).await
    }
    async fn mark_processed(&self, id: MessageId) -> Result<(), PresenceError> {
        self.inner.mark_processed(id).await
    }
    async fn join(
        &self,
        channel: &Channel,
        user: &UserId,
        socket: &SocketAddress,
    ) -> Result<(), PresenceError> {
        self.inner.join(channel, user, socket).await
    }
    async fn leave(
        &self,
        channel: &Channel,
        user: &UserId,
        socket: &SocketAddress,
    ) -> Result<(), PresenceError> {
        self.inner.leave(channel, user, socket).await
    }
    async fn members(
        &self,
        channel: &Channel,
    ) -> Result<Vec<(UserId, SocketAddress)>, PresenceError> {
        self.inner.members(channel).await
    }
    async fn grant(
        &self,
        channel: &Channel,
        user: &UserId,
        max: usize,
    ) -> Result<bool, PresenceError> {
        self.inner.grant(channel, user, max).await
    }
    async fn revoke(&self, channel: &Channel, user: &UserId) -> Result<(), PresenceError> {
        self.inner.revoke(channel, user).await
    }
    async fn is_granted(&self, channel: &Channel, user: &UserId) -> Result<bool, PresenceError> {
        self.inner.is_granted(channel, user).await
    }
    async fn claim(
        &self,
        key: &str,
        id: MessageId,
        window: Duration,
    ) -> Result<MessageId, PresenceError> {
        self.inner.claim(key, id, window).await
    }
}

#[tokio::test]
async fn a_message_kept_while_its_user_logged_in_reaches_the_new_acking_socket() {
    let presence = Arc::new(StaleOnce {
        inner: MemoryPresence::new(),
        user: Mutex::new(None),
        used: AtomicBool::new(false),
    });
    let domain = start(presence.clone(), 10_000).await;
    let (to, from) = (user(1), user(2));

    // The receiver logs in; its resume finds nothing kept.
    let mut receiver = Client::login_ack(&domain.url, &to).await.unwrap();
    let complete = receiver.expect("RESUME_COMPLETE").await.unwrap();
    assert_eq!(complete["data"]["resent"], json!(0), "{complete}");

    // The processor's first look at the receiver is from before the login: it keeps the
    // message, after the resume read the store.
    *presence.user.lock().unwrap() = Some(UserId::parse(&to).unwrap());
    let mut sender = Client::login(&domain.url, &from).await.unwrap();
    sender
        .message(&to, "kept during the login", "RELIABLE", Some("r1"))
        .await
        .unwrap();

    let got = next_message(&mut receiver).await.unwrap_or_else(|e| {
        panic!("the message kept during the login never reached the acking socket: {e}")
    });
    assert!(
        presence.used.load(Ordering::SeqCst),
        "the stale lookup was used"
    );
    assert_eq!(got["data"]["content"], json!("kept during the login"));
    assert!(got["seq"].is_u64(), "written numbered: {got}");
    let confirmation = sender.expect("MESSAGE_CONFIRMATION").await.unwrap();
    assert_eq!(confirmation["data"]["reference"], json!("r1"));

    // Acknowledged, it is not resent at the next login.
    receiver.ack(&[&got]).await.unwrap();
    receiver.sync().await.unwrap();
    receiver.close().await;
    let mut again = Client::login_ack(&domain.url, &to).await.unwrap();
    let complete = again.expect("RESUME_COMPLETE").await.unwrap();
    assert_eq!(complete["data"]["resent"], json!(0), "{complete}");
}

fn redis_url() -> String {
    testkit::engine::test_url("LINKER_TEST_REDIS_URL")
}

#[tokio::test]
async fn an_acking_socket_whose_presence_was_lost_is_closed_and_resumes_what_was_kept() {
    let namespace = format!(
        "test-presence-lost-{}-{}",
        std::process::id(),
        common::now_millis()
    );
    let presence = Arc::new(
        RedisPresence::connect(&redis_url(), &namespace, Duration::from_secs(30))
            .await
            .expect("Redis of scripts/services.sh answers"),
    );
    let domain = start(presence.clone(), 300).await;
    let (acking, plain, from) = (user(11), user(12), user(13));

    let mut receiver = Client::login_ack(&domain.url, &acking).await.unwrap();
    receiver.expect("RESUME_COMPLETE").await.unwrap();
    let mut original = Client::login(&domain.url, &plain).await.unwrap();
    let channel = "ANZ/presence-lost";
    original
        .send(&json!({"type":"SUBSCRIBE","data":{"channel":channel}}))
        .await
        .unwrap();
    original.expect("SUBSCRIBED").await.unwrap();

    // Both users' presence is lost while their sockets stay connected (Redis lost its data).
    let (acking_id, plain_id) = (
        UserId::parse(&acking).unwrap(),
        UserId::parse(&plain).unwrap(),
    );
    let acking_sockets = presence.lookup(&acking_id).await.unwrap();
    let plain_sockets = presence.lookup(&plain_id).await.unwrap();
    assert_eq!((acking_sockets.len(), plain_sockets.len()), (1, 1));
    presence
        .remove(&acking_id, &acking_sockets[0])
        .await
        .unwrap();
    presence.remove(&plain_id, &plain_sockets[0]).await.unwrap();
    let channel_id = Channel::parse(channel).unwrap();
    presence
        .leave(&channel_id, &plain_id, &plain_sockets[0])
        .await
        .unwrap();

    // Meanwhile a message for the acking user is kept (the user looks offline).
    let mut sender = Client::login(&domain.url, &from).await.unwrap();
    sender
        .message(&acking, "sent while presence was lost", "RELIABLE", None)
        .await
        .unwrap();
    sender.sync().await.unwrap();

    // The refresh finds the acking socket missing and closes it so that it resumes.
    let (ended, seen) = receiver.ended().await.unwrap();
    assert!(
        seen.iter().all(|f| f["type"] != json!("MESSAGE")),
        "the message was kept, not written: {seen:?}"
    );
    match ended {
        Ended::Closed(Some(frame)) => {
            assert_eq!(u16::from(frame.code), 4005, "{frame:?}");
        }
        other => panic!("the acking socket was not closed with 4005: {other:?}"),
    }
    let mut resumed = Client::login_ack(&domain.url, &acking).await.unwrap();
    let got = next_message(&mut resumed).await.unwrap();
    assert_eq!(
        got["data"]["content"],
        json!("sent while presence was lost")
    );
    let complete = resumed.expect("RESUME_COMPLETE").await.unwrap();
    assert_eq!(complete["data"]["resent"], json!(1), "{complete}");

    // The original-protocol socket stays open, present again and in its channel again.
    let mut back = false;
    for _ in 0..50 {
        let present = !presence.lookup(&plain_id).await.unwrap().is_empty();
        let member = presence
            .members(&channel_id)
            .await
            .unwrap()
            .iter()
            .any(|(u, _)| *u == plain_id);
        if present && member {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "the plain socket's presence and membership came back");
    sender
        .send(&json!({"type":"CHANNEL_MESSAGE","feature":"FAST","data":{"channel":channel,"content":"after"}}))
        .await
        .unwrap();
    let post = original.expect("CHANNEL_MESSAGE").await.unwrap();
    assert_eq!(post["data"]["content"], json!("after"));
}
