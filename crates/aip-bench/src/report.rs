//! Measurements and reports: a shared [`Recorder`] (latency histogram in microseconds and
//! failure counts), the measurement [`Window`], the per-server [`RunResult`], the whole
//! [`Report`] and its human summary.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::procstat::{self, CpuMeter};
use crate::CommonArgs;

/// Highest latency the histograms hold (longer ones are clamped): 10 minutes.
const MAX_US: u64 = 600_000_000;

/// Latencies and failures of one phase, shared by the tasks of a scenario. The lock is held
/// only for the few instructions of a record, never across an await.
#[derive(Clone)]
pub struct Recorder(Arc<Mutex<Stats>>);

pub struct Stats {
    hist: Histogram<u64>,
    failures: BTreeMap<String, u64>,
}

impl Recorder {
    pub fn new() -> anyhow::Result<Self> {
        let hist = Histogram::new_with_bounds(1, MAX_US, 3)?;
        Ok(Self(Arc::new(Mutex::new(Stats {
            hist,
            failures: BTreeMap::new(),
        }))))
    }

    fn lock(&self) -> MutexGuard<'_, Stats> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// One successful operation that took `latency`.
    pub fn ok(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(MAX_US).max(1);
        self.lock().hist.saturating_record(us);
    }

    /// One failed operation, grouped by `kind`.
    pub fn fail(&self, kind: &str) {
        *self.lock().failures.entry(kind.to_owned()).or_insert(0) += 1;
    }

    pub fn ops(&self) -> u64 {
        self.lock().hist.len()
    }

    pub fn failures(&self) -> BTreeMap<String, u64> {
        self.lock().failures.clone()
    }

    pub fn failure_count(&self) -> u64 {
        self.lock().failures.values().sum()
    }

    pub fn latency(&self) -> Latency {
        let stats = self.lock();
        let h = &stats.hist;
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            max_us: h.max(),
            mean_us: (h.mean() * 10.0).round() / 10.0,
        }
    }
}

/// The measured period: operations completing inside it count.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub start: Instant,
    pub end: Instant,
}

impl Window {
    /// Starts after `warmup` from now and lasts `length`.
    pub fn after(warmup: Duration, length: Duration) -> Self {
        let start = Instant::now() + warmup;
        Self {
            start,
            end: start + length,
        }
    }

    pub fn contains(&self, t: Instant) -> bool {
        self.start <= t && t < self.end
    }

    pub fn seconds(&self) -> f64 {
        (self.end - self.start).as_secs_f64()
    }

    pub fn is_over(&self) -> bool {
        Instant::now() >= self.end
    }
}

/// CPU of the server and of the generator over the window.
pub struct Meters {
    server: Option<CpuMeter>,
    generator: Option<CpuMeter>,
}

impl Meters {
    /// Waits for the window to open, measures until it closes; returns (server,
    /// generator) CPU percent over it.
    pub async fn over(window: &Window, server_pid: Option<u32>) -> (Option<f64>, Option<f64>) {
        tokio::time::sleep_until(window.start.into()).await;
        let meters = Self {
            server: server_pid.and_then(|pid| CpuMeter::start(Some(pid))),
            generator: CpuMeter::start(None),
        };
        tokio::time::sleep_until(window.end.into()).await;
        (
            meters.server.and_then(|m| m.percent()),
            meters.generator.and_then(|m| m.percent()),
        )
    }
}

/// Latency percentiles in microseconds.
#[derive(Serialize, Debug, Default, Clone, Copy)]
pub struct Latency {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

/// Figures of an observed process (`--server-pid` / `--floor-pid`).
#[derive(Serialize, Debug, Default, Clone)]
pub struct ProcUsage {
    pub pid: u32,
    /// Percent of one core over the measured window.
    pub cpu_percent: Option<f64>,
    pub rss_before_kb: Option<u64>,
    pub rss_after_kb: Option<u64>,
    /// `churn` only: after a 2 s settle.
    pub rss_settled_kb: Option<u64>,
    /// `hold` only: (after - before) / connections.
    pub rss_per_conn_kb: Option<f64>,
}

impl ProcUsage {
    /// Reads the RSS "before" of `pid`, if one is observed.
    pub fn new(pid: Option<u32>) -> Option<Self> {
        pid.map(|pid| Self {
            pid,
            rss_before_kb: procstat::rss_kb(Some(pid)),
            ..Self::default()
        })
    }

    /// Reads the RSS "after".
    pub fn read_after(&mut self) {
        self.rss_after_kb = procstat::rss_kb(Some(self.pid));
    }
}

/// One scenario run against one server.
#[derive(Serialize, Debug, Clone)]
pub struct RunResult {
    /// `target` (`--url`) or `floor` (`--floor-url`).
    pub label: &'static str,
    pub url: String,
    /// What one operation is.
    pub unit: &'static str,
    /// Length of the measured window.
    pub seconds: f64,
    /// Operations completed inside the window.
    pub ops: u64,
    /// `ops / seconds`.
    pub throughput: f64,
    pub latency_us: Latency,
    pub failures: u64,
    pub failure_kinds: BTreeMap<String, u64>,
    /// Scenario-specific figures.
    pub details: Map<String, Value>,
    pub server: Option<ProcUsage>,
    /// Percent of one core used by this generator over the window.
    pub generator_cpu_percent: Option<f64>,
    pub generator_rss_kb: Option<u64>,
}

impl RunResult {
    pub fn new(
        label: &'static str,
        url: &str,
        unit: &'static str,
        window: &Window,
        rec: &Recorder,
    ) -> Self {
        let ops = rec.ops();
        let seconds = window.seconds();
        Self {
            label,
            url: url.to_owned(),
            unit,
            seconds,
            ops,
            throughput: if seconds > 0.0 {
                round2(ops as f64 / seconds)
            } else {
                0.0
            },
            latency_us: rec.latency(),
            failures: rec.failure_count(),
            failure_kinds: rec.failures(),
            details: Map::new(),
            server: None,
            generator_cpu_percent: None,
            generator_rss_kb: procstat::rss_kb(None),
        }
    }

    /// Adds failures counted elsewhere (e.g. during the connection ramp).
    pub fn add_failures(&mut self, kinds: &BTreeMap<String, u64>) {
        for (kind, n) in kinds {
            *self.failure_kinds.entry(kind.clone()).or_insert(0) += n;
            self.failures += n;
        }
    }

    pub fn cpu(&mut self, (server, generator): (Option<f64>, Option<f64>)) {
        if let Some(usage) = &mut self.server {
            usage.cpu_percent = server.map(round1);
        }
        self.generator_cpu_percent = generator.map(round1);
    }

    pub fn detail(&mut self, key: &str, value: impl Into<Value>) {
        self.details.insert(key.to_owned(), value.into());
    }
}

/// Target figures divided by floor figures (throughput < 1 and latency > 1 mean slower).
#[derive(Serialize, Debug, Clone)]
pub struct Ratio {
    pub throughput: Option<f64>,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub server_cpu: Option<f64>,
    pub rss_per_conn: Option<f64>,
}

impl Ratio {
    pub fn of(target: &RunResult, floor: &RunResult) -> Self {
        let div = |a: f64, b: f64| (b > 0.0).then(|| round2(a / b));
        let both = |f: fn(&ProcUsage) -> Option<f64>| {
            let a = target.server.as_ref().and_then(f)?;
            let b = floor.server.as_ref().and_then(f)?;
            div(a, b)
        };
        Self {
            throughput: div(target.throughput, floor.throughput),
            p50: div(
                target.latency_us.p50_us as f64,
                floor.latency_us.p50_us as f64,
            ),
            p99: div(
                target.latency_us.p99_us as f64,
                floor.latency_us.p99_us as f64,
            ),
            server_cpu: both(|u| u.cpu_percent),
            rss_per_conn: both(|u| u.rss_per_conn_kb),
        }
    }
}

/// What `aip bench` prints.
#[derive(Serialize, Debug, Clone)]
pub struct Report {
    pub scenario: &'static str,
    pub params: Value,
    pub common: CommonArgs,
    pub target: RunResult,
    pub floor: Option<RunResult>,
    pub ratio: Option<Ratio>,
    pub notes: Vec<String>,
}

impl Report {
    /// The human summary.
    pub fn human(&self) -> String {
        let mut out = String::new();
        let params = match &self.params {
            Value::Object(m) => m
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" "),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "aip bench {} ({params}; warmup {} s, timeout {} s)",
            self.scenario, self.common.warmup, self.common.timeout
        );
        if let Some(floor) = &self.floor {
            run_block(&mut out, floor);
        }
        run_block(&mut out, &self.target);
        if let Some(r) = &self.ratio {
            let f = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v}"));
            let _ = writeln!(
                out,
                "ratio target/floor: throughput {}, p50 {}, p99 {}, server CPU {}, RSS/conn {}",
                f(r.throughput),
                f(r.p50),
                f(r.p99),
                f(r.server_cpu),
                f(r.rss_per_conn)
            );
        }
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        out
    }
}

fn run_block(out: &mut String, r: &RunResult) {
    let l = &r.latency_us;
    let _ = writeln!(out, "{} {}", r.label, r.url);
    let _ = writeln!(
        out,
        "  throughput  {} {} ({} in {:.1} s)",
        r.throughput, r.unit, r.ops, r.seconds
    );
    let _ = writeln!(
        out,
        "  latency     p50 {} us, p90 {} us, p99 {} us, max {} us (mean {} us)",
        l.p50_us, l.p90_us, l.p99_us, l.max_us, l.mean_us
    );
    let _ = write!(out, "  failures    {}", r.failures);
    if !r.failure_kinds.is_empty() {
        let kinds: Vec<String> = r
            .failure_kinds
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect();
        let _ = write!(out, " ({})", kinds.join(", "));
    }
    out.push('\n');
    for (k, v) in &r.details {
        let _ = writeln!(out, "  {k}: {v}");
    }
    if let Some(s) = &r.server {
        let kb = |v: Option<u64>| v.map_or("-".to_owned(), |v| format!("{v} KB"));
        let _ = write!(
            out,
            "  server      pid {}: CPU {}%, RSS before {}, after {}",
            s.pid,
            s.cpu_percent.map_or("-".to_owned(), |c| c.to_string()),
            kb(s.rss_before_kb),
            kb(s.rss_after_kb)
        );
        if s.rss_settled_kb.is_some() {
            let _ = write!(out, ", after 2 s settle {}", kb(s.rss_settled_kb));
        }
        if let Some(per) = s.rss_per_conn_kb {
            let _ = write!(out, ", {per} KB per connection");
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "  generator   CPU {}%, RSS {}",
        r.generator_cpu_percent
            .map_or("-".to_owned(), |c| c.to_string()),
        r.generator_rss_kb
            .map_or("-".to_owned(), |v| format!("{v} KB"))
    );
}

pub fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

pub fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}
