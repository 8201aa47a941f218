//! The engines behind the `Bus`, `Store` and `Presence` traits.
//!
//! Layout:
//! - [`memory_bus`]: the in-process bus of `linker domain` (FAST and RELIABLE in memory).
//! - [`memory_presence`]: in-process presence and per-user locks.
//! - [`embedded_store`]: the crash-safe embedded store (redb) under `./data`.
//! - [`redis_presence`]: split-mode presence, locks and processed marks on Redis.
//! - [`mongo_store`]: split-mode store of undelivered messages on MongoDB.
//!
//! Split-mode engines (NATS, Kafka, Redis, MongoDB) join as further modules; nothing outside
//! this crate names an engine.

pub mod embedded_store;
pub mod memory_bus;
pub mod memory_presence;
pub mod mongo_store;
pub mod redis_presence;

pub use embedded_store::EmbeddedStore;
pub use memory_bus::MemoryBus;
pub use memory_presence::MemoryPresence;
pub use mongo_store::MongoStore;
pub use redis_presence::RedisPresence;
