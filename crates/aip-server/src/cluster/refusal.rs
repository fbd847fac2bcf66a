//! Why a node refused what another asked of it: one typed reason for every call (open,
//! cancel, cancel a job), matched by what it is, never by an HTTP status or a text. The
//! asking side turns it into its own answer (an HTTP status and detail, a WebSocket
//! `error`, a fleet member's state).
//!
//! On the wire a refusal also carries the `status` and `detail` that nodes before this
//! type sent and matched on, so nodes of both versions understand each other during a
//! rolling upgrade: a refusal without `why` is read back from them.

use aip_protocol::errors::{self as text, http as detail};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a node refused a request of another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeRefusal {
    /// The device is not connected to that node (any more).
    NotOnline,
    /// That node is shutting down.
    ShuttingDown,
    /// That node runs as many sessions as it may.
    TooManySessions,
    /// The session id belongs to another session (an HTTP dispatch's id).
    SessionIdInUse,
    /// The requester's own session of this id is live (a constellation's `task`).
    SessionActive(String),
    /// The session has ended already (a cancel).
    AlreadyFinished,
    /// The fleet job has ended already (a job's cancel).
    JobAlreadyFinished,
    /// That node's store refused the write.
    StorageUnavailable,
    /// A reason this node does not know (a newer node's), as it was said.
    Other { status: u16, detail: String },
}

impl NodeRefusal {
    /// The HTTP status an API answer gives for it.
    pub fn status(&self) -> u16 {
        match self {
            Self::NotOnline => 404,
            Self::SessionIdInUse
            | Self::SessionActive(_)
            | Self::AlreadyFinished
            | Self::JobAlreadyFinished => 409,
            Self::ShuttingDown | Self::TooManySessions | Self::StorageUnavailable => 503,
            Self::Other { status, .. } => *status,
        }
    }

    /// The text an answer gives for it (HTTP `detail`, WebSocket `error`).
    pub fn detail(&self) -> String {
        match self {
            Self::NotOnline => detail::CLIENT_NOT_ONLINE.to_owned(),
            Self::ShuttingDown => detail::SHUTTING_DOWN.to_owned(),
            Self::TooManySessions => detail::TOO_MANY_SESSIONS.to_owned(),
            Self::SessionIdInUse => detail::SESSION_ID_IN_USE.to_owned(),
            Self::SessionActive(sid) => text::session_active(sid),
            Self::AlreadyFinished => detail::ALREADY_FINISHED.to_owned(),
            Self::JobAlreadyFinished => detail::JOB_ALREADY_FINISHED.to_owned(),
            Self::StorageUnavailable => detail::STORAGE_UNAVAILABLE.to_owned(),
            Self::Other { detail, .. } => detail.clone(),
        }
    }

    fn why(&self) -> Option<&'static str> {
        Some(match self {
            Self::NotOnline => "not_online",
            Self::ShuttingDown => "shutting_down",
            Self::TooManySessions => "too_many_sessions",
            Self::SessionIdInUse => "session_id_in_use",
            Self::SessionActive(_) => "session_active",
            Self::AlreadyFinished => "already_finished",
            Self::JobAlreadyFinished => "job_already_finished",
            Self::StorageUnavailable => "storage_unavailable",
            Self::Other { .. } => return None,
        })
    }

    /// Reads a refusal from its wire form (`why` given by this version; without it, a
    /// node before it: its status and text decide).
    fn read(wire: Wire) -> Self {
        let Wire {
            why,
            status,
            detail: d,
            session_id,
        } = wire;
        match why.as_deref() {
            Some("not_online") => Self::NotOnline,
            Some("shutting_down") => Self::ShuttingDown,
            Some("too_many_sessions") => Self::TooManySessions,
            Some("session_id_in_use") => Self::SessionIdInUse,
            Some("session_active") => Self::SessionActive(session_id.unwrap_or_default()),
            Some("already_finished") => Self::AlreadyFinished,
            Some("job_already_finished") => Self::JobAlreadyFinished,
            Some("storage_unavailable") => Self::StorageUnavailable,
            _ => match (status, d.as_str()) {
                (404, detail::CLIENT_NOT_ONLINE) => Self::NotOnline,
                (503, detail::SHUTTING_DOWN) => Self::ShuttingDown,
                (503, detail::TOO_MANY_SESSIONS) => Self::TooManySessions,
                (409, detail::SESSION_ID_IN_USE) => Self::SessionIdInUse,
                (409, detail::ALREADY_FINISHED) => Self::AlreadyFinished,
                (409, detail::JOB_ALREADY_FINISHED) => Self::JobAlreadyFinished,
                (503, detail::STORAGE_UNAVAILABLE) => Self::StorageUnavailable,
                _ => Self::Other { status, detail: d },
            },
        }
    }
}

impl std::fmt::Display for NodeRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail())
    }
}

/// A refusal as it crosses nodes.
#[derive(Serialize, Deserialize)]
struct Wire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    why: Option<String>,
    status: u16,
    detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    session_id: Option<String>,
}

impl Serialize for NodeRefusal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Wire {
            why: self.why().map(str::to_owned),
            status: self.status(),
            detail: self.detail(),
            session_id: match self {
                Self::SessionActive(sid) => Some(sid.clone()),
                _ => None,
            },
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for NodeRefusal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Wire::deserialize(d).map(Self::read)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::cluster::{CancelReply, OpenReply, ProbeReply};
    use serde_json::json;

    #[test]
    fn a_refusal_crosses_nodes_as_itself_and_as_the_old_status_and_text() {
        for r in [
            NodeRefusal::NotOnline,
            NodeRefusal::ShuttingDown,
            NodeRefusal::TooManySessions,
            NodeRefusal::SessionIdInUse,
            NodeRefusal::SessionActive("k-1".into()),
            NodeRefusal::AlreadyFinished,
            NodeRefusal::JobAlreadyFinished,
            NodeRefusal::StorageUnavailable,
            NodeRefusal::Other {
                status: 418,
                detail: "a newer reason".into(),
            },
        ] {
            let wire = serde_json::to_value(OpenReply::Refused(r.clone())).unwrap();
            assert_eq!(wire["outcome"], "refused", "{wire}");
            assert_eq!(wire["status"], r.status(), "{wire}");
            assert_eq!(wire["detail"], r.detail(), "{wire}");
            let back: OpenReply = serde_json::from_value(wire.clone()).unwrap();
            assert!(matches!(back, OpenReply::Refused(b) if b == r));
            let back: CancelReply = serde_json::from_value(wire).unwrap();
            assert!(matches!(back, CancelReply::Refused(b) if b == r));
        }
    }

    #[test]
    fn each_call_reads_its_own_reply_as_nodes_before_these_types_sent_it() {
        let ok = json!({"outcome": "ok"});
        assert!(matches!(
            serde_json::from_value(ok.clone()),
            Ok(OpenReply::Ok)
        ));
        assert!(matches!(serde_json::from_value(ok), Ok(CancelReply::Ok)));
        let busy = json!({"outcome": "busy"});
        assert!(matches!(
            serde_json::from_value(busy.clone()),
            Ok(OpenReply::Busy)
        ));
        // A cancel is never answered "busy": not read as one.
        assert!(serde_json::from_value::<CancelReply>(busy).is_err());
        let alive = json!({"outcome": "alive", "alive": false});
        assert!(matches!(
            serde_json::from_value(alive),
            Ok(ProbeReply::Alive { alive: false })
        ));
    }

    #[test]
    fn a_refusal_of_a_node_before_this_type_is_read_by_its_status_and_text() {
        let old = |status: u16, d: &str| -> NodeRefusal {
            let wire = json!({"outcome": "refused", "status": status, "detail": d});
            match serde_json::from_value(wire).unwrap() {
                OpenReply::Refused(r) => r,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(old(404, detail::CLIENT_NOT_ONLINE), NodeRefusal::NotOnline);
        assert_eq!(
            old(503, detail::TOO_MANY_SESSIONS),
            NodeRefusal::TooManySessions
        );
        assert_eq!(
            old(409, detail::ALREADY_FINISHED),
            NodeRefusal::AlreadyFinished
        );
        assert_eq!(
            old(409, "session_id 'k' is already active"),
            NodeRefusal::Other {
                status: 409,
                detail: "session_id 'k' is already active".into()
            }
        );
    }
}
