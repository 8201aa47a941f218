//! Test support: a client that speaks the linker protocol, deployments to run it against,
//! and the protocol scenarios written once for every deployment.
//!
//! Layout:
//! - [`client`]: a WebSocket test client with bounded waits and a `sync` barrier.
//! - [`contracts`]: what every Bus, Store and Presence backend must do, run per engine.
//! - [`deployment`]: the `Deployment` trait and `Embedded` (one `linker domain` process).
//! - [`engine`]: a test engine stopped on purpose, started again however the test ends.
//! - [`network`]: several domains (one `linker domain` each) and a meta-server.
//! - [`plain_client`]: a plain text client for the URL form of channels.
//! - [`process`]: one `linker` child process, killable and restartable.
//! - [`scenarios`]: protocol scenarios, each a function over a `Deployment`.
//! - [`split`]: connectors and processors as separate processes on the real engines.

pub mod client;
pub mod contracts;
pub mod deployment;
pub mod engine;
pub mod network;
pub mod plain_client;
pub mod process;
pub mod scenarios;
pub mod split;

pub use client::Client;
pub use deployment::{Deployment, Embedded, EmbeddedOptions};
pub use engine::StoppedEngine;
pub use split::{Split, SplitOptions};

/// A user id of app ANZ that no other test uses (numbers below the master's are avoided).
pub fn unique_user() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id() as u64 % 1000;
    format!("ANZ-{}", 200_000 + pid * 1000 + n)
}

/// `GET http://<addr><path>` over a plain socket: (status, body). Enough for /metrics.
pub async fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The value of a Prometheus counter line `name{labels} value` in `/metrics` text, summed over
/// lines whose labels contain every `label` given.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|lab| l.contains(lab)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
