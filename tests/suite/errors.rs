//! Bad input, limits and timeouts: clear status codes, and the listener
//! keeps serving others meanwhile.
#![allow(clippy::unwrap_used)]

use crate::common::client::{self, body_string, through_proxy};
use crate::common::origin::{Alpn, Origin};
use crate::common::{connect_to, TestCa, TestGateway};
use bytes::Bytes;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn raw(gw: &TestGateway, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into()
}

async fn still_healthy(gw: &TestGateway) {
    let out = raw(
        gw,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

#[tokio::test]
async fn malformed_requests_get_400_and_the_listener_survives() {
    let ca = TestCa::new("ca");
    let gw = TestGateway::start(&ca, |_| {}).await;
    let cases: &[&[u8]] = &[
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
        b"HELLO\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n",
        b"CONNECT api.openai.com HTTP/1.1\r\nHost: api.openai.com\r\n\r\n",
        b"CONNECT api.openai.com:0 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"CONNECT ::1:443 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    ];
    for case in cases {
        let out = raw(&gw, case).await;
        assert!(
            out.starts_with("HTTP/1.1 400"),
            "{:?} -> {out:?}",
            String::from_utf8_lossy(case)
        );
        still_healthy(&gw).await;
    }
    let long_name = format!(
        "CONNECT {}.com:443 HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(10_000)
    );
    let out = raw(&gw, long_name.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 4"), "{out:?}");
    still_healthy(&gw).await;
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let ca = TestCa::new("ca");
    let gw = TestGateway::start(&ca, |_| {}).await;
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100_000)
    );
    let out = raw(&gw, big.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out:?}");
    still_healthy(&gw).await;
}

#[tokio::test]
async fn slow_headers_are_cut_off() {
    let ca = TestCa::new("ca");
    let gw = TestGateway::start(&ca, |s| s.limits.header_read = Duration::from_millis(300)).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    // The gateway closes the connection on its own; we only bound the wait.
    let mut buf = Vec::new();
    let res = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    assert!(
        res.is_ok(),
        "connection still open after the header timeout"
    );
    assert!(!String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"));
    still_healthy(&gw).await;
}

#[tokio::test]
async fn upstream_response_timeout_is_a_504() {
    let ca = TestCa::new("ca");
    let origin = Origin::tls(&ca, &["api.openai.com"], Alpn::H1).await;
    let addr = origin.addr;
    let gw = TestGateway::start(&ca, |s| {
        s.connect_to = vec![connect_to("api.openai.com", 443, addr)];
        s.upstream_timeouts.response_head = Duration::from_millis(300);
    })
    .await;
    let (mut http, _) =
        through_proxy(gw.addr, "api.openai.com", &[gw.ca_der()], &[b"http/1.1"]).await;
    let resp = http
        .send("POST", "api.openai.com", "/hang", Bytes::new())
        .await;
    assert_eq!(resp.status(), 504);
    assert_eq!(resp.headers()["x-kt-error"], "upstream_timeout");
    let body = body_string(resp).await;
    assert!(body.contains("api.openai.com"), "{body}");
}

#[tokio::test]
async fn connect_to_the_gateway_itself_is_refused() {
    let ca = TestCa::new("ca");
    let gw = TestGateway::start(&ca, |_| {}).await;
    let (_s, reply) = client::connect(gw.addr, &format!("127.0.0.1:{}", gw.addr.port())).await;
    assert_eq!(reply.status, 508, "{reply:?}");
}

#[tokio::test]
async fn connection_limit_queues_extra_clients() {
    let ca = TestCa::new("ca");
    let gw = TestGateway::start(&ca, |s| s.limits.max_connections = 1).await;
    let mut first = TcpStream::connect(gw.addr).await.unwrap();
    first
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 12];
    first.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200");
    // The second client is accepted by the kernel but not served...
    let second = tokio::spawn(async move {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        (out, gw)
    });
    tokio::task::yield_now().await;
    assert!(!second.is_finished());
    // ...until the first one leaves.
    drop(first);
    let (out, _gw) = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .unwrap()
        .unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}
