//! Getting a frame to a user's sockets, and keeping it when that fails.
//!
//! A frame goes to every socket the user holds, one command per connector. When a report is
//! needed (RELIABLE, or a confirmation was asked for) the connector answers once the frame is
//! written; a user none of whose sockets took a RELIABLE frame gets it stored, and a FAST one
//! is dropped and counted. A confirmation goes to the sender once per message, however many
//! sockets took it, and travels RELIABLE. Users of other domains get the same, relayed to
//! their domain (see `route`).

use std::collections::HashMap;

use serde_json::value::RawValue;
use tracing::{debug, warn};

use common::bus::BusError;
use common::envelope::{Confirm, ConnectorCommand, Relayed, RelayedMessage, StoredMessage, Target};
use common::frame::{Feature, out_confirmation, out_message};
use common::ids::{ConnectorName, DomainName, MessageId, SocketAddress, UserId};
use common::network::Home;

use crate::{ProcessError, Processor};

/// The parts of an envelope every handler needs.
pub struct Meta {
    pub id: MessageId,
    pub from: UserId,
    pub feature: Feature,
    pub reference: Option<String>,
    pub confirm: bool,
    pub created_at: u64,
}

impl Meta {
    /// The confirmation to send once delivered, if the sender asked for one.
    fn confirmation(&self) -> Option<Confirm> {
        match (&self.reference, self.confirm) {
            (Some(reference), true) if !reference.is_empty() => Some(Confirm {
                to: self.from.clone(),
                reference: reference.clone(),
            }),
            _ => None,
        }
    }
}

fn count_fast_drop(reason: &'static str) {
    metrics::counter!("linker_fast_dropped_total", "reason" => reason).increment(1);
}

/// Time from the connector taking the client's frame to its delivery (handed to the target's
/// connector; for a report, written to a socket).
fn record_delivery(feature: Feature, created_at: u64) {
    let ms = common::now_millis().saturating_sub(created_at);
    metrics::histogram!("linker_delivery_latency_seconds", "feature" => feature.label())
        .record(ms as f64 / 1000.0);
}

impl Processor {
    /// MESSAGE: to the target's sockets, else stored (RELIABLE) or dropped (FAST).
    pub(crate) async fn message(
        &self,
        meta: Meta,
        to: UserId,
        content: &RawValue,
    ) -> Result<(), ProcessError> {
        let stored = StoredMessage {
            id: meta.id,
            frame: out_message(&meta.from, content, meta.reference.as_deref()),
            to,
            created_at: meta.created_at,
            confirm: meta.confirmation(),
        };
        self.deliver_or_store(stored, meta.feature).await
    }

    /// Delivers `message` to its user's sockets; stores it if none took it and it is
    /// RELIABLE; confirms to the sender if it was delivered and a confirmation is due. A
    /// user of another domain gets it relayed there, where the same happens.
    pub(crate) async fn deliver_or_store(
        &self,
        message: StoredMessage,
        feature: Feature,
    ) -> Result<(), ProcessError> {
        if let Home::Remote(home) = self.home(&message.to)? {
            let to = message.to.clone();
            let what = Relayed::Deliver {
                to: vec![to.clone()],
                message: RelayedMessage {
                    id: message.id,
                    created_at: message.created_at,
                    frame: message.frame,
                    confirm: message.confirm,
                },
            };
            return self.relay(message.id, to, feature, home, what).await;
        }
        let sockets = self.presence.lookup(&message.to).await?;
        let report = feature == Feature::Reliable || message.confirm.is_some();
        let written = !sockets.is_empty()
            && self
                .write(
                    &message.to,
                    &sockets,
                    &message.frame,
                    feature,
                    report,
                    message.id,
                )
                .await;
        if written {
            record_delivery(feature, message.created_at);
            if let Some(confirm) = message.confirm {
                self.confirm(confirm, message.id).await?;
            }
            return Ok(());
        }
        match feature {
            Feature::Reliable => {
                debug!(user = %message.to, id = %message.id, "stored for fetch");
                self.store.persist(&message).await?;
                metrics::counter!("linker_stored_total").increment(1);
            }
            Feature::Fast => {
                debug!(user = %message.to, "FAST message dropped: user offline");
                count_fast_drop("offline");
            }
        }
        Ok(())
    }

    /// Sends `MESSAGE_CONFIRMATION {reference}` for message `of` to its sender, RELIABLE. Its
    /// id derives from the message's, so a confirmation sent again is recognised.
    ///
    /// Message `of` is delivered already: failing here would make the envelope's retry deliver
    /// it again (and, if its user looks offline by then, store it to be fetched a second
    /// time). So when presence is down, the confirmation is stored for the sender's next fetch
    /// instead (a connector that cannot be reached already leads to storing).
    pub(crate) async fn confirm(
        &self,
        confirm: Confirm,
        of: MessageId,
    ) -> Result<(), ProcessError> {
        let stored = StoredMessage {
            id: of.confirmation(),
            frame: out_confirmation(&confirm.reference),
            to: confirm.to,
            created_at: common::now_millis(),
            confirm: None,
        };
        match Box::pin(self.deliver_or_store(stored.clone(), Feature::Reliable)).await {
            Err(ProcessError::Presence(e)) => {
                warn!(user = %stored.to, id = %of, error = %e, "confirmation stored for fetch: presence unavailable");
                self.store.persist(&stored).await?;
                metrics::counter!("linker_stored_total").increment(1);
                Ok(())
            }
            other => other,
        }
    }

    /// Writes `frame` to the user's `sockets`; true if at least one took it (or, without a
    /// report, if it was handed to the connectors).
    async fn write(
        &self,
        user: &UserId,
        sockets: &[SocketAddress],
        frame: &str,
        feature: Feature,
        report: bool,
        id: MessageId,
    ) -> bool {
        let mut written = false;
        for (connector, targets) in by_connector(sockets.iter().map(|s| (user, s))) {
            let command = ConnectorCommand::Deliver {
                targets,
                frame: frame.to_owned(),
                feature,
                id: Some(id),
            };
            written |= self
                .send(&connector, command, report)
                .await
                .iter()
                .any(|w| *w);
        }
        written
    }

    /// Sends a command to one connector; returns what its report says was written (all
    /// true without a report, all false if the connector could not be reached).
    pub(crate) async fn send(
        &self,
        connector: &ConnectorName,
        command: ConnectorCommand,
        report: bool,
    ) -> Vec<bool> {
        let count = match &command {
            ConnectorCommand::Deliver { targets, .. } | ConnectorCommand::Close { targets, .. } => {
                targets.len()
            }
        };
        let result = if report {
            self.bus
                .request(connector, command, self.config.delivery_timeout())
                .await
                .map(|r| r.written)
        } else {
            self.bus
                .send(connector, command)
                .await
                .map(|()| vec![true; count])
        };
        match result {
            Ok(written) => written,
            Err(BusError::NoSuchConnector(name)) => {
                debug!(connector = %name, "connector gone; its sockets are stale");
                vec![false; count]
            }
            Err(e) => {
                debug!(connector = %connector, error = %e, "no delivery");
                vec![false; count]
            }
        }
    }

    /// GROUP_MESSAGE: one MESSAGE frame (with the sender's reference) to every recipient;
    /// one command per connector; RELIABLE recipients who did not take it get it stored.
    /// Recipients of other domains get one relay per domain. No confirmation, as in the
    /// original protocol.
    pub(crate) async fn group(
        &self,
        meta: Meta,
        to: &[UserId],
        content: &RawValue,
    ) -> Result<(), ProcessError> {
        let mut local = Vec::with_capacity(to.len());
        let mut remote: Vec<(DomainName, Vec<UserId>)> = Vec::new();
        for user in to {
            match self.home(user)? {
                Home::Local => local.push(user.clone()),
                Home::Remote(d) => match remote.iter_mut().find(|(h, _)| *h == d) {
                    Some((_, users)) => users.push(user.clone()),
                    None => remote.push((d, vec![user.clone()])),
                },
            }
        }
        let frame = out_message(&meta.from, content, meta.reference.as_deref());
        for (home, users) in remote {
            let what = Relayed::Deliver {
                to: users,
                message: RelayedMessage {
                    id: meta.id,
                    created_at: meta.created_at,
                    frame: frame.clone(),
                    confirm: None,
                },
            };
            self.relay(meta.id, meta.from.clone(), meta.feature, home, what)
                .await?;
        }
        self.fan_out(meta.id, meta.feature, meta.created_at, &frame, &local)
            .await
    }

    /// Writes one frame to the sockets of local users `to`, one command per connector;
    /// stores it for RELIABLE recipients none of whose sockets took it.
    pub(crate) async fn fan_out(
        &self,
        id: MessageId,
        feature: Feature,
        created_at: u64,
        frame: &str,
        to: &[UserId],
    ) -> Result<(), ProcessError> {
        let mut sockets = Vec::new();
        for user in to {
            for s in self.presence.lookup(user).await? {
                sockets.push((user, s));
            }
        }
        let report = feature == Feature::Reliable;
        let mut took: Vec<&UserId> = Vec::new();
        for (connector, targets) in by_connector(sockets.iter().map(|(u, s)| (*u, s))) {
            let command = ConnectorCommand::Deliver {
                targets: targets.clone(),
                frame: frame.to_owned(),
                feature,
                id: Some(id),
            };
            let written = self.send(&connector, command, report).await;
            for (target, ok) in targets.iter().zip(written) {
                if ok && let Some(u) = to.iter().find(|u| **u == target.user) {
                    took.push(u);
                }
            }
        }
        if !took.is_empty() {
            record_delivery(feature, created_at);
        }
        for user in to {
            if took.contains(&user) {
                continue;
            }
            match feature {
                Feature::Reliable => {
                    self.store
                        .persist(&StoredMessage {
                            id,
                            to: user.clone(),
                            created_at,
                            frame: frame.to_owned(),
                            confirm: None,
                        })
                        .await?;
                    metrics::counter!("linker_stored_total").increment(1);
                }
                Feature::Fast => count_fast_drop("offline"),
            }
        }
        Ok(())
    }
}

/// Groups (user, socket) pairs by connector, keeping order.
pub(crate) fn by_connector<'a>(
    sockets: impl Iterator<Item = (&'a UserId, &'a SocketAddress)>,
) -> Vec<(ConnectorName, Vec<Target>)> {
    let mut groups: Vec<(ConnectorName, Vec<Target>)> = Vec::with_capacity(1);
    let mut index: HashMap<ConnectorName, usize> = HashMap::new();
    for (user, s) in sockets {
        let target = Target {
            user: user.clone(),
            socket: s.socket,
        };
        match index.get(&s.connector) {
            Some(i) => groups[*i].1.push(target),
            None => {
                index.insert(s.connector.clone(), groups.len());
                groups.push((s.connector.clone(), vec![target]));
            }
        }
    }
    groups
}
