//! Chaining through a corporate proxy (`--upstream-proxy`): both intercepted
//! requests and blind tunnels go out through it.
#![allow(clippy::unwrap_used)]

use crate::common::client;
use crate::common::origin::{Alpn, Origin};
use crate::common::{TestCa, TestGateway};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A minimal corporate proxy that records the request line of each
/// connection and whether our credentials came with it: CONNECT opens a
/// tunnel; an absolute-form request is passed on as sent to the host its
/// target names (an origin must accept absolute-form too).
async fn corporate_proxy() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let head = read_request_head(&mut s).await;
                let line = head.lines().next().unwrap_or_default().to_string();
                let authed = head
                    .to_ascii_lowercase()
                    .contains("proxy-authorization: basic dxnlcjpwyxnz");
                log.lock().unwrap().push(format!("{line} auth={authed}"));
                let target = line.split_whitespace().nth(1).unwrap().to_string();
                let forwarded = target
                    .strip_prefix("http://")
                    .map(|rest| rest.split('/').next().unwrap().to_string());
                let Ok(mut up) = TcpStream::connect(forwarded.as_deref().unwrap_or(&target)).await
                else {
                    let _ = s
                        .write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                        .await;
                    return;
                };
                if forwarded.is_some() {
                    up.write_all(head.as_bytes()).await.unwrap();
                } else {
                    s.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .await
                        .unwrap();
                }
                let _ = tokio::io::copy_bidirectional(&mut s, &mut up).await;
            });
        }
    });
    (addr, seen)
}

async fn read_request_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).await.unwrap() == 0 {
            break;
        }
        head.push(b[0]);
    }
    String::from_utf8_lossy(&head).into()
}

#[tokio::test]
async fn intercepted_and_tunnelled_traffic_goes_through_the_upstream_proxy() {
    let ca = TestCa::new("ca");
    let origin = Origin::tls(&ca, &["api.openai.com", "example.org"], Alpn::Both).await;
    let (proxy, seen) = corporate_proxy().await;
    let oaddr = origin.addr;
    let gw = TestGateway::start(&ca, |s| {
        s.upstream_proxy = Some(format!("http://user:pass@{proxy}"));
        s.connect_to = vec![
            format!("api.openai.com:443:127.0.0.1:{}", oaddr.port()),
            format!("example.org:443:127.0.0.1:{}", oaddr.port()),
        ];
    })
    .await;
    client::echo_through(gw.addr, gw.ca_der()).await;

    let (s, reply) = client::connect(gw.addr, "example.org:443").await;
    assert_eq!(reply.status, 200);
    let tls = client::tls(s, "example.org", std::slice::from_ref(&ca.cert_der), &[])
        .await
        .unwrap();
    drop(tls);

    let seen = seen.lock().unwrap().clone();
    let want = format!("CONNECT 127.0.0.1:{} HTTP/1.1 auth=true", oaddr.port());
    assert!(seen.len() >= 2, "{seen:?}");
    assert!(seen.iter().all(|l| *l == want), "{seen:?}");
}

#[tokio::test]
async fn plain_http_is_forwarded_by_the_upstream_proxy_not_tunnelled() {
    let ca = TestCa::new("ca");
    let origin = Origin::plain().await;
    let (proxy, seen) = corporate_proxy().await;
    let port = origin.addr.port();
    let gw = TestGateway::start(&ca, |s| {
        s.upstream_proxy = Some(format!("http://user:pass@{proxy}"));
        s.connect_to = vec![format!("plain.test:80:127.0.0.1:{port}")];
    })
    .await;
    let out = client::raw_exchange(
        gw.addr,
        b"POST http://plain.test/echo?q=1 HTTP/1.1\r\nHost: plain.test\r\n\
          Content-Length: 2\r\nConnection: close\r\n\r\nhi",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let json = client::raw_json_body(&out);
    assert_eq!(json["len"], 2, "{json}");
    assert_eq!(json["headers"]["host"], "plain.test", "{json}");
    // Corporate proxies refuse CONNECT to port 80: a plain request goes to
    // the proxy in absolute-form, with our credentials.
    let seen = seen.lock().unwrap().clone();
    let want = format!("POST http://127.0.0.1:{port}/echo?q=1 HTTP/1.1 auth=true");
    assert_eq!(seen, vec![want]);
}

#[tokio::test]
async fn upstream_proxy_refusal_is_a_502() {
    let ca = TestCa::new("ca");
    // A "proxy" that refuses everything.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let paddr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                .await;
        }
    });
    let gw = TestGateway::start(&ca, |s| s.upstream_proxy = Some(format!("http://{paddr}"))).await;
    let (_s, reply) = client::connect(gw.addr, "example.org:443").await;
    assert_eq!(reply.status, 502);
    assert!(reply.body.contains("403"), "{reply:?}");
}
