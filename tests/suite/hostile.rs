//! Hostile input on the listener and inside intercepted sessions: noise,
//! truncated and oversized heads, header injection, request smuggling
//! shapes, bad CONNECT targets, odd TLS, slow and abandoned bodies,
//! clients that stop reading, and unparsable LLM bodies and streams. Each
//! case checks the exact answer (or a clean close) and that the gateway
//! keeps serving others. `errors.rs` has the plainer bad-input cases.

use crate::common::client::{self, body_string, through_proxy, Http};
use crate::common::origin::{Alpn, Origin};
use crate::common::probe::{self, assert_healthy, raw, wait_until, Rng, BOUND};
use crate::common::{connect_to, TestCa, TestGateway};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use keeptrusts::config::PolicyConfig;
use keeptrusts::events::{read_last, Event, Filters};
use keeptrusts::gateway::GatewaySettings;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HOST: &str = "api.openai.com";
/// A plain-HTTP, non-LLM host for the forward proxy's absolute form.
const PLAIN: &str = "plain.test";
const AUDIT: &str = "policies:\n  chain: [audit-logger, secret-redaction]\npolicy:\n  audit-logger: {}\n  secret-redaction:\n    type: redact\n";
/// The same chain, with redaction forwarding what it cannot read.
const AUDIT_FAIL_OPEN: &str = "policies:\n  chain: [audit-logger, secret-redaction]\npolicy:\n  audit-logger: {}\n  secret-redaction:\n    type: redact\n    on_error: fail_open\n";

/// Serialises the tests that measure this process's memory: the other
/// big-body tests here would blur the figure.
static MEMORY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Env {
    _ca: TestCa,
    tls: Origin,
    plain: Origin,
    gw: TestGateway,
}

async fn env(configure: impl FnOnce(&mut GatewaySettings)) -> Env {
    env_with(AUDIT, configure).await
}

async fn env_with(yaml: &str, configure: impl FnOnce(&mut GatewaySettings)) -> Env {
    let ca = TestCa::new("hostile CA");
    let tls = Origin::tls(&ca, &[HOST], Alpn::Both).await;
    let plain = Origin::plain().await;
    let config = Arc::new(PolicyConfig::parse(yaml, Path::new("t.yaml")).unwrap());
    let gw = TestGateway::start(&ca, |s| {
        s.connect_to.push(connect_to(HOST, 443, tls.addr));
        s.connect_to.push(connect_to(PLAIN, 80, plain.addr));
        s.apply_config(&config);
        configure(s);
    })
    .await;
    Env {
        _ca: ca,
        tls,
        plain,
        gw,
    }
}

fn chat(content: &str, stream: bool) -> Bytes {
    Bytes::from(
        serde_json::json!({"model": "gpt-4o", "stream": stream,
            "messages": [{"role": "user", "content": content}]})
        .to_string(),
    )
}

async fn client(gw: &TestGateway, h2: bool) -> Http {
    let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
    through_proxy(gw.addr, HOST, &[gw.ca_der()], alpn).await.0
}

/// The listener answers, and an intercepted LLM request goes through.
async fn serving(gw: &TestGateway) {
    assert_healthy(gw.addr).await;
    let mut http = client(gw, false).await;
    let resp = http
        .send("POST", HOST, "/v1/chat/completions", chat("ping", false))
        .await;
    assert_eq!(resp.status(), 200);
    assert!(body_string(resp).await.contains("hello"));
}

/// Every event the gateway wrote (its log closed first).
pub(crate) async fn events(gw: &mut TestGateway) -> Vec<Event> {
    let dir = gw.close_events().await;
    read_last(&dir, 1000, &Filters::default()).unwrap().0
}

/// The output-phase events of `events`.
pub(crate) fn outputs(events: &[Event]) -> Vec<&Event> {
    events
        .iter()
        .filter(|e| e.phase.as_str() == "output")
        .collect()
}

#[tokio::test]
async fn random_bytes_get_an_error_or_a_clean_close() {
    let e = env(|s| s.limits.header_read = Duration::from_secs(2)).await;
    let mut answered = 0;
    for seed in 1..=12u64 {
        let mut rng = Rng::new(seed);
        let len = 1 + (rng.next() % (16 * 1024)) as usize;
        let noise = rng.bytes(len);
        let reply = raw(e.gw.addr, &noise, true).await;
        assert!(reply.closed, "seed {seed}: connection left open");
        // Noise is never a request: a 4xx or nothing at all.
        if !reply.bytes.is_empty() {
            let status = reply.status().unwrap_or(0);
            assert!(
                (400..500).contains(&status),
                "seed {seed}: {:?}",
                reply.text()
            );
            answered += 1;
        }
        assert_healthy(e.gw.addr).await;
    }
    assert!(answered > 0, "no noise was answered with a 4xx");
    assert_eq!(e.tls.hits.load(Ordering::SeqCst), 0);
    assert_eq!(e.plain.hits.load(Ordering::SeqCst), 0);
    serving(&e.gw).await;
}

#[tokio::test]
async fn truncated_and_oversized_heads() {
    let e = env(|_| {}).await;
    // Cut off mid-line, then EOF: closed without a response.
    for cut in [
        &b"GET /healthz HTT"[..],
        b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Half: abc",
        b"CONNECT api.openai.com:443 HTTP/1.1\r\nHo",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n{\"a\":",
    ] {
        let reply = raw(e.gw.addr, cut, true).await;
        assert!(reply.closed, "{:?} left open", String::from_utf8_lossy(cut));
        assert_ne!(reply.status(), Some(200), "{}", reply.text());
        assert_healthy(e.gw.addr).await;
    }
    let long_target = format!(
        "GET http://{PLAIN}/{} HTTP/1.1\r\nHost: {PLAIN}\r\n\r\n",
        "a".repeat(100_000)
    );
    let long_origin_form = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(100_000));
    let many_headers = format!(
        "GET http://{PLAIN}/echo HTTP/1.1\r\nHost: {PLAIN}\r\n{}\r\n",
        (0..200)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>()
    );
    for (case, want) in [
        (long_target, 431),
        (long_origin_form, 431),
        (many_headers, 431),
    ] {
        let reply = raw(e.gw.addr, case.as_bytes(), false).await;
        assert_eq!(reply.status(), Some(want), "{:.80}", reply.text());
        assert!(reply.closed);
        assert_healthy(e.gw.addr).await;
    }
    assert_eq!(e.plain.hits.load(Ordering::SeqCst), 0);
    serving(&e.gw).await;
}

#[tokio::test]
async fn header_injection_is_refused_before_the_origin() {
    let e = env(|_| {}).await;
    let abs = |extra: &str, target: &str| {
        format!("GET http://{PLAIN}{target} HTTP/1.1\r\nHost: {PLAIN}\r\n{extra}Connection: close\r\n\r\n")
    };
    let direct = |extra: &str, path: &str| {
        format!("POST {path} HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n{extra}Content-Length: 2\r\nConnection: close\r\n\r\n{{}}")
    };
    let connect =
        |target: &str, extra: &str| format!("CONNECT {target} HTTP/1.1\r\nHost: x\r\n{extra}\r\n");
    let cases: Vec<(&str, String)> = vec![
        ("CR in a value", abs("X-A: a\rInjected: 1\r\n", "/echo")),
        ("NUL in a value", abs("X-A: a\0b\r\n", "/echo")),
        ("NUL in a name", abs("X-\0A: b\r\n", "/echo")),
        ("CR in a name", abs("X\rA: b\r\n", "/echo")),
        ("space before the colon", abs("X-A : b\r\n", "/echo")),
        ("NUL in the target", abs("", "/ec\0ho")),
        ("CR in the target", abs("", "/echo\rX: y")),
        ("extra token on the line", abs("", "/echo HTTP/1.1")),
        (
            "CRLF escaped in the host",
            format!("GET http://{PLAIN}%0d%0aX:1/echo HTTP/1.1\r\nHost: x\r\n\r\n"),
        ),
        (
            "NUL in the CONNECT target",
            connect(&format!("{HOST}:443\0"), ""),
        ),
        (
            "CR in the CONNECT target",
            connect("api.openai\r.com:443", ""),
        ),
        (
            "NUL in a CONNECT header",
            connect(&format!("{HOST}:443"), "X-A: a\0b\r\n"),
        ),
        (
            "NUL in the direct API key",
            direct("Authorization: Bearer a\0b\r\n", "/v1/chat/completions"),
        ),
        (
            "CR in a direct API header",
            direct("X-A: a\rb\r\n", "/v1/chat/completions"),
        ),
        (
            "NUL in the direct API path",
            direct("", "/v1/chat\0/completions"),
        ),
    ];
    for (name, case) in &cases {
        let reply = raw(e.gw.addr, case.as_bytes(), false).await;
        assert_eq!(reply.status(), Some(400), "{name}: {:?}", reply.text());
        assert!(reply.closed, "{name}: left open");
        assert_healthy(e.gw.addr).await;
    }
    assert_eq!(
        e.plain.hits.load(Ordering::SeqCst),
        0,
        "something reached the origin"
    );
    assert_eq!(
        e.tls.conns.load(Ordering::SeqCst),
        0,
        "a CONNECT was dialed"
    );

    // A bare LF ends a header line for hyper and for the origin alike: the
    // origin sees the same two headers the gateway parsed, each clean.
    let reply = raw(
        e.gw.addr,
        abs("X-A: a\nInjected: 1\r\n", "/echo").as_bytes(),
        false,
    )
    .await;
    assert_eq!(reply.status(), Some(200), "{}", reply.text());
    let text = reply.text();
    let json: serde_json::Value = serde_json::from_str(&text[text.find('{').unwrap()..]).unwrap();
    assert_eq!(json["headers"]["x-a"], "a");
    assert_eq!(json["headers"]["injected"], "1");
    for (k, v) in json["headers"].as_object().unwrap() {
        let v = v.as_str().unwrap();
        assert!(!v.contains(['\r', '\n', '\0']), "{k}: {v:?}");
    }
    assert_eq!(e.plain.hits.load(Ordering::SeqCst), 1);
    serving(&e.gw).await;
}

#[tokio::test]
async fn smuggling_shapes_are_refused_or_normalised() {
    let e = env(|_| {}).await;
    let post = |headers: &str, body: &str| {
        format!("POST http://{PLAIN}/echo HTTP/1.1\r\nHost: {PLAIN}\r\n{headers}\r\n{body}")
    };
    let refused = [
        (
            "duplicate differing Content-Length",
            post("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"),
        ),
        (
            "chunked not last",
            post("Transfer-Encoding: chunked, identity\r\n", "5\r\nhello\r\n0\r\n\r\n"),
        ),
        (
            "obs-fold continuation",
            post("Content-Length: 5\r\nX-A: a\r\n folded: 1\r\n", "hello"),
        ),
        (
            "obs-fold on Transfer-Encoding",
            post("Transfer-Encoding:\r\n chunked\r\nContent-Length: 5\r\n", "hello"),
        ),
        ("signed Content-Length", post("Content-Length: +5\r\n", "hello")),
        (
            "Transfer-Encoding on HTTP/1.0",
            format!("POST http://{PLAIN}/echo HTTP/1.0\r\nHost: {PLAIN}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        ),
    ];
    for (name, case) in &refused {
        let reply = raw(e.gw.addr, case.as_bytes(), false).await;
        assert_eq!(reply.status(), Some(400), "{name}: {:?}", reply.text());
        assert_eq!(reply.responses(), 1, "{name}");
        assert_healthy(e.gw.addr).await;
    }
    assert_eq!(
        e.plain.hits.load(Ordering::SeqCst),
        0,
        "a refused shape reached the origin"
    );

    // Content-Length with Transfer-Encoding: chunked wins (RFC 9112 §6.3),
    // the length is dropped and the connection closes after the response,
    // so the bytes after the chunked body are never read as a request.
    for order in [
        "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
    ] {
        let before = e.plain.hits.load(Ordering::SeqCst);
        let smuggled = format!("GET http://{PLAIN}/smuggled HTTP/1.1\r\nHost: {PLAIN}\r\n\r\n");
        let case = post(order, &format!("5\r\nhello\r\n0\r\n\r\n{smuggled}"));
        let reply = raw(e.gw.addr, case.as_bytes(), false).await;
        assert_eq!(reply.status(), Some(200), "{}", reply.text());
        assert_eq!(reply.responses(), 1, "{}", reply.text());
        assert!(reply.closed);
        let text = reply.text();
        let json: serde_json::Value =
            serde_json::from_str(&text[text.find('{').unwrap()..]).unwrap();
        assert_eq!(json["len"], 5, "the origin got the chunked body: {json}");
        assert!(json["headers"]
            .get("content-length")
            .is_none_or(|v| v == "5"));
        assert_eq!(
            e.plain.hits.load(Ordering::SeqCst),
            before + 1,
            "one request upstream"
        );
    }
    serving(&e.gw).await;
}

/// HPACK "literal without indexing, new name", no Huffman (RFC 7541 §6.2.2).
fn hpack_literal(out: &mut Vec<u8>, name: &str, value: &str) {
    assert!(name.len() < 127 && value.len() < 127);
    out.push(0);
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
}

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Sends one h2 request carrying `bad` (a connection-specific header) as
/// raw frames, and returns the frame types the server answered on stream 1
/// with their first payload word (the error code for RST_STREAM).
async fn h2_with_header(gw: &TestGateway, bad: (&str, &str)) -> Vec<(u8, u32)> {
    let (s, reply) = client::connect(gw.addr, &format!("{HOST}:443")).await;
    assert_eq!(reply.status, 200);
    let mut tls = client::tls(s, HOST, &[gw.ca_der()], &[b"h2"])
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut block = Vec::new();
    for (k, v) in [
        (":method", "GET"),
        (":scheme", "https"),
        (":path", "/echo"),
        (":authority", HOST),
        bad,
    ] {
        hpack_literal(&mut block, k, v);
    }
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(4, 0, 0, &[]));
    out.extend(h2_frame(1, 0x4 | 0x1, 1, &block));
    tls.write_all(&out).await.unwrap();
    let mut seen = Vec::new();
    let read = async {
        for _ in 0..32 {
            let mut head = [0u8; 9];
            if tls.read_exact(&mut head).await.is_err() {
                return;
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            if tls.read_exact(&mut payload).await.is_err() {
                return;
            }
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let word = |at: usize| {
                payload
                    .get(at..at + 4)
                    .map(|w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]))
                    .unwrap_or(0)
            };
            match (head[3], stream) {
                // RST_STREAM or HEADERS on our stream: the answer.
                (3, 1) => {
                    seen.push((3, word(0)));
                    return;
                }
                (1, 1) => {
                    seen.push((1, 0));
                    return;
                }
                // GOAWAY: its error code follows the last stream id.
                (7, _) => {
                    seen.push((7, word(4)));
                    return;
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(BOUND, read).await.unwrap();
    seen
}

#[tokio::test]
async fn h2_connection_specific_headers_never_reach_an_h1_upstream() {
    let ca = TestCa::new("h2 CA");
    let origin = Origin::tls(&ca, &[HOST], Alpn::H1).await;
    let gw = TestGateway::start(&ca, |s| {
        s.connect_to.push(connect_to(HOST, 443, origin.addr))
    })
    .await;
    // RFC 9113 §8.2.2: such a request is malformed, a stream error.
    for bad in [
        ("connection", "keep-alive"),
        ("keep-alive", "timeout=5"),
        ("transfer-encoding", "chunked"),
        ("upgrade", "websocket"),
        ("proxy-connection", "keep-alive"),
        ("te", "gzip"),
    ] {
        let seen = h2_with_header(&gw, bad).await;
        const PROTOCOL_ERROR: u32 = 1;
        assert!(
            seen == [(3, PROTOCOL_ERROR)] || seen == [(7, PROTOCOL_ERROR)],
            "{bad:?}: {seen:?}"
        );
        assert_healthy(gw.addr).await;
    }
    assert_eq!(origin.hits.load(Ordering::SeqCst), 0);
    // The one such header h2 allows, `te: trailers`, goes on (gRPC needs
    // it), named by `Connection` as HTTP/1.1 wants; nothing else does.
    let (mut http, _) = through_proxy(gw.addr, HOST, &[gw.ca_der()], &[b"h2"]).await;
    assert!(http.is_h2());
    let req = http::Request::builder()
        .method("GET")
        .uri(format!("https://{HOST}/echo"))
        .header("te", "trailers")
        .header("x-kept", "1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let json = client::body_json(http.request(req).await).await;
    assert_eq!(json["version"], "HTTP/1.1");
    assert_eq!(json["headers"]["x-kept"], "1");
    assert_eq!(json["headers"]["te"], "trailers", "{json}");
    assert_eq!(json["headers"]["connection"], "te", "{json}");
    for name in ["keep-alive", "transfer-encoding", "upgrade"] {
        assert!(
            json["headers"].get(name).is_none(),
            "{name} reached the upstream: {json}"
        );
    }
    assert_eq!(origin.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn bad_connect_targets_are_refused_without_dialing() {
    let e = env(|_| {}).await;
    let op = e.tls.addr.port();
    let gp = e.gw.addr.port();
    let long = format!("{}.com:443", "a".repeat(10_000));
    // (target, status, x-kt-error when the gateway, not hyper, refused it)
    let cases: Vec<(String, u16, Option<&str>)> = vec![
        (HOST.into(), 400, Some("bad_target")),
        (format!("{HOST}:"), 400, Some("bad_target")),
        (format!("{HOST}:0"), 400, Some("bad_target")),
        (format!("{HOST}:65536"), 400, Some("bad_target")),
        (format!("127.0.0.1:{op}0"), 400, Some("bad_target")),
        ("[::1]".into(), 400, Some("bad_target")),
        ("[::1:443".into(), 400, None),
        ("::1]:443".into(), 400, None),
        ("[::1]]:443".into(), 400, None),
        (format!("[127.0.0.1]:{op}"), 400, Some("bad_target")),
        (format!("a@127.0.0.1:{op}"), 400, None),
        (format!("127.0.0.1:{op}:{op}"), 400, None),
        (format!("127.0.0.1:+{op}"), 400, Some("bad_target")),
        (format!("127.0.0.1:{op}/x"), 400, None),
        (long, 400, Some("bad_target")),
        // Well-formed: IPv6 loopback to the gateway's own port is a loop,
        // and so is the IPv4 loopback however it is spelled.
        (format!("[::1]:{gp}"), 508, Some("loop_detected")),
        (
            format!("[::ffff:127.0.0.1]:{gp}"),
            508,
            Some("loop_detected"),
        ),
        (format!("127.1:{gp}"), 508, Some("loop_detected")),
        (format!("2130706433:{gp}"), 508, Some("loop_detected")),
        (format!("0x7f.0.0.1:{gp}"), 508, Some("loop_detected")),
        // A host ending in a number that is no IPv4 address.
        (format!("127.0.0.256:{op}"), 400, Some("bad_target")),
    ];
    for (target, status, kind) in &cases {
        let line = format!("CONNECT {target} HTTP/1.1\r\nHost: x\r\n\r\n");
        let reply = raw(e.gw.addr, line.as_bytes(), false).await;
        let shown = &target[..target.len().min(40)];
        assert_eq!(reply.status(), Some(*status), "{shown}: {:?}", reply.text());
        if let Some(kind) = kind {
            assert!(
                reply.text().contains(&format!("x-kt-error: {kind}")),
                "{shown}: {}",
                reply.text()
            );
        }
        assert!(reply.closed, "{shown}: left open");
        assert_healthy(e.gw.addr).await;
    }
    // An empty target.
    let reply = raw(e.gw.addr, b"CONNECT  HTTP/1.1\r\nHost: x\r\n\r\n", false).await;
    assert_eq!(reply.status(), Some(400), "{}", reply.text());
    assert_eq!(
        e.tls.conns.load(Ordering::SeqCst),
        0,
        "a bad target was dialed"
    );
    serving(&e.gw).await;
}

fn leaf_names(chain: &[rustls_pki_types::CertificateDer<'_>]) -> Vec<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => d.to_string(),
            other => format!("{other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn odd_client_hellos_after_an_intercepted_connect() {
    let e = env(|_| {}).await;
    let roots = [e.gw.ca_der()];

    // Garbage that starts like a TLS record: the handshake fails, no HTTP.
    let (mut s, reply) = client::connect(e.gw.addr, &format!("{HOST}:443")).await;
    assert_eq!(reply.status, 200);
    s.write_all(b"\x16\x03\x01\x00\x10garbage-garbage!\x16\x03\x01\xff\xff")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(BOUND, s.read_to_end(&mut out))
        .await
        .expect("garbage TLS left the connection open")
        .ok();
    assert!(out.is_empty() || out[0] == 0x15, "not an alert: {out:?}");
    assert_healthy(e.gw.addr).await;

    // An SNI other than the CONNECT host: the leaf names the SNI (what the
    // client will verify) while requests still go to the CONNECT host.
    let (s, _) = client::connect(e.gw.addr, &format!("{HOST}:443")).await;
    let tls = client::tls(s, "other.example", &roots, &[b"http/1.1"])
        .await
        .unwrap();
    let chain = tls.get_ref().1.peer_certificates().unwrap().to_vec();
    assert_eq!(leaf_names(&chain), ["other.example"]);
    let mut http = Http::over(tls, false).await;
    let resp = http
        .send("GET", "other.example", "/echo", Bytes::new())
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        e.tls.hits.load(Ordering::SeqCst),
        1,
        "the CONNECT host served it"
    );

    // No SNI at all: the leaf names the CONNECT host.
    let (s, _) = client::connect(e.gw.addr, &format!("{HOST}:443")).await;
    let mut cfg = (*client::client_config(&roots, &[b"http/1.1"])).clone();
    cfg.enable_sni = false;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(HOST.try_into().unwrap(), s)
        .await
        .unwrap();
    let chain = tls.get_ref().1.peer_certificates().unwrap().to_vec();
    assert_eq!(leaf_names(&chain), [HOST]);
    drop(tls);

    // An IP literal as SNI (which RFC 6066 forbids and rustls ignores):
    // treated as no SNI. TLS 1.2 shows the certificate in the clear, so
    // the patched hello's answer can be read without finishing.
    let (mut s, _) = client::connect(e.gw.addr, &format!("{HOST}:443")).await;
    let mut store = rustls::RootCertStore::empty();
    store.add(roots[0].clone()).unwrap();
    let cfg = rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS12])
        .with_root_certificates(store)
        .with_no_client_auth();
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), HOST.try_into().unwrap()).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    let at = hello
        .windows(HOST.len())
        .position(|w| w == HOST.as_bytes())
        .unwrap();
    // Same length, so every length field stays right.
    hello[at..at + HOST.len()].copy_from_slice(b"10.100.100.100");
    s.write_all(&hello).await.unwrap();
    let mut flight = Vec::new();
    let mut buf = [0u8; 4096];
    let found = tokio::time::timeout(BOUND, async {
        while flight.len() < 64 * 1024 {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => flight.extend_from_slice(&buf[..n]),
            }
            if flight.windows(HOST.len()).any(|w| w == HOST.as_bytes()) {
                return true;
            }
        }
        false
    })
    .await
    .unwrap();
    assert_eq!(flight.first(), Some(&0x16), "no handshake: {flight:?}");
    assert!(found, "the leaf does not name the CONNECT host");
    drop(s);
    serving(&e.gw).await;
}

/// An intercepted HTTP/1.1 session to the LLM host with the head of a
/// chat request (`length` body bytes announced) written, its body not.
async fn post_head(
    gw: &TestGateway,
    length: usize,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let (s, reply) = client::connect(gw.addr, &format!("{HOST}:443")).await;
    assert_eq!(reply.status, 200);
    let mut tls = client::tls(s, HOST, &[gw.ca_der()], &[b"http/1.1"])
        .await
        .unwrap();
    tls.write_all(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    tls
}

#[tokio::test]
async fn a_trickling_llm_body_times_out_with_408() {
    let mut e = env(|s| s.limits.body_read = Duration::from_millis(400)).await;
    let body = chat("slow", false);
    let mut tls = post_head(&e.gw, body.len()).await;
    // One byte every 50 ms: never idle, never done in time.
    let started = std::time::Instant::now();
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    for b in body.iter() {
        if tls.write_all(&[*b]).await.is_err() {
            break;
        }
        tokio::select! {
            r = tls.read(&mut buf) => {
                if let Ok(n) = r { reply.extend_from_slice(&buf[..n]); }
                break;
            }
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        assert!(started.elapsed() < BOUND, "no timeout while trickling");
    }
    let text = String::from_utf8_lossy(&reply);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("x-kt-error: body_timeout"), "{text}");
    assert_eq!(
        e.tls.hits.load(Ordering::SeqCst),
        0,
        "a partial body went upstream"
    );
    serving(&e.gw).await;
    let events = events(&mut e.gw).await;
    let outs = outputs(&events);
    let timed_out = outs
        .iter()
        .find(|ev| ev.status == Some(408))
        .unwrap_or_else(|| panic!("no 408 output event: {events:?}"));
    assert_eq!(timed_out.action.as_str(), "error");
    assert!(
        timed_out
            .reason
            .as_deref()
            .unwrap_or("")
            .starts_with("body_timeout"),
        "{timed_out:?}"
    );
}

/// An HTTP/2 request asking `Expect: 100-continue`: kt's HTTP/2 server
/// cannot send the `100`, so a body sent without waiting goes through,
/// and one held back for it gets `417` naming why after the grace, rather
/// than a wait for the whole body-read limit (2 minutes by default) on an
/// LLM path, or for the upstream's patience on any other path.
#[tokio::test]
async fn an_h2_request_holding_its_body_for_a_100_gets_417() {
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    type Chunks = tokio::sync::mpsc::Receiver<Bytes>;
    let mut e = env(|_| {}).await;
    let (s, reply) = client::connect(e.gw.addr, &format!("{HOST}:443")).await;
    assert_eq!(reply.status, 200);
    let tls = client::tls(s, HOST, &[e.gw.ca_der()], &[b"h2"])
        .await
        .unwrap();
    let (mut h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let mut send = |path: &str, body: Chunks, length: Option<usize>| {
        let frames = futures_util::stream::unfold(body, |mut rx| async move {
            let chunk = rx.recv().await?;
            Some((Ok::<_, std::convert::Infallible>(Frame::data(chunk)), rx))
        });
        let mut req = http::Request::post(format!("https://{HOST}{path}"))
            .header("content-type", "application/json")
            .header("expect", "100-continue");
        if let Some(n) = length {
            req = req.header("content-length", n);
        }
        h2.send_request(req.body(StreamBody::new(Box::pin(frames))).unwrap())
    };

    // An LLM path (read whole for the policies) and one kt streams
    // untouched.
    // The second time, with its length declared, as the JDK does.
    let paths = [
        (1, "/v1/chat/completions", false),
        (2, "/echo", false),
        (3, "/echo", true),
    ];
    for (n, path, declared) in paths {
        // Sent at once, as Node's http2 client and most others do.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let sent = chat("no waiting", false);
        let answer = send(path, rx, declared.then_some(sent.len()));
        tx.send(sent.clone()).await.unwrap();
        drop(tx);
        let resp = tokio::time::timeout(BOUND, answer).await.unwrap().unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let text = body_string(resp).await;
        let whole = match path {
            "/echo" => text.contains(&format!("\"len\":{},", sent.len())),
            _ => text.contains("hello"),
        };
        assert!(whole, "{path}: {text}");
        assert_eq!(e.tls.hits.load(Ordering::SeqCst), n, "{path}");

        // Held back for a 100 that cannot come.
        let (held, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        let resp = tokio::time::timeout(BOUND, send(path, rx, None))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), 417, "{path}");
        assert_eq!(resp.headers()["x-kt-error"], "expectation_failed");
        let text = body_string(resp).await;
        assert!(
            text.contains("100 (Continue) over HTTP/2"),
            "{path}: {text}"
        );
        drop(held);
        assert_eq!(
            e.tls.hits.load(Ordering::SeqCst),
            n,
            "{path}: nothing went upstream"
        );
    }

    let events = events(&mut e.gw).await;
    let refused = outputs(&events)
        .into_iter()
        .find(|ev| ev.status == Some(417))
        .unwrap_or_else(|| panic!("no 417 output event: {events:?}"));
    assert_eq!(refused.action.as_str(), "error");
    let reason = refused.reason.as_deref().unwrap_or("");
    assert!(reason.starts_with("expectation_failed"), "{reason}");
}

/// A body that arrives in pieces (its head and first part, then the rest
/// once the gateway has answered nothing) is read whole before the
/// policies run: the secret in its second part is redacted, the upstream
/// gets every other byte, and the record names the body's model.
#[tokio::test]
async fn an_llm_body_arriving_in_pieces_is_read_whole() {
    let mut e = env(|_| {}).await;
    let token = format!("ghp_{}", "Qw3rTy7uIo9pAs2dFg4hJk6lZx8cVb1nM5eR");
    let body = chat(&format!("{} {token} done", "filler ".repeat(400)), false);
    let (first, rest) = body.split_at(body.len() / 2);
    let mut tls = post_head(&e.gw, body.len()).await;
    tls.write_all(first).await.unwrap();
    tls.flush().await.unwrap();
    // Nothing can come back before the rest is sent: the gateway is
    // waiting for it (a reply now would be an error).
    let mut buf = [0u8; 4096];
    let early = tokio::time::timeout(Duration::from_millis(100), tls.read(&mut buf)).await;
    assert!(early.is_err(), "an answer to half a body: {early:?}");
    tls.write_all(rest).await.unwrap();
    tls.flush().await.unwrap();
    // The whole answer, so the exchange has ended before its events are read.
    let mut reply = Vec::new();
    let whole = |r: &[u8]| {
        let text = String::from_utf8_lossy(r);
        let (head, body) = text.split_once("\r\n\r\n")?;
        let length = head.lines().find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_owned)
        })?;
        (body.len() >= length.trim().parse::<usize>().ok()?).then_some(())
    };
    while whole(&reply).is_none() {
        let n = tokio::time::timeout(BOUND, tls.read(&mut buf))
            .await
            .expect("no answer")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&reply));
        reply.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&reply);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let sent = e
        .tls
        .last_body
        .lock()
        .unwrap()
        .clone()
        .expect("no body upstream");
    let sent = String::from_utf8_lossy(&sent);
    let want = String::from_utf8_lossy(&body).replace(&token, "[REDACTED:github_pat]");
    assert_eq!(sent, want, "the upstream got other bytes");
    let events = events(&mut e.gw).await;
    let input = events
        .iter()
        .find(|ev| ev.phase == keeptrusts::events::Phase::Input)
        .unwrap_or_else(|| panic!("no input event: {events:?}"));
    assert_eq!(input.model.as_deref(), Some("gpt-4o"));
    assert_eq!(input.action.as_str(), "redact");
}

/// An absolute-form request goes where its target names, and the upstream
/// hears that name: a different `Host` is replaced (RFC 9112 §3.2.2), so a
/// name-based upstream cannot answer for another site than the one kt
/// dialed, checked and recorded.
#[tokio::test]
async fn an_absolute_form_request_carries_its_targets_host() {
    let e = env(|_| {}).await;
    let request = format!(
        "GET http://{PLAIN}/v1/models HTTP/1.1\r\nHost: elsewhere.test\r\nConnection: close\r\n\r\n"
    );
    let answer = client::raw_exchange(e.gw.addr, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let (path, headers) = e.plain.last_request.lock().unwrap().clone().unwrap();
    assert_eq!(path, "/v1/models");
    let hosts: Vec<_> = headers.get_all("host").iter().collect();
    assert_eq!(hosts, [PLAIN], "{headers:?}");
}

/// A prompt holding a surrogate without its other half (what JavaScript's
/// JSON.stringify writes for a string cut inside an emoji; OpenAI's and
/// Anthropic's parsers take it) is read, not refused: a secret elsewhere in
/// it is redacted, and a string without one reaches the upstream as sent.
#[tokio::test]
async fn a_lone_surrogate_in_a_prompt_is_read_not_refused() {
    let mut e = env(|_| {}).await;
    let token = format!("ghp_{}", "Qw3rTy7uIo9pAs2dFg4hJk6lZx8cVb1nM5eR");
    let body = format!(
        r#"{{"model":"gpt-4o","messages":[{{"role":"system","content":"cut \ud83d"}},{{"role":"user","content":"use {token} now \udc00"}}]}}"#
    );
    let mut http = client(&e.gw, false).await;
    let resp = http
        .send(
            "POST",
            HOST,
            "/v1/chat/completions",
            Bytes::from(body.clone()),
        )
        .await;
    assert_eq!(resp.status(), 200, "{}", body_string(resp).await);
    let sent = e
        .tls
        .last_body
        .lock()
        .unwrap()
        .clone()
        .expect("no body upstream");
    let sent = String::from_utf8(sent.to_vec()).unwrap();
    assert_eq!(
        sent,
        body.replace(
            &format!(r"use {token} now \udc00"),
            "use [REDACTED:github_pat] now \u{FFFD}"
        ),
        "the untouched string keeps its escape; the redacted one is re-encoded"
    );
    let events = events(&mut e.gw).await;
    let input = events
        .iter()
        .find(|ev| ev.phase == keeptrusts::events::Phase::Input)
        .unwrap_or_else(|| panic!("no input event: {events:?}"));
    assert_eq!(input.action.as_str(), "redact");
}

#[tokio::test]
async fn a_client_that_stops_reading_holds_bounded_memory() {
    let _serial = MEMORY.lock().await;
    let e = env(|_| {}).await;
    const TOTAL: usize = 512 << 20;
    let before = probe::rss_kib();
    let (s, reply) = client::connect(e.gw.addr, &format!("{HOST}:443")).await;
    assert_eq!(reply.status, 200);
    let mut tls = client::tls(s, HOST, &[e.gw.ca_der()], &[b"http/1.1"])
        .await
        .unwrap();
    tls.write_all(format!("GET /large/{TOTAL} HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = [0u8; 12];
    tls.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    // Now read nothing more. The origin must stall: poll until what it has
    // produced stops growing for 300 ms (bounded).
    let sent = &e.tls.large_sent;
    let mut last = usize::MAX;
    let mut still = 0;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = sent.load(Ordering::SeqCst);
        still = if now == last { still + 1 } else { 0 };
        last = now;
        if still >= 6 {
            break;
        }
    }
    assert!(still >= 6, "the upstream never stalled ({last} bytes)");
    assert!(
        last < 64 << 20,
        "{last} bytes produced for a client that reads nothing"
    );
    let growth = probe::rss_kib().saturating_sub(before);
    eprintln!(
        "stalled reader: upstream produced {} KiB, RSS grew {growth} KiB",
        last >> 10
    );
    assert!(growth < 64 << 10, "RSS grew {growth} KiB");
    // Others are served meanwhile.
    serving(&e.gw).await;
    // The reader leaves: the upstream stream is cancelled.
    drop(tls);
    let aborted = wait_until(BOUND, || async {
        e.tls.aborted.load(Ordering::SeqCst) >= 1
    })
    .await;
    assert!(aborted, "the origin kept streaming to nobody");
    serving(&e.gw).await;
}

#[tokio::test]
async fn client_leaving_mid_body_or_mid_stream_cancels_upstream_and_is_recorded() {
    let mut e = env(|_| {}).await;
    // Mid request body, non-LLM path (streamed upstream as it comes).
    let (s, _) = client::connect(e.gw.addr, &format!("{HOST}:443")).await;
    let mut tls = client::tls(s, HOST, &[e.gw.ca_der()], &[b"http/1.1"])
        .await
        .unwrap();
    tls.write_all(
        format!("POST /echo HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 1000000\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    tls.write_all(&[b'x'; 300_000]).await.unwrap();
    tls.flush().await.unwrap();
    assert!(wait_until(BOUND, || async { e.tls.hits.load(Ordering::SeqCst) == 1 }).await);
    drop(tls);
    let aborted = wait_until(BOUND, || async {
        e.tls.aborted.load(Ordering::SeqCst) == 1
    })
    .await;
    assert!(aborted, "the origin still waits for the rest of the body");

    // Mid request body, LLM path: read whole first, so nothing goes upstream.
    let (s, _) = client::connect(e.gw.addr, &format!("{HOST}:443")).await;
    let mut tls = client::tls(s, HOST, &[e.gw.ca_der()], &[b"http/1.1"])
        .await
        .unwrap();
    tls.write_all(format!("POST /v1/chat/completions HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n{{\"model\":\"gpt-4o\",").as_bytes())
        .await
        .unwrap();
    tls.flush().await.unwrap();
    drop(tls);

    // Mid stream (h2, so the upstream sees its stream reset at once).
    let mut http = client(&e.gw, true).await;
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("https://{HOST}/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-test-gated", "1")
        .header("x-test-reply", "one two three four")
        .body(Full::new(chat("stream please", true)))
        .unwrap();
    let mut resp = http.request(req).await;
    assert_eq!(resp.status(), 200);
    let first = resp.body_mut().frame().await.unwrap().unwrap();
    assert!(first.data_ref().is_some());
    drop(resp);
    drop(http);
    let aborted = wait_until(BOUND, || async {
        e.tls.aborted.load(Ordering::SeqCst) == 2
    })
    .await;
    assert!(aborted, "the upstream stream was not cancelled");
    serving(&e.gw).await;

    let events = events(&mut e.gw).await;
    let gone: Vec<_> = outputs(&events)
        .into_iter()
        .filter(|ev| ev.status.is_none())
        .collect();
    assert_eq!(gone.len(), 2, "{events:?}");
    for ev in gone {
        assert_eq!(ev.action.as_str(), "error");
        assert!(
            ev.reason
                .as_deref()
                .unwrap_or("")
                .contains("client went away"),
            "{ev:?}"
        );
    }
}

fn unparsable_bodies() -> Vec<(&'static str, Vec<u8>)> {
    let deep = format!(
        "{{\"model\":\"gpt-4o\",\"messages\":{}{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let mut invalid_utf8 = br#"{"model":"gpt-4o","messages":[{"role":"user","content":""#.to_vec();
    invalid_utf8.extend_from_slice(b"\xff\xfe\xc3(\xed\xa0\x80");
    invalid_utf8.extend_from_slice(br#""}]}"#);
    vec![
        (
            "malformed",
            br#"{"model":"gpt-4o","messages":[{"role":"#.to_vec(),
        ),
        ("deeply nested", deep.into_bytes()),
        ("invalid UTF-8", invalid_utf8),
        ("not JSON at all", b"\x00\x01\x02 hello".to_vec()),
    ]
}

#[tokio::test]
async fn unparsable_llm_bodies_get_a_clear_4xx_or_pass_as_configured() {
    let _serial = MEMORY.lock().await;
    let bodies = unparsable_bodies();
    let huge = Bytes::from(format!(
        "{{\"model\":\"gpt-4o\",\"messages\":[{{\"role\":\"user\",\"content\":\"{}\"}}]}}",
        "a".repeat(2 << 20)
    ));

    // Redaction fails closed by default: 400 naming the problem, nothing
    // upstream.
    let mut e = env(|s| s.limits.max_inspected_body = 1 << 20).await;
    let mut http = client(&e.gw, false).await;
    for (name, body) in &bodies {
        let resp = http
            .send(
                "POST",
                HOST,
                "/v1/chat/completions",
                Bytes::from(body.clone()),
            )
            .await;
        assert_eq!(resp.status(), 400, "{name}");
        let text = body_string(resp).await;
        assert!(
            text.contains("could not read the request body"),
            "{name}: {text}"
        );
    }
    assert_eq!(e.tls.hits.load(Ordering::SeqCst), 0);
    // Beyond the inspection limit: 413 and nothing upstream.
    let resp = http
        .send("POST", HOST, "/v1/chat/completions", huge.clone())
        .await;
    assert_eq!(resp.status(), 413);
    assert_eq!(resp.headers()["x-kt-error"], "body_too_large");
    assert_eq!(e.tls.hits.load(Ordering::SeqCst), 0);

    // The direct API routes by the body's model, so it must parse: 400.
    let mut direct = Http::over(
        tokio::net::TcpStream::connect(e.gw.addr).await.unwrap(),
        false,
    )
    .await;
    for (name, body) in &bodies {
        let resp = direct
            .send(
                "POST",
                "kt",
                "/v1/chat/completions",
                Bytes::from(body.clone()),
            )
            .await;
        assert_eq!(resp.status(), 400, "{name}");
        // Refused while routing (no model to read, nesting past the limit)
        // or by the policies (a model but no readable prompt).
        let json = client::body_json(resp).await;
        let kind = json["error"]["type"].as_str().unwrap_or_default();
        assert!(kind.starts_with("invalid_request"), "{name}: {json}");
    }
    let resp = direct
        .send("POST", "kt", "/v1/chat/completions", huge)
        .await;
    assert_eq!(resp.status(), 413);
    assert_eq!(e.tls.hits.load(Ordering::SeqCst), 0);
    serving(&e.gw).await;
    let events = events(&mut e.gw).await;
    // Each exchange's last event: the input's when the policy refused it
    // (a block, saying why), else the output's.
    let finals: Vec<(&str, Option<u16>)> = events
        .iter()
        .filter(|ev| ev.phase.as_str() == "output" || ev.action.as_str() == "block")
        .map(|ev| (ev.action.as_str(), ev.status))
        .collect();
    // Four refused by the policies and one too large through the proxy; one
    // direct-API request (invalid UTF-8 inside a string, which routing does
    // not decode) got as far as the policies; then the probe.
    let refused = ("block", Some(400));
    let want = [
        refused,
        refused,
        refused,
        refused,
        ("error", Some(413)),
        refused,
        ("pass", Some(200)),
    ];
    assert_eq!(finals, want);
    for ev in events.iter().filter(|ev| ev.action.as_str() == "block") {
        assert_eq!(ev.policy.as_deref(), Some("secret-redaction"), "{ev:?}");
        let reason = ev.reason.as_deref().unwrap_or_default();
        assert!(reason.starts_with("not inspected: "), "{ev:?}");
        assert!(reason.ends_with("; the policy fails closed"), "{ev:?}");
    }

    // Failing open, the upstream gets the exact bytes.
    let e = env_with(AUDIT_FAIL_OPEN, |_| {}).await;
    let mut http = client(&e.gw, false).await;
    for (name, body) in &bodies {
        let resp = http
            .send(
                "POST",
                HOST,
                "/v1/chat/completions",
                Bytes::from(body.clone()),
            )
            .await;
        assert_eq!(resp.status(), 200, "{name}");
        let _ = body_string(resp).await;
        let got = e.tls.last_body.lock().unwrap().clone().unwrap();
        assert_eq!(got.as_ref(), &body[..], "{name}: changed on the way");
    }
    serving(&e.gw).await;
}

/// Sends a chat request whose answer is the origin's hostile stream `kind`;
/// returns the bytes the client got (bounded).
async fn hostile_stream(http: &mut Http, kind: &str) -> Bytes {
    let req = http::Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("host", HOST)
        .header("content-type", "application/json")
        .header("x-test-raw", kind)
        .body(Full::new(chat("hi", true)))
        .unwrap();
    let resp = tokio::time::timeout(BOUND, http.request(req))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{kind}");
    tokio::time::timeout(BOUND, resp.into_body().collect())
        .await
        .unwrap_or_else(|_| panic!("{kind}: the stream hung"))
        .unwrap()
        .to_bytes()
}

const HOSTILE_STREAMS: [&str; 4] = ["no-terminator", "huge-event", "binary", "no-separators"];

#[tokio::test]
async fn hostile_event_streams_reach_the_client_and_are_recorded() {
    let _serial = MEMORY.lock().await;
    // Failing open, the client gets the upstream's bytes exactly, whatever
    // they are (no redaction applies to them).
    let mut e = env_with(AUDIT_FAIL_OPEN, |_| {}).await;
    let mut http = client(&e.gw, false).await;
    for kind in HOSTILE_STREAMS {
        let body = hostile_stream(&mut http, kind).await;
        let sent = match kind {
            "huge-event" => 10 << 20,
            "binary" => 64 * 1024,
            _ => 1,
        };
        assert!(body.len() >= sent, "{kind}: {} bytes", body.len());
        match kind {
            "binary" => assert_eq!(&body[..4], &[0, 1, 2, 3]),
            "no-terminator" => assert!(body.ends_with(b"{\"ind")),
            "no-separators" => assert!(body.ends_with(b"data: {\"n\":999}\n")),
            _ => assert!(body.ends_with(b"data: [DONE]\n\n")),
        }
        assert_healthy(e.gw.addr).await;
    }
    serving(&e.gw).await;
    let open = events(&mut e.gw).await;
    let outs = outputs(&open);
    assert_eq!(outs.len(), HOSTILE_STREAMS.len() + 1, "{open:?}");
    assert!(outs.iter().all(|ev| ev.status == Some(200)), "{outs:?}");
    // What went through unread says so.
    let unread = |ev: &&Event| {
        ev.reason
            .as_deref()
            .is_some_and(|r| r.starts_with("not inspected: "))
    };
    assert!(outs.iter().any(unread), "{outs:?}");

    // Failing closed (the default), a frame too big to inspect ends the
    // stream with a clean error event instead; the rest pass.
    let mut e = env(|_| {}).await;
    let mut http = client(&e.gw, false).await;
    for kind in HOSTILE_STREAMS {
        let body = hostile_stream(&mut http, kind).await;
        let text = String::from_utf8_lossy(&body);
        if kind == "huge-event" {
            assert!(body.len() < 4096, "{} bytes", body.len());
            assert!(text.contains("could not be inspected"), "{text}");
        } else {
            assert!(
                !text.contains("could not be inspected"),
                "{kind}: {text:.200}"
            );
        }
        assert_healthy(e.gw.addr).await;
    }
    serving(&e.gw).await;
    let closed = events(&mut e.gw).await;
    let outs = outputs(&closed);
    assert_eq!(outs.len(), HOSTILE_STREAMS.len() + 1, "{closed:?}");
    // The stream kt cut is a block by the policy that fails closed.
    let blocks: Vec<_> = outs
        .iter()
        .filter(|ev| ev.action.as_str() == "block")
        .collect();
    assert_eq!(blocks.len(), 1, "{outs:?}");
    assert_eq!(blocks[0].policy.as_deref(), Some("secret-redaction"));
    assert!(unread(blocks[0]), "{:?}", blocks[0]);
}

/// A chat request of exactly `len` bytes as an absolute-form plain-HTTP
/// request head and body.
fn sized_chat(len: usize) -> (String, Vec<u8>) {
    let (pre, post) = (r#"{"model":"m","messages":[],"pad":""#, r#""}"#);
    let body = format!("{pre}{}{post}", "x".repeat(len - pre.len() - post.len()));
    let head = format!(
        "POST http://{HOST}/v1/chat/completions HTTP/1.1\r\nhost: {HOST}\r\n\
         content-type: application/json\r\ncontent-length: {len}\r\n\r\n"
    );
    (head, body.into_bytes())
}

/// Waits until the bytes the gateway's body budget holds satisfy `ok`.
async fn bodies_held(gw: &TestGateway, ok: impl Fn(usize) -> bool + Clone) -> bool {
    let g = gw.gateway.clone();
    wait_until(BOUND, || {
        let (g, ok) = (g.clone(), ok.clone());
        async move { ok(g.bodies().held()) }
    })
    .await
}

/// Sends `head` and `body` as a body still arriving: its first byte, then,
/// once kt holds `held` bytes of bodies, the rest. Returns the answer's head.
async fn send_arriving(
    gw: &TestGateway,
    head: &str,
    body: &[u8],
    held: usize,
) -> client::ConnectReply {
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&body[..1]).await.unwrap();
    assert!(bodies_held(gw, move |n| n >= held).await);
    s.write_all(&body[1..]).await.unwrap();
    client::read_head(&mut s).await
}

/// Each body is bounded (32 MiB), but many slow bodies at once could take
/// all memory: the bodies still arriving share one budget, and a body that
/// would pass it gets `503 bodies_busy` at once. The bytes come back when
/// a body goes, and a declared length over the body limit is `413` before
/// any of the body is sent.
#[tokio::test]
async fn bodies_still_arriving_share_one_memory_budget() {
    let ca = TestCa::new("ca");
    let origin = Origin::plain().await;
    // Secret redaction reads JSON answers whole too.
    let config = Arc::new(PolicyConfig::parse(AUDIT, Path::new("t.yaml")).unwrap());
    let gw = TestGateway::start(&ca, |s| {
        s.connect_to.push(connect_to(HOST, 80, origin.addr));
        s.limits.max_buffered_bodies = 64 * 1024;
        s.apply_config(&config);
    })
    .await;
    // A sends 40 KB of a 60 KB body, then nothing.
    let (head, body) = sized_chat(60_000);
    let mut a = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    a.write_all(head.as_bytes()).await.unwrap();
    a.write_all(&body[..40_000]).await.unwrap();
    assert!(bodies_held(&gw, |n| n >= 40_000).await);

    // B's 30 KB would pass the 64 KiB: refused once its bytes come.
    let (head, body) = sized_chat(30_000);
    let answer = send_arriving(&gw, &head, &body, 40_001).await;
    assert_eq!(answer.status, 503, "{}", answer.head);
    assert!(
        answer.head.contains("x-kt-error: bodies_busy"),
        "{}",
        answer.head
    );
    assert_eq!(origin.hits.load(Ordering::SeqCst), 0);

    // An answer that would pass it while A holds the rest: `503
    // bodies_busy` too, kt's own limit, not the upstream's fault.
    let reply = "y".repeat(30_000);
    let (head, body) = sized_chat(100);
    let head = head.replace("\r\n\r\n", &format!("\r\nx-test-reply: {reply}\r\n\r\n"));
    let answer = send_arriving(&gw, &head, &body, 1).await;
    assert_eq!(answer.status, 503, "{}", answer.head);
    assert!(
        answer.head.contains("x-kt-error: bodies_busy") && answer.body.contains("retry"),
        "{answer:?}"
    );
    assert_eq!(origin.hits.load(Ordering::SeqCst), 1);

    // A goes away: the same body now passes.
    drop(a);
    assert!(
        bodies_held(&gw, |n| n == 0).await,
        "bytes of a body that went away were kept"
    );
    let (head, body) = sized_chat(30_000);
    let answer = send_arriving(&gw, &head, &body, 1).await;
    assert_eq!(answer.status, 200, "{}", answer.head);
    assert_eq!(origin.hits.load(Ordering::SeqCst), 2);

    // Past the 32 MiB body limit by its own word: refused before the body.
    let (head, _) = sized_chat(100);
    let head = head.replace("content-length: 100", "content-length: 40000000");
    let mut d = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    d.write_all(head.as_bytes()).await.unwrap();
    let answer = client::read_head(&mut d).await;
    assert_eq!(answer.status, 413, "{}", answer.head);
}
