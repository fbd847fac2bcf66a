//! How `aip` ends: the exit codes scripts can branch on (docs/src/cli.md, "Exit codes"), and the
//! error that means "the command line was wrong" (exit 2, like clap's own refusals).

use std::process::ExitCode;

/// The outcome of a command, as an exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// 0: done; for a session, it `completed`; for a fleet job, every device completed.
    Success,
    /// 1: the session `failed` (other than by its time limit), a fleet job had a device
    /// that did not complete, or the command itself failed
    /// (server unreachable, unknown session, refused request).
    Failed,
    /// 2: the command line was wrong (clap, or a value only checked later, e.g. `--ca-cert`).
    Usage,
    /// 3: the session (or fleet job) was `cancelled`, failed by its time limit (reason `timeout`), or
    /// `--timeout` ran out while waiting for it (it keeps running then).
    Stopped,
    /// 4: `aip result` on a session that has not finished.
    Pending,
    /// 130: interrupted (Ctrl-C) while waiting; the session keeps running.
    Interrupted,
}

impl Exit {
    /// The code the process exits with.
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Failed => 1,
            Exit::Usage => 2,
            Exit::Stopped => 3,
            Exit::Pending => 4,
            Exit::Interrupted => 130,
        }
    }

    /// The outcome of a session from its `state` and `reason` (http-api.md §4.2).
    pub fn of_session(state: &str, reason: Option<&str>) -> Exit {
        match (state, reason) {
            ("completed", _) => Exit::Success,
            ("cancelled", _) | ("failed", Some("timeout")) => Exit::Stopped,
            ("failed", _) => Exit::Failed,
            _ => Exit::Pending,
        }
    }
}

impl Exit {
    /// The outcome of a fleet job from its `state`: 0 only when every device completed.
    pub fn of_job(state: &str) -> Exit {
        match state {
            "completed" => Exit::Success,
            "cancelled" => Exit::Stopped,
            "failed" => Exit::Failed,
            _ => Exit::Pending,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e.code())
    }
}

/// A bad option value found after parsing; `aip` exits 2 with its text.
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_states_map_to_documented_codes() {
        let rows = [
            ("completed", None, 0),
            ("failed", None, 1),
            ("failed", Some("not_accepted"), 1),
            ("failed", Some("server_restarted"), 1),
            ("failed", Some("timeout"), 3),
            ("cancelled", Some("cancelled"), 3),
            ("cancelled", Some("device_disconnected"), 3),
            ("running", None, 4),
            ("created", None, 4),
        ];
        for (state, reason, code) in rows {
            assert_eq!(
                Exit::of_session(state, reason).code(),
                code,
                "{state} {reason:?}"
            );
        }
    }
}
