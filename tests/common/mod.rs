//! Shared test fixtures: a test CA, a local HTTPS origin, in-process
//! gateways, and a client that talks through the proxy.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod chromium;
pub mod client;
pub mod origin;
pub mod probe;

use keeptrusts::gateway::{self, GatewaySettings};
use keeptrusts::proxy::Gateway;
use keeptrusts::shutdown::{self, ShutdownTrigger};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tempfile::TempDir;

/// A chain that audits, redacts secrets and blocks prompts naming an
/// `internal-project-…`.
pub const AUDIT_REDACT_FILTER: &str = "policies:\n  chain: [audit-logger, secret-redaction, content-filter]\npolicy:\n  audit-logger: {}\n  secret-redaction:\n    type: redact\n  content-filter:\n    patterns: ['internal-project-\\w+']\n";

/// A CA generated at test time, standing in for the public PKI.
pub struct TestCa {
    pub issuer: Issuer<'static, KeyPair>,
    pub cert_der: CertificateDer<'static>,
    pub pem_path: PathBuf,
    _dir: TempDir,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        keeptrusts::install_crypto_provider();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let pem_path = dir.path().join("test-ca.pem");
        std::fs::write(&pem_path, cert.pem()).unwrap();
        TestCa {
            issuer: Issuer::new(params, key),
            cert_der: cert.der().clone(),
            pem_path,
            _dir: dir,
        }
    }

    /// A server certificate chain and key for `names`.
    pub fn server_cert(
        &self,
        names: &[&str],
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        self.server_cert_with(names, |_| {})
    }

    /// A TLS acceptor for `names` offering only HTTP/1.1, for origins that
    /// speak raw bytes.
    pub fn h1_acceptor(&self, names: &[&str]) -> tokio_rustls::TlsAcceptor {
        let (chain, key) = self.server_cert(names);
        let mut cfg = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg))
    }

    /// An expired server certificate (valid in 2019 only) for `names`.
    pub fn expired_cert(
        &self,
        names: &[&str],
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        self.server_cert_with(names, |p| {
            p.not_before = rcgen::date_time_ymd(2019, 1, 1);
            p.not_after = rcgen::date_time_ymd(2019, 12, 31);
        })
    }

    /// A server certificate for `names`, with `adjust` changing its fields.
    pub fn server_cert_with(
        &self,
        names: &[&str],
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        adjust(&mut params);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (
            vec![cert.der().clone(), self.cert_der.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }
}

/// A gateway running in this process on 127.0.0.1:<random>.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    pub ca_pem: PathBuf,
    pub home: TempDir,
    trigger: Option<ShutdownTrigger>,
    server: Option<tokio::task::JoinHandle<()>>,
    events: Option<keeptrusts::events::WriterHandle>,
}

impl TestGateway {
    /// Starts a gateway that trusts `upstream_ca` (and not the OS roots),
    /// with `configure` adjusting the settings.
    pub async fn start(
        upstream_ca: &TestCa,
        configure: impl FnOnce(&mut GatewaySettings),
    ) -> TestGateway {
        Self::start_on("127.0.0.1:0", upstream_ca, configure).await
    }

    /// [`TestGateway::start`] listening on `bind` (`0.0.0.0:0` for every
    /// address); `addr` is then its port on 127.0.0.1.
    pub async fn start_on(
        bind: &str,
        upstream_ca: &TestCa,
        configure: impl FnOnce(&mut GatewaySettings),
    ) -> TestGateway {
        let home = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
        let bound = listener.local_addr().unwrap();
        let addr = if bound.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], bound.port()))
        } else {
            bound
        };
        let mut settings = GatewaySettings::new(bound, home.path().join("certs"));
        settings.upstream_ca = vec![upstream_ca.pem_path.clone()];
        settings.os_roots = false;
        settings.env_proxy = false;
        settings.events_dir = Some(home.path().join("events"));
        settings.keys_file = Some(home.path().join("keys.json"));
        configure(&mut settings);
        let built = gateway::build(&settings).unwrap();
        let (trigger, sd) = shutdown::channel();
        let server = tokio::spawn(built.gateway.clone().serve(listener, sd));
        TestGateway {
            addr,
            gateway: built.gateway,
            ca_pem: built.ca.cert.clone(),
            home,
            trigger: Some(trigger),
            server: Some(server),
            events: built.events,
        }
    }

    /// Writes every audit event handed over so far and closes the log;
    /// returns the log's folder.
    pub async fn close_events(&mut self) -> PathBuf {
        self.gateway.engine().settle().await;
        if let Some(events) = self.events.take() {
            events.close().await.unwrap();
        }
        self.home.path().join("events")
    }

    /// `/metrics` text from the gateway's own route.
    pub async fn metrics_text(&self) -> String {
        let tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let mut admin = client::Http::over(tcp, false).await;
        let resp = admin
            .send("GET", "kt", "/metrics", bytes::Bytes::new())
            .await;
        client::body_string(resp).await
    }

    /// The kt CA certificate (what clients must trust).
    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.gateway.certs().minter().ca().cert_der().clone()
    }

    /// Starts the drain; resolves when it completes (true) or times out.
    pub async fn drain(&mut self, grace: std::time::Duration) -> bool {
        let trigger = self.trigger.take().expect("drained twice");
        let ok = trigger.drain(grace).await;
        if let Some(s) = self.server.take() {
            s.await.unwrap();
        }
        ok
    }
}

/// `HOST:443:127.0.0.1:PORT`.
pub fn connect_to(host: &str, port: u16, addr: SocketAddr) -> String {
    format!("{host}:{port}:{}:{}", addr.ip(), addr.port())
}

/// Every event of the audit log in `dir`, oldest first, after checking
/// its hash chain end to end.
pub fn verified_events(dir: &std::path::Path) -> Vec<keeptrusts::events::Event> {
    let report = keeptrusts::events::verify(dir).unwrap();
    let all = keeptrusts::events::Filters::default();
    let (events, _) = keeptrusts::events::read_last(dir, usize::MAX, &all).unwrap();
    assert_eq!(
        report.events,
        events.len() as u64,
        "verify and read disagree"
    );
    events
}

/// `(phase, action)` of each event: the shape of an audit trail.
pub fn steps(events: &[keeptrusts::events::Event]) -> Vec<(&str, &str)> {
    events
        .iter()
        .map(|e| (e.phase.as_str(), e.action.as_str()))
        .collect()
}

/// Runs a client program off the test's runtime (so an in-process gateway
/// keeps serving) and returns the one JSON document it printed; panics
/// with its output when it prints none or fails.
pub async fn client_json(mut cmd: std::process::Command) -> serde_json::Value {
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let seen: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    assert!(out.status.success(), "{seen}");
    seen
}

/// Checks the audit trail a real client leaves after three chats and one
/// filtered prompt (`AUDIT_REDACT_FILTER`): four requests, one blocked,
/// three answers, one of them carrying the usage `9,4` the origin sent.
pub fn assert_three_chats_and_a_block(events: &[keeptrusts::events::Event]) {
    let mut trail = steps(events);
    trail.sort();
    assert_eq!(
        trail,
        [
            ("input", "block"),
            ("input", "pass"),
            ("input", "pass"),
            ("input", "pass"),
            ("output", "pass"),
            ("output", "pass"),
            ("output", "pass"),
        ]
    );
    let usage: Vec<_> = events
        .iter()
        .filter(|e| e.phase.as_str() == "output")
        .map(|e| (e.tokens_in, e.tokens_out))
        .collect();
    assert!(usage.contains(&(Some(9), Some(4))), "{usage:?}");
}

/// The text of an OpenAI chat stream: its `data:` events' deltas, in order.
pub fn sse_text(body: &str) -> String {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str::<serde_json::Value>(d).unwrap())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

/// Runs `kt doctor` with exactly the proxy variables given (and a home
/// folder without NSS databases), off the test's runtime so an
/// in-process gateway keeps serving.
pub async fn doctor(
    home: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> std::process::Output {
    let user_home = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kt"));
    cmd.arg("--data-dir").arg(home).arg("doctor").args(args);
    for v in [
        "HTTPS_PROXY",
        "HTTP_PROXY",
        "https_proxy",
        "http_proxy",
        "NO_PROXY",
        "no_proxy",
        "KEEPTRUSTS_ACCESS_KEY",
        "KEEPTRUSTS_GATEWAY",
        "NODE_EXTRA_CA_CERTS",
    ] {
        cmd.env_remove(v);
    }
    cmd.env("HOME", user_home.path());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    drop(user_home);
    out
}

/// The check named `name` in `kt doctor --json`'s output.
pub fn doctor_check<'a>(json: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    json.as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {json:#}"))
}
