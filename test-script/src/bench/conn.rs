//! One client connection's life: connect, handshake, authenticate, send at the interval,
//! time what comes back, close.
//!
//! The writer and the reader run concurrently in the connection's one task, so a server that
//! is slow to read never stops this side from reading (no mutual write deadlock). With
//! `--ack` the reader notes the highest `seq` it was sent and the writer acknowledges it with
//! `ACK {upTo}` at most every `--ack-every-ms`. Sockets are
//! bound to their source address before connect, with IP_BIND_ADDRESS_NO_PORT so the kernel
//! picks the port per (source, target) pair, not per source address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use std::borrow::Cow;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::time::{Interval, MissedTickBehavior, interval, interval_at, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::errors::{ErrorKind, Errors};
use super::ledger::Ledger;
use super::options::Plan;
use super::workload::{
    FRAME_SUFFIX, Stamp, Workload, channel_frame_prefix, frame_prefix, group_frame_prefix,
};

/// Where a run is; connections send only in `Warmup` and `Measure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Ramp,
    Warmup,
    Measure,
    Drain,
    Done,
}

/// What every connection of a run shares.
pub struct Shared {
    pub plan: Plan,
    pub ledger: Ledger,
    pub errors: Errors,
    pub phase: watch::Sender<Phase>,
    /// The run's clock: message timestamps are microseconds since it.
    pub clock: Instant,
    /// `size` characters of padding, sliced into each content.
    pub padding: String,
    /// Connections authenticated and still open.
    pub open: AtomicUsize,
    /// Connections that finished their setup, authenticated or not.
    pub settled: AtomicUsize,
    /// `ACK` frames sent (`--ack`).
    pub acks: AtomicU64,
}

impl Shared {
    fn now_us(&self) -> u64 {
        self.clock.elapsed().as_micros() as u64
    }
}

/// Per-socket WebSocket buffers kept small: many connections live in one process.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20))
}

type Ws = WebSocketStream<TcpStream>;

/// Runs connection `index` until the run is done or the connection fails.
pub async fn run(shared: Arc<Shared>, index: usize) {
    let setup = timeout(
        Duration::from_secs(shared.plan.options.connect_timeout_secs),
        open(&shared, index),
    )
    .await;
    shared.settled.fetch_add(1, Ordering::Relaxed);
    let ws = match setup {
        Ok(Ok(ws)) => ws,
        Ok(Err((kind, e))) => {
            shared
                .errors
                .record(kind, || format!("connection {index}: {e:#}"));
            return;
        }
        Err(_) => {
            shared.errors.record(ErrorKind::Connect, || {
                format!("connection {index}: not authenticated within the connect timeout")
            });
            return;
        }
    };
    shared.open.fetch_add(1, Ordering::Relaxed);
    let (mut sink, mut stream) = ws.split();
    let mut phase = shared.phase.subscribe();
    // The highest `seq` of a numbered frame received (`--ack`), 0 before the first.
    let numbered = AtomicU64::new(0);
    let ended = tokio::select! {
        r = write(&shared, index, &mut sink, &numbered) => r,
        r = read(&shared, index, &mut stream, &numbered) => r,
        _ = phase.wait_for(|p| *p == Phase::Done) => Ok(()),
    };
    shared.open.fetch_sub(1, Ordering::Relaxed);
    match ended {
        Ok(()) => {
            let _ = timeout(Duration::from_secs(1), sink.send(Message::Close(None))).await;
        }
        Err(e) => shared
            .errors
            .record(ErrorKind::Socket, || format!("connection {index}: {e:#}")),
    }
}

/// Connect, handshake and authenticate; the error says which step failed.
async fn open(shared: &Shared, index: usize) -> Result<Ws, (ErrorKind, anyhow::Error)> {
    let plan = &shared.plan;
    let target = plan.target(index);
    let stream = connect(target.addr, plan.source(index))
        .await
        .map_err(|e| (ErrorKind::Connect, e))?;
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(target.url.as_str(), stream, Some(ws_config()))
            .await
            .map_err(|e| (ErrorKind::Handshake, anyhow!(e)))?;
    let user = plan.user(index);
    authenticate(&mut ws, &plan.options.app_id, &user, plan.options.ack)
        .await
        .map_err(|e| (ErrorKind::Auth, e))?;
    let o = &plan.options;
    if o.workload == Workload::Broadcast && o.channel && index >= o.publishers {
        subscribe(&mut ws, &plan.channel())
            .await
            .map_err(|e| (ErrorKind::Auth, e))?;
    }
    Ok(ws)
}

/// Joins `channel` and waits for `SUBSCRIBED` (a `--channel` broadcast's subscriber).
async fn subscribe(ws: &mut Ws, channel: &str) -> anyhow::Result<()> {
    let frame = format!(r#"{{"type":"SUBSCRIBE","data":{{"channel":"{channel}"}}}}"#);
    ws.send(Message::Text(frame.into())).await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                let frame: Incoming<'_> = serde_json::from_str(&text)
                    .with_context(|| format!("unreadable frame before joining: {text}"))?;
                match frame.kind.as_ref() {
                    "SUBSCRIBED" => return Ok(()),
                    "INVALID_MESSAGE" | "GENERAL_ERROR" => bail!("{channel} not joined: {text}"),
                    _ => {}
                }
            }
            Some(Ok(Message::Close(f))) => bail!("closed before joining: {f:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => bail!("socket error before joining: {e}"),
            None => bail!("socket ended before joining"),
        }
    }
}

async fn connect(
    target: SocketAddr,
    source: Option<std::net::IpAddr>,
) -> anyhow::Result<TcpStream> {
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        #[cfg(target_os = "linux")]
        if ip.is_ipv4() {
            nix::sys::socket::setsockopt(
                &socket,
                nix::sys::socket::sockopt::IpBindAddressNoPort,
                &true,
            )
            .context("IP_BIND_ADDRESS_NO_PORT")?;
        }
        socket
            .bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("bind {ip}"))?;
    }
    let stream = socket
        .connect(target)
        .await
        .with_context(|| format!("connect to {target}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A server frame, as far as this tool reads it.
#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    data: Option<Data<'a>>,
    /// The number of a frame to an acking socket.
    #[serde(default)]
    seq: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Data<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    reason: Option<Cow<'a, str>>,
    #[serde(default)]
    is_authenticated: Option<bool>,
    #[serde(default)]
    ack: Option<bool>,
}

async fn authenticate(ws: &mut Ws, app_id: &str, user: &str, ack: bool) -> anyhow::Result<()> {
    let ack_field = if ack { r#","ack":true"# } else { "" };
    let auth = format!(
        r#"{{"type":"AUTH_CLIENT","data":{{"appId":"{app_id}","userId":"{user}","token":"bench"{ack_field}}}}}"#
    );
    ws.send(Message::Text(auth.into())).await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                let frame: Incoming<'_> = serde_json::from_str(&text)
                    .with_context(|| format!("unreadable frame before auth: {text}"))?;
                if frame.kind == "AUTH_CLIENT_REPLY" {
                    let data = frame.data.unwrap_or_default();
                    if data.is_authenticated == Some(true) {
                        if ack && data.ack != Some(true) {
                            bail!("{user}: the server does not speak acknowledged delivery");
                        }
                        return Ok(());
                    }
                    bail!(
                        "{user} refused: {}",
                        data.reason.as_deref().unwrap_or("no reason given")
                    );
                }
            }
            Some(Ok(Message::Close(f))) => bail!("closed before auth: {f:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => bail!("socket error before auth: {e}"),
            None => bail!("socket ended before auth"),
        }
    }
}

/// Sends a MESSAGE every interval while the run is warming up or measuring; acknowledges
/// numbered frames all along with `--ack`.
async fn write(
    shared: &Shared,
    index: usize,
    sink: &mut SplitSink<Ws, Message>,
    numbered: &AtomicU64,
) -> anyhow::Result<()> {
    let o = &shared.plan.options;
    let mut acks = Acks::new(shared, numbered);
    let mut phase = shared.phase.subscribe();
    tokio::select! {
        r = phase.wait_for(|p| *p >= Phase::Warmup) => { r?; }
        r = acks.run(sink) => return r,
    }
    if o.workload == Workload::Broadcast {
        publish_once(shared, index, sink).await?;
        return acks.run(sink).await;
    }
    if o.interval_ms == 0 {
        return acks.run(sink).await;
    }
    let every = Duration::from_millis(o.interval_ms);
    // Spread the connections' first sends over one interval so they do not tick together.
    let offset = every.mul_f64(index as f64 / o.connections as f64);
    let mut ticker = interval_at(tokio::time::Instant::now() + offset, every);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let peer = o.workload.peer_of(index);
    let prefix = frame_prefix(&shared.plan.user(peer), o.feature.wire_name());
    let capacity = prefix.len() + o.size.max(64) + FRAME_SUFFIX.len();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            r = acks.next(sink) => { r?; continue; }
        }
        let now = *phase.borrow();
        if now >= Phase::Drain {
            break;
        }
        if o.max_in_flight > 0 && shared.ledger.in_flight(index) >= o.max_in_flight {
            if now == Phase::Measure {
                shared.ledger.skipped();
            }
            continue;
        }
        let seq = shared.ledger.sent(index, now == Phase::Measure);
        let mut frame = String::with_capacity(capacity);
        frame.push_str(&prefix);
        let stamp = Stamp {
            sender: index,
            seq,
            sent_us: shared.now_us(),
        };
        stamp.write_content(o.size, &shared.padding, &mut frame);
        frame.push_str(FRAME_SUFFIX);
        if let Err(e) = sink.send(Message::Text(frame.into())).await {
            shared.ledger.send_failed(index, seq);
            return Err(anyhow!(e).context("send failed"));
        }
    }
    acks.run(sink).await
}

/// One connection's `ACK`s (`--ack`): every tick, `ACK {upTo}` for the highest numbered frame
/// received, if one came since the last `ACK`. Without `--ack`, never anything.
struct Acks<'a> {
    shared: &'a Shared,
    numbered: &'a AtomicU64,
    ticker: Option<Interval>,
    acked: u64,
}

impl<'a> Acks<'a> {
    fn new(shared: &'a Shared, numbered: &'a AtomicU64) -> Acks<'a> {
        let ticker = shared.plan.options.ack.then(|| {
            let mut t = interval(Duration::from_millis(shared.plan.options.ack_every_ms));
            t.set_missed_tick_behavior(MissedTickBehavior::Delay);
            t
        });
        Acks {
            shared,
            numbered,
            ticker,
            acked: 0,
        }
    }

    /// Waits for the next tick and acknowledges what came since the last `ACK`.
    async fn next(&mut self, sink: &mut SplitSink<Ws, Message>) -> anyhow::Result<()> {
        let Some(ticker) = self.ticker.as_mut() else {
            return std::future::pending().await;
        };
        ticker.tick().await;
        let up_to = self.numbered.load(Ordering::Relaxed);
        if up_to <= self.acked {
            return Ok(());
        }
        let frame = format!(r#"{{"type":"ACK","data":{{"upTo":{up_to}}}}}"#);
        sink.send(Message::Text(frame.into()))
            .await
            .context("ACK not sent")?;
        self.acked = up_to;
        self.shared.acks.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Acknowledges at every tick until the run ends (the caller's select drops it).
    async fn run(&mut self, sink: &mut SplitSink<Ws, Message>) -> anyhow::Result<()> {
        loop {
            self.next(sink).await?;
        }
    }
}

/// `broadcast`: a publisher sends one GROUP_MESSAGE to every subscriber (or one
/// CHANNEL_MESSAGE to their channel) as the measured phase starts, taking one sequence number
/// per subscriber; a subscriber sends nothing. Returns at once for a subscriber, or for a
/// run that ended before its measured phase.
async fn publish_once(
    shared: &Shared,
    index: usize,
    sink: &mut SplitSink<Ws, Message>,
) -> anyhow::Result<()> {
    let o = &shared.plan.options;
    if index >= o.publishers {
        return Ok(());
    }
    let subscribers: Vec<String> = (o.publishers..o.publishers + o.subscribers)
        .map(|i| shared.plan.user(i))
        .collect();
    let mut frame = if o.channel {
        channel_frame_prefix(&shared.plan.channel(), o.feature.wire_name())
    } else {
        group_frame_prefix(&subscribers, o.feature.wire_name())
    };
    let mut phase = shared.phase.subscribe();
    if *phase.wait_for(|p| *p >= Phase::Measure).await? != Phase::Measure {
        return Ok(());
    }
    let seq = shared.ledger.sent(index, true);
    for _ in 1..o.subscribers {
        shared.ledger.sent(index, true);
    }
    let stamp = Stamp {
        sender: index,
        seq,
        sent_us: shared.now_us(),
    };
    stamp.write_content(o.size, &shared.padding, &mut frame);
    frame.push_str(FRAME_SUFFIX);
    sink.send(Message::Text(frame.into()))
        .await
        .context("send failed")
}

/// Reads frames until the socket ends: times MESSAGEs, counts error frames.
async fn read(
    shared: &Shared,
    index: usize,
    stream: &mut SplitStream<Ws>,
    numbered: &AtomicU64,
) -> anyhow::Result<()> {
    let o = &shared.plan.options;
    let offset = o.workload.receipt_offset(index, o.publishers);
    loop {
        let text = match stream.next().await {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(f))) => bail!("closed by the server: {f:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => bail!("socket error: {e}"),
            None => bail!("socket ended"),
        };
        let now_us = shared.now_us();
        let Ok(frame) = serde_json::from_str::<Incoming<'_>>(&text) else {
            shared.errors.record(ErrorKind::Unexpected, || {
                format!("unreadable frame: {text}")
            });
            continue;
        };
        if let Some(seq) = frame.seq {
            numbered.fetch_max(seq, Ordering::Relaxed);
        }
        let stamp = match frame.kind.as_ref() {
            "MESSAGE" | "CHANNEL_MESSAGE" => frame
                .data
                .as_ref()
                .and_then(|d| d.content.as_deref())
                .and_then(Stamp::parse),
            "INVALID_MESSAGE" => {
                shared
                    .errors
                    .record(ErrorKind::InvalidMessage, || text.to_string());
                continue;
            }
            "GENERAL_ERROR" => {
                shared
                    .errors
                    .record(ErrorKind::GeneralError, || text.to_string());
                continue;
            }
            // An acking socket's end of resume after login, and replies to referenced sends.
            "RESUME_COMPLETE" | "MESSAGE_ACCEPTED" => continue,
            _ => None,
        };
        match stamp {
            Some(s) => {
                shared
                    .ledger
                    .received(s.sender, s.seq + offset, now_us.saturating_sub(s.sent_us));
            }
            None => shared.errors.record(ErrorKind::Unexpected, || short(&text)),
        }
    }
}

/// The start of a frame, for error details.
fn short(text: &str) -> String {
    match text.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_owned(),
    }
}
