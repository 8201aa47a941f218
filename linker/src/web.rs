//! The small HTTP server of each process: `/health` (the process answers), `/ready` (its
//! engines answer), `/metrics` (Prometheus text), and for `linker domain` the browser test
//! page.
//!
//! `/ready` asks each engine the role uses, at the moment of the request, bounded by
//! [`READY_TIMEOUT`]: 200 when all answer, 503 with a JSON body naming those that do not.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use common::bus::Bus;
use common::presence::Presence;
use common::store::Store;

/// Longest wait for one engine's answer to `/ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(3);

/// The engines a role uses; `/ready` checks the ones present.
#[derive(Clone, Default)]
pub struct Engines {
    pub bus: Option<Arc<dyn Bus>>,
    pub presence: Option<Arc<dyn Presence>>,
    pub store: Option<Arc<dyn Store>>,
}

#[derive(Clone)]
struct Ops {
    metrics: PrometheusHandle,
    engines: Engines,
}

/// `/health`, `/ready`, `/metrics` and the test page.
pub fn router(metrics: PrometheusHandle, engines: Engines) -> Router {
    ops_router(metrics, engines).fallback(page)
}

/// `/health`, `/ready` and `/metrics` only.
pub fn ops_router(metrics: PrometheusHandle, engines: Engines) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/ready", get(ready))
        .route("/metrics", get(render_metrics))
        .with_state(Ops { metrics, engines })
}

async fn render_metrics(State(ops): State<Ops>) -> String {
    ops.metrics.render()
}

/// One engine's answer: `Ok`, or why it is not ready.
async fn ask<E: std::fmt::Display>(
    check: impl Future<Output = Result<(), E>>,
) -> Result<(), String> {
    match tokio::time::timeout(READY_TIMEOUT, check).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {READY_TIMEOUT:?}")),
    }
}

async fn ready(State(ops): State<Ops>) -> Response {
    let e = &ops.engines;
    let (bus, presence, store) = tokio::join!(
        async {
            match &e.bus {
                Some(b) => Some(ask(b.ready()).await),
                None => None,
            }
        },
        async {
            match &e.presence {
                Some(p) => Some(ask(p.ready()).await),
                None => None,
            }
        },
        async {
            match &e.store {
                Some(s) => Some(ask(s.ready()).await),
                None => None,
            }
        },
    );
    let answers = [("bus", bus), ("presence", presence), ("store", store)];
    readiness(
        answers
            .into_iter()
            .filter_map(|(name, a)| a.map(|a| (name, a))),
    )
}

/// `200 {"ready":true,"engines":{"bus":"ok",...}}`, or `503` with `"ready":false`, the
/// reason of each engine that did not answer and their names in `"not_ready"`.
fn readiness<'a>(answers: impl Iterator<Item = (&'a str, Result<(), String>)>) -> Response {
    let mut engines = Map::new();
    let mut not_ready = Vec::new();
    for (name, answer) in answers {
        match answer {
            Ok(()) => {
                engines.insert(name.into(), "ok".into());
            }
            Err(reason) => {
                engines.insert(name.into(), Value::String(reason));
                not_ready.push(name);
            }
        }
    }
    let status = if not_ready.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": not_ready.is_empty(),
        "engines": engines,
        "not_ready": not_ready,
    });
    (status, Json(body)).into_response()
}

async fn page(uri: Uri) -> Response {
    match test_script::asset(uri.path()) {
        Some((content_type, body)) => {
            ([(header::CONTENT_TYPE, content_type)], body).into_response()
        }
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_engines_answering_is_ready() {
        let r = readiness([("bus", Ok(())), ("presence", Ok(()))].into_iter());
        assert_eq!(r.status(), StatusCode::OK);
    }

    #[test]
    fn one_silent_engine_is_not_ready() {
        let r = readiness([("bus", Ok(())), ("store", Err("down".to_owned()))].into_iter());
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
