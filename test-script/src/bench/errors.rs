//! What went wrong during a run, counted by kind, with the first few details kept.
//!
//! Connection failures (connect, handshake, authentication, a socket that ends early) and the
//! server's error frames (`INVALID_MESSAGE`, `GENERAL_ERROR`) are counted separately, so a
//! summary says whether the server refused work or the sockets broke.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// How many error details a run keeps for its summary.
const KEPT_DETAILS: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// TCP connect failed or timed out.
    Connect,
    /// The WebSocket handshake failed or timed out.
    Handshake,
    /// AUTH_CLIENT_REPLY said false, or never came.
    Auth,
    /// The server closed the socket or it broke before the run ended.
    Socket,
    /// An `INVALID_MESSAGE` frame.
    InvalidMessage,
    /// A `GENERAL_ERROR` frame.
    GeneralError,
    /// Any other frame this run did not expect.
    Unexpected,
}

const KINDS: usize = 7;

impl ErrorKind {
    fn index(self) -> usize {
        self as usize
    }
}

/// Error counts, as reported.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ErrorCounts {
    pub connect: u64,
    pub handshake: u64,
    pub auth: u64,
    pub socket: u64,
    pub invalid_message: u64,
    pub general_error: u64,
    pub unexpected_frames: u64,
    /// The first few errors, in words.
    pub first: Vec<String>,
}

impl ErrorCounts {
    pub fn total(&self) -> u64 {
        self.connect
            + self.handshake
            + self.auth
            + self.socket
            + self.invalid_message
            + self.general_error
            + self.unexpected_frames
    }
}

#[derive(Default)]
pub struct Errors {
    counts: [AtomicU64; KINDS],
    first: Mutex<Vec<String>>,
}

impl Errors {
    pub fn record(&self, kind: ErrorKind, detail: impl FnOnce() -> String) {
        self.counts[kind.index()].fetch_add(1, Ordering::Relaxed);
        let mut first = self
            .first
            .lock()
            .expect("the error list lock is never poisoned");
        if first.len() < KEPT_DETAILS {
            first.push(format!("{kind:?}: {}", detail()));
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    pub fn counts(&self) -> ErrorCounts {
        let n = |k: ErrorKind| self.counts[k.index()].load(Ordering::Relaxed);
        ErrorCounts {
            connect: n(ErrorKind::Connect),
            handshake: n(ErrorKind::Handshake),
            auth: n(ErrorKind::Auth),
            socket: n(ErrorKind::Socket),
            invalid_message: n(ErrorKind::InvalidMessage),
            general_error: n(ErrorKind::GeneralError),
            unexpected_frames: n(ErrorKind::Unexpected),
            first: self
                .first
                .lock()
                .expect("the error list lock is never poisoned")
                .clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_counted_by_kind_and_only_the_first_details_are_kept() {
        let e = Errors::default();
        for i in 0..15 {
            e.record(ErrorKind::GeneralError, || format!("frame {i}"));
        }
        e.record(ErrorKind::Connect, || "refused".into());
        let c = e.counts();
        assert_eq!((c.general_error, c.connect, c.total()), (15, 1, 16));
        assert_eq!(c.first.len(), KEPT_DETAILS);
        assert_eq!(c.first[0], "GeneralError: frame 0");
    }
}
