//! Getting a frame to a user's sockets, and keeping it when that fails.
//!
//! A frame goes to every socket the user holds, one command per connector. When a report is
//! needed (RELIABLE, or a confirmation was asked for) the connector answers once the frame is
//! written; a user none of whose sockets took a RELIABLE frame gets it stored, and a FAST one
//! is dropped and counted. A confirmation goes to the sender once per message, however many
//! sockets took it, and travels RELIABLE. A socket that acknowledges takes a RELIABLE frame
//! only with a sequence number: the connector reports it as acking, the message is kept in
//! the store first (which numbers it), then written to those sockets with its number, and it
//! stays kept until the user acknowledges it. Users of other domains get the same, relayed
//! to their domain (see `route`).

use std::collections::HashSet;

use serde_json::value::RawValue;
use tracing::{debug, warn};

use common::bus::BusError;
use common::envelope::{
    AckMark, Confirm, ConnectorCommand, DeliveryReport, Relayed, RelayedMessage, StoredMessage,
    Target,
};
use common::frame::{Feature, out_confirmation, out_message};
use common::ids::{ConnectorName, DomainName, MessageId, SocketAddress, UserId};
use common::network::Home;
use common::store::Persisted;

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
    pub(crate) fn confirmation(&self) -> Option<Confirm> {
        match (&self.reference, self.confirm) {
            (Some(reference), true) if !reference.is_empty() => Some(Confirm {
                to: self.from.clone(),
                reference: reference.clone(),
            }),
            _ => None,
        }
    }
}

/// What keeping a message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keep {
    /// Kept under this number.
    Kept(u64),
    /// Its user acknowledged it meanwhile: not kept.
    Acked,
    /// The user has the most messages kept already: refused.
    Full,
}

fn count_fast_drop(reason: &'static str) {
    metrics::counter!("linker_fast_dropped_total", "reason" => reason).increment(1);
}

impl Processor {
    /// Time from the connector taking the client's frame to its delivery (handed to the
    /// target's connector; for a report, written to a socket).
    fn record_delivery(&self, feature: Feature, created_at: u64) {
        let ms = common::now_millis().saturating_sub(created_at);
        self.meters
            .delivery_latency(feature)
            .record(ms as f64 / 1000.0);
    }

    /// MESSAGE: to the target's sockets, else stored (RELIABLE) or dropped (FAST). `sockets`
    /// are the target's, when the caller looked them up already.
    pub(crate) async fn message(
        &self,
        meta: Meta,
        to: UserId,
        content: &RawValue,
        sockets: Option<Vec<SocketAddress>>,
    ) -> Result<(), ProcessError> {
        let stored = StoredMessage {
            id: meta.id,
            frame: out_message(&meta.from, content, meta.reference.as_deref()),
            to,
            created_at: meta.created_at,
            confirm: meta.confirmation(),
        };
        self.deliver_or_store(stored, meta.feature, sockets).await
    }

    /// Delivers `message` to its user's sockets; stores it if none took it and it is
    /// RELIABLE; confirms to the sender if it was delivered and a confirmation is due. A
    /// user of another domain gets it relayed there, where the same happens. `sockets` are
    /// the user's when the caller looked them up already (`lookup_unless_processed`); with
    /// `None` they are looked up here.
    pub(crate) async fn deliver_or_store(
        &self,
        message: StoredMessage,
        feature: Feature,
        sockets: Option<Vec<SocketAddress>>,
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
        let sockets = match sockets {
            Some(sockets) => sockets,
            None => self.presence.lookup(&message.to).await?,
        };
        let report = feature == Feature::Reliable || message.confirm.is_some();
        let mut written = false;
        let mut acking = Vec::new();
        if !sockets.is_empty() {
            (written, acking) = self
                .write(
                    &message.to,
                    &sockets,
                    &message.frame,
                    feature,
                    report,
                    message.id,
                )
                .await?;
        }
        let mut kept = false;
        if !acking.is_empty()
            && !self.was_acked(&message.to, message.id).await?
            && let Keep::Kept(seq) = self.keep(&message).await?
        {
            kept = true;
            written |= self
                .write_numbered(acking, &message.frame, message.id, seq, written)
                .await?;
        }
        if written {
            self.record_delivery(feature, message.created_at);
            if let Some(confirm) = message.confirm.clone() {
                self.confirm(confirm, message.id).await?;
                if kept {
                    self.confirmed(&message.to, message.id).await?;
                }
            }
            return Ok(());
        }
        if kept {
            return Ok(()); // kept under its number; a fetch or the next resume sends it
        }
        match feature {
            Feature::Reliable => {
                if self.was_acked(&message.to, message.id).await? {
                    return Ok(()); // a redelivery of a message its user acknowledged
                }
                debug!(user = %message.to, id = %message.id, "stored for fetch");
                match self.keep(&message).await? {
                    Keep::Full => return Err(ProcessError::InboxFull(message.to.to_string())),
                    Keep::Acked => return Ok(()),
                    Keep::Kept(seq) => {
                        metrics::counter!("linker_stored_total").increment(1);
                        self.kept_while_offline(&message, seq).await?;
                    }
                }
            }
            Feature::Fast => {
                debug!(user = %message.to, "FAST message dropped: user offline");
                count_fast_drop("offline");
            }
        }
        Ok(())
    }

    /// After `message` was kept for a user who looked offline: writes it, with its number, to
    /// any acking socket the user holds now.
    ///
    /// A login adds the socket to presence before it asks for its resume. Had the user
    /// logged in between the lookup that found nobody and the keep, the resume may have read
    /// the store before the message was in it, and the socket would not get it before its
    /// next login. Looking again after the keep closes that gap: either this lookup finds the
    /// socket, or its resume reads the store after the message was kept. A socket still
    /// resuming holds the frame back until its resume ends, and skips it if the resume wrote
    /// it already; an original-protocol socket does not take numbered frames (it fetches).
    async fn kept_while_offline(
        &self,
        message: &StoredMessage,
        seq: u64,
    ) -> Result<(), ProcessError> {
        let sockets = match self.presence.lookup(&message.to).await {
            Ok(sockets) => sockets,
            Err(e) => {
                // Kept already: failing would handle the envelope again.
                debug!(user = %message.to, error = %e, "no second look after keeping");
                return Ok(());
            }
        };
        if sockets.is_empty() {
            return Ok(());
        }
        let targets = by_connector(sockets.iter().map(|s| (&message.to, s)));
        // `written_before` true: the message is kept, so a bus failure leaves it there.
        if !self
            .write_numbered(targets, &message.frame, message.id, seq, true)
            .await?
        {
            return Ok(());
        }
        debug!(user = %message.to, id = %message.id, seq, "kept while offline; written to a socket that logged in meanwhile");
        metrics::counter!("linker_kept_then_written_total").increment(1);
        self.record_delivery(Feature::Reliable, message.created_at);
        if let Some(confirm) = message.confirm.clone() {
            self.confirm(confirm, message.id).await?;
            self.confirmed(&message.to, message.id).await?;
        }
        Ok(())
    }

    /// Keeps `message` in the store under the user's bound; its number, or `None` if the user
    /// has the most messages kept already (counted).
    ///
    /// An ACK of the same message may be handled by another processor at the same moment (a
    /// redelivery racing the acknowledgement of the first copy): the ACK marks before it
    /// removes, so a copy kept after that removal finds the mark here and is taken out again.
    pub(crate) async fn keep(&self, message: &StoredMessage) -> Result<Keep, ProcessError> {
        match self
            .store
            .persist(message, self.config.max_kept_per_user)
            .await?
        {
            Persisted::Kept(seq) => {
                if self.was_acked(&message.to, message.id).await? {
                    self.store.remove(&message.to, message.id).await?;
                    debug!(user = %message.to, id = %message.id, "acknowledged meanwhile; not kept");
                    return Ok(Keep::Acked);
                }
                Ok(Keep::Kept(seq))
            }
            Persisted::Full => {
                tracing::warn!(user = %message.to, id = %message.id, "inbox full; message refused");
                metrics::counter!("linker_inbox_full_total").increment(1);
                Ok(Keep::Full)
            }
        }
    }

    /// Writes a kept message with its number to the acking sockets that asked for one; true
    /// if at least one of them took it. While the bus is down and nothing of the message was
    /// written (`written_before` false), an error, so the envelope is retried and the kept
    /// message goes out in order once the bus is back; otherwise it stays kept for a fetch or
    /// resume.
    pub(crate) async fn write_numbered(
        &self,
        acking: Vec<(ConnectorName, Vec<Target>)>,
        frame: &str,
        id: MessageId,
        seq: u64,
        written_before: bool,
    ) -> Result<bool, ProcessError> {
        let mut written = false;
        for (connector, targets) in acking {
            let command = ConnectorCommand::Deliver {
                targets,
                frame: frame.to_owned(),
                feature: Feature::Reliable,
                id: Some(id),
                ack: Some(AckMark::Seq(seq)),
            };
            written |= self
                .send_first(&connector, command, true, written_before || written)
                .await?
                .any_written();
        }
        Ok(written)
    }

    /// Sends `MESSAGE_CONFIRMATION {reference}` for message `of` to its sender, RELIABLE. Its
    /// id derives from the message's, so a confirmation sent again is recognised. A sender
    /// whose inbox is full loses the confirmation (counted), not the message it confirms.
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
        match Box::pin(self.deliver_or_store(stored.clone(), Feature::Reliable, None)).await {
            Err(ProcessError::InboxFull(user)) => {
                debug!(user, "confirmation dropped: the sender's inbox is full");
                Ok(())
            }
            Err(e @ (ProcessError::Presence(_) | ProcessError::Bus(_))) => {
                warn!(user = %stored.to, id = %of, error = %e, "confirmation stored for fetch: presence or bus unavailable");
                // Not `keep`: its acknowledged check asks presence too, and an error here
                // would deliver `of` again. At worst an acknowledged confirmation is fetched
                // once more, which is harmless; a message delivered twice is not.
                match self
                    .store
                    .persist(&stored, self.config.max_kept_per_user)
                    .await?
                {
                    Persisted::Kept(_) => metrics::counter!("linker_stored_total").increment(1),
                    Persisted::Full => {
                        debug!(user = %stored.to, "confirmation dropped: the sender's inbox is full")
                    }
                }
                Ok(())
            }
            other => other,
        }
    }

    /// Writes `frame` to the user's `sockets`: whether at least one took it (or, without a
    /// report, it was handed to the connectors), and the acking sockets that need it again
    /// with a number.
    async fn write(
        &self,
        user: &UserId,
        sockets: &[SocketAddress],
        frame: &str,
        feature: Feature,
        report: bool,
        id: MessageId,
    ) -> Result<(bool, Vec<(ConnectorName, Vec<Target>)>), ProcessError> {
        let mut written = false;
        let mut acking = Vec::new();
        for (connector, targets) in by_connector(sockets.iter().map(|s| (user, s))) {
            let command = ConnectorCommand::Deliver {
                targets: targets.clone(),
                frame: frame.to_owned(),
                feature,
                id: Some(id),
                ack: None,
            };
            let r = self
                .send_first(&connector, command, report, written)
                .await?;
            written |= r.any_written();
            let numbered = needing_numbers(&targets, &r);
            if !numbered.is_empty() {
                acking.push((connector, numbered));
            }
        }
        Ok((written, acking))
    }

    /// Sends a command to one connector; returns what its report says was written (all
    /// true without a report, all false if the connector could not be reached).
    pub(crate) async fn send(
        &self,
        connector: &ConnectorName,
        command: ConnectorCommand,
        report: bool,
    ) -> Vec<bool> {
        self.send_report(connector, command, report).await.written
    }

    /// As `send_report`, for the first write of a RELIABLE message: while the bus is
    /// unavailable (NATS down) and nothing of it was written yet (`written_before` false), an
    /// error, so the envelope is retried in its sender's order once the bus is back instead of
    /// being stored for a later fetch that newer messages would overtake.
    async fn send_first(
        &self,
        connector: &ConnectorName,
        command: ConnectorCommand,
        report: bool,
        written_before: bool,
    ) -> Result<DeliveryReport, ProcessError> {
        let reliable = matches!(
            &command,
            ConnectorCommand::Deliver {
                feature: Feature::Reliable,
                ..
            }
        );
        let count = command_targets(&command);
        match self.try_send_report(connector, command, report).await {
            Err(e @ (BusError::Unavailable(_) | BusError::Closed))
                if reliable && !written_before =>
            {
                debug!(connector = %connector, error = %e, "bus unavailable; the envelope waits");
                Err(ProcessError::Bus(e))
            }
            result => Ok(unwritten_on_error(connector, count, result)),
        }
    }

    /// Sends a command that must not be lost (the end of a resume): an error while the bus is
    /// unavailable, so the envelope is retried.
    pub(crate) async fn send_end(
        &self,
        connector: &ConnectorName,
        command: ConnectorCommand,
    ) -> Result<(), ProcessError> {
        match self.try_send_report(connector, command, false).await {
            Err(e @ (BusError::Unavailable(_) | BusError::Closed)) => Err(ProcessError::Bus(e)),
            Err(e) => {
                debug!(connector = %connector, error = %e, "not sent");
                Ok(())
            }
            Ok(_) => Ok(()),
        }
    }

    /// As `send`, with the whole report (which targets acknowledge).
    pub(crate) async fn send_report(
        &self,
        connector: &ConnectorName,
        command: ConnectorCommand,
        report: bool,
    ) -> DeliveryReport {
        let count = command_targets(&command);
        let result = self.try_send_report(connector, command, report).await;
        unwritten_on_error(connector, count, result)
    }

    /// Sends a command, with a report if `report` (else all written once handed to the bus).
    async fn try_send_report(
        &self,
        connector: &ConnectorName,
        command: ConnectorCommand,
        report: bool,
    ) -> Result<DeliveryReport, BusError> {
        if report {
            return self
                .bus
                .request(connector, command, self.config.delivery_timeout())
                .await;
        }
        let count = command_targets(&command);
        self.bus
            .send(connector, command)
            .await
            .map(|()| DeliveryReport {
                written: vec![true; count],
                acking: Vec::new(),
            })
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
    /// keeps it for RELIABLE recipients none of whose sockets took it, and numbers it for
    /// acking sockets.
    pub(crate) async fn fan_out(
        &self,
        id: MessageId,
        feature: Feature,
        created_at: u64,
        frame: &str,
        to: &[UserId],
    ) -> Result<(), ProcessError> {
        if feature == Feature::Fast {
            return self.fan_out_fast(id, created_at, frame, to).await;
        }
        // One lookup for all members (one round trip per batch on a shared engine).
        let found = self.presence.lookup_all(to).await?;
        let sockets: Vec<(&UserId, SocketAddress)> = to
            .iter()
            .zip(found)
            .flat_map(|(user, sockets)| sockets.into_iter().map(move |s| (user, s)))
            .collect();
        let report = feature == Feature::Reliable;
        // Recipients at least one of whose sockets took it (a set: groups are large).
        let mut took: HashSet<UserId> = HashSet::new();
        let mut acking: Vec<(ConnectorName, Vec<Target>)> = Vec::new();
        for (connector, targets) in by_connector(sockets.iter().map(|(u, s)| (*u, s))) {
            let command = ConnectorCommand::Deliver {
                targets: targets.clone(),
                frame: frame.to_owned(),
                feature,
                id: Some(id),
                ack: None,
            };
            let r = self
                .send_first(&connector, command, report, !took.is_empty())
                .await?;
            for (target, ok) in targets.iter().zip(&r.written) {
                if *ok {
                    took.insert(target.user.clone());
                }
            }
            let numbered = needing_numbers(&targets, &r);
            if !numbered.is_empty() {
                acking.push((connector, numbered));
            }
        }
        if !took.is_empty() {
            self.record_delivery(feature, created_at);
        }
        let mut full = Vec::new();
        for user in to {
            let message = StoredMessage {
                id,
                to: user.clone(),
                created_at,
                frame: frame.to_owned(),
                confirm: None,
            };
            // This member's acking sockets get it kept and numbered.
            let mine: Vec<(ConnectorName, Vec<Target>)> = if acking.is_empty() {
                Vec::new()
            } else {
                acking
                    .iter()
                    .map(|(c, ts)| {
                        let ts: Vec<Target> =
                            ts.iter().filter(|t| t.user == *user).cloned().collect();
                        (c.clone(), ts)
                    })
                    .filter(|(_, ts)| !ts.is_empty())
                    .collect()
            };
            if !mine.is_empty() && !self.was_acked(user, id).await? {
                match self.keep(&message).await? {
                    Keep::Kept(seq) => {
                        self.write_numbered(mine, frame, id, seq, true).await?;
                        continue; // kept: written now, or sent by a fetch or resume
                    }
                    Keep::Acked => continue,
                    Keep::Full => {
                        full.push(user.to_string());
                        continue;
                    }
                }
            }
            if took.contains(user) {
                continue;
            }
            match feature {
                Feature::Reliable => {
                    if self.was_acked(user, id).await? {
                        continue; // a redelivery this member acknowledged already
                    }
                    match self.keep(&message).await? {
                        Keep::Kept(seq) => {
                            metrics::counter!("linker_stored_total").increment(1);
                            self.kept_while_offline(&message, seq).await?;
                        }
                        Keep::Acked => {}
                        Keep::Full => full.push(user.to_string()),
                    }
                }
                Feature::Fast => count_fast_drop("offline"),
            }
        }
        if !full.is_empty() {
            return Err(ProcessError::InboxFull(full.join(", ")));
        }
        Ok(())
    }
}

impl Processor {
    /// `fan_out` for FAST: nothing is kept or numbered, so per recipient there is only the
    /// presence lookup and its place in a connector's command. Members with no socket, and
    /// those no connector could be sent the command for, count as dropped.
    async fn fan_out_fast(
        &self,
        id: MessageId,
        created_at: u64,
        frame: &str,
        to: &[UserId],
    ) -> Result<(), ProcessError> {
        let found = self.presence.lookup_all(to).await?;
        let online = found.iter().filter(|s| !s.is_empty()).count();
        let groups = by_connector(
            to.iter()
                .zip(&found)
                .flat_map(|(user, sockets)| sockets.iter().map(move |s| (user, s))),
        );
        let several = groups.len() > 1;
        // With several connectors a member may have sockets on more than one: who took it.
        let mut took: HashSet<UserId> = HashSet::new();
        let mut unsent = 0;
        for (connector, targets) in groups {
            let users: Vec<UserId> = if several {
                targets.iter().map(|t| t.user.clone()).collect()
            } else {
                Vec::new()
            };
            let command = ConnectorCommand::Deliver {
                targets,
                frame: frame.to_owned(),
                feature: Feature::Fast,
                id: Some(id),
                ack: None,
            };
            let r = self.send_first(&connector, command, false, false).await?;
            if r.written.iter().all(|w| *w) {
                took.extend(users);
            } else {
                unsent += 1;
            }
        }
        let reached = match (unsent, several) {
            (0, _) => online,
            (_, true) => took.len(),
            (_, false) => 0,
        };
        if reached > 0 {
            self.record_delivery(Feature::Fast, created_at);
        }
        let dropped = (to.len() - online) + (online - reached);
        if dropped > 0 {
            metrics::counter!("linker_fast_dropped_total", "reason" => "offline")
                .increment(dropped as u64);
        }
        Ok(())
    }
}

/// The targets of a report that acknowledge and were not written (they need a number).
fn needing_numbers(targets: &[Target], report: &DeliveryReport) -> Vec<Target> {
    targets
        .iter()
        .zip(&report.acking)
        .zip(&report.written)
        .filter(|((_, acking), written)| **acking && !**written)
        .map(|((t, _), _)| t.clone())
        .collect()
}

/// Groups (user, socket) pairs by connector, keeping order. A domain has a few connectors,
/// so each pair scans the groups made so far rather than hashing the connector's name (a
/// hash map here was ~1 % of the embedded server's CPU, for one group per message).
pub(crate) fn by_connector<'a>(
    sockets: impl Iterator<Item = (&'a UserId, &'a SocketAddress)>,
) -> Vec<(ConnectorName, Vec<Target>)> {
    let mut groups: Vec<(ConnectorName, Vec<Target>)> = Vec::with_capacity(1);
    for (user, s) in sockets {
        let target = Target {
            user: user.clone(),
            socket: s.socket,
        };
        match groups.iter_mut().find(|(c, _)| *c == s.connector) {
            Some((_, targets)) => targets.push(target),
            None => groups.push((s.connector.clone(), vec![target])),
        }
    }
    groups
}

/// How many sockets a command is for.
fn command_targets(command: &ConnectorCommand) -> usize {
    match command {
        ConnectorCommand::Deliver { targets, .. }
        | ConnectorCommand::Close { targets, .. }
        | ConnectorCommand::Post { targets, .. } => targets.len(),
    }
}

/// The report of a send, or all unwritten if it failed (the connector is gone or slow, or
/// the bus is down): the caller stores what was not written.
fn unwritten_on_error(
    connector: &ConnectorName,
    count: usize,
    result: Result<DeliveryReport, BusError>,
) -> DeliveryReport {
    match result {
        Ok(report) => report,
        Err(e) => {
            match e {
                BusError::NoSuchConnector(_) => {
                    debug!(connector = %connector, "connector gone; its sockets are stale")
                }
                e => debug!(connector = %connector, error = %e, "no delivery"),
            }
            DeliveryReport {
                written: vec![false; count],
                acking: Vec::new(),
            }
        }
    }
}
