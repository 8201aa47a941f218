//! The channel frames a connector answers itself: SUBSCRIBE, UNSUBSCRIBE and
//! CHANNEL_PRESENCE change or read the memberships kept in presence; CHANNEL_MESSAGE is checked
//! here and handed to processors; CHANNEL_ADD and CHANNEL_REMOVE change who may use a managed
//! channel (the per-app policy, decided in [`may_use`]). A socket remembers its own memberships (at most
//! [`MAX_CHANNELS_PER_SOCKET`]) so that closing it removes them.

use common::channel::Channel;
use common::config::ChannelPolicy;
use common::ids::{SocketAddress, UserId};
use common::network::Network;
use common::presence::{Presence, PresenceError};

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

/// The channels one socket is a member of.
#[derive(Default)]
pub(crate) struct Memberships {
    channels: Vec<Channel>,
}

impl Memberships {
    /// Joins `channel` (again: no change), within the per-socket bound.
    pub(crate) async fn join(
        &mut self,
        network: &Network,
        presence: &dyn Presence,
        user: &UserId,
        socket: &SocketAddress,
        channel: &Channel,
    ) -> Result<Result<(), Refusal>, PresenceError> {
        if let Err(refusal) = may_use(network, presence, user, channel).await? {
            return Ok(Err(refusal));
        }
        if self.channels.contains(channel) {
            // Joined again in presence: a CHANNEL_REMOVE may have ended the membership there.
            presence.join(channel, user, socket).await?;
            return Ok(Ok(()));
        }
        if self.channels.len() >= MAX_CHANNELS_PER_SOCKET {
            let detail =
                format!("a socket may be a member of at most {MAX_CHANNELS_PER_SOCKET} channels");
            return Ok(Err(("TOO_MANY_CHANNELS", detail)));
        }
        presence.join(channel, user, socket).await?;
        self.channels.push(channel.clone());
        Ok(Ok(()))
    }

    /// Leaves `channel` (not a member: no change).
    pub(crate) async fn leave(
        &mut self,
        presence: &dyn Presence,
        user: &UserId,
        socket: &SocketAddress,
        channel: &Channel,
    ) -> Result<(), PresenceError> {
        if let Some(i) = self.channels.iter().position(|c| c == channel) {
            presence.leave(channel, user, socket).await?;
            self.channels.swap_remove(i);
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
        let mut result = Ok(());
        for channel in std::mem::take(&mut self.channels) {
            if let Err(e) = presence.leave(&channel, user, socket).await {
                result = result.and(Err(e));
            }
        }
        result
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
