//! Which Kafka offsets may be committed when acknowledgements arrive out of order: per
//! partition, the smallest offset handed out and not yet acknowledged (or one past the
//! highest received), so a commit never passes an unprocessed record. Each assignment of a
//! partition gets a new epoch; acknowledgements from an earlier one are ignored. Bookkeeping
//! only: the Kafka half of the bus owns the consumer and the commits.

use std::collections::{BTreeSet, HashMap};

/// Kafka partition number.
pub type Partition = i32;
/// Kafka offset within a partition.
pub type Offset = i64;
/// Which assignment of a partition a record was received under.
pub type Epoch = u64;

#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<Partition, PartitionState>,
    next_epoch: Epoch,
}

#[derive(Debug)]
struct PartitionState {
    epoch: Epoch,
    /// Received, not yet acknowledged.
    pending: BTreeSet<Offset>,
    /// One past the highest offset received.
    next: Option<Offset>,
    /// The last offset handed out for committing (`None`: nothing yet, or it failed).
    committed: Option<Offset>,
}

impl PartitionState {
    fn new(epoch: Epoch) -> PartitionState {
        PartitionState {
            epoch,
            pending: BTreeSet::new(),
            next: None,
            committed: None,
        }
    }

    /// The offset to commit: everything below it is done.
    fn committable(&self) -> Option<Offset> {
        self.pending.first().copied().or(self.next)
    }
}

impl OffsetTracker {
    pub fn new() -> OffsetTracker {
        OffsetTracker::default()
    }

    /// The partition is now ours: a fresh start under a new epoch.
    pub fn assign(&mut self, partition: Partition) -> Epoch {
        self.next_epoch += 1;
        let epoch = self.next_epoch;
        self.partitions
            .insert(partition, PartitionState::new(epoch));
        epoch
    }

    /// The partition is no longer ours: forget it. Returns the offset still worth committing
    /// (done work not yet committed), if any.
    pub fn revoke(&mut self, partition: Partition) -> Option<Offset> {
        let state = self.partitions.remove(&partition)?;
        state.committable().filter(|o| state.committed != Some(*o))
    }

    /// A record was received and is about to be handed to the processor. Returns the epoch
    /// its acknowledgement must carry.
    pub fn received(&mut self, partition: Partition, offset: Offset) -> Epoch {
        let epochs = &mut self.next_epoch;
        let state = self.partitions.entry(partition).or_insert_with(|| {
            *epochs += 1;
            PartitionState::new(*epochs)
        });
        state.pending.insert(offset);
        state.next = Some(state.next.map_or(offset + 1, |n| n.max(offset + 1)));
        state.epoch
    }

    /// A record was processed. Ignored if the partition was revoked (and perhaps assigned
    /// again) since it was received.
    pub fn done(&mut self, partition: Partition, epoch: Epoch, offset: Offset) {
        if let Some(state) = self.partitions.get_mut(&partition)
            && state.epoch == epoch
        {
            state.pending.remove(&offset);
        }
    }

    /// The offsets to commit now, one per partition whose committable offset moved since the
    /// last call; they count as committed unless [`OffsetTracker::commit_failed`] says not.
    pub fn to_commit(&mut self) -> Vec<(Partition, Offset)> {
        let mut out = Vec::new();
        for (partition, state) in &mut self.partitions {
            if let Some(offset) = state.committable()
                && state.committed != Some(offset)
            {
                state.committed = Some(offset);
                out.push((*partition, offset));
            }
        }
        out.sort_unstable();
        out
    }

    /// Every partition's offset to commit, whether or not it was handed out before: for the
    /// last, synchronous commit when a consumer closes.
    pub fn committable(&self) -> Vec<(Partition, Offset)> {
        let mut out: Vec<_> = self
            .partitions
            .iter()
            .filter_map(|(p, s)| s.committable().map(|o| (*p, o)))
            .collect();
        out.sort_unstable();
        out
    }

    /// A commit for this partition failed: the next [`OffsetTracker::to_commit`] offers it
    /// again.
    pub fn commit_failed(&mut self, partition: Partition) {
        if let Some(state) = self.partitions.get_mut(&partition) {
            state.committed = None;
        }
    }

    /// Records handed out and not yet acknowledged, over all partitions.
    pub fn in_flight(&self) -> usize {
        self.partitions.values().map(|s| s.pending.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_to_commit_before_anything_is_received() {
        let mut t = OffsetTracker::new();
        t.assign(0);
        assert!(t.to_commit().is_empty());
    }

    #[test]
    fn commits_only_below_the_first_unacknowledged_offset() {
        let mut t = OffsetTracker::new();
        let e = t.assign(0);
        for o in 10..15 {
            assert_eq!(t.received(0, o), e);
        }
        assert_eq!(
            t.to_commit(),
            vec![(0, 10)],
            "nothing done: stay at the first"
        );
        t.done(0, e, 12);
        t.done(0, e, 11);
        assert!(t.to_commit().is_empty(), "10 still pending");
        t.done(0, e, 10);
        assert_eq!(t.to_commit(), vec![(0, 13)], "10..=12 done");
        t.done(0, e, 14);
        assert!(t.to_commit().is_empty(), "13 still pending");
        t.done(0, e, 13);
        assert_eq!(
            t.to_commit(),
            vec![(0, 15)],
            "all done: one past the highest"
        );
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn gaps_in_offsets_do_not_hold_commits_back() {
        // Offsets a consumer never sees (transaction markers, compaction) leave gaps.
        let mut t = OffsetTracker::new();
        let e = t.assign(3);
        t.received(3, 5);
        t.received(3, 8);
        t.done(3, e, 8);
        t.done(3, e, 5);
        assert_eq!(t.to_commit(), vec![(3, 9)]);
    }

    #[test]
    fn partitions_are_tracked_apart() {
        let mut t = OffsetTracker::new();
        let (e0, e1) = (t.assign(0), t.assign(1));
        t.received(0, 0);
        t.received(1, 0);
        t.received(1, 1);
        t.done(1, e1, 0);
        t.done(1, e1, 1);
        assert_eq!(t.to_commit(), vec![(0, 0), (1, 2)]);
        t.done(0, e0, 0);
        assert_eq!(t.to_commit(), vec![(0, 1)]);
    }

    #[test]
    fn acknowledgements_from_before_a_revocation_are_ignored() {
        let mut t = OffsetTracker::new();
        let old = t.assign(0);
        t.received(0, 7);
        t.received(0, 8);
        t.done(0, old, 7);
        assert_eq!(
            t.revoke(0),
            Some(8),
            "done work is worth committing at revoke"
        );
        let new = t.assign(0);
        assert_ne!(old, new);
        t.received(0, 8);
        t.done(0, old, 8);
        assert_eq!(t.to_commit(), vec![(0, 8)], "the stale ack did not count");
        t.done(0, new, 8);
        assert_eq!(t.to_commit(), vec![(0, 9)]);
        assert_eq!(t.revoke(0), None, "everything was committed");
        assert_eq!(t.revoke(0), None, "unknown partition");
        t.done(0, new, 9);
    }

    #[test]
    fn a_failed_commit_is_offered_again() {
        let mut t = OffsetTracker::new();
        let e = t.assign(2);
        t.received(2, 0);
        t.done(2, e, 0);
        assert_eq!(t.to_commit(), vec![(2, 1)]);
        assert!(t.to_commit().is_empty());
        assert_eq!(
            t.committable(),
            vec![(2, 1)],
            "offered for the final commit"
        );
        t.commit_failed(2);
        assert_eq!(t.to_commit(), vec![(2, 1)]);
    }

    #[test]
    fn a_record_for_an_unannounced_partition_starts_tracking_it() {
        let mut t = OffsetTracker::new();
        let e = t.received(5, 100);
        t.done(5, e, 100);
        assert_eq!(t.to_commit(), vec![(5, 101)]);
    }
}
