//! The internal messages that cross the bus.
//!
//! A connector turns a valid client frame into an [`Envelope`] (server id, authenticated
//! sender, origin socket, feature, reference) and publishes it to the domain's processors.
//! A processor answers with [`ConnectorCommand`]s: frames to write to given sockets, or
//! sockets to close. Frames in commands are already serialised, so a connector writes them
//! as they are and many sockets share one buffer.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::channel::Channel;
use crate::frame::Feature;
use crate::ids::{DomainName, MessageId, SocketAddress, SocketId, UserId};

/// Most domain hops an envelope may take before it is dropped as looping.
pub const MAX_HOPS: u8 = 16;

/// One unit of work for a processor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    pub id: MessageId,
    /// The authenticated sender; never taken from the client's frame.
    pub from: UserId,
    /// The socket the frame came in on (where fetch results and errors go back).
    pub origin: SocketAddress,
    pub feature: Feature,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// The client's `confirmationEnabled`.
    pub confirm: bool,
    pub created_at: u64,
    #[serde(default)]
    pub hops: u8,
    /// The sending socket speaks the acknowledged protocol: its RELIABLE messages with a
    /// reference are answered with MESSAGE_ACCEPTED and de-duplicated by reference.
    #[serde(default, skip_serializing_if = "is_false")]
    pub ack: bool,
    pub body: Body,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// What an envelope asks for.
///
/// Externally tagged (`{"MESSAGE": {...}}`, `"USER_CONNECTED"`), unlike the commands: serde
/// buffers an internally tagged enum's fields before it knows the variant, and a buffered
/// field cannot become a `RawValue`, so an internally tagged body would not come back off
/// the bus.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Body {
    Message {
        to: UserId,
        content: Box<RawValue>,
    },
    GroupMessage {
        to: Vec<UserId>,
        content: Box<RawValue>,
    },
    /// A post to a channel: written to every socket that is a member of it.
    ChannelMessage {
        channel: Channel,
        content: Box<RawValue>,
    },
    CloseConnection {
        user: UserId,
    },
    FetchMissingMessages {
        count: u32,
    },
    /// The connector authenticated `from` on `origin`.
    UserConnected,
    /// `from`'s socket `origin` closed.
    UserDisconnected,
    /// `from` acknowledges these kept messages: they leave the store.
    Ack {
        ids: Vec<MessageId>,
    },
    /// `from` logged in an acking socket on `origin`: resend what is kept for them.
    Resume,
    /// `origin` subscribed to `channel` asking for a replay: the newest `count` kept posts
    /// numbered above `after`, then the end of the replay.
    ChannelHistory {
        channel: Channel,
        after: u64,
        count: u32,
    },
    /// Work for users of another domain, on its way there over domain links.
    Relay(Box<Relay>),
}

/// What one domain asks another to do for its users. `from` of the envelope is the user who
/// caused it; `origin` is a socket on the domain it came from, never written to elsewhere.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Relay {
    /// The domain whose users this is for.
    pub home: DomainName,
    /// Domains the envelope has passed through, the first is where it started.
    pub via: Vec<DomainName>,
    pub what: Relayed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Relayed {
    /// A ready frame for each of `to`: delivered, or stored if RELIABLE and no socket took it.
    Deliver {
        to: Vec<UserId>,
        message: RelayedMessage,
    },
    /// CLOSE_CONNECTION of `user`, asked by `from` (the master of `user`'s app).
    Close { user: UserId },
    /// The home domain has handled these RELIABLE relays: their origin may forget them.
    Receipt { ids: Vec<MessageId> },
    /// A post to `channel` by `from` of the envelope, taken by another domain: the home
    /// domain keeps (numbers) it as its own and writes it to its members.
    ChannelPost {
        channel: Channel,
        /// The post's `content`, JSON text.
        content: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
        created_at: u64,
    },
}

/// A message as [`StoredMessage`] holds it, for recipients not yet known by name.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RelayedMessage {
    pub id: MessageId,
    pub created_at: u64,
    pub frame: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm: Option<Confirm>,
}

impl RelayedMessage {
    /// The stored form for recipient `to`.
    pub fn to_user(&self, to: UserId) -> StoredMessage {
        StoredMessage {
            id: self.id,
            to,
            created_at: self.created_at,
            frame: self.frame.clone(),
            confirm: self.confirm.clone(),
        }
    }
}

/// One socket a command is for: the user is checked so a reused socket id is never written
/// to for someone else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub user: UserId,
    pub socket: SocketId,
}

/// A processor's instruction to one connector.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ConnectorCommand {
    /// Write `frame` to each target socket, in order after anything sent to it before. A
    /// frame with an `id` is written to a socket at most once, however often it is delivered
    /// (a processor that crashed after the write redelivers it).
    Deliver {
        targets: Vec<Target>,
        frame: String,
        feature: Feature,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<MessageId>,
        /// For acking sockets: the frame's place in the user's sequence, or the end of a
        /// resume. Sockets that do not ack ignore it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ack: Option<AckMark>,
    },
    /// Close each target socket with the given reason.
    Close {
        targets: Vec<Target>,
        reason: String,
    },
    /// Write a channel frame to member sockets; the connector applies each socket's
    /// subscription to it (echo, and the hold while a history replay runs).
    Post {
        targets: Vec<Target>,
        frame: String,
        feature: Feature,
        mark: PostMark,
    },
}

/// What a channel frame in a `Post` is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mark", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PostMark {
    /// A post as it happens; `seq` if the channel keeps it (RELIABLE).
    Live {
        channel: Channel,
        from: UserId,
        id: MessageId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
    },
    /// A kept post replayed for one socket's SUBSCRIBE, oldest first.
    History {
        channel: Channel,
        from: UserId,
        id: MessageId,
        seq: u64,
    },
    /// The end of that replay: live posts held back meanwhile may now be written.
    HistoryEnd { channel: Channel },
}

impl PostMark {
    pub fn channel(&self) -> &Channel {
        match self {
            PostMark::Live { channel, .. }
            | PostMark::History { channel, .. }
            | PostMark::HistoryEnd { channel } => channel,
        }
    }

    /// The post's message id (none for the end of a replay).
    pub fn id(&self) -> Option<MessageId> {
        match self {
            PostMark::Live { id, .. } | PostMark::History { id, .. } => Some(*id),
            PostMark::HistoryEnd { .. } => None,
        }
    }
}

/// What a `Deliver` means to an acking socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AckMark {
    /// The frame is kept under this per-user sequence number until the user acknowledges it;
    /// held back while the socket is resuming.
    Seq(u64),
    /// As `Seq`, for a frame that a resume or a fetch sends again: never held back.
    Resent(u64),
    /// The last frame of a resume: frames held back while it ran may now be written.
    ResumeEnd,
}

/// A connector's answer to a `Deliver` it was asked to report on: for each target, in order,
/// whether the frame was written to the socket, and whether the socket acknowledges (then a
/// RELIABLE frame with an id is written to it only with a sequence number, and stays kept
/// until acknowledged). `acking` is empty when no target acknowledges.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryReport {
    pub written: Vec<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acking: Vec<bool>,
}

impl DeliveryReport {
    pub fn any_written(&self) -> bool {
        self.written.iter().any(|w| *w)
    }
}

/// A message kept for a user who could not take it: delivered by fetch, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredMessage {
    pub id: MessageId,
    pub to: UserId,
    pub created_at: u64,
    /// The frame to write, ready for the wire.
    pub frame: String,
    /// Whom to confirm to, and with which reference, once it is delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm: Option<Confirm>,
}

/// A pending `MESSAGE_CONFIRMATION`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Confirm {
    pub to: UserId,
    pub reference: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ConnectorName;

    fn envelope(body: Body) -> Envelope {
        Envelope {
            id: MessageId::new(),
            from: UserId::parse("ANZ-1").unwrap(),
            origin: SocketAddress {
                connector: ConnectorName::new("connector-01"),
                socket: 7,
            },
            feature: Feature::Reliable,
            reference: Some("r1".into()),
            confirm: true,
            created_at: 1,
            hops: 2,
            ack: true,
            body,
        }
    }

    #[test]
    fn every_envelope_body_survives_json() {
        let to = UserId::parse("ANZ-2").unwrap();
        let content = || RawValue::from_string(r#"{"text":"hi","n":[1,2]}"#.into()).unwrap();
        let bodies = [
            Body::Message {
                to: to.clone(),
                content: content(),
            },
            Body::GroupMessage {
                to: vec![to.clone()],
                content: content(),
            },
            Body::ChannelMessage {
                channel: Channel::parse("ANZ/general").unwrap(),
                content: content(),
            },
            Body::CloseConnection { user: to.clone() },
            Body::FetchMissingMessages { count: 5 },
            Body::UserConnected,
            Body::UserDisconnected,
            Body::Relay(Box::new(Relay {
                home: DomainName::new("domain-03"),
                via: vec![DomainName::new("domain-01")],
                what: Relayed::Deliver {
                    to: vec![to.clone()],
                    message: RelayedMessage {
                        id: MessageId::new(),
                        created_at: 1,
                        frame: r#"{"type":"MESSAGE"}"#.into(),
                        confirm: Some(Confirm {
                            to: to.clone(),
                            reference: "r".into(),
                        }),
                    },
                },
            })),
            Body::Relay(Box::new(Relay {
                home: DomainName::new("domain-03"),
                via: vec![],
                what: Relayed::Close { user: to.clone() },
            })),
            Body::Relay(Box::new(Relay {
                home: DomainName::new("domain-02"),
                via: vec![DomainName::new("domain-01")],
                what: Relayed::ChannelPost {
                    channel: Channel::parse("ANZ/general").unwrap(),
                    content: r#"{"t":1}"#.into(),
                    reference: Some("r".into()),
                    created_at: 5,
                },
            })),
            Body::Relay(Box::new(Relay {
                home: DomainName::new("domain-01"),
                via: vec![DomainName::new("domain-03")],
                what: Relayed::Receipt {
                    ids: vec![MessageId::new()],
                },
            })),
            Body::Ack {
                ids: vec![MessageId::new()],
            },
            Body::Resume,
            Body::ChannelHistory {
                channel: Channel::parse("ANZ/general").unwrap(),
                after: 3,
                count: 10,
            },
        ];
        for body in bodies {
            let e = envelope(body);
            let json = serde_json::to_string(&e).unwrap();
            let back: Envelope = serde_json::from_str(&json).unwrap();
            assert_eq!(serde_json::to_string(&back).unwrap(), json);
            assert_eq!((back.id, back.hops), (e.id, 2));
        }
    }
}
