//! Identifier newtypes, each parsed once at the edge.
//!
//! A `UserId` is `<appName>-<number>` (`ANZ-3123456`): the app prefix names a client app and
//! the number places the user in a domain's range. Ids whose app part starts with one of the
//! reserved words (`SYSTEM`, `Connector`, `Processor`, any case) are refused: in the original
//! system a message to `connector-01` looped for ever.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Prefixes no user id may start with (compared case-insensitively).
pub const RESERVED_PREFIXES: [&str; 3] = ["system", "connector", "processor"];

/// Why a user id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("user id `{0}` is not of the form <app>-<number>")]
    Malformed(String),
    #[error("user id `{0}` starts with a reserved prefix (SYSTEM, Connector, Processor)")]
    Reserved(String),
}

/// Longest user id accepted; keeps keys in presence and stores bounded.
pub const MAX_USER_ID_LEN: usize = 128;

/// A user id such as `ANZ-3123456`. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(Arc<str>);

impl UserId {
    /// Parses and validates a user id.
    pub fn parse(raw: &str) -> Result<UserId, IdError> {
        if starts_reserved(raw) {
            return Err(IdError::Reserved(raw.to_owned()));
        }
        let valid = raw.len() <= MAX_USER_ID_LEN
            && match raw.split_once('-') {
                Some((app, number)) => {
                    is_app_name(app)
                        && !number.is_empty()
                        && number.len() <= 18
                        && number.bytes().all(|b| b.is_ascii_digit())
                }
                None => false,
            };
        if valid {
            Ok(UserId(Arc::from(raw)))
        } else {
            Err(IdError::Malformed(raw.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The client app prefix (`ANZ` for `ANZ-3123456`).
    pub fn app(&self) -> &str {
        self.0
            .split_once('-')
            .map(|(app, _)| app)
            .unwrap_or(&self.0)
    }

    /// The number that places the user in a domain's range.
    pub fn number(&self) -> u64 {
        self.0
            .split_once('-')
            .and_then(|(_, n)| n.parse().ok())
            .expect("validated by UserId::parse")
    }
}

fn starts_reserved(raw: &str) -> bool {
    RESERVED_PREFIXES.iter().any(|p| {
        raw.len() >= p.len() && raw.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
    })
}

/// App names are letters, digits and `_`, 1 to 64 characters.
pub fn is_app_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// True if an app name would make reserved user ids.
pub fn is_reserved_app_name(name: &str) -> bool {
    starts_reserved(name)
}

impl TryFrom<String> for UserId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        UserId::parse(&s)
    }
}

impl From<UserId> for String {
    fn from(u: UserId) -> String {
        u.0.to_string()
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserId({})", self.0)
    }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Arc<str>);

        impl $name {
            pub fn new(name: &str) -> Self {
                $name(Arc::from(name))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }
    };
}

name_type!(
    /// A domain's name, e.g. `domain-01`.
    DomainName
);
name_type!(
    /// A connector process's name, unique in its domain, e.g. `connector-01`.
    ConnectorName
);

/// A socket's number, unique within one run of its connector.
pub type SocketId = u64;

/// Where one of a user's sockets is: which connector, which socket.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SocketAddress {
    pub connector: ConnectorName,
    pub socket: SocketId,
}

/// A server-assigned message id: UUID v7, so ids sort by creation time.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageId(pub uuid::Uuid);

impl MessageId {
    pub fn new() -> Self {
        MessageId(uuid::Uuid::now_v7())
    }
}

impl MessageId {
    /// The id of the confirmation of this message: fixed, so a confirmation sent again for a
    /// redelivered message is recognised as the same one.
    pub fn confirmation(self) -> MessageId {
        MessageId(uuid::Uuid::from_u128(
            self.0.as_u128() ^ 0x5A5A_5A5A_5A5A_5A5A,
        ))
    }

    /// A fixed id derived from this one and `salt` (e.g. the domain a message is relayed
    /// to): the same inputs give the same id, so work sent again is recognised.
    pub fn derive(self, salt: &str) -> MessageId {
        // FNV-1a over the salt, mixed into both halves of the id. The result is no longer
        // a valid v7 uuid, which is fine: ids are only compared, never read for a time.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in salt.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        MessageId(uuid::Uuid::from_u128(
            self.0.as_u128() ^ (u128::from(h) << 64 | u128::from(h.rotate_left(29))),
        ))
    }

    /// The mark recording that `user` acknowledged this message: a fixed function of both, so
    /// it is recognised after a restart.
    pub fn acknowledged_by(self, user: &UserId) -> MessageId {
        self.derive(&format!("acknowledged by {}", user.as_str()))
    }
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_acknowledged_mark_differs_per_user_and_per_message() {
        let (a, b) = (
            UserId::parse("ANZ-1").unwrap(),
            UserId::parse("ANZ-2").unwrap(),
        );
        let (m, n) = (MessageId::new(), MessageId::new());
        assert_eq!(m.acknowledged_by(&a), m.acknowledged_by(&a));
        assert_ne!(m.acknowledged_by(&a), m.acknowledged_by(&b));
        assert_ne!(m.acknowledged_by(&a), n.acknowledged_by(&a));
        assert_ne!(m.acknowledged_by(&a), m);
    }

    #[test]
    fn user_id_splits_into_app_and_number() {
        let u = UserId::parse("ANZ-3123456").unwrap();
        assert_eq!(u.app(), "ANZ");
        assert_eq!(u.number(), 3_123_456);
    }

    #[test]
    fn malformed_user_ids_are_refused() {
        for bad in [
            "", "ANZ", "ANZ-", "-1", "ANZ-12a", "ANZ-1-2", "A Z-1", "ANZ--1",
        ] {
            assert!(
                matches!(UserId::parse(bad), Err(IdError::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn reserved_prefixes_are_refused_in_any_case() {
        for bad in [
            "connector-01",
            "Connector-1",
            "SYSTEM-1",
            "processor-2",
            "Systemx-1",
        ] {
            assert!(
                matches!(UserId::parse(bad), Err(IdError::Reserved(_))),
                "{bad}"
            );
        }
    }
}
