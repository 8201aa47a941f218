//! In-process presence: a sharded map from user to sockets, and expiring per-user locks.
//!
//! Everything lives and dies with the one process, so entries need no expiry and refresh is a
//! no-op. Processed marks are kept for relays from other domains, which may arrive twice: at
//! most [`MAX_MARKS`], each for at most [`MARK_TTL`], oldest forgotten first. Reference
//! claims are kept, bounded: expired ones are swept as the map grows, and past
//! `MAX_CLAIMS` live ones a new claim is not remembered (counted), so memory stays bounded.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::sync::Notify;

use common::channel::Channel;
use common::ids::{MessageId, SocketAddress, UserId};
use common::presence::{LockToken, Presence, PresenceError};

/// Most processed marks kept.
pub const MAX_MARKS: usize = 100_000;

/// How long a processed mark is kept.
pub const MARK_TTL: Duration = Duration::from_secs(24 * 3600);
/// Most reference claims remembered at once.
pub const MAX_CLAIMS: usize = 1_000_000;

#[derive(Default)]
pub struct MemoryPresence {
    sockets: DashMap<UserId, Vec<SocketAddress>>,
    /// Member sockets of each channel; a channel without members is removed.
    channels: DashMap<Channel, Vec<(UserId, SocketAddress)>>,
    /// The users chosen for each managed channel; a channel with none is removed.
    granted: DashMap<Channel, std::collections::HashSet<UserId>>,
    claims: DashMap<String, (MessageId, Instant)>,
    /// Size at which expired claims are swept next.
    sweep_at: std::sync::atomic::AtomicUsize,
    locks: DashMap<UserId, (u64, Instant)>,
    unlocked: Notify,
    next_token: std::sync::atomic::AtomicU64,
    marks: std::sync::Mutex<Marks>,
}

/// Processed marks, and their order of arrival for forgetting the oldest.
#[derive(Default)]
struct Marks {
    ids: std::collections::HashSet<MessageId>,
    order: std::collections::VecDeque<(Instant, MessageId)>,
}

impl Marks {
    fn forget_old(&mut self, now: Instant) {
        while let Some((at, id)) = self.order.front() {
            if self.order.len() <= MAX_MARKS && now.duration_since(*at) < MARK_TTL {
                break;
            }
            self.ids.remove(id);
            self.order.pop_front();
        }
    }
}

impl MemoryPresence {
    pub fn new() -> MemoryPresence {
        MemoryPresence::default()
    }
}

#[async_trait]
impl Presence for MemoryPresence {
    async fn add(&self, user: &UserId, socket: &SocketAddress) -> Result<(), PresenceError> {
        let mut entry = self.sockets.entry(user.clone()).or_default();
        if !entry.contains(socket) {
            entry.push(socket.clone());
        }
        Ok(())
    }

    async fn remove(&self, user: &UserId, socket: &SocketAddress) -> Result<(), PresenceError> {
        if let Entry::Occupied(mut e) = self.sockets.entry(user.clone()) {
            e.get_mut().retain(|s| s != socket);
            if e.get().is_empty() {
                e.remove();
            }
        }
        Ok(())
    }

    async fn lookup(&self, user: &UserId) -> Result<Vec<SocketAddress>, PresenceError> {
        Ok(self
            .sockets
            .get(user)
            .map(|s| s.clone())
            .unwrap_or_default())
    }

    async fn lookup_all(&self, users: &[UserId]) -> Result<Vec<Vec<SocketAddress>>, PresenceError> {
        Ok(users
            .iter()
            .map(|user| {
                self.sockets
                    .get(user)
                    .map(|s| s.clone())
                    .unwrap_or_default()
            })
            .collect())
    }

    async fn join(
        &self,
        channel: &Channel,
        user: &UserId,
        socket: &SocketAddress,
    ) -> Result<(), PresenceError> {
        let mut entry = self.channels.entry(channel.clone()).or_default();
        if !entry.iter().any(|(u, s)| u == user && s == socket) {
            entry.push((user.clone(), socket.clone()));
        }
        Ok(())
    }

    async fn leave(
        &self,
        channel: &Channel,
        user: &UserId,
        socket: &SocketAddress,
    ) -> Result<(), PresenceError> {
        if let Entry::Occupied(mut e) = self.channels.entry(channel.clone()) {
            e.get_mut().retain(|(u, s)| !(u == user && s == socket));
            if e.get().is_empty() {
                e.remove();
            }
        }
        Ok(())
    }

    async fn members(
        &self,
        channel: &Channel,
    ) -> Result<Vec<(UserId, SocketAddress)>, PresenceError> {
        let Some(members) = self.channels.get(channel).map(|m| m.clone()) else {
            return Ok(Vec::new());
        };
        // As in Redis: a member socket that is no longer present is no member.
        Ok(members
            .into_iter()
            .filter(|(user, socket)| self.sockets.get(user).is_some_and(|s| s.contains(socket)))
            .collect())
    }

    async fn grant(
        &self,
        channel: &Channel,
        user: &UserId,
        max: usize,
    ) -> Result<bool, PresenceError> {
        let mut users = self.granted.entry(channel.clone()).or_default();
        if users.contains(user) {
            return Ok(true);
        }
        if users.len() >= max {
            return Ok(false);
        }
        users.insert(user.clone());
        Ok(true)
    }

    async fn revoke(&self, channel: &Channel, user: &UserId) -> Result<(), PresenceError> {
        if let Entry::Occupied(mut e) = self.granted.entry(channel.clone()) {
            e.get_mut().remove(user);
            if e.get().is_empty() {
                e.remove();
            }
        }
        Ok(())
    }

    async fn is_granted(&self, channel: &Channel, user: &UserId) -> Result<bool, PresenceError> {
        Ok(self
            .granted
            .get(channel)
            .is_some_and(|users| users.contains(user)))
    }

    async fn lock(
        &self,
        user: &UserId,
        ttl: Duration,
        wait: Duration,
    ) -> Result<LockToken, PresenceError> {
        let deadline = Instant::now() + wait;
        let token = self
            .next_token
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        loop {
            let notified = self.unlocked.notified();
            let now = Instant::now();
            match self.locks.entry(user.clone()) {
                Entry::Vacant(e) => {
                    e.insert((token, now + ttl));
                    return Ok(LockToken(token));
                }
                Entry::Occupied(mut e) if e.get().1 <= now => {
                    e.insert((token, now + ttl));
                    return Ok(LockToken(token));
                }
                Entry::Occupied(e) => {
                    let expires = e.get().1;
                    drop(e);
                    if now >= deadline {
                        return Err(PresenceError::LockTimeout(user.to_string(), wait));
                    }
                    let until = expires.min(deadline);
                    let _ = tokio::time::timeout(until - now, notified).await;
                }
            }
        }
    }

    async fn unlock(&self, user: &UserId, token: LockToken) -> Result<(), PresenceError> {
        self.locks.remove_if(user, |_, (t, _)| *t == token.0);
        self.unlocked.notify_waiters();
        Ok(())
    }

    /// Entries live as long as the process and only `remove` ends them: none is ever lost.
    async fn refresh(
        &self,
        _sockets: &[(UserId, SocketAddress)],
    ) -> Result<Vec<usize>, PresenceError> {
        Ok(Vec::new())
    }

    async fn is_processed(&self, id: MessageId) -> Result<bool, PresenceError> {
        let mut marks = self.marks.lock().expect("no code panics holding the marks");
        marks.forget_old(Instant::now());
        Ok(marks.ids.contains(&id))
    }

    async fn mark_processed(&self, id: MessageId) -> Result<(), PresenceError> {
        let now = Instant::now();
        let mut marks = self.marks.lock().expect("no code panics holding the marks");
        if marks.ids.insert(id) {
            marks.order.push_back((now, id));
        }
        marks.forget_old(now);
        Ok(())
    }

    async fn claim(
        &self,
        key: &str,
        id: MessageId,
        window: Duration,
    ) -> Result<MessageId, PresenceError> {
        let now = Instant::now();
        self.sweep_claims(now);
        if let Some(held) = self.claims.get(key)
            && held.1 > now
        {
            return Ok(held.0);
        }
        if self.claims.len() >= MAX_CLAIMS {
            tracing::debug!("reference claims at their bound; this one is not remembered");
            return Ok(id);
        }
        let mut entry = self
            .claims
            .entry(key.to_owned())
            .or_insert((id, now + window));
        if entry.1 <= now {
            *entry = (id, now + window);
        }
        Ok(entry.0)
    }
}

impl MemoryPresence {
    /// Drops expired claims once the map has doubled since the last sweep.
    fn sweep_claims(&self, now: Instant) {
        use std::sync::atomic::Ordering;
        let at = self.sweep_at.load(Ordering::Relaxed).max(1024);
        if self.claims.len() < at {
            return;
        }
        self.claims.retain(|_, (_, until)| *until > now);
        self.sweep_at
            .store((self.claims.len() * 2).max(1024), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::ids::ConnectorName;

    fn addr(socket: u64) -> SocketAddress {
        SocketAddress {
            connector: ConnectorName::new("connector-01"),
            socket,
        }
    }

    #[tokio::test]
    async fn a_user_holds_several_sockets_until_each_is_removed() {
        let p = MemoryPresence::new();
        let u = UserId::parse("ANZ-1").unwrap();
        p.add(&u, &addr(1)).await.unwrap();
        p.add(&u, &addr(2)).await.unwrap();
        p.add(&u, &addr(2)).await.unwrap();
        assert_eq!(p.lookup(&u).await.unwrap(), vec![addr(1), addr(2)]);
        p.remove(&u, &addr(1)).await.unwrap();
        assert_eq!(p.lookup(&u).await.unwrap(), vec![addr(2)]);
        p.remove(&u, &addr(2)).await.unwrap();
        assert!(p.lookup(&u).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_lock_excludes_a_second_holder_until_unlocked_or_expired() {
        let p = MemoryPresence::new();
        let u = UserId::parse("ANZ-1").unwrap();
        let ttl = Duration::from_millis(300);
        let t = p.lock(&u, ttl, Duration::ZERO).await.unwrap();
        assert!(p.lock(&u, ttl, Duration::from_millis(20)).await.is_err());
        p.unlock(&u, t).await.unwrap();
        let _t2 = p.lock(&u, ttl, Duration::ZERO).await.unwrap();
        // Not unlocked: the next holder gets it once the ttl runs out.
        let got = p.lock(&u, ttl, Duration::from_secs(2)).await;
        assert!(got.is_ok());
    }

    #[tokio::test]
    async fn a_claim_holds_its_key_for_the_window_then_frees_it() {
        let p = MemoryPresence::new();
        let (first, second) = (MessageId::new(), MessageId::new());
        let window = Duration::from_millis(200);
        assert_eq!(p.claim("k", first, window).await.unwrap(), first);
        assert_eq!(p.claim("k", first, window).await.unwrap(), first);
        assert_eq!(p.claim("k", second, window).await.unwrap(), first);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(p.claim("k", second, window).await.unwrap(), second);
    }
}
