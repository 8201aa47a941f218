//! Which inbound partition a sender belongs to, for both paths of the split bus: the Kafka
//! partition of its `RELIABLE` records and the NATS subject of its `FAST` envelopes, so the
//! processor owning a partition handles both, each in order. The function is librdkafka's
//! default partitioner (CRC-32 of the key, modulo the partition count), so records keep the
//! partition they had before the producer named partitions itself. [`Owned`] carries the
//! partitions Kafka assigned to a processor from its rebalance callbacks to its NATS side.

use std::collections::BTreeSet;

use tokio::sync::watch;

/// The partitions a processor owns now, as its Kafka consumer's rebalances leave them.
pub(crate) type Owned = watch::Sender<BTreeSet<i32>>;

/// The partition of `key` among `count` partitions (`count` is at least 1).
pub fn partition_of(key: &[u8], count: i32) -> i32 {
    let count = count.max(1) as u32;
    (crc32(key) % count) as i32
}

/// CRC-32 (IEEE 802.3, reflected, as zlib and librdkafka compute it), bit by bit: keys are
/// user ids of a few bytes, so a table buys nothing.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_gives_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn a_key_always_lands_in_the_same_partition_in_range() {
        for n in 0..1_000 {
            let key = format!("ANZ-{n}");
            let p = partition_of(key.as_bytes(), 8);
            assert!((0..8).contains(&p));
            assert_eq!(p, partition_of(key.as_bytes(), 8));
        }
        assert_eq!(partition_of(b"ANZ-1", 1), 0);
        assert_eq!(
            partition_of(b"ANZ-1", 0),
            0,
            "a nonsense count is one partition"
        );
    }
}
