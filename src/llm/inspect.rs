//! Reads the few fields policies need from LLM bodies without building a
//! JSON tree: a request's `model` and `stream`, and a response's token usage
//! normalised across families.
//!
//! [`json_scan`](super::json_scan) finds the top-level members by jumping
//! over everything else (prompts and answers are mostly one long string);
//! serde_json reads only the wanted values, borrowing the model name unless
//! it contains escapes.

use crate::llm::family::Family;
use crate::llm::json_scan;
use crate::llm::json_text::JsonTextError;
use crate::llm::recognize::Classification;
use serde::Deserialize;
use std::borrow::Cow;

/// A body is not the JSON its family should have.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("invalid JSON body: {0}")]
    Json(#[from] serde_json::Error),
    #[error("invalid JSON body: {0}")]
    Structure(#[from] JsonTextError),
}

impl InspectError {
    /// Stable snake_case label for events and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            InspectError::Json(_) | InspectError::Structure(_) => "invalid_json",
        }
    }
}

/// Reads one `T` from the start of `rest` (what follows it is not looked at).
fn value<'d, T: Deserialize<'d>>(rest: &'d [u8]) -> Result<T, serde_json::Error> {
    T::deserialize(&mut serde_json::Deserializer::from_slice(rest))
}

/// The request fields that routing, caching and audit need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestMeta<'a> {
    /// `/model`; absent in Gemini bodies and Copilot ghost text (the path
    /// names the model there, see `Classification::model`).
    pub model: Option<Cow<'a, str>>,
    /// `/stream`; `None` when the body does not say.
    pub stream: Option<bool>,
}

impl<'a> RequestMeta<'a> {
    /// The model of the exchange: the one the path names (Azure deployment,
    /// Gemini model, Copilot engine) when there is one, else the body's.
    pub fn model<'s>(&'s self, c: &Classification<'s>) -> Option<&'s str> {
        c.model().or(self.model.as_deref())
    }

    /// Whether the response streams: the body's `stream` when present (Cody
    /// posts non-streaming requests to `/stream` too), else the path's hint,
    /// else no.
    pub fn streams(&self, c: &Classification<'_>) -> bool {
        self.stream.or(c.stream_hint()).unwrap_or(false)
    }
}

/// Deserializes an optional string, borrowing it from the input when it has
/// no escapes. (`#[serde(borrow)]` alone does not reach through `Option`, so
/// `Option<Cow<str>>` would always allocate.)
pub(crate) fn opt_cow<'de: 'a, 'a, D>(d: D) -> Result<Option<Cow<'a, str>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    struct Borrowed<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(Option::<Borrowed<'a>>::deserialize(d)?.map(|b| b.0))
}

/// Reads `model` and `stream` from a request body of any family; every
/// other member is skipped (the body must be a well-formed object). A
/// member given twice counts the last time, as the providers' parsers
/// (JavaScript's, Python's, Go's) take it: pricing and budgets must see the
/// model that serves the request. A `stream` that is not a boolean says
/// nothing.
pub fn request_meta(body: &[u8]) -> Result<RequestMeta<'_>, InspectError> {
    let mut meta = RequestMeta::default();
    let (mut model, mut stream) = (None, None);
    json_scan::members(body, &["model", "stream"], |i, rest| match i {
        0 => model = Some(rest),
        _ => stream = Some(rest),
    })?;
    if let Some(rest) = model {
        meta.model = opt_cow(&mut serde_json::Deserializer::from_slice(rest))?;
    }
    if let Some(rest) = stream {
        meta.stream = value(rest).unwrap_or(None);
    }
    Ok(meta)
}

/// More tokens than any one exchange uses (the largest context windows
/// hold a few million). A count beyond is a broken or hostile upstream's:
/// it is cut to this, so that sums of counts cannot overflow and one answer
/// cannot claim a budget's worth of tokens forever.
pub const MAX_TOKENS: u64 = 1_000_000_000;

/// `n` cut to [`MAX_TOKENS`].
fn clamp(n: Option<u64>) -> Option<u64> {
    n.map(|n| n.min(MAX_TOKENS))
}

/// Token counts as the provider reported them. A field the provider did not
/// send is `None` ("not measured"), never 0.
///
/// `tokens_in` follows the OpenAI convention: every prompt token, cached or
/// not. Anthropic reports cached tokens apart from `input_tokens`, so for it
/// `tokens_in` = input + cache read + cache write, and `cached_in` /
/// `cache_write` keep the parts for pricing. `tokens_out` includes reasoning
/// tokens (Gemini reports them apart; they are added).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub tokens_in: Option<u64>,
    pub tokens_out: Option<u64>,
    /// Prompt tokens served from the provider's prompt cache.
    pub cached_in: Option<u64>,
    /// Prompt tokens written to the provider's prompt cache (Anthropic).
    pub cache_write: Option<u64>,
}

impl Usage {
    /// True when no count is known.
    pub fn is_empty(&self) -> bool {
        *self == Usage::default()
    }

    /// Every count cut to [`MAX_TOKENS`].
    pub fn clamped(self) -> Usage {
        Usage {
            tokens_in: clamp(self.tokens_in),
            tokens_out: clamp(self.tokens_out),
            cached_in: clamp(self.cached_in),
            cache_write: clamp(self.cache_write),
        }
    }

    /// Folds a later report in: a field it carries replaces the earlier one
    /// (stream usage is cumulative: Anthropic's `message_delta`, Gemini's
    /// per-chunk `usageMetadata`).
    pub fn merge(&mut self, later: Usage) {
        self.tokens_in = later.tokens_in.or(self.tokens_in);
        self.tokens_out = later.tokens_out.or(self.tokens_out);
        self.cached_in = later.cached_in.or(self.cached_in);
        self.cache_write = later.cache_write.or(self.cache_write);
    }
}

/// Every spelling of usage counts the families use; one struct keeps the
/// parsing in one place.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct UsageWire {
    // OpenAI chat / completions / embeddings, Sourcegraph.
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    prompt_tokens_details: Option<CachedDetails>,
    // OpenAI Responses, Anthropic.
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    input_tokens_details: Option<CachedDetails>,
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    // Gemini `usageMetadata`.
    #[serde(rename = "promptTokenCount")]
    prompt_token_count: Option<u64>,
    #[serde(rename = "candidatesTokenCount")]
    candidates_token_count: Option<u64>,
    #[serde(rename = "thoughtsTokenCount")]
    thoughts_token_count: Option<u64>,
    #[serde(rename = "cachedContentTokenCount")]
    cached_content_token_count: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
struct CachedDetails {
    cached_tokens: Option<u64>,
}

impl UsageWire {
    pub(crate) fn normalise(&self, family: Family) -> Usage {
        match family {
            Family::AnthropicMessages => {
                let parts = [
                    self.input_tokens,
                    self.cache_read_input_tokens,
                    self.cache_creation_input_tokens,
                ];
                // A `message_delta` may carry only `output_tokens`: then the
                // input is unknown here, not zero.
                // Saturating: the counts are the upstream's to choose.
                let tokens_in = self.input_tokens.map(|_| {
                    parts
                        .iter()
                        .flatten()
                        .fold(0u64, |sum, &n| sum.saturating_add(n))
                });
                Usage {
                    tokens_in,
                    tokens_out: self.output_tokens,
                    cached_in: self.cache_read_input_tokens,
                    cache_write: self.cache_creation_input_tokens,
                }
            }
            Family::Gemini => Usage {
                tokens_in: self.prompt_token_count,
                tokens_out: match (self.candidates_token_count, self.thoughts_token_count) {
                    (None, None) => None,
                    (a, b) => Some(a.unwrap_or(0).saturating_add(b.unwrap_or(0))),
                },
                cached_in: self.cached_content_token_count,
                cache_write: None,
            },
            _ => Usage {
                tokens_in: self.prompt_tokens.or(self.input_tokens),
                tokens_out: self.completion_tokens.or(self.output_tokens),
                cached_in: self
                    .prompt_tokens_details
                    .as_ref()
                    .or(self.input_tokens_details.as_ref())
                    .and_then(|d| d.cached_tokens),
                cache_write: None,
            },
        }
        .clamped()
    }
}

/// Usage of a whole (non-streamed) response body: the top-level `usage`
/// (`usageMetadata` for Gemini); `Ok(None)` when the body reports none.
pub fn response_usage(family: Family, body: &[u8]) -> Result<Option<Usage>, InspectError> {
    let key = match family {
        Family::Gemini => "usageMetadata",
        _ => "usage",
    };
    if family == Family::Gemini && json_scan::is_array(body) {
        return array_usage(family, key, body);
    }
    let mut at = None;
    json_scan::members(body, &[key], |_, rest| {
        at.get_or_insert(rest);
    })?;
    let wire: Option<UsageWire> = match at {
        Some(rest) => value(rest)?,
        None => None,
    };
    Ok(wire.map(|w| w.normalise(family)).filter(|u| !u.is_empty()))
}

/// Usage of Gemini's `:streamGenerateContent` answered without `alt=sse`:
/// one JSON array of the chunks an event stream would carry. Their
/// `usageMetadata` is cumulative, so each report is folded in as a
/// stream's is and the last one's counts stand.
fn array_usage(family: Family, key: &str, body: &[u8]) -> Result<Option<Usage>, InspectError> {
    let mut reports = Vec::new();
    json_scan::element_members(body, &[key], |_, rest| reports.push(rest))?;
    let mut usage = Usage::default();
    for rest in reports {
        if let Some(wire) = value::<Option<UsageWire>>(rest)? {
            usage.merge(wire.normalise(family));
        }
    }
    Ok(Some(usage).filter(|u| !u.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_meta_borrows_and_skips_the_rest() {
        let body = br#"{"messages":[{"role":"user","content":"x \"y\""}],"model":"gpt-4o","stream":true,"n":1}"#;
        let m = request_meta(body).unwrap();
        assert!(matches!(m.model, Some(Cow::Borrowed("gpt-4o"))));
        assert_eq!(m.stream, Some(true));

        let m = request_meta(br#"{"contents":[]}"#).unwrap();
        assert_eq!(m, RequestMeta::default());

        let m = request_meta(br#"{"model":"a\/b","stream":null}"#).unwrap();
        assert_eq!(m.model.as_deref(), Some("a/b"));
        assert_eq!(m.stream, None);

        // Given twice, the last counts, as the provider reads it; a stream
        // flag that is no boolean loses nothing else.
        let m =
            request_meta(br#"{"model":"gpt-4o-mini","stream":"true","model":"gpt-4o"}"#).unwrap();
        assert_eq!(m.model.as_deref(), Some("gpt-4o"));
        assert_eq!(m.stream, None);
    }

    #[test]
    fn path_and_body_combine() {
        use crate::llm::recognize::classify;
        let h = http::HeaderMap::new();
        let post = http::Method::POST;
        let azure = classify(
            "r.openai.azure.com",
            &post,
            "/openai/deployments/prod-4o/chat/completions?api-version=2024-10-21",
            &h,
        );
        let m = request_meta(br#"{"model":"gpt-4o","messages":[]}"#).unwrap();
        assert_eq!(
            (m.model(&azure), m.streams(&azure)),
            (Some("prod-4o"), false)
        );

        let openai = classify("api.openai.com", &post, "/v1/chat/completions", &h);
        let m = request_meta(br#"{"model":"gpt-4o","stream":true}"#).unwrap();
        assert_eq!(
            (m.model(&openai), m.streams(&openai)),
            (Some("gpt-4o"), true)
        );

        let gemini = classify(
            "generativelanguage.googleapis.com",
            &post,
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            &h,
        );
        let m = request_meta(br#"{"contents":[]}"#).unwrap();
        assert_eq!(
            (m.model(&gemini), m.streams(&gemini)),
            (Some("gemini-2.5-flash"), true)
        );

        let cody = classify("sourcegraph.com", &post, "/.api/completions/stream", &h);
        let m =
            request_meta(br#"{"model":"anthropic::2024-10-22::claude","stream":false}"#).unwrap();
        assert_eq!(
            (m.model(&cody), m.streams(&cody)),
            (Some("anthropic::2024-10-22::claude"), false)
        );
    }

    #[test]
    fn request_meta_rejects_bad_bodies() {
        for body in [&b""[..], b"{", b"[1]", br#"{"model":3}"#] {
            let e = request_meta(body).unwrap_err();
            assert_eq!(e.kind(), "invalid_json");
        }
    }

    #[test]
    fn usage_per_family() {
        let openai = br#"{"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15,"prompt_tokens_details":{"cached_tokens":4}}}"#;
        assert_eq!(
            response_usage(Family::OpenAiChat, openai).unwrap(),
            Some(Usage {
                tokens_in: Some(10),
                tokens_out: Some(5),
                cached_in: Some(4),
                cache_write: None
            })
        );
        let anthropic = br#"{"usage":{"input_tokens":3,"cache_read_input_tokens":100,"cache_creation_input_tokens":20,"output_tokens":7}}"#;
        assert_eq!(
            response_usage(Family::AnthropicMessages, anthropic).unwrap(),
            Some(Usage {
                tokens_in: Some(123),
                tokens_out: Some(7),
                cached_in: Some(100),
                cache_write: Some(20)
            })
        );
        let gemini = br#"{"usageMetadata":{"promptTokenCount":8,"candidatesTokenCount":12,"thoughtsTokenCount":30}}"#;
        let u = response_usage(Family::Gemini, gemini).unwrap().unwrap();
        assert_eq!((u.tokens_in, u.tokens_out), (Some(8), Some(42)));

        let embeddings = br#"{"data":[],"usage":{"prompt_tokens":9,"total_tokens":9}}"#;
        let u = response_usage(Family::Embeddings, embeddings)
            .unwrap()
            .unwrap();
        assert_eq!((u.tokens_in, u.tokens_out), (Some(9), None));
    }

    #[test]
    fn missing_usage_is_none_not_zero() {
        for (f, body) in [
            (Family::OpenAiCompletions, &br#"{"choices":[]}"#[..]),
            (Family::OpenAiChat, br#"{"usage":null}"#),
            (Family::Sourcegraph, br#"{"completion":"x","usage":{}}"#),
            (Family::Gemini, br#"{"usage":{"prompt_tokens":1}}"#),
        ] {
            assert_eq!(response_usage(f, body).unwrap(), None, "{f:?}");
        }
    }

    /// A hostile upstream's counts neither overflow (a panic in a debug
    /// build, a wrap in release) nor pass the clamp.
    #[test]
    fn huge_counts_saturate_and_are_clamped() {
        let max = u64::MAX;
        let anthropic = format!(
            r#"{{"usage":{{"input_tokens":{max},"cache_read_input_tokens":{max},"cache_creation_input_tokens":5,"output_tokens":{max}}}}}"#
        );
        let u = response_usage(Family::AnthropicMessages, anthropic.as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(
            u,
            Usage {
                tokens_in: Some(MAX_TOKENS),
                tokens_out: Some(MAX_TOKENS),
                cached_in: Some(MAX_TOKENS),
                cache_write: Some(5),
            }
        );
        let gemini = format!(
            r#"{{"usageMetadata":{{"promptTokenCount":{max},"candidatesTokenCount":{max},"thoughtsTokenCount":{max}}}}}"#
        );
        let u = response_usage(Family::Gemini, gemini.as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(
            (u.tokens_in, u.tokens_out),
            (Some(MAX_TOKENS), Some(MAX_TOKENS))
        );
        let openai = format!(r#"{{"usage":{{"prompt_tokens":{max},"completion_tokens":7}}}}"#);
        let u = response_usage(Family::OpenAiChat, openai.as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!((u.tokens_in, u.tokens_out), (Some(MAX_TOKENS), Some(7)));
    }

    #[test]
    fn merge_keeps_earlier_fields() {
        let mut u = Usage {
            tokens_in: Some(5),
            tokens_out: Some(1),
            ..Usage::default()
        };
        u.merge(Usage {
            tokens_out: Some(9),
            ..Usage::default()
        });
        assert_eq!((u.tokens_in, u.tokens_out), (Some(5), Some(9)));
    }
}
