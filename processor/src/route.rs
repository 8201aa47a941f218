//! Where a target lives, and getting work to the domain where it does.
//!
//! A user of this domain is served here. Work for users of another domain becomes a relay
//! envelope whose id is derived from the message id and the home domain, so a relay that
//! arrives twice (sent again after a link failed) is recognised there. A relay goes to the
//! next hop of a shortest path over the links that are up, never back through a domain it
//! has passed, and at most `MAX_HOPS` hops. The next hop answers once the relay is safe on
//! its side; if no path is left or the hop fails, a RELIABLE relay waits in the outbox and a
//! FAST one is dropped and counted.
//!
//! A relay's `from` is the user whose order it keeps: the recipient of a delivery (so the
//! far domain handles one recipient's relays in order), the sender of a group message, the
//! master user of a close.

use tracing::{debug, warn};

use common::envelope::{Body, Envelope, MAX_HOPS, Relay, Relayed};
use common::frame::Feature;
use common::ids::{ConnectorName, DomainName, MessageId, SocketAddress, UserId};
use common::network::Home;

use crate::{ProcessError, Processor};

impl Processor {
    /// Where `user` lives; `NO_ROUTE` if no range of the config holds them.
    pub(crate) fn home(&self, user: &UserId) -> Result<Home, ProcessError> {
        self.network
            .current()
            .home(user)
            .ok_or_else(|| ProcessError::NoRoute(format!("(no domain holds {user})")))
    }

    /// Sends `what` towards `home`, as work of `from`; `base` is the id it derives from.
    pub(crate) async fn relay(
        &self,
        base: MessageId,
        from: UserId,
        feature: Feature,
        home: DomainName,
        what: Relayed,
    ) -> Result<(), ProcessError> {
        let local = self.network.current().local_domain().clone();
        let envelope = Envelope {
            id: base.derive(home.as_str()),
            from,
            origin: SocketAddress {
                connector: ConnectorName::new(local.as_str()),
                socket: 0,
            },
            feature,
            reference: None,
            confirm: false,
            created_at: common::now_millis(),
            hops: 0,
            body: Body::Relay(Box::new(Relay {
                home,
                via: Vec::new(),
                what,
            })),
        };
        metrics::counter!("linker_relays_total", "feature" => feature.as_str()).increment(1);
        self.forward(envelope).await
    }

    /// Passes a relay on to its next hop; keeps it in the outbox (RELIABLE) or drops it
    /// (FAST) if that fails.
    pub(crate) async fn forward(&self, mut envelope: Envelope) -> Result<(), ProcessError> {
        let network = self.network.current();
        let local = network.local_domain().clone();
        let Body::Relay(relay) = &mut envelope.body else {
            return Ok(());
        };
        if envelope.hops >= MAX_HOPS {
            warn!(id = %envelope.id, home = %relay.home, via = ?relay.via, "relay dropped: hop limit reached");
            metrics::counter!("linker_relays_dropped_total", "reason" => "hop_limit").increment(1);
            return Ok(());
        }
        if relay.via.last() != Some(&local) {
            relay.via.push(local);
        }
        envelope.hops += 1;
        let reliable = envelope.feature == Feature::Reliable;
        if reliable
            && self
                .outbox_pending
                .load(std::sync::atomic::Ordering::Acquire)
        {
            // Older relays are waiting: this one queues behind them, to keep order.
            return self.outbox_push(&envelope).await;
        }
        match self.send_on(&envelope).await {
            Ok(()) => Ok(()),
            Err(why) if reliable => {
                debug!(id = %envelope.id, why, "relay kept in the outbox");
                self.outbox_push(&envelope).await
            }
            Err(why) => {
                debug!(id = %envelope.id, why, "FAST relay dropped");
                metrics::counter!("linker_relays_dropped_total", "reason" => "no_path")
                    .increment(1);
                Ok(())
            }
        }
    }

    /// One try to hand a relay to its next hop; why not, if it failed.
    pub(crate) async fn send_on(&self, envelope: &Envelope) -> Result<(), String> {
        let Body::Relay(relay) = &envelope.body else {
            return Err("not a relay".into());
        };
        let network = self.network.current();
        let down = self.links.down();
        let Some(next) = network.next_hop(&relay.home, &down, &relay.via) else {
            return Err(format!("no path to `{}`", relay.home));
        };
        self.links
            .send(&next, envelope.clone())
            .await
            .map_err(|e| e.to_string())
    }

    /// A relay that arrived here: carried out if its users live here, else passed on.
    pub(crate) async fn relayed(&self, envelope: &Envelope) -> Result<(), ProcessError> {
        let Body::Relay(relay) = &envelope.body else {
            return Ok(());
        };
        if relay.home != *self.network.current().local_domain() {
            return self.forward(envelope.clone()).await;
        }
        match &relay.what {
            Relayed::Deliver { to, message } => match to.as_slice() {
                [one] => {
                    self.deliver_or_store(message.to_user(one.clone()), envelope.feature)
                        .await
                }
                many => {
                    self.fan_out(
                        message.id,
                        envelope.feature,
                        message.created_at,
                        &message.frame,
                        many,
                    )
                    .await
                }
            },
            Relayed::Close { user } => self.close(envelope.from.clone(), user.clone()).await,
        }
    }
}
