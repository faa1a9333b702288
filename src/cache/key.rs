//! The cache key: what makes two LLM requests "the same", hashed with
//! SHA-256 over a canonical form that does not depend on key order, on
//! insignificant whitespace or on how strings were escaped, so it is stable
//! across processes, restarts and replicas.
//!
//! Numbers are hashed as sent (`1` and `1.0` are different requests: a
//! provider may treat them differently, and re-printing floats is where
//! other gateways lost determinism). Top-level fields that differ on every
//! call without changing the answer (request ids, the `user` tag,
//! `metadata`) are left out; `stream_options` stays, as it changes what a
//! stream carries (`include_usage` adds the usage chunk).

use crate::llm::family::Family;
use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

/// Top-level request fields that never change the answer.
const VOLATILE: &[&str] = &["user", "metadata", "request_id", "requestId"];

/// The same for OpenAI Responses, whose response object repeats the
/// request's `user` and `metadata`: there they are part of the answer.
const VOLATILE_RESPONSES: &[&str] = &["request_id", "requestId"];

/// Query parameters that carry credentials, not request meaning (Gemini's
/// `?key=`): tenancy is the scope's job, and a key must never be hashed
/// into something that could be logged.
const CREDENTIAL_PARAMS: &[&str] = &["key"];

/// Request headers that select an API version or behaviour, so they are
/// part of the key.
const VERSION_HEADERS: &[&str] = &["anthropic-version", "anthropic-beta"];

/// A 32-byte SHA-256 cache key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key(pub [u8; 32]);

impl Key {
    /// Lower-case hex, 64 characters.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 16 hex digits: enough to tell entries apart in headers and
    /// logs.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..8])
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.short())
    }
}

/// The body could not be canonicalised (it is not JSON).
#[derive(Debug, thiserror::Error)]
#[error("request body is not JSON: {0}")]
pub struct KeyError(#[from] serde_json::Error);

/// Everything about a request that goes into its key.
#[derive(Debug, Clone, Copy)]
pub struct KeyParts<'a> {
    pub provider: &'a str,
    /// The request's API shape, where kt knows it.
    pub family: Option<Family>,
    /// `https` (else `http`) to the upstream.
    pub tls: bool,
    /// Without its port.
    pub host: &'a str,
    /// The upstream's port, stated even when it is the scheme's default:
    /// another scheme or port is another server.
    pub port: u16,
    pub method: &'a str,
    /// Path and query as sent (normalised here).
    pub path_and_query: &'a str,
    pub headers: &'a http::HeaderMap,
    pub stream: bool,
    pub scope: &'a str,
    /// The output-phase policies that check the answer, in chain order: a
    /// hit skips them, so exchanges they would treat differently must not
    /// share an entry.
    pub output_policies: &'a [&'a str],
    pub body: &'a [u8],
}

/// Computes the key of a request.
pub fn key(parts: &KeyParts<'_>) -> Result<Key, KeyError> {
    let mut h = Sha256::new();
    // Versioned, so a change of the canonical form never reads old entries.
    h.update(b"kt-cache-key-v3");
    field(&mut h, parts.provider.as_bytes());
    field(&mut h, if parts.tls { b"https" } else { b"http" });
    field(&mut h, normalise_host(parts.host).as_bytes());
    field(&mut h, parts.port.to_string().as_bytes());
    field(&mut h, parts.method.as_bytes());
    let (path, query) = parts
        .path_and_query
        .split_once('?')
        .unwrap_or((parts.path_and_query, ""));
    field(&mut h, normalise_path(path).as_bytes());
    field(&mut h, normalise_query(query).as_bytes());
    for name in VERSION_HEADERS {
        // Every line, in order: clients send each beta flag on its own
        // line as often as in one list.
        let mut value = Vec::new();
        for (i, v) in parts.headers.get_all(*name).iter().enumerate() {
            if i > 0 {
                value.push(b',');
            }
            value.extend_from_slice(v.as_bytes().trim_ascii());
        }
        field(&mut h, &value);
    }
    field(&mut h, if parts.stream { b"1" } else { b"0" });
    field(&mut h, parts.scope.as_bytes());
    // Counted, so the names cannot run into the body's field.
    h.update((parts.output_policies.len() as u64).to_le_bytes());
    for name in parts.output_policies {
        field(&mut h, name.as_bytes());
    }
    let mut body = Vec::with_capacity(parts.body.len());
    let volatile = match parts.family {
        Some(Family::OpenAiResponses) => VOLATILE_RESPONSES,
        _ => VOLATILE,
    };
    canonical(parts.body, &mut body, volatile)?;
    field(&mut h, &body);
    Ok(Key(h.finalize().into()))
}

/// A length-prefixed field, so no two field lists hash alike.
fn field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

/// Lower case, without a trailing dot.
fn normalise_host(host: &str) -> Cow<'_, str> {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// Repeated slashes collapsed and a trailing slash dropped; the model
/// segment of paths that carry one (Gemini, Azure, Copilot) stays.
fn normalise_path(path: &str) -> Cow<'_, str> {
    let trimmed = match path.strip_suffix('/') {
        Some(p) if !p.is_empty() => p,
        _ => path,
    };
    if !trimmed.contains("//") {
        return Cow::Borrowed(trimmed);
    }
    let mut out = String::with_capacity(trimmed.len());
    for c in trimmed.chars() {
        if c == '/' && out.ends_with('/') {
            continue;
        }
        out.push(c);
    }
    Cow::Owned(out)
}

/// Parameters sorted (so their order does not matter), credentials left
/// out. `api-version` (Azure, Sourcegraph) and `alt=sse` (Gemini) stay:
/// they change the answer's shape.
fn normalise_query(query: &str) -> String {
    let mut params: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| {
            let name = p.split_once('=').map_or(*p, |(n, _)| n);
            !CREDENTIAL_PARAMS.contains(&name)
        })
        .collect();
    params.sort_unstable();
    params.join("&")
}

#[derive(Deserialize)]
struct BorrowedKey<'a>(#[serde(borrow)] Cow<'a, str>);

/// Writes the canonical form of the JSON value in `raw` to `out`: objects
/// with keys sorted by their decoded text (duplicates: the last wins, as in
/// most parsers), strings re-escaped minimally, numbers and literals as
/// sent, no whitespace. The fields named in `drop` are left out of the
/// outermost object.
pub(crate) fn canonical(raw: &[u8], out: &mut Vec<u8>, drop: &[&str]) -> Result<(), KeyError> {
    let text = raw.trim_ascii();
    match text.first() {
        Some(b'{') => {
            let map: BTreeMap<BorrowedKey<'_>, &RawValue> = serde_json::from_slice(text)?;
            out.push(b'{');
            let mut first = true;
            for (k, v) in &map {
                if drop.contains(&k.0.as_ref()) {
                    continue;
                }
                if !first {
                    out.push(b',');
                }
                first = false;
                serde_json::to_writer(&mut *out, k.0.as_ref())?;
                out.push(b':');
                canonical(v.get().as_bytes(), out, &[])?;
            }
            out.push(b'}');
        }
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_slice(text)?;
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical(v.get().as_bytes(), out, &[])?;
            }
            out.push(b']');
        }
        Some(b'"') => {
            let s: BorrowedKey<'_> = serde_json::from_slice(text)?;
            serde_json::to_writer(&mut *out, s.0.as_ref())?;
        }
        _ => {
            // A number or literal: validated, then kept exactly as sent.
            let _: &RawValue = serde_json::from_slice(text)?;
            out.extend_from_slice(text);
        }
    }
    Ok(())
}

impl PartialEq for BorrowedKey<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl Eq for BorrowedKey<'_> {}
impl PartialOrd for BorrowedKey<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for BorrowedKey<'_> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

/// Why a request is never cached, from its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uncacheable {
    /// `n` > 1 or `temperature` > 0: the caller asked for varied answers.
    Sampling,
    /// `previous_response_id`, `conversation`, `background` or `store:
    /// true` (which a Responses request means unless it says `false`): the
    /// answer depends on (or creates) state at the provider.
    Stateful,
}

impl Uncacheable {
    pub fn as_str(self) -> &'static str {
        match self {
            Uncacheable::Sampling => "nondeterministic",
            Uncacheable::Stateful => "stateful",
        }
    }
}

#[derive(Deserialize)]
struct Knobs<'a> {
    #[serde(default)]
    n: Option<f64>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(borrow, default)]
    previous_response_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    conversation: Option<&'a RawValue>,
    #[serde(default)]
    background: Option<bool>,
    #[serde(default)]
    store: Option<bool>,
    /// Gemini's sampling knobs, in either of the spellings its API takes.
    #[serde(default, rename = "generationConfig", alias = "generation_config")]
    generation: Option<GenerationConfig>,
}

#[derive(Deserialize)]
struct GenerationConfig {
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default, rename = "candidateCount", alias = "candidate_count")]
    candidate_count: Option<f64>,
}

fn not_null(v: Option<&RawValue>) -> bool {
    v.is_some_and(|v| v.get().trim() != "null")
}

/// Checks the request fields that rule caching out. A temperature that is
/// absent counts as not stated: clients that want determinism say 0, and
/// treating every chat without one as random would cache nothing.
pub fn uncacheable(
    body: &[u8],
    family: Option<Family>,
    allow_nondeterministic: bool,
) -> Result<(), Uncacheable> {
    // Bodies that do not parse this way (e.g. `store` not a bool) were
    // already canonicalised as JSON; a field of an unexpected type is left
    // to the provider.
    let Ok(k) = serde_json::from_slice::<Knobs<'_>>(body) else {
        return Ok(());
    };
    // A Responses request is stored at the provider unless it says not:
    // answered from the cache, it would never be stored, and the client
    // would continue from a response made for another request.
    let store = k.store.unwrap_or(family == Some(Family::OpenAiResponses));
    let stateful = not_null(k.previous_response_id)
        || not_null(k.conversation)
        || k.background == Some(true)
        || store;
    if stateful {
        return Err(Uncacheable::Stateful);
    }
    let (gen_t, gen_n) = k
        .generation
        .map_or((None, None), |g| (g.temperature, g.candidate_count));
    let sampling =
        k.n.or(gen_n).is_some_and(|n| n > 1.0) || k.temperature.or(gen_t).is_some_and(|t| t > 0.0);
    if sampling && !allow_nondeterministic {
        return Err(Uncacheable::Sampling);
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn canon(s: &str) -> String {
        let mut out = Vec::new();
        canonical(s.as_bytes(), &mut out, VOLATILE).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn parts<'a>(body: &'a [u8], headers: &'a http::HeaderMap) -> KeyParts<'a> {
        KeyParts {
            provider: "openai",
            family: Some(Family::OpenAiChat),
            tls: true,
            host: "api.openai.com",
            port: 443,
            method: "POST",
            path_and_query: "/v1/chat/completions",
            headers,
            stream: false,
            scope: "team:default",
            output_policies: &[],
            body,
        }
    }

    #[test]
    fn canonical_form_sorts_keys_and_keeps_numbers_as_sent() {
        assert_eq!(
            canon(r#" { "b" : [1, 2.50, {"z":null,"a":true}], "a" : "x" } "#),
            r#"{"a":"x","b":[1,2.50,{"a":true,"z":null}]}"#
        );
        assert_ne!(canon(r#"{"t":1}"#), canon(r#"{"t":1.0}"#));
        // Escapes that spell the same string are the same string.
        assert_eq!(canon(r#"{"k":"\u0041\/"}"#), canon(r#"{"k":"A/"}"#));
        assert_eq!(canon(r#"{"\u0062":1,"a":2}"#), r#"{"a":2,"b":1}"#);
    }

    #[test]
    fn volatile_fields_are_dropped_only_at_the_top() {
        assert_eq!(
            canon(
                r#"{"user":"u1","metadata":{"user_id":"x"},"request_id":"r","m":{"user":"kept"}}"#
            ),
            r#"{"m":{"user":"kept"}}"#
        );
    }

    #[test]
    fn invalid_json_is_an_error() {
        let mut out = Vec::new();
        assert!(canonical(b"{\"a\":", &mut out, VOLATILE).is_err());
        assert!(canonical(b"nope", &mut out, VOLATILE).is_err());
        assert!(canonical(b"", &mut out, VOLATILE).is_err());
    }

    #[test]
    fn the_key_is_stable_across_processes() {
        // A fixed vector, computed independently (Python hashlib over the
        // same length-prefixed fields): if this changes, every stored entry
        // (Redis shared by replicas of different versions) silently stops
        // matching, so the change must bump the version prefix on purpose.
        let h = http::HeaderMap::new();
        let body = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
        let k = key(&parts(body, &h)).unwrap();
        assert_eq!(
            k.hex(),
            "457a144c24c87f598e997905a466770e2d70d14bd0837f4544dc3ca1840a3af3"
        );
    }

    #[test]
    fn key_ignores_order_whitespace_and_volatile_fields() {
        let h = http::HeaderMap::new();
        let a = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"user":"a"}"#;
        let b = br#"{ "messages" : [ {"content":"hi","role":"user"} ] , "model":"gpt-4o", "user":"b", "metadata":{"x":"1"}}"#;
        assert_eq!(key(&parts(a, &h)).unwrap(), key(&parts(b, &h)).unwrap());
    }

    /// `stream_options` changes what a stream carries (`include_usage`
    /// adds the usage chunk), and a Responses answer repeats the request's
    /// `user` and `metadata`: these are in the key.
    #[test]
    fn fields_the_answer_depends_on_stay_in_the_key() {
        let h = http::HeaderMap::new();
        let a = br#"{"model":"gpt-4o","messages":[],"stream":true}"#;
        let b = br#"{"model":"gpt-4o","messages":[],"stream":true,"stream_options":{"include_usage":true}}"#;
        assert_ne!(key(&parts(a, &h)).unwrap(), key(&parts(b, &h)).unwrap());
        let responses = |body| KeyParts {
            family: Some(Family::OpenAiResponses),
            path_and_query: "/v1/responses",
            ..parts(body, &h)
        };
        let a = br#"{"model":"gpt-4o","input":"hi","store":false,"metadata":{"t":"1"}}"#;
        let b = br#"{"model":"gpt-4o","input":"hi","store":false,"metadata":{"t":"2"}}"#;
        assert_ne!(key(&responses(a)).unwrap(), key(&responses(b)).unwrap());
        let a = br#"{"model":"gpt-4o","input":"hi","store":false,"user":"a"}"#;
        let b = br#"{"model":"gpt-4o","input":"hi","store":false,"user":"b"}"#;
        assert_ne!(key(&responses(a)).unwrap(), key(&responses(b)).unwrap());
    }

    #[test]
    fn every_part_changes_the_key() {
        let h = http::HeaderMap::new();
        let body = br#"{"model":"gpt-4o","messages":[]}"#;
        let base = key(&parts(body, &h)).unwrap();
        let mut versioned = http::HeaderMap::new();
        versioned.insert("anthropic-version", "2023-06-01".parse().unwrap());
        let variants = [
            KeyParts {
                provider: "azure-openai",
                ..parts(body, &h)
            },
            KeyParts {
                host: "other.example",
                ..parts(body, &h)
            },
            KeyParts {
                tls: false,
                ..parts(body, &h)
            },
            KeyParts {
                port: 8443,
                ..parts(body, &h)
            },
            KeyParts {
                tls: false,
                port: 80,
                ..parts(body, &h)
            },
            KeyParts {
                method: "PUT",
                ..parts(body, &h)
            },
            KeyParts {
                path_and_query: "/v1/completions",
                ..parts(body, &h)
            },
            KeyParts {
                path_and_query: "/v1/chat/completions?api-version=2024-10-21",
                ..parts(body, &h)
            },
            KeyParts {
                stream: true,
                ..parts(body, &h)
            },
            KeyParts {
                scope: "team:other",
                ..parts(body, &h)
            },
            KeyParts {
                body: br#"{"model":"gpt-4o-mini","messages":[]}"#,
                ..parts(body, &h)
            },
            KeyParts {
                headers: &versioned,
                ..parts(body, &h)
            },
            KeyParts {
                output_policies: &["secret-redaction"],
                ..parts(body, &h)
            },
        ];
        for v in variants {
            assert_ne!(key(&v).unwrap(), base, "{v:?}");
        }
    }

    #[test]
    fn every_anthropic_beta_line_is_in_the_key() {
        let body = br#"{}"#;
        let mut one = http::HeaderMap::new();
        one.append("anthropic-beta", "tools-2024-04-04".parse().unwrap());
        let mut two = one.clone();
        two.append("anthropic-beta", "pdfs-2024-09-25".parse().unwrap());
        let mut listed = http::HeaderMap::new();
        listed.insert(
            "anthropic-beta",
            "tools-2024-04-04,pdfs-2024-09-25".parse().unwrap(),
        );
        let k = |h: &http::HeaderMap| key(&parts(body, h)).unwrap();
        assert_ne!(k(&one), k(&two));
        assert_eq!(k(&two), k(&listed));
    }

    #[test]
    fn output_policy_lists_never_run_together() {
        let h = http::HeaderMap::new();
        let body = br#"{}"#;
        let k = |output_policies: &'static [&'static str]| {
            key(&KeyParts {
                output_policies,
                ..parts(body, &h)
            })
            .unwrap()
        };
        assert_ne!(k(&["a", "b"]), k(&["ab"]));
        assert_ne!(k(&["a", "b"]), k(&["b", "a"]));
        assert_ne!(k(&[]), k(&[""]));
    }

    #[test]
    fn path_and_query_are_normalised() {
        let h = http::HeaderMap::new();
        let body = br#"{}"#;
        let k = |p: &'static str, host: &'static str| {
            key(&KeyParts {
                path_and_query: p,
                host,
                ..parts(body, &h)
            })
            .unwrap()
        };
        let base = k(
            "/v1beta/models/gemini-2.0:generateContent?alt=sse&x=1",
            "api.openai.com",
        );
        assert_eq!(
            base,
            k(
                "/v1beta//models/gemini-2.0:generateContent/?x=1&alt=sse&key=SECRET",
                "API.openai.com."
            )
        );
        assert_ne!(
            base,
            k(
                "/v1beta/models/gemini-2.5:generateContent?alt=sse&x=1",
                "api.openai.com"
            )
        );
    }

    #[test]
    fn sampling_and_stateful_requests_are_not_cacheable() {
        assert_eq!(uncacheable(br#"{"temperature":0}"#, None, false), Ok(()));
        assert_eq!(uncacheable(br#"{"messages":[]}"#, None, false), Ok(()));
        assert_eq!(
            uncacheable(br#"{"n":1,"temperature":0.0}"#, None, false),
            Ok(())
        );
        assert_eq!(
            uncacheable(br#"{"temperature":0.7}"#, None, false),
            Err(Uncacheable::Sampling)
        );
        assert_eq!(
            uncacheable(br#"{"n":2}"#, None, false),
            Err(Uncacheable::Sampling)
        );
        assert_eq!(
            uncacheable(br#"{"n":2,"temperature":1}"#, None, true),
            Ok(())
        );
        assert_eq!(
            uncacheable(br#"{"previous_response_id":"resp_1"}"#, None, true),
            Err(Uncacheable::Stateful)
        );
        assert_eq!(
            uncacheable(br#"{"previous_response_id":null}"#, None, false),
            Ok(())
        );
        assert_eq!(
            uncacheable(br#"{"store":true}"#, None, true),
            Err(Uncacheable::Stateful)
        );
        assert_eq!(uncacheable(br#"{"store":false}"#, None, false), Ok(()));
        // Responses stores unless told not to; conversations and
        // background runs live at the provider.
        let responses = Some(Family::OpenAiResponses);
        assert_eq!(
            uncacheable(br#"{"input":"hi"}"#, responses, false),
            Err(Uncacheable::Stateful)
        );
        assert_eq!(
            uncacheable(br#"{"input":"hi","store":false}"#, responses, false),
            Ok(())
        );
        assert_eq!(
            uncacheable(
                br#"{"store":false,"conversation":"conv_1"}"#,
                responses,
                false
            ),
            Err(Uncacheable::Stateful)
        );
        assert_eq!(
            uncacheable(br#"{"store":false,"background":true}"#, responses, false),
            Err(Uncacheable::Stateful)
        );
        assert_eq!(
            uncacheable(br#"{"messages":[]}"#, Some(Family::OpenAiChat), false),
            Ok(())
        );
        // Gemini's sampling knobs sit in `generationConfig`.
        let gemini = Some(Family::Gemini);
        for body in [
            br#"{"generationConfig":{"temperature":0.9}}"#.as_slice(),
            br#"{"generationConfig":{"candidateCount":2}}"#,
            br#"{"generation_config":{"candidate_count":3}}"#,
        ] {
            assert_eq!(uncacheable(body, gemini, false), Err(Uncacheable::Sampling));
        }
        assert_eq!(
            uncacheable(br#"{"generationConfig":{"temperature":0}}"#, gemini, false),
            Ok(())
        );
    }
}
