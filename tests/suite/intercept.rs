//! Intercepted traffic: decrypted, forwarded to a verified upstream, streamed.
#![allow(clippy::unwrap_used)]

use crate::common::client::{self, body_json, body_string, through_proxy};
use crate::common::origin::{Alpn, Origin};
use crate::common::{connect_to, TestCa, TestGateway};
use bytes::Bytes;
use http_body_util::BodyExt;
use std::time::Duration;

const HOST: &str = "api.openai.com";

async fn setup(alpn: Alpn) -> (TestCa, Origin, TestGateway) {
    let ca = TestCa::new("upstream test CA");
    let origin = Origin::tls(&ca, &[HOST], alpn).await;
    let addr = origin.addr;
    let gw = TestGateway::start(&ca, |s| s.connect_to = vec![connect_to(HOST, 443, addr)]).await;
    (ca, origin, gw)
}

/// Every client protocol against every upstream protocol.
#[tokio::test]
async fn round_trip_h1_and_h2_both_sides() {
    for upstream in [Alpn::H1, Alpn::H2, Alpn::Both] {
        let (_ca, origin, gw) = setup(upstream).await;
        for client_alpn in [
            &[b"http/1.1" as &[u8]][..],
            &[b"h2"],
            &[b"h2", b"http/1.1"],
            &[],
        ] {
            let (mut http, info) = through_proxy(gw.addr, HOST, &[gw.ca_der()], client_alpn).await;
            let want_h2 = client_alpn.first() == Some(&&b"h2"[..]);
            assert_eq!(
                http.is_h2(),
                want_h2,
                "client ALPN {client_alpn:?} got {:?}",
                info.alpn
            );
            for i in 0..3 {
                let body = Bytes::from(format!("{{\"i\":{i}}}"));
                let resp = http.send("POST", HOST, "/echo", body.clone()).await;
                assert_eq!(resp.status(), 200);
                let json = body_json(resp).await;
                assert_eq!(json["len"], body.len(), "{json}");
                assert_eq!(json["method"], "POST");
                // kt mirrors the client's protocol when the upstream
                // speaks both, and translates when it speaks only one.
                let expect_version = match (upstream, want_h2) {
                    (Alpn::H1, _) | (Alpn::Both, false) => "HTTP/1.1",
                    (Alpn::H2, _) | (Alpn::Both, true) => "HTTP/2.0",
                };
                assert_eq!(
                    json["version"], expect_version,
                    "upstream {upstream:?}: {json}"
                );
                let host = json["headers"]["host"].as_str().map(str::to_owned);
                if upstream == Alpn::H1 {
                    assert_eq!(host.as_deref(), Some(HOST), "{json}");
                }
                assert!(json["headers"].get("proxy-connection").is_none());
            }
        }
        // Upstream connections are pooled across client connections.
        assert!(
            origin.conns.load(std::sync::atomic::Ordering::SeqCst) <= 5,
            "upstream {upstream:?}: {} connections for 4 clients",
            origin.conns.load(std::sync::atomic::Ordering::SeqCst)
        );
    }
}

#[tokio::test]
async fn sse_events_arrive_one_by_one() {
    let (_ca, origin, gw) = setup(Alpn::Both).await;
    for alpn in [&[b"http/1.1" as &[u8]][..], &[b"h2"]] {
        let (mut http, _) = through_proxy(gw.addr, HOST, &[gw.ca_der()], alpn).await;
        let resp = http.send("POST", HOST, "/sse", Bytes::new()).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let mut body = resp.into_body();
        let mut seen = String::new();
        for i in 0..5 {
            // The origin holds event i+1 until we release it: a proxy that
            // buffered the stream would never deliver event i.
            let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
                .await
                .expect("event not forwarded while the stream is open")
                .unwrap()
                .unwrap();
            let data = frame.into_data().unwrap();
            seen.push_str(std::str::from_utf8(&data).unwrap());
            assert!(seen.contains(&format!("\"n\":{i}")), "{seen:?}");
            assert!(!seen.contains(&format!("\"n\":{}", i + 1)), "{seen:?}");
            origin.sse_gate.add_permits(1);
        }
        let rest = tokio::time::timeout(Duration::from_secs(10), body.collect())
            .await
            .unwrap()
            .unwrap()
            .to_bytes();
        assert_eq!(&rest[..], b"data: [DONE]\n\n");
    }
}

#[tokio::test]
async fn one_megabyte_both_ways() {
    let (_ca, _origin, gw) = setup(Alpn::Both).await;
    for alpn in [&[b"http/1.1" as &[u8]][..], &[b"h2"]] {
        let (mut http, _) = through_proxy(gw.addr, HOST, &[gw.ca_der()], alpn).await;
        let up: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
        let sum: u64 = up.iter().map(|b| *b as u64).sum();
        let json = body_json(http.send("POST", HOST, "/echo", Bytes::from(up)).await).await;
        assert_eq!(json["len"], 1024 * 1024);
        assert_eq!(json["sum"], sum);
        let resp = http.send("GET", HOST, "/large/1048576", Bytes::new()).await;
        assert_eq!(resp.status(), 200);
        let down = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(down.len(), 1024 * 1024);
        assert_eq!(down[65536], 1, "second chunk starts with its index");
    }
}

#[tokio::test]
async fn websocket_upgrade_is_bridged() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_ca, _origin, gw) = setup(Alpn::Both).await;
    // Browsers' WebSocket ClientHellos carry no ALPN: HTTP/1.1.
    let (head, mut tls) = client::websocket(gw.addr, HOST, "/ws", &[gw.ca_der()]).await;
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    for msg in [&b"hello"[..], b"second frame", &[0u8, 255, 7]] {
        tls.write_all(msg).await.unwrap();
        let mut echo = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(10), tls.read_exact(&mut echo))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(echo, msg);
    }
}

#[tokio::test]
async fn untrusted_upstream_is_a_502_naming_host_and_reason() {
    let real_ca = TestCa::new("the origin's CA");
    let other_ca = TestCa::new("a CA the gateway trusts");
    let origin = Origin::tls(&real_ca, &[HOST], Alpn::Both).await;
    let addr = origin.addr;
    let gw = TestGateway::start(&other_ca, |s| {
        s.connect_to = vec![connect_to(HOST, 443, addr)]
    })
    .await;
    let (mut http, _) = through_proxy(gw.addr, HOST, &[gw.ca_der()], &[b"http/1.1"]).await;
    let resp = http
        .send("POST", HOST, "/echo", Bytes::from_static(b"{}"))
        .await;
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["x-kt-error"], "upstream_tls");
    let body = body_string(resp).await;
    assert!(body.contains(HOST), "{body}");
    assert!(body.contains("issued by a CA kt does not trust"), "{body}");
    assert_eq!(origin.hits.load(std::sync::atomic::Ordering::SeqCst), 0);

    // A trusted certificate for other names: the reason lists them plainly.
    let names = [
        "a.example",
        "b.example",
        "c.example",
        "d.example",
        "e.example",
        "f.example",
        "g.example",
    ];
    let other = Origin::tls(&other_ca, &names, Alpn::Both).await;
    let gw = TestGateway::start(&other_ca, |s| {
        s.connect_to = vec![connect_to(HOST, 443, other.addr)]
    })
    .await;
    let (mut http, _) = through_proxy(gw.addr, HOST, &[gw.ca_der()], &[b"http/1.1"]).await;
    let resp = http
        .send("POST", HOST, "/echo", Bytes::from_static(b"{}"))
        .await;
    assert_eq!(resp.status(), 502);
    let body = body_string(resp).await;
    assert!(
        body.contains(&format!(
            "it is not valid for {HOST} but for a.example, b.example, c.example, d.example, e.example and 2 more"
        )),
        "{body}"
    );
    assert!(!body.contains("DnsName"), "{body}");
}

#[tokio::test]
async fn dial_failure_is_a_502_on_the_connect() {
    let ca = TestCa::new("ca");
    // A port nothing listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let gw = TestGateway::start(&ca, |s| {
        s.connect_to = vec![
            connect_to(HOST, 443, closed),
            connect_to("example.org", 443, closed),
        ]
    })
    .await;
    for target in [HOST, "example.org"] {
        let (_s, reply) = client::connect(gw.addr, &format!("{target}:443")).await;
        assert_eq!(reply.status, 502, "{target}: {reply:?}");
        assert!(reply.body.contains("cannot connect"), "{reply:?}");
        assert!(reply
            .head
            .to_ascii_lowercase()
            .contains("x-kt-error: upstream_connect"));
    }
}

#[tokio::test]
async fn plain_bytes_after_connect_to_an_intercepted_host_are_tunnelled() {
    let ca = TestCa::new("ca");
    let origin = Origin::plain().await;
    let addr = origin.addr;
    let gw = TestGateway::start(&ca, |s| {
        s.connect_to = vec![connect_to(HOST, 80, addr)];
        s.limits.allowed_connect_ports.push(80);
    })
    .await;
    let (s, reply) = client::connect(gw.addr, &format!("{HOST}:80")).await;
    assert_eq!(reply.status, 200);
    let mut http = client::Http::over(s, false).await;
    let json = body_json(
        http.send("POST", HOST, "/echo", Bytes::from_static(b"abc"))
            .await,
    )
    .await;
    assert_eq!(json["len"], 3);
}

/// A gateway sending `plain.test:80` to a plain-HTTP origin.
async fn plain_setup() -> (Origin, TestGateway) {
    let ca = TestCa::new("ca");
    let origin = Origin::plain().await;
    let addr = origin.addr;
    let gw = TestGateway::start(&ca, |s| {
        s.connect_to = vec![connect_to("plain.test", 80, addr)]
    })
    .await;
    (origin, gw)
}

#[tokio::test]
async fn absolute_form_http_is_forwarded() {
    let (_origin, gw) = plain_setup().await;
    let out = client::raw_exchange(
        gw.addr,
        b"POST http://plain.test/echo HTTP/1.1\r\nHost: plain.test\r\nProxy-Connection: keep-alive\r\n\
          Proxy-Authorization: Basic c2VjcmV0\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let json = client::raw_json_body(&out);
    assert_eq!(json["uri"], "/echo", "origin-form upstream: {json}");
    assert_eq!(json["len"], 2);
    assert!(
        json["headers"].get("proxy-authorization").is_none(),
        "{json}"
    );
    assert!(json["headers"].get("proxy-connection").is_none(), "{json}");
}

/// An HTTP/1.0 origin (it answers and closes, no length) still gives an
/// HTTP/1.1 client kt's own version, and the client's connection stays
/// open for its next request.
#[tokio::test]
async fn an_http10_origin_is_answered_in_http11_on_a_kept_connection() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let origin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = origin.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = origin.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nold server")
                    .await;
            });
        }
    });
    let ca = TestCa::new("ca");
    let gw = TestGateway::start(&ca, |s| {
        s.connect_to = vec![connect_to("old.test", 80, addr)]
    })
    .await;
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let mut s = BufReader::new(tcp);
    for round in 0..2 {
        s.get_mut()
            .write_all(b"GET http://old.test/ HTTP/1.1\r\nHost: old.test\r\n\r\n")
            .await
            .unwrap();
        let mut status = String::new();
        s.read_line(&mut status).await.unwrap();
        assert!(
            status.starts_with("HTTP/1.1 200"),
            "round {round}: {status:?}"
        );
        let mut chunked = false;
        let mut length = None;
        loop {
            let mut line = String::new();
            s.read_line(&mut line).await.unwrap();
            let l = line.to_ascii_lowercase();
            assert!(!l.starts_with("connection: close"), "round {round}: {l:?}");
            chunked |= l.starts_with("transfer-encoding: chunked");
            if let Some(v) = l.strip_prefix("content-length:") {
                length = Some(v.trim().parse::<usize>().unwrap());
            }
            if line == "\r\n" {
                break;
            }
        }
        let body = if let Some(n) = length {
            let mut b = vec![0; n];
            s.read_exact(&mut b).await.unwrap();
            b
        } else {
            assert!(chunked, "round {round}: neither a length nor chunks");
            let mut b = Vec::new();
            loop {
                let mut size = String::new();
                s.read_line(&mut size).await.unwrap();
                let n = usize::from_str_radix(size.trim(), 16).unwrap();
                let mut chunk = vec![0; n + 2];
                s.read_exact(&mut chunk).await.unwrap();
                if n == 0 {
                    break;
                }
                b.extend_from_slice(&chunk[..n]);
            }
            b
        };
        assert_eq!(body, b"old server", "round {round}");
    }
}

/// Reads until kt closes its side (EOF or a reset).
async fn until_closed(s: &mut tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .expect("kt kept the failed connection open");
}

/// A client that refuses kt's certificate never sends a request, so the
/// handshake is the only place it shows: counted by cause in `/metrics`,
/// and a `connect` event with the cause when the audit logs all access.
#[tokio::test]
async fn clients_that_refuse_the_kt_certificate_are_counted_and_recorded() {
    use keeptrusts::config::PolicyConfig;
    use keeptrusts::events::{read_last, Filters};
    use tokio::io::AsyncWriteExt;

    let ca = TestCa::new("upstream test CA");
    let origin = Origin::tls(&ca, &[HOST], Alpn::Both).await;
    let yaml =
        "policies:\n  chain: [audit-logger]\npolicy:\n  audit-logger:\n    log_all_access: true\n";
    let config =
        std::sync::Arc::new(PolicyConfig::parse(yaml, std::path::Path::new("t.yaml")).unwrap());
    let mut gw = TestGateway::start(&ca, |s| {
        s.connect_to = vec![connect_to(HOST, 443, origin.addr)];
        s.apply_config(&config);
        // Short, for the stalled client below; the others finish at once.
        s.limits.client_tls_handshake = Duration::from_millis(300);
    })
    .await;
    let target = format!("{HOST}:443");
    let before = gw.metrics_text().await;
    for reason in ["untrusted_ca", "closed", "timeout", "protocol"] {
        let zero = format!("kt_client_tls_failures_total{{reason=\"{reason}\"}} 0");
        assert!(before.lines().any(|l| l == zero), "{zero}:\n{before}");
    }

    // A client that trusts another CA only (rustls answers `unknown_ca`,
    // as OpenSSL-based clients do).
    let e = client::refused_tls(gw.addr, &target, HOST, std::slice::from_ref(&ca.cert_der)).await;
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");

    // A client that hangs up in the middle of its ClientHello.
    let (mut tcp, _) = client::connect(gw.addr, &target).await;
    tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01])
        .await
        .unwrap();
    tcp.shutdown().await.unwrap();
    until_closed(&mut tcp).await;

    // A client that stalls in the middle of its ClientHello: kt gives up
    // at the handshake limit, counts it, then closes.
    let (mut tcp, _) = client::connect(gw.addr, &target).await;
    tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01])
        .await
        .unwrap();
    until_closed(&mut tcp).await;

    let metrics = gw.metrics_text().await;
    for line in [
        "kt_client_tls_failures_total{reason=\"untrusted_ca\"} 1",
        "kt_client_tls_failures_total{reason=\"closed\"} 1",
        "kt_client_tls_failures_total{reason=\"timeout\"} 1",
        "kt_client_tls_failures_total{reason=\"protocol\"} 0",
        "kt_intercepted_unused_total 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line}:\n{metrics}");
    }

    // A client that completes the handshake and leaves without a request:
    // how Node.js refuses a certificate. kt notices once the connection has
    // ended on its side, so the counter is read until it moves (bounded).
    let (tcp, _) = client::connect(gw.addr, &target).await;
    let mut tls = client::tls(tcp, HOST, &[gw.ca_der()], &[b"http/1.1"])
        .await
        .unwrap();
    tls.shutdown().await.unwrap();
    let mut tcp = tls.into_inner().0;
    until_closed(&mut tcp).await;
    let mut metrics = String::new();
    for _ in 0..500 {
        metrics = gw.metrics_text().await;
        if metrics
            .lines()
            .any(|l| l == "kt_intercepted_unused_total 1")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        metrics
            .lines()
            .any(|l| l == "kt_intercepted_unused_total 1"),
        "{metrics}"
    );

    // The audit trail has the three failures, each naming its cause.
    let dir = gw.close_events().await;
    let (events, _) = read_last(&dir, 10, &Filters::default()).unwrap();
    let failures: Vec<_> = events
        .iter()
        .map(|e| {
            (
                e.phase.as_str(),
                e.action.as_str(),
                e.host.as_deref().unwrap_or(""),
                e.reason.as_deref().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(failures.len(), 3, "{failures:?}");
    for (phase, action, host, _) in &failures {
        assert_eq!(
            (*phase, *action, *host),
            ("connect", "error", target.as_str())
        );
    }
    assert!(
        failures[0]
            .3
            .starts_with("client_tls_untrusted_ca: the client does not trust the kt CA"),
        "{failures:?}"
    );
    assert!(
        failures[1].3.starts_with("client_tls_closed: "),
        "{failures:?}"
    );
    assert!(
        failures[2].3.starts_with("client_tls_timeout: ")
            && failures[2].3.contains("no handshake within 300ms"),
        "{failures:?}"
    );
}

/// `TE: trailers` reaches the upstream over either protocol (gRPC servers
/// refuse calls without it), named by `Connection` on HTTP/1.1; other TE
/// codings stay on the hop they were sent for.
#[tokio::test]
async fn te_trailers_reaches_the_upstream() {
    for upstream in [Alpn::H1, Alpn::H2] {
        let (_ca, _origin, gw) = setup(upstream).await;
        for client_alpn in [&[b"http/1.1" as &[u8]][..], &[b"h2"]] {
            let (mut http, _) = through_proxy(gw.addr, HOST, &[gw.ca_der()], client_alpn).await;
            let mut b = http::Request::builder().method("POST");
            b = if http.is_h2() {
                b.uri(format!("https://{HOST}/echo"))
                    .header("te", "trailers")
            } else {
                b.uri("/echo")
                    .header("host", HOST)
                    .header("connection", "te")
                    .header("te", "gzip;q=0.5, trailers")
            };
            let req = b.body(http_body_util::Full::new(Bytes::new())).unwrap();
            let json = body_json(http.request(req).await).await;
            let case = format!("{upstream:?} upstream, client {client_alpn:?}: {json}");
            assert_eq!(json["headers"]["te"], "trailers", "{case}");
            let connection = json["headers"].get("connection").and_then(|c| c.as_str());
            let want = (upstream == Alpn::H1).then_some("te");
            assert_eq!(connection, want, "{case}");
        }
    }
}

/// A TLS origin that ends a length-less HTTP/1.0 body by closing TCP
/// without TLS's `close_notify` (many servers do) is answered in full, the
/// close taken as the end of the body, as curl and browsers take it.
#[tokio::test]
async fn a_body_ended_by_a_close_without_close_notify_arrives_whole() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = TestCa::new("upstream test CA");
    let acceptor = ca.h1_acceptor(&[HOST]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let body: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let sent = body.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, body) = (acceptor.clone(), sent.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tls.write_all(b"HTTP/1.0 200 OK\r\n\r\n").await;
                let _ = tls.write_all(&body).await;
                let _ = tls.flush().await;
                // Dropping the TCP stream under TLS: no close_notify.
                let (tcp, _) = tls.into_inner();
                drop(tcp);
            });
        }
    });
    let gw = TestGateway::start(&ca, |s| s.connect_to = vec![connect_to(HOST, 443, addr)]).await;
    for client_alpn in [&[b"http/1.1" as &[u8]][..], &[b"h2"]] {
        let (mut http, _) = through_proxy(gw.addr, HOST, &[gw.ca_der()], client_alpn).await;
        let resp = http.send("GET", HOST, "/old", Bytes::new()).await;
        assert_eq!(resp.status(), 200, "{client_alpn:?}");
        let got = resp.into_body().collect().await;
        let got = got.map(|b| b.to_bytes().len()).map_err(|e| e.to_string());
        assert_eq!(got, Ok(body.len()), "client {client_alpn:?}");
    }
}

/// A request body that breaks on the client's side (bad chunking) while kt
/// streams it upstream is the client's error: 400, not a 502 blaming the
/// upstream.
#[tokio::test]
async fn a_malformed_streamed_request_body_is_a_400() {
    let (_origin, gw) = plain_setup().await;
    let out = client::raw_exchange(
        gw.addr,
        b"POST http://plain.test/echo HTTP/1.1\r\nHost: plain.test\r\n\
          Transfer-Encoding: chunked\r\n\r\n2\r\nhi\r\nzz\r\nmore\r\n0\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("x-kt-error: client_body"), "{out}");
}
