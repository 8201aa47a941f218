//! The URL form for simple clients: `/channels/<channel>/users/<user>?appId=..&token=..`.
//!
//! Reads the route from the handshake's path, turns a plain text frame from the client into a
//! `CHANNEL_MESSAGE` frame (so it is checked like any other), and turns the frames written to
//! such a socket into plain text: a channel post becomes its content, every other frame is
//! not written. The session (session.rs) does the rest as for a JSON client.

use serde::Deserialize;
use serde_json::value::RawValue;

use common::channel::Channel;

/// Where plain text clients connect: `/channels/` then the channel, `/users/` then the user.
pub const PREFIX: &str = "/channels/";

/// What the URL of a plain text socket asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Route {
    pub channel: Channel,
    pub user_id: String,
    pub app_id: String,
    pub token: Option<String>,
}

/// Why a URL is not a plain text route: a reason code and a short detail (the close reason).
pub(crate) type BadRoute = (&'static str, String);

/// True if `path` is meant for the URL form (it may still be malformed).
pub(crate) fn is_route(path: &str) -> bool {
    path.starts_with(PREFIX)
}

impl Route {
    /// Reads `/channels/<channel>/users/<user>?appId=..&token=..`. The channel is a full name
    /// (`ANZ/general`, or `ANZ%2Fgeneral`) or a name in the user's app (`general`).
    pub(crate) fn parse(path: &str, query: Option<&str>) -> Result<Route, BadRoute> {
        let rest = path.strip_prefix(PREFIX).unwrap_or(path);
        let (channel, user) = rest.rsplit_once("/users/").ok_or((
            "INVALID_PATH",
            "the path must be /channels/<channel>/users/<user>".to_owned(),
        ))?;
        let user_id = decode(user).ok_or(bad_escape("user"))?;
        let channel = decode(channel).ok_or(bad_escape("channel"))?;
        let app = user_id.split_once('-').map_or("", |(app, _)| app);
        let full = if channel.contains('/') {
            channel
        } else {
            format!("{app}/{channel}")
        };
        let channel = Channel::parse(&full)
            .map_err(|e| ("INVALID_CHANNEL", format!("channel `{full}` {e}")))?;
        let (mut app_id, mut token) = (None, None);
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = decode(value).ok_or(bad_escape(key))?;
            match key {
                "appId" => app_id = Some(value),
                "token" => token = Some(value),
                _ => {}
            }
        }
        let app_id = app_id.ok_or((
            "MISSING_FIELD",
            "appId is missing from the query".to_owned(),
        ))?;
        Ok(Route {
            channel,
            user_id,
            app_id,
            token,
        })
    }
}

fn bad_escape(part: &str) -> BadRoute {
    ("INVALID_PATH", format!("{part} has a bad %-escape"))
}

/// Decodes `%XX` escapes (and `+` as a space, as forms send it); `None` if an escape is bad
/// or the result is not UTF-8.
fn decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = text.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The `CHANNEL_MESSAGE` frame a plain text frame stands for: `RELIABLE`, no reference, the
/// text as a JSON string.
pub(crate) fn post_frame(channel: &Channel, text: &str) -> String {
    serde_json::json!({
        "type": "CHANNEL_MESSAGE",
        "data": {"channel": channel.as_str(), "content": text},
    })
    .to_string()
}

/// The plain text a plain socket gets for `frame` (one of the JSON frames the connector
/// writes): a channel post's content if it is a JSON string, else its JSON text; `None` for
/// every other frame.
pub(crate) fn text_form(frame: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Frame<'a> {
        #[serde(rename = "type", borrow)]
        kind: &'a str,
        #[serde(borrow)]
        data: Option<Data<'a>>,
    }
    #[derive(Deserialize)]
    struct Data<'a> {
        #[serde(borrow)]
        content: Option<&'a RawValue>,
    }
    let frame: Frame<'_> = serde_json::from_str(frame).ok()?;
    if frame.kind != "CHANNEL_MESSAGE" {
        return None;
    }
    let content = frame.data?.content?;
    match serde_json::from_str::<String>(content.get()) {
        Ok(text) => Some(text),
        Err(_) => Some(content.get().to_owned()),
    }
}

/// `reason` cut to what a WebSocket close frame can carry (123 bytes), at a character
/// boundary.
pub(crate) fn close_reason(reason: String) -> String {
    const MAX: usize = 123;
    if reason.len() <= MAX {
        return reason;
    }
    let mut end = MAX;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse_with_full_or_short_channel_names() {
        let r = Route::parse(
            "/channels/general/users/ANZ-7",
            Some("appId=app-id-343&token=a%20b"),
        )
        .unwrap();
        assert_eq!(r.channel.as_str(), "ANZ/general");
        assert_eq!(
            (r.user_id.as_str(), r.app_id.as_str(), r.token.as_deref()),
            ("ANZ-7", "app-id-343", Some("a b"))
        );
        let full = Route::parse("/channels/ANZ/general/users/ANZ-7", Some("appId=x")).unwrap();
        assert_eq!(full.channel.as_str(), "ANZ/general");
        let escaped = Route::parse("/channels/ANZ%2Fgeneral/users/ANZ-7", Some("appId=x")).unwrap();
        assert_eq!(escaped.channel.as_str(), "ANZ/general");
        assert_eq!(full.token, None);
    }

    #[test]
    fn bad_routes_are_refused_with_a_reason() {
        for (path, query, reason) in [
            ("/channels/general", Some("appId=x"), "INVALID_PATH"),
            (
                "/channels/a%zz/users/ANZ-7",
                Some("appId=x"),
                "INVALID_PATH",
            ),
            (
                "/channels/a b/users/ANZ-7",
                Some("appId=x"),
                "INVALID_CHANNEL",
            ),
            ("/channels//users/ANZ-7", Some("appId=x"), "INVALID_CHANNEL"),
            ("/channels/general/users/ANZ-7", None, "MISSING_FIELD"),
            (
                "/channels/general/users/ANZ-7",
                Some("token=t"),
                "MISSING_FIELD",
            ),
        ] {
            let got = Route::parse(path, query).expect_err(path);
            assert_eq!(got.0, reason, "{path}: {got:?}");
        }
    }

    #[test]
    fn posts_become_text_and_other_frames_none() {
        let post = r#"{"type":"CHANNEL_MESSAGE","data":{"channel":"ANZ/g","from":"ANZ-1","content":"hi \"you\""},"reference":"r"}"#;
        assert_eq!(text_form(post).as_deref(), Some(r#"hi "you""#));
        let json = r#"{"type":"CHANNEL_MESSAGE","data":{"channel":"ANZ/g","from":"ANZ-1","content":{"a":[1,2]}}}"#;
        assert_eq!(text_form(json).as_deref(), Some(r#"{"a":[1,2]}"#));
        let other = r#"{"type":"MESSAGE","data":{"from":"ANZ-1","content":"x"}}"#;
        assert_eq!(text_form(other), None);
        let channel = Channel::parse("ANZ/g").unwrap();
        let frame = post_frame(&channel, "a \"b\"\n");
        assert!(frame.contains(r#""content":"a \"b\"\n""#), "{frame}");
        assert_eq!(close_reason("é".repeat(100)).len(), 122);
    }
}
