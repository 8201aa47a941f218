//! Lanes: the envelopes a processor holds, queued per sender.
//!
//! A sender with envelopes in hand has a lane, and exactly one task works through it in
//! order, so one sender's envelopes never overtake each other while other senders' are
//! handled at the same time. The map is only touched under a short lock, never across an
//! await. The dispatcher (`dispatch`) owns the tasks and bounds how many envelopes are held.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::OwnedSemaphorePermit;

use common::bus::Inbound;
use common::ids::UserId;

/// An envelope taken from the bus, with the place it holds until it is done.
pub(crate) struct Held {
    pub inbound: Inbound,
    pub place: OwnedSemaphorePermit,
}

/// The senders with envelopes in hand, each with those queued behind the one its task
/// handles now. A sender is in the map exactly while its task runs.
#[derive(Default)]
pub(crate) struct Lanes(Mutex<HashMap<UserId, VecDeque<Held>>>);

impl Lanes {
    fn lock(&self) -> MutexGuard<'_, HashMap<UserId, VecDeque<Held>>> {
        // Nothing panics while it is held; if something did, the map is still consistent.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `held` behind its sender's envelopes in hand. Answers it back if the sender had
    /// none: the caller then starts the sender's task with it.
    pub fn push(&self, held: Held) -> Option<Held> {
        let mut lanes = self.lock();
        match lanes.get_mut(&held.inbound.envelope.from) {
            Some(lane) => {
                lane.push_back(held);
                None
            }
            None => {
                lanes.insert(held.inbound.envelope.from.clone(), VecDeque::new());
                Some(held)
            }
        }
    }

    /// The sender's next envelope; `None` once its lane is empty, and the lane is then gone
    /// (its task ends; the sender's next envelope starts a new one).
    pub fn next(&self, sender: &UserId) -> Option<Held> {
        let mut lanes = self.lock();
        let next = lanes.get_mut(sender).and_then(VecDeque::pop_front);
        if next.is_none() {
            lanes.remove(sender);
        }
        next
    }

    /// Drops the sender's lane with what is queued in it, unacknowledged (a durable bus
    /// redelivers it): its task stopped early (shutdown while retrying, or a panic).
    pub fn abandon(&self, sender: &UserId) {
        let dropped = self.lock().remove(sender);
        drop(dropped); // outside the lock: dropping an envelope may run its bus's code
    }

    /// Senders with envelopes in hand now.
    pub fn senders(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::Semaphore;

    use common::bus::Ack;
    use common::envelope::{Body, Envelope};
    use common::frame::Feature;
    use common::ids::{ConnectorName, MessageId, SocketAddress};

    use super::*;

    fn held(places: &Arc<Semaphore>, from: &str, n: u32) -> Held {
        let from = UserId::parse(from).expect("a valid user id");
        let envelope = Envelope {
            id: MessageId::new(),
            from: from.clone(),
            feature: Feature::Reliable,
            reference: Some(n.to_string()),
            confirm: false,
            ack: false,
            created_at: 0,
            hops: 0,
            origin: SocketAddress {
                connector: ConnectorName::new("connector-01"),
                socket: 1,
            },
            body: Body::Resume,
        };
        Held {
            inbound: Inbound {
                envelope,
                ack: Ack::none(),
            },
            place: places.clone().try_acquire_owned().expect("a free place"),
        }
    }

    fn reference(h: &Held) -> &str {
        h.inbound.envelope.reference.as_deref().unwrap_or_default()
    }

    #[test]
    fn one_senders_envelopes_come_out_in_order_and_others_start_their_own_lane() {
        let places = Arc::new(Semaphore::new(10));
        let lanes = Lanes::default();
        let a = UserId::parse("ANZ-1").unwrap();
        let first = lanes.push(held(&places, "ANZ-1", 1)).expect("a new lane");
        assert_eq!(reference(&first), "1");
        assert!(lanes.push(held(&places, "ANZ-1", 2)).is_none(), "queued");
        assert!(lanes.push(held(&places, "ANZ-1", 3)).is_none(), "queued");
        let other = lanes.push(held(&places, "ANZ-2", 1));
        assert!(other.is_some(), "another sender's lane");
        assert_eq!(lanes.senders(), 2);
        assert_eq!(
            places.available_permits(),
            6,
            "each held envelope holds a place"
        );
        drop(first);
        assert_eq!(reference(&lanes.next(&a).unwrap()), "2");
        assert_eq!(reference(&lanes.next(&a).unwrap()), "3");
        assert!(lanes.next(&a).is_none(), "drained");
        assert_eq!(lanes.senders(), 1, "the drained lane is gone");
        assert!(
            lanes.push(held(&places, "ANZ-1", 4)).is_some(),
            "a new envelope starts a new lane"
        );
    }

    #[test]
    fn an_abandoned_lane_gives_its_places_back() {
        let places = Arc::new(Semaphore::new(3));
        let lanes = Lanes::default();
        let a = UserId::parse("ANZ-1").unwrap();
        let first = lanes.push(held(&places, "ANZ-1", 1)).unwrap();
        lanes.push(held(&places, "ANZ-1", 2));
        lanes.push(held(&places, "ANZ-1", 3));
        assert_eq!(places.available_permits(), 0);
        drop(first);
        lanes.abandon(&a);
        assert_eq!(places.available_permits(), 3);
        assert_eq!(lanes.senders(), 0);
    }
}
