//! The direct API (`http://HOST:PORT/v1`) end to end: requests shaped like
//! the OpenAI and Anthropic SDKs send them, routed by model to local TLS
//! origins standing in for the providers, with the provider key injected,
//! the access key never forwarded, errors in each client's dialect, and the
//! policy chain, cache and audit trail applied as for intercepted traffic.

use crate::common::client::{self, body_string, Http};
use crate::common::origin::{Alpn, Origin};
use crate::common::{connect_to, TestCa, TestGateway};
use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use keeptrusts::config::PolicyConfig;
use keeptrusts::events::{read_last, Event, Filters, Phase};
use keeptrusts::keys::file;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

const OPENAI: &str = "api.openai.com";
const ANTHROPIC: &str = "api.anthropic.com";
const LOCAL: &str = "llm.internal.test";

/// Provider keys, in variables no other test reads, set once before any
/// gateway of this module reads its config.
fn provider_keys() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::env::set_var("KT_DIRECT_TEST_OPENAI", "sk-test-openai");
        std::env::set_var("KT_DIRECT_TEST_ANTHROPIC", "sk-ant-test");
        std::env::set_var("KT_DIRECT_TEST_LOCAL", "local-key");
        std::env::remove_var("KT_DIRECT_TEST_UNSET");
    });
}

const TARGETS: &str = "providers:
  targets:
    - id: openai
      provider:
        api_key_env: KT_DIRECT_TEST_OPENAI
        models: [gpt-4o, gpt-4o-mini]
    - id: anthropic
      provider:
        api_key_env: KT_DIRECT_TEST_ANTHROPIC
        models: ['claude-*']
    - id: local
      provider:
        type: openai
        base_url: https://llm.internal.test/api/v1
        api_key_env: KT_DIRECT_TEST_LOCAL
        models: [qwen2.5-coder]
";

/// Two origins: the public providers on one, the local server on another.
struct Setup {
    _ca: TestCa,
    public: Origin,
    local: Origin,
    gw: TestGateway,
}

async fn setup(yaml: &str, auth_required: Option<bool>) -> Setup {
    setup_on("127.0.0.1:0", yaml, auth_required).await
}

/// [`setup`] with the gateway listening on `bind`.
async fn setup_on(bind: &str, yaml: &str, auth_required: Option<bool>) -> Setup {
    provider_keys();
    let ca = TestCa::new("direct API CA");
    let public = Origin::tls(&ca, &[OPENAI, ANTHROPIC], Alpn::Both).await;
    let local = Origin::tls(&ca, &[LOCAL], Alpn::H1).await;
    let config = Arc::new(PolicyConfig::parse(yaml, Path::new("t.yaml")).unwrap());
    let gw = TestGateway::start_on(bind, &ca, |s| {
        s.connect_to.push(connect_to(OPENAI, 443, public.addr));
        s.connect_to.push(connect_to(ANTHROPIC, 443, public.addr));
        s.connect_to.push(connect_to(LOCAL, 443, local.addr));
        s.auth_required = auth_required;
        s.apply_config(&config);
    })
    .await;
    Setup {
        _ca: ca,
        public,
        local,
        gw,
    }
}

/// A request as the SDKs send it, on a fresh plain-HTTP connection to the
/// gateway.
async fn call(
    gw: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Response<Incoming> {
    let tcp = tokio::net::TcpStream::connect(gw).await.unwrap();
    let mut http = Http::over(tcp, false).await;
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", gw.to_string())
        .header("content-type", "application/json")
        .header("user-agent", "OpenAI/Python 1.99.0")
        .header("x-stainless-lang", "python");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    http.request(req.body(Full::new(Bytes::from(body.to_string()))).unwrap())
        .await
}

async fn json(resp: Response<Incoming>) -> serde_json::Value {
    let text = body_string(resp).await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn chat(model: &str, stream: bool, prompt: &str) -> String {
    serde_json::json!({"model": model, "stream": stream,
        "messages": [{"role": "user", "content": prompt}]})
    .to_string()
}

fn last_request(origin: &Origin) -> (String, HeaderMap) {
    origin
        .last_request
        .lock()
        .unwrap()
        .clone()
        .expect("no request reached the origin")
}

async fn events(gw: &mut TestGateway) -> Vec<Event> {
    let dir = gw.close_events().await;
    read_last(&dir, 1000, &Filters::default()).unwrap().0
}

#[tokio::test]
async fn openai_chat_json_and_stream_with_the_provider_key_injected() {
    let mut s = setup(TARGETS, None).await;
    let sdk_key = [("authorization", "Bearer sk-whatever-the-sdk-was-given")];
    let resp = call(
        s.gw.addr,
        "POST",
        "/v1/chat/completions",
        &[
            sdk_key[0],
            ("x-test-reply", "Hello there"),
            ("x-test-usage", "12,3"),
        ],
        &chat("gpt-4o", false, "say hello"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let body = json(resp).await;
    assert_eq!(body["choices"][0]["message"]["content"], "Hello there");
    let (path, headers) = last_request(&s.public);
    assert_eq!(path, "/v1/chat/completions");
    assert_eq!(headers["authorization"], "Bearer sk-test-openai");
    assert_eq!(headers["host"], OPENAI);
    assert_eq!(headers["x-stainless-lang"], "python");

    // A stream: the first chunk arrives while the origin still holds the
    // rest, so nothing is buffered on the way.
    let resp = call(
        s.gw.addr,
        "POST",
        "/v1/chat/completions",
        &[
            sdk_key[0],
            ("x-test-reply", "abcdefgh"),
            ("x-test-chunk", "2"),
            ("x-test-gated", "1"),
        ],
        &chat("gpt-4o-mini", true, "stream it"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()["x-accel-buffering"], "no");
    let mut body = resp.into_body();
    let first = tokio::time::timeout(std::time::Duration::from_secs(10), body.frame())
        .await
        .expect("first chunk held back")
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&first).contains("\"ab\""),
        "{first:?}"
    );
    s.public.sse_gate.add_permits(10);
    let rest = body.collect().await.unwrap().to_bytes();
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        rest.contains("\"gh\"") && rest.ends_with("data: [DONE]\n\n"),
        "{rest}"
    );

    let evs = events(&mut s.gw).await;
    let outputs: Vec<&Event> = evs.iter().filter(|e| e.phase == Phase::Output).collect();
    assert_eq!(outputs.len(), 2, "{evs:?}");
    for e in &evs {
        assert_eq!(e.mode.map(|m| m.as_str()), Some("direct"));
        assert_eq!(e.provider.as_deref(), Some("openai"));
        assert_eq!(e.host.as_deref(), Some(OPENAI));
        assert_eq!(e.path.as_deref(), Some("/v1/chat/completions"));
        assert_eq!(e.endpoint.as_deref(), Some("chat/completions"));
        assert_eq!(e.api.as_deref(), Some("openai-chat"));
    }
    assert_eq!(outputs[0].model.as_deref(), Some("gpt-4o"));
    assert_eq!(
        (outputs[0].tokens_in, outputs[0].tokens_out),
        (Some(12), Some(3))
    );
    assert_eq!(outputs[1].model.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(outputs[1].status, Some(200));
}

#[tokio::test]
async fn anthropic_messages_get_x_api_key_and_errors_in_anthropic_shape() {
    let mut s = setup(TARGETS, None).await;
    let body = serde_json::json!({"model": "claude-sonnet-4-5", "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}]})
    .to_string();
    let sdk = [
        ("x-api-key", "sk-ant-the-sdk-was-given"),
        ("anthropic-version", "2023-06-01"),
        ("anthropic-beta", "prompt-caching-2024-07-31"),
    ];
    let mut headers = sdk.to_vec();
    headers.push(("x-test-reply", "Bonjour"));
    headers.push(("x-test-usage", "20,4"));
    let resp = call(s.gw.addr, "POST", "/v1/messages", &headers, &body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(json(resp).await["content"][0]["text"], "Bonjour");
    let (path, up) = last_request(&s.public);
    assert_eq!(path, "/v1/messages");
    assert_eq!(up["x-api-key"], "sk-ant-test");
    assert_eq!(up["anthropic-version"], "2023-06-01");
    assert_eq!(up["anthropic-beta"], "prompt-caching-2024-07-31");
    assert!(!up.contains_key("authorization"));

    // Streamed, event names and all.
    let stream = serde_json::json!({"model": "claude-3-5-haiku", "max_tokens": 64, "stream": true,
        "messages": [{"role": "user", "content": "hi"}]})
    .to_string();
    let resp = call(s.gw.addr, "POST", "/v1/messages", &headers, &stream).await;
    assert_eq!(resp.status(), 200);
    let text = body_string(resp).await;
    assert!(text.starts_with("event: message_start\n"), "{text}");
    assert!(
        text.contains("event: content_block_delta") && text.ends_with("\n\n"),
        "{text}"
    );

    // A model served in the other dialect: Anthropic's error envelope.
    let wrong = serde_json::json!({"model": "gpt-4o", "max_tokens": 8, "messages": []}).to_string();
    let resp = call(s.gw.addr, "POST", "/v1/messages", &sdk, &wrong).await;
    assert_eq!(resp.status(), 400);
    let err = json(resp).await;
    assert_eq!(err["type"], "error");
    assert_eq!(err["error"]["type"], "invalid_request_error");
    let message = err["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("`openai`") && message.contains("/v1/chat/completions"),
        "{message}"
    );

    let evs = events(&mut s.gw).await;
    let out: Vec<&Event> = evs.iter().filter(|e| e.phase == Phase::Output).collect();
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].provider.as_deref(), Some("anthropic"));
    assert_eq!(out[0].api.as_deref(), Some("anthropic-messages"));
    assert_eq!((out[0].tokens_in, out[0].tokens_out), (Some(20), Some(4)));
}

/// A target whose config names no model lists what its provider offers,
/// asked once with the target's key and then kept; a provider that cannot
/// answer leaves the rest of the list as it was.
#[tokio::test]
async fn a_target_without_models_lists_what_its_provider_offers() {
    let yaml = "providers:
  targets:
    - id: openai
      provider:
        api_key_env: KT_DIRECT_TEST_OPENAI
    - id: local
      provider:
        type: openai
        base_url: https://llm.internal.test/api/v1
        api_key_env: KT_DIRECT_TEST_LOCAL
        models: [qwen2.5-coder]
    - id: down
      provider:
        type: anthropic
        base_url: https://127.0.0.1:9
        api_key_env: KT_DIRECT_TEST_ANTHROPIC
";
    let s = setup(yaml, None).await;
    let ids = |list: &serde_json::Value| -> Vec<(String, String)> {
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["id"].as_str().unwrap().into(),
                    m["owned_by"].as_str().unwrap().into(),
                )
            })
            .collect()
    };
    // A model the config names is found without asking any provider.
    let named = json(call(s.gw.addr, "GET", "/v1/models/qwen2.5-coder", &[], "").await).await;
    assert_eq!(named["owned_by"], "local");
    assert_eq!(s.public.hits.load(std::sync::atomic::Ordering::SeqCst), 0);

    let resp = call(s.gw.addr, "GET", "/v1/models", &[], "").await;
    assert_eq!(resp.status(), 200);
    let first = ids(&json(resp).await);
    let want: Vec<(String, String)> = [
        ("qwen2.5-coder", "local"),
        ("gpt-4.1", "openai"),
        ("claude-sonnet-4-5", "openai"),
        ("qwen3-coder", "openai"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(first, want);
    let (path, up) = last_request(&s.public);
    assert_eq!(path, "/v1/models");
    assert_eq!(up["authorization"], "Bearer sk-test-openai");

    // Kept: the provider is not asked again, and one model is found too.
    let hits = s.public.hits.load(std::sync::atomic::Ordering::SeqCst);
    let again = ids(&json(call(s.gw.addr, "GET", "/v1/models", &[], "").await).await);
    assert_eq!(again, want);
    let one = json(call(s.gw.addr, "GET", "/v1/models/gpt-4.1", &[], "").await).await;
    assert_eq!(one["owned_by"], "openai");
    assert_eq!(
        s.public.hits.load(std::sync::atomic::Ordering::SeqCst),
        hits
    );
}

#[tokio::test]
async fn models_are_listed_and_requests_routed_by_model_to_each_operation() {
    let s = setup(TARGETS, None).await;
    let resp = call(s.gw.addr, "GET", "/v1/models", &[], "").await;
    assert_eq!(resp.status(), 200);
    let list = json(resp).await;
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    // `claude-*` names no model: the provider's own list, filtered by the
    // pattern, asked for with the target's key.
    assert_eq!(
        ids,
        [
            "gpt-4o",
            "gpt-4o-mini",
            "qwen2.5-coder",
            "claude-sonnet-4-5"
        ]
    );
    let (path, up) = last_request(&s.public);
    assert_eq!(path, "/v1/models");
    assert_eq!(up["x-api-key"], "sk-ant-test");
    assert!(up.get("anthropic-version").is_some(), "{up:?}");
    let one = json(call(s.gw.addr, "GET", "/v1/models/qwen2.5-coder", &[], "").await).await;
    assert_eq!(
        (one["id"].as_str(), one["owned_by"].as_str()),
        (Some("qwen2.5-coder"), Some("local"))
    );
    let resp = call(s.gw.addr, "GET", "/v1/models/nope", &[], "").await;
    assert_eq!(resp.status(), 404);

    // By model: the local server, under its own base path, with its key.
    let resp = call(
        s.gw.addr,
        "POST",
        "/v1/chat/completions",
        &[],
        &chat("qwen2.5-coder", false, "x"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let (path, up) = last_request(&s.local);
    assert_eq!(path, "/api/v1/chat/completions");
    assert_eq!(up["authorization"], "Bearer local-key");
    // An unlisted model goes to the first OpenAI-shaped target.
    let before = s.local.hits.load(std::sync::atomic::Ordering::SeqCst);
    let resp = call(
        s.gw.addr,
        "POST",
        "/v1/chat/completions",
        &[],
        &chat("o3-mini", false, "x"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(last_request(&s.public).0, "/v1/chat/completions");
    assert_eq!(
        s.local.hits.load(std::sync::atomic::Ordering::SeqCst),
        before
    );

    // Every OpenAI operation reaches its own upstream path.
    let ops: [(&str, serde_json::Value); 4] = [
        (
            "/v1/completions",
            serde_json::json!({"model": "gpt-4o", "prompt": "def f("}),
        ),
        (
            "/v1/fim/completions",
            serde_json::json!({"model": "qwen2.5-coder", "prompt": "def f(", "suffix": ")"}),
        ),
        (
            "/v1/embeddings",
            serde_json::json!({"model": "gpt-4o", "input": "text"}),
        ),
        (
            "/v1/responses",
            serde_json::json!({"model": "gpt-4o", "input": "hi"}),
        ),
    ];
    for (op, body) in ops {
        let resp = call(s.gw.addr, "POST", op, &[], &body.to_string()).await;
        assert_eq!(resp.status(), 200, "{op}");
        let answer = json(resp).await;
        let origin = if op == "/v1/fim/completions" {
            &s.local
        } else {
            &s.public
        };
        let expected = if op == "/v1/fim/completions" {
            "/api/v1/fim/completions".to_string()
        } else {
            op.to_string()
        };
        assert_eq!(answer["path"], expected.as_str(), "{op}");
        assert_eq!(last_request(origin).0, expected, "{op}");
    }

    // Bad input: clear errors in the OpenAI shape, nothing forwarded.
    let hits = s.public.hits.load(std::sync::atomic::Ordering::SeqCst);
    let resp = call(s.gw.addr, "POST", "/v1/chat/completions", &[], "{not json").await;
    assert_eq!(resp.status(), 400);
    let err = json(resp).await;
    assert!(
        err["error"]["message"].as_str().unwrap().contains("JSON"),
        "{err}"
    );
    let resp = call(s.gw.addr, "POST", "/v1/nowhere", &[], "{}").await;
    assert_eq!(resp.status(), 404);
    let resp = call(s.gw.addr, "GET", "/v1/chat/completions", &[], "").await;
    assert_eq!(resp.status(), 405);
    assert_eq!(
        s.public.hits.load(std::sync::atomic::Ordering::SeqCst),
        hits
    );
}

#[tokio::test]
async fn access_keys_are_checked_and_never_forwarded() {
    let mut s = setup(TARGETS, Some(true)).await;
    let keys = s.gw.home.path().join("keys.json");
    let dev = file::create(&keys, "dev1", Some("platform"), false)
        .unwrap()
        .key;
    assert!(s.gw.gateway.auth().store().unwrap().refresh());
    let hits = s.public.hits.load(std::sync::atomic::Ordering::SeqCst);

    for auth in [
        None,
        Some("Bearer kt_notakey"),
        Some("Bearer sk-openai-key"),
    ] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        let resp = call(
            s.gw.addr,
            "POST",
            "/v1/chat/completions",
            &headers,
            &chat("gpt-4o", false, "x"),
        )
        .await;
        assert_eq!(resp.status(), 401, "{auth:?}");
        assert_eq!(resp.headers()["www-authenticate"], "Bearer realm=\"kt\"");
        let err = json(resp).await;
        assert_eq!(err["error"]["code"], "invalid_api_key");
    }
    let resp = call(s.gw.addr, "GET", "/v1/models", &[], "").await;
    assert_eq!(resp.status(), 401, "the model list needs a key too");
    let resp = call(s.gw.addr, "POST", "/v1/messages", &[], "{}").await;
    assert_eq!(resp.status(), 401);
    let err = json(resp).await;
    assert_eq!(
        (err["type"].as_str(), err["error"]["type"].as_str()),
        (Some("error"), Some("authentication_error"))
    );
    assert_eq!(
        s.public.hits.load(std::sync::atomic::Ordering::SeqCst),
        hits,
        "refused requests go nowhere"
    );

    // Bearer (OpenAI SDKs) and x-api-key (Anthropic SDKs) both work.
    let bearer = format!("Bearer {dev}");
    let resp = call(
        s.gw.addr,
        "POST",
        "/v1/chat/completions",
        &[("authorization", &bearer)],
        &chat("gpt-4o", false, "x"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let (_, up) = last_request(&s.public);
    assert_eq!(up["authorization"], "Bearer sk-test-openai");
    assert!(
        up.values()
            .all(|v| !String::from_utf8_lossy(v.as_bytes()).contains(&dev)),
        "{up:?}"
    );
    let msg = serde_json::json!({"model": "claude-3-5-haiku", "max_tokens": 8,
        "messages": [{"role": "user", "content": "hi"}]})
    .to_string();
    let resp = call(
        s.gw.addr,
        "POST",
        "/v1/messages",
        &[("x-api-key", &dev), ("authorization", &bearer)],
        &msg,
    )
    .await;
    assert_eq!(resp.status(), 200);
    let (_, up) = last_request(&s.public);
    assert_eq!(up["x-api-key"], "sk-ant-test");
    assert!(
        up.values()
            .all(|v| !String::from_utf8_lossy(v.as_bytes()).contains(&dev)),
        "{up:?}"
    );

    let evs = events(&mut s.gw).await;
    assert_eq!(evs.len(), 4, "{evs:?}");
    for e in &evs {
        assert_eq!(
            (e.user.as_deref(), e.team.as_deref()),
            (Some("dev1"), Some("platform"))
        );
        let line = serde_json::to_string(e).unwrap();
        assert!(!line.contains(&dev), "the key is in an event: {line}");
    }
}

#[tokio::test]
async fn policies_and_the_cache_apply_to_direct_traffic() {
    let yaml = format!(
        "{TARGETS}policies:\n  chain: [audit-logger, secret-redaction, content-filter, ide-cache]\npolicy:\n  audit-logger: {{}}\n  secret-redaction:\n    type: redact\n  content-filter:\n    patterns: ['(?i)project-zeus']\n  ide-cache:\n    type: cache\n    scope: global\n"
    );
    let mut s = setup(&yaml, None).await;
    let token: String = (0..36).map(|i| char::from(b"aZ3kQ9mX"[i % 8])).collect();
    let token = format!("ghp_{token}");

    let resp = call(
        s.gw.addr,
        "POST",
        "/v1/chat/completions",
        &[],
        &chat("gpt-4o", false, &format!("my token is {token}")),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let sent = s.public.last_body.lock().unwrap().clone().unwrap();
    let sent = String::from_utf8_lossy(&sent);
    assert!(
        !sent.contains(&token) && sent.contains("[REDACTED:"),
        "{sent}"
    );

    let hits = s.public.hits.load(std::sync::atomic::Ordering::SeqCst);
    let resp = call(
        s.gw.addr,
        "POST",
        "/v1/chat/completions",
        &[],
        &chat("gpt-4o", false, "about Project-Zeus"),
    )
    .await;
    assert_eq!(resp.status(), 409);
    let err = json(resp).await;
    assert_eq!(err["error"]["type"], "policy_violation");
    assert_eq!(
        s.public.hits.load(std::sync::atomic::Ordering::SeqCst),
        hits,
        "a block never reaches the upstream"
    );

    // The same request twice: the second is a cache hit, upstream untouched.
    let ask = chat("gpt-4o", false, "what is a monad?");
    let first = call(
        s.gw.addr,
        "POST",
        "/v1/chat/completions",
        &[("x-test-reply", "a burrito")],
        &ask,
    )
    .await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-kt-cache"], "miss");
    let first = body_string(first).await;
    let hits = s.public.hits.load(std::sync::atomic::Ordering::SeqCst);
    let second = call(
        s.gw.addr,
        "POST",
        "/v1/chat/completions",
        &[("x-test-reply", "a burrito")],
        &ask,
    )
    .await;
    assert_eq!(second.headers()["x-kt-cache"], "hit");
    assert_eq!(body_string(second).await, first);
    assert_eq!(
        s.public.hits.load(std::sync::atomic::Ordering::SeqCst),
        hits
    );

    let evs = events(&mut s.gw).await;
    let actions: Vec<&str> = evs
        .iter()
        .filter(|e| e.phase == Phase::Output || e.action.as_str() == "block")
        .map(|e| e.action.as_str())
        .collect();
    assert_eq!(actions, ["pass", "block", "pass", "cache_hit"], "{evs:?}");
    assert!(evs.iter().all(|e| e.provider.as_deref() == Some("openai")));
}

#[tokio::test]
async fn without_a_provider_key_the_callers_own_key_passes_on_loopback() {
    let yaml = "providers:\n  targets:\n    - id: openai\n      provider:\n        api_key_env: KT_DIRECT_TEST_UNSET\n";
    let s = setup(yaml, None).await;
    let resp = call(
        s.gw.addr,
        "POST",
        "/v1/chat/completions",
        &[("authorization", "Bearer sk-mine")],
        &chat("gpt-4o", false, "x"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(last_request(&s.public).1["authorization"], "Bearer sk-mine");
    // No Anthropic target configured: a clear 404 in Anthropic's shape.
    let resp = call(
        s.gw.addr,
        "POST",
        "/v1/messages",
        &[],
        "{\"model\":\"claude-x\",\"max_tokens\":1,\"messages\":[]}",
    )
    .await;
    assert_eq!(resp.status(), 404);
    let err = json(resp).await;
    assert_eq!(err["error"]["type"], "not_found_error");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("providers.targets"),
        "{err}"
    );
}

#[tokio::test]
async fn x_forwarded_for_names_the_client_only_through_trusted_proxies() {
    let mut events_of = Vec::new();
    for trusted in ["", "auth:\n  trusted_proxies: [127.0.0.0/8]\n"] {
        let mut s = setup(&format!("{TARGETS}{trusted}"), None).await;
        let resp = call(
            s.gw.addr,
            "POST",
            "/v1/chat/completions",
            &[("x-forwarded-for", "198.51.100.7, 127.0.0.9")],
            &chat("gpt-4o", false, "x"),
        )
        .await;
        assert_eq!(resp.status(), 200);
        let ips: Vec<Option<String>> = events(&mut s.gw)
            .await
            .into_iter()
            .map(|e| e.client_ip.as_deref().map(str::to_owned))
            .collect();
        events_of.push(ips);
    }
    let peer = Some("127.0.0.1".to_string());
    let client = Some("198.51.100.7".to_string());
    assert_eq!(
        events_of[0],
        [peer.clone(), peer],
        "an untrusted peer's header is ignored"
    );
    assert_eq!(events_of[1], [client.clone(), client]);
}

/// What a web page in the user's browser can make it send: a cross-site
/// "simple" POST (no CORS preflight), and requests from a page whose own
/// DNS name was pointed at this machine (DNS rebinding).
#[tokio::test]
async fn web_pages_cannot_drive_a_gateway_that_asks_for_no_key() {
    let s = setup(TARGETS, None).await;
    let body = chat("gpt-4o", false, "hello");
    let simple = [("content-type", "text/plain")];
    let from = |origin: &'static str| [simple[0], ("origin", origin)];

    // Another site's page: refused before anything goes upstream.
    for origin in ["https://evil.example", "http://evil.example:41002", "null"] {
        let resp = call(
            s.gw.addr,
            "POST",
            "/v1/chat/completions",
            &from(origin),
            &body,
        )
        .await;
        assert_eq!(resp.status(), 403, "{origin}");
        assert_eq!(resp.headers()["x-kt-error"], "web_page_refused");
        let err = json(resp).await;
        assert_eq!(err["error"]["type"], "permission_error");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(origin) && message.contains("auth: {required: true}"),
            "{message}"
        );
    }
    assert_eq!(s.public.hits.load(std::sync::atomic::Ordering::SeqCst), 0);

    // A page served from this machine, an installed app's page, and a
    // client that is no browser are answered, with the provider key.
    for headers in [
        &from("http://localhost:3000")[..],
        &from("vscode-webview://4f2a")[..],
        &simple[..],
    ] {
        let resp = call(s.gw.addr, "POST", "/v1/chat/completions", headers, &body).await;
        assert_eq!(resp.status(), 200, "{headers:?}");
        let (_, sent) = last_request(&s.public);
        assert_eq!(sent["authorization"], "Bearer sk-test-openai");
    }

    // A rebound name reaches neither the direct API nor the audit feed;
    // the probes, the CA and the metrics stay open to any name.
    let port = s.gw.addr.port();
    let get = |path: &str, host: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
    };
    for (path, host, want) in [
        ("/v1/models", "rebind.example", "403"),
        ("/_kt/events?n=1&follow=0", "rebind.example", "403"),
        ("/_kt/events?n=1&follow=0", "localhost", "200"),
        ("/v1/models", "127.0.0.1", "200"),
        ("/v1/models", "host.docker.internal", "200"),
        ("/healthz", "rebind.example", "200"),
        ("/_kt/ca.pem", "rebind.example", "200"),
        ("/metrics", "rebind.example", "200"),
    ] {
        let host = format!("{host}:{port}");
        let answer = client::raw_exchange(s.gw.addr, get(path, &host).as_bytes()).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {want}")),
            "{path} as {host}: {answer}"
        );
        if want == "403" {
            assert!(
                answer.contains(&format!("the host name {host}")),
                "{answer}"
            );
        }
    }
    // A page kt serves itself under an accepted name is its own origin.
    for (host, origin, want) in [
        ("mylaptop", "http://mylaptop", "200"),
        ("mylaptop", "http://other-box", "403"),
    ] {
        let request = format!(
            "GET /v1/models HTTP/1.1\r\nHost: {host}:{port}\r\nOrigin: {origin}:{port}\r\nConnection: close\r\n\r\n"
        );
        let answer = client::raw_exchange(s.gw.addr, request.as_bytes()).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {want}")),
            "{origin}: {answer}"
        );
    }
}

/// A gateway listening on every address (a container's, published on the
/// host's loopback) with keys optional: a rebound page's name is refused
/// there too, though the listener is not loopback, and its matching
/// `Origin` does not make it the gateway's own page.
#[tokio::test]
async fn web_pages_cannot_drive_a_keyless_gateway_listening_on_every_address() {
    let s = setup_on("0.0.0.0:0", TARGETS, Some(false)).await;
    let port = s.gw.addr.port();
    let body = chat("gpt-4o", false, "hello");
    let post = |host: &str, origin: Option<&str>| {
        let origin = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\n{origin}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let rebound = format!("evil.example:{port}");
    let answer = client::raw_exchange(
        s.gw.addr,
        post(&rebound, Some(&format!("http://{rebound}"))).as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("x-kt-error: web_page_refused"), "{answer}");
    assert!(
        answer.contains(&format!("the host name {rebound}")),
        "{answer}"
    );
    let events = format!(
        "GET /_kt/events?n=1&follow=0 HTTP/1.1\r\nHost: {rebound}\r\nConnection: close\r\n\r\n"
    );
    let answer = client::raw_exchange(s.gw.addr, events.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert_eq!(s.public.hits.load(std::sync::atomic::Ordering::SeqCst), 0);

    // Its address, a LAN address (and a page served under one), or a
    // private name are answered.
    for (host, origin) in [
        (format!("127.0.0.1:{port}"), None),
        (format!("192.168.1.5:{port}"), None),
        (
            format!("192.168.1.5:{port}"),
            Some(format!("http://192.168.1.5:{port}")),
        ),
        (format!("gateway.internal:{port}"), None),
    ] {
        let answer =
            client::raw_exchange(s.gw.addr, post(&host, origin.as_deref()).as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{host}: {answer}");
    }
    let (_, sent) = last_request(&s.public);
    assert_eq!(sent["authorization"], "Bearer sk-test-openai");
}

/// With keys required a request needs a key no page has: a browser
/// client holding one (a web UI of the team's) is served.
#[tokio::test]
async fn with_keys_required_a_page_with_a_key_is_served() {
    let s = setup(TARGETS, Some(true)).await;
    let keys = s.gw.home.path().join("keys.json");
    let key = file::create(&keys, "dev1", None, false).unwrap().key;
    assert!(s.gw.gateway.auth().store().unwrap().refresh());
    let bearer = format!("Bearer {key}");
    let headers = [
        ("origin", "https://chat.example"),
        ("authorization", bearer.as_str()),
    ];
    let body = chat("gpt-4o", false, "hello");
    let resp = call(s.gw.addr, "POST", "/v1/chat/completions", &headers, &body).await;
    assert_eq!(resp.status(), 200);
    let resp = call(
        s.gw.addr,
        "POST",
        "/v1/chat/completions",
        &headers[..1],
        &body,
    )
    .await;
    assert_eq!(resp.status(), 401, "no key, no answer");
}

/// A direct-API call whose provider thinks longer than the idle limit is
/// answered by the response timeout (504), not cut with its connection:
/// no byte moves while it waits.
#[tokio::test]
async fn a_call_waiting_longer_than_the_idle_limit_gets_its_answer() {
    provider_keys();
    let ca = TestCa::new("direct API CA");
    let public = Origin::tls(&ca, &[OPENAI, ANTHROPIC], Alpn::Both).await;
    let config = Arc::new(PolicyConfig::parse(TARGETS, Path::new("t.yaml")).unwrap());
    let idle = std::time::Duration::from_millis(300);
    let gw = TestGateway::start(&ca, |s| {
        s.connect_to.push(connect_to(OPENAI, 443, public.addr));
        s.apply_config(&config);
        s.limits.idle = idle;
        s.upstream_timeouts.response_head = idle * 5;
    })
    .await;
    let asked = std::time::Instant::now();
    let resp = call(
        gw.addr,
        "POST",
        "/v1/chat/completions",
        &[("x-test-hang", "1")],
        &chat("gpt-4o", false, "think hard"),
    )
    .await;
    assert_eq!(resp.status(), 504);
    assert!(asked.elapsed() >= idle * 4, "{:?}", asked.elapsed());
    assert_eq!(resp.headers()["x-kt-error"], "upstream_timeout");
}
