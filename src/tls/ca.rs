//! The local certificate authority: created on first use, stored under the
//! CA folder with the private key readable by the owner only.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// File names inside the CA folder.
const CERT_FILE: &str = "kt-ca.pem";
const KEY_FILE: &str = "kt-ca-key.pem";
const DER_FILE: &str = "kt-ca.cer";
/// Held (an OS file lock) while a CA is created, so two first starts at
/// once make one CA, not a key of one and a certificate of the other.
const CREATE_LOCK_FILE: &str = ".kt-ca.lock";

/// Common name of CAs this tool creates; also the nickname used in trust stores.
pub const CA_COMMON_NAME: &str = "Keeptrusts kt local CA";

/// Errors loading or creating the CA.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot create CA folder {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a usable CA file: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "CA key {path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}`"
    )]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("the CA key {key} does not belong to the certificate {cert}; put the matching pair there (or move both away to create a new CA)")]
    KeyMismatch { key: PathBuf, cert: PathBuf },
    #[error("no CA in {dir}; run `kt ca init`")]
    Missing { dir: PathBuf },
    #[error("cannot generate CA: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Where the CA's files live.
#[derive(Debug, Clone)]
pub struct CaPaths {
    pub dir: PathBuf,
    /// PEM certificate: what users install and clients trust.
    pub cert: PathBuf,
    /// PEM PKCS#8 private key, mode 0600.
    pub key: PathBuf,
    /// DER copy of the certificate (`.cer`) for Windows tools.
    pub der: PathBuf,
}

impl CaPaths {
    /// The standard file layout inside `dir`.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        CaPaths {
            cert: dir.join(CERT_FILE),
            key: dir.join(KEY_FILE),
            der: dir.join(DER_FILE),
            dir,
        }
    }

    /// True when both the certificate and the key exist.
    pub fn exists(&self) -> bool {
        self.cert.is_file() && self.key.is_file()
    }

    /// Refuses a certificate without its key, or a key without its
    /// certificate: kt does not create a new half for a lone file.
    pub fn check_not_lone(&self) -> Result<(), CaError> {
        if self.cert.exists() == self.key.exists() {
            return Ok(());
        }
        let present = if self.cert.exists() {
            &self.cert
        } else {
            &self.key
        };
        Err(CaError::Invalid {
            path: present.clone(),
            reason: "the CA certificate and key must both exist; remove the lone file to create a new CA".into(),
        })
    }
}

/// A loaded CA, able to sign leaf certificates.
pub struct CertificateAuthority {
    paths: CaPaths,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("CertificateAuthority")
            .field("cert", &self.paths.cert)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Loads the CA from `paths`, creating it first if absent.
    /// Returns the CA and whether it was created now.
    pub fn load_or_create(paths: &CaPaths) -> Result<(Self, bool), CaError> {
        if paths.exists() {
            return Ok((Self::load(paths)?, false));
        }
        create_private_dir(&paths.dir)?;
        let _lock = lock_creation(&paths.dir)?;
        // Another process may have created it while this one waited.
        if paths.exists() {
            return Ok((Self::load(paths)?, false));
        }
        paths.check_not_lone()?;
        Self::create(paths)?;
        Ok((Self::load(paths)?, true))
    }

    /// Loads an existing CA.
    pub fn load(paths: &CaPaths) -> Result<Self, CaError> {
        if !paths.exists() {
            return Err(CaError::Missing {
                dir: paths.dir.clone(),
            });
        }
        check_key_mode(&paths.key)?;
        let cert_pem = read_to_string(&paths.cert)?;
        // The certificate file is public: served at `/_kt/ca.pem`, copied
        // into trust stores (mode 0644), named in NODE_EXTRA_CA_CERTS. A
        // key+certificate bundle (mitmproxy's `mitmproxy-ca.pem` layout)
        // dropped in its place would hand the CA's key to anyone.
        if cert_pem.contains("PRIVATE KEY-----") {
            return Err(CaError::Invalid {
                path: paths.cert.clone(),
                reason: format!(
                    "it holds a private key, and this file is public (served to clients and installed in trust stores): keep only the certificate in it and the key in {} (mode 0600)",
                    paths.key.display()
                ),
            });
        }
        let key_pem = read_to_string(&paths.key)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| CaError::Invalid {
            path: paths.key.clone(),
            reason: e.to_string(),
        })?;
        let cert_der = first_pem_cert(&cert_pem).ok_or_else(|| CaError::Invalid {
            path: paths.cert.clone(),
            reason: "no CERTIFICATE block".into(),
        })?;
        if !key_matches_cert(&key, &cert_der) {
            return Err(CaError::KeyMismatch {
                key: paths.key.clone(),
                cert: paths.cert.clone(),
            });
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(|e| CaError::Invalid {
            path: paths.cert.clone(),
            reason: e.to_string(),
        })?;
        refresh_der(paths, &cert_der);
        Ok(CertificateAuthority {
            paths: paths.clone(),
            cert_pem,
            cert_der,
            issuer,
        })
    }

    fn create(paths: &CaPaths) -> Result<(), CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, CA_COMMON_NAME);
        dn.push(DnType::OrganizationName, "Keeptrusts");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(2);
        params.not_after = now + Duration::days(3650);
        let cert = params.self_signed(&key)?;

        // The key goes first: a certificate without its key is never left behind
        // by a crash, and the key file is created 0600 rather than chmod-ed later.
        write_atomic(&paths.key, key.serialize_pem().as_bytes(), true)?;
        write_atomic(&paths.cert, cert.pem().as_bytes(), false)?;
        write_atomic(&paths.der, cert.der(), false)?;
        Ok(())
    }

    pub fn paths(&self) -> &CaPaths {
        &self.paths
    }

    /// The CA certificate as PEM (what `/_kt/ca.pem` serves).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    pub(crate) fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }
}

/// A random, positive 128-bit serial. Set explicitly: rcgen would otherwise
/// derive it from the public key, and every leaf shares one key.
pub(crate) fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x40; // keep the full width so the DER length is stable
    SerialNumber::from_slice(&bytes)
}

/// Keeps the DER copy (Windows' `certutil -addstore` installs it) the
/// PEM's certificate: the PEM may have been replaced (a company CA put in,
/// as certs/README.md allows) or the copy lost. A folder kt cannot write (a
/// mounted Secret) is left as it is.
fn refresh_der(paths: &CaPaths, cert: &CertificateDer<'_>) {
    if fs::read(&paths.der).is_ok_and(|der| der == cert.as_ref()) {
        return;
    }
    match write_atomic(&paths.der, cert, false) {
        Ok(()) => {
            tracing::info!(path = %paths.der.display(), "wrote the CA certificate's DER copy")
        }
        Err(e) => tracing::warn!("{e}; the DER copy of the CA certificate is out of date"),
    }
}

/// Whether `key` is the private half of the certificate's public key: a
/// mismatch would sign every leaf with a signature no client accepts.
fn key_matches_cert(key: &KeyPair, cert: &CertificateDer<'_>) -> bool {
    x509_parser::parse_x509_certificate(cert).is_ok_and(|(_, x509)| {
        x509.public_key().subject_public_key.data.as_ref() == key.public_key_raw()
    })
}

/// Takes the CA folder's creation lock, waiting for another creator. `None`
/// where the file system has no locks (some network mounts).
fn lock_creation(dir: &Path) -> Result<Option<fs::File>, CaError> {
    let path = dir.join(CREATE_LOCK_FILE);
    let err = |source| CaError::Write {
        path: path.clone(),
        source,
    };
    let file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(err)?;
    match file.lock() {
        Ok(()) => Ok(Some(file)),
        Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
            tracing::warn!(path = %path.display(), "the file system cannot lock the CA folder: make sure only one kt creates the CA");
            Ok(None)
        }
        Err(e) => Err(err(e)),
    }
}

fn read_to_string(path: &Path) -> Result<String, CaError> {
    fs::read_to_string(path).map_err(|source| CaError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn first_pem_cert(pem: &str) -> Option<CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .and_then(Result::ok)
}

#[cfg(unix)]
fn check_key_mode(path: &Path) -> Result<(), CaError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::metadata(path).map_err(|source| CaError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(CaError::KeyPermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_key_mode(_path: &Path) -> Result<(), CaError> {
    Ok(())
}

fn create_private_dir(dir: &Path) -> Result<(), CaError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|source| CaError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })
}

/// Writes `data` to a temporary file created with the final mode, then renames
/// it into place, so readers never see a partial file.
fn write_atomic(path: &Path, data: &[u8], private: bool) -> Result<(), CaError> {
    // Unique per writer: two threads may refresh the DER copy at once.
    let unique = format!("tmp{}-{:08x}", std::process::id(), rand::random::<u32>());
    let tmp = path.with_extension(unique);
    let err = |source| CaError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = opts.open(&tmp).map_err(err)?;
    file.write_all(data).map_err(err)?;
    file.sync_all().map_err(err)?;
    drop(file);
    fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_key_of_another_ca_is_refused_naming_both_files() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (CaPaths::in_dir(a.path()), CaPaths::in_dir(b.path()));
        CertificateAuthority::load_or_create(&a).unwrap();
        CertificateAuthority::load_or_create(&b).unwrap();
        fs::copy(&b.key, &a.key).unwrap();
        let err = CertificateAuthority::load(&a).unwrap_err();
        assert!(matches!(err, CaError::KeyMismatch { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(a.key.to_str().unwrap()), "{msg}");
        assert!(msg.contains(a.cert.to_str().unwrap()), "{msg}");
        assert!(CertificateAuthority::load_or_create(&a).is_err());
    }

    /// A key+certificate bundle put in the public certificate file is
    /// refused: the gateway would serve and install the CA's key.
    #[test]
    fn a_certificate_file_holding_the_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let paths = CaPaths::in_dir(dir.path());
        CertificateAuthority::load_or_create(&paths).unwrap();
        let bundle =
            fs::read_to_string(&paths.key).unwrap() + &fs::read_to_string(&paths.cert).unwrap();
        fs::write(&paths.cert, bundle).unwrap();
        let err = CertificateAuthority::load(&paths).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("holds a private key"), "{msg}");
        assert!(msg.contains(paths.cert.to_str().unwrap()), "{msg}");
        assert!(CertificateAuthority::load_or_create(&paths).is_err());
    }

    #[test]
    fn the_der_copy_follows_the_pem() {
        let dir = tempfile::tempdir().unwrap();
        let paths = CaPaths::in_dir(dir.path());
        let (ca, _) = CertificateAuthority::load_or_create(&paths).unwrap();
        assert_eq!(fs::read(&paths.der).unwrap(), ca.cert_der().as_ref());
        // Lost: written again at the next load.
        fs::remove_file(&paths.der).unwrap();
        CertificateAuthority::load(&paths).unwrap();
        assert_eq!(fs::read(&paths.der).unwrap(), ca.cert_der().as_ref());
        // Another CA put in its place (a company CA): the copy follows.
        let other = tempfile::tempdir().unwrap();
        let other = CaPaths::in_dir(other.path());
        let (company, _) = CertificateAuthority::load_or_create(&other).unwrap();
        fs::copy(&other.cert, &paths.cert).unwrap();
        fs::copy(&other.key, &paths.key).unwrap();
        CertificateAuthority::load(&paths).unwrap();
        assert_eq!(fs::read(&paths.der).unwrap(), company.cert_der().as_ref());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&paths.der).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o644);
        }
    }

    /// Two first starts at once (a gateway and `kt ca init`, say): one
    /// creates the CA, the others load that one.
    #[test]
    fn concurrent_creators_end_with_one_matching_pair() {
        let dir = tempfile::tempdir().unwrap();
        let paths = CaPaths::in_dir(dir.path().join("certs"));
        let start = std::sync::Barrier::new(8);
        let results: Vec<_> = std::thread::scope(|s| {
            let creators: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        start.wait();
                        let (ca, created) = CertificateAuthority::load_or_create(&paths).unwrap();
                        (ca.cert_pem().to_string(), created)
                    })
                })
                .collect();
            creators.into_iter().map(|c| c.join().unwrap()).collect()
        });
        assert_eq!(results.iter().filter(|(_, created)| *created).count(), 1);
        let loaded = CertificateAuthority::load(&paths).unwrap();
        assert!(results.iter().all(|(pem, _)| pem == loaded.cert_pem()));
    }
}
