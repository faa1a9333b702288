//! Upstream faults: refused connections, resets mid-stream, TLS alerts,
//! expired and wrong-name certificates, a provider that never answers and
//! one that stalls mid-stream. Each gets its documented answer and an
//! audit event, the gateway keeps serving, and a batch of them leaves no
//! file descriptors or tasks behind.

use crate::common::client::{self, body_string, through_proxy, Http};
use crate::common::origin::{Alpn, Origin};
use crate::common::probe::{self, assert_healthy, wait_until, BOUND};
use crate::common::{connect_to, TestCa, TestGateway};
use crate::suite::hostile::{events, outputs};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use keeptrusts::config::PolicyConfig;
use keeptrusts::gateway::GatewaySettings;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

const HOST: &str = "api.openai.com";
const AUDIT: &str = "policies:\n  chain: [audit-logger]\npolicy:\n  audit-logger: {}\n";
const AUDIT_REDACT: &str = "policies:\n  chain: [audit-logger, secret-redaction]\npolicy:\n  audit-logger: {}\n  secret-redaction:\n    type: redact\n";

async fn gateway(
    ca: &TestCa,
    yaml: &str,
    upstream: SocketAddr,
    configure: impl FnOnce(&mut GatewaySettings),
) -> TestGateway {
    let config = Arc::new(PolicyConfig::parse(yaml, Path::new("t.yaml")).unwrap());
    TestGateway::start(ca, |s| {
        s.connect_to.push(connect_to(HOST, 443, upstream));
        s.connect_to.push(connect_to("example.org", 443, upstream));
        s.apply_config(&config);
        configure(s);
    })
    .await
}

/// A port on 127.0.0.1 where nothing listens.
async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// A TCP server running `handle` for each connection it accepts.
async fn fault_server<F, Fut>(handle: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(handle(s));
        }
    });
    addr
}

/// An HTTPS (HTTP/1.1) server that answers every request with an event
/// stream, sends one event, then resets the TCP connection once `reset`
/// is notified (the test has the event by then).
async fn resetting_origin(ca: &TestCa) -> (SocketAddr, Arc<Notify>) {
    let reset = Arc::new(Notify::new());
    let addr = resetting_origin_with(ca, reset.clone()).await;
    (addr, reset)
}

async fn resetting_origin_with(ca: &TestCa, reset: Arc<Notify>) -> SocketAddr {
    let acceptor = ca.h1_acceptor(&[HOST]);
    fault_server(move |tcp| {
        let acceptor = acceptor.clone();
        let reset = reset.clone();
        async move {
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                return;
            };
            // The request head and its Content-Length body.
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            let body_len = loop {
                let Ok(n) = tls.read(&mut buf).await else { return };
                if n == 0 {
                    return;
                }
                got.extend_from_slice(&buf[..n]);
                if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    break end + 4 + len;
                }
            };
            while got.len() < body_len {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let event = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"partial\"}}]}\n\n";
            let mut out = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            out.extend_from_slice(format!("{:x}\r\n", event.len()).as_bytes());
            out.extend_from_slice(event);
            out.extend_from_slice(b"\r\n");
            if tls.write_all(&out).await.is_err() || tls.flush().await.is_err() {
                return;
            }
            // A reset discards unread data at the receiver: wait until
            // the test has the event (bounded, should it never come).
            let _ = tokio::time::timeout(BOUND, reset.notified()).await;
            let (tcp, _) = tls.into_inner();
            // SO_LINGER 0: close() sends RST instead of FIN.
            let _ = tcp.set_zero_linger();
            drop(tcp);
        }
    })
    .await
}

/// A server that answers the ClientHello with a fatal handshake_failure
/// alert.
async fn alerting_origin() -> SocketAddr {
    fault_server(|mut tcp| async move {
        let mut buf = [0u8; 1024];
        let _ = tcp.read(&mut buf).await;
        let _ = tcp
            .write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28])
            .await;
    })
    .await
}

fn chat(stream: bool) -> Bytes {
    Bytes::from(
        serde_json::json!({"model": "gpt-4o", "stream": stream,
            "messages": [{"role": "user", "content": "hi"}]})
        .to_string(),
    )
}

async fn post_chat(
    http: &mut Http,
    stream: bool,
    headers: &[(&str, &str)],
) -> http::Response<hyper::body::Incoming> {
    let mut b = http::Request::builder()
        .method("POST")
        .header("content-type", "application/json");
    b = if http.is_h2() {
        b.uri(format!("https://{HOST}/v1/chat/completions"))
    } else {
        b.uri("/v1/chat/completions").header("host", HOST)
    };
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    http.request(b.body(Full::new(chat(stream))).unwrap()).await
}

#[tokio::test]
async fn refused_upstreams_are_502_on_the_connect_or_the_request() {
    let ca = TestCa::new("faults CA");
    let refused = closed_port().await;
    let mut gw = gateway(&ca, AUDIT, refused, |_| {}).await;
    // A blind tunnel and an intercepted host: 502 on the CONNECT itself.
    for target in ["example.org:443", "api.openai.com:443"] {
        let (_s, reply) = client::connect(gw.addr, target).await;
        assert_eq!(reply.status, 502, "{target}: {reply:?}");
        assert!(
            reply.head.contains("x-kt-error: upstream_connect"),
            "{reply:?}"
        );
        let host = target.split(':').next().unwrap();
        assert!(reply.body.contains(host), "{target}: {}", reply.body);
        assert!(reply.body.contains(&refused.to_string()), "{}", reply.body);
        assert_healthy(gw.addr).await;
    }

    // The upstream goes away after the CONNECT: each request is a 502
    // naming the host.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gone = l.local_addr().unwrap();
    let mut gw2 = gateway(&ca, AUDIT, gone, |_| {}).await;
    let (s, reply) = client::connect(gw2.addr, &format!("{HOST}:443")).await;
    assert_eq!(reply.status, 200);
    let (predialed, _) = l.accept().await.unwrap();
    drop(predialed);
    drop(l);
    let tls = client::tls(s, HOST, &[gw2.ca_der()], &[b"http/1.1"])
        .await
        .unwrap();
    let mut http = Http::over(tls, false).await;
    let resp = post_chat(&mut http, false, &[]).await;
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["x-kt-error"], "upstream_connect");
    let body = body_string(resp).await;
    assert!(body.contains(HOST), "{body}");
    let events = events(&mut gw2).await;
    let out = outputs(&events);
    assert_eq!(out.len(), 1, "{events:?}");
    assert_eq!(out[0].action.as_str(), "error");
    assert!(
        out[0]
            .reason
            .as_deref()
            .unwrap_or("")
            .starts_with("upstream_connect"),
        "{:?}",
        out[0]
    );
    let _ = gw.close_events().await;
}

#[tokio::test]
async fn a_reset_mid_stream_ends_the_client_stream_with_an_error_event() {
    let ca = TestCa::new("faults CA");
    let (origin, reset) = resetting_origin(&ca).await;
    for yaml in [AUDIT, AUDIT_REDACT] {
        let mut gw = gateway(&ca, yaml, origin, |_| {}).await;
        for h2 in [false, true] {
            let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
            let (mut http, _) = through_proxy(gw.addr, HOST, &[gw.ca_der()], alpn).await;
            let resp = post_chat(&mut http, true, &[]).await;
            assert_eq!(resp.status(), 200);
            let mut body = resp.into_body();
            let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
            let mut got = first.to_vec();
            reset.notify_one();
            let end = tokio::time::timeout(BOUND, async {
                loop {
                    match body.frame().await {
                        None => return Ok(()),
                        Some(Err(e)) => return Err(e),
                        Some(Ok(f)) => {
                            got.extend_from_slice(f.data_ref().map(|d| &d[..]).unwrap_or(&[]))
                        }
                    }
                }
            })
            .await
            .expect("the client stream hung after the upstream reset");
            assert!(
                end.is_err(),
                "{yaml} h2={h2}: the stream ended cleanly: {:?}",
                String::from_utf8_lossy(&got)
            );
            assert!(
                String::from_utf8_lossy(&got).contains("partial"),
                "{yaml} h2={h2}"
            );
            assert_healthy(gw.addr).await;
        }
        let events = events(&mut gw).await;
        let out = outputs(&events);
        assert_eq!(out.len(), 2, "{events:?}");
        for ev in out {
            assert_eq!(ev.action.as_str(), "error", "{ev:?}");
            assert_eq!(ev.status, Some(200));
            let reason = ev.reason.as_deref().unwrap_or("");
            assert!(reason.starts_with("upstream_stream"), "{reason}");
            // Nothing billable is known of a broken exchange: no estimate.
            assert_eq!((ev.tokens_in, ev.tokens_out), (None, None), "{ev:?}");
        }
    }
}

#[tokio::test]
async fn tls_failures_upstream_are_502_naming_host_and_reason() {
    let ca = TestCa::new("faults CA");
    let alert = alerting_origin().await;
    let eof = fault_server(|tcp| async move { drop(tcp) }).await;
    let (chain, key) = ca.expired_cert(&[HOST]);
    let expired = Origin::tls_with(chain, key, Alpn::Both).await;
    let wrong_name = Origin::tls(&ca, &["other.example"], Alpn::Both).await;
    let cases = [
        (alert, "HandshakeFailure"),
        (eof, "upstream_tls"),
        (expired.addr, "it expired at 2019-12-31T00:00:00.000Z"),
        (
            wrong_name.addr,
            "it is not valid for api.openai.com but for other.example",
        ),
    ];
    for (addr, reason) in cases {
        let mut gw = gateway(&ca, AUDIT, addr, |_| {}).await;
        let (mut http, _) = through_proxy(gw.addr, HOST, &[gw.ca_der()], &[b"http/1.1"]).await;
        let resp = post_chat(&mut http, false, &[]).await;
        assert_eq!(resp.status(), 502, "{reason}");
        assert_eq!(resp.headers()["x-kt-error"], "upstream_tls");
        let body = body_string(resp).await;
        assert!(body.contains(HOST), "{body}");
        assert!(
            body.contains(reason) || reason == "upstream_tls",
            "{reason}: {body}"
        );
        assert_healthy(gw.addr).await;
        let events = events(&mut gw).await;
        let out = outputs(&events);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].action.as_str(), "error");
        assert_eq!(out[0].status, Some(502));
    }
    assert_eq!(expired.hits.load(Ordering::SeqCst), 0);
    assert_eq!(wrong_name.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_silent_provider_is_504_and_a_stalled_stream_is_cut_at_the_idle_limit() {
    let ca = TestCa::new("faults CA");
    let origin = Origin::tls(&ca, &[HOST], Alpn::Both).await;
    let idle = Duration::from_millis(600);
    let mut gw = gateway(&ca, AUDIT, origin.addr, |s| {
        s.upstream_timeouts.response_head = Duration::from_millis(300);
        s.limits.idle = idle;
    })
    .await;
    let (mut http, _) = through_proxy(gw.addr, HOST, &[gw.ca_der()], &[b"h2"]).await;
    let resp = post_chat(&mut http, false, &[("x-test-hang", "1")]).await;
    assert_eq!(resp.status(), 504);
    assert_eq!(resp.headers()["x-kt-error"], "upstream_timeout");
    assert!(body_string(resp).await.contains(HOST));

    // First event, then nothing: the connection is closed once idle.
    let resp = post_chat(
        &mut http,
        true,
        &[("x-test-gated", "1"), ("x-test-reply", "aaaa bbbb cccc")],
    )
    .await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.data_ref().is_some());
    let stalled = Instant::now();
    let rest = tokio::time::timeout(BOUND, body.collect())
        .await
        .expect("a stalled stream was never cut");
    assert!(rest.is_err(), "the stalled stream ended as if complete");
    assert!(
        stalled.elapsed() >= idle / 2,
        "cut before the idle limit: {:?}",
        stalled.elapsed()
    );
    let cancelled = wait_until(BOUND, || async {
        origin.aborted.load(Ordering::SeqCst) == 1
    })
    .await;
    assert!(cancelled, "the upstream stream was left open");
    assert_healthy(gw.addr).await;

    let events = events(&mut gw).await;
    let out = outputs(&events);
    assert_eq!(out.len(), 2, "{events:?}");
    assert_eq!(out[0].status, Some(504));
    assert!(out[0]
        .reason
        .as_deref()
        .unwrap_or("")
        .starts_with("upstream_timeout"));
    assert_eq!(out[1].action.as_str(), "error");
}

/// An HTTP/1.1 request moves no byte while its provider thinks: the idle
/// limit does not cut it, the response timeout answers it.
#[tokio::test]
async fn an_http1_request_waiting_longer_than_the_idle_limit_gets_its_answer() {
    let ca = TestCa::new("faults CA");
    let origin = Origin::tls(&ca, &[HOST], Alpn::Both).await;
    let idle = Duration::from_millis(300);
    let gw = gateway(&ca, AUDIT, origin.addr, |s| {
        s.upstream_timeouts.response_head = idle * 5;
        s.limits.idle = idle;
    })
    .await;
    let (mut http, _) = through_proxy(gw.addr, HOST, &[gw.ca_der()], &[b"http/1.1"]).await;
    assert!(!http.is_h2());
    let asked = Instant::now();
    let resp = post_chat(&mut http, false, &[("x-test-hang", "1")]).await;
    assert_eq!(resp.status(), 504);
    assert_eq!(resp.headers()["x-kt-error"], "upstream_timeout");
    assert!(asked.elapsed() >= idle * 4, "{:?}", asked.elapsed());
    assert!(body_string(resp).await.contains(HOST));
    // The connection serves the next request too.
    let resp = post_chat(&mut http, false, &[]).await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn the_response_timeout_comes_from_the_config() {
    let ca = TestCa::new("faults CA");
    let origin = Origin::tls(&ca, &[HOST], Alpn::Both).await;
    let yaml = format!("{AUDIT}upstream:\n  response_timeout_seconds: 1\n");
    let gw = gateway(&ca, &yaml, origin.addr, |_| {}).await;
    let (mut http, _) = through_proxy(gw.addr, HOST, &[gw.ca_der()], &[b"h2"]).await;
    let asked = Instant::now();
    let resp = post_chat(&mut http, false, &[("x-test-hang", "1")]).await;
    assert_eq!(resp.status(), 504);
    assert_eq!(resp.headers()["x-kt-error"], "upstream_timeout");
    assert!(
        asked.elapsed() >= Duration::from_millis(900),
        "{:?}",
        asked.elapsed()
    );
    assert!(body_string(resp).await.contains("1 s"));
}

#[tokio::test]
async fn a_batch_of_faults_leaves_no_fds_or_tasks_behind() {
    let ca = TestCa::new("faults CA");
    let (reset_addr, reset) = resetting_origin(&ca).await;
    let alert = alerting_origin().await;
    let refused = closed_port().await;
    let gw_reset = gateway(&ca, AUDIT_REDACT, reset_addr, |_| {}).await;
    let gw_alert = gateway(&ca, AUDIT, alert, |_| {}).await;
    let gw_refused = gateway(&ca, AUDIT, refused, |_| {}).await;
    let round = || async {
        let (_s, reply) = client::connect(gw_refused.addr, &format!("{HOST}:443")).await;
        assert_eq!(reply.status, 502);
        let (mut http, _) =
            through_proxy(gw_alert.addr, HOST, &[gw_alert.ca_der()], &[b"http/1.1"]).await;
        assert_eq!(post_chat(&mut http, false, &[]).await.status(), 502);
        let (mut http, _) =
            through_proxy(gw_reset.addr, HOST, &[gw_reset.ca_der()], &[b"h2"]).await;
        let mut body = post_chat(&mut http, true, &[]).await.into_body();
        assert!(body.frame().await.unwrap().is_ok());
        reset.notify_one();
        assert!(body.collect().await.is_err());
    };
    // Warm up (cert caches, the audit writers), then measure.
    round().await;
    let (fds, tasks) = (probe::open_fds(), probe::alive_tasks());
    const ROUNDS: usize = 25;
    for _ in 0..ROUNDS {
        round().await;
    }
    // Connections close asynchronously: poll (bounded) until back near the
    // start. A leak per fault would leave at least ROUNDS behind.
    // Tasks are counted on this test's own runtime; fds are process-wide,
    // so other tests' sockets blur them: a wider margin.
    let fds_back = wait_until(BOUND, || async { probe::open_fds() <= fds + ROUNDS }).await;
    let tasks_back = wait_until(BOUND, || async { probe::alive_tasks() <= tasks + 8 }).await;
    eprintln!(
        "after {ROUNDS} fault rounds: fds {fds} -> {}, tasks {tasks} -> {}",
        probe::open_fds(),
        probe::alive_tasks()
    );
    assert!(fds_back, "fds {fds} -> {}", probe::open_fds());
    assert!(tasks_back, "tasks {tasks} -> {}", probe::alive_tasks());
    for gw in [&gw_reset, &gw_alert, &gw_refused] {
        assert_healthy(gw.addr).await;
    }
}

/// Each h2 stream to an HTTP/1.1 provider needs a connection of its own
/// there, so a client opening many streams could spend every descriptor
/// kt has. Upstream connections are bounded: past the bound a request
/// waits up to the connect timeout for one to close, then gets `503`, and
/// a connection that closes makes room again.
#[tokio::test]
async fn upstream_connections_are_bounded_and_come_free_again() {
    let ca = TestCa::new("ca");
    let origin = Origin::tls(&ca, &[HOST], Alpn::H1).await;
    let gw = gateway(&ca, AUDIT, origin.addr, |s| {
        s.upstream_timeouts.max_connections = Some(2);
        s.upstream_timeouts.connect = Duration::from_millis(300);
    })
    .await;
    let (http, _) = through_proxy(gw.addr, HOST, &[gw.ca_der()], &[b"h2"]).await;
    let Http::H2(sender) = http else {
        panic!("the gateway did not speak h2")
    };
    let get = |path: &str| {
        http::Request::get(format!("https://{HOST}{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    // A first request: its connection (and the one dialed at CONNECT) pooled.
    let first = sender.clone().send_request(get("/echo")).await.unwrap();
    assert_eq!(first.status(), 200);
    drop(body_string(first).await);
    // Two streams the provider never answers hold both connections.
    let hung: Vec<_> = (0..2)
        .map(|_| {
            let mut s = sender.clone();
            let req = get("/hang");
            tokio::spawn(async move { s.send_request(req).await })
        })
        .collect();
    let hits = origin.hits.clone();
    assert!(
        wait_until(BOUND, || {
            let h = hits.clone();
            async move { h.load(Ordering::SeqCst) >= 3 }
        })
        .await
    );
    let opened = origin.conns.load(Ordering::SeqCst);

    let resp = sender.clone().send_request(get("/echo")).await.unwrap();
    assert_eq!(resp.status(), 503);
    let body = body_string(resp).await;
    assert!(body.contains("upstream_connections_exhausted"), "{body}");
    assert_eq!(
        origin.conns.load(Ordering::SeqCst),
        opened,
        "a third connection was opened"
    );

    // The client gives up on one stream: its connection closes, and the
    // next request gets its place.
    hung[0].abort();
    let freed = wait_until(BOUND, || {
        let mut s = sender.clone();
        let req = get("/echo");
        async move { s.send_request(req).await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    assert!(freed, "no upstream connection came free");
    hung[1].abort();
}

/// An upstream that answers `101 Switching Protocols` to a request that
/// asked for no upgrade gets `502` on the LLM path (nothing can be relayed
/// after it), and a CONNECT sent inside an intercepted session is refused
/// with `405` rather than sent upstream.
#[tokio::test]
async fn an_unasked_upgrade_is_502_and_a_connect_inside_a_session_is_405() {
    let ca = TestCa::new("ca");
    let origin = Origin::tls(&ca, &[HOST], Alpn::H1).await;
    let gw = gateway(&ca, AUDIT, origin.addr, |_| {}).await;
    let (mut http, _) = through_proxy(gw.addr, HOST, &[gw.ca_der()], &[b"http/1.1"]).await;
    let chat = http::Request::post("/v1/chat/completions")
        .header("host", HOST)
        .header("content-type", "application/json")
        .header("x-test-status", "101")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"m","messages":[]}"#,
        )))
        .unwrap();
    let resp = http.request(chat).await;
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["x-kt-error"], "upstream_protocol");
    let body = body_string(resp).await;
    assert!(
        body.contains("switched protocols without being asked"),
        "{body}"
    );

    let (mut http, _) = through_proxy(gw.addr, HOST, &[gw.ca_der()], &[b"http/1.1"]).await;
    let hits = origin.hits.load(Ordering::SeqCst);
    let inner = http::Request::connect("example.org:443")
        .header("host", "example.org:443")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = http.request(inner).await;
    assert_eq!(resp.status(), 405);
    assert_eq!(
        origin.hits.load(Ordering::SeqCst),
        hits,
        "the CONNECT went upstream"
    );
}

/// kt PINGs its HTTP/2 clients and they answer, so bytes move on an h2
/// connection nobody uses: such a connection is closed once no request has
/// been open for the idle limit, while a stream open longer than the limit
/// keeps it.
#[tokio::test]
async fn an_h2_connection_without_requests_is_closed_at_the_idle_limit_despite_pings() {
    let ca = TestCa::new("faults CA");
    let origin = Origin::tls(&ca, &[HOST], Alpn::Both).await;
    let idle = Duration::from_millis(600);
    let gw = gateway(&ca, AUDIT, origin.addr, |s| s.limits.idle = idle).await;
    let (tcp, reply) = client::connect(gw.addr, &format!("{HOST}:443")).await;
    assert_eq!(reply.status, 200);
    let tls = client::tls(tcp, HOST, &[gw.ca_der()], &[b"h2"])
        .await
        .unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    let mut conn = tokio::spawn(conn);
    let mut http = Http::H2(sender);

    // A stream whose events come at the test's pace, open for three times
    // the limit.
    let resp = post_chat(
        &mut http,
        true,
        &[
            ("x-test-gated", "1"),
            // 13 events of 4 characters: more than the test releases.
            (
                "x-test-reply",
                "a b c d e f g h i j k l m n o p q r s t u v w x y z",
            ),
        ],
    )
    .await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    assert!(body.frame().await.unwrap().unwrap().data_ref().is_some());
    for _ in 0..6 {
        let held = tokio::time::timeout(idle / 2, &mut conn).await;
        assert!(held.is_err(), "a connection with an open stream was closed");
        origin.sse_gate.add_permits(1);
        assert!(body.frame().await.unwrap().unwrap().data_ref().is_some());
    }
    origin.sse_gate.add_permits(64);
    let rest = tokio::time::timeout(BOUND, body.collect()).await;
    assert!(
        rest.is_ok_and(|r| r.is_ok()),
        "the held stream did not end whole"
    );

    // Nothing open now: closed about the limit later, PINGs or not.
    let quiet = Instant::now();
    let closed = tokio::time::timeout(BOUND, &mut conn).await;
    assert!(
        closed.is_ok(),
        "an unused h2 connection was kept past the idle limit"
    );
    assert!(
        quiet.elapsed() >= idle / 2,
        "closed early: {:?}",
        quiet.elapsed()
    );
}

/// The upstream connection dialed while the client's TLS handshake runs
/// is the one its first request uses: pooled fresh, it was once dropped as
/// "not ready" and a second connection dialed, a whole upstream handshake
/// added to the first request to a host.
#[tokio::test]
async fn the_connection_dialed_at_connect_serves_the_first_request() {
    let ca = TestCa::new("ca");
    for (alpn, client) in [(Alpn::H1, &b"http/1.1"[..]), (Alpn::Both, &b"h2"[..])] {
        let origin = Origin::tls(&ca, &[HOST], alpn).await;
        let gw = gateway(&ca, AUDIT, origin.addr, |_| {}).await;
        let (mut http, _) = through_proxy(gw.addr, HOST, &[gw.ca_der()], &[client]).await;
        for _ in 0..3 {
            let r = http
                .send("POST", HOST, "/echo", Bytes::from_static(b"{}"))
                .await;
            assert_eq!(r.status(), 200);
            drop(body_string(r).await);
        }
        assert_eq!(
            origin.conns.load(Ordering::SeqCst),
            1,
            "{:?}",
            std::str::from_utf8(client)
        );
    }
}

/// An upstream that takes the TCP connection and never finishes TLS: the
/// handshake dialed at CONNECT times out, and the request that waited for
/// it gets that answer (`504`) instead of dialing again and waiting a
/// second timeout; a later request tries afresh.
#[tokio::test]
async fn a_handshake_that_timed_out_at_connect_answers_the_waiting_request() {
    let ca = TestCa::new("faults CA");
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = accepted.clone();
    let silent = fault_server(move |mut tcp| {
        counted.fetch_add(1, Ordering::SeqCst);
        async move {
            let _ = tcp.read_to_end(&mut Vec::new()).await;
        }
    })
    .await;
    let mut gw = gateway(&ca, AUDIT, silent, |s| {
        s.upstream_timeouts.tls_handshake = Duration::from_millis(300);
    })
    .await;
    let (mut http, _) = through_proxy(gw.addr, HOST, &[gw.ca_der()], &[b"http/1.1"]).await;
    let resp = post_chat(&mut http, false, &[]).await;
    assert_eq!(resp.status(), 504);
    assert_eq!(resp.headers()["x-kt-error"], "upstream_tls_timeout");
    drop(body_string(resp).await);
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "the upstream was dialed again"
    );
    let resp = post_chat(&mut http, false, &[]).await;
    assert_eq!(resp.status(), 504);
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    drop(http);
    let events = events(&mut gw).await;
    let out = outputs(&events);
    assert_eq!(out.len(), 2, "{events:?}");
    assert!(out.iter().all(|e| e.status == Some(504)), "{out:?}");
}
