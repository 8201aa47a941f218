//! Channel history on MongoDB: collection `channel_posts`, one document per post keyed
//! `_id: "<channel>/<message id>"` (a redelivered post hits the duplicate key), numbered as the
//! messages are: `seq` = the channel's highest `seq` + 1, guarded by a unique `{channel, seq}`
//! index, so the insert itself takes the number and a writer that loses the race takes the
//! next. A writer reads number n only after n was inserted, so a number is never visible
//! before a lower one. Retention deletes below the newest post, never the newest itself, so
//! numbers are never reused.

use mongodb::bson::doc;
use mongodb::options::IndexOptions;
use mongodb::{Collection, IndexModel};
use serde::{Deserialize, Serialize};

use common::channel::Channel;
use common::ids::{MessageId, UserId};
use common::store::{ChannelPost, Numbered, Retention, StoreError};

use crate::mongo_store::{MAX_SEQ_ATTEMPTS, is_duplicate_key, last_seq, seq_of, unavailable};

#[derive(Debug, Serialize, Deserialize)]
struct PostDoc {
    #[serde(rename = "_id")]
    key: String,
    channel: String,
    seq: i64,
    id: String,
    from: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reference: Option<String>,
    content: String,
    created_at: i64,
}

impl PostDoc {
    fn into_numbered(self) -> Result<Numbered, StoreError> {
        let corrupt = |what: &str, e: &dyn std::fmt::Display| {
            StoreError::Corrupt(format!("{}: bad {what}: {e}", self.key))
        };
        let id = uuid::Uuid::parse_str(&self.id).map_err(|e| corrupt("id", &e))?;
        let from = UserId::parse(&self.from).map_err(|e| corrupt("from", &e))?;
        Ok(Numbered {
            seq: self.seq.max(0) as u64,
            post: ChannelPost {
                id: MessageId(id),
                from,
                reference: self.reference,
                content: self.content,
                created_at: self.created_at.max(0) as u64,
            },
        })
    }
}

fn key(channel: &Channel, id: MessageId) -> String {
    format!("{channel}/{id}")
}

fn as_i64(n: u64) -> i64 {
    n.min(i64::MAX as u64) as i64
}

pub(crate) struct MongoChannels {
    posts: Collection<PostDoc>,
}

impl MongoChannels {
    /// The collection in `database`, with the index that orders and numbers each channel.
    pub(crate) async fn open(database: &mongodb::Database) -> Result<MongoChannels, StoreError> {
        let posts: Collection<PostDoc> = database.collection("channel_posts");
        let order = IndexModel::builder()
            .keys(doc! { "channel": 1, "seq": 1 })
            .options(
                IndexOptions::builder()
                    .name("channel_seq".to_owned())
                    .unique(true)
                    .build(),
            )
            .build();
        posts.create_index(order).await.map_err(unavailable)?;
        Ok(MongoChannels { posts })
    }

    async fn last_seq(&self, channel: &str) -> Result<i64, StoreError> {
        last_seq(&self.posts, doc! { "channel": channel }).await
    }

    async fn seq_of(&self, key: &str) -> Result<Option<i64>, StoreError> {
        seq_of(&self.posts, key).await
    }

    pub(crate) async fn post(
        &self,
        channel: &Channel,
        post: &ChannelPost,
        retention: Retention,
        now: u64,
    ) -> Result<u64, StoreError> {
        let key = key(channel, post.id);
        if let Some(seq) = self.seq_of(&key).await? {
            return Ok(seq.max(0) as u64);
        }
        for _ in 0..MAX_SEQ_ATTEMPTS {
            let seq = self.last_seq(channel.as_str()).await? + 1;
            let doc = PostDoc {
                key: key.clone(),
                channel: channel.to_string(),
                seq,
                id: post.id.to_string(),
                from: post.from.to_string(),
                reference: post.reference.clone(),
                content: post.content.clone(),
                created_at: as_i64(post.created_at),
            };
            match self.posts.insert_one(&doc).await {
                Ok(_) => {
                    self.trim(channel, seq, retention, now).await?;
                    return Ok(seq as u64);
                }
                Err(e) if is_duplicate_key(&e) => {
                    // A redelivery stored meanwhile (done), or another writer took this seq.
                    if let Some(seq) = self.seq_of(&key).await? {
                        return Ok(seq.max(0) as u64);
                    }
                }
                Err(e) => return Err(unavailable(e)),
            }
        }
        Err(unavailable(format!(
            "post to {channel} lost the race for a sequence number {MAX_SEQ_ATTEMPTS} times"
        )))
    }

    /// Deletes the channel's posts below `newest` past the count or older than the age.
    async fn trim(
        &self,
        channel: &Channel,
        newest: i64,
        retention: Retention,
        now: u64,
    ) -> Result<(), StoreError> {
        let keep_from = newest - as_i64(retention.keep.max(1)) + 1;
        let too_old = as_i64(now.saturating_sub(retention.max_age_ms));
        self.posts
            .delete_many(doc! {
                "channel": channel.as_str(),
                "seq": { "$lt": newest },
                "$or": [ { "seq": { "$lt": keep_from } }, { "created_at": { "$lt": too_old } } ],
            })
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    pub(crate) async fn history(
        &self,
        channel: &Channel,
        after: u64,
        limit: usize,
        since: u64,
    ) -> Result<Vec<Numbered>, StoreError> {
        // A limit of 0 means "no limit" to MongoDB.
        if limit == 0 {
            return Ok(Vec::new());
        }
        let filter = doc! {
            "channel": channel.as_str(),
            "seq": { "$gt": as_i64(after) },
            "created_at": { "$gte": as_i64(since) },
        };
        let mut cursor = self
            .posts
            .find(filter)
            .sort(doc! { "seq": -1 })
            .limit(limit.min(i64::MAX as usize) as i64)
            .await
            .map_err(unavailable)?;
        let mut newest = Vec::new();
        while cursor.advance().await.map_err(unavailable)? {
            let doc = cursor
                .deserialize_current()
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            newest.push(doc.into_numbered()?);
        }
        newest.reverse();
        Ok(newest)
    }
}
