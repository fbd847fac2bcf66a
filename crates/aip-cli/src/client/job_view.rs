//! How a fleet job is shown: the live display while it runs ([`Live`]: on a terminal an
//! overall bar with counts and one line per running device; otherwise one plain line
//! per device as it ends) and the summary table once it has ended ([`summary`]).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::Value;

use super::render::{human_duration, table};

/// Most device lines drawn at once; the overall line counts the rest.
const MAX_LINES: usize = 20;

/// The states a member ends in, in the order counts are shown.
const ENDED: [&str; 4] = ["completed", "failed", "cancelled", "skipped"];

/// The live display on stderr.
pub struct Live {
    mode: Mode,
    /// Plain mode: the state each member was last shown in.
    seen: HashMap<String, String>,
}

enum Mode {
    /// `--json`: nothing but the final document.
    Quiet,
    /// Not a terminal (or one indicatif cannot draw on): a line per ended device.
    Plain,
    Terminal {
        multi: MultiProgress,
        overall: ProgressBar,
        devices: HashMap<String, ProgressBar>,
    },
}

impl Live {
    /// A display on stderr; `show` false: none (`--json`).
    pub fn new(show: bool) -> Live {
        let mode = if !show {
            Mode::Quiet
        } else if !std::io::stderr().is_terminal() {
            Mode::Plain
        } else {
            let multi = MultiProgress::new();
            // A terminal indicatif will not draw on (`TERM` unset or `dumb`): plain lines.
            if multi.is_hidden() {
                Mode::Plain
            } else {
                let overall = multi.add(ProgressBar::new(0));
                let style = ProgressStyle::with_template("{bar:30} {pos}/{len} {wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar());
                overall.set_style(style);
                Mode::Terminal {
                    multi,
                    overall,
                    devices: HashMap::new(),
                }
            }
        };
        Live {
            mode,
            seen: HashMap::new(),
        }
    }

    /// Shows the job as it is now.
    pub fn show(&mut self, job: &Value) {
        let members = job["members"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        let total = job["total"].as_u64().unwrap_or(0);
        let ended: u64 = ENDED
            .iter()
            .map(|s| job["counts"][s].as_u64().unwrap_or(0))
            .sum();
        match &mut self.mode {
            Mode::Quiet => {}
            Mode::Plain => {
                for m in members {
                    let id = m["client_id"].as_str().unwrap_or("?");
                    let state = m["state"].as_str().unwrap_or("?");
                    let ended_now = ENDED.contains(&state);
                    if ended_now && self.seen.get(id).map(String::as_str) != Some(state) {
                        self.seen.insert(id.to_owned(), state.to_owned());
                        eprintln!("[{}/{total}] {}", self.seen.len(), member_line(m));
                    }
                }
            }
            Mode::Terminal {
                multi,
                overall,
                devices,
            } => {
                overall.set_length(total);
                overall.set_position(ended);
                let running: Vec<&Value> =
                    members.iter().filter(|m| m["state"] == "running").collect();
                let more = running.len().saturating_sub(MAX_LINES);
                let mut msg = counts_line(job);
                if more > 0 {
                    let _ = write!(msg, " · {more} more running");
                }
                overall.set_message(msg);
                let shown: Vec<&str> = running
                    .iter()
                    .take(MAX_LINES)
                    .filter_map(|m| m["client_id"].as_str())
                    .collect();
                devices.retain(|id, bar| {
                    let keep = shown.contains(&id.as_str());
                    if !keep {
                        bar.finish_and_clear();
                        multi.remove(bar);
                    }
                    keep
                });
                for id in shown {
                    devices.entry(id.to_owned()).or_insert_with(|| {
                        let bar = multi.add(ProgressBar::new_spinner());
                        let style = ProgressStyle::with_template("  {spinner} {prefix} {elapsed}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner());
                        bar.set_style(style);
                        bar.set_prefix(format!("{id:<24} running"));
                        bar.enable_steady_tick(Duration::from_millis(120));
                        bar
                    });
                }
            }
        }
    }

    /// A passing problem (the server unreachable for a moment).
    pub fn note(&self, what: &str) {
        match &self.mode {
            Mode::Terminal { overall, .. } => overall.set_message(what.to_owned()),
            Mode::Plain => eprintln!("aip: {what}"),
            Mode::Quiet => {}
        }
    }

    /// Clears the live lines.
    pub fn finish(&mut self) {
        if let Mode::Terminal {
            multi,
            overall,
            devices,
        } = &mut self.mode
        {
            for (_, bar) in devices.drain() {
                bar.finish_and_clear();
            }
            overall.finish_and_clear();
            let _ = multi.clear();
        }
    }
}

/// `3 completed, 1 failed, 2 running, 4 pending` (zeros left out).
fn counts_line(job: &Value) -> String {
    let order = [
        "completed",
        "failed",
        "cancelled",
        "skipped",
        "running",
        "pending",
    ];
    let parts: Vec<String> = order
        .iter()
        .filter_map(|s| {
            let n = job["counts"][s].as_u64().unwrap_or(0);
            (n > 0).then(|| format!("{n} {s}"))
        })
        .collect();
    parts.join(", ")
}

/// `web-1 completed (exit 0, 1.2 s): up 3 days`.
fn member_line(m: &Value) -> String {
    let mut line = format!("{} {}", m["client_id"].as_str().unwrap_or("?"), state_of(m));
    let mut details = Vec::new();
    if let Some(code) = m["exit_code"].as_i64() {
        details.push(format!("exit {code}"));
    }
    if let Some(d) = took(m) {
        details.push(human_duration(d));
    }
    if !details.is_empty() {
        let _ = write!(line, " ({})", details.join(", "));
    }
    if let Some(out) = m["output"].as_str() {
        let _ = write!(line, ": {out}");
    }
    line
}

/// `failed`, or `skipped (device_offline)`: the state, with a reason the state does not say.
fn state_of(m: &Value) -> String {
    let state = m["state"].as_str().unwrap_or("?");
    match m["reason"].as_str() {
        Some(r) if r != state => format!("{state} ({r})"),
        _ => state.to_owned(),
    }
}

/// From a member's start to its end.
fn took(m: &Value) -> Option<Duration> {
    let from = humantime::parse_rfc3339(m["started_at"].as_str()?).ok()?;
    let to = humantime::parse_rfc3339(m["finished_at"].as_str()?).ok()?;
    to.duration_since(from).ok()
}

/// The table printed once a job has ended: one row per device, then a line for the job.
pub fn summary(job: &Value) -> String {
    let header = ["DEVICE", "STATE", "EXIT", "TOOK", "OUTPUT"];
    let members = job["members"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let rows: Vec<[String; 5]> = members
        .iter()
        .map(|m| {
            [
                m["client_id"].as_str().unwrap_or("?").to_owned(),
                state_of(m),
                m["exit_code"]
                    .as_i64()
                    .map_or_else(|| "-".to_owned(), |c| c.to_string()),
                took(m).map_or_else(|| "-".to_owned(), human_duration),
                m["output"].as_str().unwrap_or("").to_owned(),
            ]
        })
        .collect();
    let mut text = if rows.is_empty() {
        String::new()
    } else {
        table(header, &rows)
    };
    let state = job["state"].as_str().unwrap_or("?");
    let reason = job["reason"]
        .as_str()
        .filter(|r| *r != state)
        .map(|r| format!(" ({r})"))
        .unwrap_or_default();
    let _ = writeln!(
        text,
        "job {}: {state}{reason}: {} of {}",
        job["job_id"].as_str().unwrap_or("?"),
        counts_line(job),
        job["total"],
    );
    text
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_summary_is_a_table_of_devices_and_a_line_for_the_job() {
        let job = json!({"job_id": "j-1", "state": "failed", "reason": "max_failures", "total": 3,
            "counts": {"pending": 0, "running": 0, "completed": 1, "failed": 1, "cancelled": 0,
                       "skipped": 1},
            "members": [
                {"client_id": "web-1", "state": "completed", "reason": null, "exit_code": 0,
                 "output": "up 3 days", "started_at": "2025-01-01T10:00:00.000000Z",
                 "finished_at": "2025-01-01T10:00:01.200000Z"},
                {"client_id": "web-2", "state": "failed", "reason": null, "exit_code": 2,
                 "output": "Command 'execute_command' failed: exited with code 2",
                 "started_at": null, "finished_at": null},
                {"client_id": "web-3", "state": "skipped", "reason": "max_failures",
                 "exit_code": null, "output": "Not started: max_failures was reached",
                 "started_at": null, "finished_at": null}]});
        assert_eq!(
            summary(&job),
            "DEVICE  STATE                   EXIT  TOOK   OUTPUT\n\
             web-1   completed               0     1.2 s  up 3 days\n\
             web-2   failed                  2     -      Command 'execute_command' failed: exited with code 2\n\
             web-3   skipped (max_failures)  -     -      Not started: max_failures was reached\n\
             job j-1: failed (max_failures): 1 completed, 1 failed, 1 skipped of 3\n"
        );
        assert_eq!(
            member_line(&job["members"][0]),
            "web-1 completed (exit 0, 1.2 s): up 3 days"
        );
    }
}
