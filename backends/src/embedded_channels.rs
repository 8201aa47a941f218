//! Channel history in the embedded store's redb file: posts keyed `(channel, seq)`, the last
//! number of each channel, and an index from message id to number that makes a redelivered
//! post answer its first number. Posts are written by the store's one writer thread, in its
//! batch transaction, so numbers are given in commit order: a number is visible only with every
//! lower one. Retention is applied to a channel each time it gets a post.

use redb::{ReadableTable, Table, TableDefinition};
use serde::{Deserialize, Serialize};

use common::channel::Channel;
use common::ids::{MessageId, UserId};
use common::store::{ChannelPost, Numbered, Retention, StoreError};

pub(crate) const POSTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("channel_posts");
pub(crate) const POST_IDS: TableDefinition<u128, u64> = TableDefinition::new("channel_post_ids");
pub(crate) const LAST_SEQ: TableDefinition<&str, u64> = TableDefinition::new("channel_last_seq");

/// A kept post as it lies in the file.
#[derive(Serialize, Deserialize)]
struct PostRecord {
    id: MessageId,
    from: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reference: Option<String>,
    content: String,
    created_at: u64,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// A channel post being written, with what the writer needs to apply it.
pub(crate) struct PostWrite {
    pub channel: Channel,
    pub post: ChannelPost,
    pub retention: Retention,
    pub now: u64,
}

/// The three channel tables, open in one write transaction.
pub(crate) struct ChannelTables<'t> {
    pub posts: Table<'t, (&'static str, u64), &'static [u8]>,
    pub ids: Table<'t, u128, u64>,
    pub last: Table<'t, &'static str, u64>,
}

impl ChannelTables<'_> {
    /// Keeps the post under its channel's next number (or answers the number it has).
    pub(crate) fn post(&mut self, w: &PostWrite) -> Result<u64, StoreError> {
        let id = w.post.id.0.as_u128();
        if let Some(seq) = self.ids.get(id).map_err(unavailable)? {
            return Ok(seq.value());
        }
        let channel = w.channel.as_str();
        let seq = self
            .last
            .get(channel)
            .map_err(unavailable)?
            .map_or(0, |v| v.value())
            + 1;
        let record = PostRecord {
            id: w.post.id,
            from: w.post.from.to_string(),
            reference: w.post.reference.clone(),
            content: w.post.content.clone(),
            created_at: w.post.created_at,
        };
        let bytes = serde_json::to_vec(&record).map_err(unavailable)?;
        self.posts
            .insert((channel, seq), bytes.as_slice())
            .map_err(unavailable)?;
        self.ids.insert(id, seq).map_err(unavailable)?;
        self.last.insert(channel, seq).map_err(unavailable)?;
        self.trim(channel, seq, w.retention, w.now)?;
        Ok(seq)
    }

    /// Drops the channel's posts below `newest` that are past the count or too old.
    fn trim(
        &mut self,
        channel: &str,
        newest: u64,
        retention: Retention,
        now: u64,
    ) -> Result<(), StoreError> {
        let keep_from = newest.saturating_sub(retention.keep.max(1)) + 1;
        let too_old = now.saturating_sub(retention.max_age_ms);
        let mut doomed = Vec::new();
        for row in self
            .posts
            .range((channel, 0)..(channel, newest))
            .map_err(unavailable)?
        {
            let (key, value) = row.map_err(unavailable)?;
            let seq = key.value().1;
            let record: PostRecord = serde_json::from_slice(value.value()).map_err(corrupt)?;
            if seq < keep_from || record.created_at < too_old {
                doomed.push((seq, record.id));
            } else {
                // Numbers and times both grow from here on: nothing later is doomed.
                break;
            }
        }
        for (seq, id) in doomed {
            self.posts.remove((channel, seq)).map_err(unavailable)?;
            self.ids.remove(id.0.as_u128()).map_err(unavailable)?;
        }
        Ok(())
    }
}

/// Reads the newest `limit` posts above `after`, created at or after `since`, oldest first.
pub(crate) fn history(
    posts: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    channel: &Channel,
    after: u64,
    limit: usize,
    since: u64,
) -> Result<Vec<Numbered>, StoreError> {
    let channel = channel.as_str();
    if after == u64::MAX || limit == 0 {
        return Ok(Vec::new());
    }
    let range = posts
        .range((channel, after + 1)..=(channel, u64::MAX))
        .map_err(unavailable)?;
    let mut newest = Vec::with_capacity(limit.min(1024));
    for row in range.rev().take(limit) {
        let (key, value) = row.map_err(unavailable)?;
        let record: PostRecord = serde_json::from_slice(value.value()).map_err(corrupt)?;
        if record.created_at < since {
            break;
        }
        let from = UserId::parse(&record.from).map_err(corrupt)?;
        newest.push(Numbered {
            seq: key.value().1,
            post: ChannelPost {
                id: record.id,
                from,
                reference: record.reference,
                content: record.content,
                created_at: record.created_at,
            },
        });
    }
    newest.reverse();
    Ok(newest)
}
