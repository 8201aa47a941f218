//! The store on MongoDB: collection `messages`, one document per (user, message id) keyed
//! `_id: "<user>/<message id>"`, so a redelivered persist hits the duplicate key and is a no-op.
//! A user's numbers come from a counter document in `message_counters` (`_id: "<user>"`:
//! `seq`, the highest number drawn, and `kept`, how many messages are kept, as a hint), drawn
//! with one `$inc`; a unique `{to, seq}` index guards the order, and a writer whose number is
//! taken draws again. So the hot path finds documents by `_id` only: FerretDB 1.x (the test
//! engine) scans the whole collection for any other filter (docs/benchmarks.md, perf7).
//! FerretDB runs `findAndModify` as a read then a write, so two writers may draw the same
//! number (the index sends one to draw again), and a writer with a stale read may even set the
//! counter back. So each handle also remembers the last number it gave each user
//! (`Numbered`) and never gives that user a lower one: one writer's messages keep their order
//! whatever the counter says. A new counter (a user's first message, or
//! messages stored before counters existed) and a `kept` hint near the bound are checked
//! against the messages themselves. A removed message is marked `gone` (an update by `_id`;
//! FerretDB deletes only by scanning) and reads skip it; a user's `gone` documents are deleted
//! together every `SWEEP_EVERY` removals. Channel history is in `mongo_channels`, numbered by
//! the highest stored number.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use mongodb::bson::{Document, doc};
use mongodb::error::{Error as MongoError, ErrorKind, WriteFailure};
use mongodb::options::{ClientOptions, IndexOptions, ReturnDocument};
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
/// A user's `gone` documents are deleted (one scan of the collection on FerretDB) once this
/// many have gathered.
const SWEEP_EVERY: i64 = 64;

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

/// A user's counter document: the highest number drawn, and how many messages are kept (a
/// hint: rechecked against the messages when it is new or near the bound).
#[derive(Debug, Deserialize)]
struct CounterDoc {
    #[serde(default)]
    seq: i64,
    #[serde(default)]
    kept: i64,
    /// Messages marked `gone` and not yet deleted.
    #[serde(default)]
    gone: i64,
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
    counters: Collection<Document>,
    channels: MongoChannels,
    timeout: Duration,
    /// The last number this handle gave each user.
    given: LastGiven,
}

/// The last number a handle gave each user, so it never gives one a lower number: the counter
/// can go back on an engine whose `findAndModify` is not atomic (FerretDB). Forgets everyone
/// once `LAST_GIVEN_USERS` are remembered (memory stays bounded); a forgotten user's next
/// number is the counter's again.
#[derive(Default)]
struct LastGiven(Mutex<HashMap<String, i64>>);

/// Users a handle remembers the last number of.
const LAST_GIVEN_USERS: usize = 100_000;

impl LastGiven {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, i64>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, user: &str) -> i64 {
        self.lock().get(user).copied().unwrap_or(0)
    }

    fn gave(&self, user: &str, seq: i64) {
        let mut given = self.lock();
        if let Some(last) = given.get_mut(user) {
            *last = (*last).max(seq);
            return;
        }
        if given.len() >= LAST_GIVEN_USERS {
            given.clear();
        }
        given.insert(user.to_owned(), seq);
    }
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
            counters: db.collection("message_counters"),
            channels,
            timeout: OPERATION_TIMEOUT,
            given: LastGiven::default(),
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

    /// The `seq` of the document `key`, if it is stored.
    async fn seq_of(&self, key: &str) -> Result<Option<i64>, StoreError> {
        seq_of(&self.messages, key).await
    }

    /// Draws the next number for `user` and counts one more message kept.
    async fn draw(&self, user: &str) -> Result<CounterDoc, StoreError> {
        self.count(user, doc! { "$inc": { "seq": 1_i64, "kept": 1_i64 } })
            .await
    }

    /// Applies `update` to `user`'s counter, creating it if it is missing, and answers the
    /// counter after the update. Two handles that create the same counter at once race: the
    /// loser's upsert fails with a duplicate key (the engine does not retry it), and is
    /// applied again, now to the winner's document.
    async fn count(&self, user: &str, update: Document) -> Result<CounterDoc, StoreError> {
        let counters = self.counters.clone_with_type::<CounterDoc>();
        let mut lost_race = false;
        loop {
            let counted = counters
                .find_one_and_update(doc! { "_id": user }, update.clone())
                .upsert(true)
                .return_document(ReturnDocument::After)
                .await;
            match counted {
                Ok(Some(counter)) => return Ok(counter),
                Ok(None) => return Err(unavailable("the counter upsert answered no document")),
                Err(e) if is_duplicate_key(&e) && !lost_race => lost_race = true,
                Err(e) => return Err(unavailable(e)),
            }
        }
    }

    async fn persist_once(
        &self,
        m: &StoredMessage,
        max_kept: u64,
    ) -> Result<Persisted, StoreError> {
        let user = m.to.as_str();
        let key = key(&m.to, m.id);
        if let Some(seq) = self.seq_of(&key).await? {
            return Ok(Persisted::Kept(seq.max(0) as u64)); // a redelivery
        }
        let max_kept = max_kept.min(i64::MAX as u64) as i64;
        let near = max_kept - max_kept / 10;
        // Numbers up to `floor` are taken or were given by this handle: never use them.
        let mut floor = self.given.get(user);
        for _ in 0..MAX_SEQ_ATTEMPTS {
            let mut drawn = self.draw(user).await?;
            if drawn.seq == 1 || drawn.kept >= near {
                // The messages themselves say how many are kept, and which numbers are taken.
                let kept = self
                    .messages
                    .count_documents(kept_by(user))
                    .await
                    .map_err(unavailable)? as i64;
                let last = last_seq(&self.messages, doc! { "to": user }).await?;
                if kept >= max_kept || last >= drawn.seq {
                    self.count(
                        user,
                        doc! { "$set": { "kept": kept }, "$max": { "seq": last } },
                    )
                    .await?;
                    if kept >= max_kept {
                        return Ok(Persisted::Full);
                    }
                    floor = floor.max(last);
                    continue; // numbers up to `last` were taken before this counter: past them
                }
                self.count(user, doc! { "$set": { "kept": kept + 1 } })
                    .await?;
            }
            if drawn.seq <= floor {
                // The counter went back (a stale write of another writer): past the floor, and
                // the counter follows for the next draw.
                drawn.seq = floor + 1;
                self.count(user, doc! { "$max": { "seq": drawn.seq } })
                    .await?;
            }
            let doc = MessageDoc::new(m, drawn.seq);
            match self.messages.insert_one(&doc).await {
                Ok(_) => {
                    self.given.gave(user, drawn.seq);
                    return Ok(Persisted::Kept(drawn.seq as u64));
                }
                Err(e) if is_duplicate_key(&e) => {
                    floor = floor.max(drawn.seq);
                    self.count(user, doc! { "$inc": { "kept": -1_i64 } })
                        .await?;
                    // Either this id is stored already (a redelivery at the same moment: done),
                    // or the number is taken (draw again).
                    if let Some(seq) = self.seq_of(&doc.key).await? {
                        return Ok(Persisted::Kept(seq.max(0) as u64));
                    }
                    tracing::debug!(user, seq = drawn.seq, "number taken; drawing again");
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

    /// Marks the message `gone` (found by `_id` alone: FerretDB deletes only by scanning the
    /// collection, while it updates by `_id` directly) and counts one message fewer kept; every
    /// `SWEEP_EVERY` removals of a user, that user's `gone` documents are deleted at once.
    async fn remove_once(&self, user: &UserId, id: MessageId) -> Result<(), StoreError> {
        let marked = self
            .messages
            .update_one(
                doc! { "_id": key(user, id) },
                doc! { "$set": { "gone": true, "frame": "" }, "$unset": { "confirm": "" } },
            )
            .await
            .map_err(unavailable)?
            .modified_count;
        if marked == 0 {
            return Ok(()); // not kept, or removed already
        }
        let counter = self
            .count(
                user.as_str(),
                doc! { "$inc": { "kept": -1_i64, "gone": 1_i64 } },
            )
            .await?;
        if counter.gone >= SWEEP_EVERY {
            let swept = self
                .messages
                .delete_many(doc! { "to": user.as_str(), "gone": true })
                .await
                .map_err(unavailable)?
                .deleted_count;
            self.count(
                user.as_str(),
                doc! { "$inc": { "gone": -(swept.min(i64::MAX as u64) as i64) } },
            )
            .await?;
        }
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
