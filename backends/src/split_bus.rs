//! The split-mode bus: FAST envelopes and connector commands on NATS, RELIABLE envelopes on
//! Kafka, behind one [`Bus`]; [`Bus::consume`] merges both into one queue. A sender's FAST
//! envelopes go to the processor owning its Kafka partition, like its RELIABLE ones, so both
//! keep the sender's order across processors. An engine that is down gives
//! [`BusError::Unavailable`]; the clients reconnect and consumption resumes on the same bus.
//! Names: Kafka topic `linker.<domain>.inbound`, group `linker.<domain>.processor`; NATS FAST
//! subjects `linker.<domain>.fast.<partition>` (and `linker.<domain>.inbound`, queue group
//! `processor`, for connectors of earlier versions); commands `linker.<domain>.connector.<name>`.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use common::bus::{Bus, BusError, Command, Inbound};
use common::envelope::{ConnectorCommand, DeliveryReport, Envelope};
use common::frame::Feature;
use common::ids::ConnectorName;

use crate::kafka_bus::KafkaBus;

/// Longest wait for Kafka's answer when `/ready` asks.
const READY_TIMEOUT: Duration = Duration::from_secs(2);
use crate::nats_bus::NatsBus;

/// Settings of the split-mode bus; every key has a default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SplitBusConfig {
    /// The domain whose envelopes this bus carries; part of every subject, topic and group.
    /// Letters, digits, `-` and `_` only.
    pub domain: String,
    /// NATS server(s), comma-separated (`nats://host:4222`).
    pub nats_url: String,
    /// Kafka bootstrap servers, comma-separated (`host:9092`).
    pub kafka_brokers: String,
    /// Partitions of the inbound topic when this bus creates it (an existing topic is left
    /// as it is, and its own count is used). More partitions let more processors share the
    /// work; a sender's FAST and RELIABLE envelopes go to the owner of its partition.
    pub partitions: i32,
    /// Replication factor of the inbound topic when this bus creates it.
    pub replication_factor: i32,
    /// Bounds a RELIABLE publish: no broker acknowledgement within it -> `Unavailable`
    /// (librdkafka `message.timeout.ms`). Also bounds connecting to each engine.
    pub produce_timeout_ms: u64,
    /// How long the producer waits to batch records (librdkafka `linger.ms`).
    pub linger_ms: u64,
    /// A processor silent for this long is dropped from the group and its partitions move to
    /// the others (Kafka `session.timeout.ms`; brokers refuse less than 6000 by default).
    pub session_timeout_ms: u64,
    /// Heartbeats to the group coordinator; a third of the session timeout or less. A member
    /// learns of a rebalance at its next heartbeat, so this also paces rebalances.
    pub heartbeat_interval_ms: u64,
    /// A processor that takes nothing from the bus for this long (it holds the queue full)
    /// leaves the group until it takes again (Kafka `max.poll.interval.ms`).
    pub max_poll_interval_ms: u64,
    /// How often processed offsets are committed.
    pub commit_interval_ms: u64,
    /// Envelopes buffered between the engines and a processor; when full, consumption waits.
    /// RELIABLE ones buffered from a partition that moves to another processor are still
    /// handed out here, and redelivered there: smaller means fewer such duplicates.
    pub inbound_queue: usize,
    /// Commands buffered for a connector; when full, commands wait in the NATS client
    /// (which drops them past its own limit: a request then times out).
    pub command_queue: usize,
}

impl Default for SplitBusConfig {
    fn default() -> Self {
        SplitBusConfig {
            domain: "domain-01".into(),
            nats_url: "nats://127.0.0.1:4222".into(),
            kafka_brokers: "127.0.0.1:9092".into(),
            partitions: 8,
            replication_factor: 1,
            produce_timeout_ms: 5_000,
            linger_ms: 2,
            session_timeout_ms: 6_000,
            heartbeat_interval_ms: 500,
            max_poll_interval_ms: 60_000,
            commit_interval_ms: 100,
            inbound_queue: 1_024,
            command_queue: 1_024,
        }
    }
}

impl SplitBusConfig {
    pub fn produce_timeout(&self) -> Duration {
        Duration::from_millis(self.produce_timeout_ms)
    }

    /// The Kafka topic processors take RELIABLE envelopes from (and the NATS subject of FAST
    /// envelopes from connectors of earlier versions).
    pub fn inbound_name(&self) -> String {
        format!("linker.{}.inbound", self.domain)
    }

    /// The NATS subject of the FAST envelopes of senders in Kafka partition `partition`.
    pub fn fast_subject(&self, partition: i32) -> String {
        format!("linker.{}.fast.{partition}", self.domain)
    }

    /// The longest [`Bus::consume`] waits for the group to give the new member partitions.
    pub fn session_timeout(&self) -> Duration {
        Duration::from_millis(self.session_timeout_ms)
    }

    /// The Kafka consumer group of the domain's processors.
    pub fn processor_group(&self) -> String {
        format!("linker.{}.processor", self.domain)
    }

    /// The subject a connector takes its commands from.
    pub fn connector_subject(&self, connector: &ConnectorName) -> Result<String, BusError> {
        Ok(format!(
            "linker.{}.connector.{}",
            self.domain,
            name_token("connector name", connector.as_str())?
        ))
    }
}

/// Checks that a name can stand as one token in a NATS subject and in a Kafka topic name.
pub(crate) fn name_token<'a>(what: &str, name: &'a str) -> Result<&'a str, BusError> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(name)
    } else {
        Err(BusError::Codec(format!(
            "{what} `{name}` must be letters, digits, `-` or `_` to name a subject or topic"
        )))
    }
}

/// The tasks a bus runs (subscriptions, consumers); cancelled when the bus is shut down or
/// dropped.
pub(crate) struct Tasks {
    pub cancel: CancellationToken,
    set: Mutex<JoinSet<()>>,
}

impl Tasks {
    fn new() -> Tasks {
        Tasks {
            cancel: CancellationToken::new(),
            set: Mutex::new(JoinSet::new()),
        }
    }

    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let mut set = self.set.lock().unwrap_or_else(|e| e.into_inner());
        // Reap the tasks that ended (a consumer whose receiver was dropped).
        while set.try_join_next().is_some() {}
        set.spawn(task);
    }

    async fn shutdown(&self) {
        self.cancel.cancel();
        let mut set = std::mem::take(&mut *self.set.lock().unwrap_or_else(|e| e.into_inner()));
        while set.join_next().await.is_some() {}
    }
}

/// NATS for FAST and commands, Kafka for RELIABLE.
pub struct SplitBus {
    config: SplitBusConfig,
    nats: NatsBus,
    kafka: KafkaBus,
    tasks: Tasks,
}

impl SplitBus {
    /// Connects to both engines and creates the inbound topic if it is missing. Fails with
    /// `Unavailable` if either engine cannot be reached within `produce_timeout_ms`.
    pub async fn connect(config: &SplitBusConfig) -> Result<SplitBus, BusError> {
        name_token("domain", &config.domain)?;
        let nats = NatsBus::connect(config).await?;
        let kafka = KafkaBus::connect(config).await?;
        Ok(SplitBus {
            config: config.clone(),
            nats,
            kafka,
            tasks: Tasks::new(),
        })
    }

    pub fn config(&self) -> &SplitBusConfig {
        &self.config
    }

    /// Stops every consumer and listener (committing what was acknowledged and leaving the
    /// consumer group), then waits up to the produce timeout for records still in flight.
    pub async fn shutdown(&self) {
        self.tasks.shutdown().await;
        self.kafka.flush(self.config.produce_timeout()).await;
        self.nats.flush().await;
    }
}

impl Drop for SplitBus {
    fn drop(&mut self) {
        // The tasks see the token and end on their own (a Kafka consumer commits and leaves
        // its group on the way out); aborting them would skip that.
        self.tasks.cancel.cancel();
        self.tasks
            .set
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .detach_all();
    }
}

#[async_trait]
impl Bus for SplitBus {
    async fn publish(&self, envelope: Envelope) -> Result<(), BusError> {
        match envelope.feature {
            Feature::Fast => {
                let partition = self.kafka.partition_of(&envelope);
                self.nats.publish(partition, &envelope).await
            }
            Feature::Reliable => self.kafka.publish(&envelope).await,
        }
    }

    /// Joins the processors' group and takes the FAST subjects of the partitions it gets.
    /// Returns once it took some, or after the session timeout (a member may get none: more
    /// processors than partitions, or Kafka down), so that a processor that says it is up
    /// takes its senders' FAST envelopes.
    async fn consume(&self, name: &str) -> Result<mpsc::Receiver<Inbound>, BusError> {
        let (tx, rx) = mpsc::channel(self.config.inbound_queue.max(1));
        let (owned, owned_rx) = watch::channel(BTreeSet::new());
        let (taken_tx, mut taken) = watch::channel(BTreeSet::new());
        self.nats
            .consume_unpartitioned(tx.clone(), &self.tasks)
            .await?;
        self.nats
            .consume(name, owned_rx, taken_tx, tx.clone(), &self.tasks);
        self.kafka.consume(name, tx, owned, &self.tasks)?;
        let first = taken.wait_for(|t| !t.is_empty());
        if tokio::time::timeout(self.config.session_timeout(), first)
            .await
            .is_err()
        {
            tracing::warn!(
                processor = name,
                "no partition assigned yet; FAST envelopes follow once Kafka assigns some"
            );
        }
        Ok(rx)
    }

    async fn send(
        &self,
        connector: &ConnectorName,
        command: ConnectorCommand,
    ) -> Result<(), BusError> {
        self.nats.send(connector, &command).await
    }

    async fn request(
        &self,
        connector: &ConnectorName,
        command: ConnectorCommand,
        timeout: Duration,
    ) -> Result<DeliveryReport, BusError> {
        self.nats.request(connector, &command, timeout).await
    }

    async fn listen(&self, name: &ConnectorName) -> Result<mpsc::Receiver<Command>, BusError> {
        self.nats.listen(name, &self.tasks).await
    }

    async fn ready(&self) -> Result<(), BusError> {
        self.nats.ready()?;
        self.kafka.ready(READY_TIMEOUT).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_domain() {
        let c = SplitBusConfig {
            domain: "d-1".into(),
            ..SplitBusConfig::default()
        };
        assert_eq!(c.inbound_name(), "linker.d-1.inbound");
        assert_eq!(c.fast_subject(3), "linker.d-1.fast.3");
        assert_eq!(c.processor_group(), "linker.d-1.processor");
        assert_eq!(
            c.connector_subject(&ConnectorName::new("connector-01"))
                .unwrap(),
            "linker.d-1.connector.connector-01"
        );
    }

    #[test]
    fn names_that_would_break_a_subject_are_refused() {
        for bad in ["", "a.b", "a*", ">", "a b", "ä"] {
            assert!(name_token("domain", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn config_reads_with_defaults() {
        let c: SplitBusConfig = serde_json::from_str(r#"{"domain":"x","partitions":4}"#).unwrap();
        assert_eq!(c.partitions, 4);
        assert_eq!(c.produce_timeout_ms, 5_000);
        assert!(serde_json::from_str::<SplitBusConfig>(r#"{"nope":1}"#).is_err());
    }
}
