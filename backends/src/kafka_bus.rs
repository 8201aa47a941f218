//! The Kafka half of the split bus: RELIABLE envelopes, keyed by sender and sent to the
//! sender's partition ([`partition_of`]), durable until a processor has delivered or stored
//! them. Each record goes out with an [`Ack`]; offsets are committed up to the first
//! unacknowledged one ([`OffsetTracker`]), so a crash redelivers, never loses. The tracker is
//! shared, under a short lock, with the rebalance callbacks that librdkafka calls
//! synchronously while the consumer polls; those callbacks also tell the NATS side which
//! partitions' FAST subjects to take ([`Owned`]).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::util::Timeout;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use common::bus::{Ack, BusError, Inbound};
use common::envelope::Envelope;

use crate::offset_tracker::OffsetTracker;
use crate::partitions::{Owned, partition_of};
use crate::split_bus::{SplitBusConfig, Tasks};

/// Longest wait between two connection attempts to a broker, so a restarted Kafka is found
/// again within about a second.
const RECONNECT_BACKOFF_MAX_MS: &str = "1000";

/// How often a consumer refreshes the topic's metadata (librdkafka's default is 5 minutes).
/// A consumer that joined before it saw the topic's partitions is assigned none until the
/// next refresh; this bounds that, and finds added partitions soon.
const CONSUMER_METADATA_REFRESH_MS: &str = "10000";
/// How often the consumer reports its lag (`linker_kafka_consumer_lag`).
const STATISTICS_INTERVAL_MS: &str = "5000";

pub(crate) struct KafkaBus {
    /// Replaced by a new one if it hits a fatal error (an idempotent producer that lost its
    /// sequence refuses everything after that).
    producer: RwLock<FutureProducer<KafkaLog>>,
    config: SplitBusConfig,
    topic: String,
    /// Partitions of the topic, read from the broker at connect: every record names its
    /// partition, and FAST envelopes go to the same one.
    partitions: i32,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(format!("kafka: {what}: {e}"))
}

fn client_config(config: &SplitBusConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.kafka_brokers)
        .set("reconnect.backoff.max.ms", RECONNECT_BACKOFF_MAX_MS)
        .set_log_level(RDKafkaLogLevel::Warning);
    c
}

fn new_producer(config: &SplitBusConfig) -> Result<FutureProducer<KafkaLog>, BusError> {
    let timeout = config.produce_timeout_ms.to_string();
    client_config(config)
        .set("client.id", format!("linker-{}-producer", config.domain))
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", config.linger_ms.to_string())
        .set("message.timeout.ms", &timeout)
        .set("request.timeout.ms", &timeout)
        .create_with_context(KafkaLog)
        .map_err(|e| unavailable("cannot create the producer", e))
}

impl KafkaBus {
    pub async fn connect(config: &SplitBusConfig) -> Result<KafkaBus, BusError> {
        let topic = config.inbound_name();
        let producer = new_producer(config)?;
        create_topic(config, &topic).await?;
        // Also warms up: the producer connects to the topic's leader now, so the idempotent
        // producer id and the topic's metadata are in place before the first publish.
        let partitions = partition_count(&producer, &topic, config).await;
        Ok(KafkaBus {
            producer: RwLock::new(producer),
            config: config.clone(),
            topic,
            partitions,
        })
    }

    /// The partition of `envelope`'s sender: where its RELIABLE records go, and whose owner
    /// takes its FAST envelopes.
    pub fn partition_of(&self, envelope: &Envelope) -> i32 {
        partition_of(envelope.from.as_str().as_bytes(), self.partitions)
    }

    fn producer(&self) -> FutureProducer<KafkaLog> {
        self.producer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `Ok` once the broker acknowledged the record (all in-sync replicas have it).
    pub async fn publish(&self, envelope: &Envelope) -> Result<(), BusError> {
        let payload = serde_json::to_vec(envelope).map_err(|e| BusError::Codec(e.to_string()))?;
        let record = FutureRecord::to(&self.topic)
            .key(envelope.from.as_str())
            .partition(self.partition_of(envelope))
            .payload(&payload);
        let producer = self.producer();
        match producer
            .send(record, Timeout::After(self.config.produce_timeout()))
            .await
        {
            Ok(_) => Ok(()),
            Err((e, _)) => {
                if let Some((code, reason)) = producer.client().fatal_error() {
                    error!(?code, %reason, "kafka producer hit a fatal error; replacing it");
                    self.replace_producer(&producer);
                }
                Err(produce_error(e))
            }
        }
    }

    /// Puts a new producer in place of `failed`, unless another publish already did.
    fn replace_producer(&self, failed: &FutureProducer<KafkaLog>) {
        let Ok(fresh) = new_producer(&self.config) else {
            return;
        };
        let mut current = self.producer.write().unwrap_or_else(|e| e.into_inner());
        if current.client().native_ptr() == failed.client().native_ptr() {
            *current = fresh;
        }
    }

    /// Consumes the inbound topic as a member of the processors' group, feeding `tx`, and
    /// keeps `owned` to the partitions the group assigned this member.
    pub fn consume(
        &self,
        name: &str,
        tx: mpsc::Sender<Inbound>,
        owned: Owned,
        tasks: &Tasks,
    ) -> Result<(), BusError> {
        let tracker = Arc::new(Mutex::new(OffsetTracker::new()));
        let context = ConsumerLog {
            tracker: tracker.clone(),
            topic: self.topic.clone(),
            processor: name.to_owned(),
            owned,
            kept: Mutex::new(BTreeSet::new()),
        };
        let c = &self.config;
        let consumer: StreamConsumer<ConsumerLog> = client_config(c)
            .set("group.id", c.processor_group())
            .set("client.id", name)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", c.session_timeout_ms.to_string())
            .set("heartbeat.interval.ms", c.heartbeat_interval_ms.to_string())
            .set("max.poll.interval.ms", c.max_poll_interval_ms.to_string())
            .set(
                "topic.metadata.refresh.interval.ms",
                CONSUMER_METADATA_REFRESH_MS,
            )
            .set("statistics.interval.ms", STATISTICS_INTERVAL_MS)
            .create_with_context(context)
            .map_err(|e| unavailable("cannot create the consumer", e))?;
        consumer
            .subscribe(&[&self.topic])
            .map_err(|e| unavailable("subscribe", e))?;
        info!(processor = name, group = %c.processor_group(), topic = %self.topic, "consuming");
        tasks.spawn(run_consumer(
            consumer,
            tracker,
            tx,
            tasks.cancel.clone(),
            Duration::from_millis(c.commit_interval_ms.max(1)),
            self.topic.clone(),
        ));
        Ok(())
    }

    /// `Ok` if a broker answers a metadata request for the inbound topic within `timeout`.
    pub async fn ready(&self, timeout: Duration) -> Result<(), BusError> {
        let producer = self.producer();
        let topic = self.topic.clone();
        match tokio::task::spawn_blocking(move || {
            producer.client().fetch_metadata(Some(&topic), timeout)
        })
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(unavailable(
                &format!("{} does not answer", self.config.kafka_brokers),
                e,
            )),
            Err(e) => Err(unavailable("metadata request", e)),
        }
    }

    /// Waits up to `timeout` for records still on their way to the broker.
    pub async fn flush(&self, timeout: Duration) {
        let producer = self.producer();
        let flushed = tokio::task::spawn_blocking(move || producer.flush(timeout)).await;
        if let Ok(Err(e)) = flushed {
            warn!(error = %e, "kafka producer not flushed");
        }
    }
}

fn produce_error(e: KafkaError) -> BusError {
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize) => {
            BusError::Codec(format!("kafka: {e}"))
        }
        _ => unavailable("publish", e),
    }
}

/// The topic's partition count as the broker reports it, asked until it knows the topic
/// (a topic just created may be unknown for a moment) or the produce timeout passes; then
/// the configured count, which is what a topic created by this bus has.
async fn partition_count(
    producer: &FutureProducer<KafkaLog>,
    topic: &str,
    config: &SplitBusConfig,
) -> i32 {
    let deadline = Instant::now() + config.produce_timeout();
    loop {
        let (p, t, timeout) = (producer.clone(), topic.to_owned(), config.produce_timeout());
        let asked =
            tokio::task::spawn_blocking(move || p.client().fetch_metadata(Some(&t), timeout)).await;
        let count = match &asked {
            Ok(Ok(metadata)) => metadata
                .topics()
                .iter()
                .find(|t| t.name() == topic && t.error().is_none())
                .map_or(0, |t| t.partitions().len() as i32),
            _ => 0,
        };
        if count > 0 {
            if count != config.partitions {
                info!(
                    topic,
                    partitions = count,
                    configured = config.partitions,
                    "the inbound topic has its own partition count; using it"
                );
            }
            return count;
        }
        if Instant::now() >= deadline {
            warn!(
                topic,
                partitions = config.partitions,
                "the broker did not report the topic's partitions; assuming the configured count"
            );
            return config.partitions.max(1);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates the inbound topic unless it exists.
async fn create_topic(config: &SplitBusConfig, topic: &str) -> Result<(), BusError> {
    let admin: AdminClient<KafkaLog> = client_config(config)
        .create_with_context(KafkaLog)
        .map_err(|e| unavailable("cannot create the admin client", e))?;
    let new = NewTopic::new(
        topic,
        config.partitions,
        TopicReplication::Fixed(config.replication_factor),
    );
    let options = AdminOptions::new()
        .request_timeout(Some(config.produce_timeout()))
        .operation_timeout(Some(config.produce_timeout()));
    let results = admin
        .create_topics([&new], &options)
        .await
        .map_err(|e| unavailable(&format!("cannot reach {}", config.kafka_brokers), e))?;
    // The admin client joins its polling thread on drop; keep that off the runtime.
    let _ = tokio::task::spawn_blocking(move || drop(admin)).await;
    for result in results {
        match result {
            Ok(name) => {
                info!(topic = %name, partitions = config.partitions, "created the inbound topic")
            }
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(unavailable(&format!("cannot create topic {name}"), code));
            }
        }
    }
    Ok(())
}

/// Hands records to the processor and commits what it acknowledged, until the receiver is
/// dropped or the bus shuts down; then leaves the group (committing what is done).
async fn run_consumer(
    consumer: StreamConsumer<ConsumerLog>,
    tracker: Arc<Mutex<OffsetTracker>>,
    tx: mpsc::Sender<Inbound>,
    cancel: tokio_util::sync::CancellationToken,
    commit_interval: Duration,
    topic: String,
) {
    let mut tick = tokio::time::interval(commit_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    'consume: loop {
        let received = tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tx.closed() => break,
            _ = tick.tick() => {
                commit(&consumer, &tracker, &topic);
                continue;
            }
            m = consumer.recv() => m.map(|m| {
                (m.partition(), m.offset(), m.payload().map(<[u8]>::to_vec).unwrap_or_default())
            }),
        };
        let (partition, offset, payload) = match received {
            Ok(r) => r,
            Err(e) => {
                // Broker down, topic being created...: librdkafka retries by itself.
                debug!(error = %e, "kafka consumer error");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let epoch = lock(&tracker).received(partition, offset);
        let envelope: Envelope = match serde_json::from_slice(&payload) {
            Ok(e) => e,
            Err(e) => {
                warn!(partition, offset, error = %e, "undecodable RELIABLE record skipped");
                lock(&tracker).done(partition, epoch, offset);
                continue;
            }
        };
        let acks = tracker.clone();
        let inbound = Inbound {
            envelope,
            ack: Ack::new(move || lock(&acks).done(partition, epoch, offset)),
        };
        // Wait for room in the queue, still committing what the processor finishes.
        let send = tx.send(inbound);
        tokio::pin!(send);
        loop {
            tokio::select! {
                sent = &mut send => match sent {
                    Ok(()) => break,
                    Err(_) => break 'consume,
                },
                _ = tick.tick() => commit(&consumer, &tracker, &topic),
                _ = cancel.cancelled() => break 'consume,
            }
        }
    }
    // Commit what is done and wait for the broker (an asynchronous commit still in flight
    // may not be waited for by the close), then leave the group. Both block, so they run off
    // the runtime's threads.
    let _ = tokio::task::spawn_blocking(move || {
        let offsets = lock(&tracker).committable();
        if !offsets.is_empty()
            && let Err(e) = offsets_list(&topic, &offsets)
                .and_then(|tpl| consumer.commit(&tpl, CommitMode::Sync))
        {
            warn!(error = %e, "last commit failed; those records come again");
        }
        drop(consumer);
        debug!(topic, "kafka consumer closed");
    })
    .await;
}

fn lock(tracker: &Mutex<OffsetTracker>) -> MutexGuard<'_, OffsetTracker> {
    // No code panics while holding it; if one did, the bookkeeping is still consistent.
    tracker.lock().unwrap_or_else(|e| e.into_inner())
}

fn offsets_list(topic: &str, offsets: &[(i32, i64)]) -> KafkaResult<TopicPartitionList> {
    let mut tpl = TopicPartitionList::with_capacity(offsets.len());
    for (partition, offset) in offsets {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
    }
    Ok(tpl)
}

/// Commits, without waiting, every partition whose done prefix moved; a failure is retried
/// at the next tick (see [`ConsumerLog::commit_callback`]).
fn commit<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    tracker: &Mutex<OffsetTracker>,
    topic: &str,
) {
    let offsets = lock(tracker).to_commit();
    if offsets.is_empty() {
        return;
    }
    let result =
        offsets_list(topic, &offsets).and_then(|tpl| consumer.commit(&tpl, CommitMode::Async));
    if let Err(e) = result {
        debug!(error = %e, "kafka commit not sent; retried");
        let mut t = lock(tracker);
        for (partition, _) in offsets {
            t.commit_failed(partition);
        }
    }
}

/// Routes librdkafka's logs and errors to `tracing`.
pub(crate) struct KafkaLog;

fn log_to_tracing(level: RDKafkaLogLevel, fac: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => error!(target: "librdkafka", fac, "{message}"),
        RDKafkaLogLevel::Warning => warn!(target: "librdkafka", fac, "{message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            info!(target: "librdkafka", fac, "{message}")
        }
        RDKafkaLogLevel::Debug => debug!(target: "librdkafka", fac, "{message}"),
    }
}

impl ClientContext for KafkaLog {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log_to_tracing(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // "All brokers down" and the like: the client keeps reconnecting.
        warn!(target: "librdkafka", error = %error, "{reason}");
    }
}

/// The consumer's context: logs, plus the rebalance and commit callbacks that keep the
/// offset tracker and the FAST subscriptions in step with the partitions this consumer owns.
struct ConsumerLog {
    tracker: Arc<Mutex<OffsetTracker>>,
    topic: String,
    processor: String,
    owned: Owned,
    /// Partitions whose assignment was lost (Kafka unreachable for a session timeout) and
    /// whose FAST subjects are still taken, so FAST keeps flowing while Kafka is down; the
    /// next assignment replaces them.
    kept: Mutex<BTreeSet<i32>>,
}

impl ClientContext for ConsumerLog {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log_to_tracing(level, fac, message);
    }

    /// Records this consumer's lag: records of its partitions not yet consumed.
    fn stats(&self, statistics: Statistics) {
        let lag: i64 = statistics
            .topics
            .get(&self.topic)
            .map(|t| t.partitions.values().map(|p| p.consumer_lag.max(0)).sum())
            .unwrap_or(0);
        metrics::gauge!("linker_kafka_consumer_lag", "processor" => self.processor.clone())
            .set(lag as f64);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        warn!(target: "librdkafka", error = %error, "{reason}");
    }
}

impl ConsumerContext for ConsumerLog {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                {
                    let mut t = lock(&self.tracker);
                    for p in &partitions {
                        t.assign(*p);
                    }
                }
                let stale =
                    std::mem::take(&mut *self.kept.lock().unwrap_or_else(|e| e.into_inner()));
                self.owned.send_modify(|owned| {
                    owned.retain(|p| !stale.contains(p));
                    owned.extend(&partitions);
                });
                info!(processor = %self.processor, topic = %self.topic, ?partitions, "partitions assigned");
            }
            Rebalance::Revoke(tpl) => {
                let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                // FAST first: the sooner this member stops taking them, the shorter the time
                // both it and the next owner do.
                if consumer.assignment_lost() {
                    let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
                    kept.extend(&partitions);
                    warn!(processor = %self.processor, ?partitions,
                        "partition assignment lost; their FAST subjects are kept until the group forms again");
                } else {
                    self.owned
                        .send_modify(|owned| owned.retain(|p| !partitions.contains(p)));
                }
                let offsets: Vec<(i32, i64)> = {
                    let mut t = lock(&self.tracker);
                    partitions
                        .iter()
                        .filter_map(|p| t.revoke(*p).map(|o| (*p, o)))
                        .collect()
                };
                info!(processor = %self.processor, topic = %self.topic, ?partitions, "partitions revoked");
                // Last chance to commit what is done before another member takes them over.
                if !offsets.is_empty() {
                    let result = offsets_list(&self.topic, &offsets)
                        .and_then(|tpl| consumer.commit(&tpl, CommitMode::Sync));
                    if let Err(e) = result {
                        warn!(error = %e, "commit at revocation failed; those records come again");
                    }
                }
            }
            Rebalance::Error(e) => warn!(error = %e, "kafka rebalance error"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(e) = result {
            debug!(error = %e, "kafka commit failed; retried");
            let mut t = lock(&self.tracker);
            for element in offsets.elements() {
                t.commit_failed(element.partition());
            }
        }
    }
}
