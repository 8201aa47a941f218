//! Channel posts and history, processor side.
//!
//! CHANNEL_MESSAGE: a RELIABLE post to a channel of an app that keeps history is first kept by
//! the store, which gives it the channel's next number (`seq`); then the frame goes once to
//! each connector that holds member sockets (looked up in presence), which writes it to the
//! members whose subscription takes it (echo off: not the sender's own). FAST posts are neither
//! kept nor numbered, and reach only the members online now. The sender's confirmation (if
//! asked for, with a reference) goes out once a kept post was fanned out, or once at least one
//! socket took a post that is not kept.
//!
//! ChannelHistory (a SUBSCRIBE with `history` or `after`): the kept posts it asks for, oldest
//! first, to the subscribing socket, then `CHANNEL_HISTORY_COMPLETE`, which ends the hold the
//! connector keeps on that channel's live posts for the socket.

use serde_json::value::RawValue;
use tracing::warn;

use common::channel::Channel;
use common::config::{ChannelHistory, MAX_CHANNEL_HISTORY};
use common::envelope::{ConnectorCommand, PostMark, Target};
use common::frame::{
    Feature, out_channel_history_complete, out_channel_message, out_general_error,
};
use common::ids::SocketAddress;
use common::store::{ChannelPost, Retention, StoreError};

use crate::deliver::{Meta, by_connector};
use crate::{ProcessError, Processor};

impl Processor {
    pub(crate) async fn channel_message(
        &self,
        meta: Meta,
        channel: &Channel,
        content: &RawValue,
    ) -> Result<(), ProcessError> {
        let retention = self.retention(channel);
        let seq = if meta.feature == Feature::Reliable && retention.keep > 0 {
            let post = ChannelPost {
                id: meta.id,
                from: meta.from.clone(),
                reference: meta.reference.clone(),
                content: content.get().to_owned(),
                created_at: meta.created_at,
            };
            let now = common::now_millis();
            Some(self.store.post(channel, &post, retention, now).await?)
        } else {
            None
        };
        let members = self.presence.members(channel).await?;
        let frame =
            out_channel_message(channel, &meta.from, content, seq, meta.reference.as_deref());
        let confirm = meta.confirmation();
        let report = seq.is_none() && (meta.feature == Feature::Reliable || confirm.is_some());
        let mut written = false;
        for (connector, targets) in by_connector(members.iter().map(|(u, s)| (u, s))) {
            let command = ConnectorCommand::Post {
                targets,
                frame: frame.clone(),
                feature: meta.feature,
                mark: PostMark::Live {
                    channel: channel.clone(),
                    from: meta.from.clone(),
                    id: meta.id,
                    seq,
                },
            };
            written |= self
                .send(&connector, command, report)
                .await
                .iter()
                .any(|w| *w);
        }
        if !written && seq.is_none() {
            metrics::counter!("linker_channel_undelivered_total", "feature" => meta.feature.label())
                .increment(1);
            return Ok(());
        }
        if let Some(confirm) = confirm {
            self.confirm(confirm, meta.id).await?;
        }
        Ok(())
    }

    /// What the channel's app keeps (the default for an app not configured).
    fn retention(&self, channel: &Channel) -> Retention {
        let history = self
            .network
            .current()
            .app(channel.app())
            .map_or_else(ChannelHistory::default, |app| app.channel_history);
        Retention {
            keep: history.keep.min(MAX_CHANNEL_HISTORY),
            max_age_ms: history.max_age_seconds.saturating_mul(1000),
        }
    }

    /// Replays the kept posts of `channel` numbered above `after` (the newest `count` of them)
    /// to the socket `origin`, then ends the replay. A store that cannot be read is retried
    /// (the socket keeps holding live posts meanwhile); a corrupt record ends the replay with
    /// an error.
    pub(crate) async fn channel_history(
        &self,
        meta: Meta,
        origin: SocketAddress,
        channel: &Channel,
        after: u64,
        count: u32,
    ) -> Result<(), ProcessError> {
        let retention = self.retention(channel);
        let limit = (count as u64).min(retention.keep) as usize;
        let since = common::now_millis().saturating_sub(retention.max_age_ms);
        let target = || Target {
            user: meta.from.clone(),
            socket: origin.socket,
        };
        let kept = match self.store.history(channel, after, limit, since).await {
            Ok(kept) => kept,
            Err(e @ StoreError::Corrupt(_)) => {
                warn!(%channel, error = %e, "channel history unreadable");
                let frame = out_general_error("STORE_CORRUPT", &e.to_string(), None);
                self.send_post(&origin, vec![target()], frame, end_mark(channel))
                    .await;
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let (replayed, last_seq) = (kept.len() as u64, kept.last().map_or(0, |n| n.seq));
        for numbered in kept {
            let post = numbered.post;
            let Ok(content) = RawValue::from_string(post.content) else {
                warn!(%channel, seq = numbered.seq, "kept post with bad content skipped");
                continue;
            };
            let frame = out_channel_message(
                channel,
                &post.from,
                &content,
                Some(numbered.seq),
                post.reference.as_deref(),
            );
            let mark = PostMark::History {
                channel: channel.clone(),
                from: post.from,
                id: post.id,
                seq: numbered.seq,
            };
            self.send_post(&origin, vec![target()], frame, mark).await;
        }
        let frame =
            out_channel_history_complete(channel, replayed, last_seq, meta.reference.as_deref());
        self.send_post(&origin, vec![target()], frame, end_mark(channel))
            .await;
        Ok(())
    }

    async fn send_post(
        &self,
        origin: &SocketAddress,
        targets: Vec<Target>,
        frame: String,
        mark: PostMark,
    ) {
        let command = ConnectorCommand::Post {
            targets,
            frame,
            feature: Feature::Reliable,
            mark,
        };
        self.send(&origin.connector, command, false).await;
    }
}

fn end_mark(channel: &Channel) -> PostMark {
    PostMark::HistoryEnd {
        channel: channel.clone(),
    }
}
