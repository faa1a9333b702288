//! Per-host leaf certificates: one process-wide P-256 leaf key (never the CA
//! key), a fresh certificate per host signed by the CA, and a bounded,
//! single-flight cache of ready-to-use rustls server configs.

use crate::tls::ca::{random_serial, CertificateAuthority};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::server::{
    ClientHello, ResolvesServerCert, ServerSessionMemoryCache, StoresServerSessions,
};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

/// How long before "now" a leaf becomes valid, for clients with skewed clocks.
const BACKDATE: time::Duration = time::Duration::days(1);
/// Total validity span including the backdate: Chromium rejects leaves over 199 days.
const VALIDITY: time::Duration = time::Duration::days(199);

/// TLS sessions kept for resumption, shared by every host's config.
const SESSION_CACHE_SIZE: usize = 4096;

/// Errors minting a leaf.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("invalid host name for a certificate: {0:?}")]
    BadName(String),
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("minting task failed: {0}")]
    Join(String),
    #[error("the CA's subject ({subject}) does not come out whole in the leaves it signs (an attribute type that appears twice, such as DC=com, DC=corp, keeps one value), so no client would find their issuer: use a CA whose subject names each attribute type once")]
    IssuerMismatch { subject: String },
}

impl MintError {
    /// Stable label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            MintError::BadName(_) => "bad_name",
            MintError::Rcgen(_) | MintError::Rustls(_) => "mint_failed",
            MintError::Join(_) => "mint_task_failed",
            MintError::IssuerMismatch { .. } => "issuer_mismatch",
        }
    }
}

/// Signs leaf certificates for hosts with the CA and the shared leaf key.
pub struct LeafMinter {
    ca: Arc<CertificateAuthority>,
    leaf_key: KeyPair,
    signing_key: Arc<dyn rustls::sign::SigningKey>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    /// One store for all hosts: a store per config (rustls's default, 256
    /// sessions each) let one client fill a store for each of up to the
    /// cache's 10,000 hosts. rustls resumes a session only for the name
    /// it was made for.
    sessions: Arc<dyn StoresServerSessions>,
}

impl LeafMinter {
    /// Generates the process-wide leaf key.
    pub fn new(ca: Arc<CertificateAuthority>) -> Result<Self, MintError> {
        let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let provider = Arc::new(crate::crypto_provider());
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let signing_key = provider.key_provider.load_private_key(der)?;
        let minter = LeafMinter {
            ca,
            leaf_key,
            signing_key,
            provider,
            sessions: ServerSessionMemoryCache::new(SESSION_CACHE_SIZE),
        };
        minter.check_issuer()?;
        Ok(minter)
    }

    /// Mints one leaf and checks that its issuer is, byte for byte, the
    /// CA's subject, which clients match to find the CA. rcgen rebuilds
    /// the issuer name from the CA certificate and keeps one value per
    /// attribute type: a company CA named `DC=com, DC=corp, CN=…` (Active
    /// Directory's default) would sign leaves no client can chain, and the
    /// gateway would seem to work while every handshake failed.
    fn check_issuer(&self) -> Result<(), MintError> {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let chain = self.mint("issuer-check.kt.invalid")?;
        let (Some(leaf), Some(ca)) = (chain.first(), chain.get(1)) else {
            return Ok(());
        };
        let (Ok((_, leaf)), Ok((_, ca))) = (
            X509Certificate::from_der(leaf),
            X509Certificate::from_der(ca),
        ) else {
            // rustls and clients will judge certificates kt cannot parse.
            return Ok(());
        };
        if leaf.issuer().as_raw() == ca.subject().as_raw() {
            return Ok(());
        }
        Err(MintError::IssuerMismatch {
            subject: ca.subject().to_string(),
        })
    }

    pub fn ca(&self) -> &Arc<CertificateAuthority> {
        &self.ca
    }

    /// Mints a leaf for `host` (a DNS name or an IP literal, IPv6 with or
    /// without brackets). Returns the chain sent to clients: leaf, then CA.
    pub fn mint(&self, host: &str) -> Result<Vec<CertificateDer<'static>>, MintError> {
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let san = match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => {
                if !is_dns_name(host) {
                    return Err(MintError::BadName(host.to_string()));
                }
                SanType::DnsName(
                    host.to_ascii_lowercase()
                        .try_into()
                        .map_err(|_| MintError::BadName(host.to_string()))?,
                )
            }
        };
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        // CN is optional for modern clients; kept when it fits X.520's 64 chars.
        if host.len() <= 64 {
            dn.push(DnType::CommonName, host);
        }
        dn.push(DnType::OrganizationName, "Keeptrusts kt");
        params.distinguished_name = dn;
        params.subject_alt_names = vec![san];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = params.not_before + VALIDITY;
        let cert = params.signed_by(&self.leaf_key, self.ca.issuer())?;
        Ok(vec![cert.der().clone(), self.ca.cert_der().clone()])
    }

    /// Mints a leaf and wraps it in a rustls server config offering `alpn`.
    pub fn server_config(
        &self,
        host: &str,
        alpn: &[&[u8]],
    ) -> Result<Arc<ServerConfig>, MintError> {
        let chain = self.mint(host)?;
        let certified = Arc::new(CertifiedKey::new(chain, self.signing_key.clone()));
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(FixedCert(certified)));
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config.session_storage = self.sessions.clone();
        // rustls follows the client's suite order unless told otherwise, and
        // OpenSSL, Node and rustls clients all list AES-256-GCM/SHA-384
        // first: without this kt's leg ran the costlier cipher and key
        // schedule its provider order was meant to avoid.
        config.ignore_client_order = true;
        Ok(Arc::new(config))
    }
}

/// Hands out one certificate whatever the ClientHello says; the name was
/// already chosen from the SNI before this config was looked up.
#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Conservative check of a DNS name before it goes into a certificate.
fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'*')
        })
}

/// ALPN protocols offered to intercepted clients.
pub const CLIENT_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// Bounded cache of per-host server configs with single-flight minting.
#[derive(Clone)]
pub struct CertCache {
    minter: Arc<LeafMinter>,
    cache: moka::future::Cache<String, Arc<ServerConfig>>,
    /// How long each mint (a cache miss) took.
    pub mint_seconds: Arc<crate::metrics::Histogram>,
}

impl CertCache {
    /// `capacity` hosts at most, each kept for `ttl` (well inside the leaf's
    /// validity, so a long-running gateway re-mints before expiry).
    pub fn new(minter: Arc<LeafMinter>, capacity: u64, ttl: Duration) -> Self {
        let cache = moka::future::Cache::builder()
            .max_capacity(capacity)
            .time_to_live(ttl)
            .build();
        CertCache {
            minter,
            cache,
            mint_seconds: Arc::new(crate::metrics::Histogram::fine()),
        }
    }

    pub fn minter(&self) -> &Arc<LeafMinter> {
        &self.minter
    }

    /// The server config for `host`, minting it off the runtime threads on a
    /// miss. Concurrent misses for one host share a single mint.
    pub async fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, Arc<MintError>> {
        let key = host.to_ascii_lowercase();
        if let Some(hit) = self.cache.get(&key).await {
            return Ok(hit);
        }
        let minter = self.minter.clone();
        let name = key.clone();
        let timing = self.mint_seconds.clone();
        self.cache
            .try_get_with(key, async move {
                tokio::task::spawn_blocking(move || {
                    let t = std::time::Instant::now();
                    let minted = minter.server_config(&name, CLIENT_ALPN);
                    timing.observe_us(t.elapsed().as_micros() as u64);
                    minted
                })
                .await
                .map_err(|e| MintError::Join(e.to_string()))?
            })
            .await
    }

    /// Number of cached hosts now, counted (no waiting on cache
    /// maintenance, which `entry_count` would need to be exact).
    pub fn cached_hosts_now(&self) -> u64 {
        self.cache.iter().count() as u64
    }

    /// Number of cached hosts (after applying pending cache maintenance).
    pub async fn cached_hosts(&self) -> u64 {
        self.cache.run_pending_tasks().await;
        self.cache.entry_count()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rustls::client::ClientConnection;
    use rustls::server::ServerConnection;
    use rustls::{ClientConfig, HandshakeKind, RootCertStore};

    fn minter() -> LeafMinter {
        let dir = tempfile::tempdir().unwrap();
        let paths = crate::tls::CaPaths::in_dir(dir.path());
        let (ca, _) = CertificateAuthority::load_or_create(&paths).unwrap();
        LeafMinter::new(Arc::new(ca)).unwrap()
    }

    /// A company CA whose subject repeats an attribute type (Active
    /// Directory's `DC=com, DC=corp`) is refused at start-up: leaves it
    /// signed would name another issuer, and no client would chain them.
    /// The CA is made by openssl, as rcgen cannot write such a name.
    #[test]
    fn a_ca_whose_subject_leaves_cannot_copy_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let paths = crate::tls::CaPaths::in_dir(dir.path());
        std::fs::create_dir_all(&paths.dir).unwrap();
        let made = |subject: &str| {
            std::process::Command::new("openssl")
                .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
                .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "30"])
                .arg("-keyout")
                .arg(&paths.key)
                .arg("-out")
                .arg(&paths.cert)
                .args(["-subj", subject])
                .args(["-addext", "basicConstraints=critical,CA:TRUE"])
                .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
                .output()
        };
        let Ok(out) = made("/DC=com/DC=corp/CN=Corp Issuing CA") else {
            eprintln!("KT-TEST-NOTICE: openssl is missing; the company-CA case is not run");
            return;
        };
        assert!(out.status.success(), "{out:?}");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&paths.key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let ca = CertificateAuthority::load(&paths).unwrap();
        let err = LeafMinter::new(Arc::new(ca)).err().expect("refused");
        assert!(matches!(err, MintError::IssuerMismatch { .. }), "{err}");
        assert!(err.to_string().contains("DC=corp"), "{err}");
        // The same CA with each attribute type once is fine.
        let out = made("/DC=corp/O=Corp/CN=Corp Issuing CA").unwrap();
        assert!(out.status.success(), "{out:?}");
        std::fs::set_permissions(&paths.key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let ca = CertificateAuthority::load(&paths).unwrap();
        LeafMinter::new(Arc::new(ca)).unwrap();
    }

    fn client(minter: &LeafMinter) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(minter.ca().cert_der().clone()).unwrap();
        let config = ClientConfig::builder_with_provider(minter.provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }

    /// A full exchange in memory, until neither side has anything to send
    /// (so the client also reads the server's session tickets).
    fn handshake(
        client: &Arc<ClientConfig>,
        server: Arc<ServerConfig>,
        host: &str,
    ) -> HandshakeKind {
        let name = host.to_string().try_into().unwrap();
        let mut c = ClientConnection::new(client.clone(), name).unwrap();
        let mut s = ServerConnection::new(server).unwrap();
        while c.wants_write() || s.wants_write() {
            let mut bytes = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut bytes).unwrap();
            }
            let mut rd = &bytes[..];
            while !rd.is_empty() {
                s.read_tls(&mut rd).unwrap();
                s.process_new_packets().unwrap();
            }
            let mut bytes = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut bytes).unwrap();
            }
            let mut rd = &bytes[..];
            while !rd.is_empty() {
                c.read_tls(&mut rd).unwrap();
                c.process_new_packets().unwrap();
            }
        }
        assert!(!c.is_handshaking() && !s.is_handshaking());
        c.handshake_kind().unwrap()
    }

    #[test]
    fn configs_of_all_hosts_share_one_session_store() {
        let minter = minter();
        let a = minter.server_config("a.test", CLIENT_ALPN).unwrap();
        let b = minter.server_config("b.test", CLIENT_ALPN).unwrap();
        let store = |c: &ServerConfig| Arc::as_ptr(&c.session_storage);
        assert!(std::ptr::addr_eq(store(&a), store(&b)));
        // Resumption still works, and outlives a config: a host minted
        // again (after the cache let it go) resumes the session too.
        let client = client(&minter);
        assert_eq!(handshake(&client, a.clone(), "a.test"), HandshakeKind::Full);
        assert_eq!(handshake(&client, a, "a.test"), HandshakeKind::Resumed);
        let again = minter.server_config("a.test", CLIENT_ALPN).unwrap();
        assert_eq!(handshake(&client, again, "a.test"), HandshakeKind::Resumed);
        assert_eq!(handshake(&client, b, "b.test"), HandshakeKind::Full);
    }
}
