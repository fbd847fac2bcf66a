//! What a session tells the event bus (`GET /api/events`): created, state changed, a
//! round's results, ended. Each builds its JSON only when someone listens
//! ([`EventBus::publish`]), so a server nobody watches pays one atomic load per call.

use aip_protocol::time::http_timestamp;
use aip_protocol::ResultStatus;
use serde_json::json;

use super::driver::Round;
use crate::events::{EventBus, EventKind};
use crate::storage::SessionRecord;

/// Longest `request` / `error` text an event carries (the session itself has all of it).
const TEXT_CAP: usize = 200;

/// `text` cut to [`TEXT_CAP`] bytes on a character boundary.
fn clip(text: &str) -> &str {
    if text.len() <= TEXT_CAP {
        return text;
    }
    let mut end = TEXT_CAP;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// `session_created`.
pub(super) fn created(bus: &EventBus, r: &SessionRecord) {
    bus.publish(EventKind::SessionCreated, || {
        json!({
            "session_id": r.session_id,
            "task_name": r.task_name,
            "request": clip(&r.request),
            "origin": r.origin.as_str(),
            "requester": r.requester,
            "client_id": r.executor,
            "state": r.state.as_str(),
            "created_at": http_timestamp(r.created_at),
            "started_at": r.started_at.map(http_timestamp),
        })
    });
}

/// `session_state`: the session is running.
pub(super) fn state(bus: &EventBus, r: &SessionRecord) {
    bus.publish(EventKind::SessionState, || {
        json!({
            "session_id": r.session_id,
            "client_id": r.executor,
            "state": r.state.as_str(),
            "started_at": r.started_at.map(http_timestamp),
        })
    });
}

/// `session_round`: the last of `rounds` got its results.
pub(super) fn round(bus: &EventBus, r: &SessionRecord, rounds: &[Round]) {
    bus.publish(EventKind::SessionRound, || {
        let results = rounds.last().map_or(&[][..], |l| &l.action_results[..]);
        let statuses: Vec<&str> = results
            .iter()
            .map(|a| match a.status {
                ResultStatus::Success => "success",
                ResultStatus::Failure => "failure",
                ResultStatus::Skipped => "skipped",
                ResultStatus::None => "none",
            })
            .collect();
        json!({
            "session_id": r.session_id,
            "client_id": r.executor,
            "round": rounds.len(),
            "statuses": statuses,
        })
    });
}

/// `session_ended`: its final state (stored or, if the store refused, kept in memory).
pub(super) fn ended(bus: &EventBus, r: &SessionRecord) {
    bus.publish(EventKind::SessionEnded, || {
        json!({
            "session_id": r.session_id,
            "task_name": r.task_name,
            "requester": r.requester,
            "client_id": r.executor,
            "state": r.state.as_str(),
            "reason": r.reason.map(|e| e.as_str()),
            "error": r.error.as_deref().map(clip),
            "finished_at": r.finished_at.map(http_timestamp),
        })
    });
}

#[cfg(test)]
mod tests {
    use super::clip;

    #[test]
    fn clip_keeps_short_texts_and_cuts_on_a_character_boundary() {
        assert_eq!(clip("ls"), "ls");
        let long = "é".repeat(150);
        let cut = clip(&long);
        assert!(cut.len() <= 200 && cut.len() >= 198, "{}", cut.len());
        assert!(long.starts_with(cut));
    }
}
