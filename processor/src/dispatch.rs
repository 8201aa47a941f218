//! Dispatch: each sender's envelopes are handled in order, different senders' at once.
//!
//! Every envelope taken from the bus joins its sender's lane (`lanes`); one task per sender
//! with a lane handles them one after the other, and at most `workers` envelopes (each of a
//! different sender) are handled at the same moment. Each envelope holds one of
//! `worker_queue` places until it is done: when all are taken the dispatcher waits, which
//! holds the bus back. A worker acknowledges an envelope once it was delivered or stored. A
//! RELIABLE envelope that fails because an engine is down is retried with backoff,
//! unacknowledged, until the engine is back, holding back only its own sender; any other
//! failure is told to the sender as a GENERAL_ERROR. A RELIABLE envelope for one local user
//! asks presence whether it was processed and where its user is in one call.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use common::bus::Inbound;
use common::envelope::{Body, ConnectorCommand, Envelope, Relayed, Target};
use common::frame::{Feature, out_general_error};
use common::ids::{SocketAddress, UserId};
use common::network::Home;

use crate::deliver::Meta;
use crate::lanes::{Held, Lanes};
use crate::{ProcessError, Processor};

pub(crate) async fn run(
    p: Arc<Processor>,
    shutdown: CancellationToken,
) -> Result<(), ProcessError> {
    let mut inbound = p.bus.consume(&p.config.name).await?;
    let held = p.config.worker_queue.max(1);
    let places = Arc::new(Semaphore::new(held));
    let workers = Arc::new(Semaphore::new(p.config.workers.max(1)));
    let lanes = Arc::new(Lanes::default());
    let mut tasks = JoinSet::new();
    info!(processor = %p.config.name, workers = p.config.workers.max(1), held, "processing");
    loop {
        // A place first, then an envelope: a full processor leaves envelopes on the bus.
        let place = tokio::select! {
            _ = shutdown.cancelled() => break,
            place = places.clone().acquire_owned() => match place {
                Ok(place) => place,
                Err(_) => break,
            },
        };
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = inbound.recv() => next,
        };
        let Some(inbound) = next else { break };
        let waited = common::now_millis().saturating_sub(inbound.envelope.created_at);
        p.meters
            .bus_latency(inbound.envelope.feature)
            .record(waited as f64 / 1000.0);
        while let Some(ended) = tasks.try_join_next() {
            report_panic(ended);
        }
        p.meters
            .held
            .set((held - places.available_permits()) as f64);
        p.meters.busy_senders.set(lanes.senders() as f64);
        if let Some(first) = lanes.push(Held { inbound, place }) {
            let lane = Lane {
                p: p.clone(),
                lanes: lanes.clone(),
                workers: workers.clone(),
                shutdown: shutdown.clone(),
            };
            tasks.spawn(lane.run(first));
        }
    }
    // Queued work is finished first: each sender's task works through its lane.
    while let Some(ended) = tasks.join_next().await {
        report_panic(ended);
    }
    info!(processor = %p.config.name, "stopped");
    Ok(())
}

fn report_panic(ended: Result<(), tokio::task::JoinError>) {
    if let Err(e) = ended
        && e.is_panic()
    {
        error!(error = %e, "a sender's task panicked; its envelopes stay unacknowledged");
    }
}

/// What the task of one sender's lane needs.
struct Lane {
    p: Arc<Processor>,
    lanes: Arc<Lanes>,
    workers: Arc<Semaphore>,
    shutdown: CancellationToken,
}

impl Lane {
    /// Handles `first`, then every envelope queued behind it for the same sender, in order.
    async fn run(self, first: Held) {
        let sender = first.inbound.envelope.from.clone();
        // Drops the lane, unacknowledged, if this task stops before it is empty (shutdown
        // while retrying, or a panic), so the sender is not blocked for good.
        let mut abandon = AbandonOnDrop {
            lanes: &self.lanes,
            sender: &sender,
            armed: true,
        };
        let mut held = first;
        loop {
            let Ok(worker) = self.workers.acquire().await else {
                return;
            };
            let Held { inbound, place } = held;
            if !work(&self.p, inbound, &self.shutdown).await {
                return; // shut down while retrying: it and the rest of the lane come again
            }
            drop((worker, place));
            match self.lanes.next(&sender) {
                Some(next) => held = next,
                None => break,
            }
        }
        abandon.armed = false; // the lane is empty and gone
    }
}

/// Abandons a sender's lane when dropped while armed.
struct AbandonOnDrop<'a> {
    lanes: &'a Lanes,
    sender: &'a UserId,
    armed: bool,
}

impl Drop for AbandonOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.lanes.abandon(self.sender);
        }
    }
}

/// Handles one envelope and acknowledges it; false if shutdown came while it was being
/// retried (it stays unacknowledged).
async fn work(p: &Processor, inbound: Inbound, shutdown: &CancellationToken) -> bool {
    let Inbound { envelope, ack } = inbound;
    let reliable = envelope.feature == Feature::Reliable;
    let mut backoff = Duration::from_millis(100);
    // Set once delivered or stored: a retry after that only retries the processed mark.
    let mut handled = false;
    loop {
        let result = if reliable {
            p.handle_once(&envelope, &mut handled).await
        } else {
            p.handle(&envelope).await
        };
        match result {
            Ok(()) => break,
            Err(e) if reliable && e.is_transient() => {
                // Not acknowledged while it fails: an engine is down. Keep the sender's
                // order and retry until it is back.
                warn!(user = %envelope.from, id = %envelope.id, reason = e.reason(), error = %e, "retrying in {backoff:?}");
                metrics::counter!("linker_processor_retries_total", "reason" => e.reason())
                    .increment(1);
                tokio::select! {
                    _ = shutdown.cancelled() => return false,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(e) => {
                tell_sender(p, &envelope, &e).await;
                break;
            }
        }
    }
    ack.done();
    true
}

/// Longest wait between two tries of an envelope while an engine is down.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

async fn tell_sender(p: &Processor, envelope: &Envelope, e: &ProcessError) {
    if matches!(envelope.body, Body::Relay(_)) {
        // Its sender is on another domain; there is no socket here to tell.
        warn!(id = %envelope.id, reason = e.reason(), error = %e, "relay not carried out");
        metrics::counter!("linker_processor_failed_total", "reason" => e.reason()).increment(1);
        return;
    }
    warn!(user = %envelope.from, reason = e.reason(), error = %e, "envelope not delivered nor stored; telling the sender");
    metrics::counter!("linker_processor_failed_total", "reason" => e.reason()).increment(1);
    let frame = out_general_error(e.reason(), &e.to_string(), envelope.reference.as_deref());
    let command = ConnectorCommand::Deliver {
        targets: vec![Target {
            user: envelope.from.clone(),
            socket: envelope.origin.socket,
        }],
        frame,
        feature: envelope.feature,
        id: None,
        ack: None,
    };
    if let Err(e) = p.bus.send(&envelope.origin.connector, command).await {
        debug!(error = %e, "sender not told: connector gone");
    }
}

/// A redelivered envelope found already processed: skipped.
struct AlreadyProcessed;

impl Processor {
    /// Handles a RELIABLE envelope once: a redelivered one that was already delivered or
    /// stored is skipped, by its id. `handled` is set once it was delivered or stored, so a
    /// call again after the processed mark failed (Redis down) does not deliver it a second
    /// time (or store it, when its user's presence is gone meanwhile, to be fetched again).
    /// The origin of a relay handled here hears of it, even of one handled before.
    pub async fn handle_once(
        &self,
        envelope: &Envelope,
        handled: &mut bool,
    ) -> Result<(), ProcessError> {
        if !*handled {
            // For one local target, the processed check and its lookup are one call.
            let looked_up = match self.single_local_target(envelope) {
                Some(user) => self
                    .presence
                    .lookup_unless_processed(envelope.id, user)
                    .await?
                    .map(Some)
                    .ok_or(AlreadyProcessed),
                None if self.presence.is_processed(envelope.id).await? => Err(AlreadyProcessed),
                None => Ok(None),
            };
            let Ok(sockets) = looked_up else {
                debug!(id = %envelope.id, "redelivered envelope already processed; skipped");
                metrics::counter!("linker_processor_redelivered_skipped_total").increment(1);
                return self.send_receipt(envelope).await;
            };
            self.handle_looked_up(envelope, sockets).await?;
            *handled = true;
        }
        self.presence.mark_processed(envelope.id).await?;
        self.send_receipt(envelope).await
    }

    /// Handles one envelope: delivered or stored, else an error.
    pub async fn handle(&self, envelope: &Envelope) -> Result<(), ProcessError> {
        self.handle_looked_up(envelope, None).await
    }

    /// The user a MESSAGE, or a relay delivering to one user, is for, if that user lives
    /// here: the one lookup it needs can be asked together with its processed check.
    fn single_local_target<'e>(&self, envelope: &'e Envelope) -> Option<&'e UserId> {
        let user = match &envelope.body {
            Body::Message { to, .. } => to,
            Body::Relay(relay) => match &relay.what {
                Relayed::Deliver { to, .. }
                    if relay.home == *self.network.current().local_domain() =>
                {
                    match to.as_slice() {
                        [one] => one,
                        _ => return None,
                    }
                }
                _ => return None,
            },
            _ => return None,
        };
        matches!(self.home(user), Ok(Home::Local)).then_some(user)
    }

    /// As `handle`; `sockets` are those of `single_local_target`, if looked up already.
    async fn handle_looked_up(
        &self,
        envelope: &Envelope,
        sockets: Option<Vec<SocketAddress>>,
    ) -> Result<(), ProcessError> {
        let origin = envelope.origin.clone();
        let meta = Meta {
            id: envelope.id,
            from: envelope.from.clone(),
            feature: envelope.feature,
            reference: envelope.reference.clone(),
            confirm: envelope.confirm,
            created_at: envelope.created_at,
        };
        match &envelope.body {
            Body::Message { to, content } => {
                self.meters.messages.increment(1);
                if self.first_with_reference(envelope).await? {
                    self.message(meta, to.clone(), content, sockets).await?;
                }
                self.accepted(envelope).await;
                Ok(())
            }
            Body::GroupMessage { to, content } => {
                self.meters.group_messages.increment(1);
                if self.first_with_reference(envelope).await? {
                    self.group(meta, to, content).await?;
                }
                self.accepted(envelope).await;
                Ok(())
            }
            Body::ChannelMessage { channel, content } => {
                self.meters.channel_messages.increment(1);
                if self.first_with_reference(envelope).await? {
                    self.channel_message(meta, channel, content).await?;
                }
                self.accepted(envelope).await;
                Ok(())
            }
            Body::Ack { ids } => self.ack(&envelope.from, ids).await,
            Body::Resume => self.resume(meta.from, origin).await,
            Body::ChannelHistory {
                channel,
                after,
                count,
            } => {
                self.channel_history(meta, origin, channel, *after, *count)
                    .await
            }
            Body::CloseConnection { user } => self.close(meta.from, user.clone()).await,
            Body::FetchMissingMessages { count } => {
                self.fetch(meta.from, origin, *count, meta.reference).await
            }
            Body::UserConnected => self.user_event(meta, true).await,
            Body::UserDisconnected => self.user_event(meta, false).await,
            Body::Relay(_) => self.relayed(envelope, sockets).await,
        }
    }
}
