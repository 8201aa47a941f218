//! The acknowledged protocol, processor side: resume at login, ACK, and retries recognised.
//!
//! A socket that logs in with `"ack": true` gets everything kept for its user resent, oldest
//! first, each frame numbered, then `RESUME_COMPLETE`; the connector holds back live frames
//! for it until then. `ACK` removes messages from the store and marks them acknowledged, so a
//! bus redelivery after a crash does not send them again. A RELIABLE message with a reference
//! from an acking socket claims `(sender, reference)` for a window: a retry finds the claim
//! and is not delivered again, and the sender gets `MESSAGE_ACCEPTED` either way.

use std::time::Duration;

use tracing::{debug, warn};

use common::envelope::{AckMark, ConnectorCommand, Envelope, Target};
use common::frame::{Feature, out_accepted, out_resume_complete};
use common::ids::{MessageId, SocketAddress, UserId};

use crate::{ProcessError, Processor};

impl Processor {
    /// True if `user` already acknowledged message `id` (a redelivered envelope).
    pub(crate) async fn was_acked(
        &self,
        user: &UserId,
        id: MessageId,
    ) -> Result<bool, ProcessError> {
        Ok(self.presence.is_processed(id.acknowledged_by(user)).await?)
    }

    /// ACK: each message is marked acknowledged, then leaves the store (the mark first: see
    /// `keep` and `confirmed`).
    pub(crate) async fn ack(&self, user: &UserId, ids: &[MessageId]) -> Result<(), ProcessError> {
        for id in ids {
            self.presence
                .mark_processed(id.acknowledged_by(user))
                .await?;
            self.store.remove(user, *id).await?;
        }
        metrics::counter!("linker_acked_total").increment(ids.len() as u64);
        Ok(())
    }

    /// Notes that the confirmation kept message `id` owed was sent, so a resume does not send
    /// it again.
    ///
    /// That note is an update of the kept message, and an engine may apply an update as a read
    /// then a write of the whole message (FerretDB does): an ACK that removed the message in
    /// between is undone, and the acknowledged message would come back at the next resume.
    /// The ACK marks the message before it removes it, so the mark is found here and the
    /// message removed again.
    pub(crate) async fn confirmed(&self, user: &UserId, id: MessageId) -> Result<(), ProcessError> {
        self.store.confirmed(user, id).await?;
        if self.was_acked(user, id).await? {
            debug!(user = %user, %id, "acknowledged while its confirmation was noted; removed again");
            self.store.remove(user, id).await?;
        }
        Ok(())
    }

    /// Resends what is kept for `user` to the acking socket `origin`, oldest first, numbered,
    /// then `RESUME_COMPLETE`. Runs under the user's fetch lock.
    pub(crate) async fn resume(
        &self,
        user: UserId,
        origin: SocketAddress,
    ) -> Result<(), ProcessError> {
        let ttl = self.config.fetch_lock_ttl();
        let wait = Duration::from_millis(self.config.fetch_lock_wait_ms);
        // A fetch of the same user holding the lock makes this wait and retry (a transient
        // error): the socket holds its live frames back until the resume ends.
        let token = self.presence.lock(&user, ttl, wait).await?;
        let result = self.resume_locked(&user, &origin).await;
        if let Err(e) = self.presence.unlock(&user, token).await {
            warn!(user = %user, error = %e, "resume lock not released; it expires by itself");
        }
        let resent = result?;
        let command = ConnectorCommand::Deliver {
            targets: vec![Target {
                user: user.clone(),
                socket: origin.socket,
            }],
            frame: out_resume_complete(resent),
            feature: Feature::Reliable,
            id: None,
            ack: Some(AckMark::ResumeEnd),
        };
        // Without its end the socket would hold its live frames back for good: while the bus
        // is down, the resume is retried (what it resent already is not written twice).
        self.send_end(&origin.connector, command).await
    }

    /// Pages through the store by number until nothing is left after the last one sent (or the
    /// socket stops taking frames, or the user's bound was resent); answers how many went.
    async fn resume_locked(
        &self,
        user: &UserId,
        origin: &SocketAddress,
    ) -> Result<u64, ProcessError> {
        let page = self.config.max_fetch_count.max(1) as usize;
        let (mut after, mut resent) = (0u64, 0u64);
        loop {
            let fetched = self.store.fetch(user, after, page).await?;
            if fetched.messages.is_empty() {
                return Ok(resent);
            }
            for kept in fetched.messages {
                after = kept.seq;
                let id = kept.message.id;
                let command = ConnectorCommand::Deliver {
                    targets: vec![Target {
                        user: user.clone(),
                        socket: origin.socket,
                    }],
                    frame: kept.message.frame,
                    feature: Feature::Reliable,
                    id: Some(id),
                    ack: Some(AckMark::Resent(kept.seq)),
                };
                if !self
                    .send(&origin.connector, command, true)
                    .await
                    .iter()
                    .any(|w| *w)
                {
                    debug!(user = %user, "resuming socket did not take a message; stopping");
                    return Ok(resent);
                }
                resent += 1;
                if let Some(confirm) = kept.message.confirm {
                    self.confirm(confirm, id).await?;
                    self.confirmed(user, id).await?;
                }
            }
            // Under a steady stream for this user, stop once a whole bound went out: the rest
            // reaches the socket live (held back until RESUME_COMPLETE) or at the next resume.
            if resent >= self.config.max_kept_per_user {
                return Ok(resent);
            }
        }
    }

    /// For a message from an acking socket with a reference: false if it is a retry of one
    /// already handled (same sender and reference within the window).
    pub(crate) async fn first_with_reference(
        &self,
        envelope: &Envelope,
    ) -> Result<bool, ProcessError> {
        let Some(reference) = envelope.reference.as_deref().filter(|r| !r.is_empty()) else {
            return Ok(true);
        };
        if !envelope.ack {
            return Ok(true);
        }
        let key = format!("ref:{}:{reference}", envelope.from);
        let window = Duration::from_millis(self.config.reference_window_ms);
        let holder = self.presence.claim(&key, envelope.id, window).await?;
        if holder != envelope.id {
            debug!(user = %envelope.from, reference, "retried message recognised; not delivered again");
            metrics::counter!("linker_retries_recognised_total").increment(1);
            return Ok(false);
        }
        Ok(true)
    }

    /// `MESSAGE_ACCEPTED {reference}` to the sending socket of a RELIABLE message from an
    /// acking socket, once it was delivered or kept.
    pub(crate) async fn accepted(&self, envelope: &Envelope) {
        let Some(reference) = envelope.reference.as_deref().filter(|r| !r.is_empty()) else {
            return;
        };
        if !envelope.ack || envelope.feature != Feature::Reliable {
            return;
        }
        let command = ConnectorCommand::Deliver {
            targets: vec![Target {
                user: envelope.from.clone(),
                socket: envelope.origin.socket,
            }],
            frame: out_accepted(reference),
            feature: Feature::Reliable,
            id: None,
            ack: None,
        };
        self.send(&envelope.origin.connector, command, false).await;
    }
}
