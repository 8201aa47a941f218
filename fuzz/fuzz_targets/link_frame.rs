//! Arbitrary bytes as what a neighbouring domain sends over a domain link: the 4-byte length
//! framing (`common::link::codec`) and each frame's JSON (`LinkFrame::decode`).
//!
//! Never panics; a length over the limit is an error before anything is read; whatever
//! decodes encodes back to a frame that decodes to the same.
#![no_main]

use bytes::BytesMut;
use common::link::{LinkFrame, MAX_LINK_FRAME, codec};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

fuzz_target!(|bytes: &[u8]| {
    // As one frame body.
    check_body(bytes);
    // As a stream of framed bodies.
    let mut codec = codec();
    let mut wire = BytesMut::from(bytes);
    loop {
        match codec.decode(&mut wire) {
            Ok(Some(body)) => {
                assert!(body.len() <= MAX_LINK_FRAME);
                check_body(&body);
            }
            Ok(None) | Err(_) => break,
        }
    }
});

fn check_body(body: &[u8]) {
    let Ok(frame) = LinkFrame::decode(body) else {
        return;
    };
    let encoded = frame.encode();
    let again = LinkFrame::decode(&encoded).expect("own encoding reads back");
    assert_eq!(again.encode(), encoded, "frame does not read back the same");
}
