//! The outbox: RELIABLE relays that found no way to their domain, kept until one is back.
//!
//! A relay for domain D waits in the store, in the queue of user 0 of D's domain client app
//! (`domain4-0` for `domain-04`): the store is durable and ordered already, and no WebSocket
//! client can log in as a domain app's user, so nobody fetches it. The outbox is tried at
//! start, as soon as a relay is kept, whenever a link goes up or down, and every
//! `outbox_retry_ms`; each domain's queue goes out
//! oldest first, under that queue's lock (processors of a domain share it), and stops at the
//! first relay that still finds no way, to keep the order. While the outbox may hold relays,
//! new RELIABLE relays queue behind them.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use common::config::domain_app_name;
use common::envelope::{Body, Envelope, StoredMessage};
use common::ids::UserId;
use common::presence::PresenceError;

use crate::{ProcessError, Processor};

/// Relays sent per store read.
const BATCH: usize = 100;

/// The store key of the outbox of relays for `domain`.
fn outbox_user(domain: &str) -> Result<UserId, ProcessError> {
    UserId::parse(&format!("{}-0", domain_app_name(domain)))
        .map_err(|_| ProcessError::NoRoute(format!("{domain} (no outbox key for this name)")))
}

impl Processor {
    /// Keeps a relay in the outbox until a path is back.
    pub(crate) async fn outbox_push(&self, envelope: &Envelope) -> Result<(), ProcessError> {
        let Body::Relay(relay) = &envelope.body else {
            return Ok(());
        };
        let kept = StoredMessage {
            id: envelope.id,
            to: outbox_user(relay.home.as_str())?,
            created_at: envelope.created_at,
            frame: serde_json::to_string(envelope).expect("envelopes are plain data"),
            confirm: None,
        };
        self.outbox_pending.store(true, Ordering::Release);
        self.store.persist(&kept).await?;
        metrics::counter!("linker_outbox_kept_total").increment(1);
        self.outbox_kept.notify_one();
        Ok(())
    }

    /// Sends what the outbox holds while paths allow; true if it is empty now.
    pub(crate) async fn drain_outbox(&self) -> Result<bool, ProcessError> {
        let network = self.network.current();
        let local = network.local_domain().clone();
        let mut empty = true;
        for domain in &network.config().domains {
            if domain.name == local.as_str() {
                continue;
            }
            let user = outbox_user(&domain.name)?;
            let ttl = self.config.fetch_lock_ttl();
            let token = match self.presence.lock(&user, ttl, Duration::ZERO).await {
                Ok(token) => token,
                Err(PresenceError::LockTimeout(..)) => {
                    empty = false; // another processor is on it
                    continue;
                }
                Err(e) => {
                    self.outbox_pending.store(true, Ordering::Release);
                    return Err(e.into());
                }
            };
            let drained = self.drain_queue(&user).await;
            if let Err(e) = self.presence.unlock(&user, token).await {
                warn!(user = %user, error = %e, "outbox lock not released; it expires by itself");
            }
            match drained {
                Ok(true) => {}
                Ok(false) => empty = false,
                Err(e) => {
                    self.outbox_pending.store(true, Ordering::Release);
                    return Err(e);
                }
            }
        }
        // A relay kept while the last queue was read is sent by the next periodic try.
        self.outbox_pending.store(!empty, Ordering::Release);
        Ok(empty)
    }

    /// Sends one domain's queue in order; true if it is empty now.
    async fn drain_queue(&self, user: &UserId) -> Result<bool, ProcessError> {
        loop {
            let fetched = self.store.fetch(user, BATCH).await?;
            if fetched.messages.is_empty() {
                return Ok(true);
            }
            for kept in fetched.messages {
                match serde_json::from_str::<Envelope>(&kept.frame) {
                    Ok(envelope) => {
                        if let Err(why) = self.send_on(&envelope).await {
                            debug!(outbox = %user, why, "outbox waits");
                            return Ok(false);
                        }
                        info!(outbox = %user, id = %envelope.id, "relay left the outbox");
                        metrics::counter!("linker_outbox_sent_total").increment(1);
                    }
                    Err(e) => warn!(outbox = %user, error = %e, "unreadable relay dropped"),
                }
                self.store.remove(user, kept.id).await?;
            }
        }
    }
}

/// Tries the outbox at start, when a relay is kept, when a link goes up or down, and every
/// `outbox_retry_ms`.
pub(crate) async fn run(p: Arc<Processor>, shutdown: CancellationToken) {
    let mut changes = p.links.changes();
    let retry = Duration::from_millis(p.config.outbox_retry_ms.max(10));
    loop {
        if let Err(e) = p.drain_outbox().await {
            warn!(error = %e, "outbox not drained; trying again later");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = changes.changed() => {}
            _ = p.outbox_kept.notified() => {}
            _ = tokio::time::sleep(retry) => {}
        }
    }
}

/// Keeps the links in step with the network: dials new neighbours, drops old ones.
pub(crate) async fn follow_network(p: Arc<Processor>, shutdown: CancellationToken) {
    let mut network = p.network.watch();
    p.links.reconcile(&network.borrow_and_update());
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = network.changed() => if changed.is_err() { return },
        }
        let current = network.borrow_and_update().clone();
        info!(neighbours = ?current.neighbors(), "network changed; links follow");
        p.links.reconcile(&current);
    }
}
