//! FETCH_MISSING_MESSAGES_REQUEST: stored messages to the asking socket, oldest first.
//!
//! The per-user lock keeps two fetches from interleaving. Each message leaves the store only
//! after the connector reports it written (to an acking socket: only once acknowledged; it
//! goes with its number); the first one that is not written stops the fetch, and the rest
//! stays stored. A delivered message that asked for a confirmation
//! confirms to its sender now. The answer ends with FETCH_MISSING_MESSAGES_COMPLETE
//! `{leftMissingCount}`: what is still stored.

use std::time::Duration;

use tracing::{debug, warn};

use common::envelope::{AckMark, ConnectorCommand, Target};
use common::frame::{Feature, out_fetch_complete};
use common::ids::{SocketAddress, UserId};
use common::presence::PresenceError;

use crate::{ProcessError, Processor};

impl Processor {
    pub(crate) async fn fetch(
        &self,
        user: UserId,
        origin: SocketAddress,
        count: u32,
        reference: Option<String>,
    ) -> Result<(), ProcessError> {
        let ttl = self.config.fetch_lock_ttl();
        let wait = Duration::from_millis(self.config.fetch_lock_wait_ms);
        let token = match self.presence.lock(&user, ttl, wait).await {
            Ok(token) => token,
            Err(PresenceError::LockTimeout(..)) => return Err(ProcessError::FetchInProgress),
            Err(e) => return Err(e.into()),
        };
        let result = self.fetch_locked(&user, &origin, count, reference).await;
        if let Err(e) = self.presence.unlock(&user, token).await {
            warn!(user = %user, error = %e, "fetch lock not released; it expires by itself");
        }
        result
    }

    async fn fetch_locked(
        &self,
        user: &UserId,
        origin: &SocketAddress,
        count: u32,
        reference: Option<String>,
    ) -> Result<(), ProcessError> {
        let limit = count.min(self.config.max_fetch_count) as usize;
        let fetched = self.store.fetch(user, 0, limit).await?;
        let target = || {
            vec![Target {
                user: user.clone(),
                socket: origin.socket,
            }]
        };
        let mut delivered = 0u64;
        for kept in fetched.messages {
            let message = kept.message;
            let command = ConnectorCommand::Deliver {
                targets: target(),
                frame: message.frame.clone(),
                feature: Feature::Reliable,
                id: Some(message.id),
                ack: Some(AckMark::Resent(kept.seq)),
            };
            let report = self.send_report(&origin.connector, command, true).await;
            if !report.any_written() {
                debug!(user = %user, "fetching socket did not take a message; stopping");
                break;
            }
            let acking = report.acking.iter().any(|a| *a);
            if !acking {
                self.store.remove(user, message.id).await?;
            }
            delivered += 1;
            metrics::counter!("linker_fetched_total").increment(1);
            if let Some(confirm) = message.confirm {
                self.confirm(confirm, message.id).await?;
                if acking {
                    self.confirmed(user, message.id).await?;
                }
            }
        }
        let left = fetched.total.saturating_sub(delivered);
        let command = ConnectorCommand::Deliver {
            targets: target(),
            frame: out_fetch_complete(left, reference.as_deref()),
            feature: Feature::Reliable,
            id: None,
            ack: None,
        };
        self.send(&origin.connector, command, false).await;
        Ok(())
    }
}
