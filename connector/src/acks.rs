//! One acking socket's record of the numbered frames written to it and not yet acknowledged.
//!
//! `ACK {upTo}` covers only frames this socket was sent, so a lower number that another
//! processor has not yet written cannot be acknowledged by accident. The record is bounded:
//! past `MAX_UNACKED_PER_SOCKET` the oldest is forgotten here (it stays kept in the store, and
//! is resent at the next login or can be acknowledged by id).

use std::collections::{BTreeMap, HashSet};

use common::ids::MessageId;

/// Numbered frames one acking socket remembers until acknowledged.
pub const MAX_UNACKED_PER_SOCKET: usize = 4096;

#[derive(Debug, Default)]
pub(crate) struct Unacked {
    written: BTreeMap<u64, MessageId>,
    /// Acknowledged by the client, but the ACK could not be handed on: they go with the next.
    unsent: Vec<MessageId>,
}

impl Unacked {
    /// Records a numbered frame written to the socket.
    pub fn written(&mut self, seq: u64, id: MessageId) {
        self.written.insert(seq, id);
        if self.written.len() > MAX_UNACKED_PER_SOCKET {
            self.written.pop_first();
        }
    }

    /// The message ids an ACK covers: the frames numbered up to `up_to` that this socket was
    /// sent, the `ids` named, and those of an earlier ACK that was not handed on. They are
    /// forgotten here.
    pub fn acknowledge(&mut self, up_to: Option<u64>, ids: Vec<MessageId>) -> Vec<MessageId> {
        let mut acked = std::mem::take(&mut self.unsent);
        if let Some(up_to) = up_to {
            let later = match up_to.checked_add(1) {
                Some(next) => self.written.split_off(&next),
                None => BTreeMap::new(),
            };
            acked.extend(std::mem::replace(&mut self.written, later).into_values());
        }
        if !ids.is_empty() {
            let named: HashSet<MessageId> = ids.into_iter().collect();
            self.written.retain(|_, held| !named.contains(held));
            acked.retain(|id| !named.contains(id));
            acked.extend(named);
        }
        acked
    }

    /// Takes back the ids of an ACK the bus refused: the next ACK carries them (bounded like
    /// the record; past it they stay kept in the store and come again at the next login).
    pub fn not_handed_on(&mut self, ids: Vec<MessageId>) {
        let room = MAX_UNACKED_PER_SOCKET.saturating_sub(self.unsent.len());
        self.unsent.extend(ids.into_iter().take(room));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn up_to_covers_only_what_this_socket_was_sent_and_ids_add_the_rest() {
        let mut u = Unacked::default();
        let ids: Vec<MessageId> = (0..4).map(|_| MessageId::new()).collect();
        u.written(3, ids[0]);
        u.written(7, ids[1]);
        u.written(9, ids[2]);
        assert_eq!(u.acknowledge(Some(8), vec![]), vec![ids[0], ids[1]]);
        // Acknowledging again covers nothing more; a named id counts once.
        assert!(u.acknowledge(Some(8), vec![]).is_empty());
        let mut got = u.acknowledge(None, vec![ids[2], ids[3], ids[3]]);
        got.sort();
        let mut want = vec![ids[2], ids[3]];
        want.sort();
        assert_eq!(got, want);
        assert!(u.acknowledge(Some(u64::MAX), vec![]).is_empty());
    }

    #[test]
    fn an_ack_not_handed_on_goes_with_the_next_one() {
        let mut u = Unacked::default();
        let ids: Vec<MessageId> = (0..3).map(|_| MessageId::new()).collect();
        u.written(1, ids[0]);
        u.written(2, ids[1]);
        let refused = u.acknowledge(Some(1), vec![]);
        assert_eq!(refused, vec![ids[0]]);
        u.not_handed_on(refused);
        // The client goes on: its next ACK covers the refused one too.
        u.written(3, ids[2]);
        assert_eq!(u.acknowledge(Some(3), vec![]), vec![ids[0], ids[1], ids[2]]);
        // Or it repeats the refused ACK, which now carries it.
        u.not_handed_on(vec![ids[0]]);
        assert_eq!(u.acknowledge(Some(1), vec![]), vec![ids[0]]);
        assert!(u.acknowledge(Some(3), vec![]).is_empty());
    }

    #[test]
    fn the_record_is_bounded_and_forgets_the_oldest() {
        let mut u = Unacked::default();
        for seq in 0..(MAX_UNACKED_PER_SOCKET as u64 + 10) {
            u.written(seq, MessageId::new());
        }
        let acked = u.acknowledge(Some(u64::MAX), vec![]);
        assert_eq!(acked.len(), MAX_UNACKED_PER_SOCKET);
    }
}
