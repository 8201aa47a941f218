//! The domain-link wire format: what two domains say to each other over TCP.
//!
//! A link is a TCP connection from a processor of one domain to the link listener of a
//! neighbour's connector. Every frame is a 4-byte big-endian length `N`, then `N` bytes of
//! UTF-8 JSON holding one [`LinkFrame`]; `N` is at most [`MAX_LINK_FRAME`], far above any
//! client frame. The dialing side opens with `HELLO` (format version, its domain, and the
//! appId of its domain client app); the listener answers `WELCOME` or `REFUSED` and closes.
//! Then the dialer sends `ENVELOPE`s, each numbered, and the listener answers each with `ACK`
//! once the envelope is safe on its side (or `NACK` with a reason); `PING`/`PONG` keep an
//! idle link honest. docs/network.md is the reference.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio_util::codec::LengthDelimitedCodec;

use crate::envelope::Envelope;
use crate::ids::DomainName;

/// The version of this format a domain speaks; a `HELLO` with another is refused.
pub const LINK_VERSION: u16 = 1;

/// Largest link frame (length prefix excluded): 4 MiB.
pub const MAX_LINK_FRAME: usize = 4 * 1024 * 1024;

/// One frame on a domain link.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LinkFrame {
    /// First frame of the dialing domain.
    Hello {
        version: u16,
        domain: DomainName,
        #[serde(rename = "appId")]
        app_id: String,
    },
    /// The listener accepted the link.
    Welcome {
        version: u16,
        domain: DomainName,
    },
    /// The listener refused the link; it closes the connection after this frame.
    Refused {
        reason: String,
        detail: String,
    },
    /// Work for the listening domain; `seq` numbers the envelopes of this connection.
    Envelope {
        seq: u64,
        envelope: Box<Envelope>,
    },
    /// Envelope `seq` is safe on the listening side.
    Ack {
        seq: u64,
    },
    /// Envelope `seq` was not taken; the sender keeps it and tries again later.
    Nack {
        seq: u64,
        reason: String,
    },
    Ping,
    Pong,
}

/// A link frame that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("bad link frame: {0}")]
pub struct LinkError(pub String);

/// The framing of a link: 4-byte big-endian length prefix, at most [`MAX_LINK_FRAME`].
pub fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .big_endian()
        .max_frame_length(MAX_LINK_FRAME)
        .new_codec()
}

impl LinkFrame {
    /// The frame's body, ready for the codec.
    pub fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("link frames are plain data"))
    }

    /// Reads a frame's body.
    pub fn decode(body: &[u8]) -> Result<LinkFrame, LinkError> {
        serde_json::from_slice(body).map_err(|e| LinkError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use tokio_util::codec::{Decoder, Encoder};

    #[test]
    fn frames_survive_the_codec() {
        let mut codec = codec();
        let mut wire = BytesMut::new();
        let hello = LinkFrame::Hello {
            version: LINK_VERSION,
            domain: DomainName::new("domain-01"),
            app_id: "domain1".into(),
        };
        let body = hello.encode();
        codec.encode(body.clone(), &mut wire).unwrap();
        codec
            .encode(LinkFrame::Ack { seq: 7 }.encode(), &mut wire)
            .unwrap();
        assert_eq!(&wire[..4], &(body.len() as u32).to_be_bytes());
        let first = codec.decode(&mut wire).unwrap().unwrap();
        let text = std::str::from_utf8(&first).unwrap();
        assert_eq!(
            text,
            r#"{"HELLO":{"version":1,"domain":"domain-01","appId":"domain1"}}"#
        );
        let second = LinkFrame::decode(&codec.decode(&mut wire).unwrap().unwrap()).unwrap();
        assert!(matches!(second, LinkFrame::Ack { seq: 7 }));
    }

    #[test]
    fn an_oversized_length_is_refused_before_reading_it() {
        let mut codec = codec();
        let mut wire = BytesMut::from(&((MAX_LINK_FRAME as u32) + 1).to_be_bytes()[..]);
        assert!(codec.decode(&mut wire).is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for body in [
            &b""[..],
            b"{",
            b"[]",
            b"{\"ENVELOPE\":{\"seq\":1}}",
            b"\xff\xfe",
        ] {
            assert!(LinkFrame::decode(body).is_err());
        }
    }
}
