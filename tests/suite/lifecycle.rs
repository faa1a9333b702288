//! Admin routes and the graceful drain.
#![allow(clippy::unwrap_used)]

use crate::common::client::through_proxy;
use crate::common::origin::{Alpn, Origin};
use crate::common::{connect_to, TestCa, TestGateway};
use bytes::Bytes;
use http_body_util::BodyExt;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn health_ready_and_ca_routes() {
    let ca = TestCa::new("ca");
    let gw = TestGateway::start(&ca, |_| {}).await;
    for (req, want) in [
        (
            "GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 200",
        ),
        (
            "GET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 200",
        ),
        (
            "GET /nope HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 404",
        ),
        (
            "POST /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 405",
        ),
    ] {
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with(want), "{req:?} -> {out}");
    }
    // Absolute-form to the gateway's own address is answered, not looped.
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let req = format!(
        "GET http://{}/_kt/ca.pem HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        gw.addr
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let pem = std::fs::read_to_string(&gw.ca_pem).unwrap();
    assert!(out.ends_with(&pem), "serves the CA certificate");
    assert!(!out.contains("PRIVATE KEY"));
}

/// SIGTERM semantics: stop accepting, let the open stream finish, then stop.
#[tokio::test]
async fn drain_lets_streams_finish() {
    let ca = TestCa::new("ca");
    let origin = Origin::tls(&ca, &["api.openai.com"], Alpn::Both).await;
    let addr = origin.addr;
    let mut gw = TestGateway::start(&ca, |s| {
        s.connect_to = vec![connect_to("api.openai.com", 443, addr)]
    })
    .await;
    let proxy = gw.addr;
    let (mut http, _) = through_proxy(proxy, "api.openai.com", &[gw.ca_der()], &[b"h2"]).await;
    let resp = http
        .send("POST", "api.openai.com", "/sse", Bytes::new())
        .await;
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(first.starts_with(b"data: {\"n\":0}"));

    let drain = tokio::spawn(async move {
        let ok = gw.drain(Duration::from_secs(20)).await;
        (ok, gw)
    });
    // New connections are refused once the drain has started.
    let mut refused = false;
    for _ in 0..200 {
        match tokio::net::TcpStream::connect(proxy).await {
            Err(_) => {
                refused = true;
                break;
            }
            Ok(_) => tokio::task::yield_now().await,
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "listener still accepting during drain");
    assert!(!drain.is_finished(), "drain must wait for the open stream");
    origin.sse_gate.add_permits(10);
    let rest = body.collect().await.unwrap().to_bytes();
    assert!(rest.ends_with(b"data: [DONE]\n\n"), "{rest:?}");
    drop(http);
    let (ok, _gw) = tokio::time::timeout(Duration::from_secs(20), drain)
        .await
        .unwrap()
        .unwrap();
    assert!(ok, "drain finished within the grace period");
}

/// When the drain's grace runs out, what is still open (a stream on each
/// HTTP version, a bridged WebSocket) is cut before the audit log closes:
/// each exchange's output event is on record, none lost with the process.
#[tokio::test]
async fn exchanges_cut_at_the_end_of_the_grace_are_recorded() {
    use crate::common::verified_events;
    const HOST: &str = "api.openai.com";
    let ca = TestCa::new("ca");
    let origin = Origin::tls(&ca, &[HOST], Alpn::Both).await;
    let addr = origin.addr;
    let mut gw =
        TestGateway::start(&ca, |s| s.connect_to = vec![connect_to(HOST, 443, addr)]).await;
    let chat = serde_json::json!({"model": "gpt-4o", "stream": true,
        "messages": [{"role": "user", "content": "hi"}]})
    .to_string();
    let mut bodies = Vec::new();
    let mut clients = Vec::new();
    for alpn in [&b"h2"[..], b"http/1.1"] {
        let (mut http, _) = through_proxy(gw.addr, HOST, &[gw.ca_der()], &[alpn]).await;
        let req = match http.is_h2() {
            true => http::Request::builder().uri(format!("https://{HOST}/v1/chat/completions")),
            false => http::Request::builder()
                .uri("/v1/chat/completions")
                .header("host", HOST),
        };
        let req = req
            .method("POST")
            .header("content-type", "application/json")
            .header("x-test-gated", "1")
            .header("x-test-reply", "one two three four")
            .body(http_body_util::Full::new(Bytes::from(chat.clone())))
            .unwrap();
        let mut resp = http.request(req).await;
        assert_eq!(resp.status(), 200);
        let first = resp.body_mut().frame().await.unwrap().unwrap();
        assert!(first.data_ref().is_some());
        bodies.push(resp);
        clients.push(http);
    }
    let (head, mut ws) =
        crate::common::client::websocket(gw.addr, HOST, "/v1/realtime", &[gw.ca_der()]).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    ws.write_all(b"frame").await.unwrap();
    let mut echo = [0u8; 5];
    ws.read_exact(&mut echo).await.unwrap();

    let drained = tokio::time::timeout(
        Duration::from_secs(20),
        gw.drain(Duration::from_millis(300)),
    )
    .await
    .expect("the drain never ended");
    assert!(!drained, "the gated streams cannot have finished");
    let dir = gw.close_events().await;
    let events = verified_events(&dir);
    let outputs: Vec<_> = events
        .iter()
        .filter(|e| e.phase.as_str() == "output")
        .map(|e| (e.path.as_deref().unwrap_or_default().to_string(), e.status))
        .collect();
    assert_eq!(outputs.len(), 3, "{events:#?}");
    assert!(
        outputs.contains(&("/v1/realtime".to_string(), Some(101))),
        "{outputs:?}"
    );
    let streams = outputs
        .iter()
        .filter(|(p, _)| p == "/v1/chat/completions")
        .count();
    assert_eq!(streams, 2, "{outputs:?}");
    drop((bodies, clients, ws));
}
