//! The load generator's command line, and the checks that bound what it may do.
//!
//! Every count and time has a ceiling, and every address (targets and source addresses) must be
//! on the loopback network: this tool must never load another machine. `Options::plan` turns
//! the flags into a [`Plan`] that says, for each connection, where it connects from and to.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::{Context, bail, ensure};
use clap::{Parser, ValueEnum};
use tokio_tungstenite::tungstenite::http::Uri;

use super::workload::Workload;

/// Ephemeral ports per (source address, target address) pair on this machine
/// (`ip_local_port_range` 32768-60999), less a margin for other programs.
pub const PORTS_PER_PAIR: usize = 28_000;
/// Longest phase (warm-up, measured, drain) the tool accepts, in seconds.
pub const MAX_PHASE_SECS: u64 = 3_600;
/// Largest message content: the server refuses frames over 64 KiB by default.
pub const MAX_SIZE: usize = 60_000;
/// Most subscribers of one broadcast: one GROUP_MESSAGE names them all, and the frame must
/// stay under the server's frame limit.
pub const MAX_GROUP: usize = 4_000;
/// Most subscribers of one channel broadcast (members of one channel).
pub const MAX_CHANNEL_MEMBERS: usize = 20_000;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "linker-bench",
    about = "Load generator for linker: many WebSocket clients on loopback, timed round trips",
    version
)]
pub struct Options {
    /// Who each connection sends to: itself (`self-echo`), its partner (`pairs`), every
    /// subscriber (`broadcast`), or nobody (`connections`: idle, for memory per connection).
    #[arg(long, value_enum, default_value_t = Workload::SelfEcho)]
    pub workload: Workload,
    /// Connections to open, each authenticated as its own user. In `broadcast` it is set to
    /// `--publishers` + `--subscribers`.
    #[arg(long, default_value_t = 100)]
    pub connections: usize,
    /// `broadcast`: connections that each send one GROUP_MESSAGE to every subscriber.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// `broadcast`: connections that receive every publisher's message (the explicit `to`
    /// list of each GROUP_MESSAGE; the server's `max_group_size` bounds it, 1000 by default).
    #[arg(long, default_value_t = 10)]
    pub subscribers: usize,
    /// `broadcast`: the subscribers join one channel (`SUBSCRIBE`) before the run, and each
    /// publisher posts one CHANNEL_MESSAGE to it instead of a GROUP_MESSAGE naming them all.
    /// The app's channels must be open to its users (`channels: {policy: open}`).
    #[arg(long)]
    pub channel: bool,
    /// Milliseconds between two messages of one connection; 0 = idle (connect, authenticate,
    /// send nothing: for measuring memory per connection).
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// Characters of content per message (at least the ~20-character header of sequence
    /// number and timestamp).
    #[arg(long, default_value_t = 1000)]
    pub size: usize,
    /// Most messages of one connection on their way at once: a tick that finds this many
    /// skips its send (counted). 0 = no limit, a fixed-rate open loop; 1 = send at the
    /// interval or on receipt of the previous message, whichever is later.
    #[arg(long, default_value_t = 0)]
    pub max_in_flight: u64,
    /// Log in with `"ack": true` (acknowledged delivery, protocol.md section 10): RELIABLE
    /// frames arrive numbered, and each connection acknowledges them with `ACK {upTo}`,
    /// batched every `--ack-every-ms`.
    #[arg(long)]
    pub ack: bool,
    /// `--ack`: at most one `ACK` per connection this often, covering every numbered frame
    /// received since the last.
    #[arg(long, default_value_t = 50)]
    pub ack_every_ms: u64,
    /// The messages' `feature`.
    #[arg(long, value_enum, ignore_case = true, default_value_t = Feature::Fast)]
    pub feature: Feature,
    /// WebSocket URLs to spread connections over, round-robin (loopback only).
    #[arg(long, value_delimiter = ',', default_value = "ws://127.0.0.1:8088/ws")]
    pub targets: Vec<String>,
    /// Loopback addresses to bind client sockets to, round-robin, to get past the ephemeral
    /// ports of one address pair (e.g. 127.0.0.1,127.0.0.2). Default: the kernel picks.
    #[arg(long, value_delimiter = ',')]
    pub source_ips: Vec<IpAddr>,
    /// New connections per second during the ramp-up.
    #[arg(long, default_value_t = 500)]
    pub connect_rate: u32,
    /// Seconds of sending before the measured phase.
    #[arg(long, default_value_t = 5)]
    pub warmup_secs: u64,
    /// Seconds of the measured phase: messages sent in it are the ones counted.
    #[arg(long, default_value_t = 15)]
    pub duration_secs: u64,
    /// Longest wait after the measured phase for messages still on their way.
    #[arg(long, default_value_t = 5)]
    pub drain_secs: u64,
    /// Longest wait for one connection's TCP connect, handshake and authentication.
    #[arg(long, default_value_t = 15)]
    pub connect_timeout_secs: u64,
    /// The client app's appId sent in AUTH_CLIENT.
    #[arg(long, default_value = "app-id-343")]
    pub app_id: String,
    /// User ids are `<prefix>-<base + connection index>`.
    #[arg(long, default_value = "ANZ")]
    pub user_prefix: String,
    #[arg(long, default_value_t = 1_000_000)]
    pub user_base: u64,
    /// The server's process id: its CPU and memory are read from /proc at start and end.
    #[arg(long)]
    pub server_pid: Option<i32>,
    /// Also write the summary as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// No progress line each second.
    #[arg(long)]
    pub quiet: bool,
}

/// The `feature` of every message sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
pub enum Feature {
    #[value(name = "FAST")]
    #[serde(rename = "FAST")]
    Fast,
    #[value(name = "RELIABLE")]
    #[serde(rename = "RELIABLE")]
    Reliable,
}

impl Feature {
    pub fn wire_name(self) -> &'static str {
        match self {
            Feature::Fast => "FAST",
            Feature::Reliable => "RELIABLE",
        }
    }
}

/// One target connector: where to connect and the URL for the handshake.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub url: String,
}

/// Checked options, and where each connection goes.
#[derive(Debug, Clone)]
pub struct Plan {
    pub options: Options,
    pub targets: Vec<Target>,
}

impl Plan {
    pub fn target(&self, index: usize) -> &Target {
        &self.targets[index % self.targets.len()]
    }

    pub fn source(&self, index: usize) -> Option<IpAddr> {
        let s = &self.options.source_ips;
        (!s.is_empty()).then(|| s[index % s.len()])
    }

    pub fn user(&self, index: usize) -> String {
        format!(
            "{}-{}",
            self.options.user_prefix,
            self.options.user_base + index as u64
        )
    }
}

impl Plan {
    /// The channel of a `--channel` broadcast: one per run, in the users' app.
    pub fn channel(&self) -> String {
        format!(
            "{}/bench-{}-{}",
            self.options.user_prefix,
            std::process::id(),
            self.options.user_base
        )
    }
}

impl Options {
    /// Checks every bound and address; `fd_limit` is the process's open-file limit.
    pub fn plan(mut self, fd_limit: u64) -> anyhow::Result<Plan> {
        match self.workload {
            Workload::Broadcast => {
                ensure!(
                    self.publishers >= 1 && self.subscribers >= 1,
                    "--workload broadcast needs --publishers and --subscribers of at least 1"
                );
                ensure!(
                    self.subscribers <= MAX_GROUP,
                    "--subscribers must be at most {MAX_GROUP}"
                );
                ensure!(
                    !self.channel || self.subscribers <= MAX_CHANNEL_MEMBERS,
                    "--subscribers with --channel must be at most {MAX_CHANNEL_MEMBERS}"
                );
                self.connections = self.publishers + self.subscribers;
            }
            Workload::Connections => self.interval_ms = 0,
            Workload::SelfEcho | Workload::Pairs => {}
        }
        let o = &self;
        ensure!(o.connections >= 1, "--connections must be at least 1");
        // Each connection is one descriptor; keep some for the runtime and files.
        let budget = fd_limit.saturating_sub(64) as usize;
        ensure!(
            o.connections <= budget,
            "--connections {} is over this process's open-file limit ({fd_limit}, less 64 spare); \
             run several linker-bench processes",
            o.connections
        );
        if o.workload == Workload::Pairs {
            ensure!(
                o.connections.is_multiple_of(2),
                "--workload pairs needs an even --connections"
            );
        }
        ensure!(
            o.interval_ms <= 60_000,
            "--interval-ms must be at most 60000"
        );
        ensure!(
            (1..=MAX_SIZE).contains(&o.size),
            "--size must be 1..={MAX_SIZE}"
        );
        ensure!(
            (1..=10_000).contains(&o.ack_every_ms),
            "--ack-every-ms must be 1..=10000"
        );
        ensure!(
            (1..=20_000).contains(&o.connect_rate),
            "--connect-rate must be 1..=20000"
        );
        for (name, secs) in [
            ("--warmup-secs", o.warmup_secs),
            ("--duration-secs", o.duration_secs),
            ("--drain-secs", o.drain_secs),
        ] {
            ensure!(
                secs <= MAX_PHASE_SECS,
                "{name} must be at most {MAX_PHASE_SECS}"
            );
        }
        ensure!(
            (1..=120).contains(&o.connect_timeout_secs),
            "--connect-timeout-secs must be 1..=120"
        );
        ensure!(
            !o.user_prefix.is_empty() && !o.user_prefix.contains(['"', '\\', '-']),
            "--user-prefix must be a plain app name"
        );
        ensure!(
            !o.app_id.contains(['"', '\\']),
            "--app-id must not contain quotes or backslashes"
        );
        ensure!(!o.targets.is_empty(), "--targets names no URL");
        let targets = o
            .targets
            .iter()
            .map(|t| parse_target(t))
            .collect::<anyhow::Result<Vec<_>>>()?;
        for ip in &o.source_ips {
            ensure!(
                ip.is_loopback(),
                "--source-ips: {ip} is not a loopback address; this tool only loads this machine"
            );
        }
        let plan = Plan {
            options: self,
            targets,
        };
        plan.check_ports()?;
        Ok(plan)
    }
}

impl Plan {
    /// Refuses a plan that needs more ephemeral ports than one address pair has.
    fn check_ports(&self) -> anyhow::Result<()> {
        let mut per_pair: HashMap<(Option<IpAddr>, SocketAddr), usize> = HashMap::new();
        for i in 0..self.options.connections {
            let pair = (self.source(i), self.target(i).addr);
            if let Some(t) = self.source(i)
                && t.is_ipv4() != pair.1.is_ipv4()
            {
                bail!(
                    "--source-ips {t} and target {} are of different address families",
                    pair.1
                );
            }
            *per_pair.entry(pair).or_default() += 1;
        }
        if let Some(((source, target), n)) = per_pair.into_iter().find(|(_, n)| *n > PORTS_PER_PAIR)
        {
            let source = source.map_or("the default source".into(), |s| s.to_string());
            bail!(
                "{n} connections from {source} to {target} need more than the {PORTS_PER_PAIR} \
                 ephemeral ports of one address pair; add --source-ips 127.0.0.2,127.0.0.3,..."
            );
        }
        Ok(())
    }
}

/// Parses `ws://<loopback host>:<port>/<path>`; anything not on loopback is refused.
pub fn parse_target(url: &str) -> anyhow::Result<Target> {
    let uri: Uri = url
        .parse()
        .with_context(|| format!("--targets: `{url}` is not a URL"))?;
    ensure!(
        uri.scheme_str() == Some("ws"),
        "--targets: `{url}` must start with ws:// (plain WebSocket on loopback)"
    );
    let host = uri.host().context("--targets: the URL has no host")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse().with_context(|| {
            format!("--targets: `{host}` must be a loopback IP address or localhost")
        })?
    };
    ensure!(
        ip.is_loopback(),
        "--targets: {ip} is not a loopback address; this tool only loads this machine"
    );
    let port = uri.port_u16().unwrap_or(80);
    Ok(Target {
        addr: SocketAddr::new(ip, port),
        url: url.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(args: &[&str]) -> Options {
        let mut all = vec!["linker-bench"];
        all.extend_from_slice(args);
        Options::try_parse_from(all).expect("valid flags")
    }

    #[test]
    fn only_loopback_targets_are_accepted() {
        assert!(parse_target("ws://127.0.0.1:8088/ws").is_ok());
        assert!(parse_target("ws://127.0.0.7:1/ws").is_ok());
        assert!(parse_target("ws://localhost:8088/ws").is_ok());
        assert!(parse_target("ws://[::1]:8088/ws").is_ok());
        for bad in [
            "ws://10.0.0.1:8088/ws",
            "ws://192.168.1.2:8088/ws",
            "ws://8.8.8.8:80/ws",
            "ws://example.com:8088/ws",
            "wss://127.0.0.1:8088/ws",
            "http://127.0.0.1:8088/ws",
        ] {
            assert!(parse_target(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn non_loopback_source_addresses_are_refused() {
        let o = options(&["--source-ips", "127.0.0.1,10.1.2.3"]);
        assert!(o.plan(20_000).is_err());
    }

    #[test]
    fn connections_over_the_fd_limit_are_refused() {
        assert!(options(&["--connections", "19000"]).plan(20_000).is_ok());
        assert!(options(&["--connections", "19990"]).plan(20_000).is_err());
    }

    #[test]
    fn one_address_pair_cannot_take_more_than_its_ports() {
        let o = options(&["--connections", "30000"]);
        assert!(o.clone().plan(1_000_000).is_err());
        let spread = options(&[
            "--connections",
            "30000",
            "--source-ips",
            "127.0.0.1,127.0.0.2",
        ]);
        assert!(spread.plan(1_000_000).is_ok());
    }

    #[test]
    fn connections_alternate_over_targets_and_sources() {
        let plan = options(&[
            "--targets",
            "ws://127.0.0.1:1/ws,ws://127.0.0.1:2/ws",
            "--source-ips",
            "127.0.0.2,127.0.0.3,127.0.0.4",
            "--user-base",
            "500",
        ])
        .plan(20_000)
        .expect("valid plan");
        assert_eq!(plan.target(3).addr.port(), 2);
        assert_eq!(plan.source(4), Some("127.0.0.3".parse().expect("ip")));
        assert_eq!(plan.user(7), "ANZ-507");
    }

    #[test]
    fn broadcast_opens_publishers_and_subscribers_and_connections_is_idle() {
        let plan = options(&[
            "--workload",
            "broadcast",
            "--publishers",
            "5",
            "--subscribers",
            "100",
        ])
        .plan(20_000)
        .expect("valid plan");
        assert_eq!(plan.options.connections, 105);
        let idle = options(&["--workload", "connections", "--interval-ms", "10"]);
        assert_eq!(
            idle.plan(20_000).expect("valid plan").options.interval_ms,
            0
        );
    }

    #[test]
    fn pairs_need_an_even_count_and_feature_ignores_case() {
        assert!(
            options(&["--workload", "pairs", "--connections", "3"])
                .plan(20_000)
                .is_err()
        );
        assert_eq!(
            options(&["--feature", "reliable"]).feature,
            Feature::Reliable
        );
        assert_eq!(options(&["--feature", "FAST"]).feature, Feature::Fast);
    }
}
