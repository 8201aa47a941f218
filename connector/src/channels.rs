//! The channel frames a connector answers itself: SUBSCRIBE, UNSUBSCRIBE and
//! CHANNEL_PRESENCE change or read the memberships kept in presence; CHANNEL_MESSAGE is checked
//! here and handed to processors. A socket remembers its own memberships (at most
//! [`MAX_CHANNELS_PER_SOCKET`]) so that closing it removes them.

use common::channel::Channel;
use common::ids::{SocketAddress, UserId};
use common::presence::{Presence, PresenceError};

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

/// The channels one socket is a member of.
#[derive(Default)]
pub(crate) struct Memberships {
    channels: Vec<Channel>,
}

impl Memberships {
    /// Joins `channel` (again: no change), within the per-socket bound.
    pub(crate) async fn join(
        &mut self,
        presence: &dyn Presence,
        user: &UserId,
        socket: &SocketAddress,
        channel: &Channel,
    ) -> Result<Result<(), Refusal>, PresenceError> {
        if let Err(refusal) = may_use(user, channel) {
            return Ok(Err(refusal));
        }
        if self.channels.contains(channel) {
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
