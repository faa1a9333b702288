//! The one place where failures become HTTP responses: status code, a JSON
//! body naming what failed and why, and an `x-kt-error` header with a stable
//! kind label.

use crate::body::{self, Body};
use crate::direct::RouteError;
use crate::keys::Denied;
use crate::llm::recognize::Api;
use crate::proxy::authority::AuthorityError;
use crate::upstream::UpstreamError;
use http::{header, HeaderValue, Response, StatusCode};

/// Failures the proxy answers with an error response.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error(transparent)]
    BadTarget(#[from] AuthorityError),
    #[error("{0}")]
    Upstream(#[from] UpstreamError),
    #[error("request loops back to this gateway")]
    Loop,
    #[error("no route for {0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("request body larger than {limit} bytes, the most kt reads to apply its policies")]
    BodyTooLarge { limit: usize },
    #[error("request body not received within {secs} s")]
    BodyTimeout { secs: u64 },
    #[error("client request body failed: {0}")]
    ClientBody(String),
    /// An HTTP/2 request asked `Expect: 100-continue` and sent no body:
    /// kt's HTTP/2 server cannot send the `100`.
    #[error("the request asked for 100 (Continue) over HTTP/2, which kt cannot send, and its body did not start within {secs} s; send the body without waiting for 100 (Continue), or use HTTP/1.1")]
    ExpectationFailed { secs: u64 },
    /// Access key missing, invalid or lacking admin rights.
    #[error("{}", auth_message(*.route, *.denied))]
    Auth { route: AuthRoute, denied: Denied },
    /// A direct-API request no provider target can serve.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// CONNECT to a port outside `upstream.allowed_connect_ports`.
    #[error("CONNECT to port {port} is not allowed (allowed: {allowed}); add it to upstream.allowed_connect_ports in the policy config")]
    PortNotAllowed { port: u16, allowed: String },
    /// The access key an intercepted session was opened with has been
    /// revoked since.
    #[error("the access key this connection was opened with has been revoked; reconnect with a valid key")]
    KeyRevoked,
    /// A web page's request to kt's own routes while keys are optional
    /// (see `web_pages`): `refused` names the page or the host name.
    #[error("kt does not answer {refused}: with access keys optional, its direct API and admin pages answer only programs on this machine and pages served from it (another site could otherwise spend the provider keys kt injects or read the audit trail); call it as http://localhost:PORT, or require keys (auth: {{required: true}}) to serve other names and pages")]
    WebPage { refused: String },
    /// The bodies being read whole hold the gateway's whole budget.
    #[error("kt is already holding {limit_mib} MiB of bodies still arriving (--max-buffered-body-mib); try again shortly")]
    BodiesBusy { limit_mib: usize },
}

/// Where a refused access key was presented: decides the status code, the
/// challenge header and the body's dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthRoute {
    /// CONNECT or absolute-form: `407` + `Proxy-Authenticate`.
    Proxy,
    /// `/_kt/*`: `401` + `WWW-Authenticate: Bearer`, or `403` for a key
    /// without admin rights.
    Admin,
    /// The direct API: `401` in the OpenAI error shape.
    DirectApi,
}

fn auth_message(route: AuthRoute, denied: Denied) -> String {
    match (route, denied) {
        (AuthRoute::Proxy, _) => format!(
            "{denied}: send Proxy-Authorization: Basic base64(USER:KEY), e.g. HTTPS_PROXY=http://USER:KEY@HOST:PORT (create a key with `kt keys create --user USER`)"
        ),
        (AuthRoute::Admin, Denied::NotAdmin) => {
            format!("{denied}: create one with `kt keys create --user USER --admin`")
        }
        (AuthRoute::Admin, _) => {
            format!("{denied}: send Authorization: Bearer KEY with an admin access key")
        }
        (AuthRoute::DirectApi, _) => format!(
            "{denied}: send Authorization: Bearer KEY (or x-api-key: KEY) with a kt access key"
        ),
    }
}

impl ProxyError {
    /// Stable snake_case label for events, metrics and the `x-kt-error` header.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::BadTarget(_) => "bad_target",
            ProxyError::Upstream(e) => e.kind(),
            ProxyError::Loop => "loop_detected",
            ProxyError::NotFound(_) => "not_found",
            ProxyError::MethodNotAllowed => "method_not_allowed",
            ProxyError::KeyRevoked => "key_revoked",
            ProxyError::BodyTooLarge { .. } => "body_too_large",
            ProxyError::BodyTimeout { .. } => "body_timeout",
            ProxyError::ClientBody(_) => "client_body",
            ProxyError::ExpectationFailed { .. } => "expectation_failed",
            ProxyError::Auth { route, denied } => match (route, denied) {
                (AuthRoute::Proxy, _) => "proxy_auth_required",
                (_, Denied::NotAdmin) => "forbidden",
                (AuthRoute::Admin, _) => "unauthorized",
                (AuthRoute::DirectApi, _) => "invalid_api_key",
            },
            ProxyError::Route(RouteError::NoTarget { .. }) => "model_not_found",
            ProxyError::Route(RouteError::WrongShape { .. }) => "wrong_api_for_model",
            ProxyError::PortNotAllowed { .. } => "port_not_allowed",
            ProxyError::BodiesBusy { .. } => "bodies_busy",
            ProxyError::WebPage { .. } => "web_page_refused",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) | ProxyError::BadTarget(_) => StatusCode::BAD_REQUEST,
            ProxyError::Upstream(e) if e.is_timeout() => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Upstream(UpstreamError::Forbidden { .. }) => StatusCode::FORBIDDEN,
            ProxyError::Upstream(UpstreamError::Busy { .. }) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ProxyError::Loop => StatusCode::LOOP_DETECTED,
            ProxyError::NotFound(_) => StatusCode::NOT_FOUND,
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::KeyRevoked => StatusCode::FORBIDDEN,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::ClientBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::ExpectationFailed { .. } => StatusCode::EXPECTATION_FAILED,
            ProxyError::Auth { route, denied } => match (route, denied) {
                (AuthRoute::Proxy, _) => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
                (_, Denied::NotAdmin) => StatusCode::FORBIDDEN,
                _ => StatusCode::UNAUTHORIZED,
            },
            ProxyError::Route(RouteError::NoTarget { .. }) => StatusCode::NOT_FOUND,
            ProxyError::Route(RouteError::WrongShape { .. }) => StatusCode::BAD_REQUEST,
            ProxyError::PortNotAllowed { .. } => StatusCode::FORBIDDEN,
            ProxyError::BodiesBusy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::WebPage { .. } => StatusCode::FORBIDDEN,
        }
    }

    /// The response sent to the client.
    pub fn into_response(self) -> Response<Body> {
        self.into_response_in(None)
    }

    /// The response in the client's API dialect: Anthropic's error
    /// envelope for `/v1/messages`, OpenAI's for everything else.
    pub fn into_response_in(self, api: Option<Api>) -> Response<Body> {
        let status = self.status();
        let kind = self.kind();
        if status.is_server_error() {
            tracing::warn!(kind, error = %self, "request failed");
        } else {
            tracing::debug!(kind, error = %self, "request refused");
        }
        let error_type = match &self {
            ProxyError::Auth {
                denied: Denied::NotAdmin,
                ..
            } => "permission_error",
            ProxyError::Auth { .. } => "authentication_error",
            ProxyError::WebPage { .. } => "permission_error",
            _ if status.is_server_error() => "gateway_error",
            _ => "invalid_request",
        };
        let challenge = match &self {
            ProxyError::Auth {
                route: AuthRoute::Proxy,
                ..
            } => Some((
                header::PROXY_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"kt\""),
            )),
            ProxyError::Auth { denied, .. } if *denied != Denied::NotAdmin => Some((
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"kt\""),
            )),
            _ => None,
        };
        let payload = if api == Some(Api::AnthropicMessages) {
            // Anthropic's SDKs map these `type`s to their exception classes.
            let error_type = match error_type {
                "invalid_request" if status == StatusCode::NOT_FOUND => "not_found_error",
                "invalid_request" => "invalid_request_error",
                "gateway_error" => "api_error",
                other => other,
            };
            serde_json::json!({
                "type": "error",
                "error": { "type": error_type, "message": self.to_string() }
            })
        } else {
            serde_json::json!({
                "error": {
                    "type": error_type,
                    "code": kind,
                    "message": self.to_string(),
                }
            })
        };
        let mut resp = body::typed_response("application/json", payload.to_string());
        *resp.status_mut() = status;
        let headers = resp.headers_mut();
        headers.insert("x-kt-error", HeaderValue::from_static(kind));
        if let Some((name, value)) = challenge {
            headers.insert(name, value);
        }
        resp
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        let timeout = ProxyError::Upstream(UpstreamError::ConnectTimeout {
            target: "a:1".into(),
        });
        assert_eq!(timeout.status(), StatusCode::GATEWAY_TIMEOUT);
        let tls = ProxyError::Upstream(UpstreamError::Tls {
            host: "a".into(),
            reason: "bad cert".into(),
        });
        assert_eq!(tls.status(), StatusCode::BAD_GATEWAY);
        let resp = tls.into_response();
        assert_eq!(resp.headers()["x-kt-error"], "upstream_tls");
        assert_eq!(
            ProxyError::from(AuthorityError::MissingPort).status(),
            StatusCode::BAD_REQUEST
        );
    }

    fn auth(route: AuthRoute, denied: Denied) -> (StatusCode, http::HeaderMap, serde_json::Value) {
        let (parts, body) = ProxyError::Auth { route, denied }
            .into_response()
            .into_parts();
        let bytes = collect(body);
        (
            parts.status,
            parts.headers,
            serde_json::from_slice(&bytes).unwrap(),
        )
    }

    fn collect(body: Body) -> bytes::Bytes {
        use http_body_util::BodyExt;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(body.collect()).unwrap().to_bytes()
    }

    #[test]
    fn proxy_auth_is_407_with_a_basic_challenge() {
        let (status, headers, json) = auth(AuthRoute::Proxy, Denied::Missing);
        assert_eq!(status, 407);
        assert_eq!(headers[header::PROXY_AUTHENTICATE], "Basic realm=\"kt\"");
        assert_eq!(json["error"]["type"], "authentication_error");
        assert_eq!(json["error"]["code"], "proxy_auth_required");
    }

    #[test]
    fn admin_auth_is_401_with_a_bearer_challenge_or_403() {
        let (status, headers, json) = auth(AuthRoute::Admin, Denied::Invalid);
        assert_eq!(status, 401);
        assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer realm=\"kt\"");
        assert_eq!(json["error"]["code"], "unauthorized");
        let (status, headers, json) = auth(AuthRoute::Admin, Denied::NotAdmin);
        assert_eq!(status, 403);
        assert!(!headers.contains_key(header::WWW_AUTHENTICATE));
        assert_eq!(json["error"]["type"], "permission_error");
    }

    #[test]
    fn direct_api_auth_is_401_in_the_openai_error_shape() {
        let (status, headers, json) = auth(AuthRoute::DirectApi, Denied::Missing);
        assert_eq!(status, 401);
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(json["error"]["type"], "authentication_error");
        assert_eq!(json["error"]["code"], "invalid_api_key");
        let message = json["error"]["message"].as_str().unwrap();
        assert!(message.contains("Authorization: Bearer"), "{message}");
    }
}
