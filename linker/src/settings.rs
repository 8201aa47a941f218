//! Process settings of every role: defaults, then the `linker:` section of the config file,
//! then `LINKER_<SECTION>__<KEY>` environment variables, then command-line flags.
//!
//! The network part of the same file (domains, clientApps, ...) is read by `common::config`.
//! A bad file or value stops the process at start with the key and the reason (exit 64).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Serialized};
use serde::{Deserialize, Serialize};

use common::config::NetworkConfig;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// This domain's name in the network config.
    pub domain: String,
    /// Where the embedded store keeps its file.
    pub data_dir: PathBuf,
    /// The test page, `/health` and `/metrics`.
    pub page_listen: SocketAddr,
    /// The meta-server.
    pub meta_listen: SocketAddr,
    /// `/health`, `/ready` and `/metrics` of a `linker connector` or `linker processor`.
    pub metrics_listen: SocketAddr,
    /// Log lines on stderr: `text` or `json` (one object per line).
    pub log_format: LogFormat,
    /// The engines of split mode (`linker connector`, `linker processor`).
    pub engines: Engines,
    pub connector: connector::Config,
    pub processor: processor::Config,
    /// Follow this meta-server's network (`http://host:9000`), as well as the config file.
    pub meta_url: Option<String>,
    /// How often `meta_url` is polled.
    pub meta_poll_ms: u64,
    /// The file the settings came from (reloaded when it changes); not a setting.
    #[serde(skip)]
    pub config_file: Option<PathBuf>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Where the engines of a split deployment are.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Engines {
    /// FAST envelopes and connector commands.
    pub nats_url: String,
    /// RELIABLE envelopes (comma-separated bootstrap servers).
    pub kafka_brokers: String,
    /// Partitions of the inbound topic, created if missing.
    pub kafka_partitions: i32,
    /// Presence, fetch locks, processed marks.
    pub redis_url: String,
    /// Undelivered messages.
    pub mongo_url: String,
    /// Database name; `linker_<domain>` if absent.
    pub mongo_database: Option<String>,
    /// A socket not refreshed by its connector for this long is no longer present.
    pub presence_ttl_ms: u64,
}

impl Default for Engines {
    fn default() -> Self {
        Engines {
            nats_url: "nats://127.0.0.1:4222".into(),
            kafka_brokers: "127.0.0.1:9092".into(),
            kafka_partitions: 8,
            redis_url: "redis://127.0.0.1:6379".into(),
            mongo_url: "mongodb://127.0.0.1:27017".into(),
            mongo_database: None,
            presence_ttl_ms: 30_000,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            domain: "domain-01".into(),
            data_dir: PathBuf::from("./data"),
            page_listen: SocketAddr::from(([127, 0, 0, 1], 4400)),
            meta_listen: SocketAddr::from(([127, 0, 0, 1], 9000)),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9100)),
            log_format: LogFormat::Text,
            engines: Engines::default(),
            connector: connector::Config::default(),
            processor: processor::Config::default(),
            meta_url: None,
            meta_poll_ms: 2_000,
            config_file: None,
        }
    }
}

/// A config that cannot be used; printed as is, exit code 64.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SettingsError(pub String);

/// Top-level keys of the `linker:` section; `LINKER_*` variables outside them (`LINKER_LOG`,
/// `LINKER_CONFIG`, test variables) are not settings.
const SECTIONS: [&str; 11] = [
    "domain",
    "log_format",
    "meta_url",
    "meta_poll_ms",
    "data_dir",
    "page_listen",
    "meta_listen",
    "metrics_listen",
    "engines",
    "connector",
    "processor",
];

/// Reads the network (if a file is given) and the process settings from `file` and the
/// environment. Call [`finish`] once command-line flags are applied.
pub fn load(file: Option<&Path>) -> Result<(Option<NetworkConfig>, Settings), SettingsError> {
    let (network, section) = match file {
        Some(path) => {
            let network = NetworkConfig::load(path).map_err(|e| SettingsError(e.to_string()))?;
            let text = std::fs::read_to_string(path)
                .map_err(|e| SettingsError(format!("cannot read {}: {e}", path.display())))?;
            let value: serde_norway::Value = serde_norway::from_str(&text)
                .map_err(|e| SettingsError(format!("{}: {e}", path.display())))?;
            let section = value.get("linker").cloned();
            (Some(network), section)
        }
        None => (None, None),
    };
    let mut figment = Figment::from(Serialized::defaults(Settings::default()));
    if let Some(section) = section {
        figment = figment.merge(Serialized::defaults(section));
    }
    // The key keeps the variable's case here (figment compares keys without case later).
    let env = Env::prefixed("LINKER_").split("__").filter(|key| {
        let top = key.as_str().split('.').next().unwrap_or_default();
        SECTIONS.iter().any(|s| s.eq_ignore_ascii_case(top))
    });
    let mut settings: Settings = figment.merge(env).extract().map_err(|e| {
        let source = file.map(|p| p.display().to_string()).unwrap_or_default();
        SettingsError(format!(
            "bad setting ({source} or LINKER_* environment): {e}"
        ))
    })?;
    settings.config_file = file.map(Path::to_path_buf);
    Ok((network, settings))
}

/// Checks the final settings against the network and each other; builds the built-in
/// network if no file gave one.
pub fn finish(
    network: Option<NetworkConfig>,
    settings: Settings,
) -> Result<(NetworkConfig, Settings), SettingsError> {
    let network = network.unwrap_or_else(|| NetworkConfig::single_domain(&settings.domain));
    if !network.domains.iter().any(|d| d.name == settings.domain) {
        return Err(SettingsError(format!(
            "domain: `{}` is not one of the config's domains ({})",
            settings.domain,
            network
                .domains
                .iter()
                .map(|d| d.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    check_ranges(&settings)?;
    let mut settings = settings;
    if settings.connector.link_listen.is_none() {
        settings.connector.link_listen = link_listen(&network, &settings.domain)?;
    }
    Ok((network, settings))
}

/// Where a domain with links listens for them by default: its `tcp://` url (any address
/// of this host if the url names a host rather than an IP).
fn link_listen(network: &NetworkConfig, domain: &str) -> Result<Option<SocketAddr>, SettingsError> {
    let linked = network
        .domain_links
        .iter()
        .any(|l| l.n1 == domain || l.n2 == domain);
    let Some(url) = network.link_url(domain).filter(|_| linked) else {
        return Ok(None);
    };
    if let Ok(addr) = url.parse::<SocketAddr>() {
        return Ok(Some(addr));
    }
    let port = url
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .ok_or_else(|| {
            SettingsError(format!(
                "domains: tcp url `{url}` of `{domain}` has no port"
            ))
        })?;
    Ok(Some(SocketAddr::from(([0, 0, 0, 0], port))))
}

/// Values that would make a process unusable (or panic) are refused at start.
fn check_ranges(s: &Settings) -> Result<(), SettingsError> {
    let c = &s.connector;
    let p = &s.processor;
    let rules: [(&str, bool, &str); 10] = [
        (
            "connector.max_frame_bytes",
            c.max_frame_bytes >= 1024,
            "must be at least 1024",
        ),
        (
            "connector.auth_deadline_ms",
            c.auth_deadline_ms > 0,
            "must be above 0",
        ),
        (
            "connector.outbound_queue",
            c.outbound_queue > 0,
            "must be above 0",
        ),
        (
            "connector.max_group_size",
            c.max_group_size > 0,
            "must be above 0",
        ),
        (
            "connector.max_fetch_count",
            c.max_fetch_count > 0,
            "must be above 0",
        ),
        (
            "connector.frame_burst",
            c.max_frames_per_sec == 0 || c.frame_burst > 0,
            "must be above 0 when max_frames_per_sec is set",
        ),
        ("processor.workers", p.workers > 0, "must be above 0"),
        (
            "processor.worker_queue",
            p.worker_queue > 0,
            "must be above 0",
        ),
        (
            "processor.max_kept_per_user",
            p.max_kept_per_user > 0,
            "must be above 0",
        ),
        (
            "engines.presence_ttl_ms",
            s.engines.presence_ttl_ms > c.presence_refresh_ms,
            "must be above connector.presence_refresh_ms",
        ),
    ];
    match rules.iter().find(|(_, ok, _)| !ok) {
        Some((key, _, reason)) => Err(SettingsError(format!("{key}: {reason}"))),
        None => Ok(()),
    }
}
