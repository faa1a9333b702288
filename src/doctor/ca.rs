//! The kt CA as clients see it: the certificate file (present, parsable,
//! in date), the OS trust bundle, the NSS database Chromium-based apps
//! read, and the JDK's `cacerts`.

use super::{Check, Status};
use crate::tls::ca::CA_COMMON_NAME;
use crate::tls::trust::Jdk;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use std::path::{Path, PathBuf};

/// The system bundles clients read, by distribution family.
const OS_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt", // Debian, Ubuntu, Alpine
    "/etc/pki/tls/certs/ca-bundle.crt",   // Fedora, RHEL
    "/etc/ca-certificates/extracted/tls-ca-bundle.pem", // Arch
    "/var/lib/ca-certificates/ca-bundle.pem", // openSUSE, SLES
];
/// Longest `keytool` may take to list the JDK's store.
const JDK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);
/// Certificates closer than this to expiry get a warning.
const EXPIRY_WARNING_DAYS: i64 = 30;

/// The CA certificate as loaded for the other checks.
pub struct LoadedCa {
    pub der: CertificateDer<'static>,
}

/// Checks the CA certificate file; returns it when usable.
pub fn file_check(cert: &Path) -> (Check, Option<LoadedCa>) {
    let fix = "kt ca init (creates the CA if absent; the gateway also creates it on first start)";
    let pem = match std::fs::read(cert) {
        Ok(p) => p,
        Err(e) => {
            let detail = if e.kind() == std::io::ErrorKind::NotFound {
                format!("no CA certificate at {}", cert.display())
            } else {
                format!("cannot read {}: {e}", cert.display())
            };
            return (
                Check::new("ca_file", Status::Fail, detail, Some(fix.into())),
                None,
            );
        }
    };
    let Some(der) = CertificateDer::pem_slice_iter(&pem)
        .next()
        .and_then(Result::ok)
    else {
        return (
            Check::new(
                "ca_file",
                Status::Fail,
                format!("{} holds no PEM certificate", cert.display()),
                Some(format!("move it away and run {fix}")),
            ),
            None,
        );
    };
    let parsed = x509_parser::parse_x509_certificate(&der);
    let Ok((_, x509)) = parsed else {
        return (
            Check::new(
                "ca_file",
                Status::Fail,
                format!("{} is not a valid X.509 certificate", cert.display()),
                Some(format!("move it away and run {fix}")),
            ),
            None,
        );
    };
    let validity = x509.validity();
    let now = time::OffsetDateTime::now_utc();
    let not_before = validity.not_before.to_datetime();
    let not_after = validity.not_after.to_datetime();
    let renew = format!(
        "move {} (and its key) away, run `kt ca init`, then `sudo kt ca install` again",
        cert.display()
    );
    let check = if now < not_before {
        Check::new(
            "ca_file",
            Status::Fail,
            format!(
                "{} is not valid before {not_before} (is the clock right?)",
                cert.display()
            ),
            Some("check the system clock".into()),
        )
    } else if now > not_after {
        Check::new(
            "ca_file",
            Status::Fail,
            format!("{} expired on {not_after}", cert.display()),
            Some(renew),
        )
    } else if (not_after - now).whole_days() < EXPIRY_WARNING_DAYS {
        Check::new(
            "ca_file",
            Status::Warn,
            format!("{} expires on {not_after}", cert.display()),
            Some(renew),
        )
    } else {
        Check::new(
            "ca_file",
            Status::Ok,
            format!(
                "{} ({}), valid until {}",
                cert.display(),
                x509.subject(),
                not_after.date()
            ),
            None,
        )
    };
    let usable = check.status != Status::Fail;
    (check, usable.then_some(LoadedCa { der }))
}

/// Is the CA in the OS trust bundle? `bundle` overrides the system's.
pub fn os_trust_check(ca: &LoadedCa, bundle: Option<&Path>) -> Check {
    let install = "sudo kt ca install (or see the commands first: kt ca install --dry-run)";
    if bundle.is_none() && cfg!(target_os = "macos") {
        return Check::new(
            "ca_os_trust",
            Status::Warn,
            "cannot read the macOS keychain trust settings from here".into(),
            Some(format!(
                "check with: security find-certificate -c \"{CA_COMMON_NAME}\" /Library/Keychains/System.keychain; install with {install}"
            )),
        );
    }
    if bundle.is_none() && cfg!(windows) {
        return Check::new(
            "ca_os_trust",
            Status::Warn,
            "cannot read the Windows certificate store from here".into(),
            Some(format!(
                "check with: certutil -store root \"{CA_COMMON_NAME}\"; install with {install}"
            )),
        );
    }
    let bundles: Vec<PathBuf> = match bundle {
        Some(b) => vec![b.to_path_buf()],
        None => OS_BUNDLES
            .iter()
            .map(PathBuf::from)
            .filter(|p| p.is_file())
            .collect(),
    };
    if bundles.is_empty() {
        return Check::new(
            "ca_os_trust",
            Status::Warn,
            format!(
                "no system CA bundle found (looked for {})",
                OS_BUNDLES.join(", ")
            ),
            Some(format!(
                "install your distribution's ca-certificates package, then {install}"
            )),
        );
    }
    let mut missing = Vec::new();
    for b in &bundles {
        match bundle_contains(b, &ca.der) {
            Ok(true) => {}
            Ok(false) => missing.push(b.display().to_string()),
            Err(e) => {
                return Check::new(
                    "ca_os_trust",
                    Status::Fail,
                    format!("cannot read {}: {e}", b.display()),
                    None,
                )
            }
        }
    }
    if missing.is_empty() {
        let names: Vec<String> = bundles.iter().map(|b| b.display().to_string()).collect();
        Check::new(
            "ca_os_trust",
            Status::Ok,
            format!("trusted by the OS bundle ({})", names.join(", ")),
            None,
        )
    } else {
        Check::new(
            "ca_os_trust",
            Status::Fail,
            format!(
                "the kt CA is not in {}: curl, Python, Git and VS Code on Linux will reject intercepted hosts",
                missing.join(", ")
            ),
            Some(install.into()),
        )
    }
}

fn bundle_contains(path: &Path, ca: &CertificateDer<'_>) -> std::io::Result<bool> {
    let data = std::fs::read(path)?;
    Ok(CertificateDer::pem_slice_iter(&data)
        .filter_map(Result::ok)
        .any(|c| c.as_ref() == ca.as_ref()))
}

/// Is the CA in `~/.pki/nssdb` (Chromium, Electron apps)? `None` when
/// there is no such database. With `ca`, the certificate stored under the
/// kt CA's name must be that one: after a new CA (another data dir, a
/// deleted one) the database can still hold an earlier one by that name,
/// which Chromium then checks kt's leaves against in vain.
pub fn nss_check(home: Option<&Path>, ca: Option<&LoadedCa>) -> Option<Check> {
    let db = home?.join(".pki/nssdb");
    if !db.is_dir() {
        return None;
    }
    let Some(certutil) = super::which("certutil") else {
        return Some(Check::new(
            "ca_nss_trust",
            Status::Warn,
            format!(
                "{} exists but NSS certutil is not installed, so it cannot be checked",
                db.display()
            ),
            Some(
                "install libnss3-tools (Debian/Ubuntu) or nss-tools (Fedora), then: kt ca install"
                    .into(),
            ),
        ));
    };
    let out = std::process::Command::new(certutil)
        .arg("-d")
        .arg(format!("sql:{}", db.display()))
        .args(["-L", "-a", "-n", CA_COMMON_NAME])
        .output();
    let install = "kt ca install (adds it to every NSS database found, replacing an earlier one)";
    Some(match out {
        Ok(o) if o.status.success() => {
            let stored: Vec<CertificateDer<'_>> = CertificateDer::pem_slice_iter(&o.stdout)
                .filter_map(Result::ok)
                .collect();
            match ca {
                Some(ca) if !stored.iter().any(|c| c.as_ref() == ca.der.as_ref()) => Check::new(
                    "ca_nss_trust",
                    Status::Fail,
                    format!(
                        "{} holds another certificate named \"{CA_COMMON_NAME}\" (an earlier kt CA), not this one: Chromium and Electron apps will reject intercepted hosts",
                        db.display()
                    ),
                    Some(install.into()),
                ),
                _ => Check::new(
                    "ca_nss_trust",
                    Status::Ok,
                    format!("trusted in {}", db.display()),
                    None,
                ),
            }
        }
        Ok(_) => Check::new(
            "ca_nss_trust",
            Status::Fail,
            format!(
                "the kt CA is not in {}: Chromium and Electron apps will reject intercepted hosts",
                db.display()
            ),
            Some(install.into()),
        ),
        Err(e) => Check::new(
            "ca_nss_trust",
            Status::Warn,
            format!("cannot run certutil: {e}"),
            None,
        ),
    })
}

/// Does the JDK's `cacerts` hold the CA? JVM apps that use the proxy
/// (`java.net.http`, Gradle, Maven) read only that store. `None` without a
/// JDK. A warning at worst: many machines have a JDK whose apps never go
/// through the proxy.
pub async fn jdk_check(jdk: Option<&Jdk>, ca: Option<&LoadedCa>) -> Option<Check> {
    let (jdk, ca) = (jdk?, ca?);
    let store = match &jdk.cacerts {
        Some(path) => format!("the JDK's cacerts ({})", path.display()),
        None => "the JDK's cacerts".to_string(),
    };
    let mut list = std::process::Command::new(&jdk.keytool);
    list.args(["-list", "-rfc", "-storepass", "changeit"]);
    match &jdk.cacerts {
        Some(path) => list.arg("-keystore").arg(path),
        None => list.arg("-cacerts"),
    };
    list.stdin(std::process::Stdio::null());
    let warn =
        |detail: String, fix: Option<String>| Check::new("ca_jdk_trust", Status::Warn, detail, fix);
    // A JVM start: bounded like the Node probe, so a wedged JDK cannot
    // hang the checklist.
    let listed = tokio::time::timeout(
        JDK_TIMEOUT,
        tokio::task::spawn_blocking(move || list.output()),
    )
    .await;
    let Ok(Ok(out)) = listed else {
        let secs = JDK_TIMEOUT.as_secs();
        return Some(warn(
            format!("keytool did not list {store} within {secs} s"),
            None,
        ));
    };
    Some(match out {
        Ok(o) if o.status.success() => {
            let trusted = CertificateDer::pem_slice_iter(&o.stdout)
                .filter_map(Result::ok)
                .any(|c| c.as_ref() == ca.der.as_ref());
            if trusted {
                Check::new(
                    "ca_jdk_trust",
                    Status::Ok,
                    format!("trusted in {store}"),
                    None,
                )
            } else {
                let fix = if jdk.follows_system {
                    "sudo kt ca install (this JDK's store is rebuilt from the system store)"
                } else {
                    "kt ca install prints the keytool line that imports it"
                };
                warn(
                    format!("the kt CA is not in {store}: JVM apps that use the proxy (java.net.http, Gradle, Maven) will reject intercepted hosts"),
                    Some(fix.into()),
                )
            }
        }
        Ok(o) => {
            let why = String::from_utf8_lossy(&o.stdout);
            let why = why
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no reason given");
            warn(format!("keytool cannot read {store}: {}", why.trim()), None)
        }
        Err(e) => warn(format!("cannot run {}: {e}", jdk.keytool), None),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{CaPaths, CertificateAuthority};

    #[test]
    fn a_fresh_ca_passes_and_bundles_are_searched_for_it() {
        crate::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let paths = CaPaths::in_dir(dir.path().join("certs"));
        let (ca, _) = CertificateAuthority::load_or_create(&paths).unwrap();
        let (check, loaded) = file_check(&paths.cert);
        assert_eq!(check.status, Status::Ok, "{check:?}");
        let loaded = loaded.unwrap();

        let bundle = dir.path().join("bundle.crt");
        std::fs::write(&bundle, "").unwrap();
        let c = os_trust_check(&loaded, Some(&bundle));
        assert_eq!(c.status, Status::Fail);
        assert!(c.fix.unwrap().contains("kt ca install"));
        std::fs::write(&bundle, format!("# other roots\n{}", ca.cert_pem())).unwrap();
        assert_eq!(os_trust_check(&loaded, Some(&bundle)).status, Status::Ok);
    }

    #[test]
    fn a_missing_or_garbled_ca_fails_with_the_init_fix() {
        let dir = tempfile::tempdir().unwrap();
        let (c, ca) = file_check(&dir.path().join("none.pem"));
        assert_eq!(c.status, Status::Fail);
        assert!(ca.is_none() && c.fix.unwrap().contains("kt ca init"));
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "hello").unwrap();
        assert_eq!(file_check(&junk).0.status, Status::Fail);
        assert!(
            nss_check(Some(dir.path()), None).is_none(),
            "no nssdb, no check"
        );
    }
}
