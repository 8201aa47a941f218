//! Client frames: what a client may send, and the frames the server writes back.
//!
//! Inbound text is parsed once, here, into a [`ClientFrame`]; anything wrong becomes a
//! [`FrameError`] whose `reason()` is the stable code of the `INVALID_MESSAGE` frame. Outbound
//! frames are `{"type","data","reference"?}` with nulls omitted, built by the `out_*` functions
//! so the wire shape lives in one file.

use std::borrow::Cow;
use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::channel::{Channel, ChannelError, MAX_CHANNEL_LEN};
use crate::ids::{IdError, MessageId, UserId};

/// Every frame type of the protocol, with its wire name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MessageType {
    AuthClient,
    AuthClientReply,
    AuthRequired,
    Message,
    MessageConfirmation,
    GroupMessage,
    CloseConnection,
    FetchMissingMessagesRequest,
    FetchMissingMessagesComplete,
    UserConnected,
    UserDisconnected,
    InvalidMessage,
    GeneralError,
    // The acknowledged protocol (additive: only sockets that opt in at AUTH_CLIENT see them).
    Ack,
    MessageAccepted,
    ResumeComplete,
    // Channels (additive).
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    ChannelMessage,
    ChannelPresence,
    ChannelAdd,
    ChannelAdded,
    ChannelRemove,
    ChannelRemoved,
    ChannelHistoryComplete,
    // Internal types of the original system: known, so a client sending one is told it is
    // forbidden rather than unknown.
    Any,
    GroupConnectorMessage,
    MessageStateChanged,
    DeliverFailed,
    InternalMessage,
}

impl MessageType {
    const ALL: [MessageType; 32] = [
        MessageType::AuthClient,
        MessageType::AuthClientReply,
        MessageType::AuthRequired,
        MessageType::Message,
        MessageType::MessageConfirmation,
        MessageType::GroupMessage,
        MessageType::CloseConnection,
        MessageType::FetchMissingMessagesRequest,
        MessageType::FetchMissingMessagesComplete,
        MessageType::UserConnected,
        MessageType::UserDisconnected,
        MessageType::InvalidMessage,
        MessageType::GeneralError,
        MessageType::Ack,
        MessageType::MessageAccepted,
        MessageType::ResumeComplete,
        MessageType::Subscribe,
        MessageType::Subscribed,
        MessageType::Unsubscribe,
        MessageType::Unsubscribed,
        MessageType::ChannelMessage,
        MessageType::ChannelPresence,
        MessageType::ChannelAdd,
        MessageType::ChannelAdded,
        MessageType::ChannelRemove,
        MessageType::ChannelRemoved,
        MessageType::ChannelHistoryComplete,
        MessageType::Any,
        MessageType::GroupConnectorMessage,
        MessageType::MessageStateChanged,
        MessageType::DeliverFailed,
        MessageType::InternalMessage,
    ];

    /// The wire name, e.g. `FETCH_MISSING_MESSAGES_REQUEST`.
    pub fn wire_name(self) -> &'static str {
        match self {
            MessageType::AuthClient => "AUTH_CLIENT",
            MessageType::AuthClientReply => "AUTH_CLIENT_REPLY",
            MessageType::AuthRequired => "AUTH_REQUIRED",
            MessageType::Message => "MESSAGE",
            MessageType::MessageConfirmation => "MESSAGE_CONFIRMATION",
            MessageType::GroupMessage => "GROUP_MESSAGE",
            MessageType::CloseConnection => "CLOSE_CONNECTION",
            MessageType::FetchMissingMessagesRequest => "FETCH_MISSING_MESSAGES_REQUEST",
            MessageType::FetchMissingMessagesComplete => "FETCH_MISSING_MESSAGES_COMPLETE",
            MessageType::UserConnected => "USER_CONNECTED",
            MessageType::UserDisconnected => "USER_DISCONNECTED",
            MessageType::InvalidMessage => "INVALID_MESSAGE",
            MessageType::GeneralError => "GENERAL_ERROR",
            MessageType::Ack => "ACK",
            MessageType::MessageAccepted => "MESSAGE_ACCEPTED",
            MessageType::ResumeComplete => "RESUME_COMPLETE",
            MessageType::Subscribe => "SUBSCRIBE",
            MessageType::Subscribed => "SUBSCRIBED",
            MessageType::Unsubscribe => "UNSUBSCRIBE",
            MessageType::Unsubscribed => "UNSUBSCRIBED",
            MessageType::ChannelMessage => "CHANNEL_MESSAGE",
            MessageType::ChannelPresence => "CHANNEL_PRESENCE",
            MessageType::ChannelAdd => "CHANNEL_ADD",
            MessageType::ChannelAdded => "CHANNEL_ADDED",
            MessageType::ChannelRemove => "CHANNEL_REMOVE",
            MessageType::ChannelRemoved => "CHANNEL_REMOVED",
            MessageType::ChannelHistoryComplete => "CHANNEL_HISTORY_COMPLETE",
            MessageType::Any => "ANY",
            MessageType::GroupConnectorMessage => "GROUP_CONNECTOR_MESSAGE",
            MessageType::MessageStateChanged => "MESSAGE_STATE_CHANGED",
            MessageType::DeliverFailed => "DELIVER_FAILED",
            MessageType::InternalMessage => "INTERNAL_MESSAGE",
        }
    }

    pub fn from_wire(name: &str) -> Option<MessageType> {
        Self::ALL.into_iter().find(|t| t.wire_name() == name)
    }

    /// The types a client may send.
    pub fn client_may_send(self) -> bool {
        matches!(
            self,
            MessageType::AuthClient
                | MessageType::Message
                | MessageType::GroupMessage
                | MessageType::CloseConnection
                | MessageType::FetchMissingMessagesRequest
                | MessageType::Ack
                | MessageType::Subscribe
                | MessageType::Unsubscribe
                | MessageType::ChannelMessage
                | MessageType::ChannelPresence
                | MessageType::ChannelAdd
                | MessageType::ChannelRemove
        )
    }
}

/// `FAST` travels in memory only; `RELIABLE` (the default) is never lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Feature {
    Fast,
    #[default]
    Reliable,
}

impl Feature {
    /// As on the wire: `FAST` or `RELIABLE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Feature::Fast => "FAST",
            Feature::Reliable => "RELIABLE",
        }
    }

    /// The metrics label: `fast` or `reliable`.
    pub fn label(self) -> &'static str {
        match self {
            Feature::Fast => "fast",
            Feature::Reliable => "reliable",
        }
    }
}

/// The wire type of an outbound frame built here (`{"type":"MESSAGE",...}`), for metrics;
/// `UNKNOWN` for any other text.
pub fn outbound_type(frame: &str) -> &'static str {
    frame
        .strip_prefix(r#"{"type":""#)
        .and_then(|rest| rest.split_once('"'))
        .and_then(|(kind, _)| MessageType::from_wire(kind))
        .map_or("UNKNOWN", MessageType::wire_name)
}

/// Longest `reference` accepted, in bytes.
pub const MAX_REFERENCE_LEN: usize = 256;

/// Most message ids one `ACK {ids}` may name.
pub const MAX_ACK_IDS: usize = 1000;

/// Limits applied while parsing.
#[derive(Debug, Clone, Copy)]
pub struct ParseLimits {
    /// Most recipients in one GROUP_MESSAGE.
    pub max_group_size: usize,
    /// Longest `reference` accepted, in bytes.
    pub max_reference_len: usize,
}

impl Default for ParseLimits {
    fn default() -> Self {
        ParseLimits {
            max_group_size: 1000,
            max_reference_len: MAX_REFERENCE_LEN,
        }
    }
}

/// What was wrong with a client frame. `reason()` is the wire code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("the frame is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("field `{0}` is missing")]
    MissingField(&'static str),
    #[error("field `{field}` {expected}")]
    InvalidField {
        field: &'static str,
        expected: &'static str,
    },
    #[error("unknown message type `{0}`")]
    UnknownType(String),
    #[error("message type {} may not be sent by a client", .0.wire_name())]
    ForbiddenType(MessageType),
    #[error("field `{field}`: user id `{id}` is reserved")]
    ReservedId { field: &'static str, id: String },
    #[error("field `{field}`: `{id}` is not a user id of the form <app>-<number>")]
    InvalidUserId { field: &'static str, id: String },
    #[error("field `channel`: `{name}` {why}")]
    InvalidChannel { name: String, why: ChannelError },
    #[error("binary frames are not accepted; send JSON text frames")]
    Binary,
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("more than {0} frames per second; this frame was not processed")]
    RateLimited(u32),
}

impl FrameError {
    /// The stable reason code carried in `INVALID_MESSAGE.data.reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            FrameError::InvalidJson(_) => "INVALID_JSON",
            FrameError::MissingField(_) => "MISSING_FIELD",
            FrameError::InvalidField { .. } => "INVALID_FIELD",
            FrameError::UnknownType(_) => "UNKNOWN_TYPE",
            FrameError::ForbiddenType(_) => "FORBIDDEN_TYPE",
            FrameError::ReservedId { .. } => "RESERVED_ID",
            FrameError::InvalidUserId { .. } => "INVALID_USER_ID",
            FrameError::InvalidChannel { .. } => "INVALID_CHANNEL",
            FrameError::Binary => "BINARY_FRAME",
            FrameError::TooLarge { .. } => "FRAME_TOO_LARGE",
            FrameError::RateLimited(_) => "RATE_LIMITED",
        }
    }

    /// The field the error is about, if any.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            FrameError::MissingField(f) => Some(f),
            FrameError::InvalidField { field, .. }
            | FrameError::ReservedId { field, .. }
            | FrameError::InvalidUserId { field, .. } => Some(field),
            FrameError::InvalidChannel { .. } => Some("channel"),
            _ => None,
        }
    }
}

/// A valid client frame, with the top-level options every frame may carry.
#[derive(Debug)]
pub struct ClientFrame {
    pub body: ClientBody,
    pub reference: Option<String>,
    pub feature: Feature,
    pub confirmation_enabled: bool,
}

/// The typed `data` of each client frame type.
#[derive(Debug)]
pub enum ClientBody {
    AuthClient {
        app_id: String,
        user_id: String,
        token: Option<String>,
        /// The socket speaks the acknowledged protocol (`"ack": true`).
        ack: bool,
    },
    Message {
        to: UserId,
        content: Box<RawValue>,
    },
    GroupMessage {
        to: Vec<UserId>,
        content: Box<RawValue>,
    },
    CloseConnection {
        user_id: UserId,
    },
    FetchMissingMessages {
        count: u32,
    },
    /// `ACK {upTo?, ids?}`: at least one of the two.
    Ack {
        up_to: Option<u64>,
        ids: Vec<MessageId>,
    },
    Subscribe {
        channel: Channel,
        options: SubscribeOptions,
    },
    Unsubscribe {
        channel: Channel,
    },
    ChannelMessage {
        channel: Channel,
        content: Box<RawValue>,
    },
    ChannelPresence {
        channel: Channel,
    },
    /// A master user chooses `user_id` as a member of a managed channel (`CHANNEL_ADD`), or
    /// takes them off (`CHANNEL_REMOVE`, `added: false`).
    ChannelMember {
        added: bool,
        channel: Channel,
        user_id: UserId,
    },
}

/// What a SUBSCRIBE asks for beyond the membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// The subscribing socket gets its own user's posts (default true).
    pub echo: bool,
    /// Replay up to this many of the newest kept posts first.
    pub history: Option<u32>,
    /// Replay the kept posts numbered above this first (a resume).
    pub after: Option<u64>,
}

impl SubscribeOptions {
    /// True if the subscription starts with a replay of kept posts.
    pub fn replays(&self) -> bool {
        self.history.is_some() || self.after.is_some()
    }
}

impl ClientBody {
    pub fn message_type(&self) -> MessageType {
        match self {
            ClientBody::AuthClient { .. } => MessageType::AuthClient,
            ClientBody::Message { .. } => MessageType::Message,
            ClientBody::GroupMessage { .. } => MessageType::GroupMessage,
            ClientBody::CloseConnection { .. } => MessageType::CloseConnection,
            ClientBody::FetchMissingMessages { .. } => MessageType::FetchMissingMessagesRequest,
            ClientBody::Ack { .. } => MessageType::Ack,
            ClientBody::Subscribe { .. } => MessageType::Subscribe,
            ClientBody::Unsubscribe { .. } => MessageType::Unsubscribe,
            ClientBody::ChannelMessage { .. } => MessageType::ChannelMessage,
            ClientBody::ChannelPresence { .. } => MessageType::ChannelPresence,
            ClientBody::ChannelMember { added: true, .. } => MessageType::ChannelAdd,
            ClientBody::ChannelMember { added: false, .. } => MessageType::ChannelRemove,
        }
    }
}

/// A frame that failed to parse, with the `reference` it carried if that much was readable
/// (so the error frame can echo it).
#[derive(Debug)]
pub struct Rejected {
    pub error: FrameError,
    pub reference: Option<String>,
}

#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    reference: Option<&'a RawValue>,
    #[serde(borrow, default)]
    feature: Option<&'a RawValue>,
    #[serde(rename = "confirmationEnabled", borrow, default)]
    confirmation_enabled: Option<&'a RawValue>,
}

/// Parses one client text frame.
pub fn parse_client_frame(text: &str, limits: &ParseLimits) -> Result<ClientFrame, Rejected> {
    // serde would read a JSON array into the struct field by field: only objects are frames.
    if !is_object(text) {
        let error = match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => FrameError::InvalidField {
                field: "frame",
                expected: "must be a JSON object",
            },
            Err(e) => FrameError::InvalidJson(e.to_string()),
        };
        return Err(Rejected {
            error,
            reference: None,
        });
    }
    let raw: RawFrame<'_> = serde_json::from_str(text).map_err(|_| Rejected {
        error: unreadable_object(text),
        reference: None,
    })?;
    let reference =
        optional::<String>(raw.reference, "reference", "must be a string").map_err(|error| {
            Rejected {
                error,
                reference: None,
            }
        })?;
    let reject = |error| Rejected {
        error,
        reference: reference.clone(),
    };
    if reference
        .as_ref()
        .is_some_and(|r| r.len() > limits.max_reference_len)
    {
        return Err(reject(FrameError::InvalidField {
            field: "reference",
            expected: "is longer than 256 bytes",
        }));
    }
    let kind: Cow<'_, str> = required(raw.kind, "type", "must be a string").map_err(reject)?;
    let message_type = MessageType::from_wire(&kind)
        .ok_or_else(|| reject(FrameError::UnknownType(kind.into())))?;
    if !message_type.client_may_send() {
        return Err(reject(FrameError::ForbiddenType(message_type)));
    }
    let feature = optional::<Feature>(raw.feature, "feature", "must be \"RELIABLE\" or \"FAST\"")
        .map_err(reject)?
        .unwrap_or_default();
    let confirmation_enabled = optional::<bool>(
        raw.confirmation_enabled,
        "confirmationEnabled",
        "must be a boolean",
    )
    .map_err(reject)?
    .unwrap_or(true);
    let data = raw
        .data
        .ok_or(FrameError::MissingField("data"))
        .map_err(reject)?;
    let body = parse_body(message_type, data, limits).map_err(reject)?;
    Ok(ClientFrame {
        body,
        reference,
        feature,
        confirmation_enabled,
    })
}

#[derive(Deserialize, Default)]
struct RawData<'a> {
    #[serde(rename = "appId", borrow, default)]
    app_id: Option<&'a RawValue>,
    #[serde(rename = "userId", borrow, default)]
    user_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    token: Option<&'a RawValue>,
    #[serde(borrow, default)]
    to: Option<&'a RawValue>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    count: Option<&'a RawValue>,
    #[serde(borrow, default)]
    ack: Option<&'a RawValue>,
    #[serde(rename = "upTo", borrow, default)]
    up_to: Option<&'a RawValue>,
    #[serde(borrow, default)]
    ids: Option<&'a RawValue>,
    #[serde(borrow, default)]
    channel: Option<&'a RawValue>,
    #[serde(borrow, default)]
    echo: Option<&'a RawValue>,
    #[serde(borrow, default)]
    history: Option<&'a RawValue>,
    #[serde(borrow, default)]
    after: Option<&'a RawValue>,
}

/// Why text that starts like an object did not read as a frame. Every key of `RawFrame` takes
/// any JSON, so once the text is valid JSON the only error left is a repeated key; serde stops
/// at the first repeated key, so the syntax is checked over the whole text first (a repeated
/// key followed by broken JSON is `INVALID_JSON`, as the client needs to hear).
fn unreadable_object(text: &str) -> FrameError {
    match serde_json::from_str::<serde::de::IgnoredAny>(text) {
        Err(e) => FrameError::InvalidJson(e.to_string()),
        Ok(_) => FrameError::InvalidField {
            field: "frame",
            expected: "must not repeat a key",
        },
    }
}

/// True if the JSON text is an object (its first non-blank character is `{`).
fn is_object(text: &str) -> bool {
    text.trim_start().starts_with('{')
}

fn parse_body(
    message_type: MessageType,
    data: &RawValue,
    limits: &ParseLimits,
) -> Result<ClientBody, FrameError> {
    if !is_object(data.get()) {
        return Err(FrameError::InvalidField {
            field: "data",
            expected: "must be an object",
        });
    }
    // `data` is valid JSON already (it was read as part of the frame): the one error left
    // here is a repeated key.
    let data: RawData<'_> =
        serde_json::from_str(data.get()).map_err(|_| FrameError::InvalidField {
            field: "data",
            expected: "must not repeat a key",
        })?;
    match message_type {
        MessageType::AuthClient => Ok(ClientBody::AuthClient {
            app_id: required::<String>(data.app_id, "appId", "must be a string")?,
            user_id: required::<String>(data.user_id, "userId", "must be a string")?,
            token: optional::<String>(data.token, "token", "must be a string")?,
            ack: optional::<bool>(data.ack, "ack", "must be a boolean")?.unwrap_or(false),
        }),
        MessageType::Message => Ok(ClientBody::Message {
            to: user_id(
                &required::<Cow<'_, str>>(data.to, "to", "must be a user id string")?,
                "to",
            )?,
            content: content(data.content)?,
        }),
        MessageType::GroupMessage => {
            let raw: Vec<Cow<'_, str>> =
                required(data.to, "to", "must be an array of user id strings")?;
            if raw.is_empty() {
                return Err(FrameError::InvalidField {
                    field: "to",
                    expected: "must name at least one user",
                });
            }
            // The limit counts the array as sent (docs/protocol.md 4.3), so the work below is
            // bounded by it; duplicates are dropped through a set, not a scan per id.
            if raw.len() > limits.max_group_size {
                return Err(FrameError::InvalidField {
                    field: "to",
                    expected: "names more users than the group size limit (connector.max_group_size)",
                });
            }
            let mut seen: HashSet<&str> = HashSet::with_capacity(raw.len());
            let mut to: Vec<UserId> = Vec::with_capacity(raw.len());
            for text in &raw {
                let id = user_id(text, "to")?;
                if seen.insert(text) {
                    to.push(id);
                }
            }
            Ok(ClientBody::GroupMessage {
                to,
                content: content(data.content)?,
            })
        }
        MessageType::CloseConnection => Ok(ClientBody::CloseConnection {
            user_id: user_id(
                &required::<Cow<'_, str>>(data.user_id, "userId", "must be a user id string")?,
                "userId",
            )?,
        }),
        MessageType::FetchMissingMessagesRequest => {
            let count: i64 = required(data.count, "count", "must be an integer")?;
            if count <= 0 {
                return Err(FrameError::InvalidField {
                    field: "count",
                    expected: "must be greater than 0",
                });
            }
            Ok(ClientBody::FetchMissingMessages {
                count: count.min(u32::MAX as i64) as u32,
            })
        }
        MessageType::Ack => ack_body(&data),
        MessageType::Subscribe => Ok(ClientBody::Subscribe {
            channel: channel(data.channel)?,
            options: subscribe_options(&data)?,
        }),
        MessageType::Unsubscribe => Ok(ClientBody::Unsubscribe {
            channel: channel(data.channel)?,
        }),
        MessageType::ChannelMessage => Ok(ClientBody::ChannelMessage {
            channel: channel(data.channel)?,
            content: content(data.content)?,
        }),
        MessageType::ChannelPresence => Ok(ClientBody::ChannelPresence {
            channel: channel(data.channel)?,
        }),
        MessageType::ChannelAdd | MessageType::ChannelRemove => Ok(ClientBody::ChannelMember {
            added: message_type == MessageType::ChannelAdd,
            channel: channel(data.channel)?,
            user_id: user_id(
                &required::<Cow<'_, str>>(data.user_id, "userId", "must be a user id string")?,
                "userId",
            )?,
        }),
        other => Err(FrameError::ForbiddenType(other)),
    }
}

/// `ACK {upTo?, ids?}`: a sequence number, message ids, or both; not neither.
fn ack_body(data: &RawData<'_>) -> Result<ClientBody, FrameError> {
    let up_to = optional::<u64>(data.up_to, "upTo", "must be a non-negative integer")?;
    const IDS: &str = "must be an array of message id strings";
    let raw: Option<Vec<Cow<'_, str>>> = optional(data.ids, "ids", IDS)?;
    let raw = raw.unwrap_or_default();
    if raw.len() > MAX_ACK_IDS {
        return Err(FrameError::InvalidField {
            field: "ids",
            expected: "names more than 1000 message ids",
        });
    }
    let ids = raw
        .iter()
        .map(|id| uuid::Uuid::parse_str(id).map(MessageId))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| FrameError::InvalidField {
            field: "ids",
            expected: IDS,
        })?;
    if up_to.is_none() && ids.is_empty() {
        return Err(FrameError::MissingField("upTo"));
    }
    Ok(ClientBody::Ack { up_to, ids })
}

/// `SUBSCRIBE`'s `echo`, and `history` or `after` (not both).
fn subscribe_options(data: &RawData<'_>) -> Result<SubscribeOptions, FrameError> {
    const COUNT: &str = "must be a non-negative integer";
    let history = optional::<u64>(data.history, "history", COUNT)?;
    let after = optional::<u64>(data.after, "after", COUNT)?;
    if history.is_some() && after.is_some() {
        return Err(FrameError::InvalidField {
            field: "after",
            expected: "must not be given with history",
        });
    }
    Ok(SubscribeOptions {
        echo: optional::<bool>(data.echo, "echo", "must be a boolean")?.unwrap_or(true),
        history: history.map(|n| n.min(u32::MAX as u64) as u32),
        after,
    })
}

fn channel(raw: Option<&RawValue>) -> Result<Channel, FrameError> {
    let name: Cow<'_, str> = required(raw, "channel", "must be a channel name string")?;
    Channel::parse(&name).map_err(|why| FrameError::InvalidChannel {
        name: name.chars().take(MAX_CHANNEL_LEN).collect(),
        why,
    })
}

fn content(raw: Option<&RawValue>) -> Result<Box<RawValue>, FrameError> {
    match raw {
        Some(raw) if raw.get() != "null" => Ok(raw.to_owned()),
        _ => Err(FrameError::MissingField("content")),
    }
}

fn user_id(raw: &str, field: &'static str) -> Result<UserId, FrameError> {
    UserId::parse(raw).map_err(|e| match e {
        IdError::Reserved(id) => FrameError::ReservedId { field, id },
        IdError::Malformed(id) => FrameError::InvalidUserId { field, id },
    })
}

/// A field that must be present and non-null.
fn required<'a, T: Deserialize<'a>>(
    raw: Option<&'a RawValue>,
    field: &'static str,
    expected: &'static str,
) -> Result<T, FrameError> {
    optional(raw, field, expected)?.ok_or(FrameError::MissingField(field))
}

/// A field that may be absent or null.
fn optional<'a, T: Deserialize<'a>>(
    raw: Option<&'a RawValue>,
    field: &'static str,
    expected: &'static str,
) -> Result<Option<T>, FrameError> {
    match raw {
        None => Ok(None),
        Some(raw) if raw.get() == "null" => Ok(None),
        Some(raw) => serde_json::from_str(raw.get())
            .map(Some)
            .map_err(|_| FrameError::InvalidField { field, expected }),
    }
}

// ---- outbound frames -------------------------------------------------------------------

#[derive(Serialize)]
struct Out<'a, D: Serialize> {
    #[serde(rename = "type")]
    kind: MessageType,
    data: D,
    #[serde(skip_serializing_if = "Option::is_none")]
    reference: Option<&'a str>,
}

fn write<D: Serialize>(kind: MessageType, data: D, reference: Option<&str>) -> String {
    serde_json::to_string(&Out {
        kind,
        data,
        reference,
    })
    .expect("outbound frames are plain data and always serialise")
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AuthReply<'a> {
    app_id: &'a str,
    user_id: &'a str,
    is_authenticated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    home_domain: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    home_url: Option<&'a str>,
}

/// `AUTH_CLIENT_REPLY {appId, userId, isAuthenticated, reason?}`.
pub fn out_auth_reply(app_id: &str, user_id: &str, ok: bool, reason: Option<&str>) -> String {
    write(
        MessageType::AuthClientReply,
        AuthReply {
            app_id,
            user_id,
            is_authenticated: ok,
            reason,
            home_domain: None,
            home_url: None,
        },
        None,
    )
}

/// `AUTH_CLIENT_REPLY {appId, userId, isAuthenticated: false, reason: "WRONG_DOMAIN",
/// homeDomain, homeUrl?}`: the user lives on another domain, and this is where to connect.
pub fn out_auth_wrong_domain(
    app_id: &str,
    user_id: &str,
    home_domain: &str,
    home_url: Option<&str>,
) -> String {
    write(
        MessageType::AuthClientReply,
        AuthReply {
            app_id,
            user_id,
            is_authenticated: false,
            reason: Some("WRONG_DOMAIN"),
            home_domain: Some(home_domain),
            home_url,
        },
        None,
    )
}

/// `AUTH_CLIENT_REPLY {appId, userId, isAuthenticated: true, ack: true}`: the login of a
/// socket that asked for the acknowledged protocol (an older server never sends `ack`).
pub fn out_auth_acked(app_id: &str, user_id: &str) -> String {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Acked<'a> {
        app_id: &'a str,
        user_id: &'a str,
        is_authenticated: bool,
        ack: bool,
    }
    write(
        MessageType::AuthClientReply,
        Acked {
            app_id,
            user_id,
            is_authenticated: true,
            ack: true,
        },
        None,
    )
}

/// `AUTH_REQUIRED {}`, echoing the frame's reference.
pub fn out_auth_required(reference: Option<&str>) -> String {
    write(MessageType::AuthRequired, Empty {}, reference)
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct Forward<'a> {
    from: &'a str,
    content: &'a RawValue,
}

/// `MESSAGE {from, content}` with the sender's reference at top level.
pub fn out_message(from: &UserId, content: &RawValue, reference: Option<&str>) -> String {
    write(
        MessageType::Message,
        Forward {
            from: from.as_str(),
            content,
        },
        reference,
    )
}

#[derive(Serialize)]
struct Reference<'a> {
    reference: &'a str,
}

/// `MESSAGE_CONFIRMATION {reference}` (the reference is inside data, as in the original).
pub fn out_confirmation(reference: &str) -> String {
    write(
        MessageType::MessageConfirmation,
        Reference { reference },
        None,
    )
}

/// `MESSAGE_ACCEPTED {reference}`: the sender's RELIABLE message is safe with the server.
pub fn out_accepted(reference: &str) -> String {
    write(MessageType::MessageAccepted, Reference { reference }, None)
}

/// `RESUME_COMPLETE {resent}`: everything kept for an acking socket at login was resent.
pub fn out_resume_complete(resent: u64) -> String {
    #[derive(Serialize)]
    struct Resent {
        resent: u64,
    }
    write(MessageType::ResumeComplete, Resent { resent }, None)
}

/// The frame as an acking socket gets it: `seq` and `id` added at the top level. `frame` is
/// one of this file's outbound frames, so a JSON object ending in `}`.
pub fn with_seq(frame: &str, seq: u64, id: MessageId) -> String {
    let body = frame.strip_suffix('}').unwrap_or(frame);
    format!("{body},\"seq\":{seq},\"id\":\"{id}\"}}")
}

#[derive(Serialize)]
struct ChannelOnly<'a> {
    channel: &'a str,
}

/// `SUBSCRIBED {channel}` or `UNSUBSCRIBED {channel}`, echoing the frame's reference.
pub fn out_membership(joined: bool, channel: &Channel, reference: Option<&str>) -> String {
    let kind = if joined {
        MessageType::Subscribed
    } else {
        MessageType::Unsubscribed
    };
    write(
        kind,
        ChannelOnly {
            channel: channel.as_str(),
        },
        reference,
    )
}

/// `CHANNEL_ADDED {channel, userId}` or `CHANNEL_REMOVED {channel, userId}`, to the master
/// user, echoing the frame's reference.
pub fn out_channel_member(
    added: bool,
    channel: &Channel,
    user: &UserId,
    reference: Option<&str>,
) -> String {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Member<'a> {
        channel: &'a str,
        user_id: &'a str,
    }
    let kind = if added {
        MessageType::ChannelAdded
    } else {
        MessageType::ChannelRemoved
    };
    let member = Member {
        channel: channel.as_str(),
        user_id: user.as_str(),
    };
    write(kind, member, reference)
}

/// `CHANNEL_MESSAGE {channel, from, content, seq?}` with the sender's reference at top level;
/// `seq` is the post's number in the channel, for posts the channel keeps.
pub fn out_channel_message(
    channel: &Channel,
    from: &UserId,
    content: &RawValue,
    seq: Option<u64>,
    reference: Option<&str>,
) -> String {
    #[derive(Serialize)]
    struct Posted<'a> {
        channel: &'a str,
        from: &'a str,
        content: &'a RawValue,
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
    }
    write(
        MessageType::ChannelMessage,
        Posted {
            channel: channel.as_str(),
            from: from.as_str(),
            content,
            seq,
        },
        reference,
    )
}

/// `CHANNEL_HISTORY_COMPLETE {channel, replayed, lastSeq}`: the replay a SUBSCRIBE asked for
/// is over; `lastSeq` is the number of the last post replayed (0 if none).
pub fn out_channel_history_complete(
    channel: &Channel,
    replayed: u64,
    last_seq: u64,
    reference: Option<&str>,
) -> String {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Complete<'a> {
        channel: &'a str,
        replayed: u64,
        last_seq: u64,
    }
    write(
        MessageType::ChannelHistoryComplete,
        Complete {
            channel: channel.as_str(),
            replayed,
            last_seq,
        },
        reference,
    )
}

/// `CHANNEL_PRESENCE {channel, members}`: the users with at least one socket in the channel.
pub fn out_channel_presence(
    channel: &Channel,
    members: &[UserId],
    reference: Option<&str>,
) -> String {
    #[derive(Serialize)]
    struct Members<'a> {
        channel: &'a str,
        members: Vec<&'a str>,
    }
    write(
        MessageType::ChannelPresence,
        Members {
            channel: channel.as_str(),
            members: members.iter().map(UserId::as_str).collect(),
        },
        reference,
    )
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UserEvent<'a> {
    user_id: &'a str,
}

/// `USER_CONNECTED {userId}` or `USER_DISCONNECTED {userId}`, for a master user.
pub fn out_user_event(connected: bool, user: &UserId) -> String {
    let kind = if connected {
        MessageType::UserConnected
    } else {
        MessageType::UserDisconnected
    };
    write(
        kind,
        UserEvent {
            user_id: user.as_str(),
        },
        None,
    )
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FetchComplete {
    left_missing_count: u64,
}

/// `FETCH_MISSING_MESSAGES_COMPLETE {leftMissingCount}`.
pub fn out_fetch_complete(left_missing_count: u64, reference: Option<&str>) -> String {
    write(
        MessageType::FetchMissingMessagesComplete,
        FetchComplete { left_missing_count },
        reference,
    )
}

#[derive(Serialize)]
struct ErrorData<'a> {
    reason: &'a str,
    detail: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

/// `INVALID_MESSAGE {reason, detail, field?}`: the client sent something wrong.
pub fn out_invalid(error: &FrameError, reference: Option<&str>) -> String {
    write(
        MessageType::InvalidMessage,
        ErrorData {
            reason: error.reason(),
            detail: &error.to_string(),
            field: error.field(),
        },
        reference,
    )
}

/// `INVALID_MESSAGE` with a reason decided outside parsing (e.g. `NOT_MASTER`).
pub fn out_invalid_reason(reason: &str, detail: &str, reference: Option<&str>) -> String {
    write(
        MessageType::InvalidMessage,
        ErrorData {
            reason,
            detail,
            field: None,
        },
        reference,
    )
}

/// `GENERAL_ERROR {reason, detail}`: the server could not do what a valid frame asked.
pub fn out_general_error(reason: &str, detail: &str, reference: Option<&str>) -> String {
    write(
        MessageType::GeneralError,
        ErrorData {
            reason,
            detail,
            field: None,
        },
        reference,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ClientFrame, FrameError> {
        parse_client_frame(text, &ParseLimits::default()).map_err(|r| r.error)
    }

    #[test]
    fn outbound_type_names_the_frame_built_here() {
        assert_eq!(
            outbound_type(&out_confirmation("r")),
            "MESSAGE_CONFIRMATION"
        );
        assert_eq!(outbound_type(r#"{"type":"NOPE"}"#), "UNKNOWN");
        assert_eq!(outbound_type("not json"), "UNKNOWN");
    }

    #[test]
    fn message_frame_parses_with_defaults() {
        let f = parse(r#"{"type":"MESSAGE","data":{"to":"ANZ-1","content":"hi"}}"#).unwrap();
        assert_eq!(f.feature, Feature::Reliable);
        assert!(f.confirmation_enabled);
        assert!(f.reference.is_none());
        match f.body {
            ClientBody::Message { to, content } => {
                assert_eq!(to.as_str(), "ANZ-1");
                assert_eq!(content.get(), "\"hi\"");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn explicit_null_feature_means_reliable() {
        let f = parse(r#"{"type":"MESSAGE","feature":null,"data":{"to":"ANZ-1","content":1}}"#)
            .unwrap();
        assert_eq!(f.feature, Feature::Reliable);
    }

    #[test]
    fn each_bad_input_has_its_reason() {
        let cases = [
            ("{not json", "INVALID_JSON"),
            ("[1,2]", "INVALID_FIELD"),
            (r#"{"data":{}}"#, "MISSING_FIELD"),
            (r#"{"type":5,"data":{}}"#, "INVALID_FIELD"),
            (r#"{"type":"NOPE","data":{}}"#, "UNKNOWN_TYPE"),
            (r#"{"type":"INTERNAL_MESSAGE","data":{}}"#, "FORBIDDEN_TYPE"),
            (r#"{"type":"MESSAGE"}"#, "MISSING_FIELD"),
            (r#"{"type":"MESSAGE","data":"x"}"#, "INVALID_FIELD"),
            (
                r#"{"type":"MESSAGE","data":{"to":"ANZ-1"}}"#,
                "MISSING_FIELD",
            ),
            (
                r#"{"type":"MESSAGE","data":{"to":7,"content":"x"}}"#,
                "INVALID_FIELD",
            ),
            (
                r#"{"type":"MESSAGE","data":{"to":"Connector-1","content":"x"}}"#,
                "RESERVED_ID",
            ),
            (
                r#"{"type":"MESSAGE","data":{"to":"nobody","content":"x"}}"#,
                "INVALID_USER_ID",
            ),
            (
                r#"{"type":"GROUP_MESSAGE","data":{"to":[],"content":"x"}}"#,
                "INVALID_FIELD",
            ),
            (
                r#"{"type":"FETCH_MISSING_MESSAGES_REQUEST","data":{"count":0}}"#,
                "INVALID_FIELD",
            ),
            (
                r#"{"type":"FETCH_MISSING_MESSAGES_REQUEST","data":{"count":"3"}}"#,
                "INVALID_FIELD",
            ),
            (
                r#"{"type":"MESSAGE","feature":"SLOW","data":{"to":"ANZ-1","content":"x"}}"#,
                "INVALID_FIELD",
            ),
        ];
        for (text, reason) in cases {
            let err = parse(text).expect_err(text);
            assert_eq!(err.reason(), reason, "{text}: {err}");
        }
    }

    /// Found by the `client_frame` fuzz target: serde stopped at the repeated key and the
    /// broken JSON after it was reported as "must be a JSON object".
    #[test]
    fn a_repeated_key_before_broken_json_is_invalid_json() {
        let err = parse(r#"{"type":"MESSAGE","type":"MESSAGE","dat"<"}}"#).unwrap_err();
        assert_eq!(err.reason(), "INVALID_JSON", "{err}");
    }

    #[test]
    fn a_repeated_key_in_valid_json_is_named() {
        for text in [
            r#"{"type":"MESSAGE","type":"MESSAGE","data":{"to":"ANZ-1","content":"x"}}"#,
            r#"{"type":"MESSAGE","data":{"to":"ANZ-1","to":"ANZ-2","content":"x"}}"#,
        ] {
            let err = parse(text).unwrap_err();
            assert_eq!(err.reason(), "INVALID_FIELD");
            assert!(err.to_string().ends_with("must not repeat a key"), "{err}");
        }
    }

    #[test]
    fn the_group_limit_counts_the_array_as_sent() {
        let limits = ParseLimits {
            max_group_size: 2,
            ..ParseLimits::default()
        };
        let group = |to: &str| {
            parse_client_frame(
                &format!(r#"{{"type":"GROUP_MESSAGE","data":{{"to":{to},"content":"x"}}}}"#),
                &limits,
            )
        };
        let err = group(r#"["ANZ-1","ANZ-1","ANZ-1"]"#).unwrap_err().error;
        assert_eq!(err.field(), Some("to"), "{err}");
        match group(r#"["ANZ-1","ANZ-1"]"#).unwrap().body {
            ClientBody::GroupMessage { to, .. } => assert_eq!(to.len(), 1, "sent once"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ack_frames_parse_and_bad_ones_are_refused() {
        let id = MessageId::new();
        let text = format!(r#"{{"type":"ACK","data":{{"upTo":7,"ids":["{id}"]}}}}"#);
        match parse(&text).unwrap().body {
            ClientBody::Ack { up_to, ids } => assert_eq!((up_to, ids), (Some(7), vec![id])),
            other => panic!("{other:?}"),
        }
        for (text, reason) in [
            (r#"{"type":"ACK","data":{}}"#, "MISSING_FIELD"),
            (r#"{"type":"ACK","data":{"upTo":-1}}"#, "INVALID_FIELD"),
            (r#"{"type":"ACK","data":{"ids":["nope"]}}"#, "INVALID_FIELD"),
            (r#"{"type":"ACK","data":{"ids":"x"}}"#, "INVALID_FIELD"),
        ] {
            assert_eq!(parse(text).expect_err(text).reason(), reason, "{text}");
        }
        let auth = r#"{"type":"AUTH_CLIENT","data":{"appId":"a","userId":"ANZ-1","ack":true}}"#;
        assert!(matches!(
            parse(auth).unwrap().body,
            ClientBody::AuthClient { ack: true, .. }
        ));
    }

    #[test]
    fn channel_member_frames_parse_and_bad_ones_are_refused() {
        let add = r#"{"type":"CHANNEL_ADD","data":{"channel":"ANZ/g","userId":"ANZ-7"}}"#;
        match parse(add).unwrap().body {
            ClientBody::ChannelMember {
                added,
                channel,
                user_id,
            } => assert_eq!(
                (added, channel.as_str(), user_id.as_str()),
                (true, "ANZ/g", "ANZ-7")
            ),
            other => panic!("{other:?}"),
        }
        let remove = r#"{"type":"CHANNEL_REMOVE","data":{"channel":"ANZ/g","userId":"ANZ-7"}}"#;
        assert!(matches!(
            parse(remove).unwrap().body,
            ClientBody::ChannelMember { added: false, .. }
        ));
        for (text, reason) in [
            (
                r#"{"type":"CHANNEL_ADD","data":{"channel":"ANZ/g"}}"#,
                "MISSING_FIELD",
            ),
            (
                r#"{"type":"CHANNEL_ADD","data":{"channel":"ANZ/g","userId":"x"}}"#,
                "INVALID_USER_ID",
            ),
            (
                r#"{"type":"CHANNEL_REMOVE","data":{"channel":"g","userId":"ANZ-7"}}"#,
                "INVALID_CHANNEL",
            ),
            (
                r#"{"type":"CHANNEL_ADDED","data":{"channel":"ANZ/g","userId":"ANZ-7"}}"#,
                "FORBIDDEN_TYPE",
            ),
        ] {
            assert_eq!(parse(text).expect_err(text).reason(), reason, "{text}");
        }
        let out = out_channel_member(
            true,
            &Channel::parse("ANZ/g").unwrap(),
            &UserId::parse("ANZ-7").unwrap(),
            Some("r"),
        );
        assert_eq!(
            out,
            r#"{"type":"CHANNEL_ADDED","data":{"channel":"ANZ/g","userId":"ANZ-7"},"reference":"r"}"#
        );
    }

    #[test]
    fn channel_frames_parse_and_bad_ones_are_refused() {
        let text = r#"{"type":"CHANNEL_MESSAGE","feature":"FAST","data":{"channel":"ANZ/general","content":{"t":1}}}"#;
        match parse(text).unwrap().body {
            ClientBody::ChannelMessage { channel, content } => {
                assert_eq!(
                    (channel.as_str(), content.get()),
                    ("ANZ/general", r#"{"t":1}"#)
                );
            }
            other => panic!("{other:?}"),
        }
        let sub = r#"{"type":"SUBSCRIBE","data":{"channel":"ANZ/general"}}"#;
        assert!(matches!(
            parse(sub).unwrap().body,
            ClientBody::Subscribe {
                options: SubscribeOptions {
                    echo: true,
                    history: None,
                    after: None
                },
                ..
            }
        ));
        let quiet = r#"{"type":"SUBSCRIBE","data":{"channel":"ANZ/general","echo":false}}"#;
        assert!(matches!(
            parse(quiet).unwrap().body,
            ClientBody::Subscribe {
                options: SubscribeOptions { echo: false, .. },
                ..
            }
        ));
        let replay = r#"{"type":"SUBSCRIBE","data":{"channel":"ANZ/general","history":20}}"#;
        assert!(matches!(
            parse(replay).unwrap().body,
            ClientBody::Subscribe {
                options: SubscribeOptions {
                    history: Some(20),
                    after: None,
                    ..
                },
                ..
            }
        ));
        let resume = r#"{"type":"SUBSCRIBE","data":{"channel":"ANZ/general","after":7}}"#;
        assert!(matches!(
            parse(resume).unwrap().body,
            ClientBody::Subscribe {
                options: SubscribeOptions {
                    history: None,
                    after: Some(7),
                    ..
                },
                ..
            }
        ));
        let long = format!(
            r#"{{"type":"SUBSCRIBE","data":{{"channel":"ANZ/{}"}}}}"#,
            "x".repeat(200)
        );
        for (text, reason) in [
            (r#"{"type":"SUBSCRIBE","data":{}}"#, "MISSING_FIELD"),
            (
                r#"{"type":"SUBSCRIBE","data":{"channel":"ANZ/g","echo":"no"}}"#,
                "INVALID_FIELD",
            ),
            (
                r#"{"type":"SUBSCRIBE","data":{"channel":"ANZ/g","history":-1}}"#,
                "INVALID_FIELD",
            ),
            (
                r#"{"type":"SUBSCRIBE","data":{"channel":"ANZ/g","history":2,"after":1}}"#,
                "INVALID_FIELD",
            ),
            (
                r#"{"type":"SUBSCRIBE","data":{"channel":5}}"#,
                "INVALID_FIELD",
            ),
            (
                r#"{"type":"SUBSCRIBE","data":{"channel":"general"}}"#,
                "INVALID_CHANNEL",
            ),
            (long.as_str(), "INVALID_CHANNEL"),
            (
                r#"{"type":"CHANNEL_MESSAGE","data":{"channel":"ANZ/g"}}"#,
                "MISSING_FIELD",
            ),
            (
                r#"{"type":"CHANNEL_PRESENCE","data":{"channel":"ANZ/a b"}}"#,
                "INVALID_CHANNEL",
            ),
            (
                r#"{"type":"SUBSCRIBED","data":{"channel":"ANZ/g"}}"#,
                "FORBIDDEN_TYPE",
            ),
        ] {
            assert_eq!(parse(text).expect_err(text).reason(), reason, "{text}");
        }
    }

    #[test]
    fn a_sequenced_frame_carries_seq_and_id_at_the_top_level() {
        let id = MessageId::new();
        let frame = with_seq(&out_confirmation("r"), 9, id);
        let v: serde_json::Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(v["seq"], 9);
        assert_eq!(v["id"], id.to_string());
        assert_eq!(v["data"]["reference"], "r");
    }

    #[test]
    fn rejected_frames_keep_their_reference() {
        let r = parse_client_frame(
            r#"{"type":"NOPE","reference":"r1","data":{}}"#,
            &ParseLimits::default(),
        )
        .unwrap_err();
        assert_eq!(r.reference.as_deref(), Some("r1"));
    }

    #[test]
    fn outbound_message_omits_null_reference() {
        let from = UserId::parse("ANZ-1").unwrap();
        let content = RawValue::from_string("\"hi\"".into()).unwrap();
        assert_eq!(
            out_message(&from, &content, None),
            r#"{"type":"MESSAGE","data":{"from":"ANZ-1","content":"hi"}}"#
        );
        assert_eq!(
            out_message(&from, &content, Some("r")),
            r#"{"type":"MESSAGE","data":{"from":"ANZ-1","content":"hi"},"reference":"r"}"#
        );
    }
}
