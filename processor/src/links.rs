//! This processor's links to the neighbouring domains.
//!
//! One task per neighbour dials the `tcp://` url of that domain's connector, says `HELLO` as
//! this domain's client app, and then carries envelopes in the order they were queued: each
//! one is numbered, and a sender that asked hears the neighbour's `ACK` (the outbox asks;
//! FAST relays do not). A link that fails (refused, closed, no answer to a
//! ping, an `ACK` overdue) is marked down at once, every envelope waiting on it fails (its
//! sender re-routes it or keeps it in the outbox), and the task dials again with backoff.
//! Whoever watches [`Links::changes`] hears of every link that goes up or down.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use common::config::domain_app_name;
use common::envelope::Envelope;
use common::ids::DomainName;
use common::link::{LINK_VERSION, LinkFrame, codec};
use common::network::{Network, NetworkHandle};

/// Why an envelope did not cross a link.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("link to `{0}` is down")]
    Down(DomainName),
    #[error("`{0}` did not take it: {1}")]
    Refused(DomainName, String),
    #[error("no ACK from `{0}` in time")]
    TimedOut(DomainName),
}

/// Timings of the links, from the processor's config.
#[derive(Debug, Clone, Copy)]
pub struct LinkTimings {
    /// Longest wait for a neighbour's ACK, and for a connection or handshake.
    pub timeout: Duration,
    /// A ping goes out after this long without traffic.
    pub ping: Duration,
    /// Longest wait between two dials of a failed link.
    pub max_backoff: Duration,
}

struct Outgoing {
    envelope: Envelope,
    /// Told of the neighbour's ACK; `None` for an envelope nobody waits for (FAST).
    done: Option<oneshot::Sender<Result<(), LinkError>>>,
}

/// The answer to an envelope handed to a link, to be awaited.
pub type Acked = oneshot::Receiver<Result<(), LinkError>>;

struct Neighbour {
    tx: mpsc::Sender<Outgoing>,
    up: Arc<AtomicBool>,
    stop: CancellationToken,
}

/// The links of one processor.
pub struct Links {
    network: Arc<NetworkHandle>,
    neighbours: Mutex<HashMap<DomainName, Neighbour>>,
    timings: LinkTimings,
    changes: watch::Sender<u64>,
}

impl Links {
    pub fn new(network: Arc<NetworkHandle>, timings: LinkTimings) -> Links {
        Links {
            network,
            neighbours: Mutex::new(HashMap::new()),
            timings,
            changes: watch::Sender::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<DomainName, Neighbour>> {
        self.neighbours
            .lock()
            .expect("no code panics while holding the links lock")
    }

    /// Neighbours whose link is not up now.
    pub fn down(&self) -> HashSet<DomainName> {
        self.lock()
            .iter()
            .filter(|(_, n)| !n.up.load(Ordering::Acquire))
            .map(|(d, _)| d.clone())
            .collect()
    }

    /// Ticks each time a link goes up or down.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Dials the neighbours of `network` not dialed yet, and stops links to domains that are
    /// no longer neighbours.
    pub fn reconcile(self: &Arc<Self>, network: &Network) {
        let wanted: HashSet<DomainName> = network.neighbors().into_iter().collect();
        let mut neighbours = self.lock();
        neighbours.retain(|domain, n| {
            let keep = wanted.contains(domain);
            if !keep {
                info!(%domain, "no longer a neighbour; link stopped");
                n.stop.cancel();
            }
            keep
        });
        for domain in wanted {
            if neighbours.contains_key(&domain) {
                continue;
            }
            let (tx, rx) = mpsc::channel(1024);
            let n = Neighbour {
                tx,
                up: Arc::new(AtomicBool::new(false)),
                stop: CancellationToken::new(),
            };
            tokio::spawn(dial(
                self.clone(),
                domain.clone(),
                rx,
                n.up.clone(),
                n.stop.clone(),
            ));
            neighbours.insert(domain, n);
        }
    }

    /// Stops every link.
    pub fn stop(&self) {
        for n in self.lock().values() {
            n.stop.cancel();
        }
    }

    /// The sending side of an up link to `to`.
    fn up_link(&self, to: &DomainName) -> Result<mpsc::Sender<Outgoing>, LinkError> {
        match self.lock().get(to) {
            Some(n) if n.up.load(Ordering::Acquire) => Ok(n.tx.clone()),
            _ => Err(LinkError::Down(to.clone())),
        }
    }

    /// Queues `envelope` for neighbour `to`, in order after those queued before; the
    /// receiver hears the neighbour's ACK (or why not). Wait for it with [`Links::acked`].
    pub async fn start_send(
        &self,
        to: &DomainName,
        envelope: Envelope,
    ) -> Result<Acked, LinkError> {
        let tx = self.up_link(to)?;
        let (done, acked) = oneshot::channel();
        tx.send(Outgoing {
            envelope,
            done: Some(done),
        })
        .await
        .map_err(|_| LinkError::Down(to.clone()))?;
        Ok(acked)
    }

    /// Waits for the answer to an envelope sent to `to`, at most twice the link timeout.
    pub async fn acked(&self, to: &DomainName, acked: Acked) -> Result<(), LinkError> {
        match tokio::time::timeout(self.timings.timeout * 2, acked).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(LinkError::Down(to.clone())),
            Err(_) => Err(LinkError::TimedOut(to.clone())),
        }
    }

    /// Queues `envelope` for neighbour `to` without waiting for its ACK (FAST: gone if the
    /// link fails).
    pub fn post(&self, to: &DomainName, envelope: Envelope) -> Result<(), LinkError> {
        self.up_link(to)?
            .try_send(Outgoing {
                envelope,
                done: None,
            })
            .map_err(|_| LinkError::Down(to.clone()))
    }

    fn changed(&self, domain: &DomainName, up: bool) {
        metrics::gauge!("linker_link_up", "domain" => domain.to_string()).set(if up {
            1.0
        } else {
            0.0
        });
        metrics::counter!("linker_link_changes_total").increment(1);
        self.changes.send_modify(|n| *n += 1);
    }
}

type Link = Framed<TcpStream, LengthDelimitedCodec>;

/// Keeps the link to `domain` up until `stop`.
async fn dial(
    links: Arc<Links>,
    domain: DomainName,
    mut rx: mpsc::Receiver<Outgoing>,
    up: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let attempt = tokio::select! {
            _ = stop.cancelled() => return,
            attempt = connect(&links, &domain) => attempt,
        };
        match attempt {
            Ok(link) => {
                backoff = Duration::from_millis(100);
                up.store(true, Ordering::Release);
                info!(%domain, "link up");
                links.changed(&domain, true);
                let why = carry(&links, &domain, link, &mut rx, &stop).await;
                up.store(false, Ordering::Release);
                warn!(%domain, why, "link down");
                links.changed(&domain, false);
                // Whatever was queued for the link fails now; senders take another way.
                while let Ok(o) = rx.try_recv() {
                    if let Some(done) = o.done {
                        let _ = done.send(Err(LinkError::Down(domain.clone())));
                    }
                }
            }
            Err(e) => debug!(%domain, error = %e, "link not up; dialing again in {backoff:?}"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(links.timings.max_backoff);
    }
}

/// Dials `domain`'s link listener and says HELLO; the link once it is WELCOMEd.
async fn connect(links: &Links, domain: &DomainName) -> Result<Link, String> {
    let network = links.network.current();
    let config = network.config();
    let addr = config
        .link_url(domain.as_str())
        .ok_or_else(|| format!("`{domain}` has no tcp:// url"))?;
    let local = network.local_domain().clone();
    let app = domain_app_name(local.as_str());
    let app_id = config
        .app(&app)
        .map(|a| a.app_id.clone())
        .ok_or_else(|| format!("no client app `{app}` to authenticate as"))?;
    let timeout = links.timings.timeout;
    let stream = tokio::time::timeout(timeout, TcpStream::connect(&addr))
        .await
        .map_err(|_| format!("{addr}: no connection within {timeout:?}"))?
        .map_err(|e| format!("{addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let mut link = Framed::new(stream, codec());
    let hello = LinkFrame::Hello {
        version: LINK_VERSION,
        domain: local,
        app_id,
    };
    link.send(hello.encode())
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    let answer = tokio::time::timeout(timeout, link.next())
        .await
        .map_err(|_| format!("{addr}: no answer to HELLO within {timeout:?}"))?;
    match answer.map(|r| r.map(|body| LinkFrame::decode(&body))) {
        Some(Ok(Ok(LinkFrame::Welcome { .. }))) => Ok(link),
        Some(Ok(Ok(LinkFrame::Refused { reason, detail }))) => {
            warn!(%domain, reason, detail, "link refused by the neighbour");
            Err(format!("refused: {reason}: {detail}"))
        }
        other => Err(format!("{addr}: unexpected answer to HELLO: {other:?}")),
    }
}

/// Most envelopes waiting for an ACK on one link; past it the link counts as stuck.
const MAX_UNACKED: usize = 10_000;

/// Carries envelopes over an up link until it fails or `stop`; says why it ended.
async fn carry(
    links: &Links,
    domain: &DomainName,
    mut link: Link,
    rx: &mut mpsc::Receiver<Outgoing>,
    stop: &CancellationToken,
) -> &'static str {
    let mut pending: HashMap<u64, oneshot::Sender<Result<(), LinkError>>> = HashMap::new();
    let mut next_seq = 0u64;
    let mut last_heard = tokio::time::Instant::now();
    let mut ticks = tokio::time::interval(links.timings.ping);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let why = loop {
        tokio::select! {
            _ = stop.cancelled() => break "stopped",
            out = rx.recv() => {
                let Some(Outgoing { envelope, done }) = out else { break "stopped" };
                next_seq += 1;
                let frame = LinkFrame::Envelope { seq: next_seq, envelope: Box::new(envelope) };
                if link.send(frame.encode()).await.is_err() {
                    if let Some(done) = done {
                        let _ = done.send(Err(LinkError::Down(domain.clone())));
                    }
                    break "write failed";
                }
                if let Some(done) = done {
                    pending.insert(next_seq, done);
                }
                if pending.len() > MAX_UNACKED {
                    break "too many envelopes without an ACK";
                }
            }
            read = link.next() => {
                let body = match read {
                    None => break "closed by the neighbour",
                    Some(Err(_)) => break "unreadable frame",
                    Some(Ok(body)) => body,
                };
                last_heard = tokio::time::Instant::now();
                match LinkFrame::decode(&body) {
                    Ok(LinkFrame::Ack { seq }) => {
                        if let Some(done) = pending.remove(&seq) {
                            let _ = done.send(Ok(()));
                        }
                    }
                    Ok(LinkFrame::Nack { seq, reason }) => {
                        if let Some(done) = pending.remove(&seq) {
                            let _ = done.send(Err(LinkError::Refused(domain.clone(), reason)));
                        }
                    }
                    Ok(LinkFrame::Pong) => {}
                    _ => break "unexpected frame",
                }
            }
            _ = ticks.tick() => {
                let quiet = last_heard.elapsed();
                if quiet > links.timings.ping + links.timings.timeout {
                    break "no answer to ping";
                }
                if quiet >= links.timings.ping && link.send(LinkFrame::Ping.encode()).await.is_err() {
                    break "write failed";
                }
            }
        }
    };
    for (_, done) in pending.drain() {
        let _ = done.send(Err(LinkError::Down(domain.clone())));
    }
    why
}
