//! The engineering cache through the real proxy: hits that never reach the
//! upstream, streams replayed byte for byte, what is never stored, single
//! flight, the audit record of a hit, the Redis tier (shared by two gateway
//! processes, and absent without harm), and `kt cache`.

use crate::common::client::{through_proxy, Http};
use crate::common::origin::{Alpn, Origin};
use crate::common::probe::wait_until;
use crate::common::{connect_to, TestCa, TestGateway};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use keeptrusts::config::PolicyConfig;
use std::path::Path;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::Arc;
use std::time::Duration;

const HOST: &str = "api.openai.com";
const ANTHROPIC: &str = "api.anthropic.com";
pub(crate) const CACHE: &str = "policies:\n  chain: [audit-logger, ide-cache]\npolicy:\n  audit-logger: {}\n  ide-cache:\n    type: cache\n    ttl_seconds: 600\n";

async fn setup(yaml: &str) -> (TestCa, Origin, TestGateway) {
    let ca = TestCa::new("cache upstream CA");
    let origin = Origin::tls(&ca, &[HOST, ANTHROPIC], Alpn::Both).await;
    let gw = gateway(&ca, &origin, yaml).await;
    (ca, origin, gw)
}

async fn gateway(ca: &TestCa, origin: &Origin, yaml: &str) -> TestGateway {
    let config = Arc::new(PolicyConfig::parse(yaml, Path::new("test.yaml")).unwrap());
    let addr = origin.addr;
    TestGateway::start(ca, |s| {
        s.connect_to.push(connect_to(HOST, 443, addr));
        s.connect_to.push(connect_to(ANTHROPIC, 443, addr));
        s.apply_config(&config);
    })
    .await
}

async fn client(gw: &TestGateway, host: &str) -> Http {
    through_proxy(gw.addr, host, &[gw.ca_der()], &[b"h2", b"http/1.1"])
        .await
        .0
}

pub(crate) fn chat(content: &str, stream: bool) -> Bytes {
    Bytes::from(
        serde_json::json!({
            "model": "gpt-4o",
            "stream": stream,
            "temperature": 0,
            "messages": [{"role": "user", "content": content}],
        })
        .to_string(),
    )
}

/// What a response was: status, `x-kt-cache`, and the body bytes.
pub(crate) struct Got {
    pub(crate) status: u16,
    pub(crate) cache: String,
    pub(crate) body: Bytes,
}

pub(crate) async fn post(
    http: &mut Http,
    host: &str,
    path: &str,
    body: Bytes,
    headers: &[(&str, &str)],
) -> Got {
    let abs = http.is_h2();
    let uri = if abs {
        format!("https://{host}{path}")
    } else {
        path.to_string()
    };
    let mut b = http::Request::builder().method("POST").uri(uri);
    if !abs {
        b = b.header("host", host);
    }
    b = b.header("content-type", "application/json");
    // Real clients always send their provider credential; an empty value
    // in `headers` stands for a client that sends none.
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
    {
        b = b.header("authorization", "Bearer sk-test");
    }
    for (k, v) in headers.iter().filter(|(_, v)| !v.is_empty()) {
        b = b.header(*k, *v);
    }
    let resp = http.request(b.body(Full::new(body)).unwrap()).await;
    let status = resp.status().as_u16();
    let cache = resp
        .headers()
        .get("x-kt-cache")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Got {
        status,
        cache,
        body,
    }
}

#[tokio::test]
async fn a_repeated_request_is_answered_without_the_upstream() {
    let (_ca, origin, gw) = setup(CACHE).await;
    let mut http = client(&gw, HOST).await;
    let path = "/v1/chat/completions";
    let first = post(
        &mut http,
        HOST,
        path,
        chat("2+2?", false),
        &[("x-test-reply", "4")],
    )
    .await;
    assert_eq!((first.status, first.cache.as_str()), (200, "miss"));
    // Same request, keys in another order and a different `user` tag.
    let reordered = Bytes::from(
        r#"{"messages":[{"content":"2+2?","role":"user"}],"user":"someone","temperature":0,"stream":false,"model":"gpt-4o"}"#,
    );
    let second = post(&mut http, HOST, path, reordered, &[("x-test-reply", "5")]).await;
    assert_eq!((second.status, second.cache.as_str()), (200, "hit"));
    assert_eq!(second.body, first.body, "the stored answer, not a new one");
    assert_eq!(origin.hits.load(SeqCst), 1);
    // A different question is a miss.
    let other = post(&mut http, HOST, path, chat("3+3?", false), &[]).await;
    assert_eq!(other.cache, "miss");
    assert_eq!(origin.hits.load(SeqCst), 2);
    let stats = gw.gateway.engine().caches().stats();
    assert_eq!(
        (stats.hits.load(Relaxed), stats.misses.load(Relaxed)),
        (1, 2)
    );
}

/// A cached answer is not a way round the provider's credential check: a
/// request that carries none goes upstream (which refuses it) and is not
/// stored, whatever the cache holds.
#[tokio::test]
async fn a_request_without_a_provider_credential_is_not_answered_from_the_cache() {
    let (_ca, origin, gw) = setup(CACHE).await;
    let mut http = client(&gw, HOST).await;
    let path = "/v1/chat/completions";
    let first = post(&mut http, HOST, path, chat("2+2?", false), &[]).await;
    assert_eq!((first.status, first.cache.as_str()), (200, "miss"));
    let again = post(&mut http, HOST, path, chat("2+2?", false), &[]).await;
    assert_eq!(again.cache, "hit");
    assert_eq!(origin.hits.load(SeqCst), 1);
    // None at all, twice; then only a credential OpenAI does not read.
    for headers in [
        &[("authorization", "")][..],
        &[("authorization", "")],
        &[("authorization", ""), ("x-goog-api-key", "AIza-test")],
    ] {
        let anonymous = post(&mut http, HOST, path, chat("2+2?", false), headers).await;
        assert_eq!(anonymous.cache, "bypass", "{headers:?}");
    }
    assert_eq!(origin.hits.load(SeqCst), 4, "all three went upstream");
}

#[tokio::test]
async fn streams_are_replayed_byte_for_byte() {
    let (_ca, origin, gw) = setup(CACHE).await;
    for (host, path) in [(HOST, "/v1/chat/completions"), (ANTHROPIC, "/v1/messages")] {
        let mut http = client(&gw, host).await;
        let before = origin.hits.load(SeqCst);
        let h = [
            ("x-test-reply", "streamed answer, in pieces"),
            ("x-test-chunk", "3"),
        ];
        let first = post(&mut http, host, path, chat("stream it", true), &h).await;
        assert_eq!(first.cache, "miss");
        assert!(first.body.len() > 100, "{:?}", first.body);
        let second = post(&mut http, host, path, chat("stream it", true), &h).await;
        assert_eq!(second.cache, "hit", "{host}");
        assert_eq!(second.body, first.body, "{host}");
        assert_eq!(origin.hits.load(SeqCst), before + 1, "{host}");
        // The non-streamed form of the same question is another entry.
        let whole = post(&mut http, host, path, chat("stream it", false), &h).await;
        assert_eq!(whole.cache, "miss", "{host}");
    }
}

#[tokio::test]
async fn truncated_streams_and_errors_are_never_stored() {
    let (_ca, origin, gw) = setup(CACHE).await;
    let mut http = client(&gw, HOST).await;
    let path = "/v1/chat/completions";
    for (i, headers) in [
        vec![("x-test-no-end", "1")],
        vec![("x-test-status", "500")],
        vec![("x-test-status", "429")],
    ]
    .into_iter()
    .enumerate()
    {
        let body = chat(&format!("case {i}"), i == 0);
        let before = origin.hits.load(SeqCst);
        for _ in 0..2 {
            let got = post(&mut http, HOST, path, body.clone(), &headers).await;
            assert_eq!(got.cache, "miss", "{headers:?}");
        }
        assert_eq!(origin.hits.load(SeqCst), before + 2, "{headers:?}");
    }
}

#[tokio::test]
async fn clients_can_skip_the_cache_and_sampling_is_not_cached() {
    let (_ca, origin, gw) = setup(CACHE).await;
    let mut http = client(&gw, HOST).await;
    let path = "/v1/chat/completions";
    post(&mut http, HOST, path, chat("q", false), &[]).await;
    for h in [("cache-control", "no-cache"), ("x-kt-cache", "bypass")] {
        let got = post(&mut http, HOST, path, chat("q", false), &[h]).await;
        assert_eq!(got.cache, "bypass", "{h:?}");
    }
    let warm = Bytes::from(r#"{"model":"gpt-4o","temperature":0.9,"messages":[]}"#);
    for _ in 0..2 {
        let got = post(&mut http, HOST, path, warm.clone(), &[]).await;
        assert_eq!(got.cache, "bypass");
    }
    assert_eq!(origin.hits.load(SeqCst), 5);
    assert_eq!(
        post(&mut http, HOST, path, chat("q", false), &[])
            .await
            .cache,
        "hit"
    );
}

#[tokio::test]
async fn concurrent_identical_requests_make_one_upstream_call() {
    const N: usize = 8;
    let (_ca, origin, gw) = setup(CACHE).await;
    let path = "/v1/chat/completions";
    let headers = [
        ("x-test-reply", "one answer for everyone"),
        ("x-test-chunk", "5"),
        ("x-test-gated", "1"),
    ];
    let mut clients = Vec::new();
    for _ in 0..N {
        clients.push(client(&gw, HOST).await);
    }
    let mut tasks = Vec::new();
    let mut first = true;
    for mut http in clients {
        tasks.push(tokio::spawn(async move {
            post(&mut http, HOST, path, chat("together", true), &headers).await
        }));
        if first {
            // The leader reaches the upstream before the others start.
            first = false;
            wait_for(|| origin.hits.load(SeqCst) == 1).await;
        }
    }
    let stats = gw.gateway.engine().caches().stats();
    wait_for(|| stats.followed.load(Relaxed) == (N - 1) as u64).await;
    // Release the rest of the leader's stream.
    origin.sse_gate.add_permits(64);
    let mut bodies = Vec::new();
    for t in tasks {
        let got = t.await.unwrap();
        assert_eq!(got.status, 200);
        bodies.push((got.cache, got.body));
    }
    assert_eq!(origin.hits.load(SeqCst), 1, "one upstream call");
    assert_eq!(bodies.iter().filter(|(c, _)| c == "miss").count(), 1);
    assert!(bodies.iter().all(|(_, b)| *b == bodies[0].1));
    assert!(bodies[0].1.ends_with(b"data: [DONE]\n\n"));
}

/// Polls `cond` until it holds (bounded: a failure, not a hang).
async fn wait_for(cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn a_hit_is_recorded_as_cache_hit() {
    let (_ca, _origin, mut gw) = setup(CACHE).await;
    let mut http = client(&gw, HOST).await;
    for _ in 0..2 {
        post(
            &mut http,
            HOST,
            "/v1/chat/completions",
            chat("audit me", false),
            &[("x-test-usage", "1000,500")],
        )
        .await;
    }
    drop(http);
    let dir = gw.close_events().await;
    let (events, _) =
        keeptrusts::events::read_last(&dir, 10, &keeptrusts::events::Filters::default()).unwrap();
    let outputs: Vec<(&str, Option<bool>, Option<u16>)> = events
        .iter()
        .filter(|e| e.phase.as_str() == "output")
        .map(|e| (e.action.as_str(), e.cache_hit, e.status))
        .collect();
    assert_eq!(
        outputs,
        [
            ("pass", Some(false), Some(200)),
            ("cache_hit", Some(true), Some(200))
        ]
    );
    let hit = events
        .iter()
        .rev()
        .find(|e| e.phase.as_str() == "output")
        .unwrap();
    assert_eq!(hit.upstream_ms, None, "the upstream was not contacted");
    assert_eq!(hit.policy.as_deref(), Some("ide-cache"));
    // The replayed answer's usage, billed to nobody: its first cost is saved.
    assert_eq!((hit.tokens_in, hit.tokens_out), (Some(1000), Some(500)));
    assert_eq!(hit.usage_source.as_deref(), Some("cached"));
    assert_eq!(hit.cost_usd, Some(0.0));
    assert!(
        hit.cost_saved_usd
            .is_some_and(|c| (c - 0.0075).abs() < 1e-9),
        "{hit:?}"
    );
    let first = events
        .iter()
        .find(|e| e.phase.as_str() == "output")
        .unwrap();
    assert_eq!(first.usage_source.as_deref(), Some("provider"));
    assert_eq!(first.cost_saved_usd, None);
}

#[tokio::test]
async fn a_hit_without_reported_usage_costs_nothing_and_saves_the_estimate() {
    // Copilot ghost text and streams without `include_usage` report no
    // usage: the first fetch is estimated, and the hit must still be free.
    // gpt-4o, "audit me" in and "hello" out: about 2 + 2 tokens, $0.000025,
    // so a second charge would spend this budget and refuse the third ask.
    let yaml = "policies:\n  chain: [audit-logger, spend, ide-cache]\npolicy:\n  audit-logger: {}\n  spend:\n    type: budget\n    usd_per_day: 0.00004\n  ide-cache:\n    type: cache\n    ttl_seconds: 600\n";
    let (_ca, origin, mut gw) = setup(yaml).await;
    let mut http = client(&gw, HOST).await;
    let mut got = Vec::new();
    for n in 1..=3u64 {
        let r = post(
            &mut http,
            HOST,
            "/v1/chat/completions",
            chat("audit me", false),
            &[],
        )
        .await;
        got.push((r.status, r.cache));
        // Charged when the exchange closes, which may be after the client
        // has the answer.
        let metrics = gw.gateway.engine().metrics().clone();
        let closed = wait_until(Duration::from_secs(5), || {
            let m = metrics.clone();
            async move { m.by_action().iter().map(|(_, c)| c).sum::<u64>() >= n }
        })
        .await;
        assert!(closed, "exchange {n} did not close");
    }
    assert_eq!(
        got,
        [
            (200, "miss".to_string()),
            (200, "hit".to_string()),
            (200, "hit".to_string())
        ],
        "a hit spends no budget"
    );
    assert_eq!(origin.hits.load(SeqCst), 1);
    drop(http);
    let dir = gw.close_events().await;
    let (events, _) =
        keeptrusts::events::read_last(&dir, 10, &keeptrusts::events::Filters::default()).unwrap();
    let outputs: Vec<_> = events
        .iter()
        .filter(|e| e.phase.as_str() == "output")
        .collect();
    assert_eq!(outputs.len(), 3);
    let first = outputs[0];
    assert_eq!(first.usage_source.as_deref(), Some("estimated"));
    assert!(first.cost_usd.is_some_and(|c| c > 0.0), "{first:?}");
    for hit in &outputs[1..] {
        assert_eq!(hit.action.as_str(), "cache_hit");
        assert_eq!(hit.usage_source.as_deref(), Some("cached"), "{hit:?}");
        assert_eq!(
            (hit.tokens_in, hit.tokens_out),
            (first.tokens_in, first.tokens_out),
            "the estimate the first fetch was recorded with"
        );
        assert_eq!(hit.cost_usd, Some(0.0), "{hit:?}");
        assert_eq!(hit.cost_saved_usd, first.cost_usd, "{hit:?}");
    }
}

#[tokio::test]
async fn an_unreachable_redis_costs_a_miss_never_a_request() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let yaml = format!("{CACHE}    backend: redis://127.0.0.1:{port}/0\n");
    let (_ca, origin, gw) = setup(&yaml).await;
    let mut http = client(&gw, HOST).await;
    let path = "/v1/chat/completions";
    let first = post(&mut http, HOST, path, chat("q", false), &[]).await;
    assert_eq!((first.status, first.cache.as_str()), (200, "miss"));
    // The in-process tier still answers.
    let second = post(&mut http, HOST, path, chat("q", false), &[]).await;
    assert_eq!((second.status, second.cache.as_str()), (200, "hit"));
    assert_eq!(origin.hits.load(SeqCst), 1);
    let stats = gw.gateway.engine().caches().stats();
    assert!(stats.redis_errors.load(Relaxed) >= 1);
}

/// The Redis URL tests use, or `None` (with the skip notice) without one.
pub(crate) fn redis_url(test: &str) -> Option<String> {
    match std::env::var("KT_TEST_REDIS_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            println!("KT-TEST-SKIPPED {test}: KT_TEST_REDIS_URL is not set");
            None
        }
    }
}

/// A key prefix no other test (or run) uses.
pub(crate) fn unique_prefix(test: &str) -> String {
    format!("kt-test:{test}:{:016x}:", rand_u64())
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish()
}

pub(crate) fn redis_config(url: &str, prefix: &str) -> String {
    format!("{CACHE}    backend: {url}\n    key_prefix: '{prefix}'\n")
}

pub(crate) async fn redis_entries(url: &str, prefix: &str) -> u64 {
    let tier = keeptrusts::cache::redis::RedisTier::new(url, prefix, Arc::default()).unwrap();
    tier.usage().await.unwrap().0
}

#[tokio::test]
async fn gateways_share_entries_through_redis() {
    let Some(url) = redis_url("gateways_share_entries_through_redis") else {
        return;
    };
    let prefix = unique_prefix("share");
    let yaml = redis_config(&url, &prefix);
    let (ca, origin, a) = setup(&yaml).await;
    let b = gateway(&ca, &origin, &yaml).await;
    let path = "/v1/chat/completions";
    let h = [("x-test-reply", "shared"), ("x-test-chunk", "2")];
    let mut ha = client(&a, HOST).await;
    let first = post(&mut ha, HOST, path, chat("share me", true), &h).await;
    assert_eq!(first.cache, "miss");
    // The Redis write happens after the response; wait for it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while redis_entries(&url, &prefix).await < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never written to Redis"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut hb = client(&b, HOST).await;
    let second = post(&mut hb, HOST, path, chat("share me", true), &h).await;
    assert_eq!(second.cache, "hit");
    assert_eq!(second.body, first.body, "the stream, byte for byte");
    assert_eq!(origin.hits.load(SeqCst), 1);
    let stats = b.gateway.engine().caches().stats();
    assert_eq!(stats.redis_hits.load(Relaxed), 1);
    // Purging a scope that is not ours leaves the entry; ours removes it.
    let tier = keeptrusts::cache::redis::RedisTier::new(&url, &prefix, Arc::default()).unwrap();
    assert_eq!(tier.purge(Some("team:other")).await.unwrap(), 0);
    assert_eq!(tier.purge(Some("team:default")).await.unwrap(), 1);
}

#[tokio::test]
async fn two_gateway_processes_serve_each_others_entries_and_kt_cache_manages_them() {
    let Some(url) = redis_url("two_gateway_processes_serve_each_others_entries") else {
        return;
    };
    let prefix = unique_prefix("procs");
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, redis_config(&url, &prefix)).unwrap();
    let ca = TestCa::new("ca");
    let origin = Origin::tls(&ca, &[HOST], Alpn::Both).await;
    let args = ["--policy-config".as_ref(), policy.as_os_str()];
    let a = Killed(crate::suite::cli::spawn_gateway(&ca, &origin, &args));
    let b = Killed(crate::suite::cli::spawn_gateway(&ca, &origin, &args));
    let path = "/v1/chat/completions";
    let mut ha = through_proxy(a.0.addr, HOST, &[a.0.ca_der()], &[b"h2"])
        .await
        .0;
    let first = post(&mut ha, HOST, path, chat("across processes", false), &[]).await;
    assert_eq!(first.cache, "miss");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while redis_entries(&url, &prefix).await < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never written to Redis"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut hb = through_proxy(b.0.addr, HOST, &[b.0.ca_der()], &[b"h2"])
        .await
        .0;
    let second = post(&mut hb, HOST, path, chat("across processes", false), &[]).await;
    assert_eq!((second.cache.as_str(), &second.body), ("hit", &first.body));
    assert_eq!(origin.hits.load(SeqCst), 1);

    let kt = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kt"))
            .args(args)
            .env_remove("KEEPTRUSTS_ACCESS_KEY")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let gw_b = format!("http://{}", b.0.addr);
    let p = policy.to_str().unwrap();
    let stats = kt(&[
        "cache",
        "stats",
        "--policy-config",
        p,
        "--gateway",
        &gw_b,
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(v["gateway"]["hits"], 1, "{v}");
    assert_eq!(v["gateway"]["redis_hits"], 1, "{v}");
    assert_eq!(v["redis"][0]["entries"], 1, "{v}");
    let text = kt(&["cache", "stats", "--policy-config", p, "--gateway", &gw_b]);
    assert!(text.contains("hits 1"), "{text}");
    let purged = kt(&[
        "cache",
        "purge",
        "--policy-config",
        p,
        "--gateway",
        &gw_b,
        "--scope",
        "team:default",
    ]);
    assert!(purged.contains("purged 1 entries"), "{purged}");
    assert!(purged.contains("purged 1 in-process entries"), "{purged}");
    assert_eq!(redis_entries(&url, &prefix).await, 0);
    // Gone from Redis and from b's memory: b asks the upstream again.
    let third = post(&mut hb, HOST, path, chat("across processes", false), &[]).await;
    assert_eq!(third.cache, "miss");
    assert_eq!(origin.hits.load(SeqCst), 2);
}

/// Kills the gateway process when the test ends, passed or not.
pub(crate) struct Killed(pub(crate) crate::suite::cli::Running);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &self.0.pid().to_string()])
            .status();
    }
}

#[tokio::test]
async fn kt_cache_reports_and_purges_a_running_gateway() {
    let (_ca, origin, gw) = setup(CACHE).await;
    let mut http = client(&gw, HOST).await;
    let path = "/v1/chat/completions";
    for _ in 0..2 {
        post(&mut http, HOST, path, chat("cli", false), &[]).await;
    }
    let url = format!("http://{}", gw.addr);
    let run = |args: Vec<&str>| {
        let url = url.clone();
        let args: Vec<String> = args.into_iter().map(String::from).collect();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_kt"))
                .args(&args)
                .args(["--gateway", &url])
                .env_remove("KEEPTRUSTS_ACCESS_KEY")
                .output()
                .unwrap()
        })
    };
    let out = run(vec!["cache", "stats"]).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("hits 1 (50.0% of lookups)"), "{text}");
    assert!(text.contains("in-process tier: 1 entries"), "{text}");
    let out = run(vec!["cache", "purge"]).await.unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("purged 1 in-process entries"));
    assert_eq!(
        post(&mut http, HOST, path, chat("cli", false), &[])
            .await
            .cache,
        "miss"
    );
    assert_eq!(origin.hits.load(SeqCst), 2);
    let bad = run(vec!["cache", "purge", "--scope", "everyone"])
        .await
        .unwrap();
    assert!(!bad.status.success());
}

/// A client whose CONNECT carries `user`'s access key.
async fn keyed_client(gw: &TestGateway, user: &str, key: &str) -> Http {
    use base64::Engine as _;
    use tokio::io::AsyncWriteExt;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{key}"));
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let req = format!(
        "CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\nProxy-Authorization: Basic {basic}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let reply = crate::common::client::read_head(&mut s).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let tls = crate::common::client::tls(s, HOST, &[gw.ca_der()], &[b"http/1.1"])
        .await
        .unwrap();
    Http::over(tls, false).await
}

#[tokio::test]
async fn scopes_keep_teams_and_users_apart() {
    for (scope, expected) in [
        // dev1 stores; then dev2 (same team), dev3 (other team), an
        // anonymous client (team `default`), dev1 again.
        ("team", ["miss", "hit", "miss", "miss", "hit"]),
        ("user", ["miss", "miss", "miss", "miss", "hit"]),
        ("global", ["miss", "hit", "hit", "hit", "hit"]),
    ] {
        let yaml = format!("{CACHE}    scope: {scope}\n");
        let (_ca, origin, gw) = setup(&yaml).await;
        let keys = gw.home.path().join("keys.json");
        let key = |user: &str, team: &str| {
            keeptrusts::keys::file::create(&keys, user, Some(team), false)
                .unwrap()
                .key
        };
        let (k1, k2, k3) = (
            key("dev1", "platform"),
            key("dev2", "platform"),
            key("dev3", "web"),
        );
        assert!(gw.gateway.auth().store().unwrap().refresh());
        let mut clients = [
            keyed_client(&gw, "dev1", &k1).await,
            keyed_client(&gw, "dev2", &k2).await,
            keyed_client(&gw, "dev3", &k3).await,
            client(&gw, HOST).await,
        ];
        let mut got = Vec::new();
        for i in [0, 1, 2, 3, 0] {
            let body = chat("shared?", false);
            let r = post(&mut clients[i], HOST, "/v1/chat/completions", body, &[]).await;
            got.push(r.cache);
        }
        assert_eq!(got, expected, "scope {scope}");
        let misses = expected.iter().filter(|v| **v == "miss").count();
        assert_eq!(origin.hits.load(SeqCst), misses, "scope {scope}");
    }
}

/// Only answers the output policies can read (JSON, SSE) are stored: a
/// `text/plain` one went by unread, and sharing it could share what a
/// redaction would have caught.
#[tokio::test]
async fn answers_nobody_could_read_are_not_stored() {
    let (_ca, origin, gw) = setup(CACHE).await;
    let mut http = client(&gw, HOST).await;
    let path = "/v1/chat/completions";
    let plain = [("x-test-content-type", "text/plain")];
    for round in 0..2 {
        let got = post(&mut http, HOST, path, chat("plain?", false), &plain).await;
        assert_eq!(got.status, 200, "round {round}");
        assert_eq!(got.cache, "miss", "round {round}");
    }
    assert_eq!(origin.hits.load(SeqCst), 2);
    // The same exchange labelled JSON is stored.
    for want in ["miss", "hit"] {
        let got = post(&mut http, HOST, path, chat("json?", false), &[]).await;
        assert_eq!(got.cache, want);
    }
}

/// The same request to another port of the same host is another server's
/// answer: the key carries the scheme and the port.
#[tokio::test]
async fn another_port_of_the_same_host_has_its_own_entries() {
    let ca = TestCa::new("cache upstream CA");
    let origin = Origin::tls(&ca, &[HOST], Alpn::Both).await;
    let config = Arc::new(PolicyConfig::parse(CACHE, Path::new("test.yaml")).unwrap());
    let addr = origin.addr;
    let gw = TestGateway::start(&ca, |s| {
        s.connect_to.push(connect_to(HOST, 443, addr));
        s.connect_to.push(connect_to(HOST, 8443, addr));
        s.apply_config(&config);
    })
    .await;
    let path = "/v1/chat/completions";
    for (port, want) in [(443, "miss"), (8443, "miss"), (8443, "hit"), (443, "hit")] {
        let (s, reply) = crate::common::client::connect(gw.addr, &format!("{HOST}:{port}")).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        let tls = crate::common::client::tls(s, HOST, &[gw.ca_der()], &[b"http/1.1"])
            .await
            .unwrap();
        let mut http = Http::over(tls, false).await;
        let got = post(&mut http, HOST, path, chat("which port?", false), &[]).await;
        assert_eq!(got.cache, want, "port {port}");
    }
    assert_eq!(origin.hits.load(SeqCst), 2);
}

/// A hit skips the output policies, so an answer stored for an exchange
/// no output policy checked is never served to one whose policies would
/// redact it: the policies that apply are part of the key.
#[tokio::test]
async fn an_answer_is_never_served_past_output_policies_the_storer_lacked() {
    let yaml = "policies:\n  chain: [audit-logger, codenames, ide-cache]\npolicy:\n  audit-logger: {}\n  codenames:\n    type: content-filter\n    phases: [output]\n    patterns: ['project-zeus']\n    action: redact\n    when:\n      headers:\n        x-strict: '1'\n  ide-cache:\n    type: cache\n    ttl_seconds: 600\n";
    let (_ca, origin, gw) = setup(yaml).await;
    let mut http = client(&gw, HOST).await;
    let path = "/v1/chat/completions";
    let reply = ("x-test-reply", "see project-zeus");
    let open = post(&mut http, HOST, path, chat("codename?", false), &[reply]).await;
    assert_eq!(open.cache, "miss");
    assert!(String::from_utf8_lossy(&open.body).contains("project-zeus"));
    let strict = [reply, ("x-strict", "1")];
    let checked = post(&mut http, HOST, path, chat("codename?", false), &strict).await;
    assert_eq!(checked.cache, "miss", "not the unchecked entry");
    let text = String::from_utf8_lossy(&checked.body);
    assert!(text.contains("see [REDACTED:codenames]"), "{text}");
    assert_eq!(origin.hits.load(SeqCst), 2);
    // Exchanges without the policy still share the first answer.
    let again = post(&mut http, HOST, path, chat("codename?", false), &[reply]).await;
    assert_eq!(again.cache, "hit");
}
