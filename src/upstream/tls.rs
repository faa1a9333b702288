//! Verified TLS to upstreams: the OS trust store plus extra CA files.
//! Verification is always on; there is no switch to turn it off.

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Errors building the upstream trust store.
#[derive(Debug, thiserror::Error)]
pub enum TrustStoreError {
    #[error("cannot read upstream CA file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("upstream CA file {path} holds no usable certificate")]
    Empty { path: PathBuf },
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Client configs for upstream connections.
#[derive(Clone)]
pub struct UpstreamTls {
    /// Offers h2 and http/1.1: ordinary requests.
    pub any: Arc<ClientConfig>,
    /// Offers http/1.1 only: upgrades (WebSocket) need an HTTP/1.1 connection.
    pub h1_only: Arc<ClientConfig>,
    /// How many trust anchors are loaded (for the start-up log).
    pub roots: usize,
}

impl UpstreamTls {
    /// OS roots (unless `os_roots` is false, which tests use to prove that
    /// only the given files are trusted) plus every certificate in `extra`.
    pub fn new(extra: &[PathBuf], os_roots: bool) -> Result<Self, TrustStoreError> {
        let mut store = RootCertStore::empty();
        if os_roots {
            let native = rustls_native_certs::load_native_certs();
            for err in &native.errors {
                tracing::debug!(error = %err, "skipping an unreadable OS root certificate");
            }
            let (added, ignored) = store.add_parsable_certificates(native.certs);
            if ignored > 0 {
                tracing::debug!(ignored, "skipped unparsable OS root certificates");
            }
            if added == 0 {
                tracing::warn!(
                    "no OS root certificates found; only --upstream-ca files are trusted"
                );
            }
        }
        for path in extra {
            for cert in read_pem_certs(path)? {
                store.add(cert)?;
            }
        }
        let roots = store.len();
        let store = Arc::new(store);
        let build = |alpn: &[&[u8]]| -> Result<Arc<ClientConfig>, TrustStoreError> {
            let provider = Arc::new(crate::crypto_provider());
            let mut cfg = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .with_root_certificates(store.clone())
                .with_no_client_auth();
            cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Ok(Arc::new(cfg))
        };
        Ok(UpstreamTls {
            any: build(&[b"h2", b"http/1.1"])?,
            h1_only: build(&[b"http/1.1"])?,
            roots,
        })
    }
}

fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TrustStoreError> {
    let data = std::fs::read(path).map_err(|e| TrustStoreError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let certs = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TrustStoreError::File {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        // Not PEM: one DER certificate (`.cer`, what kt writes beside its
        // own CA for Windows) is as good.
        if x509_parser::parse_x509_certificate(&data).is_ok_and(|(rest, _)| rest.is_empty()) {
            return Ok(vec![CertificateDer::from(data)]);
        }
        return Err(TrustStoreError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A DER certificate file (`.cer`) is read as one certificate, not
    /// called empty; bytes that are neither PEM nor DER still are.
    #[test]
    fn a_der_ca_file_is_read_too() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["ca.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = dir.path().join("ca.cer");
        std::fs::write(&der, cert.der()).unwrap();
        let tls = UpstreamTls::new(&[der], false).unwrap();
        assert_eq!(tls.roots, 1);
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, b"not a certificate\n").unwrap();
        let err = UpstreamTls::new(&[junk], false).err().unwrap();
        assert!(matches!(err, TrustStoreError::Empty { .. }), "{err}");
    }
}
