use super::*;
use crate::cache::Caches;
use crate::config::CacheBackend;
use http_body_util::BodyExt;
use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;

fn options(scope: Scope) -> CacheOptions {
    CacheOptions {
        ttl_seconds: 60,
        scope,
        backend: CacheBackend::Memory,
        max_bytes: None,
        max_entry_bytes: Some(4096),
        allow_nondeterministic: false,
        key_prefix: None,
    }
}

const BODY: &[u8] =
    br#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

/// Headers with a provider credential, as every real request has.
fn signed() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_static("Bearer sk-test"),
    );
    h
}

fn request<'a>(headers: &'a HeaderMap, body: &'a [u8], user: Option<&'a str>) -> CacheRequest<'a> {
    CacheRequest {
        provider: "openai",
        tls: true,
        host: "api.openai.com",
        port: 443,
        method: &http::Method::POST,
        path_and_query: "/v1/chat/completions",
        headers,
        body,
        stream: true,
        family: Some(Family::OpenAiChat),
        user,
        team: None,
        output_policies: &[],
    }
}

/// A stream split mid-event, as networks do.
const FRAMES: [&[u8]; 3] = [
    b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"he\"}}]}\n\n",
    b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"llo\"}}]}\n\ndata: [DO",
    b"NE]\n\n",
];

/// A body of queued frames; `Err` ends it with an error.
struct Script(VecDeque<Result<&'static [u8], ()>>);

impl HttpBody for Script {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(self.0.pop_front().map(|f| match f {
            Ok(b) => Ok(Frame::data(Bytes::from_static(b))),
            Err(()) => Err(BoxError::from("upstream broke off")),
        }))
    }
}

fn upstream(
    status: u16,
    content_type: &str,
    frames: &[Result<&'static [u8], ()>],
) -> Response<Body> {
    let mut r = Response::new(body::boxed(Script(frames.iter().cloned().collect())));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type).unwrap(),
    );
    r
}

fn ok_frames() -> Vec<Result<&'static [u8], ()>> {
    FRAMES.iter().map(|f| Ok(*f)).collect()
}

async fn collect(resp: Response<Body>) -> Bytes {
    resp.into_body().collect().await.unwrap().to_bytes()
}

/// Runs one request through lookup and (on a miss) the given upstream
/// response; returns the `x-kt-cache` verdict and the body bytes.
async fn run(
    store: &Arc<Store>,
    o: &CacheOptions,
    req: &CacheRequest<'_>,
    upstream_resp: impl FnOnce() -> Response<Body>,
) -> (String, Bytes) {
    let resp = match lookup(store, o, req).await {
        Lookup::Hit(hit) => hit.respond(Box::new(|_| {})),
        Lookup::Miss(t) | Lookup::Bypass(_, Some(t)) => t.capture(upstream_resp()),
        Lookup::Bypass(reason, None) => {
            let mut r = upstream_resp();
            mark_bypass(&mut r, reason);
            r
        }
    };
    let verdict = resp
        .headers()
        .get(X_KT_CACHE)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (verdict, collect(resp).await)
}

fn all(frames: &[&[u8]]) -> Vec<u8> {
    frames.concat()
}

#[tokio::test]
async fn a_complete_stream_is_replayed_byte_for_byte_with_its_framing() {
    let caches = Caches::new();
    let o = options(Scope::Team);
    let store = caches.store(&o).unwrap();
    let h = signed();
    let req = request(&h, BODY, Some("dev1"));
    let sse = "text/event-stream";
    let (v, first) = run(&store, &o, &req, || upstream(200, sse, &ok_frames())).await;
    assert_eq!((v.as_str(), &first[..]), ("miss", &all(&FRAMES)[..]));
    let Lookup::Hit(hit) = lookup(&store, &o, &req).await else {
        panic!("the second request hits")
    };
    let resp = hit.respond(Box::new(|_| {}));
    assert_eq!(resp.headers()[X_KT_CACHE], "hit");
    assert_eq!(resp.headers()[header::CONTENT_TYPE], sse);
    // Counted as a memory hit in its own right (metrics never derive it).
    let stats = caches.stats();
    assert_eq!(stats.hits.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(
        stats.memory_hits.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // Frame by frame, exactly as the client first received them.
    let mut body = resp.into_body();
    let mut got = Vec::new();
    while let Some(f) = body.frame().await {
        got.push(f.unwrap().into_data().unwrap());
    }
    assert_eq!(got, FRAMES.map(Bytes::from_static).to_vec());
}

#[tokio::test]
async fn incomplete_failed_and_error_responses_are_not_stored() {
    let sse = "text/event-stream";
    let cases: Vec<(&str, Response<Body>)> = vec![
        ("no terminal event", upstream(200, sse, &[Ok(FRAMES[0])])),
        (
            "cut mid-event",
            upstream(200, sse, &[Ok(FRAMES[0]), Ok(FRAMES[1])]),
        ),
        (
            "upstream error",
            upstream(200, sse, &[Ok(FRAMES[0]), Err(())]),
        ),
        ("status 500", upstream(500, sse, &ok_frames())),
        (
            "error event",
            upstream(
                200,
                sse,
                &[
                    Ok(b"data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"}}\n\n"),
                    Ok(b"data: [DONE]\n\n"),
                ],
            ),
        ),
        (
            "event after the end",
            upstream(200, sse, &[Ok(b"data: [DONE]\n\n"), Ok(FRAMES[0])]),
        ),
        (
            "a JSON answer cut short",
            upstream(
                200,
                "application/json",
                &[Ok(b"{\"choices\":[{\"message\":{\"content\":\"he")],
            ),
        ),
        (
            "a JSON answer that is an error",
            upstream(
                200,
                "application/json",
                &[Ok(b"{\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"}}")],
            ),
        ),
    ];
    for (what, resp) in cases {
        let caches = Caches::new();
        let o = options(Scope::Team);
        let store = caches.store(&o).unwrap();
        let h = signed();
        let req = request(&h, BODY, None);
        let Lookup::Miss(t) = lookup(&store, &o, &req).await else {
            panic!("{what}: a miss first")
        };
        let _ = t.capture(resp).into_body().collect().await;
        assert!(
            matches!(lookup(&store, &o, &req).await, Lookup::Miss(_)),
            "{what}: must not be stored"
        );
        assert_eq!(store.stats.stores.load(Relaxed), 0, "{what}");
    }
}

#[tokio::test]
async fn a_client_that_goes_away_stores_nothing() {
    let caches = Caches::new();
    let o = options(Scope::Team);
    let store = caches.store(&o).unwrap();
    let h = signed();
    let req = request(&h, BODY, None);
    let Lookup::Miss(t) = lookup(&store, &o, &req).await else {
        panic!()
    };
    let mut body = t
        .capture(upstream(200, "text/event-stream", &ok_frames()))
        .into_body();
    body.frame().await.unwrap().unwrap();
    drop(body);
    assert!(matches!(lookup(&store, &o, &req).await, Lookup::Miss(_)));
}

#[tokio::test]
async fn scopes_never_share_entries() {
    let caches = Caches::new();
    let h = signed();
    let sse = "text/event-stream";
    let user = options(Scope::User);
    let store = caches.store(&user).unwrap();
    let (v, _) = run(&store, &user, &request(&h, BODY, Some("a")), || {
        upstream(200, sse, &ok_frames())
    })
    .await;
    assert_eq!(v, "miss");
    let (v, _) = run(&store, &user, &request(&h, BODY, Some("b")), || {
        upstream(200, sse, &ok_frames())
    })
    .await;
    assert_eq!(v, "miss", "user b never gets user a's entry");
    let (v, _) = run(&store, &user, &request(&h, BODY, Some("a")), || {
        panic!("a hit")
    })
    .await;
    assert_eq!(v, "hit");
    // Team scope: teammates share, other teams do not.
    let team = options(Scope::Team);
    let mut r = request(&h, BODY, Some("a"));
    r.team = Some("core");
    run(&store, &team, &r, || upstream(200, sse, &ok_frames())).await;
    r.user = Some("c");
    assert_eq!(run(&store, &team, &r, || panic!("a hit")).await.0, "hit");
    r.team = Some("web");
    let (v, _) = run(&store, &team, &r, || upstream(200, sse, &ok_frames())).await;
    assert_eq!(v, "miss");
}

#[tokio::test]
async fn placeholders_are_stored_only_in_user_scope() {
    let body = br#"{"model":"m","messages":[]}"#;
    let json = br#"{"choices":[{"message":{"content":"token [REDACTED:github-pat]"}}]}"#;
    for (scope, stored) in [(Scope::Team, false), (Scope::User, true)] {
        let caches = Caches::new();
        let o = options(scope);
        let store = caches.store(&o).unwrap();
        let h = signed();
        let mut req = request(&h, body, Some("a"));
        req.stream = false;
        run(&store, &o, &req, || {
            upstream(200, "application/json", &[Ok(&json[..])])
        })
        .await;
        let hit = matches!(lookup(&store, &o, &req).await, Lookup::Hit(_));
        assert_eq!(hit, stored, "{scope}");
    }
}

#[tokio::test]
async fn clients_and_request_fields_can_bypass() {
    let caches = Caches::new();
    let o = options(Scope::Team);
    let store = caches.store(&o).unwrap();
    let plain = signed();
    let sse = "text/event-stream";
    // Prime the cache.
    run(&store, &o, &request(&plain, BODY, None), || {
        upstream(200, sse, &ok_frames())
    })
    .await;
    // Each case's headers, the reason and whether the answer is stored
    // (refreshes the entry). A header that forbids storing wins over one
    // that only skips the lookup.
    type Headers = &'static [(&'static str, &'static str)];
    let cases: [(Headers, &str, bool); 8] = [
        (&[("x-kt-cache", "bypass")], "client", true),
        (
            &[("cache-control", "max-age=0, no-cache")],
            "no-cache",
            true,
        ),
        (&[("pragma", "no-cache")], "no-cache", true),
        (&[("cache-control", "no-store")], "no-store", false),
        (&[("x-copilot-speculative", "1")], "speculative", false),
        (
            &[
                ("x-copilot-speculative", "1"),
                ("cache-control", "no-cache"),
            ],
            "speculative",
            false,
        ),
        (
            &[("x-kt-cache", "bypass"), ("cache-control", "no-store")],
            "no-store",
            false,
        ),
        (
            &[("x-kt-cache", "bypass"), ("x-copilot-speculative", "true")],
            "speculative",
            false,
        ),
    ];
    for (headers, reason, refreshes) in cases {
        let mut h = signed();
        for (name, value) in headers {
            h.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        match lookup(&store, &o, &request(&h, BODY, None)).await {
            Lookup::Bypass(r, t) => {
                assert_eq!((r, t.is_some()), (reason, refreshes), "{headers:?}")
            }
            _ => panic!("{headers:?} must bypass"),
        }
    }
    for (body, reason) in [
        (
            &br#"{"messages":[],"temperature":0.8}"#[..],
            "nondeterministic",
        ),
        (br#"{"messages":[],"n":3}"#, "nondeterministic"),
        (br#"{"input":"x","previous_response_id":"r1"}"#, "stateful"),
        (br#"{"input":"x","store":true}"#, "stateful"),
        (b"not json", "unreadable_body"),
    ] {
        match lookup(&store, &o, &request(&plain, body, None)).await {
            Lookup::Bypass(r, None) => assert_eq!(r, reason),
            _ => panic!("{reason} must bypass"),
        }
    }
    let sampling = CacheOptions {
        allow_nondeterministic: true,
        ..o.clone()
    };
    assert!(matches!(
        lookup(
            &store,
            &sampling,
            &request(&plain, br#"{"messages":[],"temperature":0.8}"#, None)
        )
        .await,
        Lookup::Miss(_)
    ));
}

#[tokio::test]
async fn responses_over_the_entry_limit_stream_through_unstored() {
    let caches = Caches::new();
    let o = CacheOptions {
        max_entry_bytes: Some(64),
        ..options(Scope::Team)
    };
    let store = caches.store(&o).unwrap();
    let h = signed();
    let req = request(&h, BODY, None);
    let (v, got) = run(&store, &o, &req, || {
        upstream(200, "text/event-stream", &ok_frames())
    })
    .await;
    assert_eq!((v.as_str(), &got[..]), ("miss", &all(&FRAMES)[..]));
    assert!(matches!(lookup(&store, &o, &req).await, Lookup::Miss(_)));
}

#[tokio::test]
async fn streams_without_an_end_event_and_compressed_bodies_are_not_stored() {
    let caches = Caches::new();
    let o = options(Scope::Team);
    let store = caches.store(&o).unwrap();
    let h = signed();
    let mut req = request(&h, BODY, None);
    req.family = Some(Family::Gemini);
    run(&store, &o, &req, || {
        upstream(200, "text/event-stream", &[Ok(b"data: {}\n\n")])
    })
    .await;
    assert!(matches!(lookup(&store, &o, &req).await, Lookup::Miss(_)));
    req.family = Some(Family::OpenAiChat);
    req.stream = false;
    run(&store, &o, &req, || {
        let mut r = upstream(200, "application/json", &[Ok(b"\x1f\x8b")]);
        r.headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        r
    })
    .await;
    assert!(matches!(lookup(&store, &o, &req).await, Lookup::Miss(_)));
}

/// A request without a credential for its provider is neither answered
/// from the cache nor stored: the provider decides about it.
#[tokio::test]
async fn requests_without_a_provider_credential_go_upstream() {
    let caches = Caches::new();
    let o = options(Scope::Team);
    let store = caches.store(&o).unwrap();
    let sse = "text/event-stream";
    run(&store, &o, &request(&signed(), BODY, None), || {
        upstream(200, sse, &ok_frames())
    })
    .await;
    assert!(matches!(
        lookup(&store, &o, &request(&signed(), BODY, None)).await,
        Lookup::Hit(_)
    ));
    let mut blank = HeaderMap::new();
    for anonymous in [HeaderMap::new(), {
        blank.insert(http::header::AUTHORIZATION, HeaderValue::from_static(" "));
        blank.clone()
    }] {
        match lookup(&store, &o, &request(&anonymous, BODY, None)).await {
            Lookup::Bypass(reason, ticket) => {
                assert_eq!((reason, ticket.is_some()), ("no_credential", false))
            }
            _ => panic!("a request without a credential must go upstream"),
        }
    }
    // Only a credential the request's provider reads counts: each
    // provider's own forms, and no other provider's.
    let provider_reads: [(&str, &[&str], bool); 8] = [
        ("openai", &["authorization"], false),
        ("github-copilot", &["authorization"], false),
        ("sourcegraph", &["authorization"], false),
        ("mistral", &["authorization"], false),
        ("anthropic", &["authorization", "x-api-key"], false),
        ("azure-openai", &["authorization", "api-key"], false),
        ("gemini", &["authorization", "x-goog-api-key"], true),
        (
            "unknown",
            &["authorization", "x-api-key", "api-key", "x-goog-api-key"],
            true,
        ),
    ];
    let no_credential = |found: &Lookup| matches!(found, Lookup::Bypass("no_credential", _));
    for (provider, reads, query_key) in provider_reads {
        for name in ["authorization", "x-api-key", "api-key", "x-goog-api-key"] {
            let mut h = HeaderMap::new();
            h.insert(HeaderName::from_static(name), HeaderValue::from_static("k"));
            let req = CacheRequest {
                provider,
                ..request(&h, BODY, None)
            };
            assert_eq!(
                no_credential(&lookup(&store, &o, &req).await),
                !reads.contains(&name),
                "{provider}: {name}"
            );
        }
        let keyed = CacheRequest {
            provider,
            path_and_query: "/v1beta/models/g:streamGenerateContent?alt=sse&key=AIza",
            ..request(&blank, BODY, None)
        };
        assert_eq!(
            no_credential(&lookup(&store, &o, &keyed).await),
            !query_key,
            "{provider}: key="
        );
    }
    // The entry stored above is answered to every form of its provider's
    // credential.
    assert!(matches!(
        lookup(&store, &o, &request(&signed(), BODY, None)).await,
        Lookup::Hit(_)
    ));
}
