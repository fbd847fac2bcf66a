//! The text the client commands print: a session's outcome (state, error, every action's
//! command, exit code, duration, stdout and stderr, or the agent's transcript — run on the
//! server or on the device) and the session table. Output that is cut says so and how to
//! see it whole; nothing here does I/O, so it is tested in-process.

use std::fmt::Write;
use std::time::{Duration, SystemTime};

use serde_json::Value;

/// Lines of one output stream shown before it is cut (without `--full`).
const MAX_LINES: usize = 20;
/// Characters of one output stream, a model text or a JSON value shown before it is cut.
const MAX_CHARS: usize = 2000;

/// Renders one session view (`task_result` / `sessions/{id}` answer) as text.
pub fn session(r: &Value, full: bool) -> String {
    let mut out = Renderer {
        text: String::new(),
        full,
        cut: false,
    };
    out.session(r);
    out.text
}

struct Renderer {
    text: String,
    full: bool,
    /// Something was cut: the closing hint says how to see it whole.
    cut: bool,
}

impl Renderer {
    fn line(&mut self, s: impl AsRef<str>) {
        self.text.push_str(s.as_ref());
        self.text.push('\n');
    }

    fn session(&mut self, r: &Value) {
        let sid = str_of(&r["session_id"]);
        self.line(format!(
            "session {sid}  task {}  device {}",
            str_of(&r["task_name"]),
            str_of(&r["client_id"])
        ));
        let mut state = format!("state: {}", str_of(&r["state"]));
        if let Some(reason) = r["reason"].as_str() {
            let _ = write!(state, " ({reason})");
        }
        if let Some(took) = elapsed(&r["created_at"], &r["finished_at"]) {
            let _ = write!(state, " after {}", human_duration(took));
        }
        self.line(state);
        if let Some(e) = r["error"].as_str() {
            self.line(format!("error: {e}"));
        }
        if r["status"] == "pending" {
            self.line(format!(
                "(not ended yet: `aip result {sid} --wait` follows it, `aip cancel {sid}` stops it)"
            ));
        }
        let result = &r["result"];
        // A device that ran the task with its own model reports `{answer, transcript}` as
        // `result.result`; the server's agent puts them at the top.
        let inner = &result["result"];
        if inner["transcript"].is_array() {
            self.transcript(inner);
        } else if result["transcript"].is_array() {
            self.transcript(result);
        } else {
            self.rounds(result);
            if let Some(v) = inner.as_str() {
                let v = self.cut_text(v);
                self.line(format!("\nresult: {v}"));
            } else if !inner.is_null() {
                let v = self.cut_text(&inner.to_string());
                self.line(format!("\nresult: {v}"));
            }
        }
        if self.cut {
            self.line(format!(
                "\n(output was cut: `aip result {sid} --full` shows all of it, `--json` the raw answer)"
            ));
        }
    }

    fn rounds(&mut self, result: &Value) {
        for (i, round) in result["rounds"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            self.line(format!("\nround {}", i + 1));
            for (j, res) in round["action_results"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                self.action(res, &format!("{}.", j + 1), "  ");
            }
        }
    }

    fn transcript(&mut self, run: &Value) {
        let (mut prompt, mut completion) = (0, 0);
        for step in run["transcript"].as_array().into_iter().flatten() {
            self.line(format!("\nstep {}", step["step"]));
            if let Some(t) = step["text"].as_str().filter(|t| !t.trim().is_empty()) {
                let t = self.cut_text(t.trim());
                self.line(format!("  model: {t}"));
            }
            let results = step["results"].as_array().cloned().unwrap_or_default();
            for (i, call) in step["tool_calls"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                let args = self.cut_text(&call["arguments"].to_string());
                self.line(format!("  → {} {args}", str_of(&call["name"])));
                if let Some(res) = results.get(i) {
                    self.action(res, "", "    ");
                }
            }
            prompt += step["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
            completion += step["usage"]["completion_tokens"].as_u64().unwrap_or(0);
        }
        self.line(format!(
            "\ntokens: {prompt} prompt + {completion} completion"
        ));
        if let Some(a) = run["answer"].as_str() {
            self.line(format!("\nanswer: {a}"));
        }
    }

    /// One action result: status, error, exit code, duration, then command and output.
    fn action(&mut self, res: &Value, label: &str, indent: &str) {
        let out = &res["result"];
        let mut head = format!("{indent}{label}{}{}", sep(label), str_of(&res["status"]));
        if let Some(e) = res["error"].as_str() {
            let _ = write!(head, ": {e}");
        }
        if let Some(code) = out["exit_code"].as_i64() {
            let _ = write!(head, "  (exit {code}");
            if let Some(ms) = out["duration_ms"].as_u64() {
                let _ = write!(head, ", {}", human_duration(Duration::from_millis(ms)));
            }
            head.push(')');
        } else if let Some(ms) = out["duration_ms"].as_u64() {
            let _ = write!(head, "  ({})", human_duration(Duration::from_millis(ms)));
        }
        self.line(head);
        let body = format!("{indent}   ");
        if let Some(cmd) = out["command"].as_str() {
            self.line(format!("{body}$ {cmd}"));
        }
        let is_command = out.get("stdout").is_some() || out.get("stderr").is_some();
        if is_command {
            for stream in ["stdout", "stderr"] {
                let text = out[stream].as_str().unwrap_or("");
                let device_cut = out[format!("{stream}_truncated")] == Value::Bool(true);
                self.stream(stream, text, device_cut, &body);
            }
        } else if let Some(s) = out.as_str() {
            let s = self.cut_text(s);
            self.line(format!("{body}{s}"));
        } else if !out.is_null() {
            let s = self.cut_text(&out.to_string());
            self.line(format!("{body}{s}"));
        }
    }

    /// One output stream, each line prefixed with its name; cut after [`MAX_LINES`].
    fn stream(&mut self, name: &str, text: &str, device_cut: bool, indent: &str) {
        if text.is_empty() {
            return;
        }
        let lines: Vec<&str> = text.trim_end_matches('\n').lines().collect();
        let (mut shown, mut chars) = (0, 0);
        for line in &lines {
            if !self.full && (shown == MAX_LINES || chars + line.len() > MAX_CHARS) {
                break;
            }
            chars += line.len();
            shown += 1;
            self.line(format!("{indent}{name} | {line}"));
        }
        if shown < lines.len() {
            self.cut = true;
            self.line(format!(
                "{indent}{name} … {} more lines not shown",
                lines.len() - shown
            ));
        }
        if device_cut {
            self.line(format!(
                "{indent}{name} … the device kept only the start of it (its --output-cap)"
            ));
        }
    }

    /// `s`, or its first [`MAX_CHARS`] characters and a marker (noted for the hint).
    fn cut_text(&mut self, s: &str) -> String {
        if self.full || s.chars().count() <= MAX_CHARS {
            return s.to_owned();
        }
        self.cut = true;
        let kept: String = s.chars().take(MAX_CHARS).collect();
        format!(
            "{kept}… [{} more characters]",
            s.chars().count() - MAX_CHARS
        )
    }
}

fn sep(label: &str) -> &'static str {
    if label.is_empty() {
        ""
    } else {
        " "
    }
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

/// Time between two RFC 3339 timestamps, when both are there.
fn elapsed(from: &Value, to: &Value) -> Option<Duration> {
    let from = humantime::parse_rfc3339(from.as_str()?).ok()?;
    let to = humantime::parse_rfc3339(to.as_str()?).ok()?;
    to.duration_since(from).ok()
}

/// `7 ms`, `1.2 s`, `2m 03s`, `3h 05m`, `2d 04h`.
pub fn human_duration(d: Duration) -> String {
    let ms = d.as_millis();
    let s = d.as_secs();
    match s {
        _ if ms < 1000 => format!("{ms} ms"),
        0..=59 => format!("{:.1} s", d.as_secs_f64()),
        60..=3599 => format!("{}m {:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// `just now`, `12s ago`, `5m ago`, `3h ago`, `2d ago`.
pub fn ago(t: SystemTime, now: SystemTime) -> String {
    let s = now.duration_since(t).unwrap_or_default().as_secs();
    match s {
        0..=1 => "just now".into(),
        2..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86_399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

/// The `aip sessions` table: newest first, as the server lists them.
pub fn sessions_table(sessions: &[Value], now: SystemTime) -> String {
    let header = ["SESSION", "TASK", "DEVICE", "STATE", "CREATED", "TOOK"];
    let rows: Vec<[String; 6]> = sessions
        .iter()
        .map(|s| {
            let mut state = str_of(&s["state"]).to_owned();
            if let Some(reason) = s["reason"].as_str().filter(|r| *r != "cancelled") {
                let _ = write!(state, " ({reason})");
            }
            let created = s["created_at"]
                .as_str()
                .and_then(|c| humantime::parse_rfc3339(c).ok());
            let took = match elapsed(&s["created_at"], &s["finished_at"]) {
                Some(d) => human_duration(d),
                None => match created {
                    Some(c) => format!(
                        "{}…",
                        human_duration(now.duration_since(c).unwrap_or_default())
                    ),
                    None => "-".into(),
                },
            };
            [
                str_of(&s["session_id"]).to_owned(),
                str_of(&s["task_name"]).to_owned(),
                str_of(&s["client_id"]).to_owned(),
                state,
                created.map(|c| ago(c, now)).unwrap_or_else(|| "-".into()),
                took,
            ]
        })
        .collect();
    table(header, &rows)
}

/// `header` and `rows` as left-aligned columns two spaces apart (the last column not
/// padded), one line each.
pub fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    let mut push_row = |cells: [&str; N]| {
        let mut line = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ");
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    };
    push_row(header);
    for row in rows {
        push_row(row.each_ref().map(String::as_str));
    }
    text
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn command_result(stdout: &str, stderr: &str, exit: i64) -> Value {
        json!({"status": if exit == 0 {"success"} else {"failure"},
               "error": if exit == 0 {Value::Null} else {json!(format!("Command exited with code {exit}"))},
               "result": {"command": "make test", "success": exit == 0, "exit_code": exit,
                          "stdout": stdout, "stderr": stderr, "duration_ms": 1500,
                          "stdout_truncated": false, "stderr_truncated": false, "timed_out": false}})
    }

    fn view(result: Value) -> Value {
        json!({"status": "done", "state": "failed", "reason": null, "error": "Step 1 failed",
               "session_id": "s-1", "task_name": "t", "client_id": "dev",
               "created_at": "2026-11-30T10:00:00Z", "finished_at": "2026-11-30T10:00:02.5Z",
               "result": result})
    }

    #[test]
    fn a_failed_command_shows_its_command_exit_code_duration_and_stderr() {
        let r =
            view(json!({"rounds": [{"action_results": [command_result("ok\n", "boom\n", 2)]}]}));
        let text = session(&r, false);
        for want in [
            "state: failed after 2.5 s",
            "error: Step 1 failed",
            "1. failure: Command exited with code 2  (exit 2, 1.5 s)",
            "$ make test",
            "stdout | ok",
            "stderr | boom",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        assert!(!text.contains("cut"), "{text}");
    }

    #[test]
    fn long_output_is_cut_with_a_count_and_a_way_to_see_it_whole() {
        let long: String = (1..=50).map(|i| format!("line {i}\n")).collect();
        let r = view(json!({"rounds": [{"action_results": [command_result(&long, "", 0)]}]}));
        let text = session(&r, false);
        assert!(text.contains("stdout | line 20\n"), "{text}");
        assert!(!text.contains("line 21\n"), "{text}");
        assert!(text.contains("stdout … 30 more lines not shown"), "{text}");
        assert!(
            text.contains("`aip result s-1 --full` shows all of it"),
            "{text}"
        );
        let whole = session(&r, true);
        assert!(whole.contains("stdout | line 50\n"), "{whole}");
        assert!(!whole.contains("not shown"), "{whole}");
    }

    #[test]
    fn a_transcript_run_on_the_device_reads_like_one_run_on_the_server() {
        let run = json!({"answer": "22% full", "transcript": [
            {"step": 1, "text": null, "usage": {"prompt_tokens": 100, "completion_tokens": 20},
             "tool_calls": [{"name": "execute_command", "arguments": {"command": "df -h /"}}],
             "results": [command_result("/dev/vda 22%\n", "", 0)]},
            {"step": 2, "text": "done", "usage": {"prompt_tokens": 100, "completion_tokens": 20},
             "tool_calls": [{"name": "finish", "arguments": {"status": "completed", "answer": "22% full"}}]}]});
        let on_device = session(&view(json!({"rounds": [], "result": run.clone()})), false);
        let on_server = session(&view(run), false);
        assert_eq!(on_device, on_server);
        for want in [
            "step 1",
            "→ execute_command {\"command\":\"df -h /\"}",
            "stdout | /dev/vda 22%",
            "tokens: 200 prompt + 40 completion",
            "answer: 22% full",
        ] {
            assert!(
                on_device.contains(want),
                "missing {want:?} in:\n{on_device}"
            );
        }
        assert!(!on_device.contains("{\"answer\""), "raw JSON:\n{on_device}");
    }

    #[test]
    fn durations_and_ages_are_short_and_human() {
        let rows = [
            (7, "7 ms"),
            (1_200, "1.2 s"),
            (123_000, "2m 03s"),
            (11_100_000, "3h 05m"),
            (180_000_000, "2d 02h"),
        ];
        for (ms, want) in rows {
            assert_eq!(human_duration(Duration::from_millis(ms)), want);
        }
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let rows = [
            (0, "just now"),
            (12, "12s ago"),
            (300, "5m ago"),
            (10_800, "3h ago"),
            (172_800, "2d ago"),
        ];
        for (back, want) in rows {
            assert_eq!(ago(now - Duration::from_secs(back), now), want);
        }
    }
}
