//! A processor's FAST subscriptions: one NATS subject per Kafka partition it owns, no queue
//! group, subscribed and unsubscribed as its consumer's rebalances change what it owns
//! ([`crate::partitions::Owned`]). One task per subscription feeds the processor's queue, so a
//! partition's envelopes keep the order NATS delivered them in. A revoked partition is
//! dropped before a new one is taken; what its task still held is dropped too.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use async_nats::Client;
use async_nats::connection::State;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use common::bus::{Ack, Inbound};
use common::envelope::Envelope;

use crate::split_bus::SplitBusConfig;

/// Wait before subscribing again to a partition's subject that could not be subscribed.
const SUBSCRIBE_RETRY: Duration = Duration::from_secs(1);

/// Keeps one processor's FAST subscriptions to the partitions it owns.
pub(crate) struct FollowPartitions {
    pub client: Client,
    pub config: SplitBusConfig,
    pub processor: String,
    pub cancel: CancellationToken,
    pub tx: mpsc::Sender<Inbound>,
}

/// A partition's subscription: its forwarding task's generation (a partition revoked and
/// assigned again gets a new one) and what stops it.
struct Subscribed {
    generation: u64,
    stop: CancellationToken,
}

impl FollowPartitions {
    pub async fn run(
        self,
        mut owned: watch::Receiver<BTreeSet<i32>>,
        taken: watch::Sender<BTreeSet<i32>>,
    ) {
        let mut subscribed: HashMap<i32, Subscribed> = HashMap::new();
        let mut forwarders: JoinSet<(i32, u64)> = JoinSet::new();
        let mut generation = 0u64;
        loop {
            let wanted = owned.borrow_and_update().clone();
            // Revoked first: the next owner may already be taking them.
            subscribed.retain(|p, s| {
                let keep = wanted.contains(p);
                if !keep {
                    s.stop.cancel();
                }
                keep
            });
            let mut failed = false;
            let mut added = false;
            let missing: Vec<i32> = wanted
                .iter()
                .copied()
                .filter(|p| !subscribed.contains_key(p))
                .collect();
            for p in missing {
                match self.client.subscribe(self.config.fast_subject(p)).await {
                    Ok(subscriber) => {
                        generation += 1;
                        let stop = self.cancel.child_token();
                        let tx = self.tx.clone();
                        let forwarding = forward(subscriber, tx, stop.clone());
                        let g = generation;
                        forwarders.spawn(async move {
                            forwarding.await;
                            (p, g)
                        });
                        subscribed.insert(p, Subscribed { generation, stop });
                        added = true;
                    }
                    Err(e) => {
                        warn!(processor = %self.processor, partition = p, error = %e,
                            "cannot subscribe to a partition's FAST subject; retrying");
                        failed = true;
                    }
                }
            }
            if added && self.client.connection_state() == State::Connected {
                // The subscriptions reach the server before anyone is told they are taken.
                let _ =
                    tokio::time::timeout(self.config.produce_timeout(), self.client.flush()).await;
            }
            let now: BTreeSet<i32> = subscribed.keys().copied().collect();
            metrics::gauge!("linker_fast_partitions", "processor" => self.processor.clone())
                .set(now.len() as f64);
            if *taken.borrow() != now {
                info!(processor = %self.processor, partitions = ?now, "FAST partitions taken");
                taken.send_replace(now);
            }
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                _ = self.tx.closed() => break,
                changed = owned.changed() => if changed.is_err() { break },
                _ = tokio::time::sleep(SUBSCRIBE_RETRY), if failed => {}
                Some(ended) = forwarders.join_next() => {
                    // A subscription that ended by itself (not stopped) is taken again.
                    if let Ok((p, g)) = ended
                        && subscribed.get(&p).is_some_and(|s| s.generation == g)
                    {
                        subscribed.remove(&p);
                    }
                }
            }
        }
        for s in subscribed.values() {
            s.stop.cancel();
        }
        while forwarders.join_next().await.is_some() {}
        metrics::gauge!("linker_fast_partitions", "processor" => self.processor.clone()).set(0.0);
    }
}

/// Decodes FAST envelopes from `subscriber` into `tx`, with no-op acks, until `stop`, the
/// end of `tx` or of the subscription; then unsubscribes. What it holds when stopped is
/// dropped: FAST is at most once, and the partition's next owner is already taking newer ones.
pub(crate) async fn forward(
    mut subscriber: async_nats::Subscriber,
    tx: mpsc::Sender<Inbound>,
    stop: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => break,
            _ = tx.closed() => break,
            m = subscriber.next() => match m {
                Some(m) => m,
                None => break,
            },
        };
        let envelope: Envelope = match serde_json::from_slice(&message.payload) {
            Ok(e) => e,
            Err(e) => {
                warn!(error = %e, subject = %message.subject, "undecodable FAST envelope dropped");
                continue;
            }
        };
        let inbound = Inbound {
            envelope,
            ack: Ack::none(),
        };
        tokio::select! {
            _ = stop.cancelled() => break,
            sent = tx.send(inbound) => if sent.is_err() { break },
        }
    }
    let _ = subscriber.unsubscribe().await;
}
