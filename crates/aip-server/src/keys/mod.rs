//! Credentials (issue 16): who may use the HTTP API, register as which client, and address
//! which devices. A [`KeySet`] is what `--api-key` and `--keys FILE` say; each request and
//! WebSocket upgrade is authenticated against the current set into a [`Grant`], which a
//! connection keeps for its lifetime (a reload changes what new connections get, never an
//! open one). Tokens are never kept or compared in clear: each credential holds the SHA-256
//! of its token, and a presented token's digest is compared with every one, in constant
//! time. The peer-visible refusals are in `aip_protocol::errors`.

use std::path::Path;
use std::sync::Arc;

use aip_protocol::ClientType;
use anyhow::{bail, Context};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub mod glob;
mod store;

pub use store::{reload_on_sighup, KeySource, KeyStore};

/// Shortest token accepted at start without `--allow-weak-key`, in characters.
pub const MIN_TOKEN_LEN: usize = 16;

/// What a credential is for (a closed set: the `role` of a key file entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The HTTP API, and WebSocket as a constellation addressing any device.
    Operator,
    /// WebSocket as a device, under one of its `client_ids` only.
    Device,
    /// WebSocket as a constellation, addressing its `targets` only (all when unset).
    Constellation,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Device => "device",
            Role::Constellation => "constellation",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "operator" => Some(Role::Operator),
            "device" => Some(Role::Device),
            "constellation" => Some(Role::Constellation),
            _ => None,
        }
    }
}

/// One `[[key]]` of a key file (or `--api-key` next to one).
#[derive(Debug)]
pub struct Credential {
    /// Named in logs, never sent to peers.
    pub name: String,
    pub role: Role,
    digest: [u8; 32],
    /// Devices: the client ids (globs) it may register as.
    pub client_ids: Vec<String>,
    /// Constellations: the device ids (globs) it may address; `None`: any.
    pub targets: Option<Vec<String>>,
}

impl Credential {
    /// True when a device holding this credential may be `client_id`.
    pub fn allows_client_id(&self, client_id: &str) -> bool {
        self.role == Role::Device && self.client_ids.iter().any(|p| glob::matches(p, client_id))
    }

    /// True when this credential may send tasks to (or ask about) device `target`.
    pub fn may_address(&self, target: &str) -> bool {
        match (self.role, &self.targets) {
            (Role::Operator, _) | (Role::Constellation, None) => true,
            (Role::Constellation, Some(globs)) => globs.iter().any(|p| glob::matches(p, target)),
            (Role::Device, _) => false,
        }
    }
}

/// What an authenticated request or connection may do.
#[derive(Debug, Clone)]
pub enum Grant {
    /// Authentication is off, or the one shared `--api-key` without a key file: everything.
    Full,
    /// What this credential allows.
    Key(Arc<Credential>),
}

impl Grant {
    /// The credential's name for logs (`-` for [`Grant::Full`]).
    pub fn name(&self) -> &str {
        match self {
            Grant::Full => "-",
            Grant::Key(c) => &c.name,
        }
    }

    /// True when this grant may call the HTTP API.
    pub fn may_use_api(&self) -> bool {
        match self {
            Grant::Full => true,
            Grant::Key(c) => c.role == Role::Operator,
        }
    }

    /// Why this grant may not register as `role` `client_id` with `scope` (a
    /// constellation's `target_id`); `None`: it may.
    pub fn registration_refusal(
        &self,
        role: ClientType,
        client_id: &str,
        scope: Option<&str>,
    ) -> Option<String> {
        use aip_protocol::errors as text;
        let Grant::Key(c) = self else { return None };
        let allowed = match role {
            ClientType::Device => c.allows_client_id(client_id),
            ClientType::Constellation => c.role != Role::Device,
        };
        if !allowed {
            return Some(text::register_not_permitted(role.as_str(), client_id));
        }
        match scope {
            Some(target) if !c.may_address(target) => Some(text::target_not_permitted(target)),
            _ => None,
        }
    }

    /// True when this grant may send tasks to (or ask about) device `target`.
    pub fn may_address(&self, target: &str) -> bool {
        match self {
            Grant::Full => true,
            Grant::Key(c) => c.may_address(target),
        }
    }

    /// True when a registration under `holder` may be replaced (stale holder, protocol.md
    /// §4.2) by one under this grant: an id held with a device credential only by a device
    /// credential allowed for that id.
    pub fn may_replace(&self, holder: &Grant, client_id: &str) -> bool {
        match holder {
            Grant::Key(h) if h.role == Role::Device => {
                matches!(self, Grant::Key(c) if c.allows_client_id(client_id))
            }
            _ => true,
        }
    }
}

/// The credentials in force.
#[derive(Debug, Default)]
pub struct KeySet {
    /// No `--api-key` and no key file: everyone gets [`Grant::Full`].
    open: bool,
    /// The lone `--api-key` (no key file): its holders get [`Grant::Full`].
    shared: Option<[u8; 32]>,
    credentials: Vec<Arc<Credential>>,
}

impl KeySet {
    /// Authentication off.
    pub fn open() -> KeySet {
        KeySet {
            open: true,
            ..KeySet::default()
        }
    }

    /// Only `--api-key` (as before key files): `None` is [`KeySet::open`].
    pub fn from_api_key(api_key: Option<&str>) -> KeySet {
        match api_key {
            None => KeySet::open(),
            Some(k) => KeySet {
                shared: Some(sha256(k)),
                ..KeySet::default()
            },
        }
    }

    /// `--api-key` (an operator credential named `--api-key`) and the entries of a key file
    /// (`text`, read from `path`, named in errors). A `token` under [`MIN_TOKEN_LEN`] is an
    /// error unless `allow_weak`.
    pub fn parse(
        api_key: Option<&str>,
        path: &Path,
        text: &str,
        allow_weak: bool,
    ) -> anyhow::Result<KeySet> {
        let file: KeyFile =
            toml::from_str(text).with_context(|| format!("--keys {}", path.display()))?;
        let mut credentials = Vec::with_capacity(file.key.len() + 1);
        if let Some(k) = api_key {
            credentials.push(Arc::new(Credential {
                name: "--api-key".to_owned(),
                role: Role::Operator,
                digest: sha256(k),
                client_ids: Vec::new(),
                targets: None,
            }));
        }
        for (i, entry) in file.key.into_iter().enumerate() {
            let name = entry.name.clone();
            let c = entry.into_credential(allow_weak).with_context(|| {
                format!("--keys {}: [[key]] #{} '{name}'", path.display(), i + 1)
            })?;
            if credentials.iter().any(|o| o.name == c.name) {
                bail!("--keys {}: two keys are named '{}'", path.display(), c.name);
            }
            if let Some(o) = credentials.iter().find(|o| o.digest == c.digest) {
                bail!(
                    "--keys {}: '{}' has the same token as '{}'",
                    path.display(),
                    c.name,
                    o.name
                );
            }
            credentials.push(Arc::new(c));
        }
        Ok(KeySet {
            open: false,
            shared: None,
            credentials,
        })
    }

    /// Reads and parses the key file at `path` ([`KeySet::parse`]).
    pub fn load(api_key: Option<&str>, path: &Path, allow_weak: bool) -> anyhow::Result<KeySet> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("--keys {}", path.display()))?;
        KeySet::parse(api_key, path, &text, allow_weak)
    }

    /// True when requests must present a token.
    pub fn required(&self) -> bool {
        !self.open
    }

    /// Number of credentials (the shared `--api-key` counts as one).
    pub fn len(&self) -> usize {
        self.credentials.len() + usize::from(self.shared.is_some())
    }

    /// True when no credential is configured.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The grant of `token` (`None`: refused). Every credential is compared, in constant
    /// time, whichever matches.
    pub fn authenticate(&self, token: Option<&str>) -> Option<Grant> {
        if self.open {
            return Some(Grant::Full);
        }
        let digest = sha256(token?);
        let mut found = None;
        if let Some(shared) = &self.shared {
            if bool::from(shared.ct_eq(&digest)) {
                found = Some(Grant::Full);
            }
        }
        for c in &self.credentials {
            if bool::from(c.digest.ct_eq(&digest)) && found.is_none() {
                found = Some(Grant::Key(Arc::clone(c)));
            }
        }
        found
    }
}

/// The SHA-256 of `token`.
pub fn sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Lower-case hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(s: &str) -> Option<[u8; 32]> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

/// A key file: `[[key]]` tables.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    #[serde(default)]
    key: Vec<KeyEntry>,
}

/// One `[[key]]`, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    name: String,
    role: String,
    token: Option<String>,
    token_sha256: Option<String>,
    #[serde(default)]
    client_ids: Vec<String>,
    targets: Option<Vec<String>>,
}

impl KeyEntry {
    fn into_credential(self, allow_weak: bool) -> anyhow::Result<Credential> {
        if self.name.trim().is_empty() {
            bail!("name must not be empty");
        }
        let Some(role) = Role::parse(&self.role) else {
            bail!("role must be operator, device or constellation");
        };
        let digest = match (&self.token, &self.token_sha256) {
            (Some(t), None) => {
                if t.chars().count() < MIN_TOKEN_LEN && !allow_weak {
                    bail!("token is shorter than {MIN_TOKEN_LEN} characters (--allow-weak-key to accept it)");
                }
                sha256(t)
            }
            (None, Some(h)) => from_hex(h)
                .context("token_sha256 must be 64 hexadecimal digits (the SHA-256 of the token)")?,
            _ => bail!("exactly one of token and token_sha256 is needed"),
        };
        match role {
            Role::Device if self.client_ids.is_empty() => {
                bail!("a device key needs client_ids (the ids it may register as; globs allowed)")
            }
            Role::Operator | Role::Constellation if !self.client_ids.is_empty() => {
                bail!("client_ids is for device keys only")
            }
            Role::Operator | Role::Device if self.targets.is_some() => {
                bail!("targets is for constellation keys only")
            }
            _ => {}
        }
        Ok(Credential {
            name: self.name,
            role,
            digest,
            client_ids: self.client_ids,
            targets: self.targets,
        })
    }
}

#[cfg(test)]
mod tests;
