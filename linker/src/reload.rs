//! Picking up a changed network without a restart.
//!
//! Every role that was given a config file reloads its network part on SIGHUP and when the
//! file changes (checked every second). A role may also follow a meta-server (`meta_url`),
//! polling its `/network`. Either way the new network is validated first: a bad one is
//! refused with the reason in the log and the old one kept; a good one is swapped into the
//! process's [`NetworkHandle`], where connectors and processors see it from their next use
//! (processors dial new neighbours and drop old ones). Process settings (the `linker:`
//! section) are read at start only.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use common::config::NetworkConfig;
use common::network::NetworkHandle;

/// How often the config file is checked for a change.
const FILE_CHECK: Duration = Duration::from_secs(1);

/// Reloads `path` into `network` on SIGHUP or a change of the file, until `shutdown`. With
/// `own_domain`, a config that no longer names the process's domain is refused.
pub fn watch_file(
    path: PathBuf,
    network: Arc<NetworkHandle>,
    own_domain: bool,
    shutdown: CancellationToken,
) {
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    tokio::spawn(async move {
        let mut seen = stamp(&path);
        let mut ticks = tokio::time::interval(FILE_CHECK);
        loop {
            #[cfg(unix)]
            let hup = async {
                match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hup = std::future::pending::<Option<()>>();
            let why = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = hup => "SIGHUP",
                _ = ticks.tick() => {
                    let now = stamp(&path);
                    if now == seen {
                        continue;
                    }
                    seen = now;
                    "file changed"
                }
            };
            match NetworkConfig::load(&path) {
                Ok(config) => apply(
                    &network,
                    config,
                    own_domain,
                    &path.display().to_string(),
                    why,
                ),
                Err(e) => {
                    warn!(file = %path.display(), why, error = %e, "new network config refused; the old one stays")
                }
            }
        }
    });
}

/// Polls `<url>/network` every `every` and applies what it serves, until `shutdown`.
pub fn follow_meta(
    url: String,
    every: Duration,
    network: Arc<NetworkHandle>,
    shutdown: CancellationToken,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("a plain HTTP client always builds");
    let endpoint = format!("{}/network", url.trim_end_matches('/'));
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let fetched = async {
                let reply = client.get(&endpoint).send().await?.error_for_status()?;
                reply.json::<NetworkConfig>().await
            };
            match fetched.await {
                Ok(config) => {
                    failing = false;
                    match config.validate() {
                        Ok(()) => apply(&network, config, true, &endpoint, "meta-server"),
                        Err(e) => {
                            warn!(url = %endpoint, error = %e, "meta-server's network refused; the old one stays")
                        }
                    }
                }
                Err(e) if !failing => {
                    failing = true;
                    warn!(url = %endpoint, error = %e, "meta-server unreachable; keeping the network we have");
                }
                Err(_) => {}
            }
        }
    });
}

/// Swaps in `config`, unless `own_domain` and it would drop this process's domain.
fn apply(
    network: &NetworkHandle,
    config: NetworkConfig,
    own_domain: bool,
    source: &str,
    why: &str,
) {
    let local = network.current().local_domain().clone();
    if own_domain && !config.domains.iter().any(|d| d.name == local.as_str()) {
        warn!(source, why, domain = %local, "new network config refused: it does not name this domain");
        return;
    }
    let (domains, links) = (config.domains.len(), config.domain_links.len());
    if network.replace(config) {
        info!(source, why, domains, links, "network config reloaded");
    }
}

/// What identifies a version of the file: its modification time and length.
fn stamp(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}
