//! The key set in force and its reload: [`KeyStore`] swaps a whole [`KeySet`] at once (a
//! lock held only to clone or replace an `Arc`, never across `.await`), so a request sees
//! the old set or the new one, never a mix; a file that does not load leaves the old set.

use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::RwLock;
use tokio_util::sync::CancellationToken;

use super::{Grant, KeySet};
use crate::config::ServerConfig;

/// Where the key set comes from: `--api-key`, `--keys`, `--allow-weak-key`.
#[derive(Clone, Default)]
pub struct KeySource {
    api_key: Option<String>,
    file: Option<PathBuf>,
    allow_weak: bool,
}

impl KeySource {
    /// The key options of `config`.
    pub fn of(config: &ServerConfig) -> KeySource {
        KeySource {
            api_key: config.api_key.clone(),
            file: config.keys_file.clone(),
            allow_weak: config.allow_weak_key,
        }
    }

    /// The key file, if any.
    pub fn file(&self) -> Option<&std::path::Path> {
        self.file.as_deref()
    }

    /// The set these options give now (reads the key file).
    pub fn load(&self) -> anyhow::Result<KeySet> {
        match &self.file {
            None => Ok(KeySet::from_api_key(self.api_key.as_deref())),
            Some(path) => KeySet::load(self.api_key.as_deref(), path, self.allow_weak),
        }
    }
}

/// The key set in force, replaced whole on reload.
pub struct KeyStore {
    source: KeySource,
    current: RwLock<Arc<KeySet>>,
}

impl KeyStore {
    /// A store serving `set`, reloaded from `source`.
    pub fn new(source: KeySource, set: KeySet) -> KeyStore {
        KeyStore {
            source,
            current: RwLock::new(Arc::new(set)),
        }
    }

    /// The set in force.
    pub fn current(&self) -> Arc<KeySet> {
        Arc::clone(&self.current.read())
    }

    /// The grant of `token` under the set in force (`None`: refused).
    pub fn authenticate(&self, token: Option<&str>) -> Option<Grant> {
        self.current().authenticate(token)
    }

    /// Puts `set` in force.
    pub fn install(&self, set: KeySet) {
        *self.current.write() = Arc::new(set);
    }

    /// Reads the source again and puts the result in force; on error the set in force
    /// stays and the error is returned. `Ok`: the number of credentials now in force.
    pub fn reload(&self) -> anyhow::Result<usize> {
        let set = self.source.load()?;
        let n = set.len();
        self.install(set);
        Ok(n)
    }
}

/// Reloads `keys` on every SIGHUP until `stop` (Unix; elsewhere nothing); a reload that
/// fails is logged and keeps the set in force.
pub fn reload_on_sighup(keys: Arc<KeyStore>, stop: CancellationToken) {
    let file = keys
        .source
        .file()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    crate::hangup::on_sighup("the key file", stop, move || match keys.reload() {
        Ok(n) => tracing::info!(keys = %file, credentials = n, "key file reloaded"),
        Err(e) => {
            tracing::error!(cause = %format!("{e:#}"), "key file reload failed; the previous keys stay in force")
        }
    });
}
