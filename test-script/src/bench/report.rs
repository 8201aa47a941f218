//! What a run reports: the progress line each second, and the summary at the end (as text
//! on stdout and, on request, as JSON).
//!
//! Memory per connection is (server RSS once every connection is authenticated, before any
//! message) minus (RSS before the first connection), over the connections open.

use std::fmt;

use serde::Serialize;

use super::errors::ErrorCounts;
use super::ledger::Percentiles;
use super::options::Feature;
use super::procfs::MachineLoad;
use super::workload::Workload;

/// The server's CPU and memory, from /proc.
#[derive(Debug, Clone, Serialize)]
pub struct ServerStats {
    pub pid: i32,
    /// CPU% over the measured phase (100 = one core).
    pub cpu_percent: f64,
    pub rss_before_kib: u64,
    /// Once every connection is authenticated, before any message is sent.
    pub rss_connected_kib: u64,
    /// At the end of the measured phase.
    pub rss_end_kib: u64,
    pub rss_per_connection_kib: f64,
    pub threads: u64,
}

/// This load generator's own CPU and memory: it shares the machine with the server.
#[derive(Debug, Clone, Serialize)]
pub struct ClientStats {
    /// CPU% over the measured phase (100 = one core).
    pub cpu_percent: f64,
    pub rss_end_kib: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub workload: Workload,
    pub feature: Feature,
    pub connections: usize,
    /// `broadcast`: publishers and subscribers (0 in other workloads).
    pub publishers: usize,
    pub subscribers: usize,
    /// `broadcast --channel`: one CHANNEL_MESSAGE per publisher instead of a GROUP_MESSAGE.
    pub channel: bool,
    /// `--ack`: the connections logged in acking and acknowledged numbered frames.
    pub ack: bool,
    /// `ACK` frames sent over the whole run.
    pub acks_sent: u64,
    /// Connections authenticated by the end of the ramp-up.
    pub connected: usize,
    /// Connections still open at the end of the measured phase.
    pub open_at_end: usize,
    pub interval_ms: u64,
    /// `--max-in-flight` (0 = no limit).
    pub max_in_flight: u64,
    pub size: usize,
    pub targets: Vec<String>,
    pub ramp_secs: f64,
    pub warmup_secs: u64,
    pub duration_secs: f64,
    /// Messages sent in the measured phase.
    pub sent: u64,
    /// Of those, how many arrived.
    pub received: u64,
    /// Sent in the measured phase and not received by the end of the drain.
    pub lost: u64,
    /// Second and later receipts of one message (any phase).
    pub duplicated: u64,
    /// MESSAGE frames this run did not send.
    pub unknown: u64,
    /// Measured-phase sends skipped because `max_in_flight` messages were on their way.
    pub skipped_sends: u64,
    /// Messages sent and received over the whole run (warm-up and drain included).
    pub sent_total: u64,
    pub received_total: u64,
    /// What the connections would send at the interval: connections x 1000 / interval_ms.
    pub offered_msgs_per_sec: f64,
    /// Measured messages received, per second of the measured phase.
    pub achieved_msgs_per_sec: f64,
    /// Round trips of measured messages, send to receipt.
    pub latency: Percentiles,
    pub errors: ErrorCounts,
    pub server: Option<ServerStats>,
    pub client: Option<ClientStats>,
    /// The machine's load at the start and the end of the measured phase.
    pub machine_start: MachineLoad,
    pub machine_end: MachineLoad,
}

/// One progress line's numbers.
pub struct Progress<'a> {
    pub phase: &'a str,
    pub elapsed_secs: u64,
    pub open: usize,
    pub connections: usize,
    pub sent: u64,
    pub received: u64,
    pub per_sec: u64,
    pub second: Percentiles,
    pub errors: u64,
}

impl fmt::Display for Progress<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{:>7} {:>4}s] connected {}/{} sent {} received {} msg/s {} p50 {:.2} ms p99 {:.2} ms errors {}",
            self.phase,
            self.elapsed_secs,
            self.open,
            self.connections,
            self.sent,
            self.received,
            self.per_sec,
            self.second.p50_ms,
            self.second.p99_ms,
            self.errors,
        )
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.latency;
        writeln!(
            f,
            "linker-bench {} {} x{} every {} ms, {} chars, to {}",
            self.workload.name(),
            self.feature.wire_name(),
            self.connections,
            self.interval_ms,
            self.size,
            self.targets.join(",")
        )?;
        if self.publishers > 0 {
            writeln!(
                f,
                "  broadcast    {} publishers x {} subscribers: one {} each, {} copies",
                self.publishers,
                self.subscribers,
                if self.channel {
                    "CHANNEL_MESSAGE to one channel"
                } else {
                    "GROUP_MESSAGE"
                },
                self.publishers * self.subscribers
            )?;
        }
        if self.ack {
            writeln!(
                f,
                "  ack          acking sockets: {} ACK frames sent",
                self.acks_sent
            )?;
        }
        writeln!(
            f,
            "  connections  {} authenticated (ramp {:.1} s), {} open at the end",
            self.connected, self.ramp_secs, self.open_at_end
        )?;
        writeln!(
            f,
            "  measured     {:.1} s: sent {} received {} lost {} duplicated {} unknown {}",
            self.duration_secs, self.sent, self.received, self.lost, self.duplicated, self.unknown
        )?;
        writeln!(
            f,
            "  rate         {:.0} msg/s achieved of {:.0} offered (whole run: sent {} received {})",
            self.achieved_msgs_per_sec,
            self.offered_msgs_per_sec,
            self.sent_total,
            self.received_total
        )?;
        if self.max_in_flight > 0 {
            writeln!(
                f,
                "  in flight    at most {} per connection; {} measured-phase sends skipped",
                self.max_in_flight, self.skipped_sends
            )?;
        }
        writeln!(
            f,
            "  latency ms   p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} max {:.3} mean {:.3} (n={})",
            l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms, l.mean_ms, l.count
        )?;
        let e = &self.errors;
        writeln!(
            f,
            "  errors       {} (connect {} handshake {} auth {} socket {} INVALID_MESSAGE {} GENERAL_ERROR {} unexpected {})",
            e.total(),
            e.connect,
            e.handshake,
            e.auth,
            e.socket,
            e.invalid_message,
            e.general_error,
            e.unexpected_frames
        )?;
        for detail in &e.first {
            writeln!(f, "    {detail}")?;
        }
        if let Some(s) = &self.server {
            writeln!(
                f,
                "  server       pid {} CPU {:.0}% threads {} RSS {} -> {} (connected) -> {} KiB (end); {:.2} KiB per connection",
                s.pid,
                s.cpu_percent,
                s.threads,
                s.rss_before_kib,
                s.rss_connected_kib,
                s.rss_end_kib,
                s.rss_per_connection_kib
            )?;
        }
        if let Some(c) = &self.client {
            writeln!(
                f,
                "  client       CPU {:.0}% RSS {} KiB",
                c.cpu_percent, c.rss_end_kib
            )?;
        }
        let pressure = |m: &MachineLoad| {
            m.cpu_pressure_10s
                .map_or("n/a".to_owned(), |p| format!("{p:.0}%"))
        };
        writeln!(
            f,
            "  machine      load {:.2} -> {:.2}, CPU pressure {} -> {} (share of time a task waited for a CPU)",
            self.machine_start.loadavg_1m,
            self.machine_end.loadavg_1m,
            pressure(&self.machine_start),
            pressure(&self.machine_end)
        )?;
        Ok(())
    }
}
