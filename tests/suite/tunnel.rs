//! Blind tunnels: hosts that are not intercepted are never decrypted.
#![allow(clippy::unwrap_used)]

use crate::common::client::{self, body_json, Http};
use crate::common::origin::{Alpn, Origin};
use crate::common::{connect_to, TestCa, TestGateway};
use bytes::Bytes;
use keeptrusts::proxy::InterceptMode;

#[tokio::test]
async fn blind_tunnel_shows_the_origins_own_certificate() {
    let ca = TestCa::new("origin CA");
    let origin = Origin::tls(&ca, &["example.org"], Alpn::Both).await;
    let addr = origin.addr;
    let gw = TestGateway::start(&ca, |s| {
        s.connect_to = vec![connect_to("example.org", 443, addr)]
    })
    .await;
    let (s, reply) = client::connect(gw.addr, "example.org:443").await;
    assert_eq!(reply.status, 200);
    assert!(
        reply.head.starts_with("HTTP/1.1 200 OK\r\n"),
        "{:?}",
        reply.head
    );
    // Trusting only the origin's CA works: kt did not touch the TLS.
    let tls = client::tls(
        s,
        "example.org",
        std::slice::from_ref(&ca.cert_der),
        &[b"h2"],
    )
    .await
    .unwrap();
    let peer = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_eq!(Some(peer), origin.cert_der);
    let mut http = Http::over(tls, true).await;
    let json = body_json(
        http.send("POST", "example.org", "/echo", Bytes::from_static(b"x"))
            .await,
    )
    .await;
    assert_eq!(json["len"], 1);
    assert_eq!(
        gw.gateway.certs().cached_hosts().await,
        0,
        "no certificate minted for a tunnel"
    );
}

#[tokio::test]
async fn intercept_none_tunnels_llm_hosts_too() {
    let ca = TestCa::new("origin CA");
    let origin = Origin::tls(&ca, &["api.openai.com"], Alpn::Both).await;
    let addr = origin.addr;
    let gw = TestGateway::start(&ca, |s| {
        s.intercept = InterceptMode::None;
        s.connect_to = vec![connect_to("api.openai.com", 443, addr)];
    })
    .await;
    let (s, reply) = client::connect(gw.addr, "api.openai.com:443").await;
    assert_eq!(reply.status, 200);
    let tls = client::tls(s, "api.openai.com", std::slice::from_ref(&ca.cert_der), &[])
        .await
        .unwrap();
    assert_eq!(
        tls.get_ref().1.peer_certificates().unwrap()[0],
        origin.cert_der.clone().unwrap()
    );
}

#[tokio::test]
async fn config_intercept_hosts_are_decrypted() {
    let ca = TestCa::new("origin CA");
    let origin = Origin::tls(&ca, &["sourcegraph.example.com"], Alpn::H1).await;
    let addr = origin.addr;
    let gw = TestGateway::start(&ca, |s| {
        s.intercept_hosts = vec!["sourcegraph.example.com".into()];
        s.connect_to = vec![connect_to("sourcegraph.example.com", 443, addr)];
    })
    .await;
    let (mut http, info) =
        client::through_proxy(gw.addr, "sourcegraph.example.com", &[gw.ca_der()], &[b"h2"]).await;
    assert_ne!(
        Some(info.peer_chain[0].clone()),
        origin.cert_der,
        "kt minted its own leaf"
    );
    let json = body_json(
        http.send(
            "POST",
            "sourcegraph.example.com",
            "/echo",
            Bytes::from_static(b"{}"),
        )
        .await,
    )
    .await;
    assert_eq!(json["version"], "HTTP/1.1");
}

/// A tunnel with traffic stays open past the idle limit; a quiet one is
/// closed after it.
#[tokio::test]
async fn idle_tunnels_are_closed_and_busy_ones_kept() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = TestCa::new("origin CA");
    // A plain TCP echo server stands in for the tunnelled host.
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let idle = std::time::Duration::from_millis(400);
    let gw = TestGateway::start(&ca, |s| {
        s.connect_to = vec![connect_to("echo.test", 443, echo_addr)];
        s.limits.idle = idle;
    })
    .await;

    let (mut busy, reply) = client::connect(gw.addr, "echo.test:443").await;
    assert_eq!(reply.status, 200);
    let (mut quiet, reply) = client::connect(gw.addr, "echo.test:443").await;
    assert_eq!(reply.status, 200);
    let started = std::time::Instant::now();

    // The busy tunnel exchanges a byte every 100 ms for 3 idle periods.
    let mut buf = [0u8; 1];
    while started.elapsed() < idle * 3 {
        busy.write_all(b"x").await.unwrap();
        busy.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"x");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The quiet one has been closed by then: reading gives EOF at once.
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), quiet.read(&mut buf))
        .await
        .expect("the quiet tunnel was not closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "quiet tunnel still open");
    // And the busy one still works.
    busy.write_all(b"y").await.unwrap();
    busy.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"y");
}

/// A CONNECT to an address names no service, so the ClientHello decides:
/// an LLM host is intercepted (kt's certificate, the exchange on the
/// record, under the name), any other name is tunnelled untouched.
#[tokio::test]
async fn a_connect_to_an_address_is_intercepted_when_its_client_hello_names_an_llm_host() {
    let ca = TestCa::new("origin CA");
    let origin = Origin::tls(&ca, &["api.openai.com", "example.org"], Alpn::Both).await;
    let port = origin.addr.port();
    let mut gw = TestGateway::start(&ca, |s| s.limits.allowed_connect_ports.push(port)).await;
    let target = format!("127.0.0.1:{port}");

    let (s, reply) = client::connect(gw.addr, &target).await;
    assert_eq!(reply.status, 200);
    // Trusting only the kt CA works: kt terminated the TLS.
    let tls = client::tls(s, "api.openai.com", &[gw.ca_der()], &[b"h2"])
        .await
        .unwrap();
    let mut http = Http::over(tls, true).await;
    let body =
        serde_json::json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]});
    let resp = http
        .send(
            "POST",
            "api.openai.com",
            "/v1/chat/completions",
            Bytes::from(body.to_string()),
        )
        .await;
    assert_eq!(resp.status(), 200);

    let (s, reply) = client::connect(gw.addr, &target).await;
    assert_eq!(reply.status, 200);
    let tls = client::tls(
        s,
        "example.org",
        std::slice::from_ref(&ca.cert_der),
        &[b"http/1.1"],
    )
    .await
    .unwrap();
    assert_eq!(
        tls.get_ref().1.peer_certificates().unwrap()[0],
        origin.cert_der.clone().unwrap(),
        "a name kt does not intercept got kt's certificate"
    );
    drop(tls);

    let dir = gw.close_events().await;
    let (events, _) =
        keeptrusts::events::read_last(&dir, 10, &keeptrusts::events::Filters::default()).unwrap();
    let seen: Vec<_> = events
        .iter()
        .map(|e| {
            (
                e.phase.as_str(),
                e.host.as_deref().unwrap_or(""),
                e.model.as_deref().unwrap_or(""),
                e.status,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("input", "api.openai.com", "gpt-4o", None),
            ("output", "api.openai.com", "gpt-4o", Some(200)),
        ]
    );
}

/// A server that speaks first (SSH, SMTP) behind a CONNECT to an address
/// is not kept waiting for a ClientHello that will never come: not when
/// the address decides by the ClientHello (the default), nor when
/// `--intercept all` would decrypt it.
#[tokio::test]
async fn a_server_that_speaks_first_behind_an_address_is_tunnelled_at_once() {
    use keeptrusts::proxy::InterceptMode;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for mode in [InterceptMode::Llm, InterceptMode::All] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"SSH-2.0-test\r\n").await.unwrap();
            let mut echo = [0u8; 5];
            s.read_exact(&mut echo).await.unwrap();
            s.write_all(&echo).await.unwrap();
        });
        let ca = TestCa::new("unused");
        let gw = TestGateway::start(&ca, |s| {
            s.intercept = mode;
            s.limits.allowed_connect_ports.push(port);
            // Far longer than the test waits: the banner must not wait for it.
            s.limits.client_tls_handshake = std::time::Duration::from_secs(60);
        })
        .await;
        let (mut s, reply) = client::connect(gw.addr, &format!("127.0.0.1:{port}")).await;
        assert_eq!(reply.status, 200);
        let mut banner = [0u8; 14];
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            s.read_exact(&mut banner),
        )
        .await
        .unwrap_or_else(|_| panic!("{mode:?}: the server's banner waited for the client"))
        .unwrap();
        assert_eq!(&banner, b"SSH-2.0-test\r\n");
        s.write_all(b"hello").await.unwrap();
        let mut echo = [0u8; 5];
        s.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"hello", "{mode:?}");
    }
}
