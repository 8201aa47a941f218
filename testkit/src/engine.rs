//! A test engine of `scripts/services.sh` stopped on purpose, for tests of an engine going
//! down under load.
//!
//! [`StoppedEngine::stop`] stops one engine and returns a guard; [`StoppedEngine::start`], or
//! dropping the guard when a test fails, starts it again and waits (bounded) until
//! `services.sh status` says it is up, so no test leaves an engine down for the others that
//! share it. Stops are taken one at a time across processes through a lock file next to the
//! engines' state, so two such tests never take engines down under each other. The calls
//! block: run them in `spawn_blocking` while the test's clients keep going.

use std::fs::File;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The address of a test engine from its `LINKER_TEST_*` variable (`LINKER_TEST_REDIS_URL`,
/// say); panics saying how to start the engines when it is not set.
pub fn test_url(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!(
            "{var} is not set: run `scripts/services.sh start` and \
             `eval \"$(scripts/services.sh env)\"` first"
        )
    })
}

/// Longest wait for an engine to be reported up after `start` (Kafka may need a while).
const UP_WITHIN: Duration = Duration::from_secs(120);

pub struct StoppedEngine {
    engine: &'static str,
    /// Held until the engine is started again.
    lock: Option<File>,
}

impl StoppedEngine {
    /// Stops `engine` (`nats`, `redis`, `kafka` or `mongo`) once no other test holds an engine
    /// down.
    pub fn stop(engine: &'static str) -> anyhow::Result<StoppedEngine> {
        let lock = take_lock()?;
        services("stop", engine)?;
        Ok(StoppedEngine {
            engine,
            lock: Some(lock),
        })
    }

    /// Starts the engine again and waits until it is up.
    pub fn start(mut self) -> anyhow::Result<()> {
        self.bring_back()
    }

    fn bring_back(&mut self) -> anyhow::Result<()> {
        let Some(lock) = self.lock.take() else {
            return Ok(());
        };
        let started = Instant::now();
        let result = loop {
            let up = services("start", self.engine).and_then(|()| services("status", self.engine));
            match up {
                Ok(()) => break Ok(()),
                Err(e) if started.elapsed() > UP_WITHIN => break Err(e),
                Err(_) => std::thread::sleep(Duration::from_secs(1)),
            }
        };
        drop(lock);
        result.with_context(|| format!("{} not up within {UP_WITHIN:?}", self.engine))
    }
}

impl Drop for StoppedEngine {
    fn drop(&mut self) {
        if let Err(e) = self.bring_back() {
            eprintln!("the test engine could not be started again: {e:#}");
        }
    }
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/services.sh")
}

fn services(action: &str, engine: &str) -> anyhow::Result<()> {
    let status = Command::new("bash")
        .arg(script())
        .args([action, engine])
        .status()
        .context("run scripts/services.sh")?;
    if !status.success() {
        bail!("scripts/services.sh {action} {engine} failed ({status})");
    }
    Ok(())
}

/// An exclusive lock on `<services dir>/engine-stop.lock`, waited for.
fn take_lock() -> anyhow::Result<File> {
    let dir =
        std::env::var("LINKER_SERVICES_DIR").unwrap_or_else(|_| "/tmp/linker-services".into());
    std::fs::create_dir_all(&dir)?;
    let path = PathBuf::from(dir).join("engine-stop.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))?;
    file.lock()
        .with_context(|| format!("lock {}", path.display()))?;
    Ok(file)
}
