//! The store on MongoDB: collection `messages`, one document per (user, message id) keyed
//! `_id: "<user>/<message id>"`, so a redelivered persist hits the duplicate key and is a no-op.
//! A user's order is `seq` = the user's highest stored `seq` + 1, guarded by a unique `{to, seq}`
//! index: a writer that loses the race takes the next. No findAndModify counter: FerretDB v1
//! (the test engine) runs it as a read then a write, so two writers can draw the same number.
//! So that a user's numbers are never reused, removing the user's highest-numbered message
//! leaves a `gone` tombstone (no frame) in its place, which reads skip and the next removal of
//! a highest message clears. Channel history is in `mongo_channels`, numbered the same way.

use std::time::Duration;

use async_trait::async_trait;
use mongodb::bson::{Document, doc};
use mongodb::error::{Error as MongoError, ErrorKind, WriteFailure};
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Collection, IndexModel};
use serde::{Deserialize, Serialize};

use common::channel::Channel;
use common::envelope::{Confirm, StoredMessage};
use common::ids::{MessageId, UserId};
use common::store::{
    ChannelPost, Fetched, Kept, Numbered, Persisted, Retention, Store, StoreError,
};

use crate::mongo_channels::MongoChannels;

/// How long one store call (all its round trips) may take before it fails with `Unavailable`.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the driver looks for a reachable server before a command fails; the URL's
/// `serverSelectionTimeoutMS` takes precedence.
pub const SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(2);
/// Most times a persist retries after losing the race for a `seq` to another writer.
pub(crate) const MAX_SEQ_ATTEMPTS: usize = 64;
const DUPLICATE_KEY: i32 = 11000;

/// A stored message as it lies in the collection; fields readable by an operator.
#[derive(Debug, Serialize, Deserialize)]
struct MessageDoc {
    #[serde(rename = "_id")]
    key: String,
    to: String,
    seq: i64,
    id: String,
    created_at: i64,
    frame: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    confirm: Option<ConfirmDoc>,
    /// A removed message kept only to hold the user's highest number.
    #[serde(default, skip_serializing_if = "is_false")]
    gone: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The filter of a user's kept (not gone) messages.
fn kept_by(user: &str) -> Document {
    doc! { "to": user, "gone": { "$ne": true } }
}

#[derive(Debug, Serialize, Deserialize)]
struct ConfirmDoc {
    to: String,
    reference: String,
}

/// Just the `seq` of a document, for the "highest seq" query.
#[derive(Debug, Deserialize)]
struct SeqDoc {
    seq: i64,
}

fn key(user: &UserId, id: MessageId) -> String {
    format!("{user}/{id}")
}

/// The highest `seq` among the documents of `collection` that match `owner` (one user's
/// messages, one channel's posts), 0 if none.
pub(crate) async fn last_seq<T: Send + Sync>(
    collection: &Collection<T>,
    owner: Document,
) -> Result<i64, StoreError> {
    let last = collection
        .clone_with_type::<SeqDoc>()
        .find_one(owner)
        .sort(doc! { "seq": -1 })
        .projection(doc! { "seq": 1, "_id": 0 })
        .await
        .map_err(unavailable)?;
    Ok(last.map_or(0, |d| d.seq))
}

/// The `seq` of the document `key` of `collection`, if it is stored.
pub(crate) async fn seq_of<T: Send + Sync>(
    collection: &Collection<T>,
    key: &str,
) -> Result<Option<i64>, StoreError> {
    let found = collection
        .clone_with_type::<SeqDoc>()
        .find_one(doc! { "_id": key })
        .projection(doc! { "seq": 1, "_id": 0 })
        .await
        .map_err(unavailable)?;
    Ok(found.map(|d| d.seq))
}

impl MessageDoc {
    fn new(m: &StoredMessage, seq: i64) -> MessageDoc {
        MessageDoc {
            key: key(&m.to, m.id),
            to: m.to.to_string(),
            seq,
            id: m.id.to_string(),
            created_at: m.created_at as i64,
            frame: m.frame.clone(),
            confirm: m.confirm.as_ref().map(|c| ConfirmDoc {
                to: c.to.to_string(),
                reference: c.reference.clone(),
            }),
            gone: false,
        }
    }

    fn into_message(self) -> Result<StoredMessage, StoreError> {
        let corrupt = |what: &str, e: &dyn std::fmt::Display| {
            StoreError::Corrupt(format!("{}: bad {what}: {e}", self.key))
        };
        let id = uuid::Uuid::parse_str(&self.id).map_err(|e| corrupt("id", &e))?;
        let to = UserId::parse(&self.to).map_err(|e| corrupt("to", &e))?;
        let confirm = match &self.confirm {
            Some(c) => Some(Confirm {
                to: UserId::parse(&c.to).map_err(|e| corrupt("confirm.to", &e))?,
                reference: c.reference.clone(),
            }),
            None => None,
        };
        Ok(StoredMessage {
            id: MessageId(id),
            to,
            created_at: self.created_at.max(0) as u64,
            frame: self.frame,
            confirm,
        })
    }
}

pub struct MongoStore {
    messages: Collection<MessageDoc>,
    channels: MongoChannels,
    timeout: Duration,
}

pub(crate) fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("mongodb: {e}"))
}

pub(crate) fn is_duplicate_key(e: &MongoError) -> bool {
    match &*e.kind {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == DUPLICATE_KEY,
        ErrorKind::Command(c) => c.code == DUPLICATE_KEY,
        _ => false,
    }
}

impl MongoStore {
    /// Connects to `url` (`mongodb://host:port`), uses `database`, and creates the index the
    /// fetch order needs. Fails with `Unavailable` if no server answers within
    /// `SERVER_SELECTION_TIMEOUT`.
    pub async fn connect(url: &str, database: &str) -> Result<MongoStore, StoreError> {
        let mut options = ClientOptions::parse(url).await.map_err(unavailable)?;
        options
            .server_selection_timeout
            .get_or_insert(SERVER_SELECTION_TIMEOUT);
        options
            .connect_timeout
            .get_or_insert(SERVER_SELECTION_TIMEOUT);
        options.app_name.get_or_insert_with(|| "linker".to_owned());
        let client = Client::with_options(options).map_err(unavailable)?;
        let db = client.database(database);
        let channels = tokio::time::timeout(OPERATION_TIMEOUT, MongoChannels::open(&db))
            .await
            .unwrap_or_else(|_| Err(unavailable("no answer creating the channel index")))?;
        let store = MongoStore {
            messages: db.collection("messages"),
            channels,
            timeout: OPERATION_TIMEOUT,
        };
        let order = IndexModel::builder()
            .keys(doc! { "to": 1, "seq": 1 })
            .options(
                IndexOptions::builder()
                    .name("to_seq".to_owned())
                    .unique(true)
                    .build(),
            )
            .build();
        store
            .bounded(async {
                store
                    .messages
                    .create_index(order)
                    .await
                    .map_err(unavailable)
            })
            .await?;
        Ok(store)
    }

    /// Bounds each store call by another deadline than `OPERATION_TIMEOUT`.
    pub fn with_operation_timeout(mut self, timeout: Duration) -> MongoStore {
        self.timeout = timeout;
        self
    }

    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.timeout, call)
            .await
            .unwrap_or_else(|_| Err(unavailable(format!("no answer within {:?}", self.timeout))))
    }

    /// The highest `seq` stored for `user`, 0 if none.
    async fn last_seq(&self, user: &str) -> Result<i64, StoreError> {
        last_seq(&self.messages, doc! { "to": user }).await
    }

    /// The `seq` of the document `key`, if it is stored.
    async fn seq_of(&self, key: &str) -> Result<Option<i64>, StoreError> {
        seq_of(&self.messages, key).await
    }

    async fn persist_once(
        &self,
        m: &StoredMessage,
        max_kept: u64,
    ) -> Result<Persisted, StoreError> {
        let user = m.to.as_str();
        let kept = self
            .messages
            .count_documents(kept_by(user))
            .await
            .map_err(unavailable)?;
        if kept >= max_kept {
            // Full, unless this is a redelivery of a message kept already.
            return Ok(match self.seq_of(&key(&m.to, m.id)).await? {
                Some(seq) => Persisted::Kept(seq.max(0) as u64),
                None => Persisted::Full,
            });
        }
        for _ in 0..MAX_SEQ_ATTEMPTS {
            let seq = self.last_seq(user).await? + 1;
            let doc = MessageDoc::new(m, seq);
            match self.messages.insert_one(&doc).await {
                Ok(_) => return Ok(Persisted::Kept(seq as u64)),
                Err(e) if is_duplicate_key(&e) => {
                    // Either this id is stored already (a redelivery: done), or another writer
                    // took this seq first (take the next one).
                    if let Some(seq) = self.seq_of(&doc.key).await? {
                        return Ok(Persisted::Kept(seq.max(0) as u64));
                    }
                    tracing::debug!(user, seq, "another writer took this seq; taking the next");
                }
                Err(e) => return Err(unavailable(e)),
            }
        }
        Err(unavailable(format!(
            "persist for {user} lost the race for a sequence number {MAX_SEQ_ATTEMPTS} times"
        )))
    }

    async fn fetch_once(
        &self,
        user: &UserId,
        after: u64,
        limit: usize,
    ) -> Result<Fetched, StoreError> {
        let total = self
            .messages
            .count_documents(kept_by(user.as_str()))
            .await
            .map_err(unavailable)?;
        let mut filter = kept_by(user.as_str());
        filter.insert("seq", doc! { "$gt": after.min(i64::MAX as u64) as i64 });
        let mut messages = Vec::with_capacity(limit.min(total as usize));
        // A limit of 0 means "no limit" to MongoDB.
        if limit > 0 && total > 0 {
            let mut cursor = self
                .messages
                .find(filter)
                .sort(doc! { "seq": 1 })
                .limit(limit.min(i64::MAX as usize) as i64)
                .await
                .map_err(unavailable)?;
            while cursor.advance().await.map_err(unavailable)? {
                let doc = cursor
                    .deserialize_current()
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                let seq = doc.seq.max(0) as u64;
                messages.push(Kept {
                    seq,
                    message: doc.into_message()?,
                });
            }
        }
        Ok(Fetched { messages, total })
    }

    /// Deletes the message, or, if it holds the user's highest number, leaves a tombstone
    /// there and clears older tombstones.
    async fn remove_once(&self, user: &UserId, id: MessageId) -> Result<(), StoreError> {
        let key = key(user, id);
        let Some(seq) = self.seq_of(&key).await? else {
            return Ok(());
        };
        if seq < self.last_seq(user.as_str()).await? {
            self.messages
                .delete_one(doc! { "_id": &key })
                .await
                .map_err(unavailable)?;
            return Ok(());
        }
        self.messages
            .update_one(
                doc! { "_id": &key },
                doc! { "$set": { "gone": true, "frame": "" }, "$unset": { "confirm": "" } },
            )
            .await
            .map_err(unavailable)?;
        self.messages
            .delete_many(doc! { "to": user.as_str(), "gone": true, "seq": { "$lt": seq } })
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

#[async_trait]
impl Store for MongoStore {
    async fn persist(
        &self,
        message: &StoredMessage,
        max_kept: u64,
    ) -> Result<Persisted, StoreError> {
        self.bounded(self.persist_once(message, max_kept)).await
    }

    async fn fetch(&self, user: &UserId, after: u64, limit: usize) -> Result<Fetched, StoreError> {
        self.bounded(self.fetch_once(user, after, limit)).await
    }

    async fn remove(&self, user: &UserId, id: MessageId) -> Result<(), StoreError> {
        self.bounded(self.remove_once(user, id)).await
    }

    async fn confirmed(&self, user: &UserId, id: MessageId) -> Result<(), StoreError> {
        self.bounded(async {
            self.messages
                .update_one(
                    doc! { "_id": key(user, id) },
                    doc! { "$unset": { "confirm": "" } },
                )
                .await
                .map(drop)
                .map_err(unavailable)
        })
        .await
    }

    async fn post(
        &self,
        channel: &Channel,
        post: &ChannelPost,
        retention: Retention,
        now: u64,
    ) -> Result<u64, StoreError> {
        self.bounded(self.channels.post(channel, post, retention, now))
            .await
    }

    async fn history(
        &self,
        channel: &Channel,
        after: u64,
        limit: usize,
        since: u64,
    ) -> Result<Vec<Numbered>, StoreError> {
        self.bounded(self.channels.history(channel, after, limit, since))
            .await
    }

    async fn ready(&self) -> Result<(), StoreError> {
        let database = self
            .messages
            .client()
            .database(&self.messages.namespace().db);
        self.bounded(async {
            database
                .run_command(doc! { "ping": 1 })
                .await
                .map(drop)
                .map_err(unavailable)
        })
        .await
    }
}
