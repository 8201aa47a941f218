//! Process settings of `linker domain`: defaults, then the `linker:` section of the config
//! file, then `LINKER_<SECTION>__<KEY>` environment variables, then command-line flags.
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
#[serde(default)]
pub struct DomainSettings {
    /// This domain's name in the network config.
    pub domain: String,
    /// Where the embedded store keeps its file.
    pub data_dir: PathBuf,
    /// The test page, `/health` and `/metrics`.
    pub page_listen: SocketAddr,
    /// The meta-server.
    pub meta_listen: SocketAddr,
    pub connector: connector::Config,
    pub processor: processor::Config,
}

impl Default for DomainSettings {
    fn default() -> Self {
        DomainSettings {
            domain: "domain-01".into(),
            data_dir: PathBuf::from("./data"),
            page_listen: SocketAddr::from(([127, 0, 0, 1], 4400)),
            meta_listen: SocketAddr::from(([127, 0, 0, 1], 9000)),
            connector: connector::Config::default(),
            processor: processor::Config::default(),
        }
    }
}

/// A config that cannot be used; printed as is, exit code 64.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SettingsError(pub String);

/// Reads the network and the process settings from `file` (or the built-ins) and the
/// environment.
pub fn load(file: Option<&Path>) -> Result<(NetworkConfig, DomainSettings), SettingsError> {
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
    let mut figment = Figment::from(Serialized::defaults(DomainSettings::default()));
    if let Some(section) = section {
        figment = figment.merge(Serialized::defaults(section));
    }
    let figment = figment.merge(Env::prefixed("LINKER_").split("__"));
    let settings: DomainSettings = figment.extract().map_err(|e| {
        let source = file.map(|p| p.display().to_string()).unwrap_or_default();
        SettingsError(format!(
            "bad setting ({source} or LINKER_* environment): {e}"
        ))
    })?;
    let network = match network {
        Some(n) => n,
        None => NetworkConfig::single_domain(&settings.domain),
    };
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
    Ok((network, settings))
}
