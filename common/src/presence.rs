//! Presence: which sockets each user holds, and the per-user lock that keeps two fetches
//! apart.
//!
//! Connectors add and remove their own sockets; processors look users up. A lock expires by
//! itself after its ttl, so a crashed holder cannot block a user for ever.

use std::time::Duration;

use async_trait::async_trait;

use crate::ids::{SocketAddress, UserId};

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

    /// Takes `user`'s lock, waiting up to `wait`; it expires by itself after `ttl`.
    async fn lock(
        &self,
        user: &UserId,
        ttl: Duration,
        wait: Duration,
    ) -> Result<LockToken, PresenceError>;

    /// Releases a lock taken with `lock`; a lock that expired meanwhile is left alone.
    async fn unlock(&self, user: &UserId, token: LockToken) -> Result<(), PresenceError>;
}
