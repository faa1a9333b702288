//! Policy outcomes on the wire, in the client's API dialect: the `409`
//! block response, the `429` of a rate limit or budget, and the final SSE
//! event that ends a blocked stream.

use super::limits::Refusal;
use crate::body::{self, Body};
use crate::llm::recognize::Api;
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use serde_json::json;

/// The error object of contract §6.
fn error_object(policy: &str, message: &str) -> serde_json::Value {
    json!({
        "type": "policy_violation",
        "code": "blocked",
        "policy": policy,
        "message": message,
    })
}

/// The JSON body of a block, Anthropic-shaped for Anthropic's API.
pub fn block_body(api: Option<Api>, policy: &str, message: &str) -> Bytes {
    let value = match api {
        Some(Api::AnthropicMessages) => json!({
            "type": "error",
            "error": error_object(policy, message),
        }),
        _ => json!({ "error": error_object(policy, message) }),
    };
    Bytes::from(value.to_string())
}

/// `409 Conflict` with the block body.
pub fn blocked(api: Option<Api>, policy: &str, message: &str) -> Response<Body> {
    let mut resp = json_response(StatusCode::CONFLICT, block_body(api, policy, message));
    final_answer(&mut resp);
    resp
}

/// Marks an answer that asking again cannot change. The OpenAI and
/// Anthropic SDKs retry a `409` (and a `429`) twice by default, which would
/// send a blocked prompt three times and record three blocks; they skip
/// the retry when the answer carries `x-should-retry: false`.
fn final_answer(resp: &mut Response<Body>) {
    resp.headers_mut()
        .insert("x-should-retry", HeaderValue::from_static("false"));
}

/// `429 Too Many Requests` with `retry-after` (whole seconds): a
/// `rate-limit` or `budget` policy refused the request. Anthropic clients
/// get their own error type, `rate_limit_error`, so SDKs back off as they
/// do for the provider's own 429s.
pub fn limited(api: Option<Api>, policy: &str, refusal: &Refusal) -> Response<Body> {
    let (kind, code) = if refusal.limit.is_budget() {
        ("budget_exceeded", "budget_exceeded")
    } else {
        ("rate_limit_exceeded", "rate_limited")
    };
    let value = match api {
        Some(Api::AnthropicMessages) => json!({
            "type": "error",
            "error": {
                "type": "rate_limit_error",
                "code": code,
                "policy": policy,
                "message": refusal.message,
            },
        }),
        _ => json!({
            "error": {
                "type": kind,
                "code": code,
                "policy": policy,
                "message": refusal.message,
            },
        }),
    };
    let mut resp = json_response(
        StatusCode::TOO_MANY_REQUESTS,
        Bytes::from(value.to_string()),
    );
    resp.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(refusal.retry_after_secs),
    );
    // A spent budget refills at the period's end, hours away: a retry in
    // seconds only repeats the refusal. A rate limit's does not.
    if refusal.limit.is_budget() {
        final_answer(&mut resp);
    }
    resp
}

/// A JSON error response from the gateway itself (bad request body, ...),
/// in the client's dialect.
pub fn gateway_error(
    api: Option<Api>,
    status: StatusCode,
    kind: &str,
    message: &str,
) -> Response<Body> {
    let inner = json!({ "type": kind, "message": message });
    let value = match api {
        Some(Api::AnthropicMessages) => json!({ "type": "error", "error": inner }),
        _ => json!({ "error": inner }),
    };
    json_response(status, Bytes::from(value.to_string()))
}

fn json_response(status: StatusCode, body: Bytes) -> Response<Body> {
    let len = body.len();
    let mut resp = body::typed_response("application/json", body);
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    headers.insert("x-kt-error", HeaderValue::from_static("policy"));
    resp
}

/// The last frame of a stream a policy stopped, in the stream's dialect:
/// an `error` event where the dialect has one, else a `data:` error chunk.
pub fn stream_block_frame(api: Option<Api>, policy: &str, message: &str) -> Bytes {
    let err = error_object(policy, message);
    let frame = match api {
        Some(Api::AnthropicMessages) => format!(
            "event: error\ndata: {}\n\n",
            json!({ "type": "error", "error": err })
        ),
        Some(Api::OpenAiResponses) => format!(
            "event: error\ndata: {}\n\n",
            json!({ "type": "error", "code": "blocked", "message": message, "policy": policy })
        ),
        Some(Api::Sourcegraph) => format!(
            "event: error\ndata: {}\n\n",
            json!({ "error": message, "policy": policy })
        ),
        _ => format!("data: {}\n\n", json!({ "error": err })),
    };
    Bytes::from(frame)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn block_body_has_the_contract_shape() {
        let v: serde_json::Value =
            serde_json::from_slice(&block_body(Some(Api::OpenAiChat), "content-filter", "no"))
                .unwrap();
        assert_eq!(v["error"]["type"], "policy_violation");
        assert_eq!(v["error"]["code"], "blocked");
        assert_eq!(v["error"]["policy"], "content-filter");
        assert_eq!(v["error"]["message"], "no");
        let v: serde_json::Value =
            serde_json::from_slice(&block_body(Some(Api::AnthropicMessages), "p", "m")).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["code"], "blocked");
        let resp = blocked(Some(Api::OpenAiChat), "content-filter", "no");
        assert_eq!(resp.status(), 409);
        assert_eq!(resp.headers()["x-should-retry"], "false");
    }

    #[test]
    fn limits_answer_429_with_retry_after_in_each_dialect() {
        use crate::policy::limits::Limit;
        let refusal = |limit| Refusal {
            limit,
            retry_after_secs: 17,
            message: "slow down".into(),
        };
        let resp = limited(
            Some(Api::OpenAiChat),
            "rl",
            &refusal(Limit::RequestsPerMinute),
        );
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()["retry-after"], "17");
        assert!(
            !resp.headers().contains_key("x-should-retry"),
            "a rate limit is worth retrying after its wait"
        );
        let resp = limited(None, "b", &refusal(Limit::UsdPerDay));
        assert_eq!(resp.headers()["retry-after"], "17");
        assert_eq!(resp.headers()["x-should-retry"], "false");
        let body = |api, limit| -> serde_json::Value {
            let resp = limited(api, "p", &refusal(limit));
            let bytes = futures_util::FutureExt::now_or_never(http_body_util::BodyExt::collect(
                resp.into_body(),
            ))
            .unwrap()
            .unwrap()
            .to_bytes();
            serde_json::from_slice(&bytes).unwrap()
        };
        let v = body(Some(Api::OpenAiChat), Limit::TokensPerMinute);
        assert_eq!(v["error"]["type"], "rate_limit_exceeded");
        assert_eq!(v["error"]["code"], "rate_limited");
        assert_eq!(v["error"]["policy"], "p");
        assert_eq!(v["error"]["message"], "slow down");
        let v = body(None, Limit::UsdPerMonth);
        assert_eq!(v["error"]["type"], "budget_exceeded");
        assert_eq!(v["error"]["code"], "budget_exceeded");
        let v = body(Some(Api::AnthropicMessages), Limit::UsdPerDay);
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "rate_limit_error");
        assert_eq!(v["error"]["code"], "budget_exceeded");
    }

    #[test]
    fn stream_frames_are_complete_events() {
        for api in [
            None,
            Some(Api::OpenAiChat),
            Some(Api::AnthropicMessages),
            Some(Api::OpenAiResponses),
            Some(Api::Sourcegraph),
        ] {
            let f = stream_block_frame(api, "p", "m");
            assert!(f.ends_with(b"\n\n"), "{api:?}");
            let text = std::str::from_utf8(&f).unwrap();
            let data = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
            serde_json::from_str::<serde_json::Value>(data).unwrap();
        }
    }
}
