//! One `linker` child process: started with a config file, ready when it prints its
//! `LINKER_READY key=value ...` line, logging to a file, killable with SIGKILL or SIGTERM and
//! restartable with the same arguments.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub struct LinkerProcess {
    bin: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    ready: HashMap<String, String>,
}

impl LinkerProcess {
    /// Starts `linker <args>`, logging to `log`, and waits for its ready line.
    pub async fn start(bin: &Path, args: &[&str], log: &Path) -> anyhow::Result<LinkerProcess> {
        let mut p = LinkerProcess {
            bin: bin.to_owned(),
            args: args.iter().map(|a| a.to_string()).collect(),
            log: log.to_owned(),
            child: None,
            ready: HashMap::new(),
        };
        p.launch().await?;
        Ok(p)
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut child = Command::new(&self.bin)
            .args(&self.args)
            .env(
                "LINKER_LOG",
                "info,connector=debug,processor=debug,backends=debug",
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {}", self.bin.display()))?;
        let stdout = child.stdout.take().context("child stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(60), async {
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
            Err(_) => bail!("linker not ready within 60 s\n{}", self.log_tail()),
        };
        // Keep reading stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.ready = ready
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        self.child = Some(child);
        Ok(())
    }

    /// A `key=value` of the ready line, e.g. `ws`, `page`, `metrics`.
    pub fn ready(&self, key: &str) -> anyhow::Result<String> {
        self.ready
            .get(key)
            .cloned()
            .ok_or_else(|| anyhow!("no {key}= in the ready line of {:?}", self.args))
    }

    /// The whole log, every run of the process included.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<_> = text.lines().collect();
        let start = lines.len().saturating_sub(40);
        format!(
            "--- last lines of {} ---\n{}",
            self.log.display(),
            lines[start..].join("\n")
        )
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// True if the process was started and has exited by itself since (crashed or quit).
    pub fn has_exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| !matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL: no shutdown code runs.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.start_kill()?;
            child.wait().await?;
        }
        Ok(())
    }

    /// SIGTERM, then waits for the exit; returns the exit code.
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
        let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .context("no exit within 30 s of SIGTERM")??;
        Ok(status.code())
    }

    /// Kills it (if running) and starts it again with the same arguments.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await?;
        self.launch().await
    }
}
