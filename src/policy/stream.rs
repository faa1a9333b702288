//! Output-phase policies on a streamed (SSE) response: frames are decoded
//! as they arrive, their text is checked in a sliding window, and each frame
//! is released as soon as it is known to be clean.
//!
//! A frame is held back only while the text at the end of the stream could
//! still grow into a secret: a trailing word shaped like a token (digits,
//! `_`, `-`, mixed case) or an open `-----BEGIN` block, bounded by the
//! policy's hold-back size. Plain prose is released at once, so the time to
//! first token stays what the provider gives. Secrets split across frames
//! are found because every check runs on the previous text's tail plus the
//! held text.

use super::chain::{Action, Chain};
use super::redact::{placeholder, DEFAULT_HOLDBACK};
use super::respond::stream_block_frame;
use crate::config::FilterAction;
use crate::llm::family::Family;
use crate::llm::json_text::{rewrite_strings, visit_strings, Selector};
use crate::llm::recognize::Api;
use crate::llm::sse::{SseDecoder, SseError, SseEvent};
use crate::llm::stream::is_stream_end;
use bytes::Bytes;
use std::ops::Range;
use std::sync::Arc;

/// Bytes of already released text kept as context for the next checks.
const CONTEXT: usize = 512;
/// Hold-back bound while a PEM block is open.
const PEM_HOLDBACK: usize = 8 * 1024;

/// What the caller does after [`OutputStream::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// A policy ended the stream: send what was returned, then close.
    Stop,
}

/// Something a policy did to the stream, for the exchange's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamNote {
    Redacted {
        policy: Arc<str>,
        kind: Arc<str>,
    },
    Blocked {
        policy: Arc<str>,
        rule: String,
    },
    Logged {
        policy: Arc<str>,
        rule: String,
    },
    /// A frame could not be inspected (too large, not the family's JSON).
    Uninspected {
        reason: &'static str,
    },
}

struct Held {
    ev: SseEvent,
    /// The frame's output strings, in document order; for a snapshot, the
    /// text it adds to the one before.
    texts: Vec<String>,
    snapshot: Option<Snapshot>,
}

/// A frame carrying the whole output so far (Sourcegraph's `completion`
/// before api-version 2): checked as the increment it adds, so a secret
/// split across frames is found once, and released as the whole text the
/// client has been given so far, redactions included, so no frame repeats
/// a secret an earlier one had cut.
struct Snapshot {
    /// The text as the upstream sent it.
    full: String,
    /// It does not continue the frame before: the text starts over.
    restart: bool,
}

struct Replacement {
    range: Range<usize>,
    label: String,
}

/// The output-phase state of one streamed exchange.
pub struct OutputStream {
    chain: Arc<Chain>,
    /// Output-phase redact and content-filter policies, by chain index.
    policies: Vec<usize>,
    family: Family,
    api: Option<Api>,
    decoder: SseDecoder,
    tail: String,
    /// The last snapshot as the upstream sent it, and as released.
    snapshot_seen: String,
    snapshot_out: String,
    held: Vec<Held>,
    held_bytes: usize,
    holdback: usize,
    fail_closed: bool,
    passthrough: bool,
    stopped: bool,
    pub notes: Vec<StreamNote>,
}

impl OutputStream {
    pub fn new(chain: Arc<Chain>, policies: Vec<usize>, family: Family, api: Option<Api>) -> Self {
        let mut holdback = 0;
        let mut fail_closed = false;
        for &i in &policies {
            if let Some(p) = chain.get(i) {
                if let Action::Redact(r) = &p.action {
                    holdback = holdback.max(r.holdback);
                }
                fail_closed |= p.on_error == crate::config::OnError::FailClosed;
            }
        }
        if holdback == 0 {
            holdback = DEFAULT_HOLDBACK;
        }
        OutputStream {
            chain,
            policies,
            family,
            api,
            decoder: SseDecoder::new(),
            tail: String::new(),
            snapshot_seen: String::new(),
            snapshot_out: String::new(),
            held: Vec::new(),
            held_bytes: 0,
            holdback,
            fail_closed,
            passthrough: false,
            stopped: false,
            notes: Vec::new(),
        }
    }

    /// Feeds upstream bytes; frames to send now are appended to `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<Bytes>) -> Flow {
        if self.stopped {
            return Flow::Stop;
        }
        if self.passthrough {
            out.push(Bytes::copy_from_slice(chunk));
            return Flow::Continue;
        }
        self.decoder.feed(chunk);
        while let Some(next) = self.decoder.next_event() {
            match next {
                Ok(ev) => {
                    if self.on_event(ev, out) == Flow::Stop {
                        return Flow::Stop;
                    }
                }
                Err(e) => return self.on_decode_error(&e, out),
            }
        }
        Flow::Continue
    }

    /// The upstream ended: releases what is held (checked once more).
    pub fn finish(&mut self, out: &mut Vec<Bytes>) {
        if self.stopped || self.passthrough {
            return;
        }
        if self.release(true, out) == Flow::Stop {
            return;
        }
        let rest = self.decoder.take_pending();
        if !rest.is_empty() {
            out.push(rest);
        }
    }

    fn on_decode_error(&mut self, e: &SseError, out: &mut Vec<Bytes>) -> Flow {
        self.notes
            .push(StreamNote::Uninspected { reason: e.kind() });
        if self.fail_closed {
            // The block is the fail-closed policy's: the event names it.
            let policy = self
                .policies
                .iter()
                .filter_map(|&i| self.chain.get(i))
                .find(|p| p.on_error == crate::config::OnError::FailClosed)
                .map(|p| p.name.clone())
                .unwrap_or_default();
            self.notes.push(StreamNote::Blocked {
                policy: policy.clone(),
                rule: format!("not inspected: {}", e.kind()),
            });
            return self.stop("the response stream could not be inspected", &policy, out);
        }
        // Fail open: release what is held and pass the rest through as is.
        if self.release(true, out) == Flow::Stop {
            return Flow::Stop;
        }
        let rest = self.decoder.take_pending();
        if !rest.is_empty() {
            out.push(rest);
        }
        self.passthrough = true;
        Flow::Continue
    }

    fn on_event(&mut self, ev: SseEvent, out: &mut Vec<Bytes>) -> Flow {
        let end = is_stream_end(self.family, &ev);
        let mut texts = Vec::new();
        if let Some(data) = ev.data() {
            let pointers = self.family.stream_pointers();
            if !data.is_empty() && data.trim() != "[DONE]" {
                let read = visit_strings(data.as_bytes(), Selector::Pointers(pointers), |_, s| {
                    texts.push(s.to_owned())
                });
                if read.is_err() {
                    // Not JSON (a provider's plain-text error, ...): nothing
                    // to check in it, forwarded in order.
                    texts.clear();
                }
            }
        }
        let snapshot = self.snapshot_of(&ev, &mut texts);
        if texts.is_empty() && self.held.is_empty() {
            out.push(ev.into_raw());
            return if end {
                self.release(true, out)
            } else {
                Flow::Continue
            };
        }
        self.held_bytes += texts.iter().map(String::len).sum::<usize>();
        self.held.push(Held {
            ev,
            texts,
            snapshot,
        });
        self.release(end, out)
    }

    /// For a snapshot frame, turns its text in `texts` into the increment
    /// over the snapshot before.
    fn snapshot_of(&mut self, ev: &SseEvent, texts: &mut Vec<String>) -> Option<Snapshot> {
        if self.family != Family::Sourcegraph || texts.len() != 1 {
            return None;
        }
        let mut is_snapshot = false;
        let _ = crate::llm::stream::for_each_delta(self.family, ev, |d| is_snapshot |= d.snapshot);
        if !is_snapshot {
            return None;
        }
        let full = texts.pop().unwrap_or_default();
        let restart = !full.starts_with(self.snapshot_seen.as_str());
        let increment = match restart {
            true => full.clone(),
            false => full[self.snapshot_seen.len()..].to_string(),
        };
        texts.push(increment);
        self.snapshot_seen.clone_from(&full);
        Some(Snapshot { full, restart })
    }

    /// Checks the held text; releases it unless it may still grow into a
    /// match (and `force` is false).
    fn release(&mut self, force: bool, out: &mut Vec<Bytes>) -> Flow {
        if self.held.is_empty() {
            return Flow::Continue;
        }
        let base = self.tail.len();
        let mut window = self.tail.clone();
        for h in &self.held {
            for t in &h.texts {
                window.push_str(t);
            }
        }
        let mut replacements: Vec<Replacement> = Vec::new();
        // What this check found, noted only if it releases: held text is
        // checked again with the next frame and would count it again.
        let mut found: Vec<StreamNote> = Vec::new();
        let chain = self.chain.clone();
        for &i in &self.policies {
            let Some(policy) = chain.get(i) else { continue };
            match &policy.action {
                Action::Filter(filter) => {
                    let Some(hit) = filter.find(&window) else {
                        continue;
                    };
                    if hit.range.end <= base {
                        continue;
                    }
                    match filter.action {
                        FilterAction::Block => {
                            let message = filter
                                .message
                                .clone()
                                .unwrap_or_else(|| "blocked pattern detected".into());
                            self.notes.push(StreamNote::Blocked {
                                policy: policy.name.clone(),
                                rule: hit.rule,
                            });
                            return self.stop(&message, &policy.name.clone(), out);
                        }
                        FilterAction::Redact => {
                            let label = placeholder(&policy.name);
                            replacements.push(Replacement {
                                range: hit.range,
                                label,
                            });
                            found.push(StreamNote::Redacted {
                                policy: policy.name.clone(),
                                kind: policy.name.clone(),
                            });
                        }
                        FilterAction::Log => found.push(StreamNote::Logged {
                            policy: policy.name.clone(),
                            rule: hit.rule,
                        }),
                    }
                }
                Action::Redact(redactor) => {
                    for f in redactor.find(&window) {
                        if f.range.end <= base {
                            continue;
                        }
                        found.push(StreamNote::Redacted {
                            policy: policy.name.clone(),
                            kind: f.kind.clone(),
                        });
                        replacements.push(Replacement {
                            range: f.range,
                            label: placeholder(&f.kind),
                        });
                    }
                }
                _ => {}
            }
        }
        let limit = if pem_open(&window) {
            PEM_HOLDBACK.max(self.holdback)
        } else {
            self.holdback
        };
        // Findings in held text are found again at the next check, so
        // holding on is safe; a secret still growing must not be cut.
        if !force && self.held_bytes < limit && may_grow(&window) {
            return Flow::Continue;
        }
        self.notes.append(&mut found);
        replacements.sort_by_key(|r| r.range.start);
        let mut labeled = vec![false; replacements.len()];
        let mut released = String::new();
        let mut at = base;
        for h in std::mem::take(&mut self.held) {
            let mut new_texts = Vec::with_capacity(h.texts.len());
            let mut changed = false;
            for t in &h.texts {
                let span = at..at + t.len();
                at = span.end;
                let text = apply(t, &span, &replacements, &mut labeled);
                changed |= text != *t;
                released.push_str(&text);
                new_texts.push(text);
            }
            if let Some(snap) = h.snapshot {
                if snap.restart {
                    self.snapshot_out.clear();
                }
                self.snapshot_out.push_str(&new_texts.concat());
                if self.snapshot_out != snap.full {
                    let whole = vec![self.snapshot_out.clone()];
                    out.push(rebuild(&h.ev, self.family, whole));
                } else {
                    out.push(h.ev.into_raw());
                }
            } else if changed {
                out.push(rebuild(&h.ev, self.family, new_texts));
            } else {
                out.push(h.ev.into_raw());
            }
        }
        self.held_bytes = 0;
        self.tail.push_str(&released);
        if self.tail.len() > CONTEXT {
            let mut cut = self.tail.len() - CONTEXT;
            while !self.tail.is_char_boundary(cut) {
                cut += 1;
            }
            self.tail.drain(..cut);
        }
        Flow::Continue
    }

    fn stop(&mut self, message: &str, policy: &str, out: &mut Vec<Bytes>) -> Flow {
        self.held.clear();
        self.held_bytes = 0;
        self.stopped = true;
        out.push(stream_block_frame(self.api, policy, message));
        Flow::Stop
    }
}

/// `text` (occupying `span` of the window) with the replacements that
/// touch it applied; a replacement's label goes in the first released text
/// it touches (where it starts, unless that part was already sent).
fn apply(
    text: &str,
    span: &Range<usize>,
    replacements: &[Replacement],
    labeled: &mut [bool],
) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (i, r) in replacements.iter().enumerate() {
        if r.range.end <= span.start || r.range.start >= span.end {
            continue;
        }
        let start = r.range.start.saturating_sub(span.start).min(text.len());
        let end = (r.range.end - span.start).min(text.len());
        if start < at {
            at = at.max(end);
            continue;
        }
        out.push_str(text.get(at..start).unwrap_or_default());
        if let Some(done) = labeled.get_mut(i) {
            if !*done {
                out.push_str(&r.label);
                *done = true;
            }
        }
        at = end;
    }
    out.push_str(text.get(at..).unwrap_or_default());
    out
}

/// The frame `ev` with its output strings replaced by `texts`.
fn rebuild(ev: &SseEvent, family: Family, texts: Vec<String>) -> Bytes {
    let data = ev.data().unwrap_or_default();
    let mut texts = texts.into_iter();
    let new_data = rewrite_strings(
        data.as_bytes(),
        Selector::Pointers(family.stream_pointers()),
        |_| texts.next(),
    );
    let new_data = match new_data {
        Ok(d) => String::from_utf8_lossy(&d).into_owned(),
        // Unreachable in practice: the same data was walked before.
        Err(_) => return ev.raw().clone(),
    };
    let mut frame = String::with_capacity(new_data.len() + 32);
    if let Some(event) = ev.event() {
        frame.push_str("event: ");
        frame.push_str(event);
        frame.push('\n');
    }
    if let Some(id) = ev.id() {
        frame.push_str("id: ");
        frame.push_str(id);
        frame.push('\n');
    }
    for line in new_data.split('\n') {
        frame.push_str("data: ");
        frame.push_str(line);
        frame.push('\n');
    }
    frame.push('\n');
    Bytes::from(frame)
}

/// True when the window ends inside something that could still become a
/// secret once more text arrives.
fn may_grow(window: &str) -> bool {
    if pem_open(window) {
        return true;
    }
    let word_start = window
        .rfind(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == '`')
        .map_or(0, |i| i + 1);
    let word = window.get(word_start..).unwrap_or_default();
    if SECRET_PREFIXES.iter().any(|p| {
        let (w, p) = (word.as_bytes(), p.as_bytes());
        // The word may be the start of a prefix, or contain one.
        (w.len() < p.len() && p.get(..w.len()).is_some_and(|s| s.eq_ignore_ascii_case(w)))
            || w.windows(p.len()).any(|x| x.eq_ignore_ascii_case(p))
    }) && !word.is_empty()
    {
        return true;
    }
    if word.len() < 3 {
        // Short fragments that start a known prefix were held above.
        return false;
    }
    let has_digit = word.bytes().any(|b| b.is_ascii_digit());
    let has_sep = word
        .bytes()
        .any(|b| matches!(b, b'_' | b'-' | b'+' | b'/' | b'=' | b'.' | b'~' | b':'));
    let inner_upper = word.bytes().skip(1).any(|b| b.is_ascii_uppercase());
    let has_lower = word.bytes().any(|b| b.is_ascii_lowercase());
    has_digit || has_sep || (inner_upper && has_lower) || word.len() >= 20
}

/// How well-known credentials start: a word that is (the start of) one of
/// these is held until it ends.
const SECRET_PREFIXES: &[&str] = &[
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "glpat-",
    "sk-",
    "sk_",
    "rk_",
    "xoxb-",
    "xoxp-",
    "xoxe-",
    "akia",
    "asia",
    "abia",
    "acca",
    "aiza",
    "hf_",
    "api_org_",
    "npm_",
    "pypi-",
    "sgp_",
    "slk_",
    "sgd_",
    "sg.",
    "dapi",
    "dop_v1_",
    "shpat_",
    "shpca_",
    "shpss_",
    "shppa_",
    "hvs.",
    "gsk_",
    "xai-",
    "pplx-",
    "atatt3",
    "age-secret-key-",
    "eyj",
    "-----begin",
];

/// A `-----BEGIN` with no `-----END` after it. PEM armour is upper case
/// by definition, so an exact (SIMD) search suffices.
fn pem_open(window: &str) -> bool {
    let hay = window.as_bytes();
    match memchr::memmem::rfind(hay, b"-----BEGIN") {
        Some(begin) => {
            memchr::memmem::find(hay.get(begin..).unwrap_or_default(), b"-----END").is_none()
        }
        None => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn redacting_stream() -> OutputStream {
        let yaml = "policies:\n  chain: [r]\npolicy:\n  r:\n    type: redact\n";
        let chain = Chain::build(&Config::parse(yaml, Path::new("t")).unwrap()).unwrap();
        OutputStream::new(
            Arc::new(chain),
            vec![0],
            Family::OpenAiChat,
            Some(Api::OpenAiChat),
        )
    }

    fn chunk_event(text: &str) -> String {
        format!(
            "data: {}\n\n",
            serde_json::json!({"choices": [{"index": 0, "delta": {"content": text}}]})
        )
    }

    /// Feeds `reply` as events of `size` characters, the wire bytes split
    /// every `split` bytes; returns the text the client sees.
    fn run(reply: &str, size: usize, split: usize) -> (String, Vec<u8>) {
        let mut wire = String::new();
        let chars: Vec<char> = reply.chars().collect();
        for piece in chars.chunks(size) {
            wire.push_str(&chunk_event(&piece.iter().collect::<String>()));
        }
        wire.push_str("data: [DONE]\n\n");
        let mut s = redacting_stream();
        let mut out = Vec::new();
        for part in wire.as_bytes().chunks(split) {
            assert_eq!(s.push(part, &mut out), Flow::Continue);
        }
        s.finish(&mut out);
        let raw: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
        let mut text = String::new();
        for line in String::from_utf8(raw.clone()).unwrap().lines() {
            if let Some(d) = line.strip_prefix("data: ") {
                if d != "[DONE]" {
                    let v: serde_json::Value = serde_json::from_str(d).unwrap();
                    text.push_str(v["choices"][0]["delta"]["content"].as_str().unwrap());
                }
            }
        }
        (text, raw)
    }

    fn pem() -> String {
        let body: String = (0..4)
            .map(|i| {
                format!(
                    "{}\n",
                    "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC"
                        .repeat(2)
                        .replace('A', &i.to_string())
                )
            })
            .collect();
        format!("-----BEGIN PRIVATE KEY-----\n{body}-----END PRIVATE KEY-----")
    }

    #[test]
    fn secrets_are_caught_however_the_stream_is_cut() {
        let token = format!("ghp_{}", "Ab3dE6gH9jK2mN5pQ8sT1vW4yZ7bC0eF2hJ5");
        let reply = format!("Set it with `export T={token}` and go.");
        for size in [1, 2, 5, 11, 64] {
            for split in [1, 7, 13, 1000] {
                let (text, raw) = run(&reply, size, split);
                assert!(
                    !text.contains(&token[4..]),
                    "size {size} split {split}: {text}"
                );
                assert!(
                    !String::from_utf8_lossy(&raw).contains("Ab3dE6"),
                    "size {size}"
                );
                assert!(
                    text.contains("[REDACTED:github_pat]"),
                    "size {size}: {text}"
                );
                assert!(text.ends_with("` and go."), "size {size}: {text}");
            }
        }
    }

    #[test]
    fn a_pem_block_across_many_events_is_redacted() {
        let reply = format!("Here is the key:\n{}\nKeep it safe.", pem());
        for size in [3, 16, 40] {
            let (text, _) = run(&reply, size, 1000);
            assert!(!text.contains("MIIEvQ"), "size {size}: {text}");
            assert!(
                text.contains("[REDACTED:private_key]"),
                "size {size}: {text}"
            );
            assert!(text.starts_with("Here is the key:"), "{text}");
        }
    }

    #[test]
    fn clean_frames_are_forwarded_byte_identical() {
        let reply = "Sure. The function sorts the list, then returns the median value.";
        let (text, raw) = run(reply, 6, 1000);
        assert_eq!(text, reply);
        let mut wire = String::new();
        let chars: Vec<char> = reply.chars().collect();
        for piece in chars.chunks(6) {
            wire.push_str(&chunk_event(&piece.iter().collect::<String>()));
        }
        wire.push_str("data: [DONE]\n\n");
        assert_eq!(raw, wire.as_bytes());
    }

    #[test]
    fn token_shaped_words_are_held_and_prose_is_not() {
        assert!(!may_grow("Sure, here is"));
        assert!(!may_grow("the answer "));
        assert!(may_grow("export T=gh"));
        assert!(may_grow("key sk-proj"));
        assert!(may_grow("AKIA"));
        assert!(may_grow("-----BEGIN PRIVATE KEY-----\nMIIE"));
        assert!(!may_grow("-----BEGIN X-----\nabc\n-----END X-----\n"));
    }

    /// One secret in a streamed answer is one redaction, however small the
    /// frames: the hold-back checks the held text again with each frame,
    /// and a finding is noted only when its text is released.
    #[test]
    fn a_held_secret_is_counted_once_whatever_the_frame_size() {
        let key = "AKIAQX4B7ZK2M5RT6WLN";
        let reply = format!("Your key is {key} and it is live.");
        let yaml = "policies:\n  chain: [r]\npolicy:\n  r:\n    type: redact\n";
        let chain = Arc::new(Chain::build(&Config::parse(yaml, Path::new("t")).unwrap()).unwrap());
        let shapes = [
            (Family::OpenAiChat, Api::OpenAiChat),
            (Family::AnthropicMessages, Api::AnthropicMessages),
        ];
        let chars: Vec<char> = reply.chars().collect();
        for (family, api) in shapes {
            for size in 1..=chars.len() {
                let mut wire = String::new();
                for piece in chars.chunks(size) {
                    let text: String = piece.iter().collect();
                    wire.push_str(&match family {
                        Family::AnthropicMessages => format!(
                            "event: content_block_delta\ndata: {}\n\n",
                            serde_json::json!({"type": "content_block_delta", "index": 0,
                                "delta": {"type": "text_delta", "text": text}})
                        ),
                        _ => chunk_event(&text),
                    });
                }
                wire.push_str(match family {
                    Family::AnthropicMessages => {
                        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
                    }
                    _ => "data: [DONE]\n\n",
                });
                let mut s = OutputStream::new(chain.clone(), vec![0], family, Some(api));
                let mut out = Vec::new();
                for part in wire.as_bytes().chunks(7) {
                    assert_eq!(s.push(part, &mut out), Flow::Continue);
                }
                s.finish(&mut out);
                let raw: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
                let raw = String::from_utf8(raw).unwrap();
                assert!(!raw.contains("QX4B7"), "{family:?} size {size}: {raw}");
                assert_eq!(
                    raw.matches("[REDACTED:aws_access_key_id]").count(),
                    1,
                    "{family:?} size {size}: {raw}"
                );
                let counted: Vec<&StreamNote> = s
                    .notes
                    .iter()
                    .filter(|n| matches!(n, StreamNote::Redacted { .. }))
                    .collect();
                assert_eq!(counted.len(), 1, "{family:?} size {size}: {counted:?}");
                assert!(
                    matches!(counted[0], StreamNote::Redacted { kind, .. } if &**kind == "aws_access_key_id"),
                    "{counted:?}"
                );
            }
        }
    }

    /// Sourcegraph before api-version 2 sends the whole completion so far in
    /// each frame: a secret split across two frames is cut from both, and
    /// counted once.
    #[test]
    fn snapshot_streams_never_repeat_a_secret_prefix() {
        let token = format!("ghp_{}", "Ab3dE6gH9jK2mN5pQ8sT1vW4yZ7bC0eF2hJ5");
        let reply = format!("use {token} now, then stop");
        let yaml = "policies:\n  chain: [r]\npolicy:\n  r:\n    type: redact\n";
        let chain = Arc::new(Chain::build(&Config::parse(yaml, Path::new("t")).unwrap()).unwrap());
        for cut in [5, 12, 20, 30, 41, reply.len()] {
            let mut s = OutputStream::new(chain.clone(), vec![0], Family::Sourcegraph, None);
            let mut wire = String::new();
            for end in [cut, reply.len(), reply.len()] {
                let so_far = serde_json::json!({"completion": &reply[..end]});
                wire.push_str(&format!("event: completion\ndata: {so_far}\n\n"));
            }
            wire.push_str("event: done\ndata: {}\n\n");
            let mut out = Vec::new();
            assert_eq!(s.push(wire.as_bytes(), &mut out), Flow::Continue);
            s.finish(&mut out);
            let raw: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
            let raw = String::from_utf8(raw).unwrap();
            assert!(!raw.contains("ghp_Ab3"), "cut {cut}: {raw}");
            let snapshots: Vec<String> = raw
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
                .filter_map(|v| v["completion"].as_str().map(str::to_owned))
                .collect();
            assert_eq!(snapshots.len(), 3, "cut {cut}: {raw}");
            let last = "use [REDACTED:github_pat] now, then stop";
            assert_eq!(snapshots[2], last, "cut {cut}");
            for s in &snapshots {
                assert!(
                    last.starts_with(s.as_str()),
                    "cut {cut}: {s:?} is no prefix of {last:?}"
                );
            }
            let counted = s
                .notes
                .iter()
                .filter(|n| matches!(n, StreamNote::Redacted { .. }))
                .count();
            assert_eq!(counted, 1, "cut {cut}");
        }
    }
}
