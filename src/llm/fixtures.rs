//! The hand-written wire fixtures under `tests/fixtures/llm/`, one set per
//! body family, shared by the unit tests of the `llm` modules.

use crate::llm::family::Family;

macro_rules! fixture {
    ($path:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/llm/",
            $path
        ))
    };
}

/// One family's request, whole response and (when it streams) SSE stream.
pub(crate) struct FamilyFixture {
    pub family: Family,
    pub request: &'static [u8],
    pub response: &'static [u8],
    pub stream: Option<&'static [u8]>,
}

pub(crate) const ALL: [FamilyFixture; 8] = [
    FamilyFixture {
        family: Family::OpenAiChat,
        request: fixture!("openai_chat/request.json"),
        response: fixture!("openai_chat/response.json"),
        stream: Some(fixture!("openai_chat/stream.sse")),
    },
    FamilyFixture {
        family: Family::OpenAiCompletions,
        request: fixture!("openai_completions/request.json"),
        response: fixture!("openai_completions/response.json"),
        stream: Some(fixture!("openai_completions/stream.sse")),
    },
    FamilyFixture {
        family: Family::FimChatShaped,
        request: fixture!("fim_chatshaped/request.json"),
        response: fixture!("fim_chatshaped/response.json"),
        stream: Some(fixture!("fim_chatshaped/stream.sse")),
    },
    FamilyFixture {
        family: Family::OpenAiResponses,
        request: fixture!("openai_responses/request.json"),
        response: fixture!("openai_responses/response.json"),
        stream: Some(fixture!("openai_responses/stream.sse")),
    },
    FamilyFixture {
        family: Family::AnthropicMessages,
        request: fixture!("anthropic_messages/request.json"),
        response: fixture!("anthropic_messages/response.json"),
        stream: Some(fixture!("anthropic_messages/stream.sse")),
    },
    FamilyFixture {
        family: Family::Gemini,
        request: fixture!("gemini/request.json"),
        response: fixture!("gemini/response.json"),
        stream: Some(fixture!("gemini/stream.sse")),
    },
    FamilyFixture {
        family: Family::Sourcegraph,
        request: fixture!("sourcegraph/request.json"),
        response: fixture!("sourcegraph/response.json"),
        stream: Some(fixture!("sourcegraph/stream.sse")),
    },
    FamilyFixture {
        family: Family::Embeddings,
        request: fixture!("embeddings/request.json"),
        response: fixture!("embeddings/response.json"),
        stream: None,
    },
];

/// Anthropic stream cut short by an `overloaded_error` after HTTP 200.
pub(crate) const ANTHROPIC_STREAM_ERROR: &[u8] = fixture!("anthropic_messages/stream_error.sse");

pub(crate) fn get(family: Family) -> &'static FamilyFixture {
    ALL.iter()
        .find(|f| f.family == family)
        .unwrap_or_else(|| panic!("no fixture for {family:?}"))
}

/// Every SSE fixture, named.
pub(crate) fn streams() -> Vec<(&'static str, Family, &'static [u8])> {
    let mut v: Vec<_> = ALL
        .iter()
        .filter_map(|f| f.stream.map(|s| (f.family.as_str(), f.family, s)))
        .collect();
    v.push((
        "anthropic_stream_error",
        Family::AnthropicMessages,
        ANTHROPIC_STREAM_ERROR,
    ));
    v
}
