//! Deployments the scenarios run against.
//!
//! A [`Deployment`] says where clients connect and where metrics are; scenarios need nothing
//! else. [`Embedded`] runs the real `linker domain` binary as a child process on ports it picks
//! itself (port 0), with its store in a temporary directory, and can SIGKILL and restart it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

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

/// The network of the test domain: the seed's ANZ app and a second app, BNZ.
pub const TEST_NETWORK: &str = r#"
domains:
  - name: domain-01
    urls: [ws://127.0.0.1:8088, tcp://127.0.0.1:9089]
clientApps:
  - appName: ANZ
    appId: app-id-343
    masterUserId: ANZ-123223
    authEnabled: false
  - appName: BNZ
    appId: bnz-344
    masterUserId: BNZ-453432
    authEnabled: false
"#;

/// One `linker domain` process.
pub struct Embedded {
    bin: PathBuf,
    dir: tempfile::TempDir,
    child: Option<Child>,
    ws: String,
    page: String,
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
        std::fs::write(dir.path().join("linker.yaml"), config)?;
        let mut d = Embedded {
            bin: bin.to_owned(),
            dir,
            child: None,
            ws: String::new(),
            page: String::new(),
        };
        d.launch().await?;
        Ok(d)
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut child = Command::new(&self.bin)
            .arg("domain")
            .arg("--config")
            .arg(self.dir.path().join("linker.yaml"))
            .env("LINKER_LOG", "info,connector=debug,processor=debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {}", self.bin.display()))?;
        let stdout = child.stdout.take().context("child stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(rest) = line.strip_prefix("LINKER_READY ") {
                    return Ok::<_, anyhow::Error>(rest.to_owned());
                }
            }
            bail!("linker exited before it was ready")
        })
        .await;
        let ready = match ready {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => bail!("{e}\n{}", self.log_tail()),
            Err(_) => bail!("linker not ready within 30 s\n{}", self.log_tail()),
        };
        // Keep reading stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let field = |name: &str| {
            ready
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(name))
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("no {name} in LINKER_READY {ready}"))
        };
        self.ws = field("ws=")?;
        self.page = field("page=")?;
        self.child = Some(child);
        Ok(())
    }

    /// The process's log (stderr), for failure messages.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("linker.log")
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<_> = text.lines().collect();
        let start = lines.len().saturating_sub(40);
        format!(
            "--- last lines of {} ---\n{}",
            self.log_path().display(),
            lines[start..].join("\n")
        )
    }

    /// The test page's address (`host:port`), which also serves /health and /metrics.
    pub fn page_addr(&self) -> &str {
        &self.page
    }

    /// Kills the process with SIGKILL: no shutdown code runs.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.start_kill()?;
            child.wait().await?;
        }
        Ok(())
    }

    /// Sends SIGTERM and waits for the process to exit; returns its exit status code.
    pub async fn terminate(&mut self) -> anyhow::Result<Option<i32>> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        if let Some(pid) = child.id() {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            )?;
        }
        let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
            .await
            .context("no exit within 20 s of SIGTERM")??;
        Ok(status.code())
    }

    /// Starts the process again on the same config and store (new ports).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await?;
        self.launch().await
    }
}

impl Deployment for Embedded {
    fn ws_url(&self, _i: usize) -> String {
        format!("ws://{}/ws", self.ws)
    }

    fn metrics_addrs(&self) -> Vec<String> {
        vec![self.page.clone()]
    }

    fn diagnostics(&self) -> String {
        self.log_tail()
    }
}
