//! What a job was asked to do: the body of `POST /api/jobs`, validated ([`JobSpec`]),
//! and the rollout settings (`batch`, `max_failures`, `timeout`).

use std::time::Duration;

use aip_protocol::errors::http as detail;
use aip_protocol::errors::{field_too_long, http::invalid_commands};
use aip_protocol::plan::parse_commands;
use aip_protocol::validate::{is_valid_http_task_name, MAX_REQUEST_LEN};
use aip_protocol::Command;
use serde_json::{json, Value};

use super::selector::Selector;

/// How many members run at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    /// Every member at once (the default).
    All,
    /// At most this many (at least 1).
    Count(u32),
    /// This percentage (1–100) of the members, rounded up.
    Percent(u32),
}

impl Batch {
    /// Reads a number (≥ 1) or a string `"N"` / `"N%"` (1–100).
    pub fn parse(v: &Value) -> Option<Batch> {
        match v {
            Value::Null => Some(Batch::All),
            Value::Number(n) => n
                .as_u64()
                .filter(|n| *n >= 1)
                .map(|n| Batch::Count(u32::try_from(n).unwrap_or(u32::MAX))),
            Value::String(s) => match s.trim().strip_suffix('%') {
                Some(p) => p
                    .trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|p| (1..=100).contains(p))
                    .map(Batch::Percent),
                None => s
                    .trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|n| *n >= 1)
                    .map(Batch::Count),
            },
            _ => None,
        }
    }

    /// How many of `total` members run at once (at least 1).
    pub fn size(self, total: usize) -> usize {
        let n = match self {
            Batch::All => total,
            Batch::Count(c) => usize::try_from(c).unwrap_or(usize::MAX),
            Batch::Percent(p) => (total * p as usize).div_ceil(100),
        };
        n.max(1)
    }

    /// As shown back: `null`, a number, or `"N%"`.
    pub fn to_json(self) -> Value {
        match self {
            Batch::All => Value::Null,
            Batch::Count(c) => json!(c),
            Batch::Percent(p) => json!(format!("{p}%")),
        }
    }
}

/// A validated `POST /api/jobs` body.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub selector: Selector,
    /// The request every member's session gets (for a plan: its command lines).
    pub request: String,
    pub commands: Option<Vec<Command>>,
    /// Every member session's task name; default: the job id.
    pub task_name: Option<String>,
    pub batch: Batch,
    /// Stop starting members once this many failed.
    pub max_failures: Option<u32>,
    /// A member's session still running after this long is cancelled (reason `timeout`).
    pub timeout: Option<Duration>,
}

/// Longest job `timeout`: a week.
const MAX_TIMEOUT_SECS: f64 = 7.0 * 86_400.0;

impl JobSpec {
    /// Validates a body; the error is the answer's `detail` (400).
    pub fn from_body(body: &Value) -> Result<JobSpec, String> {
        let Value::Object(b) = body else {
            return Err(detail::BODY_NOT_OBJECT.into());
        };
        let selector = match b.get("selector") {
            None | Some(Value::Null) => return Err(detail::SELECTOR_REQUIRED.into()),
            Some(v) => Selector::from_json(v).map_err(|e| detail::invalid_selector(&e))?,
        };
        if selector.is_empty() {
            return Err(detail::SELECTOR_REQUIRED.into());
        }
        let commands = match b.get("commands") {
            None | Some(Value::Null) => None,
            Some(v) => Some(parse_commands(v).map_err(|e| invalid_commands(&e))?),
        };
        let request = match (b.get("request"), &commands) {
            (Some(Value::String(r)), _) if r.len() > MAX_REQUEST_LEN => {
                return Err(field_too_long("request", MAX_REQUEST_LEN))
            }
            (Some(Value::String(r)), _) if !r.trim().is_empty() => r.clone(),
            (None | Some(Value::Null), Some(c)) => describe(c),
            _ => return Err(detail::EMPTY_TASK.into()),
        };
        let task_name = match b.get("task_name") {
            None | Some(Value::Null) => None,
            Some(Value::String(n)) if is_valid_http_task_name(n) => Some(n.clone()),
            _ => return Err(detail::INVALID_TASK_NAME.into()),
        };
        let batch = Batch::parse(b.get("batch").unwrap_or(&Value::Null))
            .ok_or_else(|| detail::INVALID_BATCH.to_owned())?;
        let max_failures = match b.get("max_failures") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .filter(|n| *n >= 1)
                    .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
                    .ok_or_else(|| detail::INVALID_MAX_FAILURES.to_owned())?,
            ),
        };
        let timeout = match b.get("timeout") {
            None | Some(Value::Null) => None,
            Some(v) => Some(timeout_of(v).ok_or_else(|| detail::INVALID_TIMEOUT.to_owned())?),
        };
        Ok(JobSpec {
            selector,
            request,
            commands,
            task_name,
            batch,
            max_failures,
            timeout,
        })
    }

    /// As stored and shown back.
    pub fn to_json(&self) -> Value {
        json!({
            "selector": self.selector.to_json(),
            "request": self.request,
            "commands": self.commands.as_ref().map(|c| serde_json::to_value(c).unwrap_or(Value::Null)),
            "task_name": self.task_name,
            "batch": self.batch.to_json(),
            "max_failures": self.max_failures,
            "timeout": self.timeout.map(|t| t.as_secs_f64()),
        })
    }
}

/// A plan's request text: its commands, one per line (`execute_command`'s own command
/// line, else the tool's name).
fn describe(commands: &[Command]) -> String {
    commands
        .iter()
        .map(|c| {
            c.parameters
                .as_ref()
                .and_then(|p| p.get("command"))
                .and_then(Value::as_str)
                .map_or_else(|| c.tool_name.clone(), str::to_owned)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Seconds (a positive number) or a string `"90"`, `"90s"`, `"15m"`, `"2h"`, `"500ms"`.
fn timeout_of(v: &Value) -> Option<Duration> {
    let secs = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => {
            let s = s.trim();
            let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
                Some(i) => s.split_at(i),
                None => (s, "s"),
            };
            let n: f64 = num.trim().parse().ok()?;
            n * match unit {
                "ms" => 0.001,
                "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                _ => return None,
            }
        }
        _ => return None,
    };
    (secs.is_finite() && secs > 0.0 && secs <= MAX_TIMEOUT_SECS)
        .then(|| Duration::from_secs_f64(secs))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn batch_is_a_count_or_a_percentage_rounded_up() {
        for (v, total, size) in [
            (json!(null), 7, 7),
            (json!(2), 7, 2),
            (json!("3"), 7, 3),
            (json!("25%"), 7, 2),
            (json!("100%"), 7, 7),
            (json!("1%"), 7, 1),
        ] {
            assert_eq!(Batch::parse(&v).unwrap().size(total), size, "{v}");
        }
        for bad in [
            json!(0),
            json!("0%"),
            json!("101%"),
            json!(-1),
            json!("x"),
            json!(1.5),
        ] {
            assert!(Batch::parse(&bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn a_body_is_validated_field_by_field() {
        let ok = json!({"selector": {"tags": {"role": "web"}},
            "commands": [{"tool_name": "execute_command", "tool_type": "action",
                          "parameters": {"command": "uptime"}}],
            "batch": "50%", "max_failures": 2, "timeout": "90s"});
        let spec = JobSpec::from_body(&ok).unwrap();
        assert_eq!(spec.request, "uptime");
        assert_eq!(spec.timeout, Some(Duration::from_secs(90)));
        for (body, text) in [
            (
                json!({"request": "x"}),
                detail::SELECTOR_REQUIRED.to_owned(),
            ),
            (
                json!({"selector": {}, "request": "x"}),
                detail::SELECTOR_REQUIRED.to_owned(),
            ),
            (
                json!({"selector": {"platform": "linux"}}),
                detail::EMPTY_TASK.to_owned(),
            ),
            (
                json!({"selector": {"platform": "linux"}, "request": "x", "batch": 0}),
                detail::INVALID_BATCH.to_owned(),
            ),
            (
                json!({"selector": {"platform": "linux"}, "request": "x", "max_failures": 0}),
                detail::INVALID_MAX_FAILURES.to_owned(),
            ),
            (
                json!({"selector": {"platform": "linux"}, "request": "x", "timeout": "soon"}),
                detail::INVALID_TIMEOUT.to_owned(),
            ),
            (
                json!({"selector": {"platform": "linux"}, "request": "x", "task_name": ".x"}),
                detail::INVALID_TASK_NAME.to_owned(),
            ),
        ] {
            assert_eq!(JobSpec::from_body(&body).unwrap_err(), text, "{body}");
        }
    }
}
