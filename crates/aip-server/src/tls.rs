//! TLS on the listener (`--tls-cert`, `--tls-key`): HTTPS and WSS on the one port, served
//! by the one accept loop (`web/serve.rs`).
//!
//! The certificate is read from PEM files at start (an unreadable or mismatched file is an
//! error naming it) and again on [`TlsFiles::reload`] (SIGHUP): connections already open
//! keep the session they negotiated, new handshakes get the new certificate, and a reload
//! that fails keeps the old one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use parking_lot::RwLock;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

/// Where the certificate chain and its private key are (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The server's certificate, reloadable.
#[derive(Debug)]
pub struct TlsFiles {
    paths: TlsPaths,
    current: RwLock<Arc<CertifiedKey>>,
}

impl TlsFiles {
    /// Reads both files; the error names the file at fault.
    pub fn load(paths: TlsPaths) -> anyhow::Result<Arc<Self>> {
        let current = RwLock::new(Arc::new(certified_key(&paths)?));
        Ok(Arc::new(Self { paths, current }))
    }

    /// Reads the files again; on error the certificate in use stays.
    pub fn reload(&self) -> anyhow::Result<()> {
        let key = certified_key(&self.paths)?;
        *self.current.write() = Arc::new(key);
        Ok(())
    }

    /// A rustls acceptor that resolves to the current certificate at every handshake.
    pub fn acceptor(self: &Arc<Self>) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }
}

impl ResolvesServerCert for TlsFiles {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().clone())
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn certified_key(paths: &TlsPaths) -> anyhow::Result<CertifiedKey> {
    let certs = read_certs(&paths.cert)?;
    let key = PrivateKeyDer::from_pem_file(&paths.key).map_err(|e| {
        anyhow::anyhow!(
            "--tls-key {}: no readable PEM private key ({e})",
            paths.key.display()
        )
    })?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .with_context(|| format!("--tls-key {}: unusable private key", paths.key.display()))?;
    let certified = CertifiedKey::new(certs, signing);
    certified.keys_match().with_context(|| {
        format!(
            "--tls-key {} does not belong to the certificate in --tls-cert {}",
            paths.key.display(),
            paths.cert.display()
        )
    })?;
    Ok(certified)
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("--tls-cert {}: {e}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("--tls-cert {}: no PEM certificate in it", path.display());
    }
    Ok(certs)
}

/// Reloads the certificate on every SIGHUP until `stop` (Unix; elsewhere nothing).
pub fn reload_on_sighup(files: Arc<TlsFiles>, stop: CancellationToken) {
    crate::hangup::on_sighup("the TLS certificate", stop, move || match files.reload() {
        Ok(()) => tracing::info!(cert = %files.paths.cert.display(), "TLS certificate reloaded"),
        Err(e) => {
            tracing::error!(cause = %format!("{e:#}"), "TLS certificate reload failed; the previous one stays in use")
        }
    });
}
