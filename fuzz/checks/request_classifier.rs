//! `llm::recognize::classify_with` and the body readers behind it, on a
//! request derived from the input.
//!
//! Input layout, HTTP-like, lines split on `\n`: `METHOD [PROVIDER]`, the
//! host, the path and query, then `name: value` header lines up to an empty
//! line, then the body (raw bytes). Invalid methods become `POST`, invalid
//! header lines are skipped.
//!
//! Checks: no panic in classification, `request_meta`, the family's prompt,
//! output and stream pointer walks, or `response_usage` for every family;
//! only a POST is inspected.

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use keeptrusts::llm::family::Family;
use keeptrusts::llm::inspect::{request_meta, response_usage};
use keeptrusts::llm::json_text::{visit_strings, Selector};
use keeptrusts::llm::recognize::{classify_with, Provider};

fn next_line<'a>(rest: &mut &'a [u8]) -> &'a [u8] {
    match rest.iter().position(|&b| b == b'\n') {
        Some(i) => {
            let line = &rest[..i];
            *rest = &rest[i + 1..];
            line
        }
        None => std::mem::take(rest),
    }
}

/// Runs the checks on one input; panics on a violation.
pub fn run(data: &[u8]) {
    let mut rest = data;
    let first = String::from_utf8_lossy(next_line(&mut rest)).into_owned();
    let (method, provider) = first.split_once(' ').unwrap_or((first.as_str(), ""));
    let method = Method::from_bytes(method.as_bytes()).unwrap_or(Method::POST);
    let provider = Provider::parse(provider);
    let host = String::from_utf8_lossy(next_line(&mut rest)).into_owned();
    let path = String::from_utf8_lossy(next_line(&mut rest)).into_owned();
    let mut headers = HeaderMap::new();
    loop {
        let line = next_line(&mut rest);
        if line.is_empty() {
            break;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            headers.append(n, v);
        }
    }
    let body = rest;

    let c = classify_with(provider, &host, &method, &path, &headers);
    assert!(!c.inspect() || method == Method::POST, "{c:?} for {method}");
    let _ = (
        c.provider().as_str(),
        c.endpoint().as_str(),
        c.api().map(|a| a.as_str()),
    );
    let _ = (c.model(), c.stream_hint(), c.autocomplete());

    if let Ok(meta) = request_meta(body) {
        let _ = (meta.model(&c), meta.streams(&c));
    }
    if let Some(family) = c.family() {
        for set in [
            family.prompt_pointers(),
            family.output_pointers(),
            family.stream_pointers(),
        ] {
            let _ = visit_strings(body, Selector::Pointers(set), |path, s| {
                let _ = (path.to_pointer(), s.len());
            });
        }
    }
    for family in Family::ALL {
        let _ = response_usage(family, body);
    }
}
