//! A split deployment: N `linker connector` and M `linker processor` processes of one domain
//! on the real engines that `scripts/services.sh` runs (their URLs from `LINKER_TEST_*`).
//!
//! Each deployment gets a domain name of its own, so topics, subjects, keys and databases of
//! different tests never meet. Any process can be SIGKILLed and restarted. With
//! `meta_server`, a `linker meta-server` on a fixed port serves the network, and every process
//! follows it (`meta_url`), so the meta-server too can be killed and started again.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::deployment::{Deployment, TEST_NETWORK};
use crate::process::LinkerProcess;

/// The engines' URLs, from the environment `scripts/services.sh env` prints.
#[derive(Debug, Clone)]
pub struct Engines {
    pub nats: String,
    pub kafka: String,
    pub redis: String,
    pub mongo: String,
}

impl Engines {
    pub fn from_env() -> anyhow::Result<Engines> {
        let var = |name: &str| {
            std::env::var(name).with_context(|| {
                format!(
                    "{name} is not set: start the test engines with `scripts/services.sh start` \
                     and `eval \"$(scripts/services.sh env)\"` (scripts/test.sh does both)"
                )
            })
        };
        Ok(Engines {
            nats: var("LINKER_TEST_NATS_URL")?,
            kafka: var("LINKER_TEST_KAFKA_BROKERS")?,
            redis: var("LINKER_TEST_REDIS_URL")?,
            mongo: var("LINKER_TEST_MONGO_URL")?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct SplitOptions {
    pub connectors: usize,
    pub processors: usize,
    pub auth_deadline_ms: u64,
    /// A socket of a killed connector leaves presence after this long.
    pub presence_ttl_ms: u64,
    pub extra_connector_yaml: String,
    pub extra_processor_yaml: String,
    /// Run a meta-server that the processes poll for their network.
    pub meta_server: bool,
}

impl Default for SplitOptions {
    fn default() -> Self {
        SplitOptions {
            connectors: 2,
            processors: 2,
            auth_deadline_ms: 3_000,
            presence_ttl_ms: 3_000,
            extra_connector_yaml: String::new(),
            extra_processor_yaml: String::new(),
            meta_server: false,
        }
    }
}

/// Partitions of each deployment's inbound topic.
pub const PARTITIONS: usize = 4;

/// A domain name no other deployment uses, now or in an earlier run.
fn fresh_domain() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let now = common::now_millis() % 100_000_000;
    format!(
        "t{}-{}-{}",
        now,
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

pub struct Split {
    _dir: tempfile::TempDir,
    pub domain: String,
    pub connectors: Vec<LinkerProcess>,
    pub processors: Vec<LinkerProcess>,
    /// The meta-server, if the options asked for one.
    pub meta: Option<LinkerProcess>,
}

impl Split {
    pub async fn start(bin: &Path) -> anyhow::Result<Split> {
        Self::start_with(bin, SplitOptions::default()).await
    }

    pub async fn start_with(bin: &Path, o: SplitOptions) -> anyhow::Result<Split> {
        let engines = Engines::from_env()?;
        if o.connectors == 0 || o.processors == 0 {
            bail!("a split deployment needs a connector and a processor");
        }
        let dir = tempfile::tempdir()?;
        let domain = fresh_domain();
        let network = TEST_NETWORK.replace("domain-01", &domain);
        let mut meta = None;
        let mut follow = String::new();
        if o.meta_server {
            // A fixed port, so that a restarted meta-server is where the processes look.
            let port = crate::network::free_port()?;
            let path = dir.path().join("network.yaml");
            std::fs::write(&path, &network)?;
            let (path, listen) = (path.display().to_string(), format!("127.0.0.1:{port}"));
            let args = ["meta-server", "--config", &path, "--listen", &listen];
            let log = dir.path().join("meta-server.log");
            meta = Some(LinkerProcess::start(bin, &args, &log).await?);
            follow = format!("  meta_url: http://{listen}\n  meta_poll_ms: 200\n");
        }
        let config = format!(
            "{network}
linker:
  domain: {domain}
  metrics_listen: 127.0.0.1:0
{follow}  engines:
    nats_url: {nats}
    kafka_brokers: {kafka}
    kafka_partitions: {partitions}
    redis_url: {redis}
    mongo_url: {mongo}
    presence_ttl_ms: {ttl}
  connector:
    listen: 127.0.0.1:0
    auth_deadline_ms: {deadline}
    presence_refresh_ms: {refresh}
{extra_c}  processor:
    delivery_timeout_ms: 3000
{extra_p}",
            nats = engines.nats,
            kafka = engines.kafka,
            redis = engines.redis,
            mongo = engines.mongo,
            partitions = PARTITIONS,
            ttl = o.presence_ttl_ms,
            refresh = (o.presence_ttl_ms / 3).max(100),
            deadline = o.auth_deadline_ms,
            extra_c = o.extra_connector_yaml,
            extra_p = o.extra_processor_yaml,
        );
        let path = dir.path().join("linker.yaml");
        std::fs::write(&path, config)?;
        let path = path.display().to_string();
        let mut processors = Vec::new();
        for i in 1..=o.processors {
            let name = format!("processor-{i:02}");
            let log = dir.path().join(format!("{name}.log"));
            let args = ["processor", "--config", &path, "--name", &name];
            processors.push(LinkerProcess::start(bin, &args, &log).await?);
        }
        let mut connectors = Vec::new();
        for i in 1..=o.connectors {
            let name = format!("connector-{i:02}");
            let log = dir.path().join(format!("{name}.log"));
            let args = ["connector", "--config", &path, "--name", &name];
            connectors.push(LinkerProcess::start(bin, &args, &log).await?);
        }
        let split = Split {
            _dir: dir,
            domain,
            connectors,
            processors,
            meta,
        };
        split.settled().await?;
        Ok(split)
    }

    /// Waits until the running processors own every partition between them, each at least
    /// one (while there are no more processors than partitions): a processor takes the
    /// FAST messages of the senders in its partitions only, so until then some are dropped.
    pub async fn settled(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut owned = Vec::new();
            for addr in self.metrics_addrs() {
                let (_, text) = crate::http_get(&addr, "/metrics").await?;
                owned.push(crate::metric(&text, "linker_fast_partitions", &[]) as usize);
            }
            let each = owned.len() > PARTITIONS || owned.iter().all(|n| *n > 0);
            if each && owned.iter().sum::<usize>() == PARTITIONS {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the processors own {owned:?} of {PARTITIONS} partitions after 30 s\n{}",
                    self.diagnostics()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Split {
    /// Copies every process's log into `to` (created if missing), to read after a failure;
    /// the deployment's own directory goes away with it.
    pub fn keep_logs(&self, to: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(to)?;
        for entry in std::fs::read_dir(self._dir.path())? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "log")
                && let Some(name) = path.file_name()
            {
                std::fs::copy(&path, to.join(name))?;
            }
        }
        Ok(())
    }
}

impl Deployment for Split {
    fn ws_url(&self, i: usize) -> String {
        let c = &self.connectors[i % self.connectors.len()];
        format!("ws://{}/ws", c.ready("ws").unwrap_or_default())
    }

    fn connectors(&self) -> usize {
        self.connectors.len()
    }

    fn metrics_addrs(&self) -> Vec<String> {
        self.processors
            .iter()
            .filter(|p| p.is_running())
            .filter_map(|p| p.ready("metrics").ok())
            .collect()
    }

    fn diagnostics(&self) -> String {
        self.processors
            .iter()
            .chain(&self.connectors)
            .chain(&self.meta)
            .map(|p| p.log_tail())
            .collect::<Vec<_>>()
            .join("\n")
    }
}
