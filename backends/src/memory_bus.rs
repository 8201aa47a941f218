//! The in-process bus: bounded channels between the connector and processor tasks of one
//! process.
//!
//! Both features share one inbound queue, so one sender's envelopes reach processors in the
//! order sent. A full queue makes `publish` wait (backpressure reaches the socket reader),
//! never grow. Nothing here survives the process: RELIABLE durability comes from the processor
//! persisting before it acknowledges, so `hand_over` returns only once a processor has
//! acknowledged the envelope.

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot};

use common::bus::{Ack, Bus, BusError, Command, Inbound, Replier};
use common::envelope::{ConnectorCommand, DeliveryReport, Envelope};
use common::ids::ConnectorName;

/// Capacity of the inbound queue and of each connector's command queue.
pub const DEFAULT_QUEUE: usize = 65_536;

pub struct MemoryBus {
    inbound_tx: mpsc::Sender<Inbound>,
    inbound_rx: Mutex<Option<mpsc::Receiver<Inbound>>>,
    connectors: DashMap<ConnectorName, mpsc::Sender<Command>>,
    queue: usize,
}

impl MemoryBus {
    pub fn new(queue: usize) -> MemoryBus {
        let (inbound_tx, inbound_rx) = mpsc::channel(queue);
        MemoryBus {
            inbound_tx,
            inbound_rx: Mutex::new(Some(inbound_rx)),
            connectors: DashMap::new(),
            queue,
        }
    }

    fn connector(&self, name: &ConnectorName) -> Result<mpsc::Sender<Command>, BusError> {
        self.connectors
            .get(name)
            .map(|tx| tx.clone())
            .ok_or_else(|| BusError::NoSuchConnector(name.to_string()))
    }
}

impl Default for MemoryBus {
    fn default() -> Self {
        MemoryBus::new(DEFAULT_QUEUE)
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn publish(&self, envelope: Envelope) -> Result<(), BusError> {
        self.inbound_tx
            .send(Inbound {
                envelope,
                ack: Ack::none(),
            })
            .await
            .map_err(|_| BusError::Closed)
    }

    async fn hand_over(&self, envelope: Envelope) -> Result<(), BusError> {
        let (done, handled) = oneshot::channel();
        self.inbound_tx
            .send(Inbound {
                envelope,
                ack: Ack::new(move || {
                    let _ = done.send(());
                }),
            })
            .await
            .map_err(|_| BusError::Closed)?;
        handled
            .await
            .map_err(|_| BusError::Unavailable("the processor stopped before handling it".into()))
    }

    async fn consume(&self, _name: &str) -> Result<mpsc::Receiver<Inbound>, BusError> {
        self.inbound_rx
            .lock()
            .expect("inbound receiver lock is never poisoned: no code panics while holding it")
            .take()
            .ok_or_else(|| {
                BusError::Unavailable("the in-memory bus serves one processor only".into())
            })
    }

    async fn send(
        &self,
        connector: &ConnectorName,
        command: ConnectorCommand,
    ) -> Result<(), BusError> {
        self.connector(connector)?
            .send(Command {
                command,
                reply: None,
            })
            .await
            .map_err(|_| BusError::NoSuchConnector(connector.to_string()))
    }

    async fn request(
        &self,
        connector: &ConnectorName,
        command: ConnectorCommand,
        timeout: Duration,
    ) -> Result<DeliveryReport, BusError> {
        let (tx, rx) = oneshot::channel();
        let reply = Replier::new(move |report| {
            let _ = tx.send(report);
        });
        self.connector(connector)?
            .send(Command {
                command,
                reply: Some(reply),
            })
            .await
            .map_err(|_| BusError::NoSuchConnector(connector.to_string()))?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(report)) => Ok(report),
            // The connector dropped the replier: it is shutting down.
            Ok(Err(_)) => Err(BusError::NoSuchConnector(connector.to_string())),
            Err(_) => Err(BusError::TimedOut(timeout)),
        }
    }

    async fn listen(&self, name: &ConnectorName) -> Result<mpsc::Receiver<Command>, BusError> {
        let (tx, rx) = mpsc::channel(self.queue);
        self.connectors.insert(name.clone(), tx);
        Ok(rx)
    }
}
