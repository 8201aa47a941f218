//! The worker pool: envelopes of one sender go to one worker, in order.
//!
//! The dispatcher hashes the sender id to a worker's bounded queue; a full queue makes the
//! dispatcher wait, which holds the bus back. A worker acknowledges an envelope once it was
//! delivered or stored. A RELIABLE envelope that fails because an engine is down is retried
//! with backoff, unacknowledged, until the engine is back; any other failure is told to the
//! sender as a GENERAL_ERROR.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use common::bus::Inbound;
use common::envelope::{Body, ConnectorCommand, Envelope, Target};
use common::frame::{Feature, out_general_error};

use crate::deliver::Meta;
use crate::{ProcessError, Processor};

pub(crate) async fn run(
    p: Arc<Processor>,
    shutdown: CancellationToken,
) -> Result<(), ProcessError> {
    let mut inbound = p.bus.consume(&p.config.name).await?;
    let mut tasks = JoinSet::new();
    let mut workers = Vec::with_capacity(p.config.workers.max(1));
    for _ in 0..p.config.workers.max(1) {
        let (tx, rx) = mpsc::channel(p.config.worker_queue);
        workers.push(tx);
        tasks.spawn(work(p.clone(), rx, shutdown.clone()));
    }
    info!(processor = %p.config.name, workers = workers.len(), "processing");
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = inbound.recv() => next,
        };
        let Some(inbound) = next else { break };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        inbound.envelope.from.hash(&mut h);
        let worker = &workers[(h.finish() % workers.len() as u64) as usize];
        if worker.send(inbound).await.is_err() {
            break;
        }
    }
    drop(workers);
    while tasks.join_next().await.is_some() {}
    info!(processor = %p.config.name, "stopped");
    Ok(())
}

async fn work(p: Arc<Processor>, mut rx: mpsc::Receiver<Inbound>, shutdown: CancellationToken) {
    while let Some(Inbound { envelope, ack }) = rx.recv().await {
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
                        _ = shutdown.cancelled() => return, // unacknowledged: redelivered
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(e) => {
                    tell_sender(&p, &envelope, &e).await;
                    break;
                }
            }
        }
        ack.done();
    }
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
            if self.presence.is_processed(envelope.id).await? {
                debug!(id = %envelope.id, "redelivered envelope already processed; skipped");
                metrics::counter!("linker_processor_redelivered_skipped_total").increment(1);
                return self.send_receipt(envelope).await;
            }
            self.handle(envelope).await?;
            *handled = true;
        }
        self.presence.mark_processed(envelope.id).await?;
        self.send_receipt(envelope).await
    }

    /// Handles one envelope: delivered or stored, else an error.
    pub async fn handle(&self, envelope: &Envelope) -> Result<(), ProcessError> {
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
                metrics::counter!("linker_processor_messages_total", "kind" => "message")
                    .increment(1);
                if self.first_with_reference(envelope).await? {
                    self.message(meta, to.clone(), content).await?;
                }
                self.accepted(envelope).await;
                Ok(())
            }
            Body::GroupMessage { to, content } => {
                metrics::counter!("linker_processor_messages_total", "kind" => "group")
                    .increment(1);
                if self.first_with_reference(envelope).await? {
                    self.group(meta, to, content).await?;
                }
                self.accepted(envelope).await;
                Ok(())
            }
            Body::ChannelMessage { channel, content } => {
                metrics::counter!("linker_processor_messages_total", "kind" => "channel")
                    .increment(1);
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
            Body::Relay(_) => self.relayed(envelope).await,
        }
    }
}
