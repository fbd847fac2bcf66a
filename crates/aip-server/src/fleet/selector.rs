//! Device selectors: which connected devices a job (or `GET /api/clients?…`) addresses.
//!
//! A selector is `client_ids` (globs), `platform` (a glob) and `tags` (key → one or more
//! globs), combined with AND; within `client_ids` and within one tag's values, any one
//! matching is enough. A value without `*` or `?` is plain equality. Tags are the
//! `metadata.tags` a device registered with (`aip device --tag k=v`).
//!
//! Two spellings, one meaning: the JSON object of `POST /api/jobs`
//! (`{"client_ids": ["web*"], "platform": "linux", "tags": {"role": ["web", "db"]}}`)
//! and the query of `GET /api/clients` (`client_id=web*&platform=linux&tag=role=web,db`);
//! [`Selector`]'s `Display` writes the query form, which error texts name.

use std::collections::BTreeMap;
use std::fmt;

use aip_protocol::ClientType;
use serde_json::Value;

use crate::keys::glob;
use crate::registry::ClientEntry;

/// Which devices: every criterion given must match (AND).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    /// Client id globs; empty: any id.
    pub client_ids: Vec<String>,
    /// Platform glob (`linux`, `win*`); `None`: any platform.
    pub platform: Option<String>,
    /// Tag key → globs, any of which the device's tag value must match.
    pub tags: BTreeMap<String, Vec<String>>,
}

/// Most patterns one selector may hold (ids and tag values together).
const MAX_PATTERNS: usize = 1000;
/// Longest pattern, key or platform, in bytes.
const MAX_PATTERN_LEN: usize = 256;

impl Selector {
    /// True when no criterion is given.
    pub fn is_empty(&self) -> bool {
        self.client_ids.is_empty() && self.platform.is_none() && self.tags.is_empty()
    }

    /// Reads the JSON form; the error is the detail after `Invalid selector: `.
    pub fn from_json(v: &Value) -> Result<Selector, String> {
        let Value::Object(map) = v else {
            return Err("expected an object with client_ids, platform or tags".into());
        };
        let mut s = Selector::default();
        for (key, value) in map {
            match key.as_str() {
                "client_ids" => s.client_ids = strings(value, "client_ids")?,
                "platform" => match value {
                    Value::Null => {}
                    Value::String(p) => s.platform = Some(p.clone()),
                    _ => return Err("platform must be a string".into()),
                },
                "tags" => s.tags = tags_of(value)?,
                other => return Err(format!("unknown field '{}'", clip(other))),
            }
        }
        s.checked()
    }

    /// Reads the query form: `client_id` (repeatable, comma-separated), `platform`,
    /// `tag=key=value[,value…]` (repeatable). Other parameters are not its business.
    pub fn from_query<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Selector, String> {
        let mut s = Selector::default();
        for (key, value) in pairs {
            match key {
                "client_id" => s.client_ids.extend(split_list(value)),
                "platform" if !value.is_empty() => s.platform = Some(value.to_owned()),
                "tag" => {
                    let (k, v) = value
                        .split_once('=')
                        .ok_or_else(|| format!("tag '{}' is not key=value", clip(value)))?;
                    s.tags
                        .entry(k.to_owned())
                        .or_default()
                        .extend(split_list(v));
                }
                _ => {}
            }
        }
        s.checked()
    }

    /// Refuses empty or oversized patterns.
    fn checked(self) -> Result<Selector, String> {
        let count = self.client_ids.len() + self.tags.values().map(Vec::len).sum::<usize>();
        if count > MAX_PATTERNS {
            return Err(format!("at most {MAX_PATTERNS} patterns"));
        }
        let all = self
            .client_ids
            .iter()
            .chain(self.platform.iter())
            .chain(self.tags.keys())
            .chain(self.tags.values().flatten());
        for p in all {
            if p.is_empty() {
                return Err("empty client id, platform, tag key or tag value".into());
            }
            if p.len() > MAX_PATTERN_LEN {
                return Err(format!("a pattern is longer than {MAX_PATTERN_LEN} bytes"));
            }
        }
        if self.tags.values().any(Vec::is_empty) {
            return Err("a tag needs at least one value".into());
        }
        Ok(self)
    }

    /// True when `e` is a device this selector picks.
    pub fn matches(&self, e: &ClientEntry) -> bool {
        let tags = e
            .metadata
            .as_ref()
            .and_then(|m| m.get("tags"))
            .and_then(Value::as_object);
        self.matches_fields(
            e.role == ClientType::Device,
            &e.client_id,
            e.platform.as_deref(),
            tags,
        )
    }

    /// True when a client with these registration fields is a device this selector
    /// picks (cluster mode reads them from the shared presence, not a [`ClientEntry`]).
    pub fn matches_fields(
        &self,
        is_device: bool,
        client_id: &str,
        platform: Option<&str>,
        tags: Option<&serde_json::Map<String, Value>>,
    ) -> bool {
        if !is_device {
            return false;
        }
        if !self.client_ids.is_empty()
            && !self.client_ids.iter().any(|p| glob::matches(p, client_id))
        {
            return false;
        }
        if let Some(p) = &self.platform {
            if !platform.is_some_and(|v| glob::matches(p, v)) {
                return false;
            }
        }
        self.tags.iter().all(|(key, patterns)| {
            let value = match tags.and_then(|t| t.get(key)) {
                Some(Value::String(s)) => s.clone(),
                Some(v @ (Value::Number(_) | Value::Bool(_))) => v.to_string(),
                _ => return false,
            };
            patterns.iter().any(|p| glob::matches(p, &value))
        })
    }

    /// True when `c`, a client as cluster presence shows it (`Cluster::fleet`), is a
    /// device this selector picks.
    pub fn matches_presence(&self, c: &Value) -> bool {
        self.matches_fields(
            c["type"] == "device",
            c["client_id"].as_str().unwrap_or_default(),
            c["platform"].as_str(),
            c["metadata"]["tags"].as_object(),
        )
    }

    /// The JSON form, as a job shows it back.
    pub fn to_json(&self) -> Value {
        let mut map = serde_json::Map::new();
        if !self.client_ids.is_empty() {
            map.insert("client_ids".into(), self.client_ids.clone().into());
        }
        if let Some(p) = &self.platform {
            map.insert("platform".into(), p.clone().into());
        }
        if !self.tags.is_empty() {
            let tags = self
                .tags
                .iter()
                .map(|(k, v)| (k.clone(), Value::from(v.clone())))
                .collect();
            map.insert("tags".into(), Value::Object(tags));
        }
        Value::Object(map)
    }
}

impl fmt::Display for Selector {
    /// The query form: `client_id=a,b platform=linux tag=role=web,db` (or `(any device)`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if !self.client_ids.is_empty() {
            parts.push(format!("client_id={}", self.client_ids.join(",")));
        }
        if let Some(p) = &self.platform {
            parts.push(format!("platform={p}"));
        }
        for (k, v) in &self.tags {
            parts.push(format!("tag={k}={}", v.join(",")));
        }
        if parts.is_empty() {
            return f.write_str("(any device)");
        }
        f.write_str(&clip(&parts.join(" ")))
    }
}

/// A string or a list of strings.
fn strings(v: &Value, field: &str) -> Result<Vec<String>, String> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => Ok(s.clone()),
                _ => Err(format!("{field} must be a string or a list of strings")),
            })
            .collect(),
        _ => Err(format!("{field} must be a string or a list of strings")),
    }
}

fn tags_of(v: &Value) -> Result<BTreeMap<String, Vec<String>>, String> {
    match v {
        Value::Null => Ok(BTreeMap::new()),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| Ok((k.clone(), strings(v, "a tag's value")?)))
            .collect(),
        _ => Err("tags must be an object of key: value (or a list of values)".into()),
    }
}

/// `a,b` → `[a, b]`, empty items dropped.
fn split_list(v: &str) -> impl Iterator<Item = String> + '_ {
    v.split(',').filter(|s| !s.is_empty()).map(str::to_owned)
}

/// Text echoed in an error, cut to 200 characters.
fn clip(s: &str) -> String {
    if s.chars().count() <= 200 {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(200).collect();
    out.push('…');
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::conn::ConnHandle;
    use serde_json::json;

    fn device(id: &str, platform: &str, tags: Value) -> ClientEntry {
        let Value::Object(meta) = json!({"platform": platform, "tags": tags}) else {
            unreachable!()
        };
        ClientEntry::new(
            id.into(),
            ClientType::Device,
            ConnHandle::new(1, tokio::sync::mpsc::channel(1).0),
            Some(meta),
            None,
        )
    }

    #[test]
    fn criteria_combine_with_and_values_with_or_and_globs_match_whole_values() {
        let web1 = device("web-1", "linux", json!({"role": "web", "rack": "4"}));
        let db1 = device("db-1", "linux", json!({"role": "db"}));
        let win = device("web-win", "windows", json!({"role": "web"}));
        let table = [
            (json!({"tags": {"role": "web"}}), [true, false, true]),
            (json!({"tags": {"role": ["web", "db"]}}), [true, true, true]),
            (json!({"tags": {"role": "w*"}}), [true, false, true]),
            (
                json!({"tags": {"role": "web", "rack": "4"}}),
                [true, false, false],
            ),
            (json!({"platform": "linux"}), [true, true, false]),
            (
                json!({"platform": "linux", "tags": {"role": "web"}}),
                [true, false, false],
            ),
            (json!({"client_ids": "web-*"}), [true, false, true]),
            (
                json!({"client_ids": ["db-1", "web-win"]}),
                [false, true, true],
            ),
            (json!({"client_ids": "web"}), [false, false, false]),
        ];
        for (json, expected) in table {
            let s = Selector::from_json(&json).unwrap();
            let got = [&web1, &db1, &win].map(|d| s.matches(d));
            assert_eq!(got, expected, "{json}");
        }
    }

    #[test]
    fn the_query_form_reads_as_the_json_form_and_displays_as_itself() {
        let q = Selector::from_query([
            ("tag", "role=web,db"),
            ("platform", "linux"),
            ("client_id", "web*"),
            ("limit", "5"),
        ])
        .unwrap();
        let j = Selector::from_json(
            &json!({"client_ids": ["web*"], "platform": "linux", "tags": {"role": ["web", "db"]}}),
        )
        .unwrap();
        assert_eq!(q, j);
        assert_eq!(
            q.to_string(),
            "client_id=web* platform=linux tag=role=web,db"
        );
        assert_eq!(Selector::from_json(&q.to_json()).unwrap(), q);
    }

    #[test]
    fn malformed_selectors_are_refused_with_what_is_wrong() {
        for (json, detail) in [
            (json!([]), "expected an object"),
            (json!({"tag": {}}), "unknown field 'tag'"),
            (json!({"platform": 3}), "platform must be a string"),
            (json!({"client_ids": [1]}), "client_ids must be"),
            (json!({"tags": "role=web"}), "tags must be an object"),
            (json!({"tags": {"role": []}}), "at least one value"),
            (json!({"client_ids": [""]}), "empty"),
        ] {
            let e = Selector::from_json(&json).unwrap_err();
            assert!(e.contains(detail), "{json}: {e}");
        }
        assert!(Selector::from_query([("tag", "role")]).is_err());
    }
}
