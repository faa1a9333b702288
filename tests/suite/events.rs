//! The audit trail through the real proxy: one event per phase of each LLM
//! exchange, blocks and redactions recorded without the secret, a chain that
//! verifies, and the `kt events` commands on the result.

use crate::common::client::{body_string, through_proxy};
use crate::common::origin::{Alpn, Origin};
use crate::common::{connect_to, steps, verified_events, TestCa, TestGateway};
use bytes::Bytes;
use keeptrusts::config::PolicyConfig;
use keeptrusts::events::{read_last, Filters};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

const HOST: &str = "api.openai.com";
const CONFIG: &str = crate::common::AUDIT_REDACT_FILTER;

fn chat(content: &str) -> Bytes {
    Bytes::from(
        serde_json::json!({"model": "gpt-4o", "messages": [{"role": "user", "content": content}]})
            .to_string(),
    )
}

#[tokio::test]
async fn exchanges_are_recorded_hash_chained_and_without_secrets() {
    let ca = TestCa::new("events CA");
    let origin = Origin::tls(&ca, &[HOST], Alpn::Both).await;
    let config = Arc::new(PolicyConfig::parse(CONFIG, Path::new("t.yaml")).unwrap());
    let mut gw = TestGateway::start(&ca, |s| {
        s.connect_to.push(connect_to(HOST, 443, origin.addr));
        s.apply_config(&config);
    })
    .await;
    let (mut http, _) = through_proxy(gw.addr, HOST, &[gw.ca_der()], &[b"http/1.1"]).await;
    let token = format!("ghp_{}", "Qw3rTy7uIo9pAs2dFg4hJk6lZx8cVb1nM5eR");
    for content in [
        "plain question".to_string(),
        format!("my token is {token}"),
        "about internal-project-zeus".to_string(),
    ] {
        let resp = http
            .send("POST", HOST, "/v1/chat/completions", chat(&content))
            .await;
        let _ = body_string(resp).await;
    }
    // A non-LLM path is not an exchange.
    let _ = body_string(http.send("GET", HOST, "/v1/models", Bytes::new()).await).await;
    drop(http);

    let dir = gw.close_events().await;
    let events = verified_events(&dir);
    assert_eq!(
        steps(&events),
        [
            ("input", "pass"),
            ("output", "pass"),
            ("input", "redact"),
            ("output", "pass"),
            ("input", "block"),
        ]
    );
    let pass = &events[1];
    assert_eq!(pass.status, Some(200));
    assert_eq!(pass.provider.as_deref(), Some("openai"));
    assert_eq!(pass.endpoint.as_deref(), Some("chat/completions"));
    assert_eq!(pass.model.as_deref(), Some("gpt-4o"));
    assert_eq!(pass.request_id, events[0].request_id);
    assert!(pass.upstream_ms.is_some() && pass.latency_ms.is_some());
    let redacted = &events[2];
    // The policy that did it is named, as for a block.
    assert_eq!(redacted.policy.as_deref(), Some("secret-redaction"));
    assert_eq!(pass.policy, None);
    let counts = redacted.redactions.as_ref().unwrap();
    assert_eq!(counts.values().sum::<u64>(), 1, "{counts:?}");
    let block = &events[4];
    assert_eq!(block.policy.as_deref(), Some("content-filter"));
    assert_eq!(block.status, Some(409));

    let raw = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect::<String>();
    assert!(!raw.contains(&token[4..]), "a secret reached the audit log");

    // The counters agree.
    let metrics = gw.metrics_text().await;
    for line in [
        "kt_exchanges_total{action=\"pass\"} 1",
        "kt_exchanges_total{action=\"redact\"} 1",
        "kt_exchanges_total{action=\"block\"} 1",
        "kt_events_written_total 5",
        "kt_events_queued 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing:\n{metrics}"
        );
    }
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("kt_events_fsyncs_total ")),
        "kt_events_fsyncs_total missing:\n{metrics}"
    );

    // The commands on the same folder.
    let kt = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_kt"))
            .args(args)
            .arg("--data-dir")
            .arg(gw.home.path())
            .output()
            .unwrap()
    };
    let out = kt(&["events", "verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = kt(&["events", "tail", "--no-follow", "--filter", "action=block"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.contains("INPUT  openai chat/completions BLOCK policy=content-filter"),
        "{text}"
    );
    let out = kt(&["events", "tail", "--no-follow", "--json", "-n", "2"]);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[1]["hash"].as_str().is_some_and(|h| h.len() == 64));

    // Tampering is found and named.
    let segment = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .unwrap();
    let text = std::fs::read_to_string(&segment).unwrap();
    std::fs::write(
        &segment,
        text.replacen("\"status\":409", "\"status\":200", 1),
    )
    .unwrap();
    let out = kt(&["events", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(":5:"), "names the line: {err}");
}

#[tokio::test]
async fn the_live_feed_streams_new_events_and_tail_reads_it() {
    use http_body_util::BodyExt;
    let ca = TestCa::new("feed CA");
    let origin = Origin::tls(&ca, &[HOST], Alpn::Both).await;
    let gw = TestGateway::start(&ca, |s| {
        s.connect_to.push(connect_to(HOST, 443, origin.addr));
    })
    .await;

    // Subscribe first, then cause an exchange.
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let mut feed = crate::common::client::Http::over(tcp, false).await;
    let resp = feed
        .send("GET", "kt", "/_kt/events?n=0", Bytes::new())
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();

    let (mut http, _) = through_proxy(gw.addr, HOST, &[gw.ca_der()], &[b"h2"]).await;
    let _ = body_string(
        http.send("POST", HOST, "/v1/chat/completions", chat("hi"))
            .await,
    )
    .await;

    let mut seen = String::new();
    let deadline = std::time::Duration::from_secs(10);
    while !seen.contains("\"phase\":\"output\"") {
        let frame = tokio::time::timeout(deadline, body.frame())
            .await
            .expect("no event on the live feed")
            .unwrap()
            .unwrap();
        if let Ok(data) = frame.into_data() {
            seen.push_str(&String::from_utf8_lossy(&data));
        }
    }
    assert!(seen.starts_with(": end of history\n\n"), "{seen}");
    assert!(seen.contains("\"phase\":\"input\""), "{seen}");
    assert!(
        seen.contains("\"hash\":\""),
        "live events carry their hash: {seen}"
    );

    // The same events through `kt events tail --gateway`, history only.
    let url = format!("http://{}", gw.addr);
    let out = kt(
        &[
            "events",
            "tail",
            "--gateway",
            &url,
            "-n",
            "2",
            "--no-follow",
        ],
        &[],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(
        text.contains("INPUT  openai chat/completions PASS"),
        "{text}"
    );
    assert!(
        text.contains("OUTPUT openai chat/completions PASS latency="),
        "{text}"
    );

    // And through a TLS front (an ingress, a load balancer), checked
    // against the roots SSL_CERT_FILE names.
    let front = tls_front(&ca, gw.addr).await;
    let tail = |url: String, roots: std::path::PathBuf| async move {
        let args = [
            "events",
            "tail",
            "--gateway",
            &url,
            "-n",
            "2",
            "--no-follow",
        ];
        kt(&args, &[("SSL_CERT_FILE", roots.as_os_str())]).await
    };
    let url = format!("https://localhost:{}", front.port());
    let out = tail(url.clone(), ca.pem_path.clone()).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), text);
    // A front whose certificate the roots do not vouch for is refused.
    let stranger = TestCa::new("a CA nobody trusts");
    let out = tail(url, stranger.pem_path.clone()).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("TLS handshake with the gateway"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn remote_tail_gives_the_last_n_events_that_match_its_filter() {
    use keeptrusts::events::{Action, Event, Phase};
    let ca = TestCa::new("feed filter CA");
    let gw = TestGateway::start(&ca, |_| {}).await;
    let sink = gw.gateway.events_feed().unwrap().sink.clone();
    // dev1 only among the oldest: the last 5 of all events have none.
    for n in 0..30 {
        let mut e = Event::new(Phase::Input, Action::Pass);
        e.provider = Some("openai".into());
        e.endpoint = Some("chat/completions".into());
        e.user = Some(if n < 5 { "dev1" } else { "dev2" }.into());
        e.model = Some(format!("m{n}").into());
        sink.send(e).await.unwrap();
    }
    sink.flush().await.unwrap();
    let url = format!("http://{}", gw.addr);
    let args = ["events", "tail", "--gateway", &url, "-n", "5"];
    let filter = ["--filter", "user=dev1", "--no-follow", "--json"];
    let out = kt(&[&args[..], &filter[..]].concat(), &[]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let models: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let e: Event = serde_json::from_str(l).unwrap();
            assert_eq!(e.user.as_deref(), Some("dev1"));
            e.model.unwrap().to_string()
        })
        .collect();
    assert_eq!(models, ["m0", "m1", "m2", "m3", "m4"]);

    // A filter the gateway cannot parse is refused, not ignored.
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let mut http = crate::common::client::Http::over(tcp, false).await;
    let resp = http
        .send(
            "GET",
            "kt",
            "/_kt/events?n=5&filter=nosuchfield%3Dx",
            Bytes::new(),
        )
        .await;
    assert_eq!(resp.status(), 400);
}

/// A TLS terminator for `localhost` (certificate from `ca`) relaying each
/// connection to `backend`, as an ingress in front of a gateway does.
async fn tls_front(ca: &TestCa, backend: std::net::SocketAddr) -> std::net::SocketAddr {
    let acceptor = ca.h1_acceptor(&["localhost"]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut up) = tokio::net::TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn upstream_failures_are_recorded_as_errors_with_the_cause() {
    let trusted = TestCa::new("trusted CA");
    let rogue = TestCa::new("rogue CA");
    // The origin's certificate comes from a CA the gateway does not trust.
    let origin = Origin::tls(&rogue, &[HOST], Alpn::Both).await;
    let mut gw = TestGateway::start(&trusted, |s| {
        s.connect_to.push(connect_to(HOST, 443, origin.addr));
    })
    .await;
    let (mut http, _) = through_proxy(gw.addr, HOST, &[gw.ca_der()], &[b"http/1.1"]).await;
    let resp = http
        .send("POST", HOST, "/v1/chat/completions", chat("hi"))
        .await;
    assert_eq!(resp.status(), 502);
    drop(http);
    let dir = gw.close_events().await;
    let (events, _) = read_last(&dir, 10, &Filters::default()).unwrap();
    let output = events
        .iter()
        .find(|e| e.phase.as_str() == "output")
        .unwrap();
    assert_eq!(output.action.as_str(), "error");
    assert_eq!(output.status, Some(502));
    let reason = output.reason.as_deref().unwrap_or_default();
    assert!(reason.starts_with("upstream_tls:"), "{reason}");
}

#[tokio::test]
async fn retention_removes_expired_segments_at_start() {
    let ca = TestCa::new("retention CA");
    let yaml =
        "policies:\n  chain: [audit-logger]\npolicy:\n  audit-logger:\n    retention_days: 30\n";
    let config = Arc::new(PolicyConfig::parse(yaml, Path::new("t.yaml")).unwrap());
    let mut old = Vec::new();
    let gw = TestGateway::start(&ca, |s| {
        let dir = s.events_dir.clone().unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        for day in ["2020-01-01", "2020-01-02"] {
            let path = dir.join(format!("{day}.jsonl"));
            std::fs::write(&path, "").unwrap();
            old.push(path);
        }
        s.apply_config(&config);
    })
    .await;
    assert!(!old[0].exists(), "an expired segment was kept");
    // The newest segment always stays, so the chain has an anchor.
    assert!(old[1].exists());
    drop(gw);
}

#[tokio::test]
async fn log_all_access_records_blind_tunnels() {
    let ca = TestCa::new("tunnel CA");
    let origin = Origin::tls(&ca, &["example.org"], Alpn::Both).await;
    let yaml =
        "policies:\n  chain: [audit-logger]\npolicy:\n  audit-logger:\n    log_all_access: true\n";
    let config = Arc::new(PolicyConfig::parse(yaml, Path::new("t.yaml")).unwrap());
    let mut gw = TestGateway::start(&ca, |s| {
        s.connect_to
            .push(connect_to("example.org", 443, origin.addr));
        s.apply_config(&config);
    })
    .await;
    let (_tunnel, reply) = crate::common::client::connect(gw.addr, "example.org:443").await;
    assert_eq!(reply.status, 200);
    let dir = gw.close_events().await;
    let (events, _) = read_last(&dir, 10, &Filters::default()).unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].phase.as_str(), "connect");
    assert_eq!(events[0].action.as_str(), "tunnel");
    assert_eq!(events[0].host.as_deref(), Some("example.org:443"));
    assert!(keeptrusts::events::format_line(&events[0], false)
        .ends_with("CONNECT example.org:443 TUNNEL"));
}

#[tokio::test]
async fn tunnels_are_not_recorded_by_default() {
    let ca = TestCa::new("tunnel CA");
    let origin = Origin::tls(&ca, &["example.org"], Alpn::Both).await;
    let mut gw = TestGateway::start(&ca, |s| {
        s.connect_to
            .push(connect_to("example.org", 443, origin.addr));
    })
    .await;
    let (_tunnel, reply) = crate::common::client::connect(gw.addr, "example.org:443").await;
    assert_eq!(reply.status, 200);
    let dir = gw.close_events().await;
    let (events, _) = read_last(&dir, 10, &Filters::default()).unwrap();
    assert!(events.is_empty(), "{events:?}");
}

/// A log cut back at its end still links up, so only a hash kept outside
/// it shows the cut: `verify` prints the last one, `--expect` checks it.
#[tokio::test]
async fn a_log_cut_back_fails_against_a_hash_kept_from_before() {
    use keeptrusts::events::{Action, Event, EventLog, LogOptions, Phase};
    let home = tempfile::tempdir().unwrap();
    let events = home.path().join("events");
    let (sink, writer) = EventLog::open(&events, LogOptions::default()).unwrap();
    for i in 0..5u64 {
        let mut e = Event::new(Phase::Output, Action::Pass);
        e.tokens_in = Some(i);
        sink.send(e).await.unwrap();
    }
    writer.close().await.unwrap();
    let verify = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_kt"))
            .args(["events", "verify", "--data-dir"])
            .arg(home.path())
            .args(extra)
            .output()
            .unwrap()
    };
    let last_event = |out: &std::process::Output| {
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let hash = text
            .lines()
            .find_map(|l| l.strip_prefix("last event: "))
            .unwrap_or_else(|| panic!("no last event in: {text}"))
            .to_string();
        hash
    };
    let out = verify(&[]);
    assert!(out.status.success());
    let kept = last_event(&out);
    assert_eq!(verify(&["--expect", &kept]).status.code(), Some(0));
    assert_eq!(
        verify(&["--expect", &kept.to_ascii_uppercase()])
            .status
            .code(),
        Some(0),
        "a hash in capitals is the same hash"
    );

    // Drop the last two events: what is left is a valid chain of three.
    let segment = std::fs::read_dir(&events)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .unwrap();
    let text = std::fs::read_to_string(&segment).unwrap();
    let kept_lines: Vec<&str> = text.lines().take(3).collect();
    std::fs::write(&segment, format!("{}\n", kept_lines.join("\n"))).unwrap();
    let out = verify(&[]);
    assert!(out.status.success(), "the chain alone cannot see a cut end");
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok: 3 events"));
    let earlier = last_event(&out);
    assert_ne!(earlier, kept);

    let out = verify(&["--expect", &earlier, "--expect", &kept]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("event {kept} is not in the log")),
        "{err}"
    );
    assert!(
        !err.contains(&earlier),
        "the hash still held is not named: {err}"
    );
    assert!(
        !err.contains("retention"),
        "the log starts at genesis: {err}"
    );
    assert_eq!(verify(&["--expect", &earlier]).status.code(), Some(0));

    let out = verify(&["--expect", "not-a-hash"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("64 hex digits"));
}

/// The request's event is written once the request has gone upstream,
/// stamped with its arrival, while the answer still streams; the answer's
/// when it ends. A gateway that died mid-answer would still have recorded
/// the request.
#[tokio::test]
async fn a_request_is_recorded_while_its_answer_still_streams() {
    use crate::common::probe::{wait_until, BOUND};
    use http_body_util::{BodyExt, Full};
    let ca = TestCa::new("events CA");
    let origin = Origin::tls(&ca, &[HOST], Alpn::Both).await;
    let gw = TestGateway::start(&ca, |s| {
        s.connect_to.push(connect_to(HOST, 443, origin.addr));
    })
    .await;
    let dir = gw.home.path().join("events");
    let (mut http, _) = through_proxy(gw.addr, HOST, &[gw.ca_der()], &[b"h2"]).await;
    let body = serde_json::json!({"model": "gpt-4o", "stream": true,
        "messages": [{"role": "user", "content": "hi"}]});
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("https://{HOST}/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-test-gated", "1")
        .header("x-test-reply", "aaaa bbbb cccc")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = http.request(req).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    assert!(body.frame().await.unwrap().unwrap().data_ref().is_some());

    let logged = || {
        read_last(&dir, 10, &Filters::default())
            .map(|(e, _)| e)
            .unwrap_or_default()
    };
    let seen = wait_until(BOUND, || async { !logged().is_empty() }).await;
    assert!(seen, "nothing recorded while the answer streams");
    let during = logged();
    assert_eq!(during.len(), 1, "{during:?}");
    let input = &during[0];
    assert_eq!(
        (input.phase.as_str(), input.action.as_str()),
        ("input", "pass")
    );
    assert_eq!(input.model.as_deref(), Some("gpt-4o"));

    origin.sse_gate.add_permits(16);
    let rest = body.collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&rest).contains("[DONE]"));
    let done = wait_until(BOUND, || async { logged().len() == 2 }).await;
    assert!(done, "the answer's event never came: {:?}", logged());
    let after = logged();
    let (input, output) = (&after[0], &after[1]);
    assert_eq!(output.phase.as_str(), "output");
    assert_eq!(input.request_id, output.request_id);
    assert!(input.ts <= output.ts, "{} then {}", input.ts, output.ts);
}

/// Opens a WebSocket to `path` on `HOST` through the gateway: the status
/// line of the answer, and the TLS stream when it is a `101`.
async fn websocket(
    gw: &TestGateway,
    path: &str,
) -> (
    String,
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) {
    let (head, tls) = crate::common::client::websocket(gw.addr, HOST, path, &[gw.ca_der()]).await;
    (head.lines().next().unwrap_or_default().to_string(), tls)
}

/// kt cannot read WebSocket frames; a WebSocket to an LLM endpoint is
/// recorded as such, and refused when a policy that must read it fails
/// closed.
#[tokio::test]
async fn websockets_to_llm_endpoints_are_recorded_or_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = TestCa::new("events CA");
    let origin = Origin::tls(&ca, &[HOST], Alpn::Both).await;
    let mut gw = TestGateway::start(&ca, |s| {
        s.connect_to.push(connect_to(HOST, 443, origin.addr));
    })
    .await;
    for path in ["/v1/realtime?model=gpt-realtime", "/responses"] {
        let (status, mut tls) = websocket(&gw, path).await;
        assert!(status.starts_with("HTTP/1.1 101"), "{path}: {status}");
        tls.write_all(b"frame").await.unwrap();
        let mut echo = [0u8; 5];
        tls.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"frame");
    }
    // A WebSocket elsewhere is no LLM exchange.
    let (status, tls) = websocket(&gw, "/ws").await;
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    drop(tls);
    let dir = gw.close_events().await;
    let (events, _) = read_last(&dir, 10, &Filters::default()).unwrap();
    let seen: Vec<_> = events
        .iter()
        .map(|e| {
            (
                e.phase.as_str(),
                e.action.as_str(),
                e.path.as_deref().unwrap_or_default(),
                e.status,
                e.reason.as_deref().unwrap_or_default(),
            )
        })
        .collect();
    let why = "not inspected: websocket";
    for path in ["/v1/realtime", "/responses"] {
        assert!(
            seen.contains(&("input", "pass", path, None, why)),
            "{path}: {seen:?}"
        );
        assert!(
            seen.contains(&("output", "pass", path, Some(101), why)),
            "{path}: {seen:?}"
        );
    }
    assert_eq!(seen.len(), 4, "{seen:?}");

    // Secret redaction fails closed by default: it could not see the frames.
    let config = Arc::new(PolicyConfig::parse(CONFIG, Path::new("t.yaml")).unwrap());
    let mut gw = TestGateway::start(&ca, |s| {
        s.connect_to.push(connect_to(HOST, 443, origin.addr));
        s.apply_config(&config);
    })
    .await;
    let (status, _) = websocket(&gw, "/responses").await;
    assert!(status.starts_with("HTTP/1.1 409"), "{status}");
    let dir = gw.close_events().await;
    let (events, _) = read_last(&dir, 10, &Filters::default()).unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        (events[0].action.as_str(), events[0].policy.as_deref()),
        ("block", Some("secret-redaction"))
    );
    assert_eq!(
        events[0].reason.as_deref(),
        Some("not inspected: websocket; the policy fails closed")
    );
}

const ANTHROPIC: &str = "api.anthropic.com";

/// A gateway with `yaml` in front of an origin serving both providers.
async fn two_provider_gateway(yaml: &str) -> (Origin, TestGateway) {
    let ca = TestCa::new("events CA");
    let origin = Origin::tls(&ca, &[HOST, ANTHROPIC], Alpn::Both).await;
    let config = Arc::new(PolicyConfig::parse(yaml, Path::new("t.yaml")).unwrap());
    let gw = TestGateway::start(&ca, |s| {
        s.connect_to.push(connect_to(HOST, 443, origin.addr));
        s.connect_to.push(connect_to(ANTHROPIC, 443, origin.addr));
        s.apply_config(&config);
    })
    .await;
    (origin, gw)
}

/// POSTs a chat request to `host` (the Anthropic or OpenAI path) with the
/// origin's test headers; returns the status and the body as received.
async fn post_llm(
    gw: &TestGateway,
    host: &str,
    stream: bool,
    headers: &[(&str, &str)],
) -> (u16, Bytes) {
    use http_body_util::{BodyExt, Full};
    let (mut http, _) = through_proxy(gw.addr, host, &[gw.ca_der()], &[b"http/1.1"]).await;
    let (path, model) = match host {
        ANTHROPIC => ("/v1/messages", "claude-sonnet-4-5"),
        _ => ("/v1/chat/completions", "gpt-4o"),
    };
    let body = serde_json::json!({"model": model, "stream": stream, "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}]});
    let mut req = http::Request::builder()
        .method("POST")
        .uri(path)
        .header("host", host)
        .header("content-type", "application/json");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = http
        .request(req.body(Full::new(Bytes::from(body.to_string()))).unwrap())
        .await;
    let status = resp.status().as_u16();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

/// An error the provider sends after its 200 (an Anthropic `error` event, an
/// OpenAI `{"error":…}` chunk, a JSON answer that is an error) reaches the
/// client untouched, and the exchange is recorded as an error naming it,
/// with the audit-only chain (the usage tap) and with output policies
/// reading the stream alike.
#[tokio::test]
async fn provider_errors_after_a_200_are_recorded_as_errors() {
    use crate::common::origin::{ANTHROPIC_OVERLOADED, JSON_ERROR, OPENAI_STREAM_ERROR};
    let audit_only = "policies:\n  chain: [audit-logger]\npolicy:\n  audit-logger: {}\n";
    let policed = "policies:\n  chain: [audit-logger, secret-redaction]\npolicy:\n  audit-logger: {}\n  secret-redaction:\n    type: redact\n";
    let server_error = "server_error: The server had an error while processing your request.";
    for yaml in [audit_only, policed] {
        let (_origin, mut gw) = two_provider_gateway(yaml).await;
        let cases: [(&str, bool, &str, &[u8], String); 3] = [
            (
                ANTHROPIC,
                true,
                "anthropic-overloaded",
                ANTHROPIC_OVERLOADED,
                "upstream stream error: overloaded_error: Overloaded".into(),
            ),
            (
                HOST,
                true,
                "openai-error",
                OPENAI_STREAM_ERROR,
                format!("upstream stream error: {server_error}"),
            ),
            (
                HOST,
                false,
                "json-error",
                JSON_ERROR,
                format!("upstream error: {server_error}"),
            ),
        ];
        for (host, stream, kind, sent, _) in &cases {
            let (status, got) = post_llm(&gw, host, *stream, &[("x-test-raw", kind)]).await;
            assert_eq!(status, 200, "{kind}");
            assert_eq!(
                &got[..],
                *sent,
                "{kind}: the client must get the provider's bytes as sent"
            );
        }

        let metrics = gw.metrics_text().await;
        assert!(
            metrics
                .lines()
                .any(|l| l == "kt_exchanges_total{action=\"error\"} 3"),
            "{metrics}"
        );

        let dir = gw.close_events().await;
        let (events, _) = read_last(&dir, 100, &Filters::default()).unwrap();
        let outputs: Vec<_> = events
            .iter()
            .filter(|e| e.phase.as_str() == "output")
            .collect();
        assert_eq!(outputs.len(), cases.len(), "{events:?}");
        for (out, (_, _, kind, _, reason)) in outputs.iter().zip(&cases) {
            assert_eq!(out.action.as_str(), "error", "{kind}: {out:?}");
            assert_eq!(out.status, Some(200), "{kind}");
            assert_eq!(out.reason.as_deref(), Some(reason.as_str()), "{kind}");
        }
        // Anthropic's `message_start` output count is a placeholder, not
        // tokens the failed answer produced.
        assert_eq!(outputs[0].tokens_in, Some(20));
        assert_eq!(outputs[0].tokens_out, None);
        assert_eq!(outputs[1].tokens_out, None);
    }
}

/// A token longer than the stream's usual hold-back (an identity JWT with
/// its claims) is held whole and redacted, not sent in part.
#[tokio::test]
async fn a_token_longer_than_the_hold_back_is_redacted_whole_in_a_stream() {
    let yaml =
        "policies:\n  chain: [secret-redaction]\npolicy:\n  secret-redaction:\n    type: redact\n";
    let (_origin, gw) = two_provider_gateway(yaml).await;
    let claims: String = (0..700)
        .map(|i| char::from(b"aZ3kQ9x_Lm7-Rt2W"[(i * 7 + i / 16) % 16]))
        .collect();
    let jwt =
        format!("eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJ{claims}.Qx7Lm2Rt9Wk3Zp8Vb5Nc1Hd4Jf6");
    let reply = format!("Use {jwt} as the bearer token.");
    for host in [HOST, ANTHROPIC] {
        let headers = [("x-test-reply", reply.as_str()), ("x-test-chunk", "5")];
        let (status, body) = post_llm(&gw, host, true, &headers).await;
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, 200);
        assert!(
            !body.contains(&claims[300..320]) && !body.contains("Jf6"),
            "{host}: part of the token went out: {body}"
        );
        assert_eq!(body.matches("[REDACTED:jwt]").count(), 1, "{host}: {body}");
    }
}

/// A streamed Responses answer (what Codex and newer Copilot builds ask
/// for) repeats its text whole in its `….done` events and in
/// `response.completed`: a secret is redacted in every one of them, not
/// only in the deltas, and the audit counts it once.
#[tokio::test]
async fn a_responses_stream_repeats_no_secret_in_its_whole_text_events() {
    use http_body_util::{BodyExt, Full};
    let yaml = "policies:\n  chain: [audit-logger, secret-redaction]\npolicy:\n  audit-logger: {}\n  secret-redaction:\n    type: redact\n";
    let (_origin, mut gw) = two_provider_gateway(yaml).await;
    let key = format!("AKIA{}", "QX4B7ZK2M5RT6WLN");
    let reply = format!("Your key is {key} and it is live.");
    let (mut http, _) = through_proxy(gw.addr, HOST, &[gw.ca_der()], &[b"http/1.1"]).await;
    let body = serde_json::json!({"model": "gpt-4.1", "stream": true, "input": "hi"});
    let req = http::Request::builder()
        .method("POST")
        .uri("/v1/responses")
        .header("host", HOST)
        .header("content-type", "application/json")
        .header("x-test-reply", reply.as_str())
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = http.request(req).await;
    assert_eq!(resp.status(), 200);
    let raw = resp.into_body().collect().await.unwrap().to_bytes();
    let raw = String::from_utf8_lossy(&raw);
    assert!(!raw.contains(&key[4..]), "{raw}");
    let redacted = "Your key is [REDACTED:aws_access_key_id] and it is live.";
    let mut deltas = String::new();
    let mut whole = Vec::new();
    for data in raw.lines().filter_map(|l| l.strip_prefix("data: ")) {
        let v: serde_json::Value = serde_json::from_str(data).unwrap();
        match v["type"].as_str().unwrap_or_default() {
            "response.output_text.delta" => deltas.push_str(v["delta"].as_str().unwrap()),
            "response.output_text.done" => whole.push(v["text"].clone()),
            "response.content_part.done" => whole.push(v["part"]["text"].clone()),
            "response.output_item.done" => whole.push(v["item"]["content"][0]["text"].clone()),
            "response.completed" => {
                whole.push(v["response"]["output"][0]["content"][0]["text"].clone())
            }
            other => panic!("unexpected event {other}: {raw}"),
        }
    }
    assert_eq!(deltas, redacted);
    assert_eq!(whole, vec![serde_json::json!(redacted); 4], "{raw}");

    let dir = gw.close_events().await;
    let events = verified_events(&dir);
    let output = events
        .iter()
        .find(|e| e.phase.as_str() == "output")
        .expect("an output event");
    let counts = output.redactions.as_ref().unwrap();
    assert_eq!(
        counts.iter().collect::<Vec<_>>(),
        [(&"aws_access_key_id".to_string(), &1)],
        "{output:?}"
    );
    assert_eq!(output.tokens_out, Some(5), "{output:?}");
}

/// One AWS key in a streamed answer is one redaction on the output event,
/// however small the stream's chunks, in both stream shapes, as in a JSON
/// answer and in `kt_policy_actions_total`.
#[tokio::test]
async fn a_secret_in_a_stream_is_counted_once() {
    let yaml = "policies:\n  chain: [audit-logger, secret-redaction]\npolicy:\n  audit-logger: {}\n  secret-redaction:\n    type: redact\n";
    let (_origin, mut gw) = two_provider_gateway(yaml).await;
    // Built at run time: no key-shaped literal in the repository.
    let key = format!("AKIA{}", "QX4B7ZK2M5RT6WLN");
    let reply = format!("Your key is {key} and it is live.");
    let mut sent = 0;
    for host in [HOST, ANTHROPIC] {
        for (stream, chunk) in [
            (true, "1"),
            (true, "2"),
            (true, "3"),
            (true, "7"),
            (false, "4"),
        ] {
            let headers = [("x-test-reply", reply.as_str()), ("x-test-chunk", chunk)];
            let (status, body) = post_llm(&gw, host, stream, &headers).await;
            sent += 1;
            let body = String::from_utf8_lossy(&body);
            assert_eq!(status, 200);
            assert!(!body.contains(&key[4..]), "{host} chunk {chunk}: {body}");
            assert_eq!(
                body.matches("[REDACTED:aws_access_key_id]").count(),
                1,
                "{host} chunk {chunk}: {body}"
            );
        }
    }
    let metrics = gw.metrics_text().await;
    let line =
        format!("kt_policy_actions_total{{policy=\"secret-redaction\",action=\"redact\"}} {sent}");
    assert!(metrics.lines().any(|l| l == line), "{line}:\n{metrics}");

    let dir = gw.close_events().await;
    let (events, _) = read_last(&dir, 100, &Filters::default()).unwrap();
    let outputs: Vec<_> = events
        .iter()
        .filter(|e| e.phase.as_str() == "output")
        .collect();
    assert_eq!(outputs.len(), sent);
    for out in outputs {
        assert_eq!(out.action.as_str(), "redact", "{out:?}");
        let counts = out.redactions.as_ref().unwrap();
        assert_eq!(
            counts.iter().collect::<Vec<_>>(),
            [(&"aws_access_key_id".to_string(), &1)],
            "{out:?}"
        );
    }
}

/// A client that stops reading a stream after a redacted secret went by
/// leaves that redaction on the output event: the audit trail says what
/// was cut from what the client did receive.
#[tokio::test]
async fn a_stream_the_client_stops_keeps_its_redactions_on_record() {
    use crate::common::probe::wait_until;
    use http_body_util::{BodyExt, Full};
    use std::sync::atomic::Ordering;
    use std::time::Duration;
    let yaml = "policies:\n  chain: [audit-logger, secret-redaction]\npolicy:\n  audit-logger: {}\n  secret-redaction:\n    type: redact\n";
    let (origin, mut gw) = two_provider_gateway(yaml).await;
    let key = format!("AKIA{}", "QX4B7ZK2M5RT6WLN");
    // The first event carries the whole key and a word after it; the rest
    // waits on the origin's gate, which never opens.
    let reply = format!("Your key is {key} and it is live, the rest never comes.");
    let (mut http, _) = through_proxy(gw.addr, HOST, &[gw.ca_der()], &[b"h2"]).await;
    assert!(http.is_h2());
    let body = serde_json::json!({"model": "gpt-4o", "stream": true,
        "messages": [{"role": "user", "content": "hi"}]});
    let req = http::Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("host", HOST)
        .header("content-type", "application/json")
        .header("x-test-reply", reply.as_str())
        .header("x-test-chunk", "40")
        .header("x-test-gated", "1")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let mut resp = http.request(req).await;
    assert_eq!(resp.status(), 200);
    let first = resp.body_mut().frame().await.unwrap().unwrap();
    let first = String::from_utf8_lossy(first.data_ref().unwrap()).into_owned();
    assert!(first.contains("[REDACTED:aws_access_key_id]"), "{first}");
    assert!(!first.contains(&key[4..]), "{first}");
    drop(resp);
    drop(http);
    let aborted = wait_until(Duration::from_secs(10), || async {
        origin.aborted.load(Ordering::SeqCst) == 1
    })
    .await;
    assert!(aborted, "the upstream stream was not cancelled");

    let dir = gw.close_events().await;
    let events = verified_events(&dir);
    let output = events
        .iter()
        .find(|e| e.phase.as_str() == "output")
        .expect("an output event");
    assert!(output.status.is_none(), "{output:?}");
    let counts = output.redactions.as_ref().expect("redactions on record");
    assert_eq!(
        counts.iter().collect::<Vec<_>>(),
        [(&"aws_access_key_id".to_string(), &1)],
        "{output:?}"
    );
}

/// `kt events tail` colours its lines on a terminal, and not when
/// `NO_COLOR` is set (no-color.org), like the logs. The terminal is a real
/// pseudo-terminal from util-linux `script`.
#[tokio::test]
async fn tail_colours_a_terminal_unless_no_color_is_set() {
    use keeptrusts::events::{Action, Event, EventLog, LogOptions, Phase};
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("KT-TEST-NOTICE: util-linux `script` is missing; the terminal case is not run");
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let (sink, writer) =
        EventLog::open(&home.path().join("events"), LogOptions::default()).unwrap();
    sink.send(Event::new(Phase::Input, Action::Block))
        .await
        .unwrap();
    writer.close().await.unwrap();
    let on_a_terminal = |no_color: Option<&str>| {
        let line = format!(
            "{} events tail --no-follow --data-dir {}",
            env!("CARGO_BIN_EXE_kt"),
            home.path().display()
        );
        let mut cmd = Command::new("script");
        cmd.args(["-qec", &line, "/dev/null"]);
        match no_color {
            Some(v) => cmd.env("NO_COLOR", v),
            None => cmd.env_remove("NO_COLOR"),
        };
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let coloured = on_a_terminal(None);
    assert!(
        coloured.contains("BLOCK") && coloured.contains("\x1b["),
        "{coloured:?}"
    );
    let plain = on_a_terminal(Some("1"));
    assert!(
        plain.contains("BLOCK") && !plain.contains("\x1b["),
        "{plain:?}"
    );
}

/// Runs `kt ARGS` with `env` added, off the runtime (the gateway under test
/// runs on it), and gives its output.
async fn kt(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> std::process::Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let env: Vec<(String, std::ffi::OsString)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_os_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_kt"))
            .args(args)
            .envs(env)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}
