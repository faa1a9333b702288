//! `rate-limit` and `budget` through the real gateway: `429` with
//! `retry-after` in the client's dialect before the upstream is contacted,
//! per-user and per-team keys from access keys, tokens and dollars charged
//! after a response so the next request is refused, `action: log` budgets,
//! and the audit events of each.

use crate::common::client::{body_string, through_proxy, Http};
use crate::common::origin::{Alpn, Origin};
use crate::common::probe::wait_until;
use crate::common::{connect_to, TestCa, TestGateway};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use keeptrusts::config::PolicyConfig;
use keeptrusts::events::{read_last, Event, Filters, Phase};
use keeptrusts::keys::file;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

const OPENAI: &str = "api.openai.com";
const ANTHROPIC: &str = "api.anthropic.com";

/// Provider keys in variables only this module reads, set once.
fn provider_keys() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::env::set_var("KT_LIMITS_TEST_OPENAI", "sk-test-openai");
        std::env::set_var("KT_LIMITS_TEST_ANTHROPIC", "sk-ant-test");
    });
}

const TARGETS: &str = "providers:
  targets:
    - id: openai
      provider:
        api_key_env: KT_LIMITS_TEST_OPENAI
        models: [gpt-4o]
    - id: anthropic
      provider:
        api_key_env: KT_LIMITS_TEST_ANTHROPIC
        models: ['claude-*']
";

struct Setup {
    _ca: TestCa,
    origin: Origin,
    gw: TestGateway,
}

/// A gateway with `policies` (YAML after the provider targets), access
/// keys required, and one origin for both providers.
async fn setup(policies: &str) -> Setup {
    provider_keys();
    let ca = TestCa::new("limits CA");
    let origin = Origin::tls(&ca, &[OPENAI, ANTHROPIC], Alpn::Both).await;
    let gw = gateway(&ca, origin.addr, policies).await;
    Setup {
        _ca: ca,
        origin,
        gw,
    }
}

/// A gateway with `policies` and access keys required, both providers
/// reached at `origin`.
async fn gateway(ca: &TestCa, origin: SocketAddr, policies: &str) -> TestGateway {
    let yaml = format!("{TARGETS}{policies}");
    let config = Arc::new(PolicyConfig::parse(&yaml, Path::new("t.yaml")).unwrap());
    TestGateway::start(ca, |s| {
        s.connect_to.push(connect_to(OPENAI, 443, origin));
        s.connect_to.push(connect_to(ANTHROPIC, 443, origin));
        s.auth_required = Some(true);
        s.apply_config(&config);
    })
    .await
}

/// An access key for `user` in `team`, known to the running gateway.
fn key(s: &Setup, user: &str, team: Option<&str>) -> String {
    key_on(&s.gw, user, team)
}

fn key_on(gw: &TestGateway, user: &str, team: Option<&str>) -> String {
    let keys = gw.home.path().join("keys.json");
    let k = file::create(&keys, user, team, false).unwrap().key;
    assert!(gw.gateway.auth().store().unwrap().refresh());
    k
}

/// A direct-API call with `key`; `usage` makes the origin report usage.
async fn call(
    gw: SocketAddr,
    path: &str,
    key: &str,
    usage: Option<&str>,
    body: &str,
) -> Response<Incoming> {
    let tcp = tokio::net::TcpStream::connect(gw).await.unwrap();
    let mut http = Http::over(tcp, false).await;
    let mut req = Request::builder()
        .method("POST")
        .uri(path)
        .header("host", gw.to_string())
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {key}"));
    if let Some(u) = usage {
        req = req.header("x-test-usage", u);
    }
    http.request(req.body(Full::new(Bytes::from(body.to_string()))).unwrap())
        .await
}

fn chat() -> String {
    serde_json::json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
        .to_string()
}

fn message() -> String {
    serde_json::json!({"model": "claude-3-5-haiku", "max_tokens": 8,
        "messages": [{"role": "user", "content": "hi"}]})
    .to_string()
}

/// A chat completion by `key`, its body read whole; returns the status
/// and the response.
async fn chat_as(s: &Setup, key: &str, usage: Option<&str>) -> (u16, Option<u64>, String) {
    chat_at(s.gw.addr, key, usage).await
}

async fn chat_at(gw: SocketAddr, key: &str, usage: Option<&str>) -> (u16, Option<u64>, String) {
    let resp = call(gw, "/v1/chat/completions", key, usage, &chat()).await;
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
    (status, retry, body_string(resp).await)
}

/// Waits until `n` exchanges have closed (and so been charged): the client
/// can have the last byte a moment before the gateway closes the record.
async fn settled(s: &Setup, n: u64) {
    let metrics = s.gw.gateway.engine().metrics().clone();
    let done = wait_until(Duration::from_secs(5), || {
        let m = metrics.clone();
        async move { m.by_action().iter().map(|(_, c)| c).sum::<u64>() >= n }
    })
    .await;
    assert!(done, "{n} exchanges did not complete");
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

async fn events(gw: &mut TestGateway) -> Vec<Event> {
    let dir = gw.close_events().await;
    read_last(&dir, 1000, &Filters::default()).unwrap().0
}

const AUDIT: &str = "  audit-logger: {}\n";

/// A gateway with `policies` in front of an OpenAI-like origin, reached
/// through its forward proxy (as an IDE reaches it).
async fn through_the_proxy(policies: &str) -> (Origin, TestGateway) {
    let ca = TestCa::new("limits proxy CA");
    let origin = Origin::tls(&ca, &[OPENAI], Alpn::Both).await;
    let config = Arc::new(PolicyConfig::parse(policies, Path::new("t.yaml")).unwrap());
    let gw = TestGateway::start(&ca, |s| {
        s.connect_to.push(connect_to(OPENAI, 443, origin.addr));
        s.apply_config(&config);
    })
    .await;
    (origin, gw)
}

#[tokio::test]
async fn requests_per_minute_with_burst_refuses_the_third_before_the_upstream() {
    let policies = format!(
        "policies:\n  chain: [audit-logger, rl]\npolicy:\n{AUDIT}  rl:\n    type: rate-limit\n    requests_per_minute: 2\n    burst: 2\n"
    );
    let (origin, mut gw) = through_the_proxy(&policies).await;
    // Through the forward proxy, as an IDE sends it (anonymous).
    let (mut http, _) = through_proxy(gw.addr, OPENAI, &[gw.ca_der()], &[b"http/1.1"]).await;
    let hits = origin.hits.load(Ordering::SeqCst);
    let mut answers = Vec::new();
    for _ in 0..3 {
        let resp = http
            .send("POST", OPENAI, "/v1/chat/completions", Bytes::from(chat()))
            .await;
        let status = resp.status().as_u16();
        let retry = resp.headers().get("retry-after").cloned();
        let ctype = resp.headers().get("content-type").cloned();
        answers.push((status, retry, ctype, body_string(resp).await));
    }
    assert_eq!(answers[0].0, 200);
    assert_eq!(answers[1].0, 200);
    let (status, retry, ctype, body) = &answers[2];
    assert_eq!(*status, 429, "{body}");
    let retry: u64 = retry.as_ref().unwrap().to_str().unwrap().parse().unwrap();
    assert!(
        (29..=30).contains(&retry),
        "one request every 30 s: {retry}"
    );
    assert_eq!(ctype.as_ref().unwrap(), "application/json");
    let err = json(body);
    assert_eq!(err["error"]["type"], "rate_limit_exceeded");
    assert_eq!(err["error"]["code"], "rate_limited");
    assert_eq!(err["error"]["policy"], "rl");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("requests_per_minute"),
        "{err}"
    );
    assert_eq!(
        origin.hits.load(Ordering::SeqCst) - hits,
        2,
        "the refused request never reached the upstream"
    );
    drop(http);
    let evs = events(&mut gw).await;
    // Two exchanges with input and output, then the refused one: input only.
    assert_eq!(evs.len(), 5, "{evs:#?}");
    let refused = &evs[4];
    assert_eq!(refused.phase, Phase::Input);
    assert_eq!(refused.action.as_str(), "block");
    assert_eq!(refused.policy.as_deref(), Some("rl"));
    assert_eq!(refused.status, Some(429));
    let reason = refused.reason.as_deref().unwrap();
    assert!(
        reason.contains("requests_per_minute") && reason.contains("anonymous"),
        "{reason}"
    );
    assert!(reason.contains("allowed in"), "says when: {reason}");
}

#[tokio::test]
async fn per_user_keys_apart_and_per_team_keys_shared() {
    for (per, dev2_allowed) in [("user", true), ("team", false)] {
        let s = setup(&format!(
            "policies:\n  chain: [rl]\npolicy:\n  rl:\n    type: rate-limit\n    requests_per_minute: 1\n    per: {per}\n"
        ))
        .await;
        let dev1 = key(&s, "dev1", Some("platform"));
        let dev2 = key(&s, "dev2", Some("platform"));
        let ops = key(&s, "ops", Some("infra"));
        assert_eq!(chat_as(&s, &dev1, None).await.0, 200, "{per}");
        let (status, retry, body) = chat_as(&s, &dev1, None).await;
        assert_eq!(status, 429, "{per}: {body}");
        assert!((59..=60).contains(&retry.unwrap()), "{per}: {retry:?}");
        let expected = if dev2_allowed { 200 } else { 429 };
        assert_eq!(chat_as(&s, &dev2, None).await.0, expected, "{per}");
        assert_eq!(chat_as(&s, &ops, None).await.0, 200, "{per}");
        let hits = s.origin.hits.load(Ordering::SeqCst);
        assert_eq!(hits, if dev2_allowed { 3 } else { 2 }, "{per}");
    }
}

#[tokio::test]
async fn tokens_per_minute_charged_after_a_response_refuse_the_next_request() {
    let s = setup(
        "policies:\n  chain: [tpm]\npolicy:\n  tpm:\n    type: rate-limit\n    tokens_per_minute: 1000\n",
    )
    .await;
    let dev = key(&s, "dev1", None);
    // 1,500 tokens: the response finishes, over the limit.
    let (status, _, body) = chat_as(&s, &dev, Some("1000,500")).await;
    assert_eq!(status, 200, "{body}");
    settled(&s, 1).await;
    let (status, retry, body) = chat_as(&s, &dev, Some("1,1")).await;
    assert_eq!(status, 429, "{body}");
    // 500 tokens of debt at 1,000 a minute.
    assert!((29..=30).contains(&retry.unwrap()), "{retry:?}");
    let err = json(&body);
    assert_eq!(err["error"]["code"], "rate_limited");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tokens_per_minute limit of 1000"),
        "{err}"
    );
    assert_eq!(s.origin.hits.load(Ordering::SeqCst), 1);
    // Another user has tokens left.
    let other = key(&s, "dev2", None);
    assert_eq!(chat_as(&s, &other, None).await.0, 200);
}

const BUDGET: &str = "policies:\n  chain: [audit-logger, spend]\npolicy:\n  audit-logger: {}\n  spend:\n    type: budget\n    usd_per_day: 0.001\n";

#[tokio::test]
async fn a_spent_day_budget_refuses_the_next_request_until_utc_midnight() {
    let mut s = setup(BUDGET).await;
    let dev = key(&s, "dev1", Some("platform"));
    let teammate = key(&s, "dev2", Some("platform"));
    // gpt-4o: 1,000 in + 500 out = $0.0075, over the $0.001 a day.
    assert_eq!(chat_as(&s, &dev, Some("1000,500")).await.0, 200);
    settled(&s, 1).await;
    // The team shares the budget (per: team is the default).
    let (status, retry, body) = chat_as(&s, &teammate, Some("1,1")).await;
    assert_eq!(status, 429, "{body}");
    let retry = retry.unwrap();
    assert!((1..=86_400).contains(&retry), "{retry}");
    let err = json(&body);
    assert_eq!(err["error"]["type"], "budget_exceeded");
    assert_eq!(err["error"]["code"], "budget_exceeded");
    assert_eq!(err["error"]["policy"], "spend");
    assert_eq!(s.origin.hits.load(Ordering::SeqCst), 1);
    // A user of another team is not affected.
    let other = key(&s, "ops", Some("infra"));
    assert_eq!(chat_as(&s, &other, None).await.0, 200);

    let evs = events(&mut s.gw).await;
    let costed = evs
        .iter()
        .find(|e| e.phase == Phase::Output && e.user.as_deref() == Some("dev1"))
        .unwrap();
    assert!(costed.cost_usd.unwrap() > 0.001, "{costed:?}");
    let refused = evs
        .iter()
        .find(|e| e.user.as_deref() == Some("dev2"))
        .unwrap();
    assert_eq!(
        (refused.phase, refused.action.as_str(), refused.status),
        (Phase::Input, "block", Some(429))
    );
    assert_eq!(refused.policy.as_deref(), Some("spend"));
    let reason = refused.reason.as_deref().unwrap();
    assert!(
        reason.contains("usd_per_day") && reason.contains("team:platform"),
        "{reason}"
    );
    assert!(reason.contains("T00:00:00Z"), "says when: {reason}");
    assert_eq!(
        evs.iter()
            .filter(|e| e.user.as_deref() == Some("dev2"))
            .count(),
        1,
        "a refused request has no output event"
    );
}

#[tokio::test]
async fn a_budget_with_action_log_lets_requests_through_and_says_so() {
    let mut s = setup(&format!("{BUDGET}    action: log\n")).await;
    let dev = key(&s, "dev1", None);
    assert_eq!(chat_as(&s, &dev, Some("1000,500")).await.0, 200);
    settled(&s, 1).await;
    assert_eq!(chat_as(&s, &dev, Some("1,1")).await.0, 200);
    assert_eq!(s.origin.hits.load(Ordering::SeqCst), 2);
    let evs = events(&mut s.gw).await;
    let inputs: Vec<&Event> = evs.iter().filter(|e| e.phase == Phase::Input).collect();
    assert_eq!(inputs.len(), 2);
    assert_eq!(inputs[0].policy, None, "{:?}", inputs[0]);
    let over = inputs[1];
    assert_eq!(over.action.as_str(), "pass");
    assert_eq!(over.policy.as_deref(), Some("spend"));
    let reason = over.reason.as_deref().unwrap();
    assert!(
        reason.contains("over budget") && reason.contains("usd_per_day"),
        "{reason}"
    );
}

#[tokio::test]
async fn anthropic_clients_get_the_anthropic_shaped_429() {
    let s = setup(
        "policies:\n  chain: [rl]\npolicy:\n  rl:\n    type: rate-limit\n    requests_per_minute: 1\n",
    )
    .await;
    let dev = key(&s, "dev1", None);
    let resp = call(s.gw.addr, "/v1/messages", &dev, None, &message()).await;
    assert_eq!(resp.status(), 200);
    body_string(resp).await;
    let resp = call(s.gw.addr, "/v1/messages", &dev, None, &message()).await;
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    let err = json(&body_string(resp).await);
    assert_eq!(err["type"], "error");
    assert_eq!(err["error"]["type"], "rate_limit_error");
    assert_eq!(err["error"]["code"], "rate_limited");
    assert_eq!(err["error"]["policy"], "rl");
    // The OpenAI dialect on the same key: the OpenAI envelope.
    let (status, _, body) = chat_as(&s, &dev, None).await;
    assert_eq!(status, 429);
    assert_eq!(json(&body)["error"]["type"], "rate_limit_exceeded");
    assert_eq!(s.origin.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_reload_with_the_policy_unchanged_keeps_its_counters() {
    let yaml = "policies:\n  chain: [rl]\npolicy:\n  rl:\n    type: rate-limit\n    requests_per_minute: 1\n";
    let s = setup(yaml).await;
    let dev = key(&s, "dev1", None);
    assert_eq!(chat_as(&s, &dev, None).await.0, 200);
    let reload = |y: &str| {
        let c = keeptrusts::config::Config::parse(&format!("{TARGETS}{y}"), Path::new("t.yaml"))
            .unwrap();
        s.gw.gateway.engine().reload(&c).unwrap();
    };
    reload(yaml);
    assert_eq!(chat_as(&s, &dev, None).await.0, 429, "counters kept");
    // Changed options start afresh.
    reload(&yaml.replace(": 1\n", ": 5\n"));
    assert_eq!(chat_as(&s, &dev, None).await.0, 200, "counters reset");
}

/// Two gateways (replicas) with the same `policies` and one origin: the
/// first as a [`Setup`], the second beside it.
async fn replicas(policies: &str) -> (Setup, TestGateway) {
    let a = setup(policies).await;
    let b = gateway(&a._ca, a.origin.addr, policies).await;
    (a, b)
}

#[tokio::test]
async fn replicas_with_a_redis_backend_share_one_request_limit_token_limit_and_budget() {
    let Some(url) = crate::suite::cache::redis_url("limits_shared_by_replicas") else {
        return;
    };
    let prefix = crate::suite::cache::unique_prefix("limits");
    let policies = format!(
        "policies:\n  chain: [audit-logger, rl, tpm, spend]\npolicy:\n{AUDIT}  rl:\n    type: rate-limit\n    requests_per_minute: 3\n    backend: {url}\n    key_prefix: '{prefix}'\n  tpm:\n    type: rate-limit\n    tokens_per_minute: 1000\n    per: team\n    backend: {url}\n    key_prefix: '{prefix}'\n  spend:\n    type: budget\n    usd_per_day: 0.001\n    per: global\n    backend: {url}\n    key_prefix: '{prefix}'\n"
    );
    let (a, mut b) = replicas(&policies).await;
    // The same users on both replicas (each has its own key file).
    let (dev1_a, dev1_b) = (
        key(&a, "dev1", Some("core")),
        key_on(&b, "dev1", Some("core")),
    );
    let (dev2_a, dev2_b) = (
        key(&a, "dev2", Some("web")),
        key_on(&b, "dev2", Some("web")),
    );

    // Requests per minute: 3 for dev1 across both replicas, not 3 each.
    assert_eq!(chat_as(&a, &dev1_a, None).await.0, 200);
    assert_eq!(chat_at(b.addr, &dev1_b, None).await.0, 200);
    assert_eq!(chat_as(&a, &dev1_a, None).await.0, 200);
    let (status, retry, body) = chat_at(b.addr, &dev1_b, None).await;
    assert_eq!(status, 429, "replica B saw A's requests: {body}");
    assert_eq!(json(&body)["error"]["policy"], "rl", "{body}");
    assert!((1..=20).contains(&retry.unwrap()), "{retry:?}");
    assert_eq!(chat_as(&a, &dev1_a, None).await.0, 429);

    // Tokens charged on A after its answer refuse the team's next request
    // on B. 1,500 tokens of gpt-4o also spend $0.0075 of the global $0.001.
    assert_eq!(chat_as(&a, &dev2_a, Some("1000,500")).await.0, 200);
    settled(&a, 4).await;
    // The charges are written beside the request, just after it closes.
    let redis = redis::Client::open(url.as_str()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let day = time::OffsetDateTime::now_utc().date();
    let spend_key = format!("{prefix}spend:day:{day}:global");
    let charged = wait_until(Duration::from_secs(5), || {
        let mut conn = conn.clone();
        let (tokens, spend) = (format!("{prefix}tpm:rate:team:web"), spend_key.clone());
        async move {
            let level: Option<f64> = redis::cmd("HGET")
                .arg(tokens)
                .arg("tl")
                .query_async(&mut conn)
                .await
                .unwrap();
            let spent: Option<f64> = redis::cmd("GET")
                .arg(spend)
                .query_async(&mut conn)
                .await
                .unwrap();
            level.is_some_and(|l| l < 0.0) && spent.is_some_and(|s| s > 0.001)
        }
    })
    .await;
    assert!(charged, "A's token and dollar charges reached Redis");
    let ttl: i64 = redis::cmd("TTL")
        .arg(&spend_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        (86_400..=2 * 86_400).contains(&ttl),
        "a day's spend expires a day after the day ends: {ttl}"
    );
    let (status, _, body) = chat_at(b.addr, &dev2_b, None).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(json(&body)["error"]["policy"], "tpm", "{body}");
    // The budget is global: a third user, on B, is refused by it.
    let ops_b = key_on(&b, "ops", Some("infra"));
    let (status, _, body) = chat_at(b.addr, &ops_b, None).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(json(&body)["error"]["type"], "budget_exceeded", "{body}");

    // Only the admitted requests reached the (one) upstream.
    assert_eq!(a.origin.hits.load(Ordering::SeqCst), 4);
    let evs = events(&mut b).await;
    let refused: Vec<_> = evs
        .iter()
        .filter(|e| e.action.as_str() == "block")
        .map(|e| e.policy.as_deref().unwrap_or(""))
        .collect();
    assert!(
        refused.contains(&"rl") && refused.contains(&"spend"),
        "{refused:?}"
    );
    assert!(
        evs.iter()
            .filter(|e| e.policy.as_deref() == Some("rl"))
            .all(|e| e.model.as_deref() == Some("gpt-4o")),
        "a refused request's event still names its model"
    );
}

#[tokio::test]
async fn a_shared_limit_counts_in_process_while_its_redis_is_unreachable() {
    // Nothing listens on port 1: every Redis call fails at once.
    let s = setup(
        "policies:\n  chain: [rl]\npolicy:\n  rl:\n    type: rate-limit\n    requests_per_minute: 1\n    backend: redis://127.0.0.1:1/0\n",
    )
    .await;
    let dev = key(&s, "dev1", None);
    let (status, _, body) = chat_as(&s, &dev, None).await;
    assert_eq!(
        status, 200,
        "an unreachable Redis does not break traffic: {body}"
    );
    let (status, retry, body) = chat_as(&s, &dev, None).await;
    assert_eq!(status, 429, "the limit still holds, per replica: {body}");
    assert!((59..=60).contains(&retry.unwrap()), "{retry:?}");
    assert_eq!(s.origin.hits.load(Ordering::SeqCst), 1);
    assert!(
        keeptrusts::policy::limits::redis_errors() >= 1,
        "the failure is counted"
    );
}

#[tokio::test]
async fn a_request_one_limit_refuses_counts_against_none_of_the_others() {
    // `chat` applies to chat completions only, `all` to every call.
    let s = setup(
        "policies:\n  chain: [chat, all]\npolicy:\n  chat:\n    type: rate-limit\n    requests_per_minute: 1\n    when: {endpoints: [chat/completions]}\n  all:\n    type: rate-limit\n    requests_per_minute: 2\n",
    )
    .await;
    let dev = key(&s, "dev1", None);
    assert_eq!(chat_as(&s, &dev, None).await.0, 200, "chat 1/1, all 1/2");
    // Refused by `chat`: `all`, checked beside it, gives its request back.
    for _ in 0..3 {
        let (status, _, body) = chat_as(&s, &dev, None).await;
        assert_eq!(status, 429, "{body}");
        assert_eq!(json(&body)["error"]["policy"], "chat", "{body}");
    }
    // So `all` has one request left, for a call `chat` does not apply to.
    let completion =
        serde_json::json!({"model": "gpt-4o", "prompt": "fn main", "max_tokens": 4}).to_string();
    let resp = call(s.gw.addr, "/v1/completions", &dev, None, &completion).await;
    assert_eq!(resp.status(), 200, "{}", body_string(resp).await);
    let resp = call(s.gw.addr, "/v1/completions", &dev, None, &completion).await;
    let status = resp.status();
    let body = body_string(resp).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(json(&body)["error"]["policy"], "all", "{body}");
}

#[tokio::test]
async fn a_request_a_body_policy_refuses_counts_against_no_rate_limit() {
    let s = setup(
        "policies:\n  chain: [rl, secret-redaction, content-filter]\npolicy:\n  rl:\n    type: rate-limit\n    requests_per_minute: 2\n    burst: 2\n  secret-redaction:\n    type: redact\n  content-filter:\n    patterns: ['internal-project-\\w+']\n",
    )
    .await;
    let dev = key(&s, "dev1", None);
    let filtered = serde_json::json!({"model": "gpt-4o",
        "messages": [{"role": "user", "content": "about internal-project-zeus"}]})
    .to_string();
    // Refused after the limit admitted them: by the content filter (409),
    // and by redaction failing closed on a body it cannot read (400).
    for (body, want) in [
        (filtered.as_str(), 409),
        ("{not json", 400),
        (&filtered, 409),
    ] {
        let resp = call(s.gw.addr, "/v1/chat/completions", &dev, None, body).await;
        let status = resp.status();
        assert_eq!(status, want, "{}", body_string(resp).await);
    }
    // None of them took from the bucket: its burst of two is still whole.
    assert_eq!(chat_as(&s, &dev, None).await.0, 200);
    assert_eq!(chat_as(&s, &dev, None).await.0, 200);
    let (status, _, body) = chat_as(&s, &dev, None).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(json(&body)["error"]["policy"], "rl", "{body}");
    assert_eq!(
        s.origin.hits.load(Ordering::SeqCst),
        2,
        "only the two passed"
    );
}

/// A WebSocket session to an LLM endpoint is one request to the limits:
/// over the limit, the upgrade is refused with the `429` before the
/// upstream, and recorded as any refusal is.
#[tokio::test]
async fn a_websocket_over_the_request_limit_is_refused_before_the_upgrade() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let policies = format!(
        "policies:\n  chain: [audit-logger, rl]\npolicy:\n{AUDIT}  rl:\n    type: rate-limit\n    requests_per_minute: 1\n    burst: 1\n"
    );
    let (origin, mut gw) = through_the_proxy(&policies).await;
    let roots = [gw.ca_der()];
    let websocket = || crate::common::client::websocket(gw.addr, OPENAI, "/responses", &roots);

    let (head, mut tls) = websocket().await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tls.write_all(b"frame").await.unwrap();
    let mut echo = [0u8; 5];
    tls.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"frame");
    drop(tls);
    let hits = origin.hits.load(Ordering::SeqCst);

    let (head, mut tls) = websocket().await;
    assert!(head.starts_with("HTTP/1.1 429"), "{head}");
    let retry: u64 = head
        .lines()
        .find_map(|l| l.strip_prefix("retry-after: "))
        .unwrap_or_else(|| panic!("no retry-after: {head}"))
        .parse()
        .unwrap();
    assert!((59..=60).contains(&retry), "one request a minute: {retry}");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .unwrap_or_else(|| panic!("no content-length: {head}"))
        .parse()
        .unwrap();
    let mut body = vec![0; length];
    tls.read_exact(&mut body).await.unwrap();
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("\"rate_limit_exceeded\""), "{body}");
    assert_eq!(
        origin.hits.load(Ordering::SeqCst),
        hits,
        "the refused upgrade never reached the upstream"
    );
    drop(tls);

    let evs = events(&mut gw).await;
    let refused = evs
        .iter()
        .find(|e| e.action.as_str() == "block")
        .unwrap_or_else(|| panic!("no block event: {evs:#?}"));
    assert_eq!(refused.phase, Phase::Input);
    assert_eq!(refused.policy.as_deref(), Some("rl"));
    assert_eq!(refused.status, Some(429));
    assert_eq!(refused.path.as_deref(), Some("/responses"));
    // The session that went through is charged no tokens or dollars.
    let session = evs
        .iter()
        .find(|e| e.phase == Phase::Output)
        .unwrap_or_else(|| panic!("no output event: {evs:#?}"));
    assert_eq!(session.status, Some(101));
    assert_eq!((session.tokens_in, session.cost_usd), (None, None));
}
