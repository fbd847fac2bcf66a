//! How a session is shown over HTTP: its record, and while it runs, the step in progress.

use aip_protocol::time::http_timestamp;

use crate::session::CurrentStep;
use crate::storage::SessionRecord;

/// How a session record is shown over HTTP (http-api.md §4.2): serialised straight from the
/// record, without building a `serde_json::Value` first (the result read after every
/// session is a hot path). Keys in this order; an ended session adds `result`, `error` and
/// `reason`, `finished_at` is present once set.
pub struct SessionView<'a>(pub &'a SessionRecord, pub Option<&'a CurrentStep>);

impl serde::Serialize for SessionView<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let r = self.0;
        let done = r.state.is_terminal();
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("status", if done { "done" } else { "pending" })?;
        if done {
            map.serialize_entry("result", &r.result)?;
        }
        map.serialize_entry("state", r.state.as_str())?;
        if done {
            map.serialize_entry("error", &r.error)?;
            map.serialize_entry("reason", &r.reason)?;
        }
        map.serialize_entry("session_id", &r.session_id)?;
        map.serialize_entry("task_name", &r.task_name)?;
        map.serialize_entry("client_id", &r.executor)?;
        map.serialize_entry("created_at", &http_timestamp(r.created_at))?;
        if let Some(f) = r.finished_at {
            map.serialize_entry("finished_at", &http_timestamp(f))?;
        }
        map.serialize_entry("origin", r.origin.as_str())?;
        map.serialize_entry("requester", &r.requester)?;
        map.serialize_entry("started_at", &r.started_at.map(http_timestamp))?;
        if let Some(job_id) = &r.job_id {
            map.serialize_entry("job_id", job_id)?;
        }
        if let (false, Some(step)) = (done, self.1) {
            map.serialize_entry("step", &StepView(step))?;
        }
        map.end()
    }
}

/// `{"round": n, "tools": [...]}`: the round in progress (1-based) and the tools it called.
struct StepView<'a>(&'a CurrentStep);

impl serde::Serialize for StepView<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("round", &self.0.round)?;
        map.serialize_entry("tools", &self.0.tools)?;
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use serde_json::json;

    use super::*;
    use crate::storage::{Origin, SessionState};

    fn record(state: SessionState) -> SessionRecord {
        let at = |s: i64| {
            Utc.timestamp_opt(1_700_000_000 + s, 0)
                .single()
                .expect("time")
        };
        let ended = state.is_terminal();
        SessionRecord {
            session_id: "s-1".into(),
            task_name: "t\"1".into(),
            request: "open notepad".into(),
            origin: Origin::Http,
            requester: None,
            executor: "dev-1".into(),
            platform: "windows".into(),
            state,
            reason: None,
            error: ended.then(|| "boom".into()),
            result: ended.then(|| Box::new(json!({"results": [1, "two"]}))),
            created_at: at(0),
            started_at: Some(at(1)),
            finished_at: ended.then(|| at(2)),
            echo_received: true,
            job_id: None,
        }
    }

    /// The view's keys, their order and their nulls, as the HTTP API has always shown them.
    #[test]
    fn session_view_is_serialised_in_order() {
        let pending = serde_json::to_string(&SessionView(&record(SessionState::Running), None))
            .expect("serialise");
        assert_eq!(
            pending,
            r#"{"status":"pending","state":"running","session_id":"s-1","task_name":"t\"1","client_id":"dev-1","created_at":"2023-11-14T22:13:20.000000Z","origin":"http","requester":null,"started_at":"2023-11-14T22:13:21.000000Z"}"#
        );
        let done = serde_json::to_string(&SessionView(&record(SessionState::Failed), None))
            .expect("serialise");
        assert_eq!(
            done,
            r#"{"status":"done","result":{"results":[1,"two"]},"state":"failed","error":"boom","reason":null,"session_id":"s-1","task_name":"t\"1","client_id":"dev-1","created_at":"2023-11-14T22:13:20.000000Z","finished_at":"2023-11-14T22:13:22.000000Z","origin":"http","requester":null,"started_at":"2023-11-14T22:13:21.000000Z"}"#
        );
    }

    #[test]
    fn a_running_session_shows_its_step_and_an_ended_one_does_not() {
        let step = CurrentStep {
            round: 2,
            tools: vec!["execute_command".into()],
        };
        let running =
            serde_json::to_value(SessionView(&record(SessionState::Running), Some(&step)))
                .expect("serialise");
        assert_eq!(
            running["step"],
            json!({"round": 2, "tools": ["execute_command"]})
        );
        let done = serde_json::to_value(SessionView(&record(SessionState::Completed), Some(&step)))
            .expect("serialise");
        assert!(done.get("step").is_none(), "{done}");
    }
}
