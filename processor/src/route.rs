//! Where a target lives, and getting work to the domain where it does.
//!
//! A user of this domain is served here. Work for users of another domain becomes a relay
//! envelope whose id is derived from the message id and the home domain, so a relay that
//! arrives twice (sent again after a link failed) is recognised there. A relay goes to the
//! next hop of a shortest path over the links that are up, never back through a domain it
//! has passed, and at most `MAX_HOPS` hops. A RELIABLE relay is kept in the outbox first and
//! leaves it once the next hop answers that it is safe there (see `outbox`), so no worker
//! ever waits on another domain, and two domains relaying to each other cannot hold each
//! other up. A FAST relay goes straight to the next hop, or is dropped and counted if no
//! path is up.
//!
//! The origin of a RELIABLE relay keeps it until the home domain sends a receipt, and sends
//! it again (by whatever path is up then) if none comes in time: a domain that takes a relay
//! and crashes before passing it on delays it, but does not lose it.
//!
//! A relay's `from` is the user whose order it keeps: the recipient of a delivery (so the
//! far domain handles one recipient's relays in order), the sender of a group message or of
//! a channel post, the master user of a close.

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
            ack: false,
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

    /// Passes a relay on: a RELIABLE one through the outbox (kept, then sent and kept until
    /// the next hop has it), a FAST one straight to the next hop, or dropped if none is up.
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
        if envelope.feature == Feature::Reliable {
            // Kept first, sent by the outbox: a worker never waits on another domain.
            return self.outbox_push(&envelope).await;
        }
        let posted = match self.next_hop(&envelope) {
            Some(next) => self.links.post(&next, envelope).map_err(|e| e.to_string()),
            None => Err("no path".to_owned()),
        };
        if let Err(why) = posted {
            debug!(why, "FAST relay dropped");
            metrics::counter!("linker_relays_dropped_total", "reason" => "no_path").increment(1);
        }
        Ok(())
    }

    /// The neighbour a relay goes to next: the first step of a shortest path over the links
    /// that are up, not back through a domain it has passed.
    pub(crate) fn next_hop(&self, envelope: &Envelope) -> Option<DomainName> {
        let Body::Relay(relay) = &envelope.body else {
            return None;
        };
        let down = self.links.down();
        self.network
            .current()
            .next_hop(&relay.home, &down, &relay.via)
    }

    /// A relay that arrived here: carried out if its users live here, else passed on.
    /// `sockets` are those of its one user, when the caller looked them up already.
    pub(crate) async fn relayed(
        &self,
        envelope: &Envelope,
        sockets: Option<Vec<SocketAddress>>,
    ) -> Result<(), ProcessError> {
        let Body::Relay(relay) = &envelope.body else {
            return Ok(());
        };
        if relay.home != *self.network.current().local_domain() {
            return self.forward(envelope.clone()).await;
        }
        match &relay.what {
            Relayed::Deliver { to, message } => match to.as_slice() {
                [one] => {
                    self.deliver_or_store(message.to_user(one.clone()), envelope.feature, sockets)
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
            Relayed::ChannelPost {
                channel,
                content,
                reference,
                created_at,
            } => {
                self.channel_post_relayed(envelope, channel, content, reference, *created_at)
                    .await
            }
            Relayed::Receipt { ids } => {
                let Some(from) = relay.via.first() else {
                    return Ok(());
                };
                self.outbox_received(from, ids).await
            }
        }
    }

    /// Tells the origin of a RELIABLE relay handled here (now, or before: a relay sent again)
    /// that it may forget it. A FAST relay of its own: a lost receipt only means the origin
    /// sends the relay again, which is recognised here.
    pub(crate) async fn send_receipt(&self, envelope: &Envelope) -> Result<(), ProcessError> {
        let Body::Relay(relay) = &envelope.body else {
            return Ok(());
        };
        let local = self.network.current().local_domain().clone();
        let (Some(origin), true) = (relay.via.first(), envelope.feature == Feature::Reliable)
        else {
            return Ok(());
        };
        if relay.home != local || matches!(relay.what, Relayed::Receipt { .. }) {
            return Ok(());
        }
        let what = Relayed::Receipt {
            ids: vec![envelope.id],
        };
        self.relay(
            envelope.id.derive("receipt"),
            envelope.from.clone(),
            Feature::Fast,
            origin.clone(),
            what,
        )
        .await
    }
}
