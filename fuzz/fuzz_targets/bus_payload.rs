//! Arbitrary bytes as a bus or store payload: what a processor reads off NATS/Kafka
//! (`Envelope`), what a connector reads off NATS (`ConnectorCommand`, `DeliveryReport`), and
//! a stored `StoredMessage`. `backends` decodes each with `serde_json::from_slice` and drops
//! (and counts) a payload it cannot read.
//!
//! Never panics, and whatever decodes encodes back to a payload that decodes to the same.
#![no_main]

use common::envelope::{ConnectorCommand, DeliveryReport, Envelope, StoredMessage};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;

fuzz_target!(|bytes: &[u8]| {
    round_trip::<Envelope>(bytes);
    round_trip::<ConnectorCommand>(bytes);
    round_trip::<DeliveryReport>(bytes);
    round_trip::<StoredMessage>(bytes);
});

fn round_trip<T: Serialize + DeserializeOwned>(bytes: &[u8]) {
    let Ok(value) = serde_json::from_slice::<T>(bytes) else {
        return;
    };
    let encoded = serde_json::to_vec(&value).expect("decoded payloads encode");
    let again: T = serde_json::from_slice(&encoded).unwrap_or_else(|e| {
        panic!(
            "own encoding refused: {e}: {}",
            String::from_utf8_lossy(&encoded)
        )
    });
    assert_eq!(
        serde_json::to_vec(&again).expect("decoded payloads encode"),
        encoded,
        "payload does not read back the same"
    );
}
