//! One socket's life: handshake, authentication, frames in, frames out, close.
//!
//! One task owns the socket. It reads client frames, answers bad ones with `INVALID_MESSAGE`
//! (closing only past `max_bad_frames` or on an oversized frame), authenticates, and publishes
//! valid frames as envelopes. Frames from processors arrive on the socket's bounded queue and
//! are written in batches with one flush. `from` is always the authenticated user. A socket
//! that logs in with `"ack": true` remembers the numbered frames written to it until the
//! client acknowledges them (`ACK {upTo}` acknowledges only frames this socket was sent).
//! A socket opened at the URL form (`/channels/<channel>/users/<user>`, see plain.rs) is
//! authenticated and joined from its URL, and speaks plain text.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until, timeout, timeout_at};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, field, info, info_span, warn};

use common::channel::Channel;
use common::envelope::{Body, Envelope};
use common::frame::{
    ClientBody, ClientFrame, FrameError, Rejected, SubscribeOptions, out_auth_acked,
    out_auth_reply, out_auth_required, out_auth_wrong_domain, out_channel_member,
    out_channel_presence, out_general_error, out_invalid, out_invalid_reason, out_membership,
    parse_client_frame,
};
use common::ids::{DomainName, MessageId, SocketAddress, SocketId, UserId};
use common::presence::PresenceError;

use crate::Shared;
use crate::acks::Unacked;
use crate::auth;
use crate::channels::{self, Memberships};
use crate::limits::{Admitted, TokenBucket};
use crate::plain;
use crate::registry::{Outbound, SocketHandle, Ticket};

/// Most queued frames written before one flush.
const MAX_BATCH: usize = 64;

/// Close code sent when a master user closes the socket with CLOSE_CONNECTION.
pub const CLOSED_BY_MASTER: u16 = 4000;
/// Close code sent when the client sent nothing (not even a pong) for the idle timeout.
pub const CLOSED_IDLE: u16 = 4002;
/// Close code sent when the client reads too slowly to keep its outbound queue from filling.
pub const CLOSED_SLOW_READER: u16 = 4003;
/// Close code sent when an acking socket's resume did not end within `resume_timeout_ms`:
/// the client should log in again, which resumes again.
pub const CLOSED_RESUME_TIMEOUT: u16 = 4004;
/// Close code sent to an acking socket whose presence was lost while it stayed connected
/// (found missing by the refresh): messages for it may have been kept meanwhile, and the
/// client logs in again to have them resent.
pub const CLOSED_PRESENCE_LOST: u16 = 4005;
/// Close reason at shutdown (code 1001): the client should reconnect, to another connector if
/// it knows one.
pub const SHUTDOWN_REASON: &str = "server shutting down; reconnect";
/// Longest wait at shutdown for the frames queued for a socket to be written.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(1);

pub(crate) async fn run(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    id: SocketId,
    shutdown: CancellationToken,
) {
    let span =
        info_span!("socket", connector = %shared.name, socket = id, %peer, user = field::Empty);
    async move {
        metrics::gauge!("linker_connector_connections").increment(1.0);
        let config = &shared.config;
        let deadline = Instant::now() + config.auth_deadline();
        let admitted = shared.admission.admit(
            peer.ip(),
            config.max_connections_per_ip,
            config.max_connections,
        );
        if let Err(reason) = &admitted {
            metrics::counter!("linker_connector_refused_total").increment(1);
            info!(reason, "connection refused");
        }
        match shared.tls.clone() {
            None => session(shared, stream, admitted, deadline, id, shutdown).await,
            // Boxed: a TLS session's state is ~10 KiB, and every plain socket's task would
            // otherwise reserve room for it (each task is as large as its largest branch).
            Some(tls) => {
                Box::pin(tls_session(
                    tls, shared, stream, admitted, deadline, id, shutdown,
                ))
                .await
            }
        }
        metrics::gauge!("linker_connector_connections").decrement(1.0);
    }
    .instrument(span)
    .await
}

/// The TLS handshake (within the auth deadline), then the session over it.
async fn tls_session(
    tls: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
    stream: TcpStream,
    admitted: Result<Admitted, &'static str>,
    deadline: Instant,
    id: SocketId,
    shutdown: CancellationToken,
) {
    match timeout_at(deadline, tls.accept(stream)).await {
        Ok(Ok(stream)) => session(shared, stream, admitted, deadline, id, shutdown).await,
        Ok(Err(e)) => debug!(error = %e, "TLS handshake failed"),
        Err(_) => debug!("no TLS handshake before the auth deadline"),
    }
}

fn close_frame(code: CloseCode, reason: impl Into<String>) -> CloseFrame {
    CloseFrame {
        code,
        reason: Utf8Bytes::from(reason.into()),
    }
}

async fn session<S>(
    shared: Arc<Shared>,
    stream: S,
    admitted: Result<Admitted, &'static str>,
    deadline: Instant,
    id: SocketId,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let config = &shared.config;
    let refusal = admitted.as_ref().err().copied();
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(config.read_buffer_bytes)
        .write_buffer_size(16 * 1024)
        .max_message_size(Some(config.max_frame_bytes))
        .max_frame_size(Some(config.max_frame_bytes));
    // The URL form's path and query, kept from the handshake.
    let mut plain_url: Option<(String, Option<String>)> = None;
    // The callback's signature is tungstenite's; its error type is not ours to shrink.
    #[allow(clippy::result_large_err)]
    let only_ws_path = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        if let Some(reason) = refusal {
            let mut busy = ErrorResponse::new(Some(reason.to_owned()));
            *busy.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
            Err(busy)
        } else if req.uri().path() == "/ws" {
            Ok(resp)
        } else if plain::is_route(req.uri().path()) {
            let query = req.uri().query().map(str::to_owned);
            plain_url = Some((req.uri().path().to_owned(), query));
            Ok(resp)
        } else {
            let mut not_found =
                ErrorResponse::new(Some("linker serves WebSocket clients at /ws".into()));
            *not_found.status_mut() = http::StatusCode::NOT_FOUND;
            Err(not_found)
        }
    };
    // Boxed, like the other once-per-socket steps (authentication, channel frames, the end):
    // the task of every idle socket would otherwise keep room for their state all its life.
    let handshake = Box::pin(tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        only_ws_path,
        Some(ws_config),
    ));
    let ws = match timeout_at(deadline, handshake).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            debug!(error = %e, "handshake failed");
            return;
        }
        Err(_) => {
            debug!("no handshake before the auth deadline");
            return;
        }
    };
    let (sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::channel(config.outbound_queue);
    let mut s = Session {
        address: SocketAddress {
            connector: shared.name.clone(),
            socket: id,
        },
        shared: shared.clone(),
        sink,
        tx,
        user: None,
        bad_frames: 0,
        close: CancellationToken::new(),
        close_reason: Arc::new(Mutex::new(None)),
        // Allocated by the first batch with tickets: an idle socket holds none.
        tickets: Vec::new(),
        bucket: TokenBucket::new(config.max_frames_per_sec, config.frame_burst),
        overflow_since: Arc::new(AtomicU64::new(0)),
        last_seen: Instant::now(),
        publishing: None,
        ack: false,
        resume_until: None,
        unacked: Unacked::default(),
        memberships: Memberships::default(),
        plain: None,
    };
    let opened = match plain_url {
        Some((path, query)) => s.open_plain(&path, query.as_deref()).await,
        None => None,
    };
    let end = match opened {
        Some(refused) => Some(refused),
        None => s.serve(&mut stream, &mut rx, deadline, &shutdown).await,
    };
    if let Some(frame) = end {
        debug!(code = u16::from(frame.code), reason = %frame.reason, "closing");
        let _ = timeout(
            Duration::from_secs(1),
            s.sink.send(Message::Close(Some(frame))),
        )
        .await;
    }
    Box::pin(s.finish()).await;
    drop(admitted);
}

struct Session<S> {
    shared: Arc<Shared>,
    address: SocketAddress,
    sink: SplitSink<WebSocketStream<S>, Message>,
    /// Kept so the queue stays open while the registry has no handle yet.
    tx: mpsc::Sender<Outbound>,
    user: Option<UserId>,
    bad_frames: u32,
    close: CancellationToken,
    close_reason: Arc<Mutex<Option<(u16, String)>>>,
    tickets: Vec<Ticket>,
    bucket: TokenBucket,
    overflow_since: Arc<AtomicU64>,
    /// When the client last sent anything (frames, pings, pongs).
    last_seen: Instant,
    /// The publish in flight, if any (see `start_publish`).
    publishing: Option<Publishing>,
    /// The socket logged in with `"ack": true`.
    ack: bool,
    /// While an acking socket waits for its resume to end: when it stops waiting.
    resume_until: Option<Instant>,
    /// Numbered frames written and not yet acknowledged.
    unacked: Unacked,
    /// The channels this socket is a member of.
    memberships: Memberships,
    /// The channel of a socket opened at the URL form: it speaks plain text.
    plain: Option<Channel>,
}

/// A publish in flight; resolves to the error frame to send the client, if any.
/// How long the reply to a client's close frame may take to be written.
const CLOSE_REPLY_WAIT: Duration = Duration::from_secs(1);

type Publishing = Pin<Box<dyn Future<Output = Published> + Send>>;

/// How a publish in flight ended.
struct Published {
    /// A frame to tell the client (the publish failed).
    told: Option<String>,
    /// The ids of an ACK the bus refused, to go with the socket's next ACK.
    acks_unsent: Vec<MessageId>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    /// Runs until the socket should close; returns the close frame to send, if any.
    async fn serve(
        &mut self,
        stream: &mut SplitStream<WebSocketStream<S>>,
        rx: &mut mpsc::Receiver<Outbound>,
        deadline: Instant,
        shutdown: &CancellationToken,
    ) -> Option<CloseFrame> {
        let ping_every = Duration::from_millis(self.shared.config.ping_interval_ms.max(100));
        let idle_after = Duration::from_millis(self.shared.config.idle_timeout_ms.max(100));
        let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
        let mut publishing: Option<Publishing> = None;
        let end = loop {
            if publishing.is_none() {
                publishing = self.publishing.take();
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    // What is queued for the client goes out before the close (bounded).
                    let _ = timeout(SHUTDOWN_FLUSH, self.flush_queued(rx)).await;
                    break Some(close_frame(CloseCode::Away, SHUTDOWN_REASON));
                }
                _ = self.close.cancelled() => {
                    let (code, reason) = self
                        .close_reason
                        .lock()
                        .expect("close reason lock is never poisoned")
                        .take()
                        .unwrap_or((CLOSED_BY_MASTER, "closed by the server".into()));
                    info!(code, %reason, "closing on request");
                    break Some(close_frame(CloseCode::from(code), reason));
                }
                _ = sleep_until(deadline), if self.user.is_none() => {
                    info!("not authenticated before the deadline; closing");
                    break Some(close_frame(CloseCode::Policy, "authentication deadline passed"));
                }
                _ = sleep_until(self.resume_until.unwrap_or(deadline)), if self.resume_until.is_some() => {
                    self.resume_until = None;
                    if let Some(end) = self.resume_overdue() {
                        break Some(end);
                    }
                }
                Some(out) = rx.recv() => {
                    // A reader that stopped reading blocks the write; a close (slow reader,
                    // master, shutdown) must still get through.
                    let (close, stop) = (self.close.clone(), shutdown.clone());
                    let written = tokio::select! {
                        written = self.write_batch(out, rx) => written,
                        _ = close.cancelled() => continue,
                        _ = stop.cancelled() => continue,
                    };
                    if let Err(e) = written {
                        debug!(error = %e, "write failed");
                        break None;
                    }
                }
                told = async { publishing.as_mut().expect("guarded by the condition").await }, if publishing.is_some() => {
                    publishing = None;
                    if !told.acks_unsent.is_empty() {
                        self.unacked.not_handed_on(told.acks_unsent);
                    }
                    if let Some(text) = told.told {
                        self.reply(text).await;
                    }
                }
                _ = ping.tick() => {
                    let quiet = self.last_seen.elapsed();
                    if quiet >= idle_after {
                        info!(?quiet, "idle timeout; closing");
                        metrics::counter!("linker_connector_idle_closed_total").increment(1);
                        let reason = format!("idle timeout: nothing received for {} ms", idle_after.as_millis());
                        break Some(close_frame(CloseCode::from(CLOSED_IDLE), reason));
                    }
                    if quiet >= ping_every && self.sink.send(Message::Ping(Default::default())).await.is_err() {
                        break None;
                    }
                }
                incoming = stream.next(), if publishing.is_none() => {
                    if matches!(incoming, Some(Ok(_))) {
                        self.last_seen = Instant::now();
                    }
                    match incoming {
                    None => return None,
                    Some(Ok(Message::Close(_))) => {
                        // The reply to the client's close is queued: send it, so the client
                        // sees a clean close (not 1006). Bounded: the client may not read.
                        let _ = tokio::time::timeout(CLOSE_REPLY_WAIT, self.sink.flush()).await;
                        return None;
                    }
                    Some(Ok(Message::Text(text))) => {
                        let text = match &self.plain {
                            Some(channel) => plain::post_frame(channel, &text).into(),
                            None => text,
                        };
                        if let Some(end) = self.on_text(&text).await {
                            break Some(end);
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        let error = if self.bucket.take() {
                            FrameError::Binary
                        } else {
                            FrameError::RateLimited(self.shared.config.max_frames_per_sec)
                        };
                        if let Some(end) = self.on_bad(&error, None).await {
                            break Some(end);
                        }
                    }
                    Some(Ok(_)) => {} // ping, pong: tungstenite answers pings itself
                    Some(Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size }))) => {
                        let error = FrameError::TooLarge { size, limit: max_size };
                        info!(size, max_size, "frame over the size limit; closing");
                        metrics::counter!("linker_connector_invalid_frames_total", "reason" => error.reason())
                            .increment(1);
                        self.reply(out_invalid(&error, None)).await;
                        break Some(close_frame(CloseCode::Size, error.to_string()));
                    }
                    Some(Err(e)) => {
                        debug!(error = %e, "read failed");
                        break None;
                    }
                    }
                }
            }
        };
        // A publish still in flight (the client's last frame, a presence event) is finished
        // by `finish`, not dropped.
        self.publishing = publishing;
        end
    }

    /// Writes `first` and whatever else is queued (up to a batch), with one flush, then
    /// completes their tickets.
    async fn write_batch(
        &mut self,
        first: Outbound,
        rx: &mut mpsc::Receiver<Outbound>,
    ) -> Result<(), WsError> {
        let mut next = Some(first);
        let mut count = 0;
        while let Some(out) = next.take() {
            let text = match &self.plain {
                None => Some(out.text),
                Some(_) => plain::text_form(&out.text).map(Utf8Bytes::from),
            };
            // A plain socket writes channel posts only; other frames count as not written.
            if let Some(text) = text {
                self.sink.feed(Message::Text(text)).await?;
                self.tickets.extend(out.ticket);
                if let Some(numbered) = out.numbered {
                    let (seq, id) = *numbered;
                    self.unacked.written(seq, id);
                }
            }
            count += 1;
            if count < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        self.sink.flush().await?;
        for ticket in self.tickets.drain(..) {
            ticket.complete(true);
        }
        self.overflow_since.store(0, Ordering::Relaxed);
        Ok(())
    }

    /// Writes whatever is queued for the socket now.
    async fn flush_queued(&mut self, rx: &mut mpsc::Receiver<Outbound>) {
        while let Ok(out) = rx.try_recv() {
            if self.write_batch(out, rx).await.is_err() {
                return;
            }
        }
    }

    /// The close for an acking socket whose resume has not ended by `resume_timeout_ms`, if it
    /// has not.
    ///
    /// Its live frames are held back until the end, so a lost end would hold them for good.
    /// Closing, rather than letting the held frames go, keeps both promises: what was kept
    /// comes before anything new (the client logs in again and a new resume sends it all, in
    /// order), and nothing is lost or sent again once acknowledged (the held frames were kept
    /// in the store before they were sent here; their writes are reported not done, and only
    /// what is still kept, so not acknowledged, is resent). Asking for the resume again on the
    /// same socket could not tell a late end of the first one from the end of the second.
    fn resume_overdue(&self) -> Option<CloseFrame> {
        if !self.shared.registry.resuming(self.address.socket) {
            return None;
        }
        let after = self.shared.config.resume_timeout_ms;
        warn!(
            after_ms = after,
            "resume did not end in time; closing so the client resumes again"
        );
        metrics::counter!("linker_connector_resume_timeouts_total").increment(1);
        let reason = format!("resume not completed within {after} ms; reconnect");
        Some(close_frame(CloseCode::from(CLOSED_RESUME_TIMEOUT), reason))
    }

    /// Writes one frame of the session's own (replies, errors).
    async fn reply(&mut self, text: String) {
        metrics::counter!("linker_connector_frames_out_total", "type" => common::frame::outbound_type(&text), "feature" => "none").increment(1);
        if let Err(e) = self.sink.send(Message::Text(text.into())).await {
            debug!(error = %e, "reply not written");
        }
    }

    async fn on_text(&mut self, text: &str) -> Option<CloseFrame> {
        if !self.bucket.take() {
            let rate = self.shared.config.max_frames_per_sec;
            return self.on_bad(&FrameError::RateLimited(rate), None).await;
        }
        let frame = match parse_client_frame(text, &self.shared.limits) {
            Ok(frame) => frame,
            Err(Rejected { error, reference }) => {
                return self.on_bad(&error, reference.as_deref()).await;
            }
        };
        self.bad_frames = 0;
        metrics::counter!("linker_connector_frames_in_total", "type" => frame.body.message_type().wire_name(), "feature" => frame.feature.label()).increment(1);
        match (&self.user, frame.body) {
            (
                None,
                ClientBody::AuthClient {
                    app_id,
                    user_id,
                    token,
                    ack,
                },
            ) => Box::pin(self.authenticate(&app_id, &user_id, token.as_deref(), ack)).await,
            (None, _) => {
                self.reply(out_auth_required(frame.reference.as_deref()))
                    .await;
                None
            }
            (Some(_), ClientBody::AuthClient { .. }) => {
                let text = out_invalid_reason(
                    "ALREADY_AUTHENTICATED",
                    "this socket is already authenticated",
                    frame.reference.as_deref(),
                );
                self.reply(text).await;
                None
            }
            (Some(user), body) => {
                let user = user.clone();
                let frame = ClientFrame { body, ..frame };
                self.forward(user, frame).await;
                None
            }
        }
    }

    async fn on_bad(&mut self, error: &FrameError, reference: Option<&str>) -> Option<CloseFrame> {
        self.bad_frames += 1;
        metrics::counter!("linker_connector_invalid_frames_total", "reason" => error.reason())
            .increment(1);
        debug!(reason = error.reason(), %error, "invalid frame");
        self.reply(out_invalid(error, reference)).await;
        if self.bad_frames > self.shared.config.max_bad_frames {
            info!(count = self.bad_frames, "too many invalid frames; closing");
            let reason = match error {
                FrameError::RateLimited(_) => "frame rate limit exceeded",
                _ => "too many invalid frames",
            };
            return Some(close_frame(CloseCode::Policy, reason));
        }
        None
    }

    async fn authenticate(
        &mut self,
        app_id: &str,
        user_id: &str,
        token: Option<&str>,
        ack: bool,
    ) -> Option<CloseFrame> {
        let shared = self.shared.clone();
        let checked = shared
            .auth
            .authenticate(&shared.network.current(), app_id, user_id, token)
            .await;
        let result = match checked {
            Ok(user) => match shared.presence.add(&user, &self.address).await {
                Ok(()) => Ok(user),
                Err(e) => Err(auth::AuthError::PresenceUnavailable(e.to_string())),
            },
            Err(e) => Err(e),
        };
        let user = match result {
            Ok(user) => user,
            Err(e) => {
                metrics::counter!("linker_connector_auths_total", "result" => "failed")
                    .increment(1);
                info!(user = user_id, reason = e.reason(), error = %e, "authentication refused");
                let reply = match &e {
                    auth::AuthError::WrongDomain { home, .. } => {
                        let network = shared.network.current();
                        let url = network.ws_url(&DomainName::new(home));
                        out_auth_wrong_domain(app_id, user_id, home, url)
                    }
                    _ => out_auth_reply(app_id, user_id, false, Some(e.reason())),
                };
                if self.plain.is_none() {
                    self.reply(reply).await;
                }
                return Some(close_frame(
                    CloseCode::Policy,
                    format!("authentication failed: {}", e.reason()),
                ));
            }
        };
        tracing::Span::current().record("user", field::display(&user));
        shared.registry.insert(
            self.address.socket,
            SocketHandle {
                user: user.clone(),
                tx: self.tx.clone(),
                close: self.close.clone(),
                close_reason: self.close_reason.clone(),
                overflow_since: self.overflow_since.clone(),
                recent: Mutex::new(VecDeque::new()),
                ack,
                held: Mutex::new(ack.then(VecDeque::new)),
                channels: self.memberships.subscriptions(),
            },
        );
        let reply = if ack {
            out_auth_acked(app_id, user.as_str())
        } else {
            out_auth_reply(app_id, user.as_str(), true, None)
        };
        if self.plain.is_none() {
            self.reply(reply).await;
        }
        metrics::counter!("linker_connector_auths_total", "result" => "ok").increment(1);
        info!(ack, "authenticated");
        self.user = Some(user.clone());
        self.ack = ack;
        let mut envelopes: Vec<Envelope> = self
            .presence_envelope(user.clone(), Body::UserConnected)
            .into_iter()
            .collect();
        if ack {
            // What is kept for the user comes back to this socket before anything new.
            envelopes.push(self.envelope(user, Body::Resume));
            let wait = Duration::from_millis(self.shared.config.resume_timeout_ms);
            self.resume_until = Some(Instant::now() + wait);
        }
        self.start_publishes(envelopes, false);
        None
    }

    /// Opens a socket at the URL form: authenticates the user as `AUTH_CLIENT` would and joins
    /// the channel, writing nothing; from then on it speaks plain text. Answers the close
    /// frame if the URL, the login or the join is refused.
    async fn open_plain(&mut self, path: &str, query: Option<&str>) -> Option<CloseFrame> {
        let route = match plain::Route::parse(path, query) {
            Ok(route) => route,
            Err((reason, detail)) => {
                info!(reason, %detail, "plain text route refused");
                let text = plain::close_reason(format!("{reason}: {detail}"));
                return Some(close_frame(CloseCode::Policy, text));
            }
        };
        self.plain = Some(route.channel.clone());
        let token = route.token.as_deref();
        if let Some(refused) = self
            .authenticate(&route.app_id, &route.user_id, token, false)
            .await
        {
            return Some(refused);
        }
        let user = self.user.clone().expect("authenticated just now");
        let options = SubscribeOptions {
            echo: true,
            history: None,
            after: None,
        };
        let joined = self.join(&user, &route.channel, options).await;
        let (code, text) = match joined {
            Ok(Ok(())) => return None,
            Ok(Err((reason, detail))) => (CloseCode::Policy, format!("{reason}: {detail}")),
            Err(e) => (CloseCode::Error, format!("PRESENCE_UNAVAILABLE: {e}")),
        };
        info!(%text, "plain text socket not joined");
        Some(close_frame(code, plain::close_reason(text)))
    }

    /// A RELIABLE envelope from this socket, with no reference.
    fn envelope(&self, from: UserId, body: Body) -> Envelope {
        Envelope {
            id: MessageId::new(),
            from,
            origin: self.address.clone(),
            feature: common::frame::Feature::Reliable,
            reference: None,
            confirm: false,
            created_at: common::now_millis(),
            hops: 0,
            ack: self.ack,
            body,
        }
    }

    /// The envelope telling processors (and so the app's master user) that a user came or
    /// went; none for the master user itself.
    fn presence_envelope(&self, user: UserId, body: Body) -> Option<Envelope> {
        if self.shared.network.current().is_master(&user) {
            return None;
        }
        Some(self.envelope(user, body))
    }

    /// Starts publishing `envelope`. The session keeps writing while it is in flight but reads
    /// no further frame (that keeps the sender's order, and holds a client back while the bus
    /// is full). If `tell_client`, a failure is answered with `GENERAL_ERROR`.
    fn start_publish(&mut self, envelope: Envelope, tell_client: bool) {
        self.start_publishes(vec![envelope], tell_client)
    }

    /// Publishes `envelopes` in order as one publish in flight (see `start_publish`). A
    /// resume that cannot be published ends at once, so live frames are not held back.
    fn start_publishes(&mut self, envelopes: Vec<Envelope>, tell_client: bool) {
        if envelopes.is_empty() {
            return;
        }
        let bus = self.shared.bus.clone();
        let shared = self.shared.clone();
        let socket = self.address.socket;
        let echo = if tell_client {
            envelopes[0].reference.clone()
        } else {
            None
        };
        let publish = async move {
            let mut result = Ok(());
            let mut acks_unsent = Vec::new();
            for envelope in envelopes {
                let resume = matches!(envelope.body, Body::Resume);
                let acked = match &envelope.body {
                    Body::Ack { ids } => ids.clone(),
                    _ => Vec::new(),
                };
                let feature = envelope.feature.label();
                result = bus.publish(envelope).await;
                if result.is_err() {
                    metrics::counter!("linker_bus_publish_errors_total", "feature" => feature)
                        .increment(1);
                    if resume {
                        shared.registry.end_resume(socket);
                    }
                    // Not lost: the socket's next ACK carries these ids again.
                    acks_unsent = acked;
                    break;
                }
            }
            let told = match result {
                Ok(()) => None,
                Err(e) if tell_client => {
                    warn!(error = %e, "publish failed; telling the client");
                    Some(out_general_error(
                        "BUS_UNAVAILABLE",
                        &e.to_string(),
                        echo.as_deref(),
                    ))
                }
                Err(e) => {
                    warn!(error = %e, "presence event not published");
                    None
                }
            };
            Published { told, acks_unsent }
        };
        self.publishing = Some(Box::pin(publish.instrument(tracing::Span::current())));
    }

    /// Checks what only the connector can check, then hands the frame to processors.
    async fn forward(&mut self, user: UserId, frame: ClientFrame) {
        let ClientFrame {
            body,
            reference,
            feature,
            confirmation_enabled,
        } = frame;
        let body = match body {
            ClientBody::Message { to, content } => {
                let network = self.shared.network.current();
                if let Err((reason, detail)) = self.may_message(&network, &user, &to) {
                    return self.refuse(reason, &detail, reference).await;
                }
                Body::Message { to, content }
            }
            ClientBody::GroupMessage { to, content } => {
                // The check depends on the target's app only: once per app in a row.
                let network = self.shared.network.current();
                let mut checked: Option<&str> = None;
                for target in &to {
                    if checked == Some(target.app()) {
                        continue;
                    }
                    if let Err((reason, detail)) = self.may_message(&network, &user, target) {
                        return self.refuse(reason, &detail, reference).await;
                    }
                    checked = Some(target.app());
                }
                Body::GroupMessage { to, content }
            }
            ClientBody::CloseConnection { user_id } => {
                if self.shared.network.current().master_of(&user_id).as_ref() != Some(&user) {
                    let detail = format!("only the master user of {}'s app may close it", user_id);
                    return self.refuse("NOT_MASTER", &detail, reference).await;
                }
                Body::CloseConnection { user: user_id }
            }
            ClientBody::FetchMissingMessages { count } => Body::FetchMissingMessages {
                count: count.min(self.shared.config.max_fetch_count),
            },
            ClientBody::Ack { up_to, ids } => {
                if !self.ack {
                    let detail = "ACK needs a socket that logged in with \"ack\": true";
                    return self.refuse("ACK_NOT_ENABLED", detail, reference).await;
                }
                let ids = self.unacked.acknowledge(up_to, ids);
                if ids.is_empty() {
                    return;
                }
                Body::Ack { ids }
            }
            ClientBody::ChannelMessage { channel, content } => {
                let network = self.shared.network.current();
                let presence = self.shared.presence.clone();
                match channels::may_use(&network, presence.as_ref(), &user, &channel).await {
                    Ok(Ok(())) => {}
                    Ok(Err((reason, detail))) => {
                        return self.refuse(reason, &detail, reference).await;
                    }
                    Err(e) => return self.presence_failed(&e, reference).await,
                }
                Body::ChannelMessage { channel, content }
            }
            ClientBody::Subscribe { channel, options } => {
                return Box::pin(self.subscribe(user, channel, options, reference)).await;
            }
            ClientBody::Unsubscribe { channel } => {
                return Box::pin(self.unsubscribe(user, channel, reference)).await;
            }
            ClientBody::ChannelPresence { channel } => {
                return Box::pin(self.channel_presence(user, channel, reference)).await;
            }
            ClientBody::ChannelMember {
                added,
                channel,
                user_id,
            } => {
                return self
                    .choose_member(user, added, channel, user_id, reference)
                    .await;
            }
            ClientBody::AuthClient { .. } => return,
        };
        let envelope = Envelope {
            id: MessageId::new(),
            from: user,
            origin: self.address.clone(),
            feature,
            reference,
            confirm: confirmation_enabled,
            created_at: common::now_millis(),
            hops: 0,
            ack: self.ack,
            body,
        };
        self.start_publish(envelope, true);
    }

    /// Makes this socket a member of `channel` under the app's channel policy.
    async fn join(
        &mut self,
        user: &UserId,
        channel: &Channel,
        options: SubscribeOptions,
    ) -> Result<Result<(), channels::Refusal>, PresenceError> {
        let presence = self.shared.presence.clone();
        let network = self.shared.network.current();
        self.memberships
            .join(
                &network,
                presence.as_ref(),
                user,
                &self.address,
                channel,
                options,
            )
            .await
    }

    async fn subscribe(
        &mut self,
        user: UserId,
        channel: Channel,
        options: SubscribeOptions,
        reference: Option<String>,
    ) {
        let joined = self.join(&user, &channel, options).await;
        match joined {
            Ok(Ok(())) => {
                self.reply(out_membership(true, &channel, reference.as_deref()))
                    .await;
                if options.replays() {
                    self.ask_history(user, channel, options, reference).await;
                }
            }
            Ok(Err((reason, detail))) => self.refuse(reason, &detail, reference).await,
            Err(e) => self.presence_failed(&e, reference).await,
        }
    }

    /// Asks processors for the replay a SUBSCRIBE wants; if it cannot be asked, the held posts
    /// go out and the client is told.
    async fn ask_history(
        &mut self,
        user: UserId,
        channel: Channel,
        options: SubscribeOptions,
        reference: Option<String>,
    ) {
        let body = Body::ChannelHistory {
            channel: channel.clone(),
            after: options.after.unwrap_or(0),
            count: options.history.unwrap_or(u32::MAX),
        };
        let envelope = Envelope {
            id: MessageId::new(),
            from: user,
            origin: self.address.clone(),
            feature: common::frame::Feature::Reliable,
            reference: reference.clone(),
            confirm: false,
            created_at: common::now_millis(),
            hops: 0,
            ack: false,
            body,
        };
        if let Err(e) = self.shared.bus.publish(envelope).await {
            warn!(error = %e, "channel history not asked for");
            for text in self.memberships.abandon_replay(&channel) {
                let _ = self.tx.try_send(Outbound {
                    text,
                    ticket: None,
                    numbered: None,
                });
            }
            let frame = out_general_error("BUS_UNAVAILABLE", &e.to_string(), reference.as_deref());
            self.reply(frame).await;
        }
    }

    async fn unsubscribe(&mut self, user: UserId, channel: Channel, reference: Option<String>) {
        let presence = self.shared.presence.clone();
        let left = self
            .memberships
            .leave(presence.as_ref(), &user, &self.address, &channel)
            .await;
        match left {
            Ok(()) => {
                self.reply(out_membership(false, &channel, reference.as_deref()))
                    .await
            }
            Err(e) => self.presence_failed(&e, reference).await,
        }
    }

    async fn channel_presence(
        &mut self,
        user: UserId,
        channel: Channel,
        reference: Option<String>,
    ) {
        let network = self.shared.network.current();
        let presence = self.shared.presence.clone();
        match channels::may_use(&network, presence.as_ref(), &user, &channel).await {
            Ok(Ok(())) => {}
            Ok(Err((reason, detail))) => return self.refuse(reason, &detail, reference).await,
            Err(e) => return self.presence_failed(&e, reference).await,
        }
        match channels::members(presence.as_ref(), &channel).await {
            Ok(members) => {
                let frame = out_channel_presence(&channel, &members, reference.as_deref());
                self.reply(frame).await
            }
            Err(e) => self.presence_failed(&e, reference).await,
        }
    }

    /// CHANNEL_ADD or CHANNEL_REMOVE from `master`.
    async fn choose_member(
        &mut self,
        master: UserId,
        added: bool,
        channel: Channel,
        user: UserId,
        reference: Option<String>,
    ) {
        let network = self.shared.network.current();
        let presence = self.shared.presence.clone();
        let chosen =
            channels::choose_member(&network, presence.as_ref(), &master, added, &channel, &user)
                .await;
        match chosen {
            Ok(Ok(())) => {
                let frame = out_channel_member(added, &channel, &user, reference.as_deref());
                self.reply(frame).await
            }
            Ok(Err((reason, detail))) => self.refuse(reason, &detail, reference).await,
            Err(e) => self.presence_failed(&e, reference).await,
        }
    }

    async fn presence_failed(&mut self, e: &PresenceError, reference: Option<String>) {
        warn!(error = %e, "channel frame not carried out");
        let frame = out_general_error("PRESENCE_UNAVAILABLE", &e.to_string(), reference.as_deref());
        self.reply(frame).await;
    }

    fn may_message(
        &self,
        network: &common::network::Network,
        from: &UserId,
        to: &UserId,
    ) -> Result<(), (&'static str, String)> {
        if network.app(to.app()).is_none() {
            return Err(("UNKNOWN_APP", format!("no client app named `{}`", to.app())));
        }
        if from.app() != to.app() && !self.shared.config.allow_cross_app {
            return Err((
                "CROSS_APP_FORBIDDEN",
                format!(
                    "users of app {} may not message users of app {}",
                    from.app(),
                    to.app()
                ),
            ));
        }
        Ok(())
    }

    async fn refuse(&mut self, reason: &str, detail: &str, reference: Option<String>) {
        debug!(reason, detail, "frame refused");
        self.reply(out_invalid_reason(reason, detail, reference.as_deref()))
            .await;
    }

    /// Forgets the socket: registry, presence, and a USER_DISCONNECTED for the master.
    async fn finish(&mut self) {
        // The client's last frame (or the connect event) goes out before the disconnect.
        if let Some(publishing) = self.publishing.take() {
            publishing.await;
        }
        let Some(user) = self.user.take() else {
            return;
        };
        self.shared.registry.remove(self.address.socket);
        if let Err(e) = self.shared.presence.remove(&user, &self.address).await {
            warn!(error = %e, "presence not updated on close");
        }
        let presence = self.shared.presence.clone();
        if let Err(e) = self
            .memberships
            .leave_all(presence.as_ref(), &user, &self.address)
            .await
        {
            warn!(error = %e, "channel memberships not removed on close");
        }
        info!("disconnected");
        if let Some(envelope) = self.presence_envelope(user, Body::UserDisconnected)
            && let Err(e) = self.shared.bus.publish(envelope).await
        {
            warn!(error = %e, "presence event not published");
        }
    }
}
