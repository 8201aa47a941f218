//! The processor: decides where each envelope goes and gets it there.
//!
//! It consumes the domain's inbound envelopes, keeps one sender's envelopes in order (one
//! task per sender with envelopes in hand), looks targets up in presence, asks connectors to write frames,
//! stores what could not be written, and confirms delivery to senders. It never touches a
//! socket and names no engine.
//!
//! Layout:
//! - [`dispatch`]: taking envelopes from the bus, handling each sender's in order and
//!   different senders' at once, acknowledging them; the per-envelope dispatch.
//! - `lanes`: the envelopes held, queued per sender.
//! - `meters`: the metrics of every envelope, registered once.
//! - [`route`]: whether a target lives here, and relaying to the domain where it does.
//! - [`links`]: the TCP links to neighbouring domains.
//! - [`outbox`]: relays waiting for a path, kept in the store and sent when one is back.
//! - [`deliver`]: writing a frame to a user's sockets, storing it when that fails,
//!   confirmations, group fan-out.
//! - [`channel`]: CHANNEL_MESSAGE to the member sockets of a channel.
//! - [`fetch`]: FETCH_MISSING_MESSAGES_REQUEST under the per-user lock.
//! - [`events`]: USER_CONNECTED/USER_DISCONNECTED for master users, CLOSE_CONNECTION.
//! - [`resume`]: the acknowledged protocol: resume at login, ACK, MESSAGE_ACCEPTED and
//!   retries recognised by reference.

pub mod channel;
pub mod deliver;
pub mod dispatch;
pub mod events;
pub mod fetch;
mod lanes;
pub mod links;
mod meters;
pub mod outbox;
pub mod resume;
pub mod route;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use common::bus::{Bus, BusError};
use common::network::NetworkHandle;

use crate::links::{LinkTimings, Links};
use common::presence::{Presence, PresenceError};
use common::store::{Store, StoreError};

/// The processor's settings; every key has a default.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub name: String,
    /// Envelopes handled at once, never two of the same sender (one sender's envelopes are
    /// handled in order).
    pub workers: usize,
    /// Envelopes held at once: being handled, or waiting for their sender's earlier ones or
    /// for a worker. When all are held the processor takes nothing more from the bus.
    pub worker_queue: usize,
    /// How long to wait for a connector to report a write before storing the message.
    pub delivery_timeout_ms: u64,
    /// How long a fetch may hold a user's lock.
    pub fetch_lock_ttl_ms: u64,
    /// How long a fetch waits for another fetch of the same user to finish before it is
    /// refused with `FETCH_IN_PROGRESS`.
    pub fetch_lock_wait_ms: u64,
    /// Most messages one fetch returns (and one page of a resume).
    pub max_fetch_count: u32,
    /// Longest wait for a neighbouring domain to connect, answer HELLO, or ACK an envelope.
    pub link_timeout_ms: u64,
    /// A link with no traffic for this long is pinged; no answer within `link_timeout_ms`
    /// more and it counts as down.
    pub link_ping_ms: u64,
    /// Longest wait between two dials of a link that is down.
    pub link_max_backoff_ms: u64,
    /// How often the outbox (relays waiting for a path) is tried when no link came up.
    pub outbox_retry_ms: u64,
    /// A relay sent from here is sent again if its home domain's receipt has not come
    /// within this long (a domain on the way may have crashed with it).
    pub relay_receipt_timeout_ms: u64,
    /// Most messages kept for one user (stored for fetch, or sent and not yet acknowledged).
    /// Past it a message for that user is refused: its sender gets `GENERAL_ERROR INBOX_FULL`.
    pub max_kept_per_user: u64,
    /// How long a sender's `reference` is remembered, so a retried message (same sender and
    /// reference, from an acking socket) is not delivered twice.
    pub reference_window_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            name: "processor-01".into(),
            workers: 1024,
            worker_queue: 4096,
            delivery_timeout_ms: 5_000,
            fetch_lock_ttl_ms: 60_000,
            fetch_lock_wait_ms: 5_000,
            max_fetch_count: 2000,
            link_timeout_ms: 5_000,
            link_ping_ms: 5_000,
            link_max_backoff_ms: 5_000,
            outbox_retry_ms: 2_000,
            relay_receipt_timeout_ms: 10_000,
            max_kept_per_user: 10_000,
            reference_window_ms: 600_000,
        }
    }
}

impl Config {
    pub fn delivery_timeout(&self) -> Duration {
        Duration::from_millis(self.delivery_timeout_ms)
    }

    pub fn fetch_lock_ttl(&self) -> Duration {
        Duration::from_millis(self.fetch_lock_ttl_ms)
    }

    pub fn link_timings(&self) -> LinkTimings {
        LinkTimings {
            timeout: Duration::from_millis(self.link_timeout_ms),
            ping: Duration::from_millis(self.link_ping_ms),
            max_backoff: Duration::from_millis(self.link_max_backoff_ms),
        }
    }
}

/// Why an envelope could be neither delivered nor stored.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Presence(#[from] PresenceError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("no route to domain `{0}`")]
    NoRoute(String),
    #[error("another fetch for this user is still running")]
    FetchInProgress,
    #[error("{0} already has the most messages kept for one user; this one was not stored")]
    InboxFull(String),
}

impl ProcessError {
    /// True if trying again later may succeed (an engine is down), false if it never will.
    pub fn is_transient(&self) -> bool {
        match self {
            ProcessError::Store(_) | ProcessError::Presence(_) => true,
            ProcessError::Bus(e) => !matches!(e, BusError::Codec(_)),
            ProcessError::NoRoute(_)
            | ProcessError::FetchInProgress
            | ProcessError::InboxFull(_) => false,
        }
    }

    /// The reason code of the GENERAL_ERROR a sender gets.
    pub fn reason(&self) -> &'static str {
        match self {
            ProcessError::Store(_) => "STORE_UNAVAILABLE",
            ProcessError::Presence(_) => "PRESENCE_UNAVAILABLE",
            ProcessError::Bus(_) => "BUS_UNAVAILABLE",
            ProcessError::NoRoute(_) => "NO_ROUTE",
            ProcessError::FetchInProgress => "FETCH_IN_PROGRESS",
            ProcessError::InboxFull(_) => "INBOX_FULL",
        }
    }
}

/// What every worker shares.
pub struct Processor {
    pub(crate) config: Config,
    pub(crate) network: Arc<NetworkHandle>,
    pub(crate) bus: Arc<dyn Bus>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) presence: Arc<dyn Presence>,
    pub(crate) links: Arc<Links>,
    /// Wakes the outbox task when a relay is kept.
    pub(crate) outbox_kept: tokio::sync::Notify,
    /// Relays sent from here that wait for their home domain's receipt, and when they went.
    pub(crate) in_transit:
        std::sync::Mutex<std::collections::HashMap<common::ids::MessageId, std::time::Instant>>,
    pub(crate) meters: meters::Meters,
}

impl Processor {
    pub fn new(
        config: Config,
        network: Arc<NetworkHandle>,
        bus: Arc<dyn Bus>,
        store: Arc<dyn Store>,
        presence: Arc<dyn Presence>,
    ) -> Processor {
        let links = Arc::new(Links::new(network.clone(), config.link_timings()));
        Processor {
            config,
            network,
            bus,
            store,
            presence,
            links,
            outbox_kept: tokio::sync::Notify::new(),
            in_transit: std::sync::Mutex::default(),
            meters: meters::Meters::new(),
        }
    }

    /// Consumes and handles envelopes until `shutdown`; queued work is finished first. Keeps
    /// the links to neighbouring domains up, and the outbox moving, meanwhile.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ProcessError> {
        let p = Arc::new(self);
        let network = tokio::spawn(outbox::follow_network(p.clone(), shutdown.clone()));
        let outbox = tokio::spawn(outbox::run(p.clone(), shutdown.clone()));
        let result = dispatch::run(p.clone(), shutdown).await;
        p.links.stop();
        network.abort();
        outbox.abort();
        result
    }
}
