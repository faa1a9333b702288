//! An incremental Server-Sent Events decoder that keeps each frame's exact
//! bytes, so a pass-through proxy can forward the original frames while a
//! policy reads the decoded `event` and `data` fields.
//!
//! Parsing follows the WHATWG EventSource rules that LLM streams exercise:
//! lines end with `\n`, `\r\n` or `\r`; a field's value loses one leading
//! space; several `data:` lines join with `\n`; lines starting with `:` are
//! comments; a blank line ends a frame. The decoder yields every blank-line
//! terminated frame, including ones without `data` (comment keep-alives,
//! stray blank lines), because their bytes must reach the client too and a
//! keep-alive held back until the next real event would defeat its purpose.
//! Only frames with [`SseEvent::data`] are events in the WHATWG sense.

use bytes::{Bytes, BytesMut};

/// Default cap on one frame's size: big enough for any real LLM chunk.
pub const DEFAULT_MAX_EVENT_SIZE: usize = 1 << 20;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// What can go wrong while decoding a stream.
#[derive(Debug, thiserror::Error)]
pub enum SseError {
    /// One frame grew beyond the configured limit. The decoder stops; the
    /// bytes it still holds are available from [`SseDecoder::take_pending`].
    #[error("SSE event larger than {limit} bytes")]
    EventTooLarge { limit: usize },
    /// The stream ended inside a frame (no closing blank line). The partial
    /// frame carries the trailing bytes and whatever fields they held.
    #[error("stream ended inside an SSE event ({} bytes)", .0.raw().len())]
    Incomplete(Box<SseEvent>),
}

impl SseError {
    /// Stable snake_case label for events and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            SseError::EventTooLarge { .. } => "sse_event_too_large",
            SseError::Incomplete(_) => "sse_incomplete_event",
        }
    }
}

/// A field value: a span of the frame's raw bytes when it is one valid UTF-8
/// run (the common case, no copy), else an owned string.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Text {
    Span(usize, usize),
    Owned(String),
}

/// One frame: its exact bytes plus the fields parsed from them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    raw: Bytes,
    event: Option<Text>,
    data: Option<Text>,
    id: Option<Text>,
    retry: Option<u64>,
}

impl SseEvent {
    /// The frame's exact bytes, from the end of the previous frame up to and
    /// including the blank line that ended this one.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    pub fn into_raw(self) -> Bytes {
        self.raw
    }

    fn text<'a>(&'a self, t: &'a Option<Text>) -> Option<&'a str> {
        match t.as_ref()? {
            Text::Owned(s) => Some(s),
            // Spans are only stored after validating them as UTF-8.
            Text::Span(a, b) => std::str::from_utf8(self.raw.get(*a..*b)?).ok(),
        }
    }

    /// The `event:` field; `None` when absent or empty (the default type
    /// `message` then applies).
    pub fn event(&self) -> Option<&str> {
        self.text(&self.event).filter(|e| !e.is_empty())
    }

    /// The joined `data:` lines; `None` when the frame had no data field
    /// (comments only, a stray blank line): such a frame dispatches no event.
    pub fn data(&self) -> Option<&str> {
        self.text(&self.data)
    }

    /// The `id:` field, if the frame set one.
    pub fn id(&self) -> Option<&str> {
        self.text(&self.id)
    }

    /// The `retry:` field, if the frame set a valid one.
    pub fn retry(&self) -> Option<u64> {
        self.retry
    }

    /// True when the frame carried data, i.e. EventSource would dispatch it.
    pub fn has_data(&self) -> bool {
        self.data.is_some()
    }

    /// The bytes of this frame with its data replaced by `data`: the same
    /// `event:`, `id:` and `retry:` fields, comments dropped, one `data:`
    /// line per line of `data`, ended by a blank line.
    pub fn frame_with_data(&self, data: &str) -> Bytes {
        let mut frame = String::with_capacity(data.len() + 64);
        let mut field = |name: &str, value: &str| {
            frame.push_str(name);
            frame.push_str(": ");
            frame.push_str(value);
            frame.push('\n');
        };
        if let Some(e) = self.event() {
            field("event", e);
        }
        if let Some(i) = self.id() {
            field("id", i);
        }
        if let Some(retry) = self.retry {
            field("retry", &retry.to_string());
        }
        for line in data.split('\n') {
            field("data", line);
        }
        frame.push('\n');
        Bytes::from(frame)
    }

    /// This frame with its data replaced by `data` (see
    /// [`frame_with_data`](SseEvent::frame_with_data)).
    pub fn with_data(&self, data: &str) -> SseEvent {
        SseEvent {
            raw: self.frame_with_data(data),
            event: self.event().map(|e| Text::Owned(e.to_owned())),
            data: Some(Text::Owned(data.to_owned())),
            id: self.id().map(|i| Text::Owned(i.to_owned())),
            retry: self.retry,
        }
    }
}

/// Fields of the frame being parsed; spans are offsets into the buffer,
/// whose start is always the start of this frame.
#[derive(Debug, Default)]
struct Partial {
    event: Option<Text>,
    data: Option<Text>,
    id: Option<Text>,
    retry: Option<u64>,
}

/// Incremental decoder. Feed chunks of any size with [`SseDecoder::feed`],
/// then drain [`SseDecoder::next_event`] until it returns `None`; call
/// [`SseDecoder::finish`] at end of stream and drain once more.
#[derive(Debug)]
pub struct SseDecoder {
    /// Bytes of the current frame (from its first byte) and beyond.
    buf: BytesMut,
    /// Start of the next line not yet parsed.
    line_start: usize,
    /// Where the search for the next line terminator resumes, so feeding a
    /// long line one byte at a time stays linear.
    search_from: usize,
    partial: Partial,
    max_event_size: usize,
    /// Nothing parsed yet: a leading BOM is skipped (WHATWG).
    at_stream_start: bool,
    eof: bool,
    /// Stopped after `EventTooLarge`.
    failed: bool,
}

impl Default for SseDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl SseDecoder {
    /// A decoder with the default 1 MiB frame limit.
    pub fn new() -> Self {
        Self::with_max_event_size(DEFAULT_MAX_EVENT_SIZE)
    }

    /// A decoder that refuses frames longer than `max` bytes.
    pub fn with_max_event_size(max: usize) -> Self {
        SseDecoder {
            buf: BytesMut::new(),
            line_start: 0,
            search_from: 0,
            partial: Partial::default(),
            max_event_size: max,
            at_stream_start: true,
            eof: false,
            failed: false,
        }
    }

    /// Appends a chunk. Ignored after [`SseDecoder::finish`] or after an
    /// `EventTooLarge` error (the caller forwards raw bytes from then on).
    pub fn feed(&mut self, chunk: &[u8]) {
        if !self.eof && !self.failed {
            self.buf.extend_from_slice(chunk);
        }
    }

    /// Marks the end of the stream: the next calls to `next_event` yield the
    /// last complete frames, then `Incomplete` for any trailing bytes.
    pub fn finish(&mut self) {
        self.eof = true;
    }

    /// Bytes held but not yet yielded as a frame.
    pub fn pending_len(&self) -> usize {
        self.buf.len()
    }

    /// Takes the bytes held but not yet yielded (e.g. after `EventTooLarge`,
    /// to forward them unchanged) and resets the frame being parsed.
    pub fn take_pending(&mut self) -> Bytes {
        self.line_start = 0;
        self.search_from = 0;
        self.partial = Partial::default();
        self.buf.split().freeze()
    }

    /// The next complete frame, an error, or `None` when more input is needed.
    pub fn next_event(&mut self) -> Option<Result<SseEvent, SseError>> {
        if self.failed {
            return None;
        }
        loop {
            let hay = self.buf.get(self.search_from..).unwrap_or_default();
            let Some(rel) = memchr::memchr2(b'\n', b'\r', hay) else {
                self.search_from = self.buf.len();
                if self.buf.len() > self.max_event_size {
                    return Some(Err(self.too_large()));
                }
                return self.at_end();
            };
            let line_end = self.search_from + rel;
            let term_len = match (self.buf.get(line_end), self.buf.get(line_end + 1)) {
                (Some(b'\r'), Some(b'\n')) => 2,
                // A `\r` as the last byte may be the first half of `\r\n`:
                // wait for the next byte so every chunking parses alike.
                (Some(b'\r'), None) if !self.eof => {
                    self.search_from = line_end;
                    if self.buf.len() > self.max_event_size {
                        return Some(Err(self.too_large()));
                    }
                    return None;
                }
                _ => 1,
            };
            let next = line_end + term_len;
            if next > self.max_event_size {
                return Some(Err(self.too_large()));
            }
            if line_end == self.line_start {
                return Some(Ok(self.emit(next)));
            }
            self.parse_line(self.line_start, line_end);
            self.line_start = next;
            self.search_from = next;
        }
    }

    fn too_large(&mut self) -> SseError {
        self.failed = true;
        SseError::EventTooLarge {
            limit: self.max_event_size,
        }
    }

    /// At end of input with no further line terminator.
    fn at_end(&mut self) -> Option<Result<SseEvent, SseError>> {
        if !self.eof || self.buf.is_empty() {
            return None;
        }
        // WHATWG discards an unterminated last line and an unfinished event;
        // we still parse them so the caller can see e.g. a final `[DONE]`.
        if self.line_start < self.buf.len() {
            self.parse_line(self.line_start, self.buf.len());
        }
        let len = self.buf.len();
        Some(Err(SseError::Incomplete(Box::new(self.emit(len)))))
    }

    /// Splits the first `len` bytes off as a frame.
    fn emit(&mut self, len: usize) -> SseEvent {
        let partial = std::mem::take(&mut self.partial);
        self.line_start = 0;
        self.search_from = 0;
        self.at_stream_start = false;
        SseEvent {
            raw: self.buf.split_to(len).freeze(),
            event: partial.event,
            data: partial.data,
            id: partial.id,
            retry: partial.retry,
        }
    }

    fn parse_line(&mut self, mut start: usize, end: usize) {
        if std::mem::take(&mut self.at_stream_start)
            && self.buf.get(start..end).is_some_and(|l| l.starts_with(BOM))
        {
            start += BOM.len();
        }
        let Some(line) = self.buf.get(start..end) else {
            return;
        };
        if line.first() == Some(&b':') {
            return; // comment
        }
        let (name, value_start) = match memchr::memchr(b':', line) {
            Some(c) => {
                let v = start + c + 1;
                let v = if self.buf.get(v) == Some(&b' ') && v < end {
                    v + 1
                } else {
                    v
                };
                (line.get(..c).unwrap_or_default(), v)
            }
            None => (line, end),
        };
        let value = self.buf.get(value_start..end).unwrap_or_default();
        match name {
            b"event" => self.partial.event = Some(self.text(value_start, end)),
            b"data" => {
                let value = self.text(value_start, end);
                self.partial.data = Some(match self.partial.data.take() {
                    None => value,
                    // Appended in place: copying the joined lines for each
                    // new one would cost the square of an event's lines.
                    Some(Text::Owned(mut joined)) => {
                        joined.push('\n');
                        joined.push_str(self.resolve(&value));
                        Text::Owned(joined)
                    }
                    Some(prev) => {
                        let mut joined = self.resolve(&prev).to_owned();
                        joined.push('\n');
                        joined.push_str(self.resolve(&value));
                        Text::Owned(joined)
                    }
                });
            }
            // WHATWG ignores an id containing NUL.
            b"id" if !value.contains(&0) => self.partial.id = Some(self.text(value_start, end)),
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                self.partial.retry = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok());
            }
            _ => {}
        }
    }

    fn text(&self, a: usize, b: usize) -> Text {
        let bytes = self.buf.get(a..b).unwrap_or_default();
        match std::str::from_utf8(bytes) {
            Ok(_) => Text::Span(a, b),
            // WHATWG decodes the stream as UTF-8 with replacement characters.
            Err(_) => Text::Owned(String::from_utf8_lossy(bytes).into_owned()),
        }
    }

    fn resolve<'a>(&'a self, t: &'a Text) -> &'a str {
        match t {
            Text::Owned(s) => s,
            Text::Span(a, b) => self
                .buf
                .get(*a..*b)
                .and_then(|s| std::str::from_utf8(s).ok())
                .unwrap_or_default(),
        }
    }
}

#[cfg(test)]
#[path = "sse_tests.rs"]
mod tests;
