//! What one SSE event of an LLM stream means for its family: the normal end
//! of the stream, output text deltas, usage, and errors reported after the
//! HTTP 200; plus [`StreamTally`], which folds a whole stream into text,
//! usage and outcome for the audit log.
//!
//! Each helper parses the event's `data` with serde into a struct naming
//! only the fields it reads (strings borrowed when unescaped), and skips
//! parsing entirely when the event name or a substring check shows the event
//! is irrelevant: most events of a long stream are plain text deltas.

use crate::llm::family::{Family, StreamEnd};
use crate::llm::inspect::{opt_cow, InspectError, Usage, UsageWire};
use crate::llm::json_text::PointerSet;
use crate::llm::sse::SseEvent;
use serde::Deserialize;
use std::borrow::Cow;

/// A substring searcher for a fixed needle, built once: `memmem::find`
/// builds one per call, which costs more than searching a short event.
macro_rules! finder {
    ($needle:expr) => {{
        static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
            std::sync::LazyLock::new(|| memchr::memmem::Finder::new($needle));
        &*FINDER
    }};
}
pub(crate) use finder;

/// Choice / candidate indexes above this are ignored by [`StreamTally`], so
/// a peer cannot make it allocate per index.
pub const MAX_CHOICES: u32 = 128;

/// A piece of output text from one stream event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta<'a> {
    /// The alternative it belongs to (OpenAI choice / Gemini candidate
    /// `index`; 0 for families with one answer). Texts of one index
    /// concatenate in arrival order.
    pub index: u32,
    pub text: Cow<'a, str>,
    /// True when `text` is the whole output so far rather than an increment
    /// (Sourcegraph api-version < 2 `completion`).
    pub snapshot: bool,
}

/// An error the provider reported inside the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamFault {
    /// The provider's error code or type (`overloaded_error`, `server_error`).
    pub code: Option<String>,
    pub message: String,
}

/// Characters of a provider's error message kept in a [`StreamFault::summary`].
const SUMMARY_MESSAGE_MAX: usize = 160;

impl StreamFault {
    /// `code: message` on one line, the message cut short: a reason for
    /// the audit log, whatever the provider put in it.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        if let Some(code) = self.code.as_deref().filter(|c| !c.is_empty()) {
            push_line(&mut out, code, SUMMARY_MESSAGE_MAX);
        }
        let message = self.message.trim();
        if !message.is_empty() {
            if !out.is_empty() {
                out.push_str(": ");
            }
            push_line(&mut out, message, SUMMARY_MESSAGE_MAX);
        }
        if out.is_empty() {
            out.push_str("unspecified");
        }
        out
    }
}

/// Appends at most `max` characters of `text`, control characters (line
/// breaks) as spaces, and `…` when it was cut.
fn push_line(out: &mut String, text: &str, max: usize) {
    let mut chars = text.chars();
    for c in chars.by_ref().take(max) {
        out.push(if c.is_control() { ' ' } else { c });
    }
    if chars.next().is_some() {
        out.push('…');
    }
}

/// The `type` of an event: its `event:` name, else the data's `/type`.
fn event_type(ev: &SseEvent) -> Option<Cow<'_, str>> {
    if let Some(name) = ev.event() {
        return Some(Cow::Borrowed(name));
    }
    #[derive(Deserialize)]
    struct TypeProbe<'a> {
        #[serde(rename = "type", borrow, default, deserialize_with = "opt_cow")]
        ty: Option<Cow<'a, str>>,
    }
    let data = ev.data()?;
    serde_json::from_str::<TypeProbe<'_>>(data).ok()?.ty
}

fn is_done_sentinel(ev: &SseEvent) -> bool {
    ev.data().is_some_and(|d| d.trim() == "[DONE]")
}

/// Where `ev` repeats whole the text earlier deltas carried, the pointers
/// of that text ([`Family::stream_whole_patterns`]); `None` for deltas and
/// for families whose events carry only deltas.
pub fn whole_text(family: Family, ev: &SseEvent) -> Option<&'static PointerSet> {
    let whole = match family {
        Family::OpenAiResponses => !event_type(ev)?.ends_with(".delta"),
        Family::AnthropicMessages => matches!(
            event_type(ev)?.as_ref(),
            "content_block_start" | "message_start"
        ),
        _ => false,
    };
    whole.then(|| family.stream_whole_pointers())
}

/// True when `ev` is the family's normal end of stream (`[DONE]`,
/// `message_stop`, `response.completed`, Sourcegraph `done`). A Responses
/// stream may also end with `response.incomplete` or `response.failed`;
/// those count too ([`stream_fault`] tells a failure apart). Gemini streams
/// have no end event: they end at connection close.
pub fn is_stream_end(family: Family, ev: &SseEvent) -> bool {
    match family.stream_end() {
        StreamEnd::DoneSentinel => is_done_sentinel(ev),
        StreamEnd::Event(_) if family == Family::OpenAiResponses => matches!(
            event_type(ev).as_deref(),
            Some("response.completed" | "response.incomplete" | "response.failed")
        ),
        // Sourcegraph names its events; its `done` data is `{}`.
        StreamEnd::Event(name) if family == Family::Sourcegraph => ev.event() == Some(name),
        StreamEnd::Event(name) => event_type(ev).as_deref() == Some(name),
        StreamEnd::ConnectionClose | StreamEnd::NotStreamed => false,
    }
}

#[derive(Deserialize)]
struct ChoicesChunk<'a> {
    #[serde(borrow, default)]
    choices: Option<Vec<Choice<'a>>>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(default)]
    index: Option<u32>,
    #[serde(borrow, default)]
    delta: Option<ChatDelta<'a>>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    text: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ChatDelta<'a> {
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    content: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct AnthropicDelta<'a> {
    #[serde(borrow, default)]
    delta: Option<AnthropicDeltaBody<'a>>,
}

#[derive(Deserialize)]
struct AnthropicDeltaBody<'a> {
    #[serde(rename = "type", borrow, default, deserialize_with = "opt_cow")]
    ty: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    partial_json: Option<Cow<'a, str>>,
}

/// The tool-call arguments one stream event carries: which call they
/// belong to and how many characters they add.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToolArguments {
    /// The call (OpenAI chat: the first `tool_calls` delta's `index`;
    /// Responses: `output_index`; Anthropic: the content block's `index`;
    /// 0 when the event does not say).
    pub slot: u32,
    /// Characters of arguments: output the model is billed for, which
    /// [`for_each_delta`] leaves out as not text.
    pub chars: u64,
}

/// The tool-call arguments the model streams in `ev` (OpenAI chat
/// `tool_calls` deltas, Responses `response.function_call_arguments.delta`,
/// Anthropic `input_json_delta`), or `None` when it streams none. Events
/// without such a delta cost a substring search. An event past that gate
/// that does not parse as expected is slot 0 with no characters counted,
/// so the policies still read its arguments.
pub fn tool_arguments(family: Family, ev: &SseEvent) -> Option<ToolArguments> {
    let data = ev.data()?;
    let chars = |t: Option<Cow<'_, str>>| t.map_or(0, |t| t.chars().count() as u64);
    let unreadable = ToolArguments { slot: 0, chars: 0 };
    match family {
        Family::OpenAiChat | Family::FimChatShaped => {
            finder!(b"\"tool_calls\"").find(data.as_bytes())?;
            #[derive(Deserialize)]
            struct Chunk<'a> {
                #[serde(borrow, default)]
                choices: Option<Vec<Choice<'a>>>,
            }
            #[derive(Deserialize)]
            struct Choice<'a> {
                #[serde(borrow, default)]
                delta: Option<Delta<'a>>,
            }
            #[derive(Deserialize)]
            struct Delta<'a> {
                #[serde(borrow, default)]
                tool_calls: Option<Vec<Call<'a>>>,
            }
            #[derive(Deserialize)]
            struct Call<'a> {
                #[serde(default)]
                index: Option<u32>,
                #[serde(borrow, default)]
                function: Option<Function<'a>>,
            }
            #[derive(Deserialize)]
            struct Function<'a> {
                #[serde(borrow, default, deserialize_with = "opt_cow")]
                arguments: Option<Cow<'a, str>>,
            }
            // A chunk this cannot read (an `index` of another type) still
            // has its arguments read: which call they belong to is a hint.
            let Ok(chunk) = serde_json::from_str::<Chunk<'_>>(data) else {
                return Some(unreadable);
            };
            let mut calls = chunk
                .choices
                .into_iter()
                .flatten()
                .filter_map(|c| c.delta?.tool_calls)
                .flatten()
                .peekable();
            calls.peek()?;
            let (mut slot, mut n) = (None, 0);
            for call in calls {
                slot = slot.or(call.index);
                n += chars(call.function.and_then(|f| f.arguments));
            }
            Some(ToolArguments {
                slot: slot.unwrap_or(0),
                chars: n,
            })
        }
        Family::OpenAiResponses => {
            finder!(b"function_call_arguments.delta").find(data.as_bytes())?;
            if event_type(ev).as_deref() != Some("response.function_call_arguments.delta") {
                return None;
            }
            #[derive(Deserialize)]
            struct Delta<'a> {
                #[serde(default)]
                output_index: Option<u32>,
                #[serde(borrow, default, deserialize_with = "opt_cow")]
                delta: Option<Cow<'a, str>>,
            }
            let Ok(d) = serde_json::from_str::<Delta<'_>>(data) else {
                return Some(unreadable);
            };
            Some(ToolArguments {
                slot: d.output_index.unwrap_or(0),
                chars: chars(d.delta),
            })
        }
        Family::AnthropicMessages => {
            finder!(b"input_json_delta").find(data.as_bytes())?;
            #[derive(Deserialize)]
            struct Block<'a> {
                #[serde(default)]
                index: Option<u32>,
                #[serde(borrow, default)]
                delta: Option<AnthropicDeltaBody<'a>>,
            }
            let Ok(b) = serde_json::from_str::<Block<'_>>(data) else {
                return Some(unreadable);
            };
            let delta = b.delta?;
            if delta.ty.as_deref() != Some("input_json_delta") {
                return None;
            }
            Some(ToolArguments {
                slot: b.index.unwrap_or(0),
                chars: chars(delta.partial_json),
            })
        }
        _ => None,
    }
}

#[derive(Deserialize)]
struct ResponsesDelta<'a> {
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    delta: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct GeminiChunk<'a> {
    #[serde(borrow, default)]
    candidates: Option<Vec<Candidate<'a>>>,
}

#[derive(Deserialize)]
struct Candidate<'a> {
    #[serde(default)]
    index: Option<u32>,
    #[serde(borrow, default)]
    content: Option<GeminiContent<'a>>,
}

#[derive(Deserialize)]
struct GeminiContent<'a> {
    #[serde(borrow, default)]
    parts: Option<Vec<GeminiPart<'a>>>,
}

#[derive(Deserialize)]
struct GeminiPart<'a> {
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    text: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct SourcegraphCompletion<'a> {
    #[serde(rename = "deltaText", borrow, default, deserialize_with = "opt_cow")]
    delta_text: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_cow")]
    completion: Option<Cow<'a, str>>,
}

/// Calls `f` with each piece of output text in `ev` (the research table's
/// "Output text (stream)"). Events without text (role chunks, pings, usage,
/// tool-call and thinking deltas, `[DONE]`) call nothing. `Err` when the
/// data of a text-bearing event is not the JSON the family uses.
pub fn for_each_delta<'a>(
    family: Family,
    ev: &'a SseEvent,
    mut f: impl FnMut(Delta<'a>),
) -> Result<(), InspectError> {
    let Some(data) = ev.data() else {
        return Ok(());
    };
    if data.is_empty() || is_done_sentinel(ev) {
        return Ok(());
    }
    let append = |index: u32, text: Cow<'a, str>| Delta {
        index,
        text,
        snapshot: false,
    };
    match family {
        Family::OpenAiChat | Family::FimChatShaped | Family::OpenAiCompletions => {
            let chunk: ChoicesChunk<'a> = serde_json::from_str(data)?;
            for c in chunk.choices.into_iter().flatten() {
                let text = if family == Family::OpenAiCompletions {
                    c.text
                } else {
                    c.delta.and_then(|d| d.content)
                };
                if let Some(t) = text.filter(|t| !t.is_empty()) {
                    f(append(c.index.unwrap_or(0), t));
                }
            }
        }
        Family::OpenAiResponses => {
            if event_type(ev).as_deref() == Some("response.output_text.delta") {
                let d: ResponsesDelta<'a> = serde_json::from_str(data)?;
                if let Some(t) = d.delta.filter(|t| !t.is_empty()) {
                    f(append(0, t));
                }
            }
        }
        Family::AnthropicMessages => {
            if event_type(ev).as_deref() == Some("content_block_delta") {
                let d: AnthropicDelta<'a> = serde_json::from_str(data)?;
                let body = d.delta.filter(|b| b.ty.as_deref() == Some("text_delta"));
                if let Some(t) = body.and_then(|b| b.text).filter(|t| !t.is_empty()) {
                    f(append(0, t));
                }
            }
        }
        Family::Gemini => {
            let chunk: GeminiChunk<'a> = serde_json::from_str(data)?;
            for cand in chunk.candidates.into_iter().flatten() {
                let index = cand.index.unwrap_or(0);
                let parts = cand.content.and_then(|c| c.parts).into_iter().flatten();
                for t in parts.filter_map(|p| p.text).filter(|t| !t.is_empty()) {
                    f(append(index, t));
                }
            }
        }
        Family::Sourcegraph => {
            if ev.event() == Some("completion") {
                let c: SourcegraphCompletion<'a> = serde_json::from_str(data)?;
                if let Some(t) = c.delta_text {
                    if !t.is_empty() {
                        f(append(0, t));
                    }
                } else if let Some(t) = c.completion {
                    f(Delta {
                        index: 0,
                        text: t,
                        snapshot: true,
                    });
                }
            }
        }
        Family::Embeddings => {}
    }
    Ok(())
}

/// The usage an event reports, normalised; `Ok(None)` when it reports none.
/// Stream usage is cumulative: fold successive reports with [`Usage::merge`].
pub fn stream_usage(family: Family, ev: &SseEvent) -> Result<Option<Usage>, InspectError> {
    let Some(data) = ev.data() else {
        return Ok(None);
    };
    // Cheap filter: most chunks carry no usage at all.
    if finder!(b"usage").find(data.as_bytes()).is_none() {
        return Ok(None);
    }
    #[derive(Deserialize)]
    struct Top {
        usage: Option<UsageWire>,
    }
    #[derive(Deserialize)]
    struct Gemini {
        #[serde(rename = "usageMetadata")]
        usage_metadata: Option<UsageWire>,
    }
    #[derive(Deserialize)]
    struct Anthropic {
        usage: Option<UsageWire>,
        message: Option<Top>,
    }
    #[derive(Deserialize)]
    struct Responses {
        response: Option<Top>,
    }
    // One small struct per family: fields of the same name mean different
    // things elsewhere (a Responses `error` event has a string `message`).
    let wire = match family {
        Family::Gemini => serde_json::from_str::<Gemini>(data)?.usage_metadata,
        // `message_start` nests it; `message_delta` has it at the top.
        Family::AnthropicMessages => {
            let a: Anthropic = serde_json::from_str(data)?;
            a.usage.or(a.message.and_then(|m| m.usage))
        }
        Family::OpenAiResponses => serde_json::from_str::<Responses>(data)?
            .response
            .and_then(|r| r.usage),
        _ => serde_json::from_str::<Top>(data)?.usage,
    };
    Ok(wire.map(|w| w.normalise(family)).filter(|u| !u.is_empty()))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ErrorField {
    Text(String),
    Object(ErrorObject),
}

#[derive(Deserialize, Default)]
struct ErrorObject {
    #[serde(default)]
    message: Option<String>,
    #[serde(rename = "type", default)]
    ty: Option<String>,
    #[serde(default)]
    code: Option<serde_json::Value>,
    #[serde(default)]
    status: Option<String>,
}

impl ErrorObject {
    fn into_fault(self) -> StreamFault {
        let code = match self.code {
            Some(serde_json::Value::String(s)) => Some(s),
            Some(serde_json::Value::Number(n)) => self.status.or(Some(n.to_string())),
            _ => self.status,
        };
        StreamFault {
            code: code.or(self.ty),
            message: self.message.unwrap_or_default(),
        }
    }
}

/// The error an event reports, if any: Anthropic / Responses / Sourcegraph
/// `error` events, OpenAI-style `{"error":{...}}` chunks (OpenAI, Copilot,
/// Gemini, Mistral), Copilot `copilot_errors`, and `response.failed`.
pub fn stream_fault(family: Family, ev: &SseEvent) -> Option<StreamFault> {
    let _ = family; // The shapes do not collide, so one probe serves all.
    let data = ev.data()?;
    let named = matches!(ev.event(), Some("error" | "response.failed"));
    let bytes = data.as_bytes();
    // Cheap filter: an `"error"` key (inside a string it would read `\"error\"`).
    if !named
        && finder!(b"\"error\"").find(bytes).is_none()
        && finder!(b"copilot_errors").find(bytes).is_none()
        && finder!(b"response.failed").find(bytes).is_none()
    {
        return None;
    }
    #[derive(Deserialize)]
    struct FailedResponse {
        error: Option<ErrorObject>,
    }
    #[derive(Deserialize)]
    struct Probe {
        #[serde(rename = "type")]
        ty: Option<String>,
        error: Option<ErrorField>,
        code: Option<serde_json::Value>,
        message: Option<serde_json::Value>,
        copilot_errors: Option<Vec<ErrorObject>>,
        response: Option<FailedResponse>,
    }
    let Ok(p) = serde_json::from_str::<Probe>(data) else {
        // An `error` event whose data is not JSON still reports an error.
        return named.then(|| StreamFault {
            code: None,
            message: data.to_owned(),
        });
    };
    if let Some(e) = p.error {
        return Some(match e {
            ErrorField::Text(message) => StreamFault {
                code: None,
                message,
            },
            ErrorField::Object(o) => o.into_fault(),
        });
    }
    if let Some(e) = p.copilot_errors.and_then(|v| v.into_iter().next()) {
        return Some(e.into_fault());
    }
    let failed =
        p.ty.as_deref() == Some("response.failed") || ev.event() == Some("response.failed");
    if failed {
        let e = p.response.and_then(|r| r.error).unwrap_or_default();
        return Some(e.into_fault());
    }
    if named || p.ty.as_deref() == Some("error") {
        // Responses `error` event: code and message at the top level.
        return Some(
            ErrorObject {
                message: p.message.and_then(|m| m.as_str().map(str::to_owned)),
                code: p.code,
                ..ErrorObject::default()
            }
            .into_fault(),
        );
    }
    None
}

/// The error a whole (non-streamed) answer is, if it is one: a top-level
/// `error` that is not `null` (OpenAI, Mistral, Gemini, Anthropic's
/// `{"type":"error","error":{...}}`, a failed Responses object). Some
/// providers send such a body with a `200`. Cheap for the usual answer: the
/// body is only scanned when it holds an `"error"` key.
pub fn response_fault(body: &[u8]) -> Option<StreamFault> {
    finder!(b"\"error\"").find(body)?;
    let mut at = None;
    crate::llm::json_scan::members(body, &["error"], |_, rest| {
        at.get_or_insert(rest);
    })
    .ok()?;
    let field = Option::<ErrorField>::deserialize(&mut serde_json::Deserializer::from_slice(at?))
        .ok()??;
    match field {
        ErrorField::Text(message) if message.is_empty() => None,
        ErrorField::Text(message) => Some(StreamFault {
            code: None,
            message,
        }),
        ErrorField::Object(o) => Some(o.into_fault()),
    }
}

/// Folds a stream's events into its output text (per choice), usage, end
/// and first error: what the audit log records for a streamed exchange.
#[derive(Debug, Clone)]
pub struct StreamTally {
    family: Family,
    texts: Vec<String>,
    usage: Usage,
    ended: bool,
    fault: Option<StreamFault>,
    bad_events: u64,
}

impl StreamTally {
    pub fn new(family: Family) -> Self {
        StreamTally {
            family,
            texts: Vec::new(),
            usage: Usage::default(),
            ended: false,
            fault: None,
            bad_events: 0,
        }
    }

    /// Takes one event into account. An event whose data is not the
    /// family's JSON is counted in [`StreamTally::bad_events`], not fatal.
    pub fn observe(&mut self, ev: &SseEvent) {
        if !ev.has_data() {
            return;
        }
        let family = self.family;
        let texts = &mut self.texts;
        let deltas = for_each_delta(family, ev, |d| {
            if d.index >= MAX_CHOICES {
                return;
            }
            let i = d.index as usize;
            if texts.len() <= i {
                texts.resize_with(i + 1, String::new);
            }
            if let Some(t) = texts.get_mut(i) {
                if d.snapshot {
                    t.clear();
                }
                t.push_str(&d.text);
            }
        });
        match stream_usage(family, ev) {
            Ok(Some(u)) => self.usage.merge(u),
            Ok(None) => {}
            Err(_) => self.bad_events += 1,
        }
        if deltas.is_err() {
            self.bad_events += 1;
        }
        if self.fault.is_none() {
            self.fault = stream_fault(family, ev);
        }
        if is_stream_end(family, ev) {
            self.ended = true;
        }
    }

    /// The text of choice `index` so far.
    pub fn text(&self, index: u32) -> &str {
        self.texts.get(index as usize).map_or("", String::as_str)
    }

    /// Number of choices that produced text.
    pub fn choices(&self) -> usize {
        self.texts.len()
    }

    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// True once the family's end-of-stream event was seen.
    pub fn ended(&self) -> bool {
        self.ended
    }

    pub fn fault(&self) -> Option<&StreamFault> {
        self.fault.as_ref()
    }

    /// Events whose data could not be read.
    pub fn bad_events(&self) -> u64 {
        self.bad_events
    }
}

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;
