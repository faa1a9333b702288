//! What kind of body an LLM response carries, from its headers: an event
//! stream, JSON, or compressed (which kt neither inspects nor stores).

use http::header::{self, HeaderMap};

/// True when `content-type` starts with `prefix` (any case), so parameters
/// such as `; charset=utf-8` do not matter.
pub fn content_type_is(headers: &HeaderMap, prefix: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.get(..prefix.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
        })
}

/// A Server-Sent Events stream.
pub fn is_event_stream(headers: &HeaderMap) -> bool {
    content_type_is(headers, "text/event-stream")
}

/// A JSON document.
pub fn is_json(headers: &HeaderMap) -> bool {
    content_type_is(headers, "application/json")
}

/// Compressed with a `content-encoding` other than `identity`.
pub fn is_encoded(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn kinds_from_headers() {
        let mut h = HeaderMap::new();
        assert!(!is_json(&h) && !is_event_stream(&h) && !is_encoded(&h));
        h.insert(
            header::CONTENT_TYPE,
            "Application/JSON; charset=utf-8".parse().unwrap(),
        );
        assert!(is_json(&h));
        h.insert(header::CONTENT_TYPE, "text/event-stream".parse().unwrap());
        assert!(is_event_stream(&h));
        h.insert(header::CONTENT_ENCODING, "identity".parse().unwrap());
        assert!(!is_encoded(&h));
        h.insert(header::CONTENT_ENCODING, "gzip".parse().unwrap());
        assert!(is_encoded(&h));
    }
}
