//! The channel frames a connector answers itself: SUBSCRIBE, UNSUBSCRIBE and
//! CHANNEL_PRESENCE change or read the memberships kept in presence; CHANNEL_MESSAGE is checked
//! here and handed to processors; CHANNEL_ADD and CHANNEL_REMOVE change who may use a managed
//! channel (the per-app policy, decided in [`may_use`]). A socket remembers its own
//! subscriptions (at most [`MAX_CHANNELS_PER_SOCKET`]) so that closing it removes them, and the
//! registry applies them to the channel frames processors send (`post`): a socket whose
//! subscription has echo off does not get its own user's posts. A SUBSCRIBE with `history` or
//! `after` holds the channel's live posts back for that socket from before it joins until the
//! replay (read by a processor after the join) has been written, then writes the held ones the
//! replay did not contain: kept posts are numbered by the store so that a number is readable
//! only with every lower one, so every post is either replayed or delivered live after the
//! join, and a live post numbered at or below the last replayed one was replayed.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use common::bus::Replier;
use common::channel::Channel;
use common::config::ChannelPolicy;
use common::envelope::{DeliveryReport, PostMark, Target};
use common::frame::{Feature, SubscribeOptions};
use common::ids::{MessageId, SocketAddress, UserId};
use common::network::Network;
use common::presence::{Presence, PresenceError};

use crate::Shared;
use crate::registry::{Outbound, SocketHandle};

/// Most channels one socket may be a member of.
pub const MAX_CHANNELS_PER_SOCKET: usize = 100;

/// A channel frame refused: the reason code and detail of its `INVALID_MESSAGE`.
pub(crate) type Refusal = (&'static str, String);

/// Most users a master user may choose for one managed channel.
pub const MAX_MANAGED_MEMBERS: usize = 10_000;

/// Whether `user` may join, post to and read the members of `channel`: a user of the
/// channel's app, and, if the app's channels are managed, its master user or a user the master
/// chose with `CHANNEL_ADD`. The one place the channel policy is decided.
pub(crate) async fn may_use(
    network: &Network,
    presence: &dyn Presence,
    user: &UserId,
    channel: &Channel,
) -> Result<Result<(), Refusal>, PresenceError> {
    if !channel.is_of_app_of(user) {
        return Ok(Err((
            "CHANNEL_OF_OTHER_APP",
            format!(
                "channel {channel} belongs to app {}; users of app {} may not use it",
                channel.app(),
                user.app()
            ),
        )));
    }
    if policy(network, channel) == ChannelPolicy::Open || network.is_master(user) {
        return Ok(Ok(()));
    }
    if presence.is_granted(channel, user).await? {
        return Ok(Ok(()));
    }
    Ok(Err((
        "NOT_CHANNEL_MEMBER",
        format!(
            "channel {channel} is managed: only the users its app's master user added may use it"
        ),
    )))
}

/// The policy of `channel`'s app (managed if the app is not known, which a user of it cannot
/// be).
fn policy(network: &Network, channel: &Channel) -> ChannelPolicy {
    network
        .app(channel.app())
        .map_or(ChannelPolicy::Managed, |app| app.channels.policy)
}

/// `CHANNEL_ADD` (`added`) or `CHANNEL_REMOVE` from `master`: chooses `user` for the managed
/// `channel`, or takes them off and ends the memberships of their sockets, on any connector.
/// Only the master user of the channel's app may, for users of that app.
pub(crate) async fn choose_member(
    network: &Network,
    presence: &dyn Presence,
    master: &UserId,
    added: bool,
    channel: &Channel,
    user: &UserId,
) -> Result<Result<(), Refusal>, PresenceError> {
    if !(channel.is_of_app_of(master) && network.is_master(master)) {
        return Ok(Err((
            "NOT_MASTER",
            format!(
                "only the master user of app {} may choose the members of {channel}",
                channel.app()
            ),
        )));
    }
    if !channel.is_of_app_of(user) {
        return Ok(Err((
            "CHANNEL_OF_OTHER_APP",
            format!(
                "{user} is not a user of app {}, which {channel} belongs to",
                channel.app()
            ),
        )));
    }
    if policy(network, channel) != ChannelPolicy::Managed {
        return Ok(Err((
            "CHANNEL_NOT_MANAGED",
            format!(
                "the channels of app {} are open to all its users",
                channel.app()
            ),
        )));
    }
    if added {
        if !presence.grant(channel, user, MAX_MANAGED_MEMBERS).await? {
            let detail = format!("a managed channel has at most {MAX_MANAGED_MEMBERS} members");
            return Ok(Err(("TOO_MANY_MEMBERS", detail)));
        }
        return Ok(Ok(()));
    }
    presence.revoke(channel, user).await?;
    for (member, socket) in presence.members(channel).await? {
        if &member == user {
            presence.leave(channel, user, &socket).await?;
        }
    }
    Ok(Ok(()))
}

/// One socket's membership of one channel, as the registry applies it to channel frames.
pub(crate) struct Subscription {
    channel: Channel,
    /// The socket gets its own user's posts.
    echo: bool,
    replay: Replay,
}

/// Where a subscription stands with the channel's numbered posts.
enum Replay {
    /// Posts go straight to the socket, but none numbered `floor` or lower (the replay wrote
    /// those).
    Live { floor: u64 },
    /// A replay runs: replayed posts are written as they come, live ones are held back (up to
    /// the outbound queue's size) and written after the replay's end, unless replayed.
    Replaying { replayed: u64, held: VecDeque<Held> },
}

/// A live post held back during a replay.
struct Held {
    text: Utf8Bytes,
    id: MessageId,
    seq: Option<u64>,
}

/// A socket's subscriptions, shared by its session (which changes them) and the registry
/// (which reads them for every channel frame). Never locked across an `.await`.
pub(crate) type Subscriptions = Arc<Mutex<Vec<Subscription>>>;

fn lock(subs: &Subscriptions) -> std::sync::MutexGuard<'_, Vec<Subscription>> {
    subs.lock().expect("subscriptions lock is never poisoned")
}

/// The channels of a socket's subscriptions.
pub(crate) fn channels_of(subs: &Subscriptions) -> Vec<Channel> {
    lock(subs).iter().map(|s| s.channel.clone()).collect()
}

/// The channels one socket is a member of.
#[derive(Default)]
pub(crate) struct Memberships {
    subs: Subscriptions,
}

impl Memberships {
    /// The shared subscriptions, for the socket's registry handle.
    pub(crate) fn subscriptions(&self) -> Subscriptions {
        self.subs.clone()
    }

    fn is_member(&self, channel: &Channel) -> bool {
        lock(&self.subs).iter().any(|s| s.channel == *channel)
    }

    /// Joins `channel` (again: only the options change), within the per-socket bound. With a
    /// replay asked for, live posts are held back from before the socket becomes a member
    /// until the replay's end comes back (`post`) or the replay is abandoned.
    pub(crate) async fn join(
        &mut self,
        network: &Network,
        presence: &dyn Presence,
        user: &UserId,
        socket: &SocketAddress,
        channel: &Channel,
        options: SubscribeOptions,
    ) -> Result<Result<(), Refusal>, PresenceError> {
        if let Err(refusal) = may_use(network, presence, user, channel).await? {
            return Ok(Err(refusal));
        }
        let replay = || Replay::Replaying {
            replayed: options.after.unwrap_or(0),
            held: VecDeque::new(),
        };
        let again = {
            let mut subs = lock(&self.subs);
            if let Some(sub) = subs.iter_mut().find(|s| s.channel == *channel) {
                sub.echo = options.echo;
                if options.replays() && matches!(sub.replay, Replay::Live { .. }) {
                    sub.replay = replay();
                }
                true
            } else if subs.len() >= MAX_CHANNELS_PER_SOCKET {
                let detail = format!(
                    "a socket may be a member of at most {MAX_CHANNELS_PER_SOCKET} channels"
                );
                return Ok(Err(("TOO_MANY_CHANNELS", detail)));
            } else {
                // In place before the socket becomes a member, so no post finds it missing.
                subs.push(Subscription {
                    channel: channel.clone(),
                    echo: options.echo,
                    replay: if options.replays() {
                        replay()
                    } else {
                        Replay::Live { floor: 0 }
                    },
                });
                false
            }
        };
        if again {
            // Joined again in presence: a CHANNEL_REMOVE may have ended the membership there.
            presence.join(channel, user, socket).await?;
            return Ok(Ok(()));
        }
        if let Err(e) = presence.join(channel, user, socket).await {
            self.forget(channel);
            return Err(e);
        }
        Ok(Ok(()))
    }

    /// Ends a replay that will not come (it could not be asked for): the held posts, to write.
    pub(crate) fn abandon_replay(&self, channel: &Channel) -> Vec<Utf8Bytes> {
        let mut subs = lock(&self.subs);
        match subs.iter_mut().find(|s| s.channel == *channel) {
            Some(sub) => sub.end_replay().into_iter().map(|h| h.text).collect(),
            None => Vec::new(),
        }
    }

    fn forget(&self, channel: &Channel) {
        lock(&self.subs).retain(|s| s.channel != *channel);
    }

    /// Leaves `channel` (not a member: no change).
    pub(crate) async fn leave(
        &mut self,
        presence: &dyn Presence,
        user: &UserId,
        socket: &SocketAddress,
        channel: &Channel,
    ) -> Result<(), PresenceError> {
        if self.is_member(channel) {
            presence.leave(channel, user, socket).await?;
            self.forget(channel);
        }
        Ok(())
    }

    /// Leaves every channel (the socket closes); the first failure is answered after trying all.
    pub(crate) async fn leave_all(
        &mut self,
        presence: &dyn Presence,
        user: &UserId,
        socket: &SocketAddress,
    ) -> Result<(), PresenceError> {
        let channels: Vec<Channel> = std::mem::take(&mut *lock(&self.subs))
            .into_iter()
            .map(|s| s.channel)
            .collect();
        let mut result = Ok(());
        for channel in channels {
            if let Err(e) = presence.leave(&channel, user, socket).await {
                result = result.and(Err(e));
            }
        }
        result
    }
}

impl Subscription {
    /// Ends a running replay: live from the last replayed number on; answers the held posts
    /// that the replay did not write, in the order they came.
    fn end_replay(&mut self) -> Vec<Held> {
        let Replay::Replaying { replayed, held } = &mut self.replay else {
            return Vec::new();
        };
        let floor = *replayed;
        let held = std::mem::take(held);
        self.replay = Replay::Live { floor };
        held.into_iter()
            .filter(|h| h.seq.is_none_or(|seq| seq > floor))
            .collect()
    }
}

/// What a socket's subscription makes of one channel frame.
enum Fate {
    /// Write it now.
    Write,
    /// Not for this socket (not a member, its own post without echo, or a hold that is full).
    Skip,
    /// Already written to this socket (a replayed post, or a redelivery).
    Duplicate,
    /// Held back until the replay ends.
    Held,
    /// The replay ended: write the frame, then these held posts.
    Release(Vec<Held>),
}

/// Decides one channel frame for one socket of `user`; `hold_limit` bounds a hold.
fn fate(
    subs: &mut [Subscription],
    user: &UserId,
    mark: &PostMark,
    text: &Utf8Bytes,
    hold_limit: usize,
) -> Fate {
    let Some(sub) = subs.iter_mut().find(|s| s.channel == *mark.channel()) else {
        return Fate::Skip;
    };
    match (mark, &mut sub.replay) {
        (PostMark::HistoryEnd { .. }, Replay::Replaying { .. }) => Fate::Release(sub.end_replay()),
        (PostMark::HistoryEnd { .. }, Replay::Live { .. }) => Fate::Duplicate,
        (PostMark::History { .. }, Replay::Live { .. }) => Fate::Duplicate,
        (PostMark::History { from, seq, .. }, Replay::Replaying { replayed, .. }) => {
            if *seq <= *replayed {
                return Fate::Duplicate;
            }
            *replayed = *seq;
            if !sub.echo && from == user {
                return Fate::Skip;
            }
            Fate::Write
        }
        (PostMark::Live { from, .. }, _) if !sub.echo && from == user => Fate::Skip,
        (PostMark::Live { seq, .. }, Replay::Live { floor }) => match seq {
            Some(seq) if *seq <= *floor => Fate::Duplicate,
            _ => Fate::Write,
        },
        (PostMark::Live { seq, id, .. }, Replay::Replaying { replayed, held }) => {
            if seq.is_some_and(|seq| seq <= *replayed) {
                return Fate::Duplicate;
            }
            if held.len() >= hold_limit {
                metrics::counter!("linker_connector_channel_hold_full_total").increment(1);
                return Fate::Skip;
            }
            held.push_back(Held {
                text: text.clone(),
                id: *id,
                seq: *seq,
            });
            Fate::Held
        }
    }
}

/// Carries out a `Post`: the frame goes to each target socket its subscription lets it reach,
/// never waiting on a socket. The report says which sockets took it (a held post counts as
/// taken: it is written when the replay ends).
pub(crate) fn post(
    shared: &Shared,
    targets: Vec<Target>,
    frame: &str,
    feature: Feature,
    mark: &PostMark,
    reply: Option<Replier>,
) {
    metrics::counter!("linker_connector_frames_out_total", "type" => common::frame::outbound_type(frame), "feature" => feature.label()).increment(targets.len() as u64);
    let text = Utf8Bytes::from(frame);
    let mut written = vec![false; targets.len()];
    let hold_limit = shared.config.outbound_queue;
    for (i, target) in targets.iter().enumerate() {
        let Some(handle) = shared.registry.get(target.socket) else {
            continue;
        };
        if handle.user != target.user {
            continue;
        }
        let fate = fate(
            &mut lock(&handle.channels),
            &handle.user,
            mark,
            &text,
            hold_limit,
        );
        written[i] = match fate {
            Fate::Skip => false,
            Fate::Duplicate | Fate::Held => true,
            Fate::Write => write_once(shared, &handle, text.clone(), mark.id(), feature),
            Fate::Release(held) => {
                let ok = queue(shared, &handle, text.clone(), feature);
                for h in held {
                    write_once(shared, &handle, h.text, Some(h.id), feature);
                }
                ok
            }
        };
    }
    if let Some(reply) = reply {
        reply.reply(DeliveryReport {
            written,
            acking: Vec::new(),
        });
    }
}

/// Queues a post unless its id was queued to the socket before (a redelivery).
fn write_once(
    shared: &Shared,
    handle: &SocketHandle,
    text: Utf8Bytes,
    id: Option<MessageId>,
    feature: Feature,
) -> bool {
    if let Some(id) = id
        && !handle.first_time(id.0.as_u128())
    {
        metrics::counter!("linker_connector_duplicates_skipped_total").increment(1);
        return true;
    }
    queue(shared, handle, text, feature)
}

/// Queues a frame for a socket; false if its queue is full (then the slow-reader policy runs).
fn queue(shared: &Shared, handle: &SocketHandle, text: Utf8Bytes, feature: Feature) -> bool {
    let out = Outbound {
        text,
        ticket: None,
        numbered: None,
    };
    match handle.tx.try_send(out) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            metrics::counter!("linker_connector_queue_full_total", "feature" => feature.label())
                .increment(1);
            crate::registry::slow_reader(shared, handle);
            false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

/// The users with at least one member socket in `channel`, each once, in order.
pub(crate) async fn members(
    presence: &dyn Presence,
    channel: &Channel,
) -> Result<Vec<UserId>, PresenceError> {
    let mut users: Vec<UserId> = presence
        .members(channel)
        .await?
        .into_iter()
        .map(|(user, _)| user)
        .collect();
    users.sort();
    users.dedup();
    Ok(users)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(channel: &Channel, echo: bool, replaying: bool) -> Subscription {
        Subscription {
            channel: channel.clone(),
            echo,
            replay: if replaying {
                Replay::Replaying {
                    replayed: 0,
                    held: VecDeque::new(),
                }
            } else {
                Replay::Live { floor: 0 }
            },
        }
    }

    fn live(channel: &Channel, from: &UserId, seq: u64) -> PostMark {
        PostMark::Live {
            channel: channel.clone(),
            from: from.clone(),
            id: MessageId::new(),
            seq: Some(seq),
        }
    }

    fn history(channel: &Channel, from: &UserId, seq: u64) -> PostMark {
        PostMark::History {
            channel: channel.clone(),
            from: from.clone(),
            id: MessageId::new(),
            seq,
        }
    }

    #[test]
    fn a_replay_holds_live_posts_and_releases_only_those_it_did_not_contain() {
        let channel = Channel::parse("ANZ/general").unwrap();
        let (me, other) = (
            UserId::parse("ANZ-1").unwrap(),
            UserId::parse("ANZ-2").unwrap(),
        );
        let mut subs = vec![sub(&channel, true, true)];
        let text = Utf8Bytes::from("frame");
        let mut decide = |mark: &PostMark| fate(&mut subs, &me, mark, &text, 8);
        // Live posts during the replay wait, whether or not the replay will hold them too.
        assert!(matches!(decide(&live(&channel, &other, 7)), Fate::Held));
        assert!(matches!(decide(&history(&channel, &other, 6)), Fate::Write));
        assert!(matches!(decide(&history(&channel, &other, 7)), Fate::Write));
        assert!(matches!(
            decide(&history(&channel, &other, 7)),
            Fate::Duplicate
        ));
        assert!(matches!(decide(&live(&channel, &other, 8)), Fate::Held));
        let Fate::Release(held) = decide(&PostMark::HistoryEnd {
            channel: channel.clone(),
        }) else {
            panic!("the end releases the hold");
        };
        let released: Vec<_> = held.iter().map(|h| h.seq).collect();
        assert_eq!(released, [Some(8)], "7 was replayed, 8 was not");
        // Afterwards: a late copy of a replayed post is dropped, new ones go straight out.
        assert!(matches!(
            decide(&live(&channel, &other, 7)),
            Fate::Duplicate
        ));
        assert!(matches!(decide(&live(&channel, &other, 9)), Fate::Write));
        assert!(matches!(
            decide(&PostMark::HistoryEnd {
                channel: channel.clone()
            }),
            Fate::Duplicate
        ));
    }

    #[test]
    fn echo_off_skips_own_posts_live_and_replayed_and_a_full_hold_drops() {
        let channel = Channel::parse("ANZ/general").unwrap();
        let (me, other) = (
            UserId::parse("ANZ-1").unwrap(),
            UserId::parse("ANZ-2").unwrap(),
        );
        let text = Utf8Bytes::from("frame");
        let mut subs = vec![sub(&channel, false, true)];
        assert!(matches!(
            fate(&mut subs, &me, &history(&channel, &me, 1), &text, 1),
            Fate::Skip
        ));
        assert!(matches!(
            fate(&mut subs, &me, &live(&channel, &other, 2), &text, 1),
            Fate::Held
        ));
        assert!(matches!(
            fate(&mut subs, &me, &live(&channel, &other, 3), &text, 1),
            Fate::Skip
        ));
        assert!(matches!(
            fate(&mut subs, &me, &live(&channel, &me, 4), &text, 1),
            Fate::Skip
        ));
        let other_channel = Channel::parse("ANZ/other").unwrap();
        assert!(matches!(
            fate(&mut subs, &me, &live(&other_channel, &other, 1), &text, 1),
            Fate::Skip
        ));
    }
}
