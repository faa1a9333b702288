//! Token usage and cost on the audit trail, through the real proxy: the
//! provider's counts from JSON answers and from streams of each dialect,
//! estimates (marked) when a stream reports none, prices from the built-in
//! table or the config, and `log_bodies`.

use crate::common::client::{body_string, through_proxy, Http};
use crate::common::origin::{Alpn, Origin};
use crate::common::{connect_to, TestCa, TestGateway};
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use keeptrusts::config::PolicyConfig;
use keeptrusts::events::{read_last, Event, Filters, Phase};
use std::path::Path;
use std::sync::Arc;

const HOST: &str = "api.openai.com";

struct Call<'a> {
    path: &'a str,
    model: &'a str,
    stream: bool,
    reply: &'a str,
    usage: Option<&'a str>,
    prompt: &'a str,
}

async fn send(http: &mut Http, c: &Call<'_>) -> String {
    let body = serde_json::json!({"model": c.model, "stream": c.stream, "max_tokens": 64,
        "messages": [{"role": "user", "content": c.prompt}]});
    let mut req = Request::builder()
        .method("POST")
        .uri(c.path)
        .header("host", HOST)
        .header("content-type", "application/json")
        .header("x-test-reply", c.reply)
        .header("x-test-chunk", "3");
    if let Some(u) = c.usage {
        req = req.header("x-test-usage", u);
    }
    let resp = http
        .request(req.body(Full::new(Bytes::from(body.to_string()))).unwrap())
        .await;
    assert_eq!(resp.status(), 200);
    body_string(resp).await
}

async fn run(config: &str, calls: &[Call<'_>]) -> (Vec<Event>, Vec<String>) {
    let ca = TestCa::new("usage CA");
    let origin = Origin::tls(&ca, &[HOST], Alpn::Both).await;
    let config = Arc::new(PolicyConfig::parse(config, Path::new("t.yaml")).unwrap());
    let mut gw = TestGateway::start(&ca, |s| {
        s.connect_to.push(connect_to(HOST, 443, origin.addr));
        s.apply_config(&config);
    })
    .await;
    let (mut http, _) = through_proxy(gw.addr, HOST, &[gw.ca_der()], &[b"http/1.1"]).await;
    let mut bodies = Vec::new();
    for c in calls {
        bodies.push(send(&mut http, c).await);
    }
    drop(http);
    let dir = gw.close_events().await;
    let (events, _) = read_last(&dir, 1000, &Filters::default()).unwrap();
    let outputs = events
        .into_iter()
        .filter(|e| e.phase == Phase::Output)
        .collect();
    (outputs, bodies)
}

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < 1e-9)
}

#[tokio::test]
async fn provider_usage_and_cost_are_recorded_for_json_and_streams() {
    let calls = [
        // JSON, OpenAI shape: 1000 in at $2.50/M + 500 out at $10/M.
        Call {
            path: "/v1/chat/completions",
            model: "gpt-4o",
            stream: false,
            reply: "hi",
            usage: Some("1000,500"),
            prompt: "q",
        },
        // OpenAI stream with a usage chunk; a dated snapshot name.
        Call {
            path: "/v1/chat/completions",
            model: "gpt-4o-mini-2024-07-18",
            stream: true,
            reply: "streamed answer",
            usage: Some("2000,100"),
            prompt: "q",
        },
        // Anthropic stream: input from message_start, output from message_delta.
        Call {
            path: "/v1/messages",
            model: "claude-3-5-sonnet-20241022",
            stream: true,
            reply: "bonjour",
            usage: Some("300,40"),
            prompt: "q",
        },
        // A model the table does not know: tokens, but no cost.
        Call {
            path: "/v1/chat/completions",
            model: "house-llm",
            stream: false,
            reply: "x",
            usage: Some("10,20"),
            prompt: "q",
        },
    ];
    let config = "policies:\n  chain: [audit-logger]\npolicy:\n  audit-logger: {}\n";
    let (out, _) = run(config, &calls).await;
    assert_eq!(out.len(), 4);
    let tokens: Vec<_> = out.iter().map(|e| (e.tokens_in, e.tokens_out)).collect();
    assert_eq!(
        tokens,
        [
            (Some(1000), Some(500)),
            (Some(2000), Some(100)),
            (Some(300), Some(40)),
            (Some(10), Some(20)),
        ]
    );
    for e in &out {
        assert_eq!(e.usage_source.as_deref(), Some("provider"), "{e:?}");
    }
    assert!(close(out[0].cost_usd, 0.0075), "{:?}", out[0].cost_usd);
    // gpt-4o-mini: 2000 × 0.15/M + 100 × 0.60/M.
    assert!(close(out[1].cost_usd, 0.00036), "{:?}", out[1].cost_usd);
    // claude-3-5-sonnet: 300 × 3/M + 40 × 15/M.
    assert!(close(out[2].cost_usd, 0.0015), "{:?}", out[2].cost_usd);
    assert_eq!(out[3].cost_usd, None);
    assert_eq!(out[0].model.as_deref(), Some("gpt-4o"));
    assert!(out.iter().all(|e| e.overhead_us.is_some()));
}

#[tokio::test]
async fn streams_without_usage_are_estimated_and_config_prices_apply() {
    let reply = "a completion of forty characters long!!!";
    assert_eq!(reply.len(), 40);
    // A prompt over the 256 KiB kt keeps for the record is still counted.
    let large = "x".repeat(600_000);
    let calls = [
        Call {
            path: "/v1/chat/completions",
            model: "house-llm",
            stream: true,
            reply,
            usage: None,
            prompt: "twelve chars",
        },
        Call {
            path: "/v1/chat/completions",
            model: "house-llm",
            stream: false,
            reply: "eight ch",
            usage: None,
            prompt: "four",
        },
        Call {
            path: "/v1/chat/completions",
            model: "house-llm",
            stream: true,
            reply,
            usage: None,
            prompt: &large,
        },
    ];
    let config = "pricing:\n  house-llm: {input: 1000000, output: 2000000}\npolicies:\n  chain: [audit-logger, secret-redaction]\npolicy:\n  audit-logger: {}\n  secret-redaction:\n    type: redact\n";
    let (out, bodies) = run(config, &calls).await;
    assert!(
        bodies[0].ends_with("data: [DONE]\n\n"),
        "the stream arrives whole"
    );
    assert_eq!(out.len(), 3);
    for e in &out {
        assert_eq!(e.usage_source.as_deref(), Some("estimated"), "{e:?}");
    }
    assert_eq!(
        (out[2].tokens_in, out[2].tokens_out),
        (Some(150_000), Some(10))
    );
    // 12 prompt chars → 3 tokens; 40 reply chars → 10 tokens.
    assert_eq!((out[0].tokens_in, out[0].tokens_out), (Some(3), Some(10)));
    // The config's price: $1 per input token, $2 per output token.
    assert!(close(out[0].cost_usd, 3.0 + 20.0), "{:?}", out[0].cost_usd);
    assert_eq!((out[1].tokens_in, out[1].tokens_out), (Some(1), Some(2)));
}

/// Gemini's `:streamGenerateContent` without `alt=sse` answers one JSON
/// array of chunks; its last `usageMetadata` is the exchange's usage,
/// whether the answer goes by untouched or output policies read it whole.
#[tokio::test]
async fn a_gemini_stream_sent_as_a_json_array_reports_provider_usage() {
    const GEMINI: &str = "generativelanguage.googleapis.com";
    let path = "/v1beta/models/gemini-2.5-flash:streamGenerateContent";
    let body = r#"{"contents":[{"role":"user","parts":[{"text":"deploy"}]}]}"#;
    let ca = TestCa::new("usage CA");
    let origin = Origin::tls(&ca, &[GEMINI], Alpn::Both).await;
    for config in [
        "policies:\n  chain: [audit-logger]\npolicy:\n  audit-logger: {}\n",
        "policies:\n  chain: [audit-logger, secret-redaction]\npolicy:\n  audit-logger: {}\n  secret-redaction:\n    type: redact\n",
    ] {
        let config = Arc::new(PolicyConfig::parse(config, Path::new("t.yaml")).unwrap());
        let mut gw = TestGateway::start(&ca, |s| {
            s.connect_to.push(connect_to(GEMINI, 443, origin.addr));
            s.apply_config(&config);
        })
        .await;
        let (mut http, _) = through_proxy(gw.addr, GEMINI, &[gw.ca_der()], &[b"http/1.1"]).await;
        let req = Request::builder()
            .method("POST")
            .uri(path)
            .header("host", GEMINI)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let resp = http.request(req).await;
        assert_eq!(resp.status(), 200);
        let answer = body_string(resp).await;
        assert!(answer.starts_with('[') && answer.contains("Done."), "{answer}");
        drop(http);
        let dir = gw.close_events().await;
        let (events, _) = read_last(&dir, 10, &Filters::default()).unwrap();
        let out = events.iter().find(|e| e.phase == Phase::Output).unwrap();
        assert_eq!(out.usage_source.as_deref(), Some("provider"), "{out:?}");
        assert_eq!((out.tokens_in, out.tokens_out), (Some(5), Some(7)), "{out:?}");
        // gemini-2.5-flash: 5 in at $0.30/M + 7 out at $2.50/M.
        assert!(close(out.cost_usd, 0.000019), "{out:?}");
    }
}

#[tokio::test]
async fn log_bodies_records_bodies_after_redaction() {
    let token = format!("ghp_{}", "Qw3rTy7uIo9pAs2dFg4hJk6lZx8cVb1nM5eR");
    let prompt = format!("deploy with {token} please");
    let calls = [
        Call {
            path: "/v1/chat/completions",
            model: "gpt-4o",
            stream: true,
            reply: "on it",
            usage: None,
            prompt: &prompt,
        },
        Call {
            path: "/v1/chat/completions",
            model: "gpt-4o",
            stream: false,
            reply: "done",
            usage: None,
            prompt: "plain",
        },
    ];
    let config = "policies:\n  chain: [audit-logger, secret-redaction]\npolicy:\n  audit-logger:\n    log_bodies: true\n  secret-redaction:\n    type: redact\n";
    let ca = TestCa::new("bodies CA");
    let origin = Origin::tls(&ca, &[HOST], Alpn::Both).await;
    let config = Arc::new(PolicyConfig::parse(config, Path::new("t.yaml")).unwrap());
    let mut gw = TestGateway::start(&ca, |s| {
        s.connect_to.push(connect_to(HOST, 443, origin.addr));
        s.apply_config(&config);
    })
    .await;
    let (mut http, _) = through_proxy(gw.addr, HOST, &[gw.ca_der()], &[b"http/1.1"]).await;
    for c in &calls {
        send(&mut http, c).await;
    }
    drop(http);
    let dir = gw.close_events().await;
    let (events, _) = read_last(&dir, 100, &Filters::default()).unwrap();
    assert_eq!(events.len(), 4);
    let request = events[0].request_body.as_deref().unwrap();
    assert!(request.contains("[REDACTED:"), "{request}");
    assert!(!request.contains(&token[4..]), "{request}");
    let stream = events[1].response_body.as_deref().unwrap();
    assert!(stream.contains("data: [DONE]"), "{stream}");
    let json = events[3].response_body.as_deref().unwrap();
    assert!(json.contains("\"done\""), "{json}");
    let raw: String = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert!(!raw.contains(&token[4..]), "a secret reached the audit log");
}

#[tokio::test]
async fn bodies_are_not_logged_by_default() {
    let calls = [Call {
        path: "/v1/chat/completions",
        model: "gpt-4o",
        stream: false,
        reply: "done",
        usage: Some("1,1"),
        prompt: "plain",
    }];
    let (out, _) = run(
        "policies:\n  chain: [audit-logger]\npolicy:\n  audit-logger: {}\n",
        &calls,
    )
    .await;
    assert_eq!(out[0].response_body, None);
    assert_eq!(out[0].request_body, None);
}

#[tokio::test]
async fn metrics_parse_and_count_exchanges_latency_tokens_and_cost() {
    let ca = TestCa::new("metrics CA");
    let origin = Origin::tls(&ca, &[HOST], Alpn::Both).await;
    let config = "policies:\n  chain: [audit-logger, secret-redaction]\npolicy:\n  audit-logger: {}\n  secret-redaction:\n    type: redact\n";
    let config = Arc::new(PolicyConfig::parse(config, Path::new("t.yaml")).unwrap());
    let gw = TestGateway::start(&ca, |s| {
        s.connect_to.push(connect_to(HOST, 443, origin.addr));
        s.apply_config(&config);
    })
    .await;
    let (mut http, _) = through_proxy(gw.addr, HOST, &[gw.ca_der()], &[b"http/1.1"]).await;
    let token = format!("ghp_{}", "Qw3rTy7uIo9pAs2dFg4hJk6lZx8cVb1nM5eR");
    let prompt = format!("key {token}");
    for (stream, prompt) in [(false, "q"), (true, "q"), (false, prompt.as_str())] {
        let c = Call {
            path: "/v1/chat/completions",
            model: "gpt-4o",
            stream,
            reply: "answer",
            usage: Some("1000,500"),
            prompt,
        };
        send(&mut http, &c).await;
    }
    drop(http);

    let text = gw.metrics_text().await;
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let value = |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                prometheus_parse::Value::Histogram(buckets) => {
                    buckets.iter().map(|b| b.count).fold(0.0, f64::max)
                }
                prometheus_parse::Value::Summary(_) => f64::NAN,
            })
    };
    let ok = [
        ("provider", "openai"),
        ("endpoint", "chat/completions"),
        ("status", "200"),
    ];
    let pass = [ok.as_slice(), &[("action", "pass")]].concat();
    let redact = [ok.as_slice(), &[("action", "redact")]].concat();
    assert_eq!(value("kt_requests_total", &pass), Some(2.0), "{text}");
    assert_eq!(value("kt_requests_total", &redact), Some(1.0), "{text}");
    assert_eq!(
        value("kt_request_duration_seconds", &[]),
        Some(3.0),
        "{text}"
    );
    assert_eq!(value("kt_upstream_duration_seconds", &[]), Some(3.0));
    assert_eq!(value("kt_gateway_overhead_seconds", &[]), Some(3.0));
    assert_eq!(value("kt_time_to_first_byte_seconds", &[]), Some(1.0));
    let tokens_in = [("model", "gpt-4o"), ("direction", "in")];
    assert_eq!(value("kt_tokens_total", &tokens_in), Some(3000.0));
    let cost = value("kt_cost_usd_total", &[("model", "gpt-4o")]).unwrap();
    assert!((cost - 3.0 * 0.0075).abs() < 1e-9, "{cost}");
    let by_policy = [("policy", "secret-redaction"), ("action", "redact")];
    assert_eq!(value("kt_policy_actions_total", &by_policy), Some(1.0));
    assert_eq!(value("kt_cert_cache_hosts", &[]), Some(1.0));
    assert_eq!(value("kt_cert_mint_duration_seconds", &[]), Some(1.0));
    assert_eq!(
        value("kt_cache_requests_total", &[("result", "hit")]),
        Some(0.0)
    );
}

#[tokio::test]
async fn report_costs_sums_what_went_through_the_proxy() {
    let ca = TestCa::new("report CA");
    let origin = Origin::tls(&ca, &[HOST], Alpn::Both).await;
    let config = "policies:\n  chain: [audit-logger]\npolicy:\n  audit-logger: {}\n";
    let config = Arc::new(PolicyConfig::parse(config, Path::new("t.yaml")).unwrap());
    let mut gw = TestGateway::start(&ca, |s| {
        s.connect_to.push(connect_to(HOST, 443, origin.addr));
        s.apply_config(&config);
    })
    .await;
    let (mut http, _) = through_proxy(gw.addr, HOST, &[gw.ca_der()], &[b"http/1.1"]).await;
    for (model, usage) in [
        ("gpt-4o", "1000,500"),
        ("gpt-4o", "1000,500"),
        ("gpt-4o-mini", "2000,100"),
    ] {
        let c = Call {
            path: "/v1/chat/completions",
            model,
            stream: false,
            reply: "r",
            usage: Some(usage),
            prompt: "q",
        };
        send(&mut http, &c).await;
    }
    drop(http);
    gw.close_events().await;
    let kt = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_kt"))
            .args(args)
            .arg("--data-dir")
            .arg(gw.home.path())
            .output()
            .unwrap()
    };
    let out = kt(&["report", "costs", "--by", "model", "--since", "1d"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("MODEL"), "{table}");
    let cols = |l: &str| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(
        cols(lines[1])[..5],
        ["gpt-4o", "2", "2000", "1000", "0.0150"],
        "{table}"
    );
    assert_eq!(
        cols(lines[2])[..5],
        ["gpt-4o-mini", "1", "2000", "100", "0.0004"],
        "{table}"
    );
    assert_eq!(cols(lines[3])[..2], ["TOTAL", "3"], "{table}");

    let out = kt(&["report", "costs", "--by", "user", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["rows"][0]["key"], "(none)", "anonymous traffic");
    assert_eq!(json["total"]["tokens_in"], 4000);
    let total = json["total"]["cost_usd"].as_f64().unwrap();
    assert!((total - 0.01536).abs() < 1e-9, "{total}");

    let out = kt(&["report", "costs", "--since", "yesterday"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--since"));
    let out = kt(&["report", "costs", "--by", "colour"]);
    assert!(!out.status.success());
}

/// A stream the client cuts off before its end (a user pressing Stop)
/// reports no usage, but the provider bills what it began: the exchange is
/// estimated from the prompt and the text that went by, and a
/// `tokens_per_minute` limit counts it.
#[tokio::test]
async fn a_stream_cut_off_by_the_client_is_estimated_and_counted() {
    use crate::common::probe::{wait_until, BOUND};
    use http_body_util::BodyExt;
    let ca = TestCa::new("usage CA");
    let origin = Origin::tls(&ca, &[HOST], Alpn::Both).await;
    let config = "policies:\n  chain: [audit-logger, per-dev]\npolicy:\n  audit-logger: {}\n  per-dev:\n    type: rate-limit\n    requests_per_minute: 100\n    tokens_per_minute: 5\n";
    let config = Arc::new(PolicyConfig::parse(config, Path::new("t.yaml")).unwrap());
    let gw = TestGateway::start(&ca, |s| {
        s.connect_to.push(connect_to(HOST, 443, origin.addr));
        s.apply_config(&config);
    })
    .await;
    let dir = gw.home.path().join("events");
    let ask = || {
        // 40 prompt characters: 10 tokens, over the limit's 5.
        let body = serde_json::json!({"model": "gpt-4o", "stream": true,
            "messages": [{"role": "user", "content": "x".repeat(40)}]});
        Request::builder()
            .method("POST")
            .uri("/v1/chat/completions")
            .header("host", HOST)
            .header("content-type", "application/json")
            .header("x-test-gated", "1")
            .header("x-test-reply", "aaaa bbbb cccc dddd")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    };
    let (mut http, _) = through_proxy(gw.addr, HOST, &[gw.ca_der()], &[b"h2"]).await;
    let resp = http.request(ask()).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    assert!(body.frame().await.unwrap().unwrap().data_ref().is_some());
    drop((body, http));

    let output = || {
        read_last(&dir, 10, &Filters::default())
            .map(|(e, _)| e)
            .unwrap_or_default()
            .into_iter()
            .find(|e| e.phase == Phase::Output)
    };
    assert!(
        wait_until(BOUND, || async { output().is_some() }).await,
        "the cut-off exchange was never closed"
    );
    let out = output().unwrap();
    assert_eq!(out.usage_source.as_deref(), Some("estimated"), "{out:?}");
    assert_eq!(out.tokens_in, Some(10), "{out:?}");
    assert!(out.tokens_out.is_some_and(|n| n >= 1), "{out:?}");

    let (mut http, _) = through_proxy(gw.addr, HOST, &[gw.ca_der()], &[b"h2"]).await;
    let resp = http.request(ask()).await;
    assert_eq!(resp.status(), 429, "the cut-off exchange was not counted");
    origin.sse_gate.add_permits(64);
}

/// An Anthropic stream reports its input count first (`message_start`) and
/// its output count last (`message_delta`): cut off by the client in
/// between, the exchange keeps the provider's input count and estimates the
/// output from the text that went by, rather than recording none.
#[tokio::test]
async fn an_anthropic_stream_cut_before_its_output_count_estimates_the_output() {
    use crate::common::probe::{wait_until, BOUND};
    use http_body_util::BodyExt;
    const ANTHROPIC: &str = "api.anthropic.com";
    let ca = TestCa::new("usage CA");
    let origin = Origin::tls(&ca, &[ANTHROPIC], Alpn::Both).await;
    let config = "policies:\n  chain: [audit-logger]\npolicy:\n  audit-logger: {}\n";
    let config = Arc::new(PolicyConfig::parse(config, Path::new("t.yaml")).unwrap());
    let gw = TestGateway::start(&ca, |s| {
        s.connect_to.push(connect_to(ANTHROPIC, 443, origin.addr));
        s.apply_config(&config);
    })
    .await;
    let body = serde_json::json!({"model": "claude-sonnet-4-5", "stream": true, "max_tokens": 512,
        "messages": [{"role": "user", "content": "hi"}]});
    // Two pieces of 400 characters; the second waits for a permit that
    // never comes, so the output count is never sent.
    let req = Request::builder()
        .method("POST")
        .uri("/v1/messages")
        .header("host", ANTHROPIC)
        .header("content-type", "application/json")
        .header("x-test-gated", "1")
        .header("x-test-usage", "20,200")
        .header("x-test-chunk", "400")
        .header("x-test-reply", "x".repeat(800))
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let (mut http, _) = through_proxy(gw.addr, ANTHROPIC, &[gw.ca_der()], &[b"h2"]).await;
    let resp = http.request(req).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("text_delta") {
        let frame = body.frame().await.unwrap().unwrap();
        seen.extend_from_slice(frame.data_ref().unwrap());
    }
    drop((body, http));

    let dir = gw.home.path().join("events");
    let output = || {
        read_last(&dir, 10, &Filters::default())
            .map(|(e, _)| e)
            .unwrap_or_default()
            .into_iter()
            .find(|e| e.phase == Phase::Output)
    };
    assert!(
        wait_until(BOUND, || async { output().is_some() }).await,
        "the cut-off exchange was never closed"
    );
    let out = output().unwrap();
    assert_eq!(out.usage_source.as_deref(), Some("estimated"), "{out:?}");
    // The provider's 20 in; 400 characters out, about 100 tokens.
    assert_eq!(
        (out.tokens_in, out.tokens_out),
        (Some(20), Some(100)),
        "{out:?}"
    );
    assert!(out.cost_usd.is_some_and(|c| c > 0.0), "{out:?}");
    origin.sse_gate.add_permits(64);
}
