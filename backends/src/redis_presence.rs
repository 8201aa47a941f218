//! Presence on Redis, shared by every connector and processor of a domain. Keys under
//! `linker:<namespace>:` — `presence:<user>` (sorted set of `<connector>/<socket>`, score =
//! expiry in ms), `lock:<user>` (token, `SET NX PX`), `done:<message id>` (processed mark, 24 h),
//! `claim:<key>` (the message id holding a sender's reference, `SET NX PX` for the window),
//! `channel:<channel>` (set of `<user>|<connector>/<socket>`, the channel's member sockets),
//! `granted:<channel>` (set of user ids chosen for a managed channel; no expiry).
//! Expiry is reckoned by scripts on the Redis server's clock, never a host's, so skewed clocks
//! cannot age sockets early. Every command is bounded by a timeout; the manager reconnects.

use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script};

use common::channel::Channel;
use common::ids::{ConnectorName, MessageId, SocketAddress, UserId};
use common::presence::{LockToken, Presence, PresenceError};

/// How long one command may take before the call fails with `Unavailable`.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a processed mark is kept: longer than any redelivery window of the bus.
pub const PROCESSED_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// Most sockets refreshed by one script call (one round trip).
const REFRESH_BATCH: usize = 500;
/// Most users looked up by one script call (one round trip); a larger group takes several.
const LOOKUP_BATCH: usize = 1000;
/// Longest pause between two attempts to take a held lock.
const LOCK_POLL_MAX: Duration = Duration::from_millis(100);

/// Adds or refreshes sockets: for each `KEYS[i]`, member `ARGV[i + 1]` expires `ARGV[1]` ms
/// from the server's now. Expired members of the touched sets are pruned, and each set expires
/// with its last member. Answers the positions `i` (from 1) whose member was not present
/// (never added, expired, or lost with the engine's data) and had to be added.
const ADD_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = now + tonumber(ARGV[1])
local added = {}
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  if redis.call('ZADD', key, expiry, ARGV[i + 1]) == 1 then
    added[#added + 1] = i
  end
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  redis.call('PEXPIREAT', key, last[2])
end
return added
";

/// The members of `KEYS[1]` that have not expired by the server's now.
const LOOKUP_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
";

/// The members `user|connector/socket` of the channel set `KEYS[1]` whose socket is still
/// present (in the unexpired presence of its user, keys `ARGV[1] .. user`); the others (a
/// connector that crashed and stopped refreshing) are taken out of the set. The presence keys
/// are not declared in KEYS: a single Redis, not a cluster.
const MEMBERS_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = {}
for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local bar = string.find(m, '|', 1, true)
  local score = bar and redis.call('ZSCORE', ARGV[1] .. string.sub(m, 1, bar - 1), string.sub(m, bar + 1))
  if score and tonumber(score) > now then
    live[#live + 1] = m
  else
    redis.call('SREM', KEYS[1], m)
  end
end
return live
";

/// For each of `KEYS`, the members that have not expired by the server's now: one array per
/// key, in the order of the keys.
const LOOKUP_ALL_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local found = {}
for i, key in ipairs(KEYS) do
  found[i] = redis.call('ZRANGEBYSCORE', key, '(' .. now, '+inf')
end
return found
";

/// Nothing (nil) if the processed mark `KEYS[1]` exists, else the members of the presence
/// set `KEYS[2]` that have not expired by the server's now: a message's processed check and
/// its target's lookup in one round trip.
const LOOKUP_UNLESS_PROCESSED_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  return false
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. now, '+inf')
";

/// Deletes the lock `KEYS[1]` only if it still holds our token `ARGV[1]`.
const UNLOCK_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Sets `KEYS[1]` to `ARGV[1]` for `ARGV[2]` ms unless it is set; answers what it holds.
const CLAIM_SCRIPT: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return ARGV[1]
end
return redis.call('GET', KEYS[1])
";

/// Adds `ARGV[1]` to the set `KEYS[1]` unless it holds `ARGV[2]` members already: 1 if the
/// user is in the set afterwards, 0 if it was full.
const GRANT_SCRIPT: &str = r"
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then
  return 1
end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('SADD', KEYS[1], ARGV[1])
return 1
";

pub struct RedisPresence {
    con: ConnectionManager,
    prefix: String,
    presence_ttl: Duration,
    command_timeout: Duration,
    add: Script,
    lookup: Script,
    members: Script,
    lookup_all: Script,
    lookup_unless_processed: Script,
    unlock: Script,
    claim: Script,
    grant: Script,
    tokens: RandomState,
    next_token: AtomicU64,
}

fn unavailable(e: RedisError) -> PresenceError {
    PresenceError::Unavailable(format!("redis: {e}"))
}

impl RedisPresence {
    /// Connects to `url` (`redis://host:port/db`); keys go under `linker:<namespace>:` (the
    /// domain name), and a socket not refreshed within `presence_ttl` disappears. Fails with
    /// `Unavailable` if Redis does not answer a PING within `COMMAND_TIMEOUT`.
    pub async fn connect(
        url: &str,
        namespace: &str,
        presence_ttl: Duration,
    ) -> Result<RedisPresence, PresenceError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        // Reconnect attempts every 50 ms rising to 500 ms, for about 30 s after a loss; past
        // that the next command starts a new round.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500))
            .set_number_of_retries(60);
        let con = ConnectionManager::new_lazy_with_config(client, config).map_err(unavailable)?;
        let presence = RedisPresence {
            con,
            prefix: format!("linker:{namespace}:"),
            presence_ttl,
            command_timeout: COMMAND_TIMEOUT,
            add: Script::new(ADD_SCRIPT),
            lookup: Script::new(LOOKUP_SCRIPT),
            members: Script::new(MEMBERS_SCRIPT),
            lookup_all: Script::new(LOOKUP_ALL_SCRIPT),
            lookup_unless_processed: Script::new(LOOKUP_UNLESS_PROCESSED_SCRIPT),
            unlock: Script::new(UNLOCK_SCRIPT),
            claim: Script::new(CLAIM_SCRIPT),
            grant: Script::new(GRANT_SCRIPT),
            tokens: RandomState::new(),
            next_token: AtomicU64::new(0),
        };
        let mut con = presence.con.clone();
        presence
            .bounded(async move { redis::cmd("PING").query_async::<String>(&mut con).await })
            .await?;
        Ok(presence)
    }

    /// Bounds each command by another deadline than `COMMAND_TIMEOUT`.
    pub fn with_command_timeout(mut self, timeout: Duration) -> RedisPresence {
        self.command_timeout = timeout;
        self
    }

    fn presence_key(&self, user: &UserId) -> String {
        format!("{}presence:{user}", self.prefix)
    }

    fn lock_key(&self, user: &UserId) -> String {
        format!("{}lock:{user}", self.prefix)
    }

    fn channel_key(&self, channel: &Channel) -> String {
        format!("{}channel:{channel}", self.prefix)
    }

    fn granted_key(&self, channel: &Channel) -> String {
        format!("{}granted:{channel}", self.prefix)
    }

    /// SADD or SREM of one channel membership.
    async fn membership(
        &self,
        command: &str,
        channel: &Channel,
        user: &UserId,
        socket: &SocketAddress,
    ) -> Result<(), PresenceError> {
        let mut con = self.con.clone();
        let cmd = redis::cmd(command)
            .arg(self.channel_key(channel))
            .arg(format!("{user}|{}", member(socket)))
            .clone();
        self.bounded(cmd.query_async::<u64>(&mut con))
            .await
            .map(drop)
    }

    fn done_key(&self, id: MessageId) -> String {
        format!("{}done:{id}", self.prefix)
    }

    /// Runs one engine call, turning its error or silence into `Unavailable`.
    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, PresenceError> {
        match tokio::time::timeout(self.command_timeout, call).await {
            Ok(result) => result.map_err(unavailable),
            Err(_) => Err(PresenceError::Unavailable(format!(
                "redis: no answer within {:?}",
                self.command_timeout
            ))),
        }
    }

    /// A token no other holder (in this or another process) will draw.
    fn new_token(&self) -> u64 {
        let n = self.next_token.fetch_add(1, Ordering::Relaxed);
        self.tokens
            .hash_one((n, std::process::id(), common::now_millis()))
    }

    /// Adds or refreshes `sockets`; answers the positions (in `sockets`, from 0) of those
    /// that were not present and had to be added.
    async fn add_all(
        &self,
        sockets: &[(UserId, SocketAddress)],
    ) -> Result<Vec<usize>, PresenceError> {
        let mut invocation = self.add.prepare_invoke();
        invocation.arg(self.presence_ttl.as_millis() as u64);
        for (user, socket) in sockets {
            invocation.key(self.presence_key(user)).arg(member(socket));
        }
        let mut con = self.con.clone();
        let added: Vec<usize> = self
            .bounded(invocation.invoke_async::<Vec<usize>>(&mut con))
            .await?;
        Ok(added.into_iter().filter_map(|i| i.checked_sub(1)).collect())
    }
}

fn member(socket: &SocketAddress) -> String {
    format!("{}/{}", socket.connector, socket.socket)
}

/// The sockets of `user`'s presence entries; an unreadable entry is skipped (logged).
fn parse_members(user: &UserId, members: &[String]) -> Vec<SocketAddress> {
    members
        .iter()
        .filter_map(|m| {
            let parsed = parse_member(m);
            if parsed.is_none() {
                tracing::warn!(user = %user, member = %m, "unreadable presence entry skipped");
            }
            parsed
        })
        .collect()
}

fn parse_member(member: &str) -> Option<SocketAddress> {
    let (connector, socket) = member.rsplit_once('/')?;
    Some(SocketAddress {
        connector: ConnectorName::new(connector),
        socket: socket.parse().ok()?,
    })
}

#[async_trait]
impl Presence for RedisPresence {
    async fn add(&self, user: &UserId, socket: &SocketAddress) -> Result<(), PresenceError> {
        self.add_all(&[(user.clone(), socket.clone())])
            .await
            .map(drop)
    }

    async fn remove(&self, user: &UserId, socket: &SocketAddress) -> Result<(), PresenceError> {
        let mut con = self.con.clone();
        let cmd = redis::cmd("ZREM")
            .arg(self.presence_key(user))
            .arg(member(socket))
            .clone();
        self.bounded(cmd.query_async::<u64>(&mut con))
            .await
            .map(drop)
    }

    async fn lookup(&self, user: &UserId) -> Result<Vec<SocketAddress>, PresenceError> {
        let mut con = self.con.clone();
        let members: Vec<String> = self
            .bounded(
                self.lookup
                    .key(self.presence_key(user))
                    .invoke_async(&mut con),
            )
            .await?;
        Ok(parse_members(user, &members))
    }

    async fn lookup_all(&self, users: &[UserId]) -> Result<Vec<Vec<SocketAddress>>, PresenceError> {
        let mut found: Vec<Vec<String>> = Vec::with_capacity(users.len());
        for batch in users.chunks(LOOKUP_BATCH) {
            let mut invocation = self.lookup_all.prepare_invoke();
            for user in batch {
                invocation.key(self.presence_key(user));
            }
            let mut con = self.con.clone();
            let answers: Vec<Vec<String>> = self.bounded(invocation.invoke_async(&mut con)).await?;
            if answers.len() != batch.len() {
                return Err(PresenceError::Unavailable(format!(
                    "redis: {} users looked up, {} answers",
                    batch.len(),
                    answers.len()
                )));
            }
            found.extend(answers);
        }
        Ok(users
            .iter()
            .zip(&found)
            .map(|(user, members)| parse_members(user, members))
            .collect())
    }

    async fn join(
        &self,
        channel: &Channel,
        user: &UserId,
        socket: &SocketAddress,
    ) -> Result<(), PresenceError> {
        self.membership("SADD", channel, user, socket).await
    }

    async fn leave(
        &self,
        channel: &Channel,
        user: &UserId,
        socket: &SocketAddress,
    ) -> Result<(), PresenceError> {
        self.membership("SREM", channel, user, socket).await
    }

    async fn members(
        &self,
        channel: &Channel,
    ) -> Result<Vec<(UserId, SocketAddress)>, PresenceError> {
        let mut con = self.con.clone();
        let mut call = self.members.prepare_invoke();
        call.key(self.channel_key(channel))
            .arg(format!("{}presence:", self.prefix));
        let members: Vec<String> = self.bounded(call.invoke_async(&mut con)).await?;
        Ok(members
            .iter()
            .filter_map(|m| {
                let parsed = m.split_once('|').and_then(|(user, socket)| {
                    Some((UserId::parse(user).ok()?, parse_member(socket)?))
                });
                if parsed.is_none() {
                    tracing::warn!(%channel, member = %m, "unreadable channel entry skipped");
                }
                parsed
            })
            .collect())
    }

    async fn grant(
        &self,
        channel: &Channel,
        user: &UserId,
        max: usize,
    ) -> Result<bool, PresenceError> {
        let mut con = self.con.clone();
        let mut call = self.grant.prepare_invoke();
        call.key(self.granted_key(channel))
            .arg(user.as_str())
            .arg(max as u64);
        let answer: u64 = self.bounded(call.invoke_async(&mut con)).await?;
        Ok(answer == 1)
    }

    async fn revoke(&self, channel: &Channel, user: &UserId) -> Result<(), PresenceError> {
        let mut con = self.con.clone();
        let cmd = redis::cmd("SREM")
            .arg(self.granted_key(channel))
            .arg(user.as_str())
            .clone();
        self.bounded(cmd.query_async::<u64>(&mut con))
            .await
            .map(drop)
    }

    async fn is_granted(&self, channel: &Channel, user: &UserId) -> Result<bool, PresenceError> {
        let mut con = self.con.clone();
        let cmd = redis::cmd("SISMEMBER")
            .arg(self.granted_key(channel))
            .arg(user.as_str())
            .clone();
        self.bounded(cmd.query_async::<bool>(&mut con)).await
    }

    async fn lock(
        &self,
        user: &UserId,
        ttl: Duration,
        wait: Duration,
    ) -> Result<LockToken, PresenceError> {
        let deadline = Instant::now() + wait;
        let key = self.lock_key(user);
        let token = self.new_token();
        let ttl_ms = ttl.as_millis().max(1) as u64;
        let mut pause = Duration::from_millis(10);
        loop {
            let mut con = self.con.clone();
            let cmd = redis::cmd("SET")
                .arg(&key)
                .arg(token.to_string())
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms)
                .clone();
            let taken: Option<String> = self.bounded(cmd.query_async(&mut con)).await?;
            if taken.is_some() {
                return Ok(LockToken(token));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(PresenceError::LockTimeout(user.to_string(), wait));
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(LOCK_POLL_MAX);
        }
    }

    async fn unlock(&self, user: &UserId, token: LockToken) -> Result<(), PresenceError> {
        let mut con = self.con.clone();
        self.bounded(
            self.unlock
                .key(self.lock_key(user))
                .arg(token.0.to_string())
                .invoke_async::<u64>(&mut con),
        )
        .await
        .map(drop)
    }

    async fn refresh(
        &self,
        sockets: &[(UserId, SocketAddress)],
    ) -> Result<Vec<usize>, PresenceError> {
        let mut readded = Vec::new();
        for (n, batch) in sockets.chunks(REFRESH_BATCH).enumerate() {
            let first = n * REFRESH_BATCH;
            readded.extend(self.add_all(batch).await?.into_iter().map(|i| first + i));
        }
        Ok(readded)
    }

    async fn is_processed(&self, id: MessageId) -> Result<bool, PresenceError> {
        let mut con = self.con.clone();
        let cmd = redis::cmd("EXISTS").arg(self.done_key(id)).clone();
        let found: u64 = self.bounded(cmd.query_async(&mut con)).await?;
        Ok(found > 0)
    }

    async fn lookup_unless_processed(
        &self,
        id: MessageId,
        user: &UserId,
    ) -> Result<Option<Vec<SocketAddress>>, PresenceError> {
        let mut con = self.con.clone();
        let mut call = self.lookup_unless_processed.prepare_invoke();
        call.key(self.done_key(id)).key(self.presence_key(user));
        let members: Option<Vec<String>> = self.bounded(call.invoke_async(&mut con)).await?;
        Ok(members.map(|m| parse_members(user, &m)))
    }

    async fn mark_processed(&self, id: MessageId) -> Result<(), PresenceError> {
        let mut con = self.con.clone();
        let cmd = redis::cmd("SET")
            .arg(self.done_key(id))
            .arg(1)
            .arg("EX")
            .arg(PROCESSED_TTL.as_secs())
            .clone();
        self.bounded(cmd.query_async::<()>(&mut con)).await
    }

    async fn ready(&self) -> Result<(), PresenceError> {
        let mut con = self.con.clone();
        self.bounded(redis::cmd("PING").query_async::<String>(&mut con))
            .await
            .map(drop)
    }

    async fn claim(
        &self,
        key: &str,
        id: MessageId,
        window: Duration,
    ) -> Result<MessageId, PresenceError> {
        let mut con = self.con.clone();
        let held: Option<String> = self
            .bounded(
                self.claim
                    .key(format!("{}claim:{key}", self.prefix))
                    .arg(id.to_string())
                    .arg(window.as_millis().max(1) as u64)
                    .invoke_async(&mut con),
            )
            .await?;
        // Expired between the two commands: nobody holds it, so it is as good as ours.
        Ok(held
            .and_then(|h| uuid::Uuid::parse_str(&h).ok())
            .map_or(id, MessageId))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_reads_back_as_its_socket_even_with_a_slash_in_the_connector() {
        let socket = SocketAddress {
            connector: ConnectorName::new("pod/connector-01"),
            socket: 42,
        };
        assert_eq!(parse_member(&member(&socket)), Some(socket));
        assert_eq!(parse_member("connector-01"), None);
        assert_eq!(parse_member("connector-01/x"), None);
    }
}
