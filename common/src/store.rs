//! The store: messages kept for users who could not take them.
//!
//! `persist` is idempotent by message id, so a redelivered envelope is stored once. `fetch`
//! returns a user's oldest messages first with the total still stored; a message leaves the
//! store only through `remove`, called once it was delivered.

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

/// Up to `limit` of a user's stored messages, oldest first, and how many are stored in all.
#[derive(Debug, Default)]
pub struct Fetched {
    pub messages: Vec<StoredMessage>,
    pub total: u64,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Keeps `message` durably before returning. Storing the same id twice keeps one copy.
    async fn persist(&self, message: &StoredMessage) -> Result<(), StoreError>;

    /// The oldest `limit` messages stored for `user`, and the total stored for them.
    async fn fetch(&self, user: &UserId, limit: usize) -> Result<Fetched, StoreError>;

    /// Removes a delivered message. Removing an absent id is not an error.
    async fn remove(&self, user: &UserId, id: MessageId) -> Result<(), StoreError>;

    /// `Ok` if the engine answers now (`/ready` asks). The embedded store always does.
    async fn ready(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
