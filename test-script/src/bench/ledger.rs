//! Delivery accounting: who sent what, what came back, how long it took.
//!
//! Each sender's sequence numbers come from here, with a flag for "sent in the measured
//! window"; since phases only move forward, one sender's measured sequence numbers form one
//! range. Receipts are kept as one bit per sequence number, so a second receipt is a
//! duplicate and a measured number never received by the end is lost. Latencies go into two
//! HDR histograms (microseconds): the measured messages', and the current second's.

use std::ops::Range;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency the histograms hold exactly (60 s); longer ones are recorded as this.
const MAX_LATENCY_US: u64 = 60_000_000;

/// What a receipt turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receipt {
    /// First receipt; `measured` if it was sent in the measured window.
    Fresh { measured: bool },
    /// Received before.
    Duplicate,
    /// Not a message this run sent (unknown sender, or a sequence number not yet used).
    Unknown,
}

#[derive(Default)]
struct Track {
    next_seq: u64,
    /// First receipts.
    received: u64,
    measured: Option<Range<u64>>,
    seen: Vec<u64>,
}

impl Track {
    /// Sets the bit of `seq`; false if it was already set.
    fn mark(&mut self, seq: u64) -> bool {
        let word = (seq / 64) as usize;
        let bit = 1u64 << (seq % 64);
        if word >= self.seen.len() {
            self.seen.resize(word + 1, 0);
        }
        let fresh = self.seen[word] & bit == 0;
        self.seen[word] |= bit;
        fresh
    }
}

struct Latency {
    measured: Histogram<u64>,
    second: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
        .expect("1 us to 60 s at 3 significant digits is a valid histogram")
}

/// Counts over the whole run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Messages sent, every phase.
    pub sent: u64,
    /// First receipts, every phase.
    pub received: u64,
    /// Messages sent in the measured window.
    pub measured_sent: u64,
    /// Of those, how many arrived (once or more).
    pub measured_received: u64,
    /// Receipts of a message already received, every phase.
    pub duplicated: u64,
    /// MESSAGE frames whose content this run did not send.
    pub unknown: u64,
    /// Measured-phase ticks that sent nothing: `--max-in-flight` messages were on their way.
    pub skipped: u64,
}

impl Totals {
    /// Measured messages never received.
    pub fn lost(&self) -> u64 {
        self.measured_sent - self.measured_received
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }
}

pub struct Ledger {
    senders: Box<[Mutex<Track>]>,
    latency: Mutex<Latency>,
    sent: AtomicU64,
    received: AtomicU64,
    measured_sent: AtomicU64,
    measured_received: AtomicU64,
    duplicated: AtomicU64,
    unknown: AtomicU64,
    skipped: AtomicU64,
}

impl Ledger {
    pub fn new(senders: usize) -> Ledger {
        Ledger {
            senders: (0..senders).map(|_| Mutex::default()).collect(),
            latency: Mutex::new(Latency {
                measured: histogram(),
                second: histogram(),
            }),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            measured_sent: AtomicU64::new(0),
            measured_received: AtomicU64::new(0),
            duplicated: AtomicU64::new(0),
            unknown: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
        }
    }

    fn track(&self, sender: usize) -> std::sync::MutexGuard<'_, Track> {
        self.senders[sender]
            .lock()
            .expect("ledger locks are never poisoned: nothing panics while holding one")
    }

    /// Takes the next sequence number of `sender`, for a message about to be sent.
    pub fn sent(&self, sender: usize, measured: bool) -> u64 {
        let mut t = self.track(sender);
        let seq = t.next_seq;
        t.next_seq += 1;
        if measured {
            let range = t.measured.get_or_insert(seq..seq);
            debug_assert_eq!(range.end, seq, "measured sends are consecutive");
            range.end = seq + 1;
            self.measured_sent.fetch_add(1, Ordering::Relaxed);
        }
        self.sent.fetch_add(1, Ordering::Relaxed);
        seq
    }

    /// Takes back the last message of `sender`: writing it failed, so it was never sent.
    pub fn send_failed(&self, sender: usize, seq: u64) {
        let mut t = self.track(sender);
        if let Some(range) = t.measured.as_mut()
            && range.end == seq + 1
            && range.contains(&seq)
        {
            range.end = seq;
            self.measured_sent.fetch_sub(1, Ordering::Relaxed);
        }
        self.sent.fetch_sub(1, Ordering::Relaxed);
    }

    /// Messages of `sender` sent and not received yet (lost ones included).
    pub fn in_flight(&self, sender: usize) -> u64 {
        let t = self.track(sender);
        t.next_seq - t.received
    }

    /// Counts a measured-phase tick that sent nothing because too much was in flight.
    pub fn skipped(&self) {
        self.skipped.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a receipt of `sender`'s message `seq`, which took `latency_us`.
    pub fn received(&self, sender: usize, seq: u64, latency_us: u64) -> Receipt {
        if sender >= self.senders.len() {
            self.unknown.fetch_add(1, Ordering::Relaxed);
            return Receipt::Unknown;
        }
        let (fresh, measured) = {
            let mut t = self.track(sender);
            if seq >= t.next_seq {
                drop(t);
                self.unknown.fetch_add(1, Ordering::Relaxed);
                return Receipt::Unknown;
            }
            let measured = t.measured.as_ref().is_some_and(|r| r.contains(&seq));
            let fresh = t.mark(seq);
            if fresh {
                t.received += 1;
            }
            (fresh, measured)
        };
        if !fresh {
            self.duplicated.fetch_add(1, Ordering::Relaxed);
            return Receipt::Duplicate;
        }
        self.received.fetch_add(1, Ordering::Relaxed);
        if measured {
            self.measured_received.fetch_add(1, Ordering::Relaxed);
        }
        let value = latency_us.clamp(1, MAX_LATENCY_US);
        let mut l = self
            .latency
            .lock()
            .expect("ledger locks are never poisoned: nothing panics while holding one");
        l.second.saturating_record(value);
        if measured {
            l.measured.saturating_record(value);
        }
        Receipt::Fresh { measured }
    }

    pub fn totals(&self) -> Totals {
        Totals {
            sent: self.sent.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            measured_sent: self.measured_sent.load(Ordering::Relaxed),
            measured_received: self.measured_received.load(Ordering::Relaxed),
            duplicated: self.duplicated.load(Ordering::Relaxed),
            unknown: self.unknown.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
        }
    }

    /// Measured messages not received yet.
    pub fn outstanding(&self) -> u64 {
        let t = self.totals();
        t.measured_sent.saturating_sub(t.measured_received)
    }

    /// The latencies of the measured messages received so far.
    pub fn measured_latency(&self) -> Percentiles {
        let l = self
            .latency
            .lock()
            .expect("ledger locks are never poisoned: nothing panics while holding one");
        Percentiles::of(&l.measured)
    }

    /// The latencies of the receipts since the last call, and starts a new second.
    pub fn take_second(&self) -> Percentiles {
        let mut l = self
            .latency
            .lock()
            .expect("ledger locks are never poisoned: nothing panics while holding one");
        let p = Percentiles::of(&l.second);
        l.second.reset();
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_received_once_is_neither_lost_nor_duplicated() {
        let l = Ledger::new(2);
        let seq = l.sent(0, true);
        assert_eq!(l.received(0, seq, 1500), Receipt::Fresh { measured: true });
        let t = l.totals();
        assert_eq!((t.measured_sent, t.measured_received, t.lost()), (1, 1, 0));
        assert_eq!(t.duplicated, 0);
        assert_eq!(l.outstanding(), 0);
    }

    #[test]
    fn a_second_receipt_is_a_duplicate_and_is_not_timed() {
        let l = Ledger::new(1);
        let seq = l.sent(0, true);
        l.received(0, seq, 1000);
        assert_eq!(l.received(0, seq, 9_000_000), Receipt::Duplicate);
        let t = l.totals();
        assert_eq!((t.received, t.measured_received, t.duplicated), (1, 1, 1));
        assert_eq!(l.measured_latency().count, 1);
        assert_eq!(l.measured_latency().max_ms, 1.0);
    }

    #[test]
    fn measured_messages_never_received_are_lost() {
        let l = Ledger::new(3);
        for sender in 0..3 {
            for _ in 0..100 {
                let seq = l.sent(sender, true);
                // Sender 1 loses every tenth message.
                if !(sender == 1 && seq.is_multiple_of(10)) {
                    l.received(sender, seq, 10);
                }
            }
        }
        let t = l.totals();
        assert_eq!(t.measured_sent, 300);
        assert_eq!(t.lost(), 10);
        assert_eq!(l.outstanding(), 10);
    }

    #[test]
    fn warm_up_messages_count_as_sent_but_not_as_measured() {
        let l = Ledger::new(1);
        let warm = l.sent(0, false);
        let measured = l.sent(0, true);
        let after = l.sent(0, false);
        assert_eq!(l.received(0, warm, 5), Receipt::Fresh { measured: false });
        assert_eq!(
            l.received(0, measured, 5),
            Receipt::Fresh { measured: true }
        );
        let t = l.totals();
        assert_eq!((t.sent, t.measured_sent, t.measured_received), (3, 1, 1));
        // The drain-phase message is outstanding but not lost: it was not measured.
        let _ = after;
        assert_eq!(t.lost(), 0);
        assert_eq!(l.measured_latency().count, 1);
    }

    #[test]
    fn receipts_of_messages_never_sent_are_unknown() {
        let l = Ledger::new(2);
        l.sent(0, true);
        assert_eq!(l.received(0, 5, 1), Receipt::Unknown);
        assert_eq!(l.received(7, 0, 1), Receipt::Unknown);
        let t = l.totals();
        assert_eq!((t.unknown, t.received), (2, 0));
    }

    #[test]
    fn a_failed_send_is_taken_back() {
        let l = Ledger::new(1);
        let a = l.sent(0, true);
        let b = l.sent(0, true);
        l.received(0, a, 1);
        l.send_failed(0, b);
        let t = l.totals();
        assert_eq!((t.sent, t.measured_sent, t.lost()), (1, 1, 0));
    }

    #[test]
    fn in_flight_counts_what_was_sent_and_not_yet_received() {
        let l = Ledger::new(2);
        let a = l.sent(0, true);
        let b = l.sent(0, true);
        assert_eq!(l.in_flight(0), 2);
        l.received(0, b, 1);
        l.received(0, b, 1);
        assert_eq!(l.in_flight(0), 1, "a duplicate is not a second receipt");
        l.received(0, a, 1);
        assert_eq!((l.in_flight(0), l.in_flight(1)), (0, 0));
    }

    #[test]
    fn sequence_numbers_past_one_bitmap_word_are_tracked() {
        let l = Ledger::new(1);
        let seqs: Vec<u64> = (0..200).map(|_| l.sent(0, true)).collect();
        for &s in seqs.iter().rev() {
            assert_eq!(l.received(0, s, 1), Receipt::Fresh { measured: true });
        }
        assert_eq!(l.received(0, 130, 1), Receipt::Duplicate);
        assert_eq!(l.totals().lost(), 0);
    }

    #[test]
    fn percentiles_come_from_the_measured_histogram_and_seconds_reset() {
        let l = Ledger::new(1);
        for ms in 1..=100u64 {
            let seq = l.sent(0, true);
            l.received(0, seq, ms * 1000);
        }
        let p = l.measured_latency();
        assert_eq!(p.count, 100);
        assert!((p.p50_ms - 50.0).abs() < 0.1, "{p:?}");
        assert!((p.p99_ms - 99.0).abs() < 0.1, "{p:?}");
        assert!((p.max_ms - 100.0).abs() < 0.1, "{p:?}");
        assert_eq!(l.take_second().count, 100);
        assert_eq!(l.take_second().count, 0);
        assert_eq!(l.measured_latency().count, 100);
    }
}
