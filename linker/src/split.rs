//! Split mode: `linker connector` and `linker processor` as separate processes on the real
//! engines (NATS and Kafka for the bus, Redis for presence, MongoDB for the store).
//!
//! Each process connects to its engines at start, retrying with backoff while one is down
//! (and saying so in the log), serves `/health`, `/ready` and `/metrics`, and prints one
//! `LINKER_READY` line once it works.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use backends::{MongoStore, RedisPresence, SplitBus, SplitBusConfig};
use common::bus::Bus;
use common::config::NetworkConfig;
use common::ids::DomainName;
use common::network::{Network, NetworkHandle};
use common::presence::Presence;
use common::store::Store;
use connector::Connector;
use processor::Processor;

use crate::settings::Settings;
use crate::web;

/// Calls `connect` until it succeeds or `shutdown`, waiting longer after each failure.
async fn with_retry<T, E, F, Fut>(
    engine: &str,
    shutdown: &CancellationToken,
    mut connect: F,
) -> anyhow::Result<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = Duration::from_millis(200);
    loop {
        match connect().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                warn!(engine, error = %e, "cannot connect; retrying in {backoff:?}");
                tokio::select! {
                    _ = shutdown.cancelled() => anyhow::bail!("stopped while connecting to {engine}"),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

async fn bus(s: &Settings, shutdown: &CancellationToken) -> anyhow::Result<Arc<dyn Bus>> {
    let config = SplitBusConfig {
        domain: s.domain.clone(),
        nats_url: s.engines.nats_url.clone(),
        kafka_brokers: s.engines.kafka_brokers.clone(),
        partitions: s.engines.kafka_partitions,
        ..SplitBusConfig::default()
    };
    let bus = with_retry("nats+kafka", shutdown, || SplitBus::connect(&config)).await?;
    Ok(Arc::new(bus))
}

async fn presence(s: &Settings, shutdown: &CancellationToken) -> anyhow::Result<Arc<dyn Presence>> {
    let ttl = Duration::from_millis(s.engines.presence_ttl_ms);
    let presence = with_retry("redis", shutdown, || {
        RedisPresence::connect(&s.engines.redis_url, &s.domain, ttl)
    })
    .await?;
    Ok(Arc::new(presence))
}

async fn store(s: &Settings, shutdown: &CancellationToken) -> anyhow::Result<Arc<dyn Store>> {
    let database = s
        .engines
        .mongo_database
        .clone()
        .unwrap_or_else(|| format!("linker_{}", s.domain.replace(['-', '.'], "_")));
    let store = with_retry("mongodb", shutdown, || {
        MongoStore::connect(&s.engines.mongo_url, &database)
    })
    .await?;
    Ok(Arc::new(store))
}

/// What both roles set up first: signals, metrics, the network, the bus and presence.
struct Common {
    shutdown: CancellationToken,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    network: Arc<NetworkHandle>,
    bus: Arc<dyn Bus>,
    presence: Arc<dyn Presence>,
}

async fn common(config: NetworkConfig, s: &Settings) -> anyhow::Result<Common> {
    let shutdown = CancellationToken::new();
    crate::cancel_on_signal(shutdown.clone());
    let metrics = crate::install_metrics()?;
    let network = Arc::new(NetworkHandle::new(Network::new(
        config,
        DomainName::new(&s.domain),
    )));
    crate::follow_changes(s, &network, &shutdown);
    let bus = bus(s, &shutdown).await?;
    let presence = presence(s, &shutdown).await?;
    Ok(Common {
        shutdown,
        metrics,
        network,
        bus,
        presence,
    })
}

/// Serves `/health`, `/ready` (asking `store` too, if given) and `/metrics` on `http` while
/// `role` runs; when it ends, stops the rest.
async fn run_role(
    http: tokio::net::TcpListener,
    c: Common,
    store: Option<Arc<dyn Store>>,
    role: impl Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let engines = web::Engines {
        bus: Some(c.bus.clone()),
        presence: Some(c.presence.clone()),
        store,
    };
    let serve = tokio::spawn(web::serve(
        http,
        web::ops_router(c.metrics, engines),
        c.shutdown.clone(),
    ));
    let result = role.await;
    c.shutdown.cancel();
    let _ = serve.await;
    result
}

pub async fn run_connector(config: NetworkConfig, s: Settings) -> anyhow::Result<()> {
    let c = common(config, &s).await?;
    let connector = Connector::bind(
        s.connector.clone(),
        c.network.clone(),
        c.bus.clone(),
        c.presence.clone(),
    )
    .await?;
    let http = web::bind(s.metrics_listen).await?;
    println!(
        "linker connector `{}` of domain `{}` is up",
        s.connector.name, s.domain
    );
    println!("  clients connect to  ws://{}/ws", connector.local_addr());
    let links = connector
        .link_addr()
        .map(|a| format!(" links={a}"))
        .unwrap_or_default();
    println!(
        "LINKER_READY ws={} metrics={}{links}",
        connector.local_addr(),
        http.local_addr()?
    );
    let shutdown = c.shutdown.clone();
    run_role(http, c, None, async move {
        connector.run(shutdown).await.context("connector")
    })
    .await
}

pub async fn run_processor(config: NetworkConfig, s: Settings) -> anyhow::Result<()> {
    let c = common(config, &s).await?;
    let store = store(&s, &c.shutdown).await?;
    let processor = Processor::new(
        s.processor.clone(),
        c.network.clone(),
        c.bus.clone(),
        store.clone(),
        c.presence.clone(),
    );
    let http = web::bind(s.metrics_listen).await?;
    println!(
        "linker processor `{}` of domain `{}` is up",
        s.processor.name, s.domain
    );
    println!("LINKER_READY metrics={}", http.local_addr()?);
    let shutdown = c.shutdown.clone();
    run_role(http, c, Some(store), async move {
        processor.run(shutdown).await.context("processor")
    })
    .await
}
