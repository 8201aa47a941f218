//! `linker`: the one binary.
//!
//! - `linker domain`: a whole domain in one process (meta-server, connector, processor) on
//!   the embedded defaults: in-process bus and presence, the redb store under `./data`.
//! - `linker connector` / `linker processor`: one role of a split deployment on NATS, Kafka,
//!   Redis and MongoDB (see `split`).
//! - `linker meta-server --config network.yaml`: the network config over HTTP.
//!
//! Every role takes `--config FILE` and `--check-config` (validate, then exit).
//!
//! Logs go to stderr (`LINKER_LOG` filter, `--log-format json` for JSON); stdout says where
//! to connect and ends with one `LINKER_READY` line that scripts and tests wait for.

mod reload;
mod settings;
mod split;
mod web;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use backends::{EmbeddedStore, MemoryBus, MemoryPresence};
use common::bus::Bus;
use common::ids::DomainName;
use common::network::{Network, NetworkHandle};
use common::presence::Presence;
use common::store::Store;
use connector::Connector;
use meta_server::MetaServer;
use processor::Processor;
use settings::LogFormat;

/// Exit code for a config that cannot be used (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "linker",
    version,
    about = "Federated real-time messaging server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stderr (default: the `log_format` setting, else text).
    #[arg(long, global = true, value_enum, env = "LINKER_LOG_FORMAT")]
    log_format: Option<LogFormat>,
}

/// The config file and checking it, common to every role.
#[derive(Args)]
struct ConfigArgs {
    /// Network config in the seed's YAML format, with an optional `linker:` section of
    /// process settings. Without it: one domain, app ANZ (appId app-id-343).
    #[arg(long, env = "LINKER_CONFIG")]
    config: Option<PathBuf>,
    /// Validate the config (file, `LINKER_*` environment, flags) and exit without starting.
    #[arg(long)]
    check_config: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run a whole domain in one process with the embedded defaults.
    Domain {
        #[command(flatten)]
        config: ConfigArgs,
        /// This domain's name (default domain-01).
        #[arg(long)]
        domain: Option<String>,
        /// Where the embedded store lives (default ./data).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// WebSocket address for clients (default 127.0.0.1:8088).
        #[arg(long)]
        ws_listen: Option<SocketAddr>,
        /// Test page, /health and /metrics (default 127.0.0.1:4400).
        #[arg(long)]
        page_listen: Option<SocketAddr>,
        /// Meta-server (default 127.0.0.1:9000).
        #[arg(long)]
        meta_listen: Option<SocketAddr>,
    },
    /// Run a connector of a split deployment (NATS, Kafka, Redis).
    Connector {
        #[command(flatten)]
        config: ConfigArgs,
        /// This connector's name, unique in the domain (default connector-01).
        #[arg(long)]
        name: Option<String>,
        /// WebSocket address for clients (default 127.0.0.1:8088).
        #[arg(long)]
        ws_listen: Option<SocketAddr>,
        /// /health and /metrics (default 127.0.0.1:9100).
        #[arg(long)]
        metrics_listen: Option<SocketAddr>,
    },
    /// Run a processor of a split deployment (NATS, Kafka, Redis, MongoDB).
    Processor {
        #[command(flatten)]
        config: ConfigArgs,
        /// This processor's name (default processor-01).
        #[arg(long)]
        name: Option<String>,
        /// /health and /metrics (default 127.0.0.1:9100).
        #[arg(long)]
        metrics_listen: Option<SocketAddr>,
    },
    /// Serve a network config over HTTP.
    MetaServer {
        #[arg(long, env = "LINKER_CONFIG")]
        config: PathBuf,
        #[arg(long, default_value = "127.0.0.1:9000", env = "LINKER_META_LISTEN")]
        listen: SocketAddr,
        /// Validate the config and exit without starting.
        #[arg(long)]
        check_config: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("linker: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli.command, cli.log_format));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(e)) => {
            eprintln!("linker: bad config: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(Failure::Run(e)) => {
            eprintln!("linker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Loads the config of a role and starts the logs; `Ok(None)` if it was only to be checked.
/// The `--log-format` flag wins over the `log_format` setting.
fn load(
    args: &ConfigArgs,
    log_format: Option<LogFormat>,
    adjust: impl FnOnce(&mut settings::Settings),
) -> Result<Option<(common::config::NetworkConfig, settings::Settings)>, Failure> {
    let (network, mut s) =
        settings::load(args.config.as_deref()).map_err(|e| Failure::Config(e.0))?;
    adjust(&mut s);
    let (network, s) = settings::finish(network, s).map_err(|e| Failure::Config(e.0))?;
    if args.check_config {
        println!("config OK: domain `{}`", s.domain);
        return Ok(None);
    }
    init_logs(log_format.unwrap_or(s.log_format));
    Ok(Some((network, s)))
}

async fn run(command: Command, log_format: Option<LogFormat>) -> Result<(), Failure> {
    match command {
        Command::Domain {
            config,
            domain,
            data_dir,
            ws_listen,
            page_listen,
            meta_listen,
        } => {
            let loaded = load(&config, log_format, |s| {
                if let Some(d) = domain {
                    s.domain = d;
                }
                if let Some(d) = data_dir {
                    s.data_dir = d;
                }
                if let Some(a) = ws_listen {
                    s.connector.listen = a;
                }
                if let Some(a) = page_listen {
                    s.page_listen = a;
                }
                if let Some(a) = meta_listen {
                    s.meta_listen = a;
                }
            })?;
            match loaded {
                Some((network, s)) => run_domain(network, s).await.map_err(Failure::Run),
                None => Ok(()),
            }
        }
        Command::Connector {
            config,
            name,
            ws_listen,
            metrics_listen,
        } => {
            let loaded = load(&config, log_format, |s| {
                if let Some(n) = name {
                    s.connector.name = n;
                }
                if let Some(a) = ws_listen {
                    s.connector.listen = a;
                }
                if let Some(a) = metrics_listen {
                    s.metrics_listen = a;
                }
            })?;
            match loaded {
                Some((network, s)) => split::run_connector(network, s).await.map_err(Failure::Run),
                None => Ok(()),
            }
        }
        Command::Processor {
            config,
            name,
            metrics_listen,
        } => {
            let loaded = load(&config, log_format, |s| {
                if let Some(n) = name {
                    s.processor.name = n;
                }
                if let Some(a) = metrics_listen {
                    s.metrics_listen = a;
                }
            })?;
            match loaded {
                Some((network, s)) => split::run_processor(network, s).await.map_err(Failure::Run),
                None => Ok(()),
            }
        }
        Command::MetaServer {
            config,
            listen,
            check_config,
        } => {
            let network = common::config::NetworkConfig::load(&config)
                .map_err(|e| Failure::Config(e.to_string()))?;
            if check_config {
                println!("config OK: {} domains", network.domains.len());
                return Ok(());
            }
            init_logs(log_format.unwrap_or_default());
            run_meta(network, config, listen)
                .await
                .map_err(Failure::Run)
        }
    }
}

enum Failure {
    Config(String),
    Run(anyhow::Error),
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LINKER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Cancels `token` on SIGTERM or Ctrl-C. The handlers are in place when this returns.
pub(crate) fn cancel_on_signal(token: CancellationToken) {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler cannot fail on unix");
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        info!("shutting down");
        token.cancel();
    });
}

/// Buckets of every `*_seconds` histogram: 0.5 ms to 5 s.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];

/// Installs the Prometheus recorder; its handle renders `/metrics`. Histograms are rendered
/// as Prometheus histograms (buckets), so percentiles can be aggregated over processes.
pub(crate) fn install_metrics() -> anyhow::Result<metrics_exporter_prometheus::PrometheusHandle> {
    use metrics_exporter_prometheus::Matcher;
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
        .context("bad histogram buckets")?
        .install_recorder()
        .context("cannot install the metrics recorder")
        .inspect(|_| describe_metrics())
}

/// The `# HELP` line of each metric; counters an operator alerts on start at 0, so they are
/// on `/metrics` before the first event.
fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        "linker_connector_connections",
        "open client connections (TCP accepted, not yet closed)"
    );
    describe_gauge!(
        "linker_connector_authenticated_sockets",
        "authenticated client sockets"
    );
    describe_counter!(
        "linker_connector_auths_total",
        "AUTH_CLIENT answered, by result (ok, failed)"
    );
    describe_counter!(
        "linker_connector_frames_in_total",
        "valid client frames, by type and feature"
    );
    describe_counter!(
        "linker_connector_frames_out_total",
        "frames queued for client sockets, by type and feature (none: the connector's own replies)"
    );
    describe_histogram!(
        "linker_delivery_latency_seconds",
        metrics::Unit::Seconds,
        "from the connector taking a client's frame to its delivery to the target's connector (RELIABLE: written to a socket), by feature"
    );
    describe_histogram!(
        "linker_bus_latency_seconds",
        metrics::Unit::Seconds,
        "from the connector taking a client's frame to a processor taking it from the bus, by feature"
    );
    describe_counter!(
        "linker_stored_total",
        "frames stored for a user who could not take them"
    );
    describe_counter!(
        "linker_fetched_total",
        "stored frames handed over by FETCH_MISSING_MESSAGES_REQUEST"
    );
    describe_counter!(
        "linker_bus_publish_errors_total",
        "client frames the bus refused (the sender got GENERAL_ERROR BUS_UNAVAILABLE), by feature"
    );
    describe_gauge!(
        "linker_kafka_consumer_lag",
        "RELIABLE records of this processor's partitions not yet consumed (split mode)"
    );
    describe_gauge!(
        "linker_fast_partitions",
        "partitions whose FAST subject this processor takes (split mode); summed over the \
         processors it is the partition count, less while a partition has no owner"
    );
    for feature in ["fast", "reliable"] {
        metrics::counter!("linker_bus_publish_errors_total", "feature" => feature).absolute(0);
    }
    for result in ["ok", "failed"] {
        metrics::counter!("linker_connector_auths_total", "result" => result).absolute(0);
    }
    metrics::counter!("linker_stored_total").absolute(0);
    metrics::counter!("linker_fetched_total").absolute(0);
}

async fn run_domain(
    config: common::config::NetworkConfig,
    s: settings::Settings,
) -> anyhow::Result<()> {
    let metrics = install_metrics()?;
    let network = Arc::new(NetworkHandle::new(Network::new(
        config,
        DomainName::new(&s.domain),
    )));
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::default());
    let presence: Arc<dyn Presence> = Arc::new(MemoryPresence::new());
    let store: Arc<dyn Store> = Arc::new(
        EmbeddedStore::open(&s.data_dir)
            .with_context(|| format!("cannot open the store in {}", s.data_dir.display()))?,
    );
    let engines = web::Engines {
        bus: Some(bus.clone()),
        presence: Some(presence.clone()),
        store: Some(store.clone()),
    };
    let connector = Connector::bind(
        s.connector.clone(),
        network.clone(),
        bus.clone(),
        presence.clone(),
    )
    .await?;
    let processor = Processor::new(s.processor.clone(), network.clone(), bus, store, presence);
    let meta = MetaServer::bind(s.meta_listen, network.clone()).await?;
    let page = web::bind(s.page_listen).await?;

    // Handle SIGTERM before saying we are ready: a stop right after start must be clean.
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    follow_changes(&s, &network, &shutdown);
    let ws = connector.local_addr();
    let links = connector
        .link_addr()
        .map(|a| format!(" links={a}"))
        .unwrap_or_default();
    let page_addr = page.local_addr()?;
    let meta_addr = meta.local_addr();
    println!("linker domain `{}` is up", s.domain);
    println!("  clients connect to  ws://{ws}/ws");
    println!("  test page           http://{page_addr}/");
    println!("  meta-server         http://{meta_addr}/network");
    println!("  store               {}", s.data_dir.display());
    if let Some(a) = connector.link_addr() {
        println!("  domain links        tcp://{a}");
    }
    println!("LINKER_READY ws={ws} page={page_addr} meta={meta_addr}{links}");

    let mut tasks = tokio::task::JoinSet::new();
    let t = shutdown.clone();
    tasks.spawn(async move { connector.run(t).await.context("connector") });
    let t = shutdown.clone();
    tasks.spawn(async move { processor.run(t).await.context("processor") });
    let t = shutdown.clone();
    tasks.spawn(async move { meta.run(t).await.context("meta-server") });
    let t = shutdown.clone();
    tasks.spawn(async move {
        web::serve(page, web::router(metrics, engines), t)
            .await
            .context("page server")
    });
    let mut result = Ok(());
    while let Some(done) = tasks.join_next().await {
        // The first part to stop takes the others down with it.
        shutdown.cancel();
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                error!(error = %format!("{e:#}"), "stopped with an error");
                result = Err(e);
            }
            Err(e) => result = Err(anyhow::anyhow!("a task panicked: {e}")),
        }
    }
    result
}

/// Reloads the network when the config file changes (or on SIGHUP), and follows the
/// meta-server if one is configured.
pub(crate) fn follow_changes(
    s: &settings::Settings,
    network: &Arc<NetworkHandle>,
    shutdown: &CancellationToken,
) {
    if let Some(path) = &s.config_file {
        reload::watch_file(path.clone(), network.clone(), true, shutdown.clone());
    }
    if let Some(url) = &s.meta_url {
        let every = std::time::Duration::from_millis(s.meta_poll_ms.max(100));
        reload::follow_meta(url.clone(), every, network.clone(), shutdown.clone());
    }
}

async fn run_meta(
    config: common::config::NetworkConfig,
    path: PathBuf,
    listen: SocketAddr,
) -> anyhow::Result<()> {
    let network = meta_server::handle(config);
    let meta = MetaServer::bind(listen, network.clone()).await?;
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    reload::watch_file(path, network, false, shutdown.clone());
    println!("meta-server on http://{}/network", meta.local_addr());
    println!("LINKER_READY meta={}", meta.local_addr());
    meta.run(shutdown).await?;
    Ok(())
}
