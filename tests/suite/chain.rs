//! Chaining through a corporate proxy (`--upstream-proxy`): intercepted
//! requests, blind tunnels and plain `http://` requests go out through it,
//! whether kt speaks plain HTTP or TLS to the proxy.
#![allow(clippy::unwrap_used)]

use crate::common::client;
use crate::common::origin::{Alpn, Origin};
use crate::common::{TestCa, TestGateway};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// A minimal corporate proxy that records the request line of each
/// connection and whether our credentials came with it: CONNECT opens a
/// tunnel; an absolute-form request is passed on as sent to the host its
/// target names (an origin must accept absolute-form too). With `tls`, it
/// is an `https://` proxy: clients speak TLS to it first.
async fn corporate_proxy(tls: Option<TlsAcceptor>) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            let (log, tls) = (log.clone(), tls.clone());
            tokio::spawn(async move {
                match tls {
                    None => serve_proxy_client(s, log).await,
                    Some(acceptor) => match acceptor.accept(s).await {
                        Ok(s) => serve_proxy_client(s, log).await,
                        Err(e) => log.lock().unwrap().push(format!("tls failed: {e}")),
                    },
                }
            });
        }
    });
    (addr, seen)
}

async fn serve_proxy_client<S>(mut s: S, log: Arc<Mutex<Vec<String>>>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
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
    let Ok(mut up) = TcpStream::connect(forwarded.as_deref().unwrap_or(&target)).await else {
        let _ = s
            .write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            .await;
        let _ = s.flush().await;
        return;
    };
    if forwarded.is_some() {
        up.write_all(head.as_bytes()).await.unwrap();
    } else {
        s.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await
            .unwrap();
        s.flush().await.unwrap();
    }
    let _ = tokio::io::copy_bidirectional(&mut s, &mut up).await;
}

async fn read_request_head<S: AsyncRead + Unpin>(s: &mut S) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).await.unwrap_or(0) == 0 {
            break;
        }
        head.push(b[0]);
    }
    String::from_utf8_lossy(&head).into()
}

/// An intercepted request to `api.openai.com`, then a blind tunnel to
/// `example.org` in which the client meets the origin's own certificate
/// (signed by `ca`), not one kt minted.
async fn intercept_then_tunnel(gw: &TestGateway, ca: &TestCa) {
    client::echo_through(gw.addr, gw.ca_der()).await;
    let (s, reply) = client::connect(gw.addr, "example.org:443").await;
    assert_eq!(reply.status, 200);
    let tls = client::tls(s, "example.org", std::slice::from_ref(&ca.cert_der), &[])
        .await
        .unwrap();
    let chain = tls.get_ref().1.peer_certificates().unwrap().to_vec();
    assert!(!chain.contains(&gw.ca_der()), "the tunnel was intercepted");
}

#[tokio::test]
async fn intercepted_and_tunnelled_traffic_goes_through_the_upstream_proxy() {
    let ca = TestCa::new("ca");
    let origin = Origin::tls(&ca, &["api.openai.com", "example.org"], Alpn::Both).await;
    let (proxy, seen) = corporate_proxy(None).await;
    let oaddr = origin.addr;
    let gw = TestGateway::start(&ca, |s| {
        s.upstream_proxy = Some(format!("http://user:pass@{proxy}"));
        s.connect_to = vec![
            format!("api.openai.com:443:127.0.0.1:{}", oaddr.port()),
            format!("example.org:443:127.0.0.1:{}", oaddr.port()),
        ];
    })
    .await;
    intercept_then_tunnel(&gw, &ca).await;

    let seen = seen.lock().unwrap().clone();
    let want = format!("CONNECT 127.0.0.1:{} HTTP/1.1 auth=true", oaddr.port());
    assert!(seen.len() >= 2, "{seen:?}");
    assert!(seen.iter().all(|l| *l == want), "{seen:?}");
}

#[tokio::test]
async fn plain_http_is_forwarded_by_the_upstream_proxy_not_tunnelled() {
    let ca = TestCa::new("ca");
    let origin = Origin::plain().await;
    let (proxy, seen) = corporate_proxy(None).await;
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

#[tokio::test]
async fn every_kind_of_traffic_goes_through_an_https_upstream_proxy() {
    let ca = TestCa::new("ca");
    let origin = Origin::tls(&ca, &["api.openai.com", "example.org"], Alpn::Both).await;
    let plain = Origin::plain().await;
    // The proxy's certificate names it; the gateway verifies it against its
    // upstream roots (here the test CA) like any upstream's.
    let (proxy, seen) = corporate_proxy(Some(ca.h1_acceptor(&["corp-proxy.test"]))).await;
    let (oport, pport) = (origin.addr.port(), plain.addr.port());
    let gw = TestGateway::start(&ca, |s| {
        s.upstream_proxy = Some(format!(
            "https://user:pass@corp-proxy.test:{}",
            proxy.port()
        ));
        s.connect_to = vec![
            format!("corp-proxy.test:{0}:127.0.0.1:{0}", proxy.port()),
            format!("api.openai.com:443:127.0.0.1:{oport}"),
            format!("example.org:443:127.0.0.1:{oport}"),
            format!("plain.test:80:127.0.0.1:{pport}"),
        ];
    })
    .await;
    intercept_then_tunnel(&gw, &ca).await;

    // Plain http: forwarded to the proxy in absolute-form, inside TLS.
    let out = client::raw_exchange(
        gw.addr,
        b"POST http://plain.test/echo HTTP/1.1\r\nHost: plain.test\r\n\
          Content-Length: 3\r\nConnection: close\r\n\r\nabc",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(client::raw_json_body(&out)["len"], 3, "{out}");

    let seen = seen.lock().unwrap().clone();
    let connect = format!("CONNECT 127.0.0.1:{oport} HTTP/1.1 auth=true");
    let forward = format!("POST http://127.0.0.1:{pport}/echo HTTP/1.1 auth=true");
    assert!(
        seen.iter().filter(|l| **l == connect).count() >= 2,
        "{seen:?}"
    );
    assert_eq!(
        seen.iter().filter(|l| **l == forward).count(),
        1,
        "{seen:?}"
    );
    assert_eq!(
        seen.len(),
        seen.iter()
            .filter(|l| **l == connect || **l == forward)
            .count(),
        "{seen:?}"
    );
}

#[tokio::test]
async fn an_https_upstream_proxy_kt_cannot_verify_is_a_502_naming_it() {
    let ca = TestCa::new("ca");
    let other = TestCa::new("someone else's ca");
    let (proxy, seen) = corporate_proxy(Some(other.h1_acceptor(&["corp-proxy.test"]))).await;
    let gw = TestGateway::start(&ca, |s| {
        s.upstream_proxy = Some(format!("https://corp-proxy.test:{}", proxy.port()));
        s.connect_to = vec![format!("corp-proxy.test:{0}:127.0.0.1:{0}", proxy.port())];
    })
    .await;
    for target in ["api.openai.com:443", "example.org:443"] {
        let (_s, reply) = client::connect(gw.addr, target).await;
        assert_eq!(reply.status, 502, "{target}: {reply:?}");
        assert!(
            reply
                .body
                .contains(&format!("https://corp-proxy.test:{}", proxy.port()))
                && reply.body.contains("TLS handshake with the proxy failed")
                && reply.body.contains("not trust"),
            "{target}: {reply:?}"
        );
    }
    // Nothing was said to a proxy kt could not verify.
    let seen = seen.lock().unwrap().clone();
    assert!(seen.iter().all(|l| l.starts_with("tls failed")), "{seen:?}");
}
