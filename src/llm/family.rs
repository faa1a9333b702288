//! The wire families of LLM bodies and where each keeps its text: JSON
//! Pointer patterns for prompt text, output text (whole response and per
//! stream event), how its stream ends, and where usage lives.
//!
//! A family is the body *shape*; several providers share one (Mistral,
//! Azure, Copilot and Cody's `/.api/llm` all speak OpenAI chat).

use crate::llm::json_text::PointerSet;
use std::sync::LazyLock;

/// The body shapes kt understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// OpenAI Chat Completions (`/chat/completions`).
    OpenAiChat,
    /// Legacy completions with `prompt`/`suffix` (`/v1/completions`,
    /// Copilot ghost text `/v1/engines/*/completions`).
    OpenAiCompletions,
    /// `/fim/completions` (Mistral, Codestral, Continue): a completions-style
    /// request (`prompt`, `suffix`) answered in chat shape.
    FimChatShaped,
    /// OpenAI Responses (`/responses`).
    OpenAiResponses,
    /// Anthropic Messages (`/v1/messages`).
    AnthropicMessages,
    /// Gemini `generateContent` / `streamGenerateContent`.
    Gemini,
    /// Sourcegraph Cody `/.api/completions/{stream,code}` (`speaker`/`text`).
    Sourcegraph,
    /// Embeddings (OpenAI `/embeddings`, Gemini `embedContent`).
    Embeddings,
}

/// How a family's SSE stream signals its normal end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// A `data: [DONE]` frame.
    DoneSentinel,
    /// An event of this type (the `event:` name, or the data's `type`).
    Event(&'static str),
    /// Nothing: the stream ends when the connection closes.
    ConnectionClose,
    /// The family does not stream.
    NotStreamed,
}

impl Family {
    pub const ALL: [Family; 8] = [
        Family::OpenAiChat,
        Family::OpenAiCompletions,
        Family::FimChatShaped,
        Family::OpenAiResponses,
        Family::AnthropicMessages,
        Family::Gemini,
        Family::Sourcegraph,
        Family::Embeddings,
    ];

    /// The family's name in the research table (§1.9), for logs and tests.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::OpenAiChat => "openai_chat",
            Family::OpenAiCompletions => "openai_completions",
            Family::FimChatShaped => "fim_chatshaped",
            Family::OpenAiResponses => "openai_responses",
            Family::AnthropicMessages => "anthropic_messages",
            Family::Gemini => "gemini",
            Family::Sourcegraph => "sourcegraph",
            Family::Embeddings => "embeddings",
        }
    }

    /// Patterns of the request strings a prompt policy (redaction, content
    /// filter) must scan.
    ///
    /// Beyond the research table: array forms of fields that may be a string
    /// or a list (`/prompt/*`, `/input/*`, `/extra/context/*`), Responses
    /// messages whose `content` is a plain string, Anthropic `tool_result`
    /// content and Sourcegraph `context_file` content, because agents and
    /// IDEs put whole file contents (and so secrets) there; the arguments
    /// of earlier tool calls (a JSON string in OpenAI's shapes, an object
    /// in Anthropic's `tool_use.input` and Gemini's `functionCall.args`,
    /// read to every string leaf), Gemini's `functionResponse.response`,
    /// Anthropic text documents (`source.type` `text` or `content`; base64
    /// sources are images and PDFs, never read) and the tools'
    /// descriptions, which the model reads as prompt too.
    pub fn prompt_patterns(self) -> &'static [&'static str] {
        match self {
            Family::OpenAiChat => &[
                "/messages/*/content",
                "/messages/*/content/*/text",
                "/messages/*/tool_calls/*/function/arguments",
                "/tools/*/function/description",
            ],
            Family::OpenAiCompletions => &[
                "/prompt",
                "/prompt/*",
                "/suffix",
                "/extra/context",
                "/extra/context/*",
            ],
            Family::FimChatShaped => &["/prompt", "/suffix"],
            Family::OpenAiResponses => &[
                "/instructions",
                "/input",
                "/input/*/content",
                "/input/*/content/*/text",
                "/input/*/output",
                "/input/*/output/*/text",
                "/input/*/arguments",
                "/tools/*/description",
            ],
            Family::AnthropicMessages => &[
                "/system",
                "/system/*/text",
                "/messages/*/content",
                "/messages/*/content/*/text",
                "/messages/*/content/*/content",
                "/messages/*/content/*/content/*/text",
                "/messages/*/content/*/input/**",
                "/messages/*/content/*/source[type=text]/data",
                "/messages/*/content/*/source/content",
                "/messages/*/content/*/source/content/*/text",
                "/messages/*/content/*/content/*/source[type=text]/data",
                "/tools/*/description",
            ],
            // Google's JSON parser takes each field in proto (snake_case)
            // as well as JSON (camelCase) spelling: both are read.
            Family::Gemini => &[
                "/contents/*/parts/*/text",
                "/contents/*/parts/*/functionCall/args/**",
                "/contents/*/parts/*/function_call/args/**",
                "/contents/*/parts/*/functionResponse/response/**",
                "/contents/*/parts/*/function_response/response/**",
                "/systemInstruction/parts/*/text",
                "/system_instruction/parts/*/text",
                "/tools/*/functionDeclarations/*/description",
                "/tools/*/function_declarations/*/description",
            ],
            Family::Sourcegraph => &[
                "/messages/*/text",
                "/messages/*/content/*/text",
                "/messages/*/content/*/content",
            ],
            Family::Embeddings => &[
                "/input",
                "/input/*",
                "/content/parts/*/text",
                "/requests/*/content/parts/*/text",
            ],
        }
    }

    /// Patterns of the output text in a whole (non-streamed) response,
    /// with the arguments of the tool calls the model makes (a JSON string,
    /// or an object read to every string leaf).
    pub fn output_patterns(self) -> &'static [&'static str] {
        match self {
            Family::OpenAiChat | Family::FimChatShaped => &[
                "/choices/*/message/content",
                "/choices/*/message/tool_calls/*/function/arguments",
            ],
            Family::OpenAiCompletions => &["/choices/*/text"],
            Family::OpenAiResponses => &["/output/*/content/*/text", "/output/*/arguments"],
            Family::AnthropicMessages => &["/content/*/text", "/content/*/input/**"],
            // `:streamGenerateContent` without `alt=sse` answers the
            // stream's chunks as one JSON array: the same paths, one down.
            Family::Gemini => &[
                "/candidates/*/content/parts/*/text",
                "/candidates/*/content/parts/*/functionCall/args/**",
                "/*/candidates/*/content/parts/*/text",
                "/*/candidates/*/content/parts/*/functionCall/args/**",
            ],
            Family::Sourcegraph => &["/completion"],
            Family::Embeddings => &[],
        }
    }

    /// Patterns of the output text inside one stream event's `data` JSON.
    ///
    /// For Responses and Anthropic they apply only to text-delta events
    /// (`response.output_text.delta`, `content_block_delta` with
    /// `text_delta`); for Sourcegraph `/deltaText` is incremental while
    /// `/completion` (api-version < 2) is the whole text so far.
    /// `stream::for_each_delta` applies those conditions.
    pub fn stream_patterns(self) -> &'static [&'static str] {
        match self {
            Family::OpenAiChat | Family::FimChatShaped => &["/choices/*/delta/content"],
            Family::OpenAiCompletions => &["/choices/*/text"],
            Family::OpenAiResponses => &["/delta"],
            Family::AnthropicMessages => &["/delta/text"],
            // A function call comes whole in one event, `args` an object:
            // its strings are read like text, kept apart in the window.
            Family::Gemini => &[
                "/candidates/*/content/parts/*/text",
                "/candidates/*/content/parts/*/functionCall/args/**",
            ],
            Family::Sourcegraph => &["/deltaText", "/completion"],
            Family::Embeddings => &[],
        }
    }

    /// Patterns of the whole text inside the stream events that repeat
    /// what the deltas before them carried (`stream::whole_text` tells
    /// which): Responses' `….done` events and the response object of
    /// `response.completed`; Anthropic's `content_block_start` and
    /// `message_start`, whose blocks may come whole (a server tool's
    /// result).
    pub fn stream_whole_patterns(self) -> &'static [&'static str] {
        match self {
            Family::OpenAiResponses => &[
                "/text",
                "/refusal",
                "/arguments",
                "/part/text",
                "/part/refusal",
                "/item/content/*/text",
                "/item/content/*/refusal",
                "/item/arguments",
                "/response/output/*/content/*/text",
                "/response/output/*/content/*/refusal",
                "/response/output/*/arguments",
            ],
            Family::AnthropicMessages => &[
                "/content_block/text",
                "/content_block/input/**",
                "/message/content/*/text",
                "/message/content/*/input/**",
            ],
            _ => &[],
        }
    }

    /// Patterns of the tool-call arguments inside one stream event's `data`
    /// JSON: pieces of JSON text that concatenate per tool call (OpenAI chat
    /// `tool_calls` deltas, Responses `response.function_call_arguments.delta`,
    /// Anthropic `input_json_delta`). `stream::tool_arguments` tells
    /// which events carry them (for Responses, `/delta` only in those).
    pub fn stream_tool_patterns(self) -> &'static [&'static str] {
        match self {
            Family::OpenAiChat | Family::FimChatShaped => {
                &["/choices/*/delta/tool_calls/*/function/arguments"]
            }
            Family::OpenAiResponses => &["/delta"],
            Family::AnthropicMessages => &["/delta/partial_json"],
            _ => &[],
        }
    }

    /// Where usage lives in a whole response, and in the stream events that
    /// carry it (OpenAI: the last chunk, only with `include_usage`; Responses:
    /// `response.completed`; Anthropic: `message_start` then `message_delta`).
    pub fn usage_patterns(self) -> &'static [&'static str] {
        match self {
            Family::OpenAiChat
            | Family::OpenAiCompletions
            | Family::FimChatShaped
            | Family::Sourcegraph
            | Family::Embeddings => &["/usage"],
            Family::OpenAiResponses => &["/usage", "/response/usage"],
            Family::AnthropicMessages => &["/usage", "/message/usage"],
            Family::Gemini => &["/usageMetadata"],
        }
    }

    /// How this family's stream ends.
    pub fn stream_end(self) -> StreamEnd {
        match self {
            Family::OpenAiChat | Family::OpenAiCompletions | Family::FimChatShaped => {
                StreamEnd::DoneSentinel
            }
            Family::OpenAiResponses => StreamEnd::Event("response.completed"),
            Family::AnthropicMessages => StreamEnd::Event("message_stop"),
            Family::Sourcegraph => StreamEnd::Event("done"),
            Family::Gemini => StreamEnd::ConnectionClose,
            Family::Embeddings => StreamEnd::NotStreamed,
        }
    }

    /// [`Family::prompt_patterns`], compiled once.
    pub fn prompt_pointers(self) -> &'static PointerSet {
        &compiled()[self.slot()].prompt
    }

    /// [`Family::output_patterns`], compiled once.
    pub fn output_pointers(self) -> &'static PointerSet {
        &compiled()[self.slot()].output
    }

    /// [`Family::stream_patterns`], compiled once.
    pub fn stream_pointers(self) -> &'static PointerSet {
        &compiled()[self.slot()].stream
    }

    /// [`Family::stream_whole_patterns`], compiled once.
    pub fn stream_whole_pointers(self) -> &'static PointerSet {
        &compiled()[self.slot()].stream_whole
    }

    /// [`Family::stream_tool_patterns`], compiled once.
    pub fn stream_tool_pointers(self) -> &'static PointerSet {
        &compiled()[self.slot()].stream_tool
    }

    fn slot(self) -> usize {
        self as usize
    }
}

struct Compiled {
    prompt: PointerSet,
    output: PointerSet,
    stream: PointerSet,
    stream_tool: PointerSet,
    stream_whole: PointerSet,
}

fn compiled() -> &'static [Compiled; 8] {
    static SETS: LazyLock<[Compiled; 8]> = LazyLock::new(|| {
        // The tables above are constants checked by `tables_compile`; an
        // empty set could only result from editing them without running tests.
        Family::ALL.map(|f| Compiled {
            prompt: PointerSet::new(f.prompt_patterns()).unwrap_or_default(),
            output: PointerSet::new(f.output_patterns()).unwrap_or_default(),
            stream: PointerSet::new(f.stream_patterns()).unwrap_or_default(),
            stream_tool: PointerSet::new(f.stream_tool_patterns()).unwrap_or_default(),
            stream_whole: PointerSet::new(f.stream_whole_patterns()).unwrap_or_default(),
        })
    });
    &SETS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_compile_in_slot_order() {
        for (i, f) in Family::ALL.into_iter().enumerate() {
            assert_eq!(f.slot(), i, "{f:?}");
            assert_eq!(f.prompt_pointers().len(), f.prompt_patterns().len());
            assert_eq!(f.output_pointers().len(), f.output_patterns().len());
            assert_eq!(f.stream_pointers().len(), f.stream_patterns().len());
            assert_eq!(
                f.stream_tool_pointers().len(),
                f.stream_tool_patterns().len()
            );
            assert_eq!(
                f.stream_whole_pointers().len(),
                f.stream_whole_patterns().len()
            );
            assert!(!f.prompt_patterns().is_empty(), "{f:?}");
            assert!(!f.usage_patterns().is_empty(), "{f:?}");
            PointerSet::new(f.usage_patterns()).unwrap();
        }
    }

    #[test]
    fn names_are_distinct() {
        let names: std::collections::HashSet<_> = Family::ALL.iter().map(|f| f.as_str()).collect();
        assert_eq!(names.len(), Family::ALL.len());
    }
}
