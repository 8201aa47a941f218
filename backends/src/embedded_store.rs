//! The embedded store: undelivered messages in one redb file under the data directory.
//!
//! redb was chosen over SQLite: it is pure Rust (no C toolchain in the build), its commits are
//! crash-safe (copy-on-write B-trees, fsync at commit) and it needs no schema or SQL layer for
//! the few operations we do. Messages are keyed `(user, sequence)`, the sequence given by the
//! writer in the order messages are persisted (one counter for the file, so a user's numbers
//! only grow and are never reused), so a user's range reads oldest first; an index from
//! message id to sequence makes `persist` idempotent and `remove` direct. A per-user count is
//! kept in the same transaction, which is what the per-user bound checks.
//!
//! Channel history lives in the same file (`embedded_channels`), written by the same writer.
//!
//! Writes go through one writer thread that commits every pending write in one transaction
//! (group commit): one fsync covers many messages under load, and `persist` returns only once
//! its transaction is on disk.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use common::channel::Channel;
use common::envelope::StoredMessage;
use common::ids::{MessageId, UserId};
use common::store::{
    ChannelPost, Fetched, Kept, Numbered, Persisted, Retention, Store, StoreError,
};

use crate::embedded_channels::{self, ChannelTables, PostWrite};

const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
const IDS: TableDefinition<(&str, u128), u64> = TableDefinition::new("ids");
const COUNTS: TableDefinition<&str, u64> = TableDefinition::new("counts");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NEXT_SEQ: &str = "next_seq";

/// Most writes committed in one transaction.
const MAX_BATCH: usize = 512;

type Reply = oneshot::Sender<Result<Persisted, StoreError>>;

enum Write {
    Persist(StoredMessage, u64, Reply),
    Remove(UserId, MessageId, Reply),
    Confirmed(UserId, MessageId, Reply),
    /// A channel post; answered `Kept(its number)`.
    Post(Box<PostWrite>, Reply),
}

pub struct EmbeddedStore {
    db: Arc<Database>,
    writes: Option<mpsc::Sender<Write>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for EmbeddedStore {
    /// Lets the writer finish what it holds and release the file, so it can be opened again.
    fn drop(&mut self) {
        self.writes.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl EmbeddedStore {
    /// Opens (or creates) `dir/messages.redb`.
    pub fn open(dir: &Path) -> Result<EmbeddedStore, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| unavailable(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join("messages.redb");
        let db = Database::create(&path)
            .map_err(|e| unavailable(format!("cannot open {}: {e}", path.display())))?;
        let txn = db.begin_write().map_err(unavailable)?;
        txn.open_table(MESSAGES).map_err(unavailable)?;
        txn.open_table(IDS).map_err(unavailable)?;
        txn.open_table(COUNTS).map_err(unavailable)?;
        txn.open_table(embedded_channels::POSTS)
            .map_err(unavailable)?;
        txn.open_table(embedded_channels::POST_IDS)
            .map_err(unavailable)?;
        txn.open_table(embedded_channels::LAST_SEQ)
            .map_err(unavailable)?;
        let next_seq = txn
            .open_table(META)
            .map_err(unavailable)?
            .get(NEXT_SEQ)
            .map_err(unavailable)?
            .map(|v| v.value())
            .unwrap_or(1)
            .max(1); // numbers start at 1: `fetch` after 0 reads from the start
        txn.commit().map_err(unavailable)?;
        let db = Arc::new(db);
        let (writes, rx) = mpsc::channel(4096);
        let writer_db = db.clone();
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer(writer_db, rx, next_seq))
            .map_err(unavailable)?;
        Ok(EmbeddedStore {
            db,
            writes: Some(writes),
            writer: Some(writer),
        })
    }

    async fn write(&self, make: impl FnOnce(Reply) -> Write) -> Result<Persisted, StoreError> {
        let (tx, rx) = oneshot::channel();
        let writes = self.writes.as_ref().expect("set until drop");
        writes
            .send(make(tx))
            .await
            .map_err(|_| unavailable("store writer stopped"))?;
        rx.await.map_err(|_| unavailable("store writer stopped"))?
    }
}

/// Applies writes in batches, one transaction (one fsync) per batch.
fn writer(db: Arc<Database>, mut rx: mpsc::Receiver<Write>, mut next_seq: u64) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let results = apply(&db, &batch, &mut next_seq);
        for (i, w) in batch.drain(..).enumerate() {
            let reply = match w {
                Write::Persist(_, _, reply)
                | Write::Remove(_, _, reply)
                | Write::Confirmed(_, _, reply)
                | Write::Post(_, reply) => reply,
            };
            let _ = reply.send(results.as_ref().map(|r| r[i]).map_err(Clone::clone));
        }
    }
}

/// Applies a batch in one transaction; one answer per write, in order.
fn apply(db: &Database, batch: &[Write], next_seq: &mut u64) -> Result<Vec<Persisted>, StoreError> {
    let start = *next_seq;
    let txn = db.begin_write().map_err(unavailable)?;
    let mut answers = Vec::with_capacity(batch.len());
    let result = (|| {
        let mut messages = txn.open_table(MESSAGES).map_err(unavailable)?;
        let mut ids = txn.open_table(IDS).map_err(unavailable)?;
        let mut counts = txn.open_table(COUNTS).map_err(unavailable)?;
        let mut channels = ChannelTables {
            posts: txn
                .open_table(embedded_channels::POSTS)
                .map_err(unavailable)?,
            ids: txn
                .open_table(embedded_channels::POST_IDS)
                .map_err(unavailable)?,
            last: txn
                .open_table(embedded_channels::LAST_SEQ)
                .map_err(unavailable)?,
        };
        for w in batch {
            answers.push(Persisted::Kept(0));
            match w {
                Write::Persist(m, max_kept, _) => {
                    let id = (m.to.as_str(), m.id.0.as_u128());
                    if let Some(seq) = ids.get(id).map_err(unavailable)? {
                        // Stored already: a redelivery.
                        *answers.last_mut().expect("pushed above") = Persisted::Kept(seq.value());
                        continue;
                    }
                    let kept = counts
                        .get(m.to.as_str())
                        .map_err(unavailable)?
                        .map_or(0, |v| v.value());
                    if kept >= *max_kept {
                        *answers.last_mut().expect("pushed above") = Persisted::Full;
                        continue;
                    }
                    let seq = *next_seq;
                    *answers.last_mut().expect("pushed above") = Persisted::Kept(seq);
                    *next_seq += 1;
                    let bytes = serde_json::to_vec(m).map_err(unavailable)?;
                    messages
                        .insert((m.to.as_str(), seq), bytes.as_slice())
                        .map_err(unavailable)?;
                    ids.insert(id, seq).map_err(unavailable)?;
                    bump(&mut counts, m.to.as_str(), 1)?;
                }
                Write::Remove(user, id, _) => {
                    let Some(seq) = ids
                        .remove((user.as_str(), id.0.as_u128()))
                        .map_err(unavailable)?
                    else {
                        continue;
                    };
                    let seq = seq.value();
                    if messages
                        .remove((user.as_str(), seq))
                        .map_err(unavailable)?
                        .is_some()
                    {
                        bump(&mut counts, user.as_str(), -1)?;
                    }
                }
                Write::Post(post, _) => {
                    let seq = channels.post(post)?;
                    *answers.last_mut().expect("pushed above") = Persisted::Kept(seq);
                }
                Write::Confirmed(user, id, _) => {
                    let Some(seq) = ids
                        .get((user.as_str(), id.0.as_u128()))
                        .map_err(unavailable)?
                        .map(|v| v.value())
                    else {
                        continue;
                    };
                    let key = (user.as_str(), seq);
                    let Some(bytes) = messages
                        .get(key)
                        .map_err(unavailable)?
                        .map(|v| v.value().to_vec())
                    else {
                        continue;
                    };
                    let mut m: StoredMessage = serde_json::from_slice(&bytes)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    if m.confirm.take().is_some() {
                        let bytes = serde_json::to_vec(&m).map_err(unavailable)?;
                        messages
                            .insert(key, bytes.as_slice())
                            .map_err(unavailable)?;
                    }
                }
            }
        }
        txn.open_table(META)
            .map_err(unavailable)?
            .insert(NEXT_SEQ, *next_seq)
            .map_err(unavailable)?;
        Ok(())
    })();
    match result.and_then(|()| txn.commit().map_err(unavailable)) {
        Ok(()) => Ok(answers),
        Err(e) => {
            *next_seq = start;
            Err(e)
        }
    }
}

fn bump(counts: &mut redb::Table<&str, u64>, user: &str, delta: i64) -> Result<(), StoreError> {
    let current = counts.get(user).map_err(unavailable)?.map(|v| v.value());
    let next = (current.unwrap_or(0) as i64 + delta).max(0) as u64;
    if next == 0 {
        counts.remove(user).map_err(unavailable)?;
    } else {
        counts.insert(user, next).map_err(unavailable)?;
    }
    Ok(())
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn persist(
        &self,
        message: &StoredMessage,
        max_kept: u64,
    ) -> Result<Persisted, StoreError> {
        let message = message.clone();
        self.write(|reply| Write::Persist(message, max_kept, reply))
            .await
    }

    async fn fetch(&self, user: &UserId, after: u64, limit: usize) -> Result<Fetched, StoreError> {
        let db = self.db.clone();
        let user = user.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(unavailable)?;
            let total = txn
                .open_table(COUNTS)
                .map_err(unavailable)?
                .get(user.as_str())
                .map_err(unavailable)?
                .map(|v| v.value())
                .unwrap_or(0);
            let table = txn.open_table(MESSAGES).map_err(unavailable)?;
            let mut messages = Vec::with_capacity(limit.min(total as usize));
            // After 0 is from the start (a file from before numbers began at 1 has a 0).
            let first = if after == 0 {
                0
            } else {
                after.saturating_add(1)
            };
            if after == u64::MAX {
                return Ok(Fetched { messages, total });
            }
            let range = table
                .range((user.as_str(), first)..=(user.as_str(), u64::MAX))
                .map_err(unavailable)?;
            for row in range.take(limit) {
                let (key, value) = row.map_err(unavailable)?;
                let message: StoredMessage = serde_json::from_slice(value.value())
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                messages.push(Kept {
                    seq: key.value().1,
                    message,
                });
            }
            Ok(Fetched { messages, total })
        })
        .await
        .map_err(unavailable)?
    }

    async fn remove(&self, user: &UserId, id: MessageId) -> Result<(), StoreError> {
        let user = user.clone();
        self.write(|reply| Write::Remove(user, id, reply))
            .await
            .map(drop)
    }

    async fn confirmed(&self, user: &UserId, id: MessageId) -> Result<(), StoreError> {
        let user = user.clone();
        self.write(|reply| Write::Confirmed(user, id, reply))
            .await
            .map(drop)
    }

    async fn post(
        &self,
        channel: &Channel,
        post: &ChannelPost,
        retention: Retention,
        now: u64,
    ) -> Result<u64, StoreError> {
        let write = Box::new(PostWrite {
            channel: channel.clone(),
            post: post.clone(),
            retention,
            now,
        });
        match self.write(|reply| Write::Post(write, reply)).await? {
            Persisted::Kept(seq) => Ok(seq),
            Persisted::Full => Err(unavailable("a channel post is never refused as full")),
        }
    }

    async fn history(
        &self,
        channel: &Channel,
        after: u64,
        limit: usize,
        since: u64,
    ) -> Result<Vec<Numbered>, StoreError> {
        let db = self.db.clone();
        let channel = channel.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(unavailable)?;
            let posts = txn
                .open_table(embedded_channels::POSTS)
                .map_err(unavailable)?;
            embedded_channels::history(&posts, &channel, after, limit, since)
        })
        .await
        .map_err(unavailable)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::envelope::StoredMessage;

    fn message(to: &UserId, n: u32) -> StoredMessage {
        StoredMessage {
            id: MessageId::new(),
            to: to.clone(),
            created_at: n as u64,
            frame: format!("frame-{n}"),
            confirm: None,
        }
    }

    #[tokio::test]
    async fn fetch_returns_oldest_first_with_the_total_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let user = UserId::parse("ANZ-1").unwrap();
        let other = UserId::parse("ANZ-2").unwrap();
        let stored: Vec<_> = (0..5).map(|n| message(&user, n)).collect();
        {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            for m in &stored {
                store.persist(m, 100).await.unwrap();
            }
            store.persist(&message(&other, 9), 100).await.unwrap();
            // A group message is stored once per member under one id.
            let mut shared = message(&other, 10);
            shared.id = stored[4].id;
            store.persist(&shared, 100).await.unwrap();
            // Persisting the same id again keeps one copy.
            store.persist(&stored[0], 100).await.unwrap();
        }
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let f = store.fetch(&user, 0, 3).await.unwrap();
        assert_eq!(f.total, 5);
        let frames: Vec<_> = f
            .messages
            .iter()
            .map(|m| m.message.frame.as_str())
            .collect();
        assert_eq!(frames, ["frame-0", "frame-1", "frame-2"]);
        store.remove(&user, stored[0].id).await.unwrap();
        store.remove(&user, stored[0].id).await.unwrap();
        let f = store.fetch(&user, 0, 10).await.unwrap();
        assert_eq!(f.total, 4);
        assert_eq!(f.messages.len(), 4);
        assert_eq!(store.fetch(&other, 0, 10).await.unwrap().total, 2);
    }
}
