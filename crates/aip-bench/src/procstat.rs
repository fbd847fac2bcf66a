//! Process figures from `/proc` (Linux): resident memory from `/proc/PID/status`, CPU time
//! from `/proc/PID/stat`; and raising this process's open-file limit. Elsewhere every
//! figure is simply absent.

use std::time::Instant;

/// A process to observe: `None` is the generator itself.
fn proc_dir(pid: Option<u32>) -> String {
    match pid {
        Some(pid) => format!("/proc/{pid}"),
        None => "/proc/self".to_owned(),
    }
}

/// Resident set size in KiB (`VmRSS`).
pub fn rss_kb(pid: Option<u32>) -> Option<u64> {
    let status = std::fs::read_to_string(format!("{}/status", proc_dir(pid))).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// User + system CPU time in clock ticks (fields 14 and 15 of `stat`).
fn cpu_ticks(pid: Option<u32>) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("{}/stat", proc_dir(pid))).ok()?;
    // The command name (field 2) may contain spaces: count fields after its closing ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11); // field 3 is the first after ')'
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(unix)]
fn ticks_per_second() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(n)) if n > 0 => n as f64,
        _ => 100.0,
    }
}

#[cfg(not(unix))]
fn ticks_per_second() -> f64 {
    100.0
}

/// CPU use of one process between [`CpuMeter::start`] and [`CpuMeter::percent`].
pub struct CpuMeter {
    pid: Option<u32>,
    ticks: u64,
    at: Instant,
}

impl CpuMeter {
    /// `None` when the process cannot be read.
    pub fn start(pid: Option<u32>) -> Option<Self> {
        Some(Self {
            pid,
            ticks: cpu_ticks(pid)?,
            at: Instant::now(),
        })
    }

    /// Percent of one core used since the start (200 = two cores busy).
    pub fn percent(&self) -> Option<f64> {
        let ticks = cpu_ticks(self.pid)?;
        let wall = self.at.elapsed().as_secs_f64();
        (wall > 0.0)
            .then(|| ticks.saturating_sub(self.ticks) as f64 / ticks_per_second() / wall * 100.0)
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the (soft, hard) now in force.
/// An `RLIMIT_NOFILE` value.
#[cfg(unix)]
pub type Limit = nix::sys::resource::rlim_t;
#[cfg(not(unix))]
pub type Limit = u64;

#[cfg(unix)]
pub fn raise_nofile_limit() -> Option<(Limit, Limit)> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return Some((hard, hard));
    }
    Some((soft, hard))
}

#[cfg(not(unix))]
pub fn raise_nofile_limit() -> Option<(Limit, Limit)> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_os = "linux")]
    fn reads_own_figures() {
        assert!(rss_kb(None).expect("own RSS") > 0);
        let meter = CpuMeter::start(None).expect("own CPU");
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(meter.percent().expect("percent") >= 0.0);
        assert!(rss_kb(Some(std::process::id())).is_some());
    }
}
