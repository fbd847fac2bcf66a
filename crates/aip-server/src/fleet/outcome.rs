//! What a job keeps of a member's ended session: its state, reason, the last command's
//! exit code and one short line of output (or of the error).

use serde_json::Value;

use crate::storage::{JobReason, MemberState, SessionRecord, SessionState};

/// Longest output line kept per member, in characters.
const MAX_LINE: usize = 200;

/// A member's end, read from its session's final record.
pub(crate) struct Outcome {
    pub(crate) state: MemberState,
    pub(crate) reason: Option<JobReason>,
    pub(crate) exit_code: Option<i64>,
    pub(crate) output: Option<String>,
}

impl Outcome {
    /// A member whose session's final record could not be read.
    pub(crate) fn missing() -> Outcome {
        Outcome {
            state: MemberState::Failed,
            reason: None,
            exit_code: None,
            output: Some(aip_protocol::errors::http::STORAGE_UNAVAILABLE.to_owned()),
        }
    }

    /// The outcome of the ended session `r`.
    pub(crate) fn of(r: &SessionRecord) -> Outcome {
        let state = match r.state {
            SessionState::Completed => MemberState::Completed,
            SessionState::Cancelled => MemberState::Cancelled,
            _ => MemberState::Failed,
        };
        let last = r.result.as_deref().and_then(last_command_result);
        let exit_code = last
            .and_then(|v| v.get("exit_code"))
            .and_then(Value::as_i64);
        let stream = |k: &str| {
            last.and_then(|v| v.get(k))
                .and_then(Value::as_str)
                .and_then(first_line)
        };
        let delegated = r
            .result
            .as_deref()
            .and_then(|v| v.get("result"))
            .and_then(Value::as_str)
            .and_then(first_line);
        let error = r.error.as_deref().and_then(first_line);
        // What a person scanning the table wants: the output of a success, the command's
        // own complaint (stderr) for a failure, then the session's error.
        let output = match state {
            MemberState::Completed => stream("stdout")
                .or_else(|| stream("stderr"))
                .or(delegated)
                .or(error),
            _ => stream("stderr")
                .or(error)
                .or_else(|| stream("stdout"))
                .or(delegated),
        };
        Outcome {
            state,
            reason: r.reason.map(JobReason::Session),
            exit_code,
            output,
        }
    }
}

/// The `result` object of the last action result of the last round, if it is one.
fn last_command_result(result: &Value) -> Option<&Value> {
    let rounds = result.get("rounds")?.as_array()?;
    rounds
        .iter()
        .rev()
        .filter_map(|r| r.get("action_results")?.as_array()?.last())
        .find_map(|a| a.get("result").filter(|v| v.is_object()))
}

/// The first non-blank line of `text`, cut to [`MAX_LINE`] characters.
pub(crate) fn first_line(text: &str) -> Option<String> {
    let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    let mut out: String = line.chars().take(MAX_LINE).collect();
    if line.chars().count() > MAX_LINE {
        out.push('…');
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_command_result_gives_its_exit_code_and_first_line() {
        let rounds = json!({"rounds": [{"action_results": [{"status": "success",
            "result": {"success": true, "exit_code": 0, "stdout": "\n up 3 days\nmore", "stderr": ""}}]}]});
        assert_eq!(
            last_command_result(&rounds).and_then(|v| v.get("exit_code")),
            Some(&json!(0))
        );
        assert_eq!(
            first_line("\n  up 3 days \nmore").as_deref(),
            Some("up 3 days")
        );
        assert_eq!(
            first_line(&"x".repeat(300)).map(|l| l.chars().count()),
            Some(201)
        );
        assert_eq!(first_line(" \n "), None);
    }
}
