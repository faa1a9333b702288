//! Watching a response go by, without holding it up, to learn its token
//! usage: the provider's own counts when it reports them, else the amount of
//! output text, from which the caller can estimate.
//!
//! The tap never changes or delays a byte. A JSON body is kept (as cheap
//! `Bytes` clones) only up to a cap and parsed once at its end; a stream is
//! decoded event by event and only the usage-bearing and text-bearing events
//! are parsed.

use super::family::Family;
use super::inspect::{response_usage, Usage};
use super::json_text::{visit_strings, Selector};
use super::sse::{SseDecoder, SseError};
use super::stream::{
    finder, for_each_delta, is_stream_end, response_fault, stream_fault, stream_usage,
    tool_arguments,
};
use bytes::Bytes;

/// Whole JSON answers larger than this are not parsed for usage (usage is
/// then unknown, never zero).
const MAX_JSON: usize = 4 << 20;

/// Stream frames larger than this are skipped. Above the 1 MiB the
/// policies' decoder allows: the Responses API's `response.completed`
/// repeats the whole answer before its usage, so it is as large as the
/// JSON answer would be, which is read up to [`MAX_JSON`].
const MAX_EVENT: usize = MAX_JSON;

/// What a tap learnt once the response ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TapResult {
    /// The provider's counts; empty when it reported none.
    pub usage: Usage,
    /// Characters of output text seen (streams only), for estimating
    /// `tokens_out` when the provider reports no usage.
    pub output_chars: u64,
    /// True when a stream's end-of-stream event was seen.
    pub ended: bool,
    /// Anthropic's `message_start` output count: a placeholder (1) until
    /// `message_delta` reports the real one. It stands in for `usage`'s
    /// `tokens_out` only in a stream that ended normally without one; a
    /// stream cut short keeps it here, as a floor for the estimate.
    pub placeholder_out: Option<u64>,
    /// The error the provider reported in the body of its (2xx) answer: an
    /// error event in the stream, or a JSON answer that is an error. A
    /// short reason for the record, e.g. `upstream stream error:
    /// overloaded_error: Overloaded`.
    pub error: Option<String>,
}

/// Follows one response body. Feed every data chunk in order, then call
/// [`UsageTap::finish`].
#[derive(Debug)]
pub struct UsageTap {
    family: Family,
    kind: Kind,
    result: TapResult,
}

#[derive(Debug)]
enum Kind {
    Stream {
        decoder: SseDecoder,
        /// Chars of the snapshot-style text (Sourcegraph sends the whole
        /// completion so far in each event).
        snapshot_chars: u64,
        /// Stopped reading: the stream ended inside a frame.
        gave_up: bool,
        /// Inside a frame over [`MAX_EVENT`], looking for its end.
        skipping: Option<FrameEnd>,
    },
    Json {
        /// Most answers come in one chunk, kept without a `Vec`.
        first: Option<Bytes>,
        more: Vec<Bytes>,
        len: usize,
    },
}

impl UsageTap {
    /// A tap for a streamed (SSE) response.
    pub fn stream(family: Family) -> Self {
        UsageTap {
            family,
            kind: Kind::Stream {
                decoder: SseDecoder::with_max_event_size(MAX_EVENT),
                snapshot_chars: 0,
                gave_up: false,
                skipping: None,
            },
            result: TapResult::default(),
        }
    }

    /// A tap for a whole JSON response.
    pub fn json(family: Family) -> Self {
        UsageTap {
            family,
            kind: Kind::Json {
                first: None,
                more: Vec::new(),
                len: 0,
            },
            result: TapResult::default(),
        }
    }

    /// Takes in the next chunk of the body.
    pub fn feed(&mut self, chunk: &Bytes) {
        match &mut self.kind {
            Kind::Json { first, more, len } => {
                if *len <= MAX_JSON {
                    *len += chunk.len();
                    if *len > MAX_JSON {
                        *first = None;
                        *more = Vec::new();
                    } else if first.is_none() {
                        *first = Some(chunk.clone());
                    } else {
                        more.push(chunk.clone());
                    }
                }
            }
            Kind::Stream {
                decoder,
                snapshot_chars,
                gave_up,
                skipping,
            } => {
                if *gave_up {
                    return;
                }
                match skipping {
                    None => decoder.feed(chunk),
                    Some(end) => match end.find(chunk) {
                        Some(at) => {
                            *skipping = None;
                            decoder.feed(chunk.get(at..).unwrap_or_default());
                        }
                        None => return,
                    },
                }
                drain(
                    self.family,
                    decoder,
                    &mut self.result,
                    snapshot_chars,
                    gave_up,
                    skipping,
                );
            }
        }
    }

    /// The usage once the body ended (or was cut short).
    pub fn finish(mut self) -> TapResult {
        match &mut self.kind {
            Kind::Json { first, more, len } => {
                if let Some(first) = first.take().filter(|_| *len <= MAX_JSON) {
                    let body = if more.is_empty() {
                        first
                    } else {
                        let mut all = Vec::with_capacity(*len);
                        all.extend_from_slice(&first);
                        for chunk in more.iter() {
                            all.extend_from_slice(chunk);
                        }
                        Bytes::from(all)
                    };
                    if let Some(fault) = response_fault(&body) {
                        self.result.error = Some(format!("upstream error: {}", fault.summary()));
                    }
                    match response_usage(self.family, &body) {
                        Ok(Some(u)) => self.result.usage = u,
                        // No usage: count the answer's text for an estimate.
                        Ok(None) => self.result.output_chars = output_chars(self.family, &body),
                        Err(_) => return self.result,
                    }
                    self.result.ended = true;
                }
            }
            Kind::Stream {
                decoder,
                snapshot_chars,
                gave_up,
                skipping,
            } => {
                // A stream that ends inside a skipped frame has nothing
                // more to read.
                if !*gave_up && skipping.is_none() {
                    decoder.finish();
                    drain(
                        self.family,
                        decoder,
                        &mut self.result,
                        snapshot_chars,
                        gave_up,
                        skipping,
                    );
                }
                self.result.output_chars += *snapshot_chars;
                let r = &mut self.result;
                if r.ended && r.error.is_none() && r.usage.tokens_out.is_none() {
                    r.usage.tokens_out = r.placeholder_out;
                }
            }
        }
        self.result
    }
}

fn drain(
    family: Family,
    decoder: &mut SseDecoder,
    result: &mut TapResult,
    snapshot_chars: &mut u64,
    gave_up: &mut bool,
    skipping: &mut Option<FrameEnd>,
) {
    while let Some(next) = decoder.next_event() {
        let ev = match next {
            Ok(ev) => ev,
            // One frame too large to read loses its own usage, not the
            // rest of the stream's: skip to its end, read on after it.
            Err(SseError::EventTooLarge { .. }) => {
                // The held bytes start at the frame's first byte and may
                // reach past its end; the decoder stops for good, so a
                // fresh one reads what follows.
                let held = decoder.take_pending();
                *decoder = SseDecoder::with_max_event_size(MAX_EVENT);
                let mut end = FrameEnd::default();
                match end.find(&held) {
                    Some(at) => decoder.feed(held.get(at..).unwrap_or_default()),
                    None => {
                        *skipping = Some(end);
                        return;
                    }
                }
                continue;
            }
            // The stream ended inside a frame: nothing more to read.
            Err(SseError::Incomplete(_)) => {
                *gave_up = true;
                return;
            }
        };
        if !ev.has_data() {
            continue;
        }
        // `stream_usage` skips events without the word cheaply.
        if let Ok(Some(mut u)) = stream_usage(family, &ev) {
            if family == Family::AnthropicMessages && is_message_start(&ev) {
                result.placeholder_out = u.tokens_out.take().or(result.placeholder_out);
            }
            result.usage.merge(u);
        }
        // `stream_fault` skips events without an `"error"` key cheaply.
        if result.error.is_none() {
            if let Some(fault) = stream_fault(family, &ev) {
                result.error = Some(format!("upstream stream error: {}", fault.summary()));
            }
        }
        let mut chars = 0u64;
        let mut snapshot = None;
        let _ = for_each_delta(family, &ev, |d| {
            let n = d.text.chars().count() as u64;
            if d.snapshot {
                snapshot = Some(n);
            } else {
                chars += n;
            }
        });
        result.output_chars += chars + tool_arguments(family, &ev).map_or(0, |t| t.chars);
        if let Some(n) = snapshot {
            *snapshot_chars = n;
        }
        if is_stream_end(family, &ev) {
            result.ended = true;
        }
    }
}

/// Where the frame being skipped ends, found across chunks: at its blank
/// line, a line terminator (`\n`, `\r` or `\r\n`) right after another.
#[derive(Debug, Default, Clone, Copy)]
enum FrameEnd {
    #[default]
    InLine,
    AfterLf,
    /// A `\r` ended a line, unless a `\n` follows as its second half.
    AfterCr,
}

impl FrameEnd {
    /// The offset just past the frame's blank line in `bytes`, if it is
    /// there. A `\n` that may follow a blank line's `\r` is left to the
    /// next frame, where it reads as an empty frame (ignored).
    fn find(&mut self, bytes: &[u8]) -> Option<usize> {
        for (i, &b) in bytes.iter().enumerate() {
            *self = match (*self, b) {
                (FrameEnd::AfterCr, b'\n') => FrameEnd::AfterLf,
                (FrameEnd::AfterCr | FrameEnd::AfterLf, b'\n' | b'\r') => return Some(i + 1),
                (_, b'\n') => FrameEnd::AfterLf,
                (_, b'\r') => FrameEnd::AfterCr,
                _ => FrameEnd::InLine,
            };
        }
        None
    }
}

/// Anthropic's first event, whose usage has the input count and a
/// placeholder output count.
fn is_message_start(ev: &super::sse::SseEvent) -> bool {
    match ev.event() {
        Some(name) => name == "message_start",
        None => ev
            .data()
            .is_some_and(|d| finder!(b"\"message_start\"").find(d.as_bytes()).is_some()),
    }
}

/// Characters of output text in a whole JSON answer.
fn output_chars(family: Family, body: &[u8]) -> u64 {
    let mut n = 0u64;
    let _ = visit_strings(
        body,
        Selector::Pointers(family.output_pointers()),
        |_, s| {
            n += s.chars().count() as u64;
        },
    );
    n
}

/// Characters of prompt text in a request body (`None` when it is not the
/// family's JSON).
pub fn prompt_chars(family: Family, body: &[u8]) -> Option<u64> {
    let mut n = 0u64;
    visit_strings(
        body,
        Selector::Pointers(family.prompt_pointers()),
        |_, s| {
            n += s.chars().count() as u64;
        },
    )
    .ok()?;
    Some(n)
}

/// Tokens for `chars` characters of text, by the usual rule of thumb of four
/// characters a token (rounded up; zero only for no text).
pub fn estimate_tokens(chars: u64) -> u64 {
    chars.div_ceil(4)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn run(tap: &mut UsageTap, body: &[u8], step: usize) {
        for piece in body.chunks(step) {
            tap.feed(&Bytes::copy_from_slice(piece));
        }
    }

    const OPENAI_STREAM: &[u8] =
        b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"}}]}\n\n\
data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" world\"}}]}\n\n\
data: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":3}}\n\n\
data: [DONE]\n\n";

    #[test]
    fn stream_usage_is_read_whatever_the_chunking() {
        for step in [1, 3, 7, 40, OPENAI_STREAM.len()] {
            let mut tap = UsageTap::stream(Family::OpenAiChat);
            run(&mut tap, OPENAI_STREAM, step);
            let r = tap.finish();
            assert_eq!(r.usage.tokens_in, Some(12), "step {step}");
            assert_eq!(r.usage.tokens_out, Some(3));
            assert_eq!(r.output_chars, 11);
            assert!(r.ended);
        }
    }

    #[test]
    fn a_stream_without_usage_reports_text_only() {
        let body = b"data: {\"choices\":[{\"index\":0,\"text\":\"fn main\"}]}\n\ndata: [DONE]\n\n";
        let mut tap = UsageTap::stream(Family::OpenAiCompletions);
        run(&mut tap, body, 5);
        let r = tap.finish();
        assert!(r.usage.is_empty());
        assert_eq!(r.output_chars, 7);
        assert_eq!(estimate_tokens(r.output_chars), 2);
    }

    #[test]
    fn anthropic_usage_is_folded_from_start_and_delta() {
        let body = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":20,\"output_tokens\":1}}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":9}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        let mut tap = UsageTap::stream(Family::AnthropicMessages);
        run(&mut tap, body, 11);
        let r = tap.finish();
        assert_eq!(r.usage.tokens_in, Some(20));
        assert_eq!(r.usage.tokens_out, Some(9));
        assert!(r.ended);
    }

    #[test]
    fn a_cut_stream_has_not_ended() {
        let mut tap = UsageTap::stream(Family::OpenAiChat);
        run(&mut tap, &OPENAI_STREAM[..60], 60);
        assert!(!tap.finish().ended);
    }

    /// The Responses API's `response.completed` repeats the whole answer
    /// before its usage: over the policies' 1 MiB frame limit, it is still
    /// read.
    #[test]
    fn a_responses_completed_event_over_a_mebibyte_is_read() {
        let text = "x".repeat(2 << 20);
        let completed = serde_json::json!({"type": "response.completed", "response": {
            "output": [{"type": "message", "content": [{"type": "output_text", "text": text}]}],
            "usage": {"input_tokens": 11, "output_tokens": 524288}}});
        let body = format!(
            "event: response.output_text.delta\ndata: {{\"type\":\"response.output_text.delta\",\"delta\":\"ok\"}}\n\n\
event: response.completed\ndata: {completed}\n\n"
        );
        for step in [4096, 1 << 20, body.len()] {
            let mut tap = UsageTap::stream(Family::OpenAiResponses);
            run(&mut tap, body.as_bytes(), step);
            let r = tap.finish();
            assert_eq!(
                (r.usage.tokens_in, r.usage.tokens_out),
                (Some(11), Some(524288)),
                "step {step}"
            );
            assert!(r.ended, "step {step}");
        }
    }

    /// A frame too large even for the tap loses only itself: the events
    /// after it are read, whatever the line endings and chunking.
    #[test]
    fn a_frame_over_the_cap_is_skipped_not_the_rest_of_the_stream() {
        let pad = "p".repeat(MAX_EVENT + 1);
        for eol in ["\n", "\r\n", "\r"] {
            let body = format!(
                "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"Hello\"}}}}]}}{eol}{eol}\
: keep-alive{eol}data: {{\"pad\":\"{pad}\"}}{eol}{eol}\
data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" world\"}}}}]}}{eol}{eol}\
data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":12,\"completion_tokens\":3}}}}{eol}{eol}\
data: [DONE]{eol}{eol}"
            );
            for step in [4096, 1 << 20, body.len()] {
                let mut tap = UsageTap::stream(Family::OpenAiChat);
                run(&mut tap, body.as_bytes(), step);
                let r = tap.finish();
                let eol = eol.escape_debug();
                assert_eq!(
                    (r.usage.tokens_in, r.usage.tokens_out),
                    (Some(12), Some(3)),
                    "{eol} step {step}"
                );
                assert_eq!(r.output_chars, 11, "{eol} step {step}");
                assert!(r.ended, "{eol} step {step}");
            }
        }
        // Cut inside the oversized frame: what came before stands.
        let body = format!(
            "data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":12,\"completion_tokens\":3}}}}\n\ndata: {pad}"
        );
        let mut tap = UsageTap::stream(Family::OpenAiChat);
        run(&mut tap, body.as_bytes(), 4096);
        let r = tap.finish();
        assert_eq!(
            (r.usage.tokens_in, r.usage.tokens_out, r.ended),
            (Some(12), Some(3), false)
        );
    }

    #[test]
    fn json_usage_is_read_at_the_end() {
        let body = br#"{"id":"x","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":5,"completion_tokens":2}}"#;
        for step in [1, 9, body.len()] {
            let mut tap = UsageTap::json(Family::OpenAiChat);
            run(&mut tap, body, step);
            let r = tap.finish();
            assert_eq!(r.usage.tokens_in, Some(5), "step {step}");
            assert_eq!(r.usage.tokens_out, Some(2));
        }
    }

    #[test]
    fn gemini_stream_as_one_json_array_reports_its_usage() {
        // `:streamGenerateContent` without `alt=sse`: the chunks in an array,
        // usage repeated and cumulative, the last one the total.
        let body = br#"[{"candidates":[{"content":{"role":"model","parts":[{"text":"Hel"}]}}],"usageMetadata":{"promptTokenCount":8,"candidatesTokenCount":3}},
{"candidates":[{"content":{"role":"model","parts":[{"text":"lo"}]},"finishReason":"STOP"}]},
{"usageMetadata":{"promptTokenCount":8,"candidatesTokenCount":12,"totalTokenCount":20}}]"#;
        for step in [1, 17, body.len()] {
            let mut tap = UsageTap::json(Family::Gemini);
            run(&mut tap, body, step);
            let r = tap.finish();
            assert_eq!(
                (r.usage.tokens_in, r.usage.tokens_out),
                (Some(8), Some(12)),
                "step {step}"
            );
            assert!(r.ended);
            assert_eq!(r.error, None);
        }
    }

    #[test]
    fn json_over_the_cap_is_not_parsed() {
        let body = br#"{"usage":{"prompt_tokens":5,"completion_tokens":2},"pad":""#;
        let mut tap = UsageTap::json(Family::OpenAiChat);
        tap.feed(&Bytes::from_static(body));
        let pad = Bytes::from(vec![b'x'; MAX_JSON]);
        tap.feed(&pad);
        tap.feed(&Bytes::from_static(b"\"}"));
        let r = tap.finish();
        assert!(r.usage.is_empty());
        assert!(!r.ended);
    }

    #[test]
    fn json_without_usage_or_malformed_is_unknown_not_zero() {
        for body in [&br#"{"choices":[]}"#[..], b"{not json", b""] {
            let mut tap = UsageTap::json(Family::OpenAiChat);
            run(&mut tap, body, 4);
            assert!(tap.finish().usage.is_empty());
        }
    }

    #[test]
    fn streamed_tool_call_arguments_count_as_output() {
        let streams: [(Family, &[u8]); 3] = [
            (
                Family::OpenAiChat,
                br#"data: {"choices":[{"index":0,"delta":{"role":"assistant","content":"ok","tool_calls":[{"index":0,"id":"c1","type":"function","function":{"name":"lookup","arguments":""}}]}}]}

data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"q\":"}}]}}]}

data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"zeus\"}"}}]}}]}

data: [DONE]

"#,
            ),
            (
                Family::AnthropicMessages,
                br#"event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"ok"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"q\":"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"\"zeus\"}"}}

event: message_stop
data: {"type":"message_stop"}

"#,
            ),
            (
                Family::OpenAiResponses,
                br#"event: response.output_text.delta
data: {"type":"response.output_text.delta","delta":"ok"}

event: response.function_call_arguments.delta
data: {"type":"response.function_call_arguments.delta","delta":"{\"q\":"}

event: response.function_call_arguments.delta
data: {"type":"response.function_call_arguments.delta","delta":"\"zeus\"}"}

event: response.completed
data: {"type":"response.completed","response":{}}

"#,
            ),
        ];
        for (family, body) in streams {
            for step in [1, 7, 4096] {
                let mut tap = UsageTap::stream(family);
                run(&mut tap, body, step);
                let r = tap.finish();
                // "ok" plus the 12 characters of `{"q":"zeus"}`.
                assert_eq!(r.output_chars, 14, "{family:?} step {step}");
                assert!(r.ended, "{family:?}");
            }
        }
    }

    #[test]
    fn json_without_usage_counts_the_answer_text() {
        let body =
            br#"{"choices":[{"index":0,"message":{"role":"assistant","content":"hello there"}}]}"#;
        let mut tap = UsageTap::json(Family::OpenAiChat);
        run(&mut tap, body, 16);
        let r = tap.finish();
        assert!(r.usage.is_empty());
        assert_eq!(r.output_chars, 11);
        assert!(r.ended);
        let req = br#"{"model":"m","messages":[{"role":"user","content":"four"},{"role":"user","content":"five5"}]}"#;
        assert_eq!(prompt_chars(Family::OpenAiChat, req), Some(9));
        assert_eq!(prompt_chars(Family::OpenAiChat, b"nope"), None);
    }

    /// Every family's recorded stream and whole answer, at any chunking,
    /// give the same usage as the parsers do on the whole body.
    #[test]
    fn fixtures_of_every_family_agree_with_the_parsers() {
        use crate::llm::fixtures;
        for fx in fixtures::ALL {
            let whole = response_usage(fx.family, fx.response).unwrap();
            let mut tap = UsageTap::json(fx.family);
            run(&mut tap, fx.response, 13);
            let r = tap.finish();
            assert_eq!(r.error, None, "{:?}", fx.family);
            assert_eq!(
                Some(r.usage).filter(|u| !u.is_empty()),
                whole,
                "{:?}",
                fx.family
            );
            if let Some(stream) = fx.stream {
                for step in [1, 5, 64] {
                    let mut tap = UsageTap::stream(fx.family);
                    run(&mut tap, stream, step);
                    let r = tap.finish();
                    assert_eq!(r.error, None, "{:?}", fx.family);
                    // Gemini has no end event: its streams end at close.
                    assert_eq!(r.ended, fx.family != Family::Gemini, "{:?}", fx.family);
                    if fx.family == Family::OpenAiCompletions {
                        // Ghost text reports no usage: text only, to estimate.
                        assert!(r.usage.is_empty() && r.output_chars > 0);
                    } else {
                        assert_eq!(Some(r.usage), whole, "{:?} step {step}", fx.family);
                    }
                }
            }
        }
    }

    const ANTHROPIC_FAULT: &[u8] = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":20,\"output_tokens\":1}}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n\
event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";

    const OPENAI_FAULT: &[u8] =
        b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n\
data: {\"error\":{\"message\":\"The server had an error while processing your request.\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n";

    /// A provider's error after the 200 head is the tap's to report, at
    /// any chunking; Anthropic's placeholder output count is no usage.
    #[test]
    fn an_error_inside_a_stream_is_reported() {
        for step in [1, 2, 5, 17, 64, 4096] {
            let mut tap = UsageTap::stream(Family::AnthropicMessages);
            run(&mut tap, ANTHROPIC_FAULT, step);
            let r = tap.finish();
            assert_eq!(
                r.error.as_deref(),
                Some("upstream stream error: overloaded_error: Overloaded"),
                "step {step}"
            );
            assert!(!r.ended);
            assert_eq!(r.usage.tokens_in, Some(20));
            assert_eq!(r.usage.tokens_out, None, "the placeholder is no count");

            let mut tap = UsageTap::stream(Family::OpenAiChat);
            run(&mut tap, OPENAI_FAULT, step);
            let r = tap.finish();
            assert_eq!(
                r.error.as_deref(),
                Some("upstream stream error: server_error: The server had an error while processing your request."),
                "step {step}"
            );
        }
        // A stream that ended normally with no `message_delta` keeps the
        // start's count, as before.
        let body = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":20,\"output_tokens\":1}}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        let mut tap = UsageTap::stream(Family::AnthropicMessages);
        run(&mut tap, body, 7);
        let r = tap.finish();
        assert_eq!((r.usage.tokens_out, r.error), (Some(1), None));
    }

    #[test]
    fn a_json_answer_that_is_an_error_is_reported() {
        let cases: [(&[u8], Option<&str>); 5] = [
            (
                br#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#,
                Some("upstream error: rate_limit_exceeded: Rate limit reached"),
            ),
            (
                br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
                Some("upstream error: overloaded_error: Overloaded"),
            ),
            // A successful Responses object carries `"error": null`.
            (
                br#"{"object":"response","status":"completed","error":null,"output":[]}"#,
                None,
            ),
            (
                br#"{"choices":[{"index":0,"message":{"content":"an \"error\": none"}}]}"#,
                None,
            ),
            (br#"{"choices":[],"note":"error"}"#, None),
        ];
        for (body, want) in cases {
            let mut tap = UsageTap::json(Family::OpenAiChat);
            run(&mut tap, body, 9);
            assert_eq!(
                tap.finish().error.as_deref(),
                want,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn estimate_rounds_up() {
        assert_eq!(estimate_tokens(0), 0);
        assert_eq!(estimate_tokens(1), 1);
        assert_eq!(estimate_tokens(8), 2);
        assert_eq!(estimate_tokens(9), 3);
    }
}
