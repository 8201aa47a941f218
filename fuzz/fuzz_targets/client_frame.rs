//! Arbitrary bytes as a client WebSocket text frame (`common::frame::parse_client_frame`).
//!
//! Never panics; what it accepts keeps the parser's promises (allowed type, bounded
//! reference and group, valid ids, non-null content) and reads back the same when written
//! out again in wire form; what it refuses becomes a well-formed `INVALID_MESSAGE` with the
//! right reason. Two sets of limits: the defaults, and tiny ones so the limit paths are hit.
#![no_main]

use common::channel::Channel;
use common::frame::{
    ClientBody, ClientFrame, Feature, ParseLimits, out_invalid, out_message, parse_client_frame,
};
use common::ids::UserId;
use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

fuzz_target!(|bytes: &[u8]| {
    // The WebSocket layer hands the parser UTF-8 only; make every input count.
    let text = String::from_utf8_lossy(bytes);
    let tiny = ParseLimits {
        max_group_size: 2,
        max_reference_len: 4,
    };
    for limits in [ParseLimits::default(), tiny] {
        check(&text, &limits);
    }
});

fn check(text: &str, limits: &ParseLimits) {
    let is_json = serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok();
    match parse_client_frame(text, limits) {
        Ok(frame) => {
            assert!(is_json, "accepted text that is not JSON");
            check_accepted(&frame, limits);
            let wire = to_wire(&frame);
            let again = parse_client_frame(&wire, limits)
                .unwrap_or_else(|r| panic!("own wire form {wire} refused: {:?}", r.error));
            assert_eq!(
                to_wire(&again),
                wire,
                "wire form does not read back the same"
            );
        }
        Err(rejected) => {
            let reason = rejected.error.reason();
            assert_eq!(reason == "INVALID_JSON", !is_json, "{reason} for {text:?}");
            let out = out_invalid(&rejected.error, rejected.reference.as_deref());
            let out: serde_json::Value =
                serde_json::from_str(&out).expect("INVALID_MESSAGE is JSON");
            assert_eq!(out["type"], "INVALID_MESSAGE");
            assert_eq!(out["data"]["reason"], reason);
            assert_eq!(out["reference"].as_str(), rejected.reference.as_deref());
        }
    }
}

fn check_accepted(frame: &ClientFrame, limits: &ParseLimits) {
    assert!(frame.body.message_type().client_may_send());
    if let Some(r) = &frame.reference {
        assert!(
            r.len() <= limits.max_reference_len,
            "reference of {} bytes",
            r.len()
        );
    }
    let valid = |id: &UserId| assert!(UserId::parse(id.as_str()).is_ok(), "{id:?}");
    match &frame.body {
        ClientBody::Message { to, content } => {
            valid(to);
            check_content(to, content, frame.reference.as_deref());
        }
        ClientBody::GroupMessage { to, content } => {
            assert!(!to.is_empty() && to.len() <= limits.max_group_size);
            for (i, id) in to.iter().enumerate() {
                valid(id);
                assert!(!to[..i].contains(id), "{id:?} twice in a group");
            }
            check_content(&to[0], content, frame.reference.as_deref());
        }
        ClientBody::CloseConnection { user_id } => valid(user_id),
        ClientBody::FetchMissingMessages { count } => assert!(*count > 0),
        ClientBody::AuthClient { .. } => {}
        ClientBody::Ack { up_to, ids } => {
            assert!(
                up_to.is_some() || !ids.is_empty(),
                "an ACK acknowledges something"
            );
            assert!(ids.len() <= 1000, "{} ids", ids.len());
        }
        ClientBody::Subscribe { channel, options } => {
            assert!(Channel::parse(channel.as_str()).is_ok(), "{channel:?}");
            assert!(
                options.history.is_none() || options.after.is_none(),
                "history and after together"
            );
        }
        ClientBody::ChannelMember { channel, .. }
        | ClientBody::Unsubscribe { channel }
        | ClientBody::ChannelPresence { channel } => {
            assert!(Channel::parse(channel.as_str()).is_ok(), "{channel:?}");
        }
        ClientBody::ChannelMessage { channel, content } => {
            assert!(Channel::parse(channel.as_str()).is_ok(), "{channel:?}");
            assert_ne!(content.get(), "null");
        }
    }
}

/// The content reaches the recipient byte for byte, inside a frame that is JSON.
fn check_content(from: &UserId, content: &RawValue, reference: Option<&str>) {
    assert_ne!(content.get(), "null");
    #[derive(Deserialize)]
    struct Forwarded<'a> {
        #[serde(borrow)]
        data: ForwardedData<'a>,
    }
    #[derive(Deserialize)]
    struct ForwardedData<'a> {
        #[serde(borrow)]
        content: &'a RawValue,
    }
    let out = out_message(from, content, reference);
    let forwarded: Forwarded<'_> = serde_json::from_str(&out).expect("MESSAGE is JSON");
    assert_eq!(forwarded.data.content.get(), content.get());
}

/// The frame written as a client would send it, every option explicit.
#[derive(Serialize)]
struct Wire<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    data: Data<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reference: Option<&'a str>,
    feature: Feature,
    #[serde(rename = "confirmationEnabled")]
    confirmation_enabled: bool,
}

#[derive(Serialize)]
#[serde(untagged, rename_all_fields = "camelCase")]
enum Data<'a> {
    AuthClient {
        app_id: &'a str,
        user_id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        token: Option<&'a str>,
        ack: bool,
    },
    Ack {
        #[serde(skip_serializing_if = "Option::is_none")]
        up_to: Option<u64>,
        ids: Vec<String>,
    },
    Message {
        to: &'a str,
        content: &'a RawValue,
    },
    GroupMessage {
        to: Vec<&'a str>,
        content: &'a RawValue,
    },
    CloseConnection {
        user_id: &'a str,
    },
    FetchMissingMessages {
        count: u32,
    },
    ChannelMessage {
        channel: &'a str,
        content: &'a RawValue,
    },
    Channel {
        channel: &'a str,
    },
    Subscribe {
        channel: &'a str,
        echo: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        history: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        after: Option<u64>,
    },
    ChannelMember {
        channel: &'a str,
        user_id: &'a str,
    },
}

fn to_wire(frame: &ClientFrame) -> String {
    let data = match &frame.body {
        ClientBody::AuthClient {
            app_id,
            user_id,
            token,
            ack,
        } => Data::AuthClient {
            app_id,
            user_id,
            token: token.as_deref(),
            ack: *ack,
        },
        ClientBody::Ack { up_to, ids } => Data::Ack {
            up_to: *up_to,
            ids: ids.iter().map(ToString::to_string).collect(),
        },
        ClientBody::Message { to, content } => Data::Message {
            to: to.as_str(),
            content,
        },
        ClientBody::GroupMessage { to, content } => Data::GroupMessage {
            to: to.iter().map(UserId::as_str).collect(),
            content,
        },
        ClientBody::CloseConnection { user_id } => Data::CloseConnection {
            user_id: user_id.as_str(),
        },
        ClientBody::FetchMissingMessages { count } => Data::FetchMissingMessages { count: *count },
        ClientBody::Subscribe { channel, options } => Data::Subscribe {
            channel: channel.as_str(),
            echo: options.echo,
            history: options.history,
            after: options.after,
        },
        ClientBody::ChannelMember {
            channel, user_id, ..
        } => Data::ChannelMember {
            channel: channel.as_str(),
            user_id: user_id.as_str(),
        },
        ClientBody::Unsubscribe { channel } | ClientBody::ChannelPresence { channel } => {
            Data::Channel {
                channel: channel.as_str(),
            }
        }
        ClientBody::ChannelMessage { channel, content } => Data::ChannelMessage {
            channel: channel.as_str(),
            content,
        },
    };
    let wire = Wire {
        kind: frame.body.message_type().wire_name(),
        data,
        reference: frame.reference.as_deref(),
        feature: frame.feature,
        confirmation_enabled: frame.confirmation_enabled,
    };
    serde_json::to_string(&wire).expect("plain data serialises")
}
