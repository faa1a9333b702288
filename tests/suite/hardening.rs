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
