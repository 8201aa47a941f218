//! The link listener: where neighbouring domains hand over work for this domain.
//!
//! A neighbour's processor connects over TCP and speaks the link format of `common::link`.
//! Its first frame must be a `HELLO` from a domain linked to this one, carrying the appId of
//! that domain's client app, within the auth deadline; anything else is answered `REFUSED`
//! and closed. After that every `ENVELOPE` is handed to the bus and answered `ACK` once it is
//! safe here (`NACK` with a reason if not), in the order received. Only relays are taken: a
//! neighbour cannot inject client frames or speak for this domain's users.

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use common::config::domain_app_name;
use common::envelope::{Body, Envelope, MAX_HOPS};
use common::frame::Feature;
use common::ids::DomainName;
use common::link::{LINK_VERSION, LinkFrame, codec};

use crate::Shared;

type Link = Framed<TcpStream, tokio_util::codec::LengthDelimitedCodec>;

/// Envelopes read ahead of the one being handed over, per link.
const LINK_WINDOW: usize = 256;

/// Accepts neighbour domains until `shutdown`.
pub(crate) async fn run(shared: Arc<Shared>, listener: TcpListener, shutdown: CancellationToken) {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    info!(connector = %shared.name, %addr, "accepting domain links");
    let mut links = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    links.spawn(serve(shared.clone(), stream, peer, shutdown.clone()));
                }
                Err(e) => {
                    warn!(error = %e, "link accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            Some(_) = links.join_next(), if !links.is_empty() => {}
        }
    }
    links.abort_all();
}

async fn serve(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    let mut link = Framed::new(stream, codec());
    let hello = tokio::time::timeout(shared.config.auth_deadline(), link.next()).await;
    let domain = match hello {
        Ok(Some(Ok(body))) => match LinkFrame::decode(&body) {
            Ok(LinkFrame::Hello {
                version,
                domain,
                app_id,
            }) => match admit(&shared, version, &domain, &app_id) {
                Ok(()) => domain,
                Err((reason, detail)) => {
                    warn!(%peer, %domain, reason, detail, "domain link refused");
                    refuse(&mut link, reason, detail).await;
                    return;
                }
            },
            Ok(_) => {
                refuse(
                    &mut link,
                    "HELLO_FIRST",
                    "the first frame must be HELLO".into(),
                )
                .await;
                return;
            }
            Err(e) => {
                refuse(&mut link, "BAD_FRAME", e.to_string()).await;
                return;
            }
        },
        _ => {
            debug!(%peer, "no HELLO before the deadline; link closed");
            return;
        }
    };
    let welcome = LinkFrame::Welcome {
        version: LINK_VERSION,
        domain: shared.network.current().local_domain().clone(),
    };
    if link.send(welcome.encode()).await.is_err() {
        return;
    }
    info!(%peer, %domain, "domain link up");
    metrics::gauge!("linker_link_connections").increment(1.0);
    let why = carry(&shared, link, &domain, &shutdown).await;
    metrics::gauge!("linker_link_connections").decrement(1.0);
    info!(%peer, %domain, why, "domain link closed");
}

/// Checks a `HELLO`: `Err((reason, detail))` if the link is refused.
fn admit(
    shared: &Shared,
    version: u16,
    domain: &DomainName,
    app_id: &str,
) -> Result<(), (&'static str, String)> {
    if version != LINK_VERSION {
        return Err((
            "VERSION",
            format!("link format version {version} is not spoken here (only {LINK_VERSION})"),
        ));
    }
    let network = shared.network.current();
    let config = network.config();
    if !config.linked(network.local_domain().as_str(), domain.as_str()) {
        return Err((
            "NOT_LINKED",
            format!(
                "no link between `{domain}` and `{}`",
                network.local_domain()
            ),
        ));
    }
    let app = domain_app_name(domain.as_str());
    match config.app(&app) {
        Some(a) if a.app_id == app_id => Ok(()),
        Some(_) => Err((
            "APP_ID_MISMATCH",
            format!("appId does not match client app `{app}`"),
        )),
        None => Err(("UNKNOWN_APP", format!("no client app `{app}`"))),
    }
}

async fn refuse(link: &mut Link, reason: &str, detail: String) {
    let frame = LinkFrame::Refused {
        reason: reason.into(),
        detail,
    };
    let _ = link.send(frame.encode()).await;
}

/// Takes envelopes from an admitted link until it closes; says why it ended.
///
/// The reader answers pings itself, so a neighbour still hears from a link whose envelopes
/// wait for a slow processor; one worker hands the envelopes over one after another, in the
/// order they came, so one sender's order holds across the link.
async fn carry(
    shared: &Arc<Shared>,
    link: Link,
    from: &DomainName,
    shutdown: &CancellationToken,
) -> &'static str {
    let (mut sink, mut stream) = link.split();
    let (answers, mut to_write) = mpsc::channel::<LinkFrame>(LINK_WINDOW);
    let (work, mut todo) = mpsc::channel::<(u64, Envelope)>(LINK_WINDOW);
    let writer = tokio::spawn(async move {
        while let Some(frame) = to_write.recv().await {
            if sink.send(frame.encode()).await.is_err() {
                break;
            }
        }
    });
    let worker = {
        let shared = shared.clone();
        let from = from.clone();
        let answers = answers.clone();
        tokio::spawn(async move {
            while let Some((seq, envelope)) = todo.recv().await {
                let answer = take(&shared, &from, seq, envelope).await;
                if answers.send(answer).await.is_err() {
                    break;
                }
            }
        })
    };
    let why = loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => break "shutting down",
            next = stream.next() => next,
        };
        let body = match next {
            None => break "closed by the neighbour",
            Some(Err(e)) => {
                warn!(domain = %from, error = %e, "unreadable link frame");
                break "unreadable frame";
            }
            Some(Ok(body)) => body,
        };
        let sent = match LinkFrame::decode(&body) {
            Ok(LinkFrame::Envelope { seq, envelope }) => work.send((seq, *envelope)).await.is_ok(),
            Ok(LinkFrame::Ping) => answers.send(LinkFrame::Pong).await.is_ok(),
            Ok(other) => {
                warn!(domain = %from, frame = ?other, "unexpected link frame");
                break "unexpected frame";
            }
            Err(e) => {
                warn!(domain = %from, error = %e, "undecodable link frame");
                break "undecodable frame";
            }
        };
        if !sent {
            break "link writer stopped";
        }
    };
    worker.abort();
    writer.abort();
    why
}

/// Hands one envelope from a neighbour to the bus; the answer for the neighbour.
async fn take(shared: &Shared, from: &DomainName, seq: u64, envelope: Envelope) -> LinkFrame {
    let nack = |reason: &str| LinkFrame::Nack {
        seq,
        reason: reason.into(),
    };
    let Body::Relay(relay) = &envelope.body else {
        warn!(domain = %from, id = %envelope.id, "a neighbour sent a non-relay envelope; refused");
        return nack("NOT_A_RELAY");
    };
    if envelope.hops > MAX_HOPS {
        warn!(domain = %from, id = %envelope.id, hops = envelope.hops, "hop limit reached; refused");
        return nack("HOP_LIMIT");
    }
    debug!(domain = %from, id = %envelope.id, home = %relay.home, "relay in");
    metrics::counter!("linker_link_envelopes_in_total").increment(1);
    let handed = match envelope.feature {
        Feature::Reliable => shared.bus.hand_over(envelope).await,
        Feature::Fast => shared.bus.publish(envelope).await,
    };
    match handed {
        Ok(()) => LinkFrame::Ack { seq },
        Err(e) => {
            warn!(domain = %from, error = %e, "relay not taken");
            nack("BUS_UNAVAILABLE")
        }
    }
}
