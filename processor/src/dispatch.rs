//! The worker pool: envelopes of one sender go to one worker, in order.
//!
//! The dispatcher hashes the sender id to a worker's bounded queue; a full queue makes the
//! dispatcher wait, which holds the bus back. A worker acknowledges an envelope once it was
//! delivered or stored; if neither was possible the sender is told with a GENERAL_ERROR.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use common::bus::Inbound;
use common::envelope::{Body, ConnectorCommand, Envelope, Target};
use common::frame::out_general_error;

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
        tasks.spawn(work(p.clone(), rx));
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

async fn work(p: Arc<Processor>, mut rx: mpsc::Receiver<Inbound>) {
    while let Some(Inbound { envelope, ack }) = rx.recv().await {
        let from = envelope.from.clone();
        let origin = envelope.origin.clone();
        let reference = envelope.reference.clone();
        let feature = envelope.feature;
        match p.handle(envelope).await {
            Ok(()) => {}
            Err(e) => {
                warn!(user = %from, reason = e.reason(), error = %e, "envelope not delivered nor stored; telling the sender");
                metrics::counter!("linker_processor_failed_total", "reason" => e.reason())
                    .increment(1);
                let frame = out_general_error(e.reason(), &e.to_string(), reference.as_deref());
                let command = ConnectorCommand::Deliver {
                    targets: vec![Target {
                        user: from,
                        socket: origin.socket,
                    }],
                    frame,
                    feature,
                };
                if let Err(e) = p.bus.send(&origin.connector, command).await {
                    debug!(error = %e, "sender not told: connector gone");
                }
            }
        }
        ack.done();
    }
}

impl Processor {
    /// Handles one envelope: delivered, stored, or an error the sender is told about.
    pub async fn handle(&self, envelope: Envelope) -> Result<(), ProcessError> {
        let Envelope {
            id,
            from,
            origin,
            feature,
            reference,
            confirm,
            created_at,
            body,
            ..
        } = envelope;
        let meta = Meta {
            id,
            from,
            feature,
            reference,
            confirm,
            created_at,
        };
        match body {
            Body::Message { to, content } => {
                metrics::counter!("linker_processor_messages_total", "kind" => "message")
                    .increment(1);
                self.message(meta, to, &content).await
            }
            Body::GroupMessage { to, content } => {
                metrics::counter!("linker_processor_messages_total", "kind" => "group")
                    .increment(1);
                self.group(meta, to, &content).await
            }
            Body::CloseConnection { user } => self.close(meta.from, user).await,
            Body::FetchMissingMessages { count } => {
                self.fetch(meta.from, origin, count, meta.reference).await
            }
            Body::UserConnected => self.user_event(meta, true).await,
            Body::UserDisconnected => self.user_event(meta, false).await,
        }
    }
}
