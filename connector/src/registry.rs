//! The table of authenticated sockets, and the loop that carries out processor commands.
//!
//! Each socket has a bounded outbound queue owned by its session task; this loop never
//! waits on a socket (`try_send`), so one slow reader cannot stall the others. A `Deliver`
//! that asks for a report hands each socket a [`Ticket`]; the session completes it once the
//! frame is written, and a ticket dropped unwritten (socket gone, queue full) counts as not
//! written. The report goes back when the last ticket is in.
//!
//! A socket that acknowledges takes a RELIABLE frame with an id only with its sequence number
//! (added to the frame here); without one the frame is reported `acking` and not written. While
//! such a socket is resuming, numbered frames are held back (bounded by the outbound queue)
//! and queued after the resume's last frame, skipping any the resume already wrote.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use common::bus::{Command, Replier};
use common::envelope::{AckMark, ConnectorCommand, DeliveryReport, Target};
use common::frame::{Feature, with_seq};
use common::ids::{ConnectorName, MessageId, SocketAddress, SocketId, UserId};

use crate::Shared;

/// Something for a session to write.
pub(crate) struct Outbound {
    pub text: Utf8Bytes,
    pub ticket: Option<Ticket>,
    /// For an acking socket: the frame's number and id, remembered once written until acked.
    /// Boxed: every socket's queue reserves room for 32 of these from the start, and only an
    /// acking socket's RELIABLE frames (already a string of their own) carry a number.
    pub numbered: Option<Box<(u64, MessageId)>>,
}

/// How the registry reaches one authenticated socket.
pub(crate) struct SocketHandle {
    pub user: UserId,
    pub tx: mpsc::Sender<Outbound>,
    /// Cancelled to close the socket; the code and reason go in the close frame.
    pub close: CancellationToken,
    pub close_reason: Arc<Mutex<Option<(u16, String)>>>,
    /// When the outbound queue was first found full (ms since the epoch; 0 = not full).
    pub overflow_since: Arc<AtomicU64>,
    /// Ids of the last frames queued for this socket, so a redelivered one is not written
    /// twice; allocated on the first frame with an id.
    pub recent: Mutex<VecDeque<u128>>,
    /// The socket speaks the acknowledged protocol.
    pub ack: bool,
    /// Numbered frames held back while the socket's resume runs (`Some` until it ends).
    pub held: Mutex<Option<VecDeque<(Outbound, u128)>>>,
    /// The socket's channel subscriptions (shared with its session).
    pub channels: crate::channels::Subscriptions,
}

/// How many recent frame ids each socket remembers.
const RECENT_IDS: usize = 128;

impl SocketHandle {
    /// Records `id` as queued; false if it was queued before (a redelivery).
    pub(crate) fn first_time(&self, id: u128) -> bool {
        let mut recent = self
            .recent
            .lock()
            .expect("recent ids lock is never poisoned");
        if recent.contains(&id) {
            return false;
        }
        if recent.len() == RECENT_IDS {
            recent.pop_front();
        }
        recent.push_back(id);
        true
    }
}

impl SocketHandle {
    /// Holds `out` back if the socket is resuming; gives it back otherwise. A full hold
    /// drops it (its ticket reports it unwritten; it stays kept for the next resume).
    fn hold(&self, out: Outbound, id: u128, limit: usize) -> Option<Outbound> {
        let mut held = self
            .held
            .lock()
            .expect("held frames lock is never poisoned");
        match held.as_mut() {
            None => Some(out),
            Some(queue) if queue.len() >= limit => {
                metrics::counter!("linker_connector_resume_hold_full_total").increment(1);
                None
            }
            Some(queue) => {
                queue.push_back((out, id));
                None
            }
        }
    }

    /// Ends the resume: queues the held frames the resume did not write itself.
    fn end_resume(&self) {
        let held = self
            .held
            .lock()
            .expect("held frames lock is never poisoned")
            .take();
        for (out, id) in held.into_iter().flatten() {
            if !self.first_time(id) {
                if let Some(t) = out.ticket {
                    t.complete(true);
                }
                continue;
            }
            // A full queue drops it: reported unwritten, still kept.
            let _ = self.tx.try_send(out);
        }
    }

    fn close_with(&self, code: u16, reason: String) {
        *self
            .close_reason
            .lock()
            .expect("close reason lock is never poisoned") = Some((code, reason));
        self.close.cancel();
    }
}

#[derive(Default)]
pub(crate) struct Registry {
    sockets: DashMap<SocketId, SocketHandle>,
}

impl Registry {
    pub fn insert(&self, socket: SocketId, handle: SocketHandle) {
        self.sockets.insert(socket, handle);
        metrics::gauge!("linker_connector_authenticated_sockets").increment(1.0);
    }

    /// Every authenticated socket, for the presence refresh.
    pub fn snapshot(&self, connector: &ConnectorName) -> Vec<(UserId, SocketAddress)> {
        self.sockets
            .iter()
            .map(|e| {
                (
                    e.value().user.clone(),
                    SocketAddress {
                        connector: connector.clone(),
                        socket: *e.key(),
                    },
                )
            })
            .collect()
    }

    /// Ends a socket's resume without a processor's word (its resume could not be asked for).
    pub fn end_resume(&self, socket: SocketId) {
        if let Some(h) = self.sockets.get(&socket) {
            h.end_resume();
        }
    }

    /// True while the socket's resume runs (its live numbered frames are held back).
    pub fn resuming(&self, socket: SocketId) -> bool {
        self.sockets.get(&socket).is_some_and(|h| {
            h.held
                .lock()
                .expect("held frames lock is never poisoned")
                .is_some()
        })
    }

    /// The socket's handle, if it is still open.
    pub(crate) fn get(
        &self,
        socket: SocketId,
    ) -> Option<dashmap::mapref::one::Ref<'_, SocketId, SocketHandle>> {
        self.sockets.get(&socket)
    }

    pub fn remove(&self, socket: SocketId) {
        if self.sockets.remove(&socket).is_some() {
            metrics::gauge!("linker_connector_authenticated_sockets").decrement(1.0);
        }
    }
}

/// Write results for one reported `Deliver`.
struct Report {
    state: Mutex<ReportState>,
}

struct ReportState {
    written: Vec<bool>,
    acking: Vec<bool>,
    remaining: usize,
    replier: Option<Replier>,
}

impl Report {
    fn set(&self, index: usize, ok: bool) {
        let done = {
            let mut s = self
                .state
                .lock()
                .expect("report lock is never poisoned: nothing panics while holding it");
            s.written[index] = ok;
            s.remaining -= 1;
            if s.remaining == 0 {
                let report = DeliveryReport {
                    written: std::mem::take(&mut s.written),
                    acking: if s.acking.contains(&true) {
                        std::mem::take(&mut s.acking)
                    } else {
                        Vec::new()
                    },
                };
                s.replier.take().map(|r| (r, report))
            } else {
                None
            }
        };
        if let Some((replier, report)) = done {
            replier.reply(report);
        }
    }

    fn set_acking(&self, index: usize) {
        self.state
            .lock()
            .expect("report lock is never poisoned: nothing panics while holding it")
            .acking[index] = true;
    }
}

/// One target's share of a report; completes as "not written" if dropped.
pub(crate) struct Ticket {
    report: Arc<Report>,
    index: usize,
    done: bool,
}

impl Ticket {
    /// Marks the target as a socket that acknowledges.
    fn acking(&self) {
        self.report.set_acking(self.index);
    }

    pub fn complete(mut self, written: bool) {
        self.done = true;
        self.report.set(self.index, written);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.done {
            self.report.set(self.index, false);
        }
    }
}

/// Carries out commands for this connector until the bus closes or shutdown.
pub(crate) async fn run_commands(
    shared: Arc<Shared>,
    mut commands: mpsc::Receiver<Command>,
    shutdown: CancellationToken,
) {
    loop {
        let command = tokio::select! {
            _ = shutdown.cancelled() => return,
            c = commands.recv() => match c {
                Some(c) => c,
                None => return,
            },
        };
        match command.command {
            ConnectorCommand::Deliver {
                targets,
                frame,
                feature,
                id,
                ack,
            } => deliver(
                &shared,
                targets,
                Delivery {
                    frame,
                    feature,
                    id,
                    ack,
                },
                command.reply,
            ),
            ConnectorCommand::Post {
                targets,
                frame,
                feature,
                mark,
            } => crate::channels::post(&shared, targets, &frame, feature, &mark, command.reply),
            ConnectorCommand::Close { targets, reason } => {
                for t in &targets {
                    if let Some(h) = shared.registry.sockets.get(&t.socket)
                        && h.user == t.user
                    {
                        h.close_with(crate::session::CLOSED_BY_MASTER, reason.clone());
                    }
                }
                if let Some(r) = command.reply {
                    r.reply(DeliveryReport {
                        written: vec![true; targets.len()],
                        acking: Vec::new(),
                    });
                }
            }
        }
    }
}

/// What one `Deliver` writes.
struct Delivery {
    frame: String,
    feature: Feature,
    id: Option<MessageId>,
    ack: Option<AckMark>,
}

fn deliver(shared: &Shared, targets: Vec<Target>, d: Delivery, reply: Option<Replier>) {
    metrics::counter!("linker_connector_frames_out_total", "type" => common::frame::outbound_type(&d.frame), "feature" => d.feature.label()).increment(targets.len() as u64);
    let report = match reply {
        Some(r) if targets.is_empty() => {
            r.reply(DeliveryReport::default());
            None
        }
        Some(r) => Some(Arc::new(Report {
            state: Mutex::new(ReportState {
                written: vec![false; targets.len()],
                acking: vec![false; targets.len()],
                remaining: targets.len(),
                replier: Some(r),
            }),
        })),
        None => None,
    };
    let text = Utf8Bytes::from(d.frame.as_str());
    for (index, target) in targets.iter().enumerate() {
        let ticket = report.as_ref().map(|r| Ticket {
            report: r.clone(),
            index,
            done: false,
        });
        let Some(handle) = shared.registry.sockets.get(&target.socket) else {
            debug!(user = %target.user, socket = target.socket, "socket gone before delivery");
            continue;
        };
        if handle.user != target.user {
            continue;
        }
        let mut out = Outbound {
            text: text.clone(),
            ticket,
            numbered: None,
        };
        if !handle.ack && matches!(d.ack, Some(AckMark::Seq(_))) {
            // A live numbered frame is for acking sockets: an original-protocol socket fetches
            // what is kept (reported unwritten). (A fetch's frames, marked `Resent`, are for
            // any socket.)
            continue;
        }
        if handle.ack {
            if let Some(t) = &out.ticket {
                t.acking();
            }
            if d.ack == Some(AckMark::ResumeEnd) {
                // The resume's last frame goes first, then what was held back behind it.
                let _ = handle.tx.try_send(out);
                handle.end_resume();
                continue;
            }
            if let (Feature::Reliable, Some(id)) = (d.feature, d.id) {
                let (seq, live) = match d.ack {
                    Some(AckMark::Seq(seq)) => (seq, true),
                    Some(AckMark::Resent(seq)) => (seq, false),
                    _ => continue, // needs its number first: reported unwritten and acking
                };
                out.text = Utf8Bytes::from(with_seq(&d.frame, seq, id));
                out.numbered = Some(Box::new((seq, id)));
                if live {
                    let limit = shared.config.outbound_queue;
                    let Some(o) = handle.hold(out, id.0.as_u128(), limit) else {
                        continue;
                    };
                    out = o;
                }
            }
        }
        // A redelivered RELIABLE message (the bus is at least once) is written once; a FAST
        // one is never redelivered, so it skips the check.
        if let Some(id) = d.id
            && d.feature == Feature::Reliable
            && !handle.first_time(id.0.as_u128())
        {
            debug!(user = %target.user, socket = target.socket, %id, "already written; not again");
            metrics::counter!("linker_connector_duplicates_skipped_total").increment(1);
            if let Some(t) = out.ticket {
                t.complete(true);
            }
            continue;
        }
        if let Err(mpsc::error::TrySendError::Full(_)) = handle.tx.try_send(out) {
            let kind = if d.feature == Feature::Fast {
                "fast"
            } else {
                "reliable"
            };
            metrics::counter!("linker_connector_queue_full_total", "feature" => kind).increment(1);
            debug!(user = %target.user, socket = target.socket, "outbound queue full");
            slow_reader(shared, &handle);
        }
    }
}

/// Keeps this connector's sockets present, every `presence_refresh_ms`, so presence that is
/// shared between processes expires the sockets of a connector that died.
///
/// A socket the refresh finds missing (the engine was down past the ttl, or restarted
/// without its data) looked offline meanwhile: its `RELIABLE` messages may have been kept
/// instead of written, and its channel memberships may have been pruned. Each such socket
/// joins its channels again; an acking one is also closed with `CLOSED_PRESENCE_LOST`, so the
/// client logs in again and its resume sends what was kept, in order (an original-protocol
/// client fetches kept messages when it asks, as always).
pub(crate) async fn refresh_presence(shared: Arc<Shared>, shutdown: CancellationToken) {
    let every = std::time::Duration::from_millis(shared.config.presence_refresh_ms.max(100));
    // Sockets added again whose channel memberships could not all be restored yet.
    let mut unrestored: Vec<(UserId, SocketAddress)> = Vec::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let mut again = std::mem::take(&mut unrestored);
        let sockets = shared.registry.snapshot(&shared.name);
        for chunk in sockets.chunks(1000) {
            match shared.presence.refresh(chunk).await {
                Ok(readded) => {
                    again.extend(readded.into_iter().filter_map(|i| chunk.get(i).cloned()))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "presence refresh failed; retrying next round");
                    break;
                }
            }
        }
        for (user, socket) in again {
            if !present_again(&shared, &user, &socket).await {
                unrestored.push((user, socket));
            }
        }
    }
}

/// A socket of this connector whose presence had been lost was added again (see
/// `refresh_presence`); false if its channel memberships could not all be restored (retried
/// at the next round).
async fn present_again(shared: &Shared, user: &UserId, socket: &SocketAddress) -> bool {
    let (ack, channels) = match shared.registry.sockets.get(&socket.socket) {
        Some(h) if h.user == *user => (h.ack, crate::channels::channels_of(&h.channels)),
        _ => return true, // closed meanwhile
    };
    if ack {
        metrics::counter!("linker_connector_presence_readded_total", "socket" => "acking")
            .increment(1);
        tracing::warn!(user = %user, socket = socket.socket, "presence was lost while connected; closing the acking socket so it resumes");
        if let Some(h) = shared.registry.sockets.get(&socket.socket) {
            h.close_with(
                crate::session::CLOSED_PRESENCE_LOST,
                "presence lost; log in again to resume".to_owned(),
            );
        }
        return true;
    }
    metrics::counter!("linker_connector_presence_readded_total", "socket" => "plain").increment(1);
    tracing::warn!(user = %user, socket = socket.socket, channels = channels.len(), "presence was lost while connected; added again");
    let mut restored = true;
    for channel in channels {
        if let Err(e) = shared.presence.join(&channel, user, socket).await {
            tracing::warn!(user = %user, %channel, error = %e, "channel membership not restored yet; retrying next round");
            restored = false;
        }
    }
    restored
}

/// Notes a full outbound queue; closes the socket once it has stayed full too long.
pub(crate) fn slow_reader(shared: &Shared, handle: &SocketHandle) {
    let now = common::now_millis();
    let since = handle.overflow_since.load(Ordering::Relaxed);
    if since == 0 {
        handle.overflow_since.store(now, Ordering::Relaxed);
    } else if now.saturating_sub(since) > shared.config.slow_reader_timeout_ms {
        metrics::counter!("linker_connector_slow_reader_closed_total").increment(1);
        handle.close_with(
            crate::session::CLOSED_SLOW_READER,
            format!(
                "slow reader: outbound queue full for more than {} ms",
                shared.config.slow_reader_timeout_ms
            ),
        );
    }
}
