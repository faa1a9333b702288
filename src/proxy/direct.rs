//! The direct API (`http://HOST:41002/v1`): an OpenAI- and
//! Anthropic-compatible base URL. A request is checked for its access key,
//! routed by its `model` to a provider target, given the target's provider
//! key in place of the caller's credential, and run through the same policy
//! chain, cache and audit trail as intercepted traffic. Errors come back in
//! the client's API dialect.

use super::forward::strip_hop_by_hop;
use super::inspected::{forward_read, read_body};
use super::{AuthRoute, ConnCtx, ProxyError};
use crate::body::{self, Body};
use crate::direct::{Routes, Shape, Target};
use crate::keys::gate::is_access_key;
use crate::llm::content::is_event_stream;
use crate::llm::recognize::Api;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response};
use hyper::body::Incoming;
use std::sync::Arc;
use std::time::Duration;

/// Client headers that carry its credentials to kt, never forwarded: the
/// access key goes no further than the gateway (nor, through the proxy,
/// a kt key a client put in one of them).
pub(super) const CLIENT_CREDENTIALS: [HeaderName; 3] = [
    header::AUTHORIZATION,
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("api-key"),
];

/// Client headers that pick an account under the client's own key, dropped
/// when kt puts its key in that key's place.
const CLIENT_ACCOUNT_SCOPE: [&str; 2] = ["openai-organization", "openai-project"];

/// The Anthropic API version sent when the client names none.
const ANTHROPIC_VERSION: &str = "2023-06-01";

/// True for the paths the direct API owns.
pub(super) fn owns(path: &str) -> bool {
    path == "/v1" || path.starts_with("/v1/")
}

/// Serves one origin-form request under `/v1/`.
pub(super) async fn serve(ctx: ConnCtx, req: Request<Incoming>) -> Response<Body> {
    let shape = Shape::of_path(req.uri().path());
    let dialect = match shape {
        Some(Shape::Anthropic) => Some(Api::AnthropicMessages),
        _ => None,
    };
    match handle(ctx, req, shape).await {
        Ok(resp) => resp,
        Err(e) => e.into_response_in(dialect),
    }
}

async fn handle(
    mut ctx: ConnCtx,
    req: Request<Incoming>,
    shape: Option<Shape>,
) -> Result<Response<Body>, ProxyError> {
    crate::idle_poll::activity();
    ctx.identity = ctx
        .gw
        .auth
        .direct_api(req.headers())
        .map_err(|denied| ProxyError::Auth {
            route: AuthRoute::DirectApi,
            denied,
        })?;
    ctx.identity.client = Some(ctx.gw.auth.client_ip(ctx.peer.ip(), req.headers()).into());
    let routes = ctx.gw.engine().routes();
    let path = req.uri().path();
    if let Some(rest) = path.strip_prefix("/v1/models") {
        if !matches!(*req.method(), Method::GET | Method::HEAD) {
            return Err(ProxyError::MethodNotAllowed);
        }
        return models(&ctx, &routes, rest.trim_matches('/')).await;
    }
    let Some(shape) = shape else {
        return Err(ProxyError::NotFound(path.to_string()));
    };
    if req.method() != Method::POST {
        return Err(ProxyError::MethodNotAllowed);
    }

    let limits = &ctx.gw.limits;
    let (mut parts, incoming) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    let bytes = read_body(
        incoming,
        limits.max_inspected_body,
        limits.body_read,
        ctx.gw.bodies(),
        super::inspected::expect_grace(&parts),
    )
    .await?;
    let meta = crate::llm::inspect::request_meta(&bytes)
        .map_err(|e| ProxyError::BadRequest(e.to_string()))?;
    let target = routes.route(shape, meta.model.as_deref())?;

    let client_path = parts.uri.path().to_string();
    let upstream_pq =
        target.upstream_path(parts.uri.path_and_query().map_or("/", |pq| pq.as_str()));
    parts.uri = upstream_pq
        .parse()
        .map_err(|_| ProxyError::BadRequest("request path is not a valid URI".into()))?;
    upstream_headers(&mut parts.headers, target, ctx.gw.auth.required());

    let engine = ctx.gw.engine();
    let exchange = engine.begin_direct(
        target,
        &parts.method,
        &client_path,
        &upstream_pq,
        &parts.headers,
        &ctx.identity,
    );
    let mut resp = match exchange {
        Some(exchange) => forward_read(&ctx, &target.origin, parts, bytes, exchange).await?,
        None => {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            let resp = ctx
                .gw
                .upstream
                .send(
                    &target.origin,
                    Request::from_parts(parts, body::full(bytes)),
                )
                .await?;
            let (mut parts, incoming) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers, false);
            Response::from_parts(parts, body::boxed(incoming))
        }
    };
    if is_event_stream(resp.headers()) {
        // nginx and friends in front of a hosted gateway must not hold
        // frames back.
        resp.headers_mut()
            .insert("x-accel-buffering", HeaderValue::from_static("no"));
    }
    Ok(resp)
}

/// Replaces the client's credentials with the target's provider key. The
/// client's own provider key (one that is not a kt access key) is passed on
/// only when the target has none and access keys are not required: the
/// "bring your own key" use on a laptop.
fn upstream_headers(headers: &mut HeaderMap, target: &Target, auth_required: bool) {
    let mut own: Option<(HeaderName, HeaderValue)> = None;
    for name in CLIENT_CREDENTIALS {
        // Every value: a second `Authorization` may hold the kt key.
        if own.is_none() {
            own = headers
                .get_all(&name)
                .iter()
                .find(|v| !is_access_key(v))
                .map(|v| (name.clone(), v.clone()));
        }
        headers.remove(&name);
    }
    headers.remove(header::HOST);
    headers.remove(header::COOKIE);
    match &target.credential {
        Some(credential) => {
            let (name, value) = credential.header();
            headers.insert(name, value.clone());
            // The client's SDK names its own organization and project
            // (OPENAI_ORG_ID, OPENAI_PROJECT_ID): with kt's key OpenAI
            // answers 401 mismatched_organization, or bills that project.
            for scope in CLIENT_ACCOUNT_SCOPE {
                headers.remove(scope);
            }
        }
        None if !auth_required => {
            if let Some((name, mut value)) = own {
                value.set_sensitive(true);
                headers.insert(name, value);
            }
        }
        None => {}
    }
    if target.shape == Shape::Anthropic && !headers.contains_key("anthropic-version") {
        headers.insert(
            "anthropic-version",
            HeaderValue::from_static(ANTHROPIC_VERSION),
        );
    }
}

/// `GET /v1/models` (the list) and `GET /v1/models/ID` (one).
async fn models(ctx: &ConnCtx, routes: &Routes, id: &str) -> Result<Response<Body>, ProxyError> {
    let one = |fetched: &[(&Target, Arc<[String]>)]| {
        let (id, owner) = routes
            .model_list(fetched)
            .into_iter()
            .find(|(m, _)| *m == id)?;
        Some(body::typed_response(
            "application/json",
            serde_json::json!({ "id": id, "object": "model", "created": 0, "owned_by": &*owner.id })
                .to_string(),
        ))
    };
    // A model the config names needs no provider's list.
    if !id.is_empty() {
        if let Some(resp) = one(&[]) {
            return Ok(resp);
        }
    }
    // Side by side: one slow provider costs its bound, not one per target.
    let asks = routes
        .unlisted()
        .map(|t| async move { Some((t, ctx.gw.model_lists.get(&ctx.gw, t).await?)) });
    let fetched: Vec<_> = futures_util::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect();
    if id.is_empty() {
        Ok(body::typed_response(
            "application/json",
            routes.models_json(&fetched),
        ))
    } else {
        one(&fetched).ok_or_else(|| ProxyError::NotFound(format!("model `{id}`")))
    }
}

/// What providers say they offer (`GET <base>/models`), for targets whose
/// config names no model: kept a few minutes, a failure for less, so the
/// list (users' health check too) answers promptly whatever the provider
/// does.
pub(super) struct ModelLists {
    cache: moka::future::Cache<String, Option<Arc<[String]>>>,
}

/// How long a provider's list is kept.
const LIST_TTL: Duration = Duration::from_secs(300);
/// How long after a failed fetch kt asks again.
const LIST_RETRY: Duration = Duration::from_secs(30);
/// Longest wait for a provider's list.
const LIST_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest list read.
const LIST_MAX_BYTES: usize = 1 << 20;
/// Most models taken from one provider.
const LIST_MAX_MODELS: usize = 1000;

struct ListExpiry;

impl moka::Expiry<String, Option<Arc<[String]>>> for ListExpiry {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Option<Arc<[String]>>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(if value.is_some() {
            LIST_TTL
        } else {
            LIST_RETRY
        })
    }
}

impl ModelLists {
    pub(super) fn new() -> Self {
        ModelLists {
            cache: moka::future::Cache::builder()
                .max_capacity(256)
                .expire_after(ListExpiry)
                .build(),
        }
    }

    /// `t`'s provider list, fetched once for concurrent callers.
    async fn get(&self, gw: &super::Gateway, t: &Target) -> Option<Arc<[String]>> {
        let path = t.upstream_path("/v1/models");
        // A reload that moves the target asks again.
        let key = format!("{} {} {path}", t.id, t.origin);
        self.cache
            .get_with(key, async {
                let asked = tokio::time::timeout(LIST_TIMEOUT, fetch(gw, t, &path)).await;
                match asked.unwrap_or(Err(ListError::Timeout)) {
                    Ok(ids) => Some(ids.into()),
                    Err(why) => {
                        tracing::warn!(target = %t.id, "cannot list the provider's models: {why}");
                        None
                    }
                }
            })
            .await
    }
}

/// Why a provider's model list could not be had (logged, then retried).
#[derive(Debug, thiserror::Error)]
enum ListError {
    #[error(transparent)]
    Upstream(#[from] crate::upstream::UpstreamError),
    #[error("{origin} answered {status}")]
    Status {
        origin: String,
        status: http::StatusCode,
    },
    #[error("reading the answer: {0}")]
    Body(#[from] ProxyError),
    #[error("not a model list: {0}")]
    NotAList(String),
    #[error("no answer in {}s", LIST_TIMEOUT.as_secs())]
    Timeout,
}

/// One `GET` of a provider's model list, with the target's key.
async fn fetch(gw: &super::Gateway, t: &Target, path: &str) -> Result<Vec<String>, ListError> {
    let mut req = Request::get(path)
        .body(body::empty())
        .map_err(|e| ListError::NotAList(format!("bad path {path:?}: {e}")))?;
    upstream_headers(req.headers_mut(), t, true);
    let resp = gw.upstream.send(&t.origin, req).await?;
    if !resp.status().is_success() {
        return Err(ListError::Status {
            origin: t.origin.to_string(),
            status: resp.status(),
        });
    }
    let bytes = read_body(
        resp.into_body(),
        LIST_MAX_BYTES,
        LIST_TIMEOUT,
        gw.bodies(),
        None,
    )
    .await?;
    let list: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| ListError::NotAList(e.to_string()))?;
    let data = list
        .get("data")
        .and_then(|d| d.as_array())
        .ok_or_else(|| ListError::NotAList("no `data` array".into()))?;
    Ok(data
        .iter()
        .filter_map(|m| m.get("id")?.as_str())
        .take(LIST_MAX_MODELS)
        .map(str::to_string)
        .collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn routes(yaml: &str, key: Option<&str>) -> Routes {
        let config = Config::parse(yaml, Path::new("t.yaml")).unwrap();
        Routes::build(Some(&config), |_| key.map(str::to_string))
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::try_from(*k).unwrap(),
                    HeaderValue::try_from(*v).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn the_access_key_is_replaced_by_the_provider_key() {
        let r = routes(
            "providers:\n  targets:\n    - id: openai\n",
            Some("sk-prov"),
        );
        let t = r.route(Shape::OpenAi, None).unwrap();
        let mut h = headers(&[
            ("authorization", "Bearer kt_abc"),
            ("x-api-key", "kt_abc"),
            ("host", "localhost:41002"),
            ("cookie", "a=b"),
            ("openai-beta", "x"),
        ]);
        upstream_headers(&mut h, t, true);
        assert_eq!(h["authorization"], "Bearer sk-prov");
        assert!(
            !h.contains_key("x-api-key") && !h.contains_key("host") && !h.contains_key("cookie")
        );
        assert_eq!(h["openai-beta"], "x");
    }

    #[test]
    fn anthropic_gets_x_api_key_and_a_version() {
        let r = routes(
            "providers:\n  targets:\n    - id: anthropic\n",
            Some("sk-ant"),
        );
        let t = r.route(Shape::Anthropic, None).unwrap();
        let mut h = headers(&[("x-api-key", "kt_abc")]);
        upstream_headers(&mut h, t, false);
        assert_eq!(h["x-api-key"], "sk-ant");
        assert_eq!(h["anthropic-version"], ANTHROPIC_VERSION);
        assert!(!h.contains_key("authorization"));
        let mut h = headers(&[("anthropic-version", "2024-01-01")]);
        upstream_headers(&mut h, t, false);
        assert_eq!(h["anthropic-version"], "2024-01-01");
    }

    #[test]
    fn an_own_provider_key_passes_only_without_a_target_key_or_required_auth() {
        let r = routes("providers:\n  targets:\n    - id: openai\n", None);
        let t = r.route(Shape::OpenAi, None).unwrap();
        let mut h = headers(&[("authorization", "Bearer sk-mine")]);
        upstream_headers(&mut h, t, false);
        assert_eq!(h["authorization"], "Bearer sk-mine");
        let mut h = headers(&[("authorization", "Bearer sk-mine")]);
        upstream_headers(&mut h, t, true);
        assert!(!h.contains_key("authorization"));
        // A kt key is never passed on, required or not, whatever the
        // scheme's case or however many values there are.
        for kt in [
            "Bearer kt_abc",
            "BEARER kt_abc",
            "bearer\tkt_abc",
            " kt_abc",
            // base64("dev1:kt_abc"): a base URL `http://dev1:KEY@host/v1`.
            "Basic ZGV2MTprdF9hYmM=",
        ] {
            let mut h = headers(&[("authorization", kt)]);
            upstream_headers(&mut h, t, false);
            assert!(!h.contains_key("authorization"), "{kt}");
        }
        let mut h = HeaderMap::new();
        h.append("authorization", HeaderValue::from_static("BEARER kt_abc"));
        h.append("authorization", HeaderValue::from_static("Bearer sk-mine"));
        upstream_headers(&mut h, t, false);
        let sent: Vec<_> = h.get_all("authorization").iter().collect();
        assert_eq!(sent, ["Bearer sk-mine"]);
    }

    #[test]
    fn the_clients_organization_and_project_go_only_with_its_own_key() {
        let scoped = || {
            headers(&[
                ("authorization", "Bearer sk-mine"),
                ("openai-organization", "org-mine"),
                ("openai-project", "proj_mine"),
            ])
        };
        let provider = routes(
            "providers:\n  targets:\n    - id: openai\n",
            Some("sk-prov"),
        );
        let mut h = scoped();
        upstream_headers(&mut h, provider.route(Shape::OpenAi, None).unwrap(), false);
        assert_eq!(h["authorization"], "Bearer sk-prov");
        assert!(!h.contains_key("openai-organization") && !h.contains_key("openai-project"));
        let own = routes("providers:\n  targets:\n    - id: openai\n", None);
        let mut h = scoped();
        upstream_headers(&mut h, own.route(Shape::OpenAi, None).unwrap(), false);
        assert_eq!(h["authorization"], "Bearer sk-mine");
        assert_eq!(h["openai-organization"], "org-mine");
        assert_eq!(h["openai-project"], "proj_mine");
    }

    #[test]
    fn paths_of_the_direct_api() {
        assert!(owns("/v1/chat/completions") && owns("/v1") && owns("/v1/models"));
        assert!(!owns("/v10/x") && !owns("/healthz") && !owns("/_kt/events"));
    }
}
