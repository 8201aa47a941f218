//! The engines behind the `Bus`, `Store` and `Presence` traits.
//!
//! Layout:
//! - [`memory_bus`]: the in-process bus of `linker domain` (FAST and RELIABLE in memory).
//! - [`memory_presence`]: in-process presence and per-user locks.
//! - [`embedded_store`]: the crash-safe embedded store (redb) under `./data`, with
//!   `embedded_channels`: the channel history it keeps in the same file.
//! - [`redis_presence`]: split-mode presence, locks and processed marks on Redis.
//! - [`mongo_store`]: split-mode store of undelivered messages on MongoDB, with
//!   `mongo_channels`: the channel history it keeps.
//! - [`split_bus`]: the split-mode bus, [`SplitBus`], composed of
//!   - `nats_bus`: FAST envelopes and connector commands on NATS, with
//!     `fast_subscriptions`: a processor's FAST subjects, following its partitions,
//!   - `kafka_bus`: RELIABLE envelopes on Kafka, committed as processors acknowledge,
//!   - [`offset_tracker`]: which Kafka offsets may be committed,
//!   - [`partitions`]: a sender's partition, shared by its FAST and RELIABLE envelopes.
//!
//! Nothing outside this crate names an engine.

mod embedded_channels;
pub mod embedded_store;
mod fast_subscriptions;
mod kafka_bus;
pub mod memory_bus;
pub mod memory_presence;
mod mongo_channels;
pub mod mongo_store;
mod nats_bus;
pub mod offset_tracker;
pub mod partitions;
pub mod redis_presence;
pub mod split_bus;

pub use embedded_store::EmbeddedStore;
pub use memory_bus::MemoryBus;
pub use memory_presence::MemoryPresence;
pub use mongo_store::MongoStore;
pub use nats_bus::RESUBSCRIBE_GRACE;
pub use redis_presence::RedisPresence;
pub use split_bus::{SplitBus, SplitBusConfig};
