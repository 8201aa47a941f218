//! Deployments the scenarios run against.
//!
//! A [`Deployment`] says where clients connect and where metrics are; scenarios need nothing
//! else. [`Embedded`] runs the real `linker domain` binary as a child process on ports it picks
//! itself (port 0), with its store in a temporary directory, and can SIGKILL and restart it.

use std::path::{Path, PathBuf};

use crate::process::LinkerProcess;

/// Where a scenario finds the system under test.
pub trait Deployment: Send + Sync {
    /// The WebSocket URL of connector `i` (modulo the number of connectors).
    fn ws_url(&self, i: usize) -> String;

    /// How many connectors clients can reach.
    fn connectors(&self) -> usize {
        1
    }

    /// Addresses (`host:port`) serving `/metrics` for the processors; empty if none.
    fn metrics_addrs(&self) -> Vec<String> {
        Vec::new()
    }

    /// What to print when a scenario fails (e.g. the tail of the server logs).
    fn diagnostics(&self) -> String {
        String::new()
    }
}

/// Options for an embedded domain.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    pub auth_deadline_ms: u64,
    pub max_frame_bytes: usize,
    pub max_bad_frames: u32,
    /// Extra YAML appended under `linker.connector` (each line indented by four spaces).
    pub extra_connector_yaml: String,
    /// The network part of the config; `TEST_NETWORK` if `None`.
    pub network_yaml: Option<String>,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            auth_deadline_ms: 3_000,
            max_frame_bytes: 64 * 1024,
            max_bad_frames: 10,
            extra_connector_yaml: String::new(),
            network_yaml: None,
        }
    }
}

/// The network of the test domain: the seed's ANZ app (open channels), a second app, BNZ,
/// and CNZ, whose channels are managed by its master user.
pub const TEST_NETWORK: &str = r#"
domains:
  - name: domain-01
    urls: [ws://127.0.0.1:8088, tcp://127.0.0.1:9089]
clientApps:
  - appName: ANZ
    appId: app-id-343
    masterUserId: ANZ-123223
    authEnabled: false
    channels: {policy: open}
  - appName: BNZ
    appId: bnz-344
    masterUserId: BNZ-453432
    authEnabled: false
  - appName: CNZ
    appId: cnz-345
    masterUserId: CNZ-1
    authEnabled: false
    channels: {policy: managed}
"#;

/// One `linker domain` process.
pub struct Embedded {
    dir: tempfile::TempDir,
    process: LinkerProcess,
}

impl Embedded {
    pub async fn start(bin: &Path) -> anyhow::Result<Embedded> {
        Self::start_with(bin, EmbeddedOptions::default()).await
    }

    pub async fn start_with(bin: &Path, options: EmbeddedOptions) -> anyhow::Result<Embedded> {
        let dir = tempfile::tempdir()?;
        let network = options.network_yaml.as_deref().unwrap_or(TEST_NETWORK);
        let config = format!(
            "{network}\nlinker:\n  domain: domain-01\n  data_dir: {data}\n  page_listen: 127.0.0.1:0\n  meta_listen: 127.0.0.1:0\n  connector:\n    listen: 127.0.0.1:0\n    auth_deadline_ms: {deadline}\n    max_frame_bytes: {frame}\n    max_bad_frames: {bad}\n{extra}",
            data = dir.path().join("data").display(),
            deadline = options.auth_deadline_ms,
            frame = options.max_frame_bytes,
            bad = options.max_bad_frames,
            extra = options.extra_connector_yaml,
        );
        let config_path = dir.path().join("linker.yaml");
        std::fs::write(&config_path, config)?;
        let config_arg = config_path.display().to_string();
        let process = LinkerProcess::start(
            bin,
            &["domain", "--config", &config_arg],
            &dir.path().join("linker.log"),
        )
        .await?;
        Ok(Embedded { dir, process })
    }

    /// The process's log (stderr).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("linker.log")
    }

    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }

    /// The test page's address (`host:port`), which also serves /health and /metrics.
    pub fn page_addr(&self) -> String {
        self.process.ready("page").unwrap_or_default()
    }

    /// Kills the process with SIGKILL: no shutdown code runs.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.process.kill().await
    }

    /// Sends SIGTERM and waits for the process to exit; returns its exit status code.
    pub async fn terminate(&mut self) -> anyhow::Result<Option<i32>> {
        self.process.terminate().await
    }

    /// Starts the process again on the same config and store (new ports).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.process.restart().await
    }
}

impl Deployment for Embedded {
    fn ws_url(&self, _i: usize) -> String {
        format!("ws://{}/ws", self.process.ready("ws").unwrap_or_default())
    }

    fn metrics_addrs(&self) -> Vec<String> {
        vec![self.page_addr()]
    }

    fn diagnostics(&self) -> String {
        self.log_tail()
    }
}
