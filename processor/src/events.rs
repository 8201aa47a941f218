//! Control envelopes: presence events for the master user, and CLOSE_CONNECTION.
//!
//! USER_CONNECTED/USER_DISCONNECTED go to the app's master user (never about the master
//! itself), RELIABLE, so an offline master fetches them later. CLOSE_CONNECTION closes every
//! socket of the target; it is a control action and never stored, so it cannot replay and
//! close a later session. Both reach users and masters of other domains by relay.

use tracing::{info, warn};

use common::envelope::{ConnectorCommand, Relayed, StoredMessage};
use common::frame::{Feature, out_user_event};
use common::ids::{MessageId, UserId};
use common::network::Home;

use crate::deliver::{Meta, by_connector};
use crate::{ProcessError, Processor};

impl Processor {
    pub(crate) async fn user_event(&self, meta: Meta, connected: bool) -> Result<(), ProcessError> {
        let Some(master) = self.network.current().master_of(&meta.from) else {
            return Ok(());
        };
        if master == meta.from {
            return Ok(());
        }
        let stored = StoredMessage {
            id: meta.id,
            frame: out_user_event(connected, &meta.from),
            to: master,
            created_at: meta.created_at,
            confirm: None,
        };
        match self.deliver_or_store(stored, Feature::Reliable, None).await {
            // The master's inbox is full: the event is dropped (counted), nobody to tell.
            Err(ProcessError::InboxFull(_)) => Ok(()),
            other => other,
        }
    }

    pub(crate) async fn close(&self, from: UserId, user: UserId) -> Result<(), ProcessError> {
        // The connector checked this already; a processor does not trust the bus blindly.
        if self.network.current().master_of(&user).as_ref() != Some(&from) {
            warn!(from = %from, target = %user, "CLOSE_CONNECTION from a non-master ignored");
            return Ok(());
        }
        if let Home::Remote(home) = self.home(&user)? {
            // Never stored, like a local close: a FAST relay, gone if no path is up.
            let id = MessageId::new();
            let what = Relayed::Close { user };
            return self.relay(id, from, Feature::Fast, home, what).await;
        }
        let sockets = self.presence.lookup(&user).await?;
        info!(master = %from, target = %user, sockets = sockets.len(), "closing user's sockets");
        for (connector, targets) in by_connector(sockets.iter().map(|s| (&user, s))) {
            let command = ConnectorCommand::Close {
                targets,
                reason: format!("closed by master user {from}"),
            };
            self.send(&connector, command, false).await;
        }
        Ok(())
    }
}
