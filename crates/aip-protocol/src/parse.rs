//! Strict parsing of AIP frames (protocol.md §2.1), the way the reference's pydantic
//! models parse: required fields, exact enum values, no coercion; `null` equals absent and
//! a duplicated key keeps its last value. Errors carry the JSON path of the field at fault.

use serde::Deserialize;
use serde_json::Value;

use crate::messages::ClientMessage;

/// Why a frame is not a valid `ClientMessage`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct ParseError {
    /// Human-readable cause, with the JSON path of the offending field when known.
    pub detail: String,
}

/// Parses one text frame as a `ClientMessage` (protocol.md §2.1).
pub fn parse_client_message(text: &str) -> Result<ClientMessage, ParseError> {
    parse_strict(text)
}

/// Strict parse of any AIP model, with the §2.1 rules (duplicate keys: last wins).
pub fn parse_strict<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ParseError> {
    // Fast path: valid messages are the rule, and tracking the path of every field costs
    // about as much as the parse itself. Only a message that fails is parsed again, with
    // the path, for the error's detail (and the duplicate-key rule).
    if let Ok(v) = serde_json::from_str(text) {
        return Ok(v);
    }
    let mut de = serde_json::Deserializer::from_str(text);
    match serde_path_to_error::deserialize(&mut de) {
        Ok(v) => {
            de.end().map_err(|e| ParseError {
                detail: e.to_string(),
            })?;
            Ok(v)
        }
        Err(_) if has_duplicate_keys(text) => {
            // serde's derive refuses duplicated keys; JSON objects keep the last one, as a
            // `Value` does. (Such a frame's error, if it has another, carries no position.)
            let value: Value = serde_json::from_str(text).map_err(|e| ParseError {
                detail: e.to_string(),
            })?;
            serde_path_to_error::deserialize(value).map_err(describe)
        }
        Err(e) => Err(describe(e)),
    }
}

/// True when some object in the JSON `text` repeats a key (false for invalid JSON).
pub(crate) fn has_duplicate_keys(text: &str) -> bool {
    use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
    use std::borrow::Cow;
    use std::collections::HashSet;

    struct Dup(bool);
    struct DupVisitor;

    impl<'de> Deserialize<'de> for Dup {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(DupVisitor)
        }
    }

    impl<'de> Visitor<'de> for DupVisitor {
        type Value = Dup;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Dup, A::Error> {
            let mut seen = HashSet::new();
            let mut dup = false;
            while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                dup |= !seen.insert(key);
                dup |= map.next_value::<Dup>()?.0;
            }
            Ok(Dup(dup))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Dup, A::Error> {
            let mut dup = false;
            while let Some(Dup(d)) = seq.next_element()? {
                dup |= d;
            }
            Ok(Dup(dup))
        }
        fn visit_bool<E>(self, _: bool) -> Result<Dup, E> {
            Ok(Dup(false))
        }
        fn visit_i64<E>(self, _: i64) -> Result<Dup, E> {
            Ok(Dup(false))
        }
        fn visit_u64<E>(self, _: u64) -> Result<Dup, E> {
            Ok(Dup(false))
        }
        fn visit_f64<E>(self, _: f64) -> Result<Dup, E> {
            Ok(Dup(false))
        }
        fn visit_str<E>(self, _: &str) -> Result<Dup, E> {
            Ok(Dup(false))
        }
        fn visit_unit<E>(self) -> Result<Dup, E> {
            Ok(Dup(false))
        }
    }

    serde_json::from_str::<Dup>(text).is_ok_and(|d| d.0)
}

fn describe(e: serde_path_to_error::Error<serde_json::Error>) -> ParseError {
    let path = e.path().to_string();
    let inner = e.into_inner().to_string();
    let detail = if path.is_empty() || path == "." {
        inner
    } else {
        format!("{path}: {inner}")
    };
    ParseError { detail }
}
