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
//! Across domains: the domain that takes a post from a client relays it once to every other
//! domain of the network (`Relayed::ChannelPost`, RELIABLE through the outbox); each keeps
//! and numbers it in its own sequence of the channel and writes it to its own members. The
//! sender is confirmed by the domain that took the post, once it is posted there and the
//! relays are on their way.
//!
//! ChannelHistory (a SUBSCRIBE with `history` or `after`): the kept posts it asks for, oldest
//! first, to the subscribing socket, then `CHANNEL_HISTORY_COMPLETE`, which ends the hold the
//! connector keeps on that channel's live posts for the socket.

use serde_json::value::RawValue;
use tracing::warn;

use common::channel::Channel;
use common::config::{ChannelHistory, MAX_CHANNEL_HISTORY};
use common::envelope::{ConnectorCommand, Envelope, PostMark, Relayed, Target};
use common::frame::{
    Feature, out_channel_history_complete, out_channel_message, out_general_error,
};
use common::ids::{DomainName, SocketAddress};
use common::store::{ChannelPost, Retention, StoreError};

use crate::deliver::{Meta, by_connector};
use crate::{ProcessError, Processor};

impl Processor {
    /// A post taken from a client of this domain: posted here, relayed once to every other
    /// domain of the network, then confirmed.
    pub(crate) async fn channel_message(
        &self,
        meta: Meta,
        channel: &Channel,
        content: &RawValue,
    ) -> Result<(), ProcessError> {
        let taken = self.post_here(&meta, channel, content).await?;
        self.relay_post(&meta, channel, content).await?;
        if !taken {
            metrics::counter!("linker_channel_undelivered_total", "feature" => meta.feature.label())
                .increment(1);
            return Ok(());
        }
        if let Some(confirm) = meta.confirmation() {
            self.confirm(confirm, meta.id).await?;
        }
        Ok(())
    }

    /// A post another domain took, relayed here: posted to this domain's members, numbered
    /// in this domain's sequence of the channel. Its sender is confirmed by the domain that
    /// took it.
    pub(crate) async fn channel_post_relayed(
        &self,
        envelope: &Envelope,
        channel: &Channel,
        content: &str,
        reference: &Option<String>,
        created_at: u64,
    ) -> Result<(), ProcessError> {
        let Ok(content) = RawValue::from_string(content.to_owned()) else {
            warn!(%channel, id = %envelope.id, "relayed channel post with bad content dropped");
            return Ok(());
        };
        let meta = Meta {
            id: envelope.id,
            from: envelope.from.clone(),
            feature: envelope.feature,
            reference: reference.clone(),
            confirm: false,
            created_at,
        };
        self.post_here(&meta, channel, &content).await.map(drop)
    }

    /// Keeps (if RELIABLE) and writes a post to this domain's members; true if it was kept or
    /// at least one member socket took it.
    async fn post_here(
        &self,
        meta: &Meta,
        channel: &Channel,
        content: &RawValue,
    ) -> Result<bool, ProcessError> {
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
        let report =
            seq.is_none() && (meta.feature == Feature::Reliable || meta.confirmation().is_some());
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
        Ok(written || seq.is_some())
    }

    /// Sends the post once to every other domain of the network (a RELIABLE one through the
    /// outbox, so it is not lost while a domain is unreachable).
    async fn relay_post(
        &self,
        meta: &Meta,
        channel: &Channel,
        content: &RawValue,
    ) -> Result<(), ProcessError> {
        let network = self.network.current();
        let local = network.local_domain().clone();
        let others: Vec<DomainName> = network
            .config()
            .domains
            .iter()
            .map(|d| DomainName::new(&d.name))
            .filter(|d| *d != local)
            .collect();
        for home in others {
            let what = Relayed::ChannelPost {
                channel: channel.clone(),
                content: content.get().to_owned(),
                reference: meta.reference.clone(),
                created_at: meta.created_at,
            };
            self.relay(meta.id, meta.from.clone(), meta.feature, home, what)
                .await?;
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
