//! Presence: which sockets each user holds, the per-user lock that keeps two fetches apart,
//! the marks that recognise a redelivered envelope, and the claims that recognise a retried
//! message (same sender and reference) within a window; and which sockets are members of
//! each channel (a connector removes a socket's memberships when it closes), and the users
//! the master user chose for each managed channel (kept until removed).
//!
//! Connectors add, refresh and remove their own sockets; processors look users up. Where the
//! engine is shared between processes, an entry not refreshed within the presence ttl expires,
//! so the users of a crashed connector do not stay online for ever. A lock expires by itself
//! after its ttl, so a crashed holder cannot block a user for ever.

use std::time::Duration;

use async_trait::async_trait;

use crate::channel::Channel;
use crate::ids::{MessageId, SocketAddress, UserId};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresenceError {
    #[error("presence unavailable: {0}")]
    Unavailable(String),
    #[error("lock for {0} not acquired within {1:?}")]
    LockTimeout(String, Duration),
}

/// Proof of holding a user's lock; pass it back to `unlock`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockToken(pub u64);

#[async_trait]
pub trait Presence: Send + Sync + 'static {
    async fn add(&self, user: &UserId, socket: &SocketAddress) -> Result<(), PresenceError>;

    async fn remove(&self, user: &UserId, socket: &SocketAddress) -> Result<(), PresenceError>;

    /// Every socket `user` holds, on any connector of the domain.
    async fn lookup(&self, user: &UserId) -> Result<Vec<SocketAddress>, PresenceError>;

    /// `lookup` of every user of `users` at once (a group's members): one list of sockets
    /// per user, in the order of `users`. A shared engine answers in one round trip per batch,
    /// not one per user.
    async fn lookup_all(&self, users: &[UserId]) -> Result<Vec<Vec<SocketAddress>>, PresenceError>;

    /// Takes `user`'s lock, waiting up to `wait`; it expires by itself after `ttl`.
    async fn lock(
        &self,
        user: &UserId,
        ttl: Duration,
        wait: Duration,
    ) -> Result<LockToken, PresenceError>;

    /// Releases a lock taken with `lock`; a lock that expired meanwhile is left alone.
    async fn unlock(&self, user: &UserId, token: LockToken) -> Result<(), PresenceError>;

    /// Keeps these sockets present for another ttl (a connector calls it periodically for all
    /// its sockets). Answers the positions in `sockets` of those that were no longer present
    /// and were added again: while they were missing (the engine was down past the ttl, or
    /// lost its data), their users looked offline, and messages for them may have been kept.
    async fn refresh(
        &self,
        sockets: &[(UserId, SocketAddress)],
    ) -> Result<Vec<usize>, PresenceError>;

    /// True if an envelope with this id was already delivered or stored (a redelivery).
    async fn is_processed(&self, id: MessageId) -> Result<bool, PresenceError>;

    /// Records that the envelope with this id was delivered or stored; kept for a bounded time.
    async fn mark_processed(&self, id: MessageId) -> Result<(), PresenceError>;

    /// `None` if envelope `id` was already processed (`is_processed`), else `lookup(user)`:
    /// the first step of a RELIABLE message in one round trip instead of two. The default
    /// asks the two in turn; a shared engine answers both at once.
    async fn lookup_unless_processed(
        &self,
        id: MessageId,
        user: &UserId,
    ) -> Result<Option<Vec<SocketAddress>>, PresenceError> {
        if self.is_processed(id).await? {
            return Ok(None);
        }
        self.lookup(user).await.map(Some)
    }

    /// Makes `socket` of `user` a member of `channel` (again: no change).
    async fn join(
        &self,
        channel: &Channel,
        user: &UserId,
        socket: &SocketAddress,
    ) -> Result<(), PresenceError>;

    /// Ends that membership (none: no change).
    async fn leave(
        &self,
        channel: &Channel,
        user: &UserId,
        socket: &SocketAddress,
    ) -> Result<(), PresenceError>;

    /// Every member socket of `channel`, on any connector of the domain, with its user. Only
    /// sockets still present (`add`ed, not removed, not expired) count: the memberships of a
    /// connector that crashed end with its presence.
    async fn members(
        &self,
        channel: &Channel,
    ) -> Result<Vec<(UserId, SocketAddress)>, PresenceError>;

    /// Adds `user` to the users chosen for the managed `channel` (again: no change), unless
    /// `max` are chosen already: then answers `false` and changes nothing.
    async fn grant(
        &self,
        channel: &Channel,
        user: &UserId,
        max: usize,
    ) -> Result<bool, PresenceError>;

    /// Takes `user` off the users chosen for `channel` (not chosen: no change). Their member
    /// sockets stay members until the caller removes them with `leave`.
    async fn revoke(&self, channel: &Channel, user: &UserId) -> Result<(), PresenceError>;

    /// True if `user` is among the users chosen for `channel`.
    async fn is_granted(&self, channel: &Channel, user: &UserId) -> Result<bool, PresenceError>;

    /// `Ok` if the engine answers now (`/ready` asks). In-process presence always does.
    async fn ready(&self) -> Result<(), PresenceError> {
        Ok(())
    }
    /// Claims `key` for message `id` for `window`, unless another message holds it: answers
    /// the id that holds the key now (`id` itself if the claim is new or was already its own).
    async fn claim(
        &self,
        key: &str,
        id: MessageId,
        window: Duration,
    ) -> Result<MessageId, PresenceError>;
}
