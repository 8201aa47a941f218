//! A network of domains for the tests: one `linker domain` process per domain and one
//! `linker meta-server`, on loopback ports picked at start.
//!
//! [`DomainNet::ring`] is the 4-domain ring of seed 004 (`domain-01`..`domain-04`, links 1-2,
//! 2-3, 3-4, 1-4) with its ranges of app `ANZ`. [`DomainNet::ring_with_split`] runs one of
//! its domains in split mode instead (a `linker processor` and a `linker connector` on the
//! real engines), with domain names of its own so that the engines' topics and keys of
//! different runs never meet. Each domain keeps its ports and its store
//! across a kill and restart, so the others reach it again at the same `tcp://` url. The
//! network file can be rewritten ([`DomainNet::write_network`]): every process watches its
//! config file and reloads it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;

use crate::deployment::Deployment;
use crate::process::LinkerProcess;

/// First user number of each domain's range in [`DomainNet::ring`] (and of `domain-05`,
/// which tests may add).
pub const RANGE_START: [u64; 5] = [0, 1_000_000, 3_000_000, 6_000_000, 7_000_000];

/// One domain: its ports and processes (`linker domain`, or processor then connector).
struct Domain {
    name: String,
    ws_port: u16,
    link_port: u16,
    config: PathBuf,
    processes: Vec<LinkerProcess>,
    split: bool,
}

pub struct DomainNet {
    dir: tempfile::TempDir,
    bin: PathBuf,
    domains: Vec<Domain>,
    meta: LinkerProcess,
    meta_config: PathBuf,
}

/// A port nobody listens on now, for a process started later. Taken below the kernel's
/// ephemeral range (32768 and up), where ports given out for port 0 and for outgoing
/// connections never land in the meantime, and away from the test engines' ports.
pub(crate) fn free_port() -> anyhow::Result<u16> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let engines = [14222, 16379, 19092, 19093, 27018];
    for _ in 0..1000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let seed = u64::from(std::process::id()).wrapping_mul(7919) + n * 104_729;
        let port = 20_000 + (seed % 12_000) as u16;
        if engines.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!("no free port between 20000 and 32000")
}

/// Process settings of one domain: fast link timings so failures show within a second;
/// the engines of split mode if `split`.
fn linker_section(name: &str, data: &Path, ws_port: u16, split: bool) -> anyhow::Result<String> {
    let mut y = format!(
        "linker:\n  domain: {name}\n  data_dir: {data}\n  page_listen: 127.0.0.1:0\n  meta_listen: 127.0.0.1:0\n  metrics_listen: 127.0.0.1:0\n  connector:\n    listen: 127.0.0.1:{ws_port}\n    auth_deadline_ms: 3000\n    presence_refresh_ms: 1000\n  processor:\n    link_timeout_ms: 2000\n    link_ping_ms: 500\n    link_max_backoff_ms: 300\n    outbox_retry_ms: 300\n    relay_receipt_timeout_ms: 2000\n",
        data = data.display(),
    );
    if split {
        let e = crate::split::Engines::from_env()?;
        y += &format!(
            "  engines:\n    nats_url: {}\n    kafka_brokers: {}\n    kafka_partitions: 2\n    redis_url: {}\n    mongo_url: {}\n    presence_ttl_ms: 3000\n",
            e.nats, e.kafka, e.redis, e.mongo
        );
    }
    Ok(y)
}

impl DomainNet {
    /// The 4-domain ring of seed 004, every domain up.
    pub async fn ring(bin: &Path) -> anyhow::Result<DomainNet> {
        Self::start_ring(bin, "domain", None).await
    }

    /// The ring with domain `split` (0-based) in split mode on the real engines. Its domains
    /// are named `r<unique>-01`.. so that no other run shares their topics and keys.
    pub async fn ring_with_split(bin: &Path, split: usize) -> anyhow::Result<DomainNet> {
        let prefix = format!(
            "r{}p{}",
            common::now_millis() % 100_000_000,
            std::process::id()
        );
        Self::start_ring(bin, &prefix, Some(split)).await
    }

    async fn start_ring(
        bin: &Path,
        prefix: &str,
        split: Option<usize>,
    ) -> anyhow::Result<DomainNet> {
        let dir = tempfile::tempdir()?;
        let mut ports = Vec::new();
        for _ in 0..4 {
            ports.push((free_port()?, free_port()?));
        }
        let names: Vec<String> = (1..=4).map(|i| format!("{prefix}-0{i}")).collect();
        let links = [(0, 1), (1, 2), (2, 3), (0, 3)];
        let yaml = network_yaml(&names, &ports, &links);
        let meta_config = dir.path().join("network.yaml");
        std::fs::write(&meta_config, &yaml)?;
        let meta_arg = meta_config.display().to_string();
        let meta = LinkerProcess::start(
            bin,
            &[
                "meta-server",
                "--config",
                &meta_arg,
                "--listen",
                "127.0.0.1:0",
            ],
            &dir.path().join("meta.log"),
        )
        .await?;
        let mut net = DomainNet {
            dir,
            bin: bin.to_owned(),
            domains: Vec::new(),
            meta,
            meta_config,
        };
        for (i, (name, (ws_port, link_port))) in names.iter().zip(ports).enumerate() {
            net.start_domain(name, ws_port, link_port, &yaml, split == Some(i))
                .await?;
        }
        for (i, links) in [2, 2, 2, 2].into_iter().enumerate() {
            net.wait_linked(i, links).await?;
        }
        Ok(net)
    }

    /// Waits until domain `i`'s processor has `links` links up (its `linker_link_up` gauges).
    pub async fn wait_linked(&self, i: usize, links: usize) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let (_, text) = crate::http_get(&self.page_addr(i), "/metrics").await?;
            let up = text
                .lines()
                .filter(|l| l.starts_with("linker_link_up{") && l.ends_with(" 1"))
                .count();
            if up >= links {
                return Ok(());
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "domain {i} has {up} of {links} links up\n{}",
                self.logs()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Starts domain `name` on the given ports with network `yaml`: one `linker domain`, or
    /// with `split` a `linker processor` and a `linker connector`.
    async fn start_domain(
        &mut self,
        name: &str,
        ws_port: u16,
        link_port: u16,
        yaml: &str,
        split: bool,
    ) -> anyhow::Result<()> {
        let config = self.dir.path().join(format!("{name}.yaml"));
        let data = self.dir.path().join(name);
        std::fs::write(
            &config,
            format!("{yaml}\n{}", linker_section(name, &data, ws_port, split)?),
        )?;
        let arg = config.display().to_string();
        let roles: &[&str] = if split {
            &["processor", "connector"]
        } else {
            &["domain"]
        };
        let mut processes = Vec::new();
        for role in roles {
            let log = self.dir.path().join(format!("{name}-{role}.log"));
            let p = LinkerProcess::start(&self.bin, &[role, "--config", &arg], &log)
                .await
                .with_context(|| format!("start {role} of {name}"))?;
            processes.push(p);
        }
        self.domains.push(Domain {
            name: name.to_owned(),
            ws_port,
            link_port,
            config,
            processes,
            split,
        });
        Ok(())
    }

    /// The network as YAML with one more domain, linked to the domains at `links_to`, owning
    /// the users from [`RANGE_START`]`[4]` on; and the ports it will use.
    pub fn with_domain_05(&self, links_to: &[usize]) -> anyhow::Result<(String, u16, u16)> {
        let mut names: Vec<String> = self.domains.iter().map(|d| d.name.clone()).collect();
        let mut ports: Vec<(u16, u16)> = self
            .domains
            .iter()
            .map(|d| (d.ws_port, d.link_port))
            .collect();
        let new = (free_port()?, free_port()?);
        let prefix = names[0].trim_end_matches("-01").to_owned();
        names.push(format!("{prefix}-05"));
        ports.push(new);
        let mut links = vec![(0, 1), (1, 2), (2, 3), (0, 3)];
        links.extend(links_to.iter().map(|i| (*i, 4)));
        Ok((network_yaml(&names, &ports, &links), new.0, new.1))
    }

    /// Rewrites every process's config with network `yaml`; each reloads it by itself.
    pub fn write_network(&self, yaml: &str) -> anyhow::Result<()> {
        std::fs::write(&self.meta_config, yaml)?;
        for d in &self.domains {
            let data = self.dir.path().join(&d.name);
            let section = linker_section(&d.name, &data, d.ws_port, d.split)?;
            std::fs::write(&d.config, format!("{yaml}\n{section}"))?;
        }
        Ok(())
    }

    /// Starts `domain-05` (see [`DomainNet::with_domain_05`]) on network `yaml`.
    pub async fn start_domain_05(
        &mut self,
        yaml: &str,
        ws_port: u16,
        link_port: u16,
    ) -> anyhow::Result<()> {
        let prefix = self.domains[0].name.trim_end_matches("-01").to_owned();
        self.start_domain(&format!("{prefix}-05"), ws_port, link_port, yaml, false)
            .await
    }

    /// The meta-server's address (`host:port`).
    pub fn meta_addr(&self) -> String {
        self.meta.ready("meta").unwrap_or_default()
    }

    /// The meta-server's config file.
    pub fn meta_config(&self) -> &Path {
        &self.meta_config
    }

    /// The meta-server process (to signal it).
    pub fn meta_process(&mut self) -> &mut LinkerProcess {
        &mut self.meta
    }

    /// Where domain `i`'s processor serves `/metrics` (the page server of `linker domain`).
    pub fn page_addr(&self, i: usize) -> String {
        let first = &self.domains[i].processes[0];
        first
            .ready("page")
            .or_else(|_| first.ready("metrics"))
            .unwrap_or_default()
    }

    /// The name of domain `i`.
    pub fn name(&self, i: usize) -> &str {
        &self.domains[i].name
    }

    /// SIGKILL of every process of domain `i`.
    pub async fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        for p in &mut self.domains[i].processes {
            p.kill().await?;
        }
        Ok(())
    }

    /// Starts domain `i` again on the same ports and store.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        for p in &mut self.domains[i].processes {
            p.restart().await?;
        }
        Ok(())
    }

    /// A user id of app ANZ living on domain `i` that no other test uses.
    pub fn user(&self, i: usize) -> String {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed) % 1000;
        let pid = u64::from(std::process::id()) % 500;
        format!("ANZ-{}", RANGE_START[i] + 100_000 + pid * 1000 + n)
    }

    /// The meta-server's whole log.
    pub fn meta_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("meta.log")).unwrap_or_default()
    }

    /// Every process's log tail.
    pub fn logs(&self) -> String {
        let mut text = self.meta.log_tail();
        for p in self.domains.iter().flat_map(|d| &d.processes) {
            text.push('\n');
            text.push_str(&p.log_tail());
        }
        text
    }
}

impl Deployment for DomainNet {
    /// Connector `i` is domain `i`'s (its users must log in there).
    fn ws_url(&self, i: usize) -> String {
        let d = &self.domains[i % self.domains.len()];
        format!("ws://127.0.0.1:{}/ws", d.ws_port)
    }

    fn connectors(&self) -> usize {
        self.domains.len()
    }

    fn metrics_addrs(&self) -> Vec<String> {
        (0..self.domains.len()).map(|i| self.page_addr(i)).collect()
    }

    fn diagnostics(&self) -> String {
        self.logs()
    }
}

/// The network file: domains on loopback ports, their domain apps, app ANZ (master
/// `ANZ-123223` on domain-01) and BNZ, and the seed's ranges (domain-04 ends where a fifth
/// domain would start).
fn network_yaml(names: &[String], ports: &[(u16, u16)], links: &[(usize, usize)]) -> String {
    let mut y = String::from("domains:\n");
    for (name, (ws, link)) in names.iter().zip(ports) {
        y +=
            &format!("  - name: {name}\n    urls: [ws://127.0.0.1:{ws}, tcp://127.0.0.1:{link}]\n");
    }
    y += "domainLinks:\n";
    for (a, b) in links {
        y += &format!("  - n1: {}\n    n2: {}\n", names[*a], names[*b]);
    }
    y += "clientApps:\n";
    for name in names {
        let app = common::config::domain_app_name(name);
        y += &format!(
            "  - appName: {app}\n    appId: {app}\n    masterUserId: {app}-1\n    authEnabled: false\n"
        );
    }
    y += "  - appName: ANZ\n    appId: app-id-343\n    masterUserId: ANZ-123223\n    authEnabled: false\n    channels: {policy: open}\n";
    y += "userDistributions:\n";
    for (i, name) in names.iter().enumerate() {
        let to = match RANGE_START.get(i + 1) {
            Some(next) if i + 1 < names.len() => format!("\n    to: {}", next - 1),
            _ => String::new(),
        };
        y += &format!("  - domainName: {name}\n    from: {}{to}\n", RANGE_START[i]);
    }
    y
}
