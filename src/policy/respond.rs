//! Policy outcomes on the wire, in the client's API dialect: the `409`
//! block response and the final SSE event that ends a blocked stream.

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
    json_response(StatusCode::CONFLICT, block_body(api, policy, message))
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
    let mut resp = Response::new(body::full(body));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
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
