//! What kt refuses to be used for: reaching link-local and cloud metadata
//! addresses (by literal or by a name that resolves there), and CONNECT to
//! ports outside `upstream.allowed_connect_ports`.

use crate::common::client::{self, through_proxy};
use crate::common::origin::{Alpn, Origin};
use crate::common::{connect_to, TestCa, TestGateway};
use keeptrusts::config::PolicyConfig;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HOST: &str = "api.openai.com";

#[tokio::test]
async fn metadata_and_link_local_targets_are_refused_by_address_and_by_name() {
    let ca = TestCa::new("ca");
    let gw = TestGateway::start(&ca, |s| {
        // A name that "resolves" to the metadata endpoint, as a hostile DNS
        // answer would make it.
        s.connect_to
            .push("metadata.example:443:169.254.169.254:443".into());
        s.connect_to
            .push("v6meta.example:443:[fd00:ec2::254]:443".into());
    })
    .await;
    for target in [
        "169.254.169.254:443",
        "[fe80::1]:443",
        "[::ffff:169.254.169.254]:443",
        "[fd00:ec2::254]:443",
        "metadata.example:443",
        "v6meta.example:443",
    ] {
        let (_s, reply) = client::connect(gw.addr, target).await;
        assert_eq!(reply.status, 403, "{target}: {reply:?}");
        assert!(
            reply.head.contains("x-kt-error: forbidden_address"),
            "{target}: {}",
            reply.head
        );
        assert!(reply.body.contains("metadata"), "{target}: {}", reply.body);
    }
    // Plain http:// through the proxy is refused the same way.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        b"GET http://169.254.169.254/latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
}

/// On loopback (a developer's own gateway) a tunnel may go to any port:
/// the developer could connect there without kt.
#[tokio::test]
async fn a_loopback_gateway_tunnels_any_port_unless_the_config_lists_ports() {
    let ca = TestCa::new("ca");
    let origin = Origin::tls(&ca, &[HOST], Alpn::Both).await;
    let gw = TestGateway::start(&ca, |s| {
        s.connect_to
            .push(connect_to("registry.example", 8443, origin.addr));
    })
    .await;
    let (s, reply) = client::connect(gw.addr, "registry.example:8443").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    drop(s);
    let (s, reply) = client::connect(gw.addr, &format!("127.0.0.1:{}", origin.addr.port())).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    drop(s);
}

#[tokio::test]
async fn connect_ports_other_than_443_need_the_config() {
    let ca = TestCa::new("ca");
    let origin = Origin::tls(&ca, &[HOST], Alpn::Both).await;
    let addr = origin.addr;
    let yaml = "upstream:\n  allowed_connect_ports: [8443]\n";
    let config = Arc::new(PolicyConfig::parse(yaml, Path::new("t.yaml")).unwrap());
    let gw = TestGateway::start(&ca, |s| {
        s.connect_to.push(connect_to(HOST, 443, addr));
        s.connect_to.push(connect_to(HOST, 8443, addr));
        s.connect_to.push(connect_to("ssh.example", 22, addr));
        s.apply_config(&config);
    })
    .await;
    let (_s, reply) = client::connect(gw.addr, "ssh.example:22").await;
    assert_eq!(reply.status, 403, "{reply:?}");
    assert!(reply.head.contains("x-kt-error: port_not_allowed"));
    assert!(
        reply.body.contains("upstream.allowed_connect_ports") && reply.body.contains("443, 8443"),
        "{}",
        reply.body
    );
    // The configured port and the default one both work.
    for port in [443, 8443] {
        let (s, reply) = client::connect(gw.addr, &format!("{HOST}:{port}")).await;
        assert_eq!(reply.status, 200, "port {port}: {reply:?}");
        drop(s);
    }
    let (mut http, _) = through_proxy(gw.addr, HOST, &[gw.ca_der()], &[b"h2"]).await;
    let resp = http
        .send(
            "POST",
            HOST,
            "/v1/chat/completions",
            bytes::Bytes::from_static(b"{}"),
        )
        .await;
    assert_eq!(resp.status(), 200);
}

/// A run at the most verbose log level that carried a secret in a prompt
/// and an access key on the CONNECT: neither appears in the gateway's log
/// output or its audit log.
#[tokio::test]
async fn secrets_and_keys_never_reach_the_logs() {
    use base64::Engine as _;
    let ca = TestCa::new("ca");
    let origin = Origin::tls(&ca, &[HOST], Alpn::Both).await;
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "policies:\n  chain: [audit-logger, secret-redaction]\npolicy:\n  audit-logger: {}\n  secret-redaction:\n    type: redact\n",
    )
    .unwrap();
    let gw = crate::suite::cli::spawn_gateway_with(
        &ca,
        &origin,
        &[
            "--policy-config".as_ref(),
            policy.as_os_str(),
            "--drain-seconds".as_ref(),
            "2".as_ref(),
        ],
        &[("KT_LOG", "trace")],
    );
    let token = format!("ghp_{}", "aZ3kQ9mX".repeat(5).get(..36).unwrap());
    let access_key = format!("kt_{}", "Q7wErT9yUiOp".repeat(4).get(..40).unwrap());
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("dev1:{access_key}"));
    s.write_all(
        format!("CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\nProxy-Authorization: Basic {basic}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let reply = client::read_head(&mut s).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let tls = client::tls(s, HOST, &[gw.ca_der()], &[b"h2"])
        .await
        .unwrap();
    let mut http = client::Http::over(tls, true).await;
    let body = serde_json::json!({
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": format!("export GITHUB_TOKEN={token}")}],
    })
    .to_string();
    let resp = http
        .send(
            "POST",
            HOST,
            "/v1/chat/completions",
            bytes::Bytes::from(body),
        )
        .await;
    assert_eq!(resp.status(), 200);
    drop(http);
    let (lines, home) = gw.stop_and_collect().await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains("TRACE") || l.contains("DEBUG")),
        "the run logged at trace level ({} lines)",
        lines.len()
    );
    for line in &lines {
        assert!(!line.contains(&token), "secret in the log: {line}");
        assert!(!line.contains(&access_key), "access key in the log: {line}");
        assert!(!line.contains(&basic), "credentials in the log: {line}");
    }
    let mut audit = String::new();
    for entry in std::fs::read_dir(home.path().join("events")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "jsonl") {
            audit.push_str(&std::fs::read_to_string(path).unwrap());
        }
    }
    assert!(
        audit.contains("redact"),
        "the redaction was recorded: {audit}"
    );
    assert!(!audit.contains(&token) && !audit.contains(&access_key));
}

/// Tunnels count against the per-client limit for as long as they are
/// open: a CONNECT ends the HTTP connection it came on, not the tunnel, and
/// one client holding many tunnels must not take every connection.
#[tokio::test]
async fn open_tunnels_count_against_the_per_client_limit() {
    let ca = TestCa::new("ca");
    let origin = Origin::tls(&ca, &["registry.example"], Alpn::Both).await;
    let gw = TestGateway::start(&ca, |s| {
        s.limits.max_connections_per_client = 2;
        s.connect_to
            .push(connect_to("registry.example", 443, origin.addr));
    })
    .await;
    let mut tunnels = Vec::new();
    for _ in 0..2 {
        let (s, reply) = client::connect(gw.addr, "registry.example:443").await;
        assert_eq!(reply.status, 200, "{reply:?}");
        tunnels.push(s);
    }
    assert_eq!(
        gw.gateway.per_client().open("127.0.0.1".parse().unwrap()),
        2
    );
    let (_s, reply) = client::connect(gw.addr, "registry.example:443").await;
    assert_eq!(reply.status, 429, "{reply:?}");
    assert!(
        reply.head.contains("x-kt-error: too_many_connections"),
        "{reply:?}"
    );
    // A tunnel that ends gives its place back.
    drop(tunnels.pop());
    let wait = tokio::time::Instant::now() + Duration::from_secs(5);
    while gw.gateway.per_client().open("127.0.0.1".parse().unwrap()) != 1 {
        assert!(
            tokio::time::Instant::now() < wait,
            "the slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_s, reply) = client::connect(gw.addr, "registry.example:443").await;
    assert_eq!(reply.status, 200, "{reply:?}");
}

#[tokio::test]
async fn one_client_cannot_take_every_connection() {
    let ca = TestCa::new("ca");
    let gw = TestGateway::start(&ca, |s| s.limits.max_connections_per_client = 3).await;
    // Three keep-alive connections from 127.0.0.1, held open.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        held.push(s);
    }
    let wait = tokio::time::Instant::now() + Duration::from_secs(5);
    while gw.gateway.per_client().open("127.0.0.1".parse().unwrap()) != 3 {
        assert!(tokio::time::Instant::now() < wait, "slots never settled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert!(out.starts_with("HTTP/1.1 429"), "{out}");
    assert!(out.contains("too_many_connections") && out.contains("retry-after: 1"));
    // A freed slot is usable again.
    held.pop();
    let wait = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out).await;
        if out.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < wait,
            "the slot never came back: {out}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
