//! Channel names: `<appName>/<name>` (`ANZ/general`). A channel belongs to the app its name
//! starts with; only users of that app may join it, post to it or ask who is in it.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{UserId, is_app_name};

/// Longest channel name, app part included, in bytes.
pub const MAX_CHANNEL_LEN: usize = 128;

/// Why a text is not a channel name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error("is longer than 128 bytes")]
    TooLong,
    #[error("must be <appName>/<name>")]
    Malformed,
    #[error("has a name part that is not 1 to 64 letters, digits, `_`, `-` or `.`")]
    BadName,
}

/// A valid channel name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Channel(String);

impl Channel {
    pub fn parse(text: &str) -> Result<Channel, ChannelError> {
        if text.len() > MAX_CHANNEL_LEN {
            return Err(ChannelError::TooLong);
        }
        let (app, name) = text.split_once('/').ok_or(ChannelError::Malformed)?;
        if !is_app_name(app) {
            return Err(ChannelError::Malformed);
        }
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !name_ok {
            return Err(ChannelError::BadName);
        }
        Ok(Channel(text.to_owned()))
    }

    /// The app the channel belongs to (`ANZ` for `ANZ/general`).
    pub fn app(&self) -> &str {
        self.0.split_once('/').map_or("", |(app, _)| app)
    }

    /// True if `user` is of the channel's app.
    pub fn is_of_app_of(&self, user: &UserId) -> bool {
        self.app() == user.app()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Channel {
    type Error = ChannelError;
    fn try_from(s: String) -> Result<Channel, ChannelError> {
        Channel::parse(&s)
    }
}

impl From<Channel> for String {
    fn from(c: Channel) -> String {
        c.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_bad_ones_are_refused() {
        let c = Channel::parse("ANZ/general").unwrap();
        assert_eq!(c.app(), "ANZ");
        assert!(c.is_of_app_of(&UserId::parse("ANZ-1").unwrap()));
        assert!(!c.is_of_app_of(&UserId::parse("BNZ-1").unwrap()));
        assert_eq!(Channel::parse("general"), Err(ChannelError::Malformed));
        assert_eq!(Channel::parse("/general"), Err(ChannelError::Malformed));
        assert_eq!(Channel::parse("ANZ/"), Err(ChannelError::BadName));
        assert_eq!(Channel::parse("ANZ/a/b"), Err(ChannelError::BadName));
        let long = format!("ANZ/{}", "x".repeat(130));
        assert_eq!(Channel::parse(&long), Err(ChannelError::TooLong));
    }
}
