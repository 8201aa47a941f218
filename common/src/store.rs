//! The store: messages kept for users, until delivered (or, for acking sockets, acknowledged).
//!
//! `persist` is idempotent by message id, so a redelivered envelope is stored once, and gives
//! each message a per-user sequence number that only grows (never reused, gaps allowed).
//! `fetch` returns a user's messages after a sequence number, oldest first, with the total
//! kept; a message leaves the store only through `remove`. What one user may have kept is
//! bounded: past `max_kept`, `persist` answers `Full` and keeps nothing.

use async_trait::async_trait;

use crate::envelope::StoredMessage;
use crate::ids::{MessageId, UserId};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The engine or file cannot be reached or written.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A stored record could not be decoded.
    #[error("corrupt stored message: {0}")]
    Corrupt(String),
}

/// A kept message with its place in the user's sequence.
#[derive(Debug, Clone)]
pub struct Kept {
    pub seq: u64,
    pub message: StoredMessage,
}

/// Up to `limit` of a user's kept messages, oldest first, and how many are kept in all.
#[derive(Debug, Default)]
pub struct Fetched {
    pub messages: Vec<Kept>,
    pub total: u64,
}

/// What `persist` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persisted {
    /// Kept (now or before) under this sequence number.
    Kept(u64),
    /// The user already has `max_kept` messages kept; this one was not stored.
    Full,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Keeps `message` durably before returning, unless its user already has `max_kept`
    /// messages. Storing the same id twice keeps one copy and answers its sequence number.
    async fn persist(
        &self,
        message: &StoredMessage,
        max_kept: u64,
    ) -> Result<Persisted, StoreError>;

    /// The oldest `limit` messages kept for `user` with a sequence number above `after`, and
    /// the total kept for them.
    async fn fetch(&self, user: &UserId, after: u64, limit: usize) -> Result<Fetched, StoreError>;

    /// Removes a delivered or acknowledged message. Removing an absent id is not an error.
    async fn remove(&self, user: &UserId, id: MessageId) -> Result<(), StoreError>;

    /// `Ok` if the engine answers now (`/ready` asks). The embedded store always does.
    async fn ready(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Forgets the confirmation a kept message still owed its sender (it was sent).
    async fn confirmed(&self, user: &UserId, id: MessageId) -> Result<(), StoreError>;
}
