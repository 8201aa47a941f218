//! The channel frames a connector answers itself: SUBSCRIBE, UNSUBSCRIBE and
//! CHANNEL_PRESENCE change or read the memberships kept in presence; CHANNEL_MESSAGE is checked
//! here and handed to processors. A socket remembers its own subscriptions (at most
//! [`MAX_CHANNELS_PER_SOCKET`]) so that closing it removes them, and the registry applies them
//! to the channel frames processors send (`post`): a socket whose subscription has echo off
//! does not get its own user's posts.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use common::bus::Replier;
use common::channel::Channel;
use common::envelope::{DeliveryReport, PostMark, Target};
use common::frame::{Feature, SubscribeOptions};
use common::ids::{SocketAddress, UserId};
use common::presence::{Presence, PresenceError};

use crate::Shared;
use crate::registry::{Outbound, SocketHandle};

/// Most channels one socket may be a member of.
pub const MAX_CHANNELS_PER_SOCKET: usize = 100;

/// A channel frame refused: the reason code and detail of its `INVALID_MESSAGE`.
pub(crate) type Refusal = (&'static str, String);

/// Whether `user` may join, post to and read the members of `channel`. Every channel is open
/// to the users of its app; this is the one place a "managed" policy (members chosen by the
/// app's master user) will be decided.
pub(crate) fn may_use(user: &UserId, channel: &Channel) -> Result<(), Refusal> {
    if channel.is_of_app_of(user) {
        return Ok(());
    }
    Err((
        "CHANNEL_OF_OTHER_APP",
        format!(
            "channel {channel} belongs to app {}; users of app {} may not use it",
            channel.app(),
            user.app()
        ),
    ))
}

/// One socket's membership of one channel, as the registry applies it to channel frames.
pub(crate) struct Subscription {
    channel: Channel,
    /// The socket gets its own user's posts.
    echo: bool,
}

/// A socket's subscriptions, shared by its session (which changes them) and the registry
/// (which reads them for every channel frame). Never locked across an `.await`.
pub(crate) type Subscriptions = Arc<Mutex<Vec<Subscription>>>;

fn lock(subs: &Subscriptions) -> std::sync::MutexGuard<'_, Vec<Subscription>> {
    subs.lock().expect("subscriptions lock is never poisoned")
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

    /// Joins `channel` (again: only the options change), within the per-socket bound.
    pub(crate) async fn join(
        &mut self,
        presence: &dyn Presence,
        user: &UserId,
        socket: &SocketAddress,
        channel: &Channel,
        options: SubscribeOptions,
    ) -> Result<Result<(), Refusal>, PresenceError> {
        if let Err(refusal) = may_use(user, channel) {
            return Ok(Err(refusal));
        }
        {
            let mut subs = lock(&self.subs);
            if let Some(sub) = subs.iter_mut().find(|s| s.channel == *channel) {
                sub.echo = options.echo;
                return Ok(Ok(()));
            }
            if subs.len() >= MAX_CHANNELS_PER_SOCKET {
                let detail = format!(
                    "a socket may be a member of at most {MAX_CHANNELS_PER_SOCKET} channels"
                );
                return Ok(Err(("TOO_MANY_CHANNELS", detail)));
            }
            // In place before the socket becomes a member, so no post finds it missing.
            subs.push(Subscription {
                channel: channel.clone(),
                echo: options.echo,
            });
        }
        if let Err(e) = presence.join(channel, user, socket).await {
            self.forget(channel);
            return Err(e);
        }
        Ok(Ok(()))
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

/// What a socket's subscription makes of one channel frame.
enum Fate {
    /// Write it now.
    Write,
    /// Not for this socket (not a member, or its own post without echo).
    Skip,
}

/// Decides one channel frame for one socket of `user`.
fn fate(subs: &mut [Subscription], user: &UserId, mark: &PostMark) -> Fate {
    let PostMark::Live { channel, from, .. } = mark;
    let Some(sub) = subs.iter_mut().find(|s| s.channel == *channel) else {
        return Fate::Skip;
    };
    if !sub.echo && from == user {
        return Fate::Skip;
    }
    Fate::Write
}

/// Carries out a `Post`: the frame goes to each target socket its subscription lets it reach,
/// never waiting on a socket. The report says which sockets took it.
pub(crate) fn post(
    shared: &Shared,
    targets: Vec<Target>,
    frame: &str,
    feature: Feature,
    mark: &PostMark,
    reply: Option<Replier>,
) {
    metrics::counter!("linker_connector_frames_out_total", "type" => "CHANNEL_MESSAGE", "feature" => feature.label()).increment(targets.len() as u64);
    let text = Utf8Bytes::from(frame);
    let mut written = vec![false; targets.len()];
    let PostMark::Live { id, .. } = mark;
    for (i, target) in targets.iter().enumerate() {
        let Some(handle) = shared.registry.get(target.socket) else {
            continue;
        };
        if handle.user != target.user {
            continue;
        }
        match fate(&mut lock(&handle.channels), &handle.user, mark) {
            Fate::Skip => continue,
            Fate::Write => {}
        }
        if !handle.first_time(id.0.as_u128()) {
            written[i] = true;
            continue;
        }
        written[i] = queue(shared, &handle, text.clone(), feature);
    }
    if let Some(reply) = reply {
        reply.reply(DeliveryReport {
            written,
            acking: Vec::new(),
        });
    }
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
