//! `linker-bench`, the load generator: many authenticated WebSocket clients sending timed
//! messages through a linker server on loopback, counting what is lost or duplicated.
//!
//! A run goes ramp-up (connect at `--connect-rate`), warm-up, measured phase, drain, done;
//! only messages sent in the measured phase are counted. Every phase is bounded in time.
//!
//! Layout:
//! - [`options`]: the command line and its bounds (loopback only, fd and port budgets).
//! - [`workload`]: who sends to whom, and the timestamped content.
//! - [`conn`]: one connection's life.
//! - [`ledger`]: sequence numbers, receipts, latency histograms.
//! - [`errors`]: failures by kind.
//! - [`procfs`]: CPU and memory of a process, and the fd limit.
//! - [`report`]: the progress line and the summary.
//! - [`chart`]: SVG charts of results (`linker-bench-chart`).

pub mod chart;
pub mod conn;
pub mod errors;
pub mod ledger;
pub mod options;
pub mod procfs;
pub mod report;
pub mod workload;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use conn::Phase;
pub use options::Options;
pub use report::Summary;

use conn::Shared;
use errors::Errors;
use ledger::Ledger;
use report::{ClientStats, Progress, ServerStats};

/// Most time the ramp-up may take beyond what the connect rate needs.
const RAMP_SLACK: Duration = Duration::from_secs(5);
/// Longest wait for connection tasks to end once the run is done.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Runs one benchmark and returns its summary; prints progress to stderr unless `quiet`.
pub async fn run(options: Options) -> anyhow::Result<Summary> {
    let fd_limit = procfs::raise_fd_limit()?;
    let plan = options.plan(fd_limit)?;
    let o = plan.options.clone();
    let server_pid = o.server_pid;
    let server_before = server_pid.map(|p| procfs::sample(Some(p))).transpose()?;
    let (phase_tx, _) = watch::channel(Phase::Ramp);
    let shared = Arc::new(Shared {
        ledger: Ledger::new(o.connections),
        errors: Errors::default(),
        phase: phase_tx,
        clock: Instant::now(),
        padding: "x".repeat(o.size),
        open: Default::default(),
        settled: Default::default(),
        acks: Default::default(),
        plan,
    });
    let progress = (!o.quiet).then(|| tokio::spawn(report_progress(shared.clone())));

    // Ramp-up: `connect_rate` new connections per second, until every one has settled.
    let ramp_start = Instant::now();
    let mut tasks = JoinSet::new();
    for index in 0..o.connections {
        let due = ramp_start + Duration::from_secs_f64(index as f64 / o.connect_rate as f64);
        tokio::time::sleep_until(due.into()).await;
        tasks.spawn(conn::run(shared.clone(), index));
    }
    let ramp_limit = Duration::from_secs(o.connect_timeout_secs) + RAMP_SLACK;
    let settled = wait_until(ramp_limit, || {
        shared.settled.load(Ordering::Relaxed) >= o.connections
    })
    .await;
    if !settled {
        eprintln!("linker-bench: some connections still not settled; going on without them");
    }
    let ramp_secs = ramp_start.elapsed().as_secs_f64();
    let connected = shared.open.load(Ordering::Relaxed);
    let server_connected = server_pid.map(|p| procfs::sample(Some(p))).transpose()?;

    shared.phase.send_replace(Phase::Warmup);
    tokio::time::sleep(Duration::from_secs(o.warmup_secs)).await;

    shared.phase.send_replace(Phase::Measure);
    let server_start = server_pid.map(|p| procfs::sample(Some(p))).transpose()?;
    let client_start = procfs::sample(None)?;
    let machine_start = procfs::machine_load();
    let measure_start = Instant::now();
    tokio::time::sleep(Duration::from_secs(o.duration_secs)).await;
    shared.phase.send_replace(Phase::Drain);
    let duration_secs = measure_start.elapsed().as_secs_f64();
    let server_end = server_pid.map(|p| procfs::sample(Some(p))).transpose()?;
    let client_end = procfs::sample(None)?;
    let machine_end = procfs::machine_load();
    let open_at_end = shared.open.load(Ordering::Relaxed);

    wait_until(Duration::from_secs(o.drain_secs), || {
        shared.ledger.outstanding() == 0
    })
    .await;
    shared.phase.send_replace(Phase::Done);
    let closed = tokio::time::timeout(CLOSE_WAIT, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if closed.is_err() {
        tasks.abort_all();
    }
    if let Some(p) = progress {
        p.abort();
    }

    let totals = shared.ledger.totals();
    let server = match (
        server_pid,
        server_before,
        server_connected,
        server_start,
        server_end,
    ) {
        (Some(pid), Some(before), Some(connected_at), Some(start), Some(end)) => {
            Some(ServerStats {
                pid,
                cpu_percent: procfs::cpu_percent(&start, &end),
                rss_before_kib: before.rss_kib,
                rss_connected_kib: connected_at.rss_kib,
                rss_end_kib: end.rss_kib,
                rss_per_connection_kib: if connected > 0 {
                    (connected_at.rss_kib as f64 - before.rss_kib as f64) / connected as f64
                } else {
                    0.0
                },
                threads: end.threads,
            })
        }
        _ => None,
    };
    let summary = Summary {
        workload: o.workload,
        feature: o.feature,
        connections: o.connections,
        publishers: if o.workload == workload::Workload::Broadcast {
            o.publishers
        } else {
            0
        },
        subscribers: if o.workload == workload::Workload::Broadcast {
            o.subscribers
        } else {
            0
        },
        channel: o.workload == workload::Workload::Broadcast && o.channel,
        ack: o.ack,
        acks_sent: shared.acks.load(Ordering::Relaxed),
        connected,
        open_at_end,
        interval_ms: o.interval_ms,
        max_in_flight: o.max_in_flight,
        size: o.size,
        targets: o.targets.clone(),
        ramp_secs,
        warmup_secs: o.warmup_secs,
        duration_secs,
        sent: totals.measured_sent,
        received: totals.measured_received,
        lost: totals.lost(),
        duplicated: totals.duplicated,
        unknown: totals.unknown,
        skipped_sends: totals.skipped,
        sent_total: totals.sent,
        received_total: totals.received,
        offered_msgs_per_sec: if o.interval_ms == 0 || o.workload == workload::Workload::Broadcast {
            0.0
        } else {
            connected as f64 * 1000.0 / o.interval_ms as f64
        },
        achieved_msgs_per_sec: totals.measured_received as f64 / duration_secs.max(1e-9),
        latency: shared.ledger.measured_latency(),
        errors: shared.errors.counts(),
        server,
        client: Some(ClientStats {
            cpu_percent: procfs::cpu_percent(&client_start, &client_end),
            rss_end_kib: client_end.rss_kib,
        }),
        machine_start,
        machine_end,
    };
    if let Some(path) = &o.json {
        let json = serde_json::to_string_pretty(&summary).expect("the summary is plain data");
        std::fs::write(path, json + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(summary)
}

/// Polls `done` every 20 ms for at most `limit`; true if it came true.
async fn wait_until(limit: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Prints a progress line on stderr every second until aborted.
async fn report_progress(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut last_received = 0;
    let start = Instant::now();
    loop {
        tick.tick().await;
        let totals = shared.ledger.totals();
        let phase = match *shared.phase.borrow() {
            Phase::Ramp => "ramp",
            Phase::Warmup => "warmup",
            Phase::Measure => "measure",
            Phase::Drain => "drain",
            Phase::Done => "done",
        };
        let line = Progress {
            phase,
            elapsed_secs: start.elapsed().as_secs(),
            open: shared.open.load(Ordering::Relaxed),
            connections: shared.plan.options.connections,
            sent: totals.sent,
            received: totals.received,
            per_sec: totals.received - last_received,
            second: shared.ledger.take_second(),
            errors: shared.errors.total(),
        };
        last_received = totals.received;
        eprintln!("{line}");
    }
}
