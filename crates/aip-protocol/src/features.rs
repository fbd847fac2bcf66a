//! What a server says about itself when it accepts a registration (protocol.md §3.1
//! step 4): the acknowledgement's `result` is free-form JSON in the reference's model,
//! which its clients ignore; an aip server puts `{"server", "version", "features"}` there.
//! The reference server sends `result: null`, which announces no feature.

use serde_json::{json, Value};

/// The server runs a `task` whose `agent_name` is `null` as a delegated session: the
/// device may run it itself and end it with its own `task_end` (protocol.md §3.6, §3.11).
/// A device runs such a task only when its server announced this.
pub const DELEGATION: &str = "delegation";

/// The features an aip server announces.
pub const AIP_FEATURES: &[&str] = &[DELEGATION];

/// A server's self-description, as read from a registration acknowledgement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerInfo {
    /// `aip` for this server; `None` for the reference (or any server that says nothing).
    pub server: Option<String>,
    pub version: Option<String>,
    pub features: Vec<String>,
}

impl ServerInfo {
    /// The `result` an aip server of `version` puts in its acknowledgement.
    pub fn aip_ack_result(version: &str) -> Value {
        json!({"server": "aip", "version": version, "features": AIP_FEATURES})
    }

    /// Reads an acknowledgement's `result`; anything that is not the expected object
    /// (`null` from the reference, another server's own shape) means no feature.
    pub fn from_ack_result(result: Option<&Value>) -> Self {
        let Some(obj) = result.and_then(Value::as_object) else {
            return Self::default();
        };
        let text = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_owned);
        Self {
            server: text("server"),
            version: text("version"),
            features: obj
                .get("features")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// True when the server announced `feature`.
    pub fn supports(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_null_result_announces_nothing() {
        let info = ServerInfo::from_ack_result(None);
        assert!(!info.supports(DELEGATION));
        let info = ServerInfo::from_ack_result(Some(&Value::Null));
        assert_eq!(info, ServerInfo::default());
        let info = ServerInfo::from_ack_result(Some(&json!({"features": "delegation"})));
        assert!(!info.supports(DELEGATION), "features must be a list");
    }

    #[test]
    fn an_aip_ack_announces_delegation() {
        let info = ServerInfo::from_ack_result(Some(&ServerInfo::aip_ack_result("1.2.3")));
        assert_eq!(info.server.as_deref(), Some("aip"));
        assert_eq!(info.version.as_deref(), Some("1.2.3"));
        assert!(info.supports(DELEGATION));
    }
}
