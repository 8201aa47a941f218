//! The meta-server: the network config over HTTP, as JSON.
//!
//! Endpoints: `/network` (the whole config), the original system's `/domains`,
//! `/domains/links`, `/domains/graph` and `/clientApps`, `/users/{userId}/domain` (a user's
//! home domain) and `/health`. It only reads, from a [`NetworkHandle`]: whoever reloads the
//! config swaps the network there, and the next request sees it.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use common::config::NetworkConfig;
use common::ids::{DomainName, UserId};
use common::network::{Network, NetworkHandle};

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("meta-server stopped: {0}")]
    Serve(std::io::Error),
}

/// A handle on `config` for a meta-server of its own (the domain it names first is "local").
pub fn handle(config: NetworkConfig) -> Arc<NetworkHandle> {
    let local = config
        .domains
        .first()
        .map(|d| DomainName::new(&d.name))
        .unwrap_or_else(|| DomainName::new("-"));
    Arc::new(NetworkHandle::new(Network::new(config, local)))
}

/// The HTTP routes over the current network.
pub fn router(network: Arc<NetworkHandle>) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/network", get(whole))
        .route("/clientApps", get(client_apps))
        .route("/domains", get(domains))
        .route("/domains/links", get(links))
        .route("/domains/graph", get(graph))
        .route("/users/{user_id}/domain", get(user_domain))
        .with_state(network)
}

type Net = State<Arc<NetworkHandle>>;

async fn whole(State(n): Net) -> Json<NetworkConfig> {
    Json(n.current().config().clone())
}

async fn client_apps(State(n): Net) -> Response {
    Json(&n.current().config().client_apps).into_response()
}

async fn domains(State(n): Net) -> Response {
    Json(&n.current().config().domains).into_response()
}

async fn links(State(n): Net) -> Response {
    Json(&n.current().config().domain_links).into_response()
}

async fn graph(State(n): Net) -> Response {
    let n = n.current();
    Json(json!({"domains": n.config().domains, "links": n.config().domain_links})).into_response()
}

async fn user_domain(State(n): Net, Path(user_id): Path<String>) -> Response {
    let n = n.current();
    let user = match UserId::parse(&user_id) {
        Ok(u) => u,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": e.to_string()})),
            )
                .into_response();
        }
    };
    if n.app(user.app()).is_none() {
        let error = format!("no client app named `{}`", user.app());
        return (StatusCode::NOT_FOUND, Json(json!({ "error": error }))).into_response();
    }
    match n.home_domain(&user) {
        Some(domain) => {
            Json(json!({"userId": user.as_str(), "domain": domain.as_str()})).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("no domain holds user {user}")})),
        )
            .into_response(),
    }
}

/// A bound meta-server, ready to run.
pub struct MetaServer {
    listener: TcpListener,
    router: Router,
}

impl MetaServer {
    /// Binds `listen`, serving whatever `network` holds.
    pub async fn bind(
        listen: SocketAddr,
        network: Arc<NetworkHandle>,
    ) -> Result<MetaServer, MetaError> {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| MetaError::Bind {
                addr: listen,
                source,
            })?;
        Ok(MetaServer {
            listener,
            router: router(network),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub async fn run(self, shutdown: CancellationToken) -> Result<(), MetaError> {
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
            .map_err(MetaError::Serve)
    }
}
