//! The connector: where clients connect.
//!
//! It accepts WebSocket clients at `/ws` (and plain text ones at `/channels/..`),
//! authenticates them, turns each valid frame into an envelope on the bus, and writes what
//! processors send back to the right sockets. It makes no routing decision and names no
//! engine: only the `Bus` and `Presence` traits.
//!
//! Layout:
//! - `acks`: an acking socket's record of numbered frames not yet acknowledged.
//! - `channels`: SUBSCRIBE, UNSUBSCRIBE, CHANNEL_PRESENCE, and who may use a channel.
//! - [`auth`]: the checks behind `AUTH_CLIENT`, and the HTTP auth callback.
//! - `limits`: the frame-rate token bucket and connection admission.
//! - `plain`: the URL form for plain text clients (`/channels/<channel>/users/<user>`).
//! - [`session`]: one socket's life, from handshake to close.
//! - [`registry`]: the table of authenticated sockets, and the loop that carries out the
//!   processors' commands on them.
//! - `link`: the listener for neighbouring domains' links.

mod acks;
pub mod auth;
mod channels;
mod limits;
mod link;
mod plain;
pub mod registry;
pub mod session;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use common::bus::Bus;
use common::frame::ParseLimits;
use common::ids::{ConnectorName, SocketId};
use common::network::NetworkHandle;
use common::presence::Presence;

use crate::registry::Registry;

/// The connector's settings; every key has a default.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Unique in the domain; commands for this connector are addressed to it.
    pub name: String,
    /// Where clients connect (`ws://<listen>/ws`).
    pub listen: SocketAddr,
    /// Largest frame accepted; a larger one closes the socket with code 1009.
    pub max_frame_bytes: usize,
    /// An unauthenticated socket is closed after this long.
    pub auth_deadline_ms: u64,
    /// Consecutive invalid frames tolerated before the socket is closed with code 1008.
    pub max_bad_frames: u32,
    /// Frames queued for one socket; past it FAST frames are dropped and counted, RELIABLE
    /// ones are reported unwritten (so the processor stores them).
    pub outbound_queue: usize,
    /// Most recipients of one GROUP_MESSAGE.
    pub max_group_size: usize,
    /// Most messages one FETCH_MISSING_MESSAGES_REQUEST returns.
    pub max_fetch_count: u32,
    /// Whether a user may message users of another client app.
    pub allow_cross_app: bool,
    /// Per-socket read buffer (tungstenite's default of 128 KiB per socket is the memory trap).
    pub read_buffer_bytes: usize,
    /// How often this connector's sockets are refreshed in presence (well under the presence
    /// ttl of a shared presence engine).
    pub presence_refresh_ms: u64,
    /// Longest wait for a client app's auth callback, connection included.
    pub auth_callback_timeout_ms: u64,
    /// Most auth callbacks in flight at once; more wait (within the timeout) for a turn.
    pub auth_callback_max_in_flight: usize,
    /// Frames per second a socket may send (token bucket); 0 = unlimited. Frames over the
    /// rate are answered with `INVALID_MESSAGE {reason: RATE_LIMITED}` and not processed.
    pub max_frames_per_sec: u32,
    /// Burst size of the token bucket.
    pub frame_burst: u32,
    /// Open connections accepted from one source address; 0 = no cap.
    pub max_connections_per_ip: usize,
    /// Open connections accepted in total; 0 = no cap.
    pub max_connections: usize,
    /// A ping is sent after this long without a frame from the client.
    pub ping_interval_ms: u64,
    /// A socket with no frame (or pong) from the client for this long is closed (code 4002):
    /// this is how half-open sockets end.
    pub idle_timeout_ms: u64,
    /// A socket whose outbound queue stays full this long is closed (code 4003) as a reader
    /// too slow to keep up.
    pub slow_reader_timeout_ms: u64,
    /// An acking socket holds its live numbered frames back until the processor's resume
    /// ends (`RESUME_COMPLETE`). If no end has come after this long, the socket is closed
    /// (code 4004) so the client logs in and resumes again: the held frames stay kept, nothing
    /// acknowledged is in them, and a lost end cannot hold the socket's frames for good.
    pub resume_timeout_ms: u64,
    /// Serve `wss://` with this certificate and key; plain `ws://` if absent.
    pub tls: Option<TlsConfig>,
    /// Where neighbouring domains connect (the domain's `tcp://` url); no link listener if
    /// absent. `linker domain` and `linker connector` fill it from the network config when
    /// the domain has links.
    pub link_listen: Option<SocketAddr>,
}

/// PEM files for `wss://`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain, leaf first.
    pub cert_path: std::path::PathBuf,
    /// The certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_path: std::path::PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            name: "connector-01".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8088)),
            max_frame_bytes: 64 * 1024,
            auth_deadline_ms: 15_000,
            max_bad_frames: 10,
            outbound_queue: 1024,
            max_group_size: 1000,
            max_fetch_count: 2000,
            allow_cross_app: false,
            read_buffer_bytes: 2048,
            presence_refresh_ms: 10_000,
            auth_callback_timeout_ms: 5_000,
            auth_callback_max_in_flight: 256,
            max_frames_per_sec: 200,
            frame_burst: 400,
            max_connections_per_ip: 5_000,
            max_connections: 19_000,
            ping_interval_ms: 30_000,
            idle_timeout_ms: 90_000,
            slow_reader_timeout_ms: 10_000,
            resume_timeout_ms: 30_000,
            tls: None,
            link_listen: None,
        }
    }
}

impl Config {
    pub fn auth_deadline(&self) -> Duration {
        Duration::from_millis(self.auth_deadline_ms)
    }

    pub(crate) fn parse_limits(&self) -> ParseLimits {
        ParseLimits {
            max_group_size: self.max_group_size,
            ..ParseLimits::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot receive commands from the bus: {0}")]
    Bus(#[from] common::bus::BusError),
    #[error("TLS: {0}")]
    Tls(String),
}

/// What every session of this connector shares.
pub(crate) struct Shared {
    pub config: Config,
    pub name: ConnectorName,
    pub network: Arc<NetworkHandle>,
    pub bus: Arc<dyn Bus>,
    pub presence: Arc<dyn Presence>,
    pub registry: Registry,
    pub auth: auth::Authenticator,
    pub admission: Arc<limits::Admission>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub limits: ParseLimits,
    next_socket: AtomicU64,
}

impl Shared {
    /// Socket ids start from the clock, so ids from an earlier run are not reused.
    fn next_socket_id(&self) -> SocketId {
        self.next_socket.fetch_add(1, Ordering::Relaxed)
    }
}

/// A bound connector, ready to run.
pub struct Connector {
    listener: TcpListener,
    links: Option<TcpListener>,
    shared: Arc<Shared>,
}

impl Connector {
    pub async fn bind(
        config: Config,
        network: Arc<NetworkHandle>,
        bus: Arc<dyn Bus>,
        presence: Arc<dyn Presence>,
    ) -> Result<Connector, ConnectorError> {
        let tls = config.tls.as_ref().map(tls_acceptor).transpose()?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ConnectorError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let links = match config.link_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| ConnectorError::Bind { addr, source })?,
            ),
            None => None,
        };
        let shared = Arc::new(Shared {
            name: ConnectorName::new(&config.name),
            limits: config.parse_limits(),
            auth: auth::Authenticator::new(
                Duration::from_millis(config.auth_callback_timeout_ms),
                config.auth_callback_max_in_flight,
            ),
            config,
            network,
            bus,
            presence,
            registry: Registry::default(),
            admission: Arc::default(),
            tls,
            next_socket: AtomicU64::new(common::now_millis() * 1000),
        });
        Ok(Connector {
            listener,
            links,
            shared,
        })
    }

    /// The address neighbouring domains connect to, if this connector listens for links.
    pub fn link_addr(&self) -> Option<SocketAddr> {
        self.links.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The address clients connect to (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Accepts clients and carries out commands until `shutdown`, then closes every socket.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ConnectorError> {
        let shared = self.shared;
        let commands = shared.bus.listen(&shared.name).await?;
        let mut tasks = JoinSet::new();
        tasks.spawn(registry::run_commands(
            shared.clone(),
            commands,
            shutdown.clone(),
        ));
        tasks.spawn(registry::refresh_presence(shared.clone(), shutdown.clone()));
        if let Some(links) = self.links {
            tasks.spawn(link::run(shared.clone(), links, shutdown.clone()));
        }
        info!(connector = %shared.name, addr = %self.listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "accepting clients");
        let mut backoff = Duration::from_millis(10);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        backoff = Duration::from_millis(10);
                        let _ = stream.set_nodelay(true);
                        let id = shared.next_socket_id();
                        tasks.spawn(session::run(shared.clone(), stream, peer, id, shutdown.clone()));
                    }
                    Err(e) => {
                        // Out of file descriptors, usually: wait and try again.
                        warn!(error = %e, "accept failed; retrying in {backoff:?}");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    }
                },
                Some(_) = tasks.join_next(), if tasks.len() > 3 => {}
            }
        }
        drop(self.listener);
        // Sessions see the same token and close their sockets; give them a moment.
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(5), drain)
            .await
            .is_err()
        {
            tasks.abort_all();
        }
        info!(connector = %shared.name, "stopped");
        Ok(())
    }
}

/// Loads the certificate and key for `wss://`.
fn tls_acceptor(tls: &TlsConfig) -> Result<tokio_rustls::TlsAcceptor, ConnectorError> {
    use pki_types::pem::PemObject;
    use pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(&tls.cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ConnectorError::Tls(format!("{}: {e}", tls.cert_path.display())))?;
    let key = PrivateKeyDer::from_pem_file(&tls.key_path)
        .map_err(|e| ConnectorError::Tls(format!("{}: {e}", tls.key_path.display())))?;
    // Name the provider: with two of them compiled in (engines bring their own), rustls
    // will not pick one.
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectorError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ConnectorError::Tls(e.to_string()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
