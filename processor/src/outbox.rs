//! The outbox: every RELIABLE relay for another domain, kept until its next hop has it.
//!
//! A relay for domain D waits in the store, in the queue of user 0 of D's domain client app
//! (`domain4-0` for `domain-04`): the store is durable and ordered already, and no WebSocket
//! client can log in as a domain app's user, so nobody fetches it. The outbox is tried at
//! start, as soon as a relay is kept, whenever a link goes up or down, and every
//! `outbox_retry_ms`; each domain's queue goes out
//! oldest first, under that queue's lock (processors of a domain share it), and stops at the
//! first relay that still finds no way, to keep the order. A relay passing through leaves the
//! store once its next hop has answered that the relay is safe there; a relay that started
//! here leaves it only with the home domain's receipt, and is sent again (by the path up
//! then) if the receipt is late. So a crash anywhere on the way loses nothing; a relay sent
//! twice is recognised by its id at the far end.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use common::config::domain_app_name;
use common::envelope::{Body, Envelope, StoredMessage};
use common::ids::{DomainName, MessageId, UserId};
use common::presence::PresenceError;

use crate::{ProcessError, Processor};

/// Relays of one queue on the wire at once.
const WINDOW: usize = 64;

/// Wait before trying a queue another processor was sending.
const BUSY_RETRY: Duration = Duration::from_millis(50);

/// The store key of the outbox of relays for `domain`.
fn outbox_user(domain: &str) -> Result<UserId, ProcessError> {
    UserId::parse(&format!("{}-0", domain_app_name(domain)))
        .map_err(|_| ProcessError::NoRoute(format!("{domain} (no outbox key for this name)")))
}

impl Processor {
    /// Keeps a relay in the outbox; the outbox task sends it.
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
        // The outbox has no bound of its own: a relay is never refused here.
        self.store.persist(&kept, u64::MAX).await?;
        metrics::counter!("linker_outbox_kept_total").increment(1);
        self.outbox_kept.notify_one();
        Ok(())
    }

    /// Sends what the outbox holds while paths allow. `Busy` if another processor holds a
    /// queue's lock.
    pub(crate) async fn drain_outbox(&self) -> Result<Drained, ProcessError> {
        let network = self.network.current();
        let local = network.local_domain().clone();
        // A receipt taken by another processor of the domain leaves an entry here; forget
        // entries long overdue (one still in the store is just sent again).
        let stale = Duration::from_millis(self.config.relay_receipt_timeout_ms) * 3;
        self.in_transit().retain(|_, sent| sent.elapsed() < stale);
        let mut drained = Drained::Empty;
        for domain in &network.config().domains {
            if domain.name == local.as_str() {
                continue;
            }
            let user = outbox_user(&domain.name)?;
            let ttl = self.outbox_lock_ttl();
            let token = match self.presence.lock(&user, ttl, Duration::ZERO).await {
                Ok(token) => token,
                Err(PresenceError::LockTimeout(..)) => {
                    drained = Drained::Busy;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let result = self.drain_queue(&user, ttl / 2).await;
            if let Err(e) = self.presence.unlock(&user, token).await {
                warn!(user = %user, error = %e, "outbox lock not released; it expires by itself");
            }
            if !result? && drained == Drained::Empty {
                drained = Drained::Waiting;
            }
        }
        Ok(drained)
    }

    /// Sends one domain's queue in order, up to `WINDOW` relays at a time on the wire; true
    /// if it is empty now. A relay passing through leaves the store once its next hop has
    /// ACKed it; a relay that started here stays until the home domain's receipt, and is sent
    /// again if none comes within `relay_receipt_timeout_ms`. The first relay that finds no
    /// way or gets no ACK stops the round, and it and everything after it stay (one the far
    /// side has already is recognised there when sent again).
    async fn drain_queue(&self, user: &UserId, budget: Duration) -> Result<bool, ProcessError> {
        let local = self.network.current().local_domain().clone();
        let receipt_timeout = Duration::from_millis(self.config.relay_receipt_timeout_ms);
        let started = Instant::now();
        loop {
            if started.elapsed() > budget {
                // Well inside the lock's life; the next round goes on from here.
                return Ok(false);
            }
            let waiting = self.in_transit().len();
            let fetched = self.store.fetch(user, 0, waiting + WINDOW).await?;
            if fetched.messages.is_empty() {
                return Ok(true);
            }
            let mut in_flight = Vec::with_capacity(WINDOW);
            for kept in fetched.messages.into_iter().map(|k| k.message) {
                if in_flight.len() == WINDOW {
                    break;
                }
                if self
                    .in_transit()
                    .get(&kept.id)
                    .is_some_and(|sent| sent.elapsed() < receipt_timeout)
                {
                    continue; // sent; its receipt is not due yet
                }
                let envelope = match serde_json::from_str::<Envelope>(&kept.frame) {
                    Ok(envelope) => envelope,
                    Err(e) => {
                        warn!(outbox = %user, error = %e, "unreadable relay dropped");
                        self.store.remove(user, kept.id).await?;
                        continue;
                    }
                };
                let mine =
                    matches!(&envelope.body, Body::Relay(r) if r.via.first() == Some(&local));
                let Some(next) = self.next_hop(&envelope) else {
                    debug!(outbox = %user, "no path; the outbox waits");
                    break;
                };
                if self.in_transit().contains_key(&kept.id) {
                    debug!(outbox = %user, id = %kept.id, "no receipt in time; sending again");
                    metrics::counter!("linker_relays_resent_total").increment(1);
                }
                match self.links.start_send(&next, envelope).await {
                    Ok(acked) => in_flight.push((kept.id, mine, next, acked)),
                    Err(e) => {
                        debug!(outbox = %user, error = %e, "the outbox waits");
                        break;
                    }
                }
            }
            if in_flight.is_empty() {
                return Ok(false);
            }
            for (id, mine, next, acked) in in_flight {
                if let Err(e) = self.links.acked(&next, acked).await {
                    debug!(outbox = %user, error = %e, "relay not taken; the outbox waits");
                    return Ok(false);
                }
                metrics::counter!("linker_outbox_sent_total").increment(1);
                if mine {
                    self.in_transit().insert(id, Instant::now());
                } else {
                    self.store.remove(user, id).await?;
                }
            }
        }
    }

    /// How long a processor may hold an outbox queue: long enough for a few rounds of ACKs,
    /// short enough that a queue whose holder died (or lost its lock engine) moves on soon.
    fn outbox_lock_ttl(&self) -> Duration {
        Duration::from_millis(self.config.link_timeout_ms.max(1_000) * 4)
    }

    /// The relays this processor sent and waits receipts for, with when they were sent.
    fn in_transit(&self) -> std::sync::MutexGuard<'_, HashMap<MessageId, Instant>> {
        self.in_transit
            .lock()
            .expect("no code panics while holding the in-transit lock")
    }

    /// Receipts from domain `from`: its relays are handled there, and leave the outbox.
    pub(crate) async fn outbox_received(
        &self,
        from: &DomainName,
        ids: &[MessageId],
    ) -> Result<(), ProcessError> {
        let user = outbox_user(from.as_str())?;
        for id in ids {
            self.store.remove(&user, *id).await?;
            self.in_transit().remove(id);
        }
        Ok(())
    }
}

/// How a try of the outbox ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Drained {
    /// Nothing left.
    Empty,
    /// Relays wait for a path.
    Waiting,
    /// Another processor is sending a queue; try again soon.
    Busy,
}

/// Tries the outbox at start, when a relay is kept, when a link goes up or down, and every
/// `outbox_retry_ms`.
pub(crate) async fn run(p: Arc<Processor>, shutdown: CancellationToken) {
    let mut changes = p.links.changes();
    let every = Duration::from_millis(p.config.outbox_retry_ms.max(10));
    loop {
        let retry = match p.drain_outbox().await {
            Ok(Drained::Busy) => every.min(BUSY_RETRY),
            Ok(_) => every,
            Err(e) => {
                warn!(error = %e, "outbox not drained; trying again later");
                every
            }
        };
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
