//! The store: messages kept for users, until delivered (or, for acking sockets, acknowledged).
//!
//! `persist` is idempotent by message id, so a redelivered envelope is stored once, and gives
//! each message a per-user sequence number that only grows (never reused, gaps allowed).
//! `fetch` returns a user's messages after a sequence number, oldest first, with the total
//! kept; a message leaves the store only through `remove`. What one user may have kept is
//! bounded: past `max_kept`, `persist` answers `Full` and keeps nothing.
//!
//! The store also keeps the recent RELIABLE posts of each channel (`post`, `history`): each
//! gets the next number of its channel's sequence, given by the store itself so that two
//! processors never give the same one; what a channel keeps is bounded by its [`Retention`].

use async_trait::async_trait;

use crate::channel::Channel;
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

/// A RELIABLE post to a channel, as kept for its history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelPost {
    pub id: MessageId,
    pub from: UserId,
    pub reference: Option<String>,
    /// The post's `content`: JSON text as the sender wrote it.
    pub content: String,
    pub created_at: u64,
}

/// A kept post with its place in the channel's sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Numbered {
    pub seq: u64,
    pub post: ChannelPost,
}

/// How much of a channel is kept: at most `keep` posts, none older than `max_age_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub keep: u64,
    pub max_age_ms: u64,
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

    /// Keeps `post` as the next of `channel`'s sequence and answers its number, durably before
    /// returning. Numbers start at 1 and only grow; two writers never get the same one; once a
    /// number can be read by `history`, so can every lower number still kept. Keeping the same
    /// id again answers its first number. Then drops what `retention` no longer allows (by
    /// count, and by age as of `now`, ms since the epoch), never the newest post.
    async fn post(
        &self,
        channel: &Channel,
        post: &ChannelPost,
        retention: Retention,
        now: u64,
    ) -> Result<u64, StoreError>;

    /// The newest `limit` kept posts of `channel` with a number above `after` and created at
    /// or after `since` (ms since the epoch), oldest first.
    async fn history(
        &self,
        channel: &Channel,
        after: u64,
        limit: usize,
        since: u64,
    ) -> Result<Vec<Numbered>, StoreError>;
}
