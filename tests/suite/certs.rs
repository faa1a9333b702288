//! The local CA and the leaves minted from it, checked by parsing them.
#![allow(clippy::unwrap_used)]

use crate::common::client;
use crate::common::origin::{Alpn, Origin};
use crate::common::{connect_to, TestCa, TestGateway};
use keeptrusts::proxy::InterceptMode;
use keeptrusts::tls::{CaPaths, CertificateAuthority, LeafMinter};
use std::collections::HashSet;
use std::sync::Arc;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::*;

fn new_minter() -> (tempfile::TempDir, LeafMinter) {
    keeptrusts::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let (ca, created) = CertificateAuthority::load_or_create(&CaPaths::in_dir(dir.path())).unwrap();
    assert!(created);
    (dir, LeafMinter::new(Arc::new(ca)).unwrap())
}

fn ext<'a>(
    cert: &'a X509Certificate<'a>,
    f: impl Fn(&ParsedExtension) -> bool,
) -> Option<&'a X509Extension<'a>> {
    cert.extensions().iter().find(|e| f(e.parsed_extension()))
}

#[test]
fn ca_is_a_critical_p256_ca_with_a_private_key_file() {
    let (dir, minter) = new_minter();
    let der = minter.ca().cert_der().clone();
    let (_, ca) = X509Certificate::from_der(&der).unwrap();
    let bc = ext(&ca, |p| matches!(p, ParsedExtension::BasicConstraints(_))).unwrap();
    assert!(bc.critical, "basicConstraints must be critical");
    assert!(ca.is_ca());
    let ku = ca.key_usage().unwrap().unwrap();
    assert!(ku.value.key_cert_sign() && ku.value.crl_sign());
    assert!(ext(&ca, |p| matches!(
        p,
        ParsedExtension::SubjectKeyIdentifier(_)
    ))
    .is_some());
    let years = (ca.validity().not_after.timestamp() - ca.validity().not_before.timestamp())
        / (365 * 86400);
    assert!((9..=10).contains(&years), "{years} years");
    assert_eq!(
        ca.public_key().algorithm.algorithm.to_id_string(),
        "1.2.840.10045.2.1",
        "EC public key"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("kt-ca-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // Loading again gives the same CA (idempotent), not a new one.
    let (again, created) =
        CertificateAuthority::load_or_create(&CaPaths::in_dir(dir.path())).unwrap();
    assert!(!created);
    assert_eq!(again.cert_der(), minter.ca().cert_der());
}

#[test]
fn leaf_fields_follow_every_clients_rules() {
    let (_dir, minter) = new_minter();
    let ca_der = minter.ca().cert_der().clone();
    let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
    let ca_ski = match ext(&ca, |p| {
        matches!(p, ParsedExtension::SubjectKeyIdentifier(_))
    })
    .unwrap()
    .parsed_extension()
    {
        ParsedExtension::SubjectKeyIdentifier(k) => k.0.to_vec(),
        _ => unreachable!(),
    };
    let mut serials = HashSet::new();
    for (host, expect) in [
        ("api.openai.com", "dns"),
        ("127.0.0.1", "ip4"),
        ("[::1]", "ip6"),
        ("::1", "ip6"),
    ] {
        let chain = minter.mint(host).unwrap();
        assert_eq!(chain.len(), 2, "leaf + CA");
        assert_eq!(chain[1], ca_der);
        let (_, leaf) = X509Certificate::from_der(&chain[0]).unwrap();
        let san = leaf.subject_alternative_name().unwrap().unwrap();
        match (expect, &san.value.general_names[..]) {
            ("dns", [GeneralName::DNSName(n)]) => assert_eq!(*n, host),
            ("ip4", [GeneralName::IPAddress(ip)]) => assert_eq!(*ip, &[127, 0, 0, 1]),
            ("ip6", [GeneralName::IPAddress(ip)]) => assert_eq!(ip.len(), 16),
            other => panic!("{host}: unexpected SAN {other:?}"),
        }
        let eku = leaf.extended_key_usage().unwrap().unwrap();
        assert!(eku.value.server_auth);
        assert!(!leaf.is_ca());
        let aki = match ext(&leaf, |p| {
            matches!(p, ParsedExtension::AuthorityKeyIdentifier(_))
        })
        .unwrap()
        .parsed_extension()
        {
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().unwrap().0.to_vec()
            }
            _ => unreachable!(),
        };
        assert_eq!(aki, ca_ski, "AKI must equal the CA's SKI");
        let serial = leaf.raw_serial().to_vec();
        assert!(serial.len() >= 8, "serial of at least 64 bits");
        assert!(serials.insert(serial), "serials must be unique");
        let v = leaf.validity();
        let span_days = (v.not_after.timestamp() - v.not_before.timestamp()) / 86400;
        assert!(span_days <= 199, "validity {span_days} days");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!(v.not_before.timestamp() < now - 3600, "backdated");
        assert!(v.not_after.timestamp() > now + 190 * 86400);
        assert_ne!(
            leaf.public_key().raw,
            ca.public_key().raw,
            "leaf key is not the CA key"
        );
        assert!(leaf.verify_signature(Some(ca.public_key())).is_ok());
    }
    // Same host twice: still a fresh serial.
    let a = minter.mint("x.test").unwrap();
    let b = minter.mint("x.test").unwrap();
    assert_ne!(
        X509Certificate::from_der(&a[0]).unwrap().1.raw_serial(),
        X509Certificate::from_der(&b[0]).unwrap().1.raw_serial()
    );
    assert!(minter.mint("bad name!").is_err());
}

/// A burst of first connections to one new host mints one certificate, and
/// the chain a client receives verifies with the kt CA alone.
#[tokio::test]
async fn burst_to_a_new_host_mints_once_and_chain_verifies() {
    let ca = TestCa::new("origin CA");
    let origin = Origin::tls(&ca, &["api.anthropic.com"], Alpn::Both).await;
    let addr = origin.addr;
    let gw = TestGateway::start(&ca, |s| {
        s.intercept = InterceptMode::All;
        s.connect_to = vec![connect_to("api.anthropic.com", 443, addr)];
    })
    .await;
    let roots = [gw.ca_der()];
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let proxy = gw.addr;
        let roots = roots.clone();
        tasks.push(tokio::spawn(async move {
            let (_http, info) =
                client::through_proxy(proxy, "api.anthropic.com", &roots, &[b"h2"]).await;
            info.peer_chain
        }));
    }
    let mut leaves = HashSet::new();
    for t in tasks {
        let chain = t.await.unwrap();
        assert_eq!(chain.len(), 2);
        leaves.insert(chain[0].to_vec());
    }
    assert_eq!(leaves.len(), 1, "one mint for the whole burst");
    assert_eq!(gw.gateway.certs().cached_hosts().await, 1);
}

/// IP targets get an IP SAN (clients reject DNS SANs for IPs).
#[tokio::test]
async fn ip_target_without_sni_gets_an_ip_san() {
    let ca = TestCa::new("origin CA");
    let origin = Origin::tls(&ca, &["127.0.0.1"], Alpn::H1).await;
    let port = origin.addr.port();
    let gw = TestGateway::start(&ca, |s| {
        s.intercept = InterceptMode::All;
        s.limits.allowed_connect_ports.push(port);
    })
    .await;
    let target = format!("127.0.0.1:{port}");
    let (s, reply) = client::connect(gw.addr, &target).await;
    assert_eq!(reply.status, 200);
    // rustls sends no SNI for IP names, so kt mints for the CONNECT host.
    let tls = client::tls(s, "127.0.0.1", &[gw.ca_der()], &[])
        .await
        .unwrap();
    let chain = tls.get_ref().1.peer_certificates().unwrap().to_vec();
    let (_, leaf) = X509Certificate::from_der(&chain[0]).unwrap();
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    assert!(
        matches!(san.value.general_names[..], [GeneralName::IPAddress(ip)] if ip == [127, 0, 0, 1])
    );
}

/// With `--intercept all`, a CONNECT to an address whose ClientHello names
/// the service is verified upstream against that name (the origin's
/// certificate has no IP SAN), not the address, and the request goes
/// through.
#[tokio::test]
async fn an_address_connect_is_verified_against_its_sni_name() {
    let ca = TestCa::new("origin CA");
    let origin = Origin::tls(&ca, &["example.org"], Alpn::H1).await;
    let port = origin.addr.port();
    let gw = TestGateway::start(&ca, |s| {
        s.intercept = InterceptMode::All;
        s.limits.allowed_connect_ports.push(port);
        s.connect_to = vec![connect_to("example.org", port, origin.addr)];
    })
    .await;
    let (s, reply) = client::connect(gw.addr, &format!("127.0.0.1:{port}")).await;
    assert_eq!(reply.status, 200);
    let tls = client::tls(s, "example.org", &[gw.ca_der()], &[b"http/1.1"])
        .await
        .unwrap();
    let mut http = client::Http::over(tls, false).await;
    let resp = http
        .send(
            "POST",
            "example.org",
            "/echo",
            bytes::Bytes::from_static(b"hi"),
        )
        .await;
    assert_eq!(resp.status(), 200, "{:?}", resp.headers());
}

/// kt's leg towards the client picks AES-128-GCM/SHA-256 even when the
/// client lists AES-256-GCM/SHA-384 first (as OpenSSL, Node and rustls
/// do), and still serves a client that offers nothing else.
#[tokio::test]
async fn the_client_leg_prefers_aes_128_whatever_the_clients_order() {
    use rustls::crypto::aws_lc_rs::{cipher_suite, default_provider};
    let ca = TestCa::new("origin CA");
    let origin = Origin::tls(&ca, &["api.openai.com"], Alpn::H1).await;
    let addr = origin.addr;
    let gw = TestGateway::start(&ca, |s| {
        s.connect_to = vec![connect_to("api.openai.com", 443, addr)];
    })
    .await;
    let negotiated = |suites: Vec<rustls::SupportedCipherSuite>| {
        let proxy = gw.addr;
        let root = gw.ca_der();
        async move {
            let mut provider = default_provider();
            provider.cipher_suites = suites;
            let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(client::root_store(&[root]))
                .with_no_client_auth();
            let (s, reply) = client::connect(proxy, "api.openai.com:443").await;
            assert_eq!(reply.status, 200);
            let tls = client::tls_with(s, "api.openai.com", Arc::new(cfg))
                .await
                .unwrap();
            tls.get_ref().1.negotiated_cipher_suite().unwrap().suite()
        }
    };
    let aes256_first = vec![
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    assert_eq!(
        negotiated(aes256_first).await,
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
    );
    assert_eq!(
        negotiated(vec![cipher_suite::TLS13_AES_256_GCM_SHA384]).await,
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
    );
}
