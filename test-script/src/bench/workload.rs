//! Workloads and the message content they carry.
//!
//! A workload only decides who each connection sends to; everything else (pacing, timing,
//! accounting) is shared. In `broadcast`, connections `0..P` are the publishers and `P..P+S`
//! the subscribers; a publisher's one GROUP_MESSAGE takes S sequence numbers, one per
//! subscriber, so the ledger counts each copy's loss, duplication and latency on its own. The content is `<sender>:<seq>:<sent_us>:` padded with `x` to the
//! requested size, so any receiver can attribute, time and de-duplicate a message on its own.

use clap::ValueEnum;

/// Who sends to whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Every connection sends to its own user (the original system's published benchmark).
    SelfEcho,
    /// Connections 2k and 2k+1 send to each other.
    Pairs,
    /// `--publishers` connections each send one GROUP_MESSAGE to the explicit list of the
    /// `--subscribers` at the start of the measured phase (the original's chat-room test);
    /// with `--channel`, one CHANNEL_MESSAGE to a channel the subscribers joined.
    Broadcast,
    /// Idle authenticated connections only (`--interval-ms 0`): memory per connection.
    Connections,
}

impl Workload {
    /// The name on the command line (`self-echo`, `pairs`).
    pub fn name(self) -> &'static str {
        match self {
            Workload::SelfEcho => "self-echo",
            Workload::Pairs => "pairs",
            Workload::Broadcast => "broadcast",
            Workload::Connections => "connections",
        }
    }

    /// The connection that connection `index` sends to (a `MESSAGE` workload).
    pub fn peer_of(self, index: usize) -> usize {
        match self {
            Workload::Pairs => index ^ 1,
            Workload::SelfEcho | Workload::Broadcast | Workload::Connections => index,
        }
    }

    /// What connection `index` adds to the sequence number in a message's content to get the
    /// copy it received: its place among the subscribers in `broadcast`, else 0.
    pub fn receipt_offset(self, index: usize, publishers: usize) -> u64 {
        match self {
            Workload::Broadcast => index.saturating_sub(publishers) as u64,
            _ => 0,
        }
    }
}

/// What a message's content says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Index of the sending connection.
    pub sender: usize,
    /// The sender's sequence number, from 0.
    pub seq: u64,
    /// When it was sent, in microseconds since the run's clock started.
    pub sent_us: u64,
}

impl Stamp {
    /// Appends the content of `size` characters (or just the header, if that is longer) to
    /// `out`; `padding` must hold at least `size` characters.
    pub fn write_content(&self, size: usize, padding: &str, out: &mut String) {
        use std::fmt::Write;
        let start = out.len();
        write!(out, "{}:{}:{}:", self.sender, self.seq, self.sent_us)
            .expect("writing to a String cannot fail");
        let header = out.len() - start;
        if header < size {
            out.push_str(&padding[..size - header]);
        }
    }

    /// Reads the header of a content written by [`Stamp::write_content`].
    pub fn parse(content: &str) -> Option<Stamp> {
        let mut parts = content.splitn(4, ':');
        let sender = parts.next()?.parse().ok()?;
        let seq = parts.next()?.parse().ok()?;
        let sent_us = parts.next()?.parse().ok()?;
        parts.next()?;
        Some(Stamp {
            sender,
            seq,
            sent_us,
        })
    }
}

/// The start of a MESSAGE frame to `to`; the content and then `"}}` follow.
pub fn frame_prefix(to: &str, feature: &str) -> String {
    format!(r#"{{"type":"MESSAGE","feature":"{feature}","data":{{"to":"{to}","content":""#)
}

/// The start of a GROUP_MESSAGE frame to every user of `to`; the content and then `"}}`
/// follow, as for [`frame_prefix`].
pub fn group_frame_prefix(to: &[String], feature: &str) -> String {
    let list = to
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(",");
    format!(r#"{{"type":"GROUP_MESSAGE","feature":"{feature}","data":{{"to":[{list}],"content":""#)
}

/// The start of a CHANNEL_MESSAGE frame to `channel`; the content and then `"}}` follow, as
/// for [`frame_prefix`].
pub fn channel_frame_prefix(channel: &str, feature: &str) -> String {
    format!(
        r#"{{"type":"CHANNEL_MESSAGE","feature":"{feature}","data":{{"channel":"{channel}","content":""#
    )
}

/// The end of a MESSAGE frame begun by [`frame_prefix`].
pub const FRAME_SUFFIX: &str = "\"}}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_has_the_requested_size_and_reads_back() {
        let padding = "x".repeat(1000);
        let stamp = Stamp {
            sender: 17,
            seq: 123_456,
            sent_us: 9_876_543_210,
        };
        let mut content = String::new();
        stamp.write_content(1000, &padding, &mut content);
        assert_eq!(content.len(), 1000);
        assert_eq!(Stamp::parse(&content), Some(stamp));
    }

    #[test]
    fn a_size_below_the_header_keeps_the_header_whole() {
        let stamp = Stamp {
            sender: 1,
            seq: 2,
            sent_us: 3,
        };
        let mut content = String::new();
        stamp.write_content(2, "xx", &mut content);
        assert_eq!(content, "1:2:3:");
        assert_eq!(Stamp::parse(&content), Some(stamp));
    }

    #[test]
    fn foreign_content_is_not_a_stamp() {
        for text in ["hello", "1:2", "1:2:3", "a:2:3:x", "1:-2:3:x"] {
            assert_eq!(Stamp::parse(text), None, "{text}");
        }
    }

    #[test]
    fn a_whole_frame_is_valid_json() {
        let mut frame = frame_prefix("ANZ-5", "FAST");
        Stamp {
            sender: 0,
            seq: 0,
            sent_us: 0,
        }
        .write_content(50, &"x".repeat(50), &mut frame);
        frame.push_str(FRAME_SUFFIX);
        let v: serde_json::Value = serde_json::from_str(&frame).expect("valid JSON");
        assert_eq!(v["data"]["to"], "ANZ-5");
        assert_eq!(v["data"]["content"].as_str().map(str::len), Some(50));
    }

    #[test]
    fn a_whole_group_frame_is_valid_json() {
        let to = vec!["ANZ-1".to_owned(), "ANZ-2".to_owned()];
        let mut frame = group_frame_prefix(&to, "RELIABLE");
        frame.push_str("0:0:0:");
        frame.push_str(FRAME_SUFFIX);
        let v: serde_json::Value = serde_json::from_str(&frame).expect("valid JSON");
        assert_eq!(v["type"], "GROUP_MESSAGE");
        assert_eq!(v["data"]["to"], serde_json::json!(["ANZ-1", "ANZ-2"]));
    }

    #[test]
    fn broadcast_subscribers_count_their_own_copy() {
        assert_eq!(Workload::Broadcast.receipt_offset(5, 2), 3);
        assert_eq!(Workload::SelfEcho.receipt_offset(5, 2), 0);
    }

    #[test]
    fn names_are_the_command_line_names() {
        for w in [
            Workload::SelfEcho,
            Workload::Pairs,
            Workload::Broadcast,
            Workload::Connections,
        ] {
            assert_eq!(Workload::from_str(w.name(), false), Ok(w));
        }
    }

    #[test]
    fn pairs_are_symmetric_and_self_echo_is_the_identity() {
        for i in 0..10 {
            assert_eq!(Workload::Pairs.peer_of(Workload::Pairs.peer_of(i)), i);
            assert_ne!(Workload::Pairs.peer_of(i), i);
            assert_eq!(Workload::SelfEcho.peer_of(i), i);
        }
    }
}
