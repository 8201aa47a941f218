//! The NATS half of the split bus: FAST envelopes, each on the subject of its sender's
//! partition and taken by the processor that owns that partition in Kafka (so one sender's
//! FAST envelopes reach one processor, in order); commands and delivery reports between
//! processors and connectors. Nothing here is durable: a request with no report in time
//! counts as not written (the processor stores it). While disconnected, calls fail at once
//! with `Unavailable` instead of queueing in the client, which reconnects by itself and
//! re-subscribes.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::client::RequestErrorKind;
use async_nats::connection::State;
use async_nats::{Client, ConnectOptions, Event, Request, Subject};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use common::bus::{BusError, Command, Inbound, Replier};
use common::envelope::{ConnectorCommand, DeliveryReport, Envelope};
use common::ids::ConnectorName;

use crate::fast_subscriptions::{FollowPartitions, forward};
use crate::split_bus::{SplitBusConfig, Tasks};

/// The queue group every processor joins on the unpartitioned inbound subject, where
/// connectors of earlier versions publish FAST envelopes (each goes to one processor, in no
/// particular order); kept so a rolling upgrade loses no FAST envelope.
pub(crate) const PROCESSOR_QUEUE_GROUP: &str = "processor";

/// Messages the NATS client buffers per subscription while this bus's queue is full; past
/// it the client drops them and reports a slow consumer (logged).
const SUBSCRIPTION_CAPACITY: usize = 65_536;

/// Longest wait between two reconnection attempts.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// How long after (re)connecting a request nobody answers counts as "not subscribed again
/// yet" (`Unavailable`, retried) rather than "no such connector": after a NATS restart a
/// connector may reconnect and subscribe again later than this process.
pub const RESUBSCRIBE_GRACE: Duration = Duration::from_secs(5);

pub(crate) struct NatsBus {
    client: Client,
    config: SplitBusConfig,
    /// When the client last (re)connected, in ms since the epoch.
    connected_at: Arc<AtomicU64>,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(format!("nats: {what}: {e}"))
}

fn encode(value: &impl Serialize) -> Result<Bytes, BusError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| BusError::Codec(e.to_string()))
}

impl NatsBus {
    pub async fn connect(config: &SplitBusConfig) -> Result<NatsBus, BusError> {
        let url = config.nats_url.clone();
        let connected_at = Arc::new(AtomicU64::new(common::now_millis()));
        let on_connect = connected_at.clone();
        let client = ConnectOptions::new()
            .name(format!("linker-{}", config.domain))
            .connection_timeout(config.produce_timeout())
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis(50 * 2u64.saturating_pow(attempts.min(10) as u32))
                    .min(MAX_RECONNECT_DELAY)
            })
            .subscription_capacity(SUBSCRIPTION_CAPACITY)
            .event_callback(move |event| {
                let url = url.clone();
                let on_connect = on_connect.clone();
                async move {
                    match event {
                        Event::Connected => {
                            on_connect.store(common::now_millis(), Ordering::Relaxed);
                            info!(%url, "nats connected")
                        }
                        Event::Disconnected => warn!(%url, "nats disconnected; reconnecting"),
                        Event::SlowConsumer(sid) => {
                            warn!(%url, sid, "nats subscription full: messages dropped")
                        }
                        other => debug!(%url, event = %other, "nats event"),
                    }
                }
            })
            .connect(config.nats_url.as_str())
            .await
            .map_err(|e| unavailable(&format!("cannot connect to {}", config.nats_url), e))?;
        connected_at.store(common::now_millis(), Ordering::Relaxed);
        Ok(NatsBus {
            client,
            config: config.clone(),
            connected_at,
        })
    }

    /// True within `RESUBSCRIBE_GRACE` of the last (re)connect.
    fn just_connected(&self) -> bool {
        let since = common::now_millis().saturating_sub(self.connected_at.load(Ordering::Relaxed));
        since < RESUBSCRIBE_GRACE.as_millis() as u64
    }

    /// Fails fast while disconnected: the client would otherwise buffer the message and
    /// report success.
    fn connected(&self) -> Result<(), BusError> {
        match self.client.connection_state() {
            State::Connected => Ok(()),
            state => Err(BusError::Unavailable(format!(
                "nats: not connected to {} ({state:?})",
                self.config.nats_url
            ))),
        }
    }

    /// Publishes a FAST envelope on the subject of `partition`, its sender's partition.
    /// `Ok` once handed to NATS, whether or not a processor takes that subject now.
    pub async fn publish(&self, partition: i32, envelope: &Envelope) -> Result<(), BusError> {
        self.connected()?;
        let payload = encode(envelope)?;
        self.client
            .publish(self.config.fast_subject(partition), payload)
            .await
            .map_err(|e| unavailable("publish", e))
    }

    /// Feeds FAST envelopes published on the unpartitioned inbound subject (by connectors of
    /// earlier versions) into `tx`, as one member of the processors' queue group.
    pub async fn consume_unpartitioned(
        &self,
        tx: mpsc::Sender<Inbound>,
        tasks: &Tasks,
    ) -> Result<(), BusError> {
        let subscriber = self
            .client
            .queue_subscribe(self.config.inbound_name(), PROCESSOR_QUEUE_GROUP.into())
            .await
            .map_err(|e| unavailable("subscribe", e))?;
        tasks.spawn(forward(subscriber, tx, tasks.cancel.clone()));
        Ok(())
    }

    /// Feeds the FAST envelopes of the partitions in `owned` into `tx`, following its
    /// changes: one subscription (no queue group) and one task per partition, so each
    /// partition's envelopes reach `tx` in the order NATS delivered them. `taken` says which
    /// partitions' subjects are subscribed now (also the gauge `linker_fast_partitions`).
    /// Ends when the bus shuts down, `tx` closes or the owner of `owned` (the Kafka
    /// consumer) goes.
    pub fn consume(
        &self,
        processor: &str,
        owned: watch::Receiver<BTreeSet<i32>>,
        taken: watch::Sender<BTreeSet<i32>>,
        tx: mpsc::Sender<Inbound>,
        tasks: &Tasks,
    ) {
        let follow = FollowPartitions {
            client: self.client.clone(),
            config: self.config.clone(),
            processor: processor.to_owned(),
            cancel: tasks.cancel.clone(),
            tx,
        };
        tasks.spawn(follow.run(owned, taken));
    }

    /// One-way: `Ok` once handed to NATS, whether or not the connector listens.
    pub async fn send(
        &self,
        connector: &ConnectorName,
        command: &ConnectorCommand,
    ) -> Result<(), BusError> {
        let subject = self.config.connector_subject(connector)?;
        self.connected()?;
        self.client
            .publish(subject, encode(command)?)
            .await
            .map_err(|e| unavailable("send", e))
    }

    pub async fn request(
        &self,
        connector: &ConnectorName,
        command: &ConnectorCommand,
        timeout: Duration,
    ) -> Result<DeliveryReport, BusError> {
        let subject = self.config.connector_subject(connector)?;
        self.connected()?;
        let request = Request::new()
            .payload(encode(command)?)
            .timeout(Some(timeout));
        let reply = self
            .client
            .send_request(subject, request)
            .await
            .map_err(|e| match e.kind() {
                RequestErrorKind::NoResponders if self.just_connected() => BusError::Unavailable(
                    format!("nats: {connector} has not subscribed again since the reconnect"),
                ),
                RequestErrorKind::NoResponders => BusError::NoSuchConnector(connector.to_string()),
                RequestErrorKind::TimedOut => BusError::TimedOut(timeout),
                _ => unavailable("request", e),
            })?;
        serde_json::from_slice(&reply.payload).map_err(|e| BusError::Codec(e.to_string()))
    }

    /// Commands for connector `name`; a request's replier publishes the report to the
    /// request's reply subject.
    pub async fn listen(
        &self,
        name: &ConnectorName,
        tasks: &Tasks,
    ) -> Result<mpsc::Receiver<Command>, BusError> {
        let subject = self.config.connector_subject(name)?;
        let mut subscriber = self
            .client
            .subscribe(subject)
            .await
            .map_err(|e| unavailable("subscribe", e))?;
        let queue = self.config.command_queue.max(1);
        let (tx, rx) = mpsc::channel(queue);
        // Repliers are called from socket tasks and must not wait: they queue here, and this
        // task publishes. A full queue drops the report; the requester times out and stores.
        let (reply_tx, mut reply_rx) = mpsc::channel::<(Subject, Bytes)>(queue);
        let client = self.client.clone();
        let cancel = tasks.cancel.clone();
        let connector = name.clone();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tx.closed() => break,
                    Some((subject, payload)) = reply_rx.recv() => {
                        if let Err(e) = client.publish(subject, payload).await {
                            debug!(%connector, error = %e, "delivery report not sent");
                        }
                    }
                    m = subscriber.next() => {
                        let Some(message) = m else { break };
                        let command: ConnectorCommand = match serde_json::from_slice(&message.payload) {
                            Ok(c) => c,
                            Err(e) => {
                                warn!(%connector, error = %e, "undecodable command dropped");
                                continue;
                            }
                        };
                        let reply = message.reply.map(|subject| {
                            let reply_tx = reply_tx.clone();
                            Replier::new(move |report: DeliveryReport| match encode(&report) {
                                Ok(payload) => {
                                    if reply_tx.try_send((subject, payload)).is_err() {
                                        debug!("delivery report dropped: reply queue full");
                                    }
                                }
                                Err(e) => warn!(error = %e, "delivery report not encodable"),
                            })
                        });
                        if tx.send(Command { command, reply }).await.is_err() {
                            break;
                        }
                    }
                }
            }
            // Reports still queued go out before the subscription ends.
            while let Ok((subject, payload)) = reply_rx.try_recv() {
                let _ = client.publish(subject, payload).await;
            }
            let _ = subscriber.unsubscribe().await;
        });
        Ok(rx)
    }

    /// Pushes out what the client still buffers (bounded by the connection state).
    /// `Ok` while the client is connected to the server.
    pub fn ready(&self) -> Result<(), BusError> {
        self.connected()
    }

    pub async fn flush(&self) {
        if self.connected().is_ok()
            && let Err(e) = self.client.flush().await
        {
            debug!(error = %e, "nats flush failed");
        }
    }
}
