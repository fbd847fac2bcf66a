//! TLS for the client side (`wss://` for the device, `https://` for the CLI): which
//! certificate authorities a client trusts. One rule: the system's roots, or — when an
//! operator names a CA file — only the certificates in that file (as `curl --cacert`).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

/// Why no TLS configuration could be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read CA certificate file {path}: {cause}")]
    Read { path: String, cause: String },
    #[error("{path} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)")]
    Empty { path: String },
    #[error("{path}: invalid certificate: {cause}")]
    Invalid { path: String, cause: String },
    #[error("no system root certificates could be loaded ({0}); name a CA file with --ca-cert")]
    NoSystemRoots(String),
    #[error("TLS setup failed: {0}")]
    Setup(String),
}

/// The certificates of a PEM file (one or more `CERTIFICATE` blocks).
pub fn load_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| TlsError::Read {
        path: shown.clone(),
        cause: e.to_string(),
    })?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid {
            path: shown.clone(),
            cause: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty { path: shown });
    }
    Ok(certs)
}

/// A client configuration trusting the system roots, or only the CAs in `ca_cert`.
pub fn client_config(ca_cert: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca_cert {
        Some(path) => {
            for cert in load_pem_certs(path)? {
                roots.add(cert).map_err(|e| TlsError::Invalid {
                    path: path.display().to_string(),
                    cause: e.to_string(),
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map(ToString::to_string)
                    .unwrap_or_else(|| "none found".into());
                return Err(TlsError::NoSystemRoots(why));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_that_is_missing_or_holds_no_certificate_is_a_clear_error() {
        let missing = client_config(Some(Path::new("/nonexistent/ca.pem")));
        assert!(matches!(missing, Err(TlsError::Read { .. })), "{missing:?}");
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let err = client_config(Some(&empty)).expect_err("no certificate");
        assert!(
            err.to_string().contains("holds no PEM certificate"),
            "{err}"
        );
    }
}
