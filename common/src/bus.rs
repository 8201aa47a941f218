//! The bus: how envelopes reach processors and commands reach connectors.
//!
//! `FAST` envelopes travel on the fast path (NATS in split mode), `RELIABLE` ones on the
//! durable path (Kafka); the embedded bus carries both in memory. A processor acknowledges
//! each [`Inbound`] once it was delivered or persisted; only then may a durable bus commit it.
//! Commands to a connector either go one way ([`Bus::send`]) or ask for a
//! [`DeliveryReport`] ([`Bus::request`]), which the connector gives once the frame is
//! written to the socket.

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::envelope::{ConnectorCommand, DeliveryReport, Envelope};
use crate::ids::ConnectorName;

/// Why the bus could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// The engine cannot be reached; the caller should tell the client or retry.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    /// No connector of that name is listening.
    #[error("no connector named `{0}` is listening")]
    NoSuchConnector(String),
    /// A request got no report in time.
    #[error("no delivery report within {0:?}")]
    TimedOut(Duration),
    /// The bus is shutting down.
    #[error("bus closed")]
    Closed,
    /// Something on the bus could not be decoded or encoded.
    #[error("bad payload on the bus: {0}")]
    Codec(String),
}

/// Marks an inbound envelope as done. Dropping it without `done()` leaves it uncommitted, so a
/// durable bus redelivers it after a restart.
pub struct Ack(Option<Box<dyn FnOnce() + Send>>);

impl Ack {
    /// An ack with nothing to do (the in-memory bus).
    pub fn none() -> Ack {
        Ack(None)
    }

    pub fn new(f: impl FnOnce() + Send + 'static) -> Ack {
        Ack(Some(Box::new(f)))
    }

    pub fn done(mut self) {
        if let Some(f) = self.0.take() {
            f()
        }
    }
}

/// An envelope for a processor, with its acknowledgement.
pub struct Inbound {
    pub envelope: Envelope,
    pub ack: Ack,
}

/// Answers a connector command that asked for a report.
pub struct Replier(Box<dyn FnOnce(DeliveryReport) + Send>);

impl Replier {
    pub fn new(f: impl FnOnce(DeliveryReport) + Send + 'static) -> Replier {
        Replier(Box::new(f))
    }

    pub fn reply(self, report: DeliveryReport) {
        (self.0)(report)
    }
}

/// A command for a connector, with a replier if the sender waits for a report.
pub struct Command {
    pub command: ConnectorCommand,
    pub reply: Option<Replier>,
}

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Hands a client's envelope to the domain's processors, on the path its feature picks.
    /// `Ok` means the bus has it (for `RELIABLE`: durably, where the bus is durable).
    async fn publish(&self, envelope: Envelope) -> Result<(), BusError>;

    /// Hands over an envelope that must not be lost once this returns `Ok` (one that came
    /// over a domain link: the neighbour forgets it on our word). On a durable bus this is
    /// `publish`; a bus that keeps nothing across a crash waits until a processor has handled
    /// the envelope (delivered, stored, or passed on and acknowledged).
    async fn hand_over(&self, envelope: Envelope) -> Result<(), BusError> {
        self.publish(envelope).await
    }

    /// Starts consuming envelopes as processor `name`; processors share the work.
    async fn consume(&self, name: &str) -> Result<mpsc::Receiver<Inbound>, BusError>;

    /// Sends a command to a connector without waiting for it to act.
    async fn send(
        &self,
        connector: &ConnectorName,
        command: ConnectorCommand,
    ) -> Result<(), BusError>;

    /// Sends a command and waits up to `timeout` for the connector's report.
    async fn request(
        &self,
        connector: &ConnectorName,
        command: ConnectorCommand,
        timeout: Duration,
    ) -> Result<DeliveryReport, BusError>;

    /// Starts receiving the commands for connector `name`.
    async fn listen(&self, name: &ConnectorName) -> Result<mpsc::Receiver<Command>, BusError>;

    /// `Ok` if the engines answer now (`/ready` asks). An in-process bus always does.
    async fn ready(&self) -> Result<(), BusError> {
        Ok(())
    }
}
