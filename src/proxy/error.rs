//! The one place where failures become HTTP responses: status code, a JSON
//! body naming what failed and why, and an `x-kt-error` header with a stable
//! kind label.

use crate::body::{self, Body};
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
            ProxyError::BodyTooLarge { .. } => "body_too_large",
            ProxyError::BodyTimeout { .. } => "body_timeout",
            ProxyError::ClientBody(_) => "client_body",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) | ProxyError::BadTarget(_) => StatusCode::BAD_REQUEST,
            ProxyError::Upstream(e) if e.is_timeout() => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ProxyError::Loop => StatusCode::LOOP_DETECTED,
            ProxyError::NotFound(_) => StatusCode::NOT_FOUND,
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::ClientBody(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// The response sent to the client.
    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        let kind = self.kind();
        if status.is_server_error() {
            tracing::warn!(kind, error = %self, "request failed");
        } else {
            tracing::debug!(kind, error = %self, "request refused");
        }
        let payload = serde_json::json!({
            "error": {
                "type": if status.is_server_error() { "gateway_error" } else { "invalid_request" },
                "code": kind,
                "message": self.to_string(),
            }
        });
        let mut resp = Response::new(body::full(payload.to_string()));
        *resp.status_mut() = status;
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert("x-kt-error", HeaderValue::from_static(kind));
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
}
