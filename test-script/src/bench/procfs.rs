//! What /proc says about a process (CPU time, resident memory), and this process's fd limit.
//!
//! CPU% is CPU time over wall time between two samples, where 100% is one core fully busy
//! (so 200% is the whole of a 2-core machine). Linux only, like the rest of the tool.

use std::time::Instant;

use anyhow::{Context, bail};

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Instant,
    /// User plus system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    pub rss_kib: u64,
    pub threads: u64,
}

/// Reads /proc/<pid>/stat and /proc/<pid>/status (`pid` None: this process).
pub fn sample(pid: Option<i32>) -> anyhow::Result<Sample> {
    let dir = match pid {
        Some(p) => format!("/proc/{p}"),
        None => "/proc/self".to_owned(),
    };
    let at = Instant::now();
    let stat = std::fs::read_to_string(format!("{dir}/stat"))
        .with_context(|| format!("cannot read {dir}/stat"))?;
    let status = std::fs::read_to_string(format!("{dir}/status"))
        .with_context(|| format!("cannot read {dir}/status"))?;
    Ok(Sample {
        at,
        cpu_ticks: cpu_ticks(&stat)?,
        rss_kib: status_kib(&status, "VmRSS:").unwrap_or(0),
        threads: status_kib(&status, "Threads:").unwrap_or(0),
    })
}

/// utime + stime from a /proc/<pid>/stat line (fields 14 and 15; the command name in
/// parentheses may hold spaces, so counting starts after its closing parenthesis).
fn cpu_ticks(stat: &str) -> anyhow::Result<u64> {
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("no `)` in /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so field n is fields[n - 3].
    let (Some(utime), Some(stime)) = (fields.get(11), fields.get(12)) else {
        bail!("short /proc stat line");
    };
    Ok(utime.parse::<u64>()? + stime.parse::<u64>()?)
}

/// The number after `key` in /proc/<pid>/status (kB for memory lines).
fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// CPU% between two samples of one process (100 = one core).
pub fn cpu_percent(from: &Sample, to: &Sample) -> f64 {
    let ticks_per_sec = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)
        .unwrap_or(100) as f64;
    let wall = to.at.duration_since(from.at).as_secs_f64();
    if wall <= 0.0 {
        return 0.0;
    }
    let cpu = to.cpu_ticks.saturating_sub(from.cpu_ticks) as f64 / ticks_per_sec;
    100.0 * cpu / wall
}

/// How busy the whole machine is: other programs share its cores with the server and this
/// tool, and skew what a run measures.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct MachineLoad {
    /// 1-minute load average.
    pub loadavg_1m: f64,
    /// Share of the last 10 s in which some runnable task waited for a CPU (%), if the
    /// kernel reports pressure.
    pub cpu_pressure_10s: Option<f64>,
}

/// Reads /proc/loadavg and /proc/pressure/cpu; zeros where they cannot be read.
pub fn machine_load() -> MachineLoad {
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let pressure = std::fs::read_to_string("/proc/pressure/cpu").unwrap_or_default();
    MachineLoad {
        loadavg_1m: loadavg
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0),
        cpu_pressure_10s: some_avg10(&pressure),
    }
}

/// `avg10` of the `some` line of a /proc/pressure file.
fn some_avg10(pressure: &str) -> Option<f64> {
    pressure
        .lines()
        .find(|l| l.starts_with("some "))?
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("avg10="))?
        .parse()
        .ok()
}

/// Raises this process's open-file soft limit to its hard limit; returns the new soft limit.
pub fn raise_fd_limit() -> anyhow::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit(NOFILE)")?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("setrlimit(NOFILE)")?;
    }
    Ok(hard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_skip_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (my (odd) prog) S 1 4242 4242 0 -1 4194560 1500 0 0 0 \
                    250 50 0 0 20 0 9 0 12345 1000000 2500 18446744073709551615";
        assert_eq!(cpu_ticks(stat).expect("parses"), 300);
        assert!(cpu_ticks("1 (x) S 1").is_err());
    }

    #[test]
    fn status_lines_are_read_by_key() {
        let status = "Name:\tlinker\nVmHWM:\t  90000 kB\nVmRSS:\t   81234 kB\nThreads:\t3\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(81_234));
        assert_eq!(status_kib(status, "Threads:"), Some(3));
        assert_eq!(status_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn cpu_pressure_is_read_from_the_some_line() {
        let p = "some avg10=93.88 avg60=93.62 avg300=88.43 total=1714802190\n\
                 full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(some_avg10(p), Some(93.88));
        assert_eq!(some_avg10(""), None);
    }

    #[test]
    fn this_process_can_be_sampled() {
        let a = sample(None).expect("own /proc entry");
        assert!(a.rss_kib > 0 && a.threads >= 1);
        let b = sample(None).expect("own /proc entry");
        assert!(cpu_percent(&a, &b) >= 0.0);
    }
}
