//! Output-phase policies on a streamed (SSE) response: frames are decoded
//! as they arrive, their text is checked in a sliding window, and each frame
//! is released as soon as it is known to be clean.
//!
//! A frame is held back only while the text at the end of the stream could
//! still grow into a secret (with a redact policy: a trailing word shaped
//! like a token, with digits, `_`, `-` or mixed case, or an open
//! `-----BEGIN` block) or into a content filter's match (the filter's
//! prefix check), bounded by the policy's hold-back size. Plain prose is
//! released at once, so the time to first token stays what the provider
//! gives. Secrets split across frames
//! are found because every check runs on the previous text's tail plus the
//! held text.
//!
//! Tool-call arguments streamed in pieces (OpenAI chat `tool_calls` deltas,
//! Responses `response.function_call_arguments.delta`, Anthropic
//! `input_json_delta`) go through the same check in a window of their own:
//! they are JSON text, read in its escaped form (a secret in it is spelled
//! as the JSON string inside the arguments spells it), and a replacement is
//! widened to whole escape sequences so the arguments stay JSON. A new tool
//! call releases what is held and starts its window afresh.

use super::chain::{Action, Chain};
use super::redact::{placeholder, DEFAULT_HOLDBACK};
use super::respond::stream_block_frame;
use super::secrets::assigned_to_credential;
use super::whole::{self, Whole};
use crate::config::FilterAction;
use crate::llm::family::Family;
use crate::llm::json_text::PointerSet;
use crate::llm::json_text::{rewrite_strings, visit_strings, Selector};
use crate::llm::recognize::Api;
use crate::llm::sse::{SseDecoder, SseError, SseEvent};
use crate::llm::stream::{finder, is_stream_end, tool_arguments, whole_text};
use bytes::Bytes;
use std::ops::Range;
use std::sync::Arc;

/// Bytes of already released text kept as context for the next checks.
const CONTEXT: usize = 512;
/// Hold-back bound while a PEM block is open.
const PEM_HOLDBACK: usize = 8 * 1024;
/// Most events with no text held behind a held word, and their most bytes:
/// past either, what is held is released.
const MAX_HELD_BARE: usize = 256;
const MAX_HELD_BARE_BYTES: usize = 256 * 1024;

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
    /// The pieces of tool-call arguments it streams, in document order.
    args: Vec<String>,
    snapshot: Option<Snapshot>,
    /// Its texts are separate values, not pieces of one text (the strings
    /// of a Gemini function call's `args`): the window keeps them apart,
    /// so a secret is not read as glued to the word before it.
    separate: bool,
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
    /// The released arguments of the tool call being streamed, and which
    /// call that is.
    args_tail: String,
    args_slot: Option<u32>,
    /// The last snapshot as the upstream sent it, and as released.
    snapshot_seen: String,
    snapshot_out: String,
    held: Vec<Held>,
    held_bytes: usize,
    /// Held events with no text, and their size.
    held_bare: usize,
    held_bare_bytes: usize,
    holdback: usize,
    /// A redact policy applies: text that could still grow into a secret
    /// is held.
    redacts: bool,
    /// Content filters that redact or block, by chain index: text that
    /// could still grow into one of their matches is held, or the start of
    /// a phrase split across deltas would reach the client before the
    /// filter could see it whole.
    filters: Vec<usize>,
    fail_closed: bool,
    passthrough: bool,
    stopped: bool,
    notes: Vec<StreamNote>,
    /// Findings of whole-text events, each with the most times one event
    /// held it (see [`OutputStream::take_notes`]).
    whole_found: Vec<(StreamNote, usize)>,
}

impl OutputStream {
    pub fn new(chain: Arc<Chain>, policies: Vec<usize>, family: Family, api: Option<Api>) -> Self {
        let mut holdback = 0;
        let mut fail_closed = false;
        let mut filters = Vec::new();
        let mut redacts = false;
        for &i in &policies {
            if let Some(p) = chain.get(i) {
                match &p.action {
                    Action::Redact(r) => {
                        holdback = holdback.max(r.holdback);
                        redacts = true;
                    }
                    Action::Filter(f) if f.action != FilterAction::Log => filters.push(i),
                    _ => {}
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
            args_tail: String::new(),
            args_slot: None,
            snapshot_seen: String::new(),
            snapshot_out: String::new(),
            held: Vec::new(),
            held_bytes: 0,
            held_bare: 0,
            held_bare_bytes: 0,
            holdback,
            redacts,
            filters,
            fail_closed,
            passthrough: false,
            stopped: false,
            notes: Vec::new(),
            whole_found: Vec::new(),
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

    /// The upstream ended: an event it left unterminated is checked like
    /// any other (line-reading clients still take it), then what is held is
    /// released (checked once more).
    pub fn finish(&mut self, out: &mut Vec<Bytes>) {
        if self.stopped || self.passthrough {
            return;
        }
        self.decoder.finish();
        while let Some(next) = self.decoder.next_event() {
            let flow = match next {
                Ok(ev) => self.on_event(ev, out),
                Err(SseError::Incomplete(ev)) => self.on_event(*ev, out),
                Err(e) => self.on_decode_error(&e, out),
            };
            if flow == Flow::Stop || self.passthrough {
                return;
            }
        }
        self.release(true, out);
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
        let ev = match self.check_whole(ev, out) {
            Ok(ev) => ev,
            Err(flow) => return flow,
        };
        let end = is_stream_end(self.family, &ev);
        let slot = tool_arguments(self.family, &ev).map(|t| t.slot);
        let mut texts = Vec::new();
        let mut args = Vec::new();
        if let Some(data) = ev.data() {
            if !data.is_empty() && data.trim() != "[DONE]" {
                // A Responses arguments delta keeps them in `/delta`, where
                // its text deltas keep text: read as arguments only.
                let text_pointers = match (self.family, slot) {
                    (Family::OpenAiResponses, Some(_)) => None,
                    _ => Some(self.family.stream_pointers()),
                };
                let tool_pointers = slot.map(|_| self.family.stream_tool_pointers());
                for (pointers, into) in [(text_pointers, &mut texts), (tool_pointers, &mut args)] {
                    let Some(pointers) = pointers else { continue };
                    let read =
                        visit_strings(data.as_bytes(), Selector::Pointers(pointers), |_, s| {
                            into.push(s.to_owned())
                        });
                    if read.is_err() {
                        // Not JSON (a provider's plain-text error, ...):
                        // nothing to check in it, forwarded in order.
                        into.clear();
                    }
                }
            }
        }
        if slot.is_some() && !args.is_empty() && slot != self.args_slot {
            // Another tool call: the last one's arguments are complete.
            if self.held.iter().any(|h| !h.args.is_empty()) && self.release(true, out) == Flow::Stop
            {
                return Flow::Stop;
            }
            self.args_tail.clear();
            self.args_slot = slot;
        }
        let snapshot = self.snapshot_of(&ev, &mut texts);
        if texts.is_empty() && args.is_empty() && self.held.is_empty() {
            out.push(ev.into_raw());
            return if end {
                self.release(true, out)
            } else {
                Flow::Continue
            };
        }
        // An empty delta adds no text either, and counts as bare: else a
        // flood of them behind a held word would never reach a bound.
        let bare = texts.iter().chain(&args).all(String::is_empty);
        self.held_bytes += texts.iter().chain(&args).map(String::len).sum::<usize>();
        let separate = self.family == Family::Gemini
            && ev
                .data()
                .is_some_and(|d| finder!(b"\"functionCall\"").find(d.as_bytes()).is_some());
        let raw_len = ev.raw().len();
        self.held.push(Held {
            ev,
            texts,
            args,
            snapshot,
            separate,
        });
        if bare && !end {
            // No text: the window is what it was, nothing to check again.
            // Such events add nothing to the hold-back bound, so their own
            // bound keeps a flood of them (pings, empty deltas) from
            // piling up behind a held word.
            self.held_bare += 1;
            self.held_bare_bytes += raw_len;
            if self.held_bare > MAX_HELD_BARE || self.held_bare_bytes > MAX_HELD_BARE_BYTES {
                return self.release(true, out);
            }
            return Flow::Continue;
        }
        self.release(end, out)
    }

    /// For an event repeating whole text its deltas carried (a Responses
    /// `response.output_text.done`, `response.completed`, ...; an
    /// Anthropic `content_block_start`), the output policies run over its
    /// complete strings, so it never carries what the deltas had cut.
    fn check_whole(&mut self, ev: SseEvent, out: &mut Vec<Bytes>) -> Result<SseEvent, Flow> {
        let Some(pointers) = whole_text(self.family, &ev) else {
            return Ok(ev);
        };
        let Some(data) = ev.data() else {
            return Ok(ev);
        };
        let mut notes = Vec::new();
        let policies = self.policies.iter().filter_map(|&i| self.chain.get(i));
        let applied = whole::apply(
            policies,
            data.as_bytes(),
            Selector::Pointers(pointers),
            &mut notes,
        );
        self.note_whole(notes);
        match applied {
            // Not JSON: forwarded like any event that has nothing to check.
            Ok(Whole::Same) | Err(_) => Ok(ev),
            Ok(Whole::Changed(new)) => Ok(ev.with_data(&String::from_utf8_lossy(&new))),
            Ok(Whole::Blocked {
                policy,
                rule,
                message,
            }) => {
                self.notes.push(StreamNote::Blocked {
                    policy: policy.clone(),
                    rule,
                });
                Err(self.stop(&message, &policy, out))
            }
        }
    }

    /// Keeps what a whole-text event's check found: the same secret is in
    /// the deltas before it, and usually in a later summary event too, so
    /// each finding counts once however many events repeat it.
    fn note_whole(&mut self, notes: Vec<StreamNote>) {
        let mut counted: Vec<(StreamNote, usize)> = Vec::new();
        for note in notes {
            match counted.iter_mut().find(|(n, _)| *n == note) {
                Some((_, count)) => *count += 1,
                None => counted.push((note, 1)),
            }
        }
        for (note, count) in counted {
            match self.whole_found.iter_mut().find(|(n, _)| *n == note) {
                Some((_, most)) => *most = (*most).max(count),
                None => self.whole_found.push((note, count)),
            }
        }
    }

    /// What the policies did to the stream, for the exchange's record.
    pub fn take_notes(&mut self) -> Vec<StreamNote> {
        let mut notes = std::mem::take(&mut self.notes);
        for (note, most) in std::mem::take(&mut self.whole_found) {
            let seen = notes.iter().filter(|n| **n == note).count();
            notes.extend(std::iter::repeat_n(note, most.saturating_sub(seen)));
        }
        notes
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

    /// The longest hold a redact policy of this stream asks for the word
    /// one of `windows` ends in (0 without one).
    fn open_token_len(&self, windows: &[Window]) -> usize {
        if !self.redacts {
            return 0;
        }
        let redactors = self
            .policies
            .iter()
            .filter_map(|&i| match &self.chain.get(i)?.action {
                Action::Redact(r) => Some(r),
                _ => None,
            });
        redactors
            .flat_map(|r| windows.iter().map(|w| r.open_token_len(&w.text)))
            .max()
            .unwrap_or(0)
    }

    /// Checks the held text; releases it unless it may still grow into a
    /// match (and `force` is false).
    fn release(&mut self, force: bool, out: &mut Vec<Bytes>) -> Flow {
        if self.held.is_empty() {
            return Flow::Continue;
        }
        let windows = [
            Window::new(&self.tail, self.held.iter().map(|h| (&h.texts, h.separate))),
            Window::new(&self.args_tail, self.held.iter().map(|h| (&h.args, false))),
        ];
        // What this check found, noted only if it releases: held text is
        // checked again with the next frame and would count it again.
        let mut found: Vec<StreamNote> = Vec::new();
        let mut replacements: [Vec<Replacement>; 2] = [Vec::new(), Vec::new()];
        for (w, reps) in windows.iter().zip(&mut replacements) {
            if w.text.len() == w.base {
                continue;
            }
            match scan(&self.chain, &self.policies, w, reps, &mut found) {
                Ok(()) => {}
                Err((policy, rule, message)) => {
                    self.notes.push(StreamNote::Blocked {
                        policy: policy.clone(),
                        rule,
                    });
                    return self.stop(&message, &policy, out);
                }
            }
        }
        let pem = self.redacts && windows.iter().any(|w| pem_open(&w.text));
        let limit = if pem {
            PEM_HOLDBACK.max(self.holdback)
        } else {
            self.holdback
        };
        // Findings in held text are found again at the next check, so
        // holding on is safe; a secret still growing must not be cut.
        let grows = windows.iter().any(|w| {
            w.text.len() > w.base
                && ((self.redacts && may_grow(&w.text)) || self.filter_may_match(&w.text, limit))
        });
        // Past the usual bound, a word holding a credential's keyword is
        // held to that credential's longest form (computed only then).
        if !force
            && grows
            && (self.held_bytes < limit || self.held_bytes < self.open_token_len(&windows))
        {
            return Flow::Continue;
        }
        self.notes.append(&mut found);
        let [mut text_reps, mut args_reps] = replacements;
        text_reps.sort_by_key(|r| r.range.start);
        // Arguments are JSON text: a replacement takes whole escapes.
        for r in &mut args_reps {
            let text = windows[1].text.as_bytes();
            r.range = within_string(text, escape_safe(text, windows[1].base, r.range.clone()));
        }
        args_reps.retain(|r| !r.range.is_empty());
        args_reps.sort_by_key(|r| r.range.start);
        let mut text_labeled = vec![false; text_reps.len()];
        let mut args_labeled = vec![false; args_reps.len()];
        let mut released = String::new();
        let mut released_args = String::new();
        let mut at = windows[0].base;
        let mut args_at = windows[1].base;
        let text_pointers = self.family.stream_pointers();
        let tool_pointers = self.family.stream_tool_pointers();
        for h in std::mem::take(&mut self.held) {
            let (new_texts, changed) = apply_all(
                &h.texts,
                h.separate,
                &mut at,
                &text_reps,
                &mut text_labeled,
                &mut released,
            );
            let (new_args, args_changed) = apply_all(
                &h.args,
                false,
                &mut args_at,
                &args_reps,
                &mut args_labeled,
                &mut released_args,
            );
            if let Some(snap) = h.snapshot {
                if snap.restart {
                    self.snapshot_out.clear();
                }
                self.snapshot_out.push_str(&new_texts.concat());
                if self.snapshot_out != snap.full {
                    let whole = vec![self.snapshot_out.clone()];
                    out.push(rebuild(&h.ev, &[(text_pointers, whole)]));
                } else {
                    out.push(h.ev.into_raw());
                }
            } else if changed || args_changed {
                let mut edits = Vec::new();
                if changed {
                    edits.push((text_pointers, new_texts));
                }
                if args_changed {
                    edits.push((tool_pointers, new_args));
                }
                out.push(rebuild(&h.ev, &edits));
            } else {
                out.push(h.ev.into_raw());
            }
        }
        self.held_bytes = 0;
        self.held_bare = 0;
        self.held_bare_bytes = 0;
        push_context(&mut self.tail, &released);
        push_context(&mut self.args_tail, &released_args);
        Flow::Continue
    }

    /// Whether the end of `window` (its last `limit` bytes) could be the
    /// start of a content filter's match that more text completes. A
    /// filter that cannot tell holds the window's last word instead.
    fn filter_may_match(&self, window: &str, limit: usize) -> bool {
        let from = window.len().saturating_sub(limit);
        self.filters
            .iter()
            .any(|&i| match self.chain.get(i).map(|p| &p.action) {
                Some(Action::Filter(f)) => f
                    .may_continue(window, from)
                    .unwrap_or_else(|| in_word(window)),
                _ => false,
            })
    }

    fn stop(&mut self, message: &str, policy: &str, out: &mut Vec<Bytes>) -> Flow {
        self.held.clear();
        self.held_bytes = 0;
        self.held_bare = 0;
        self.held_bare_bytes = 0;
        self.stopped = true;
        out.push(stream_block_frame(self.api, policy, message));
        Flow::Stop
    }
}

/// One channel's text for a check: the released context, then the held
/// pieces; offsets from `base` on are held text.
struct Window {
    text: String,
    base: usize,
}

impl Window {
    fn new<'h>(tail: &str, held: impl Iterator<Item = (&'h Vec<String>, bool)>) -> Window {
        let mut text = tail.to_owned();
        for (pieces, separate) in held {
            for t in pieces {
                text.push_str(t);
                if separate {
                    text.push(SEPARATOR);
                }
            }
        }
        Window {
            text,
            base: tail.len(),
        }
    }
}

/// Runs the output policies over `w`: replacements and notes for what they
/// found in its held text, or `Err((policy, rule, message))` when one blocks.
fn scan(
    chain: &Chain,
    policies: &[usize],
    w: &Window,
    replacements: &mut Vec<Replacement>,
    found: &mut Vec<StreamNote>,
) -> Result<(), (Arc<str>, String, String)> {
    for &i in policies {
        let Some(policy) = chain.get(i) else { continue };
        match &policy.action {
            Action::Filter(filter) => {
                // Every match: a second one in the window, or one after a
                // match already sent (still in the context), counts too.
                for hit in filter.find_all(&w.text) {
                    if hit.range.end <= w.base {
                        continue;
                    }
                    match filter.action {
                        FilterAction::Block => {
                            let message = filter
                                .message
                                .clone()
                                .unwrap_or_else(|| "blocked pattern detected".into());
                            return Err((policy.name.clone(), hit.rule, message));
                        }
                        FilterAction::Redact => {
                            replacements.push(Replacement {
                                range: hit.range,
                                label: placeholder(&policy.name),
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
            }
            Action::Redact(redactor) => {
                for f in redactor.find(&w.text) {
                    if f.range.end <= w.base {
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
    Ok(())
}

/// What parts separate values in a window: a line break, which no secret
/// spans and which ends a word for every pattern that looks for one.
const SEPARATOR: char = '\n';

/// `texts` with the replacements applied, each at its place from `*at` on
/// in the window (advanced past them, and past a [`SEPARATOR`] after each
/// when they are `separate`); what is released is appended to `released`.
/// Also tells whether any text changed.
fn apply_all(
    texts: &[String],
    separate: bool,
    at: &mut usize,
    replacements: &[Replacement],
    labeled: &mut [bool],
    released: &mut String,
) -> (Vec<String>, bool) {
    let mut out = Vec::with_capacity(texts.len());
    let mut changed = false;
    for t in texts {
        let span = *at..*at + t.len();
        *at = span.end;
        let text = apply(t, &span, replacements, labeled);
        changed |= text != *t;
        released.push_str(&text);
        if separate {
            *at += SEPARATOR.len_utf8();
            released.push(SEPARATOR);
        }
        out.push(text);
    }
    (out, changed)
}

/// Appends released text to a channel's context, keeping its last
/// [`CONTEXT`] bytes.
fn push_context(tail: &mut String, released: &str) {
    tail.push_str(released);
    if tail.len() > CONTEXT {
        let mut cut = tail.len() - CONTEXT;
        while !tail.is_char_boundary(cut) {
            cut += 1;
        }
        tail.drain(..cut);
    }
}

/// `range` of the JSON text `text` widened so that it neither starts nor
/// ends inside an escape sequence (`\n`, `\"`, `\u00e9`): a label put in
/// its place leaves the JSON valid. Text before `base` has been sent: an
/// escape begun there is completed before the label, never cut.
pub(super) fn escape_safe(text: &[u8], base: usize, range: Range<usize>) -> Range<usize> {
    let mut start = range.start;
    let mut end = range.end;
    if let Some(esc) = escape_around(text, start.max(base)) {
        start = if esc.start >= base {
            esc.start
        } else {
            start.max(esc.end)
        };
    }
    if let Some(esc) = escape_around(text, end) {
        end = esc.end.min(text.len());
    }
    start..end.max(start)
}

/// `range` of the JSON text `text` (starting outside any escape) cut at
/// the end of the string it starts in: a filter's match (`project-\S+`)
/// can run on past the closing quote into the JSON around it, which its
/// label must not replace. A match that starts on a quote is kept whole:
/// what it found must go, even at the cost of the arguments' shape.
pub(super) fn within_string(text: &[u8], range: Range<usize>) -> Range<usize> {
    if text.get(range.start) == Some(&b'"') {
        return range;
    }
    let mut i = range.start;
    while i < range.end {
        match text.get(i) {
            Some(b'\\') => i += 2,
            Some(b'"') => return range.start..i,
            Some(_) => i += 1,
            None => break,
        }
    }
    range
}

/// The escape sequence of the JSON text `text` that has `at` strictly
/// inside it, if any. An escape is a backslash that a run of an even number
/// of backslashes precedes, and the 1 (or `u` + 4) bytes after it.
fn escape_around(text: &[u8], at: usize) -> Option<Range<usize>> {
    for back in 1..=5usize {
        let b = at.checked_sub(back)?;
        if text.get(b) != Some(&b'\\') {
            continue;
        }
        let run = text
            .get(..b)
            .unwrap_or_default()
            .iter()
            .rev()
            .take_while(|&&c| c == b'\\')
            .count();
        if run % 2 == 1 {
            // This backslash is itself escaped: it ends an escape.
            continue;
        }
        let len = if text.get(b + 1) == Some(&b'u') { 6 } else { 2 };
        return (at < b + len).then_some(b..b + len);
    }
    None
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

/// The frame `ev` with the strings each pointer set selects replaced by
/// the texts given with it.
fn rebuild(ev: &SseEvent, edits: &[(&PointerSet, Vec<String>)]) -> Bytes {
    let mut data = ev.data().unwrap_or_default().to_owned();
    for (pointers, texts) in edits {
        let mut texts = texts.iter();
        let new_data = rewrite_strings(data.as_bytes(), Selector::Pointers(pointers), |_| {
            texts.next().cloned()
        });
        data = match new_data {
            Ok(d) => String::from_utf8_lossy(&d).into_owned(),
            // Unreachable in practice: the same data was walked before.
            Err(_) => return ev.raw().clone(),
        };
    }
    ev.frame_with_data(&data)
}

/// True when the window ends inside something that could still become a
/// secret once more text arrives.
fn may_grow(window: &str) -> bool {
    if pem_open(window) {
        return true;
    }
    // Secrets are ASCII: the word that may grow into one is the trailing
    // run of ASCII, ended by a blank, a quote or any other character.
    // Scripts written without spaces (Chinese, Japanese) would otherwise
    // make one long word of everything released before, held as if a
    // token, and their stream would come out in hold-back-sized bursts.
    // The word starts just past that character, which may be wider than a
    // byte (U+00A0, U+3000): cut inside it, the word would read as empty.
    let word_start = window
        .char_indices()
        .rev()
        .find(|&(_, c)| c.is_whitespace() || matches!(c, '"' | '\'' | '`') || !c.is_ascii())
        .map_or(0, |(i, c)| i + c.len_utf8());
    let word = window.get(word_start..).unwrap_or_default();
    // A password or key assigned to a name (`password = "correct` + `horse
    // battery9"`) looks like any word until it ends: only the name tells.
    if !word.is_empty() && assigned_to_credential(window.as_bytes(), word_start) {
        return true;
    }
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

/// True when `window` ends inside a word (an ASCII letter or digit, `-` or
/// `_` last): the word may still grow into a content filter's match (for a
/// filter whose patterns the prefix check cannot run).
/// Scripts written without spaces (Chinese, Japanese) never end a word,
/// and holding them would turn their stream into 256-byte bursts.
fn in_word(window: &str) -> bool {
    window
        .bytes()
        .next_back()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
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

    /// The text of the OpenAI chat deltas in `raw`, events without one
    /// skipped.
    fn streamed_text(raw: &str) -> String {
        raw.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
            .filter_map(|v| {
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect()
    }

    /// Redactions the stream noted.
    fn redactions(s: &OutputStream) -> usize {
        s.notes
            .iter()
            .filter(|n| matches!(n, StreamNote::Redacted { .. }))
            .count()
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

    /// A JWT whose claims make it longer than the default hold-back, as
    /// identity tokens with group lists are.
    fn long_jwt() -> String {
        let claims: String = (0..640)
            .map(|i| char::from(b"aZ3kQ9x_Lm7-Rt2W"[(i * 7 + i / 16) % 16]))
            .collect();
        format!("eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJ{claims}.Qx7Lm2Rt9Wk3Zp8Vb5Nc1Hd4Jf6Gs0Ay")
    }

    #[test]
    fn a_token_longer_than_the_hold_back_is_redacted_whole() {
        let jwt = long_jwt();
        assert!(jwt.len() > DEFAULT_HOLDBACK * 2);
        let reply = format!("Send `Authorization: Bearer {jwt}` with each call.");
        for size in [3, 16, 40] {
            let (text, _) = run(&reply, size, 1000);
            assert!(
                !text.contains(&jwt[40..80]) && !text.contains(&jwt[jwt.len() - 40..]),
                "size {size}: part of the token went out: {text}"
            );
            assert_eq!(
                text, "Send `Authorization: Bearer [REDACTED:jwt]` with each call.",
                "size {size}"
            );
        }
    }

    #[test]
    fn a_token_shaped_word_is_held_no_longer_than_its_longest_form() {
        // `eyJ` and then more than any JWT: text must flow before the end.
        let word: String = std::iter::once("eyJ")
            .chain(std::iter::repeat_n("aZ3kQ9x_Lm7-Rt2W", 400))
            .collect();
        let mut s = redacting_stream();
        let mut out = Vec::new();
        let mut sent_before_end = 0;
        for piece in word.as_bytes().chunks(16) {
            let event = chunk_event(std::str::from_utf8(piece).unwrap());
            assert_eq!(s.push(event.as_bytes(), &mut out), Flow::Continue);
            sent_before_end = out.len();
        }
        assert!(
            sent_before_end > 0,
            "a {}-byte word was held whole",
            word.len()
        );
        s.finish(&mut out);
    }

    /// A token after a space wider than a byte (no-break, narrow no-break,
    /// ideographic) is held like one after an ASCII space, however the
    /// stream cuts it.
    #[test]
    fn a_token_after_a_wide_space_is_held() {
        let token = format!("ghp_{GH_BODY}");
        for space in ['\u{a0}', '\u{202f}', '\u{3000}'] {
            assert!(may_grow(&format!("key{space}gh")), "{space:?}");
            let reply = format!("key{space}{token} ok");
            for size in [2, 3, 5, 11] {
                let (text, _) = run(&reply, size, 1000);
                assert_eq!(
                    text,
                    format!("key{space}[REDACTED:github_pat] ok"),
                    "{space:?} size {size}"
                );
            }
        }
    }

    /// Chinese or Japanese, written without spaces, is released delta by
    /// delta as it comes, not piled up as if one long token-shaped word;
    /// a token inside it is still held and redacted.
    #[test]
    fn text_without_spaces_is_released_as_it_comes() {
        let mut s = redacting_stream();
        let mut out = Vec::new();
        for i in 0..300 {
            out.clear();
            s.push(chunk_event("密钥").as_bytes(), &mut out);
            let sent = streamed_text(&String::from_utf8(out.concat()).unwrap());
            assert_eq!(sent, "密钥", "delta {i} was held");
        }
        let reply = format!("说明：令牌是ghp_{GH_BODY}，请保存。");
        for size in [1, 2, 5] {
            let (text, _) = run(&reply, size, 1000);
            assert_eq!(
                text, "说明：令牌是[REDACTED:github_pat]，请保存。",
                "size {size}"
            );
        }
        assert!(!may_grow("这是一个很长的句子没有空格"));
        assert!(may_grow("令牌是gh"));
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
        // A value assigned to a credential's name, in code, prose or JSON.
        assert!(may_grow("password = \"correct"));
        assert!(may_grow("DB_PASSWORD=correct"));
        assert!(may_grow("Password: correct"));
        assert!(may_grow(r#"{\"api_key\": \"correct"#));
        assert!(may_grow("secret => 'correct"));
        assert!(!may_grow("password = \"correct\""), "the value has ended");
        assert!(!may_grow("Note: correct"), "not a credential's name");
        assert!(!may_grow("password_hint = correct"));
    }

    /// A password streamed in pieces that each look like plain words: no
    /// piece of it reaches the client, however the stream is cut.
    #[test]
    fn a_password_split_into_plain_words_is_redacted_whole() {
        let reply = "Connect with password = \"correcthorsebattery9\" and retry.";
        for size in [1, 3, 7, 12, 30] {
            for split in [5, 1000] {
                let (text, _) = run(reply, size, split);
                assert_eq!(
                    text, "Connect with password = \"[REDACTED:password]\" and retry.",
                    "size {size} split {split}"
                );
            }
        }
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

    const GH_BODY: &str = "Ab3dE6gH9jK2mN5pQ8sT1vW4yZ7bC0eF2hJ5";

    /// The SSE frames that stream `args` as one tool call's arguments in
    /// pieces of `size` characters, in `family`'s dialect, with its end.
    fn tool_call_wire(family: Family, args: &str, size: usize) -> String {
        let chars: Vec<char> = args.chars().collect();
        let mut wire = match family {
            Family::OpenAiChat => format!(
                "data: {}\n\n",
                serde_json::json!({"choices": [{"index": 0, "delta": {"role": "assistant",
                    "tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                        "function": {"name": "write", "arguments": ""}}]}}]})
            ),
            Family::AnthropicMessages => format!(
                "event: content_block_start\ndata: {}\n\n",
                serde_json::json!({"type": "content_block_start", "index": 1,
                    "content_block": {"type": "tool_use", "id": "t", "name": "write", "input": {}}})
            ),
            _ => String::new(),
        };
        for piece in chars.chunks(size) {
            let piece: String = piece.iter().collect();
            wire.push_str(&match family {
                Family::OpenAiChat => format!(
                    "data: {}\n\n",
                    serde_json::json!({"choices": [{"index": 0, "delta": {"tool_calls": [
                        {"index": 0, "function": {"arguments": piece}}]}}]})
                ),
                Family::AnthropicMessages => format!(
                    "event: content_block_delta\ndata: {}\n\n",
                    serde_json::json!({"type": "content_block_delta", "index": 1,
                        "delta": {"type": "input_json_delta", "partial_json": piece}})
                ),
                _ => format!(
                    "event: response.function_call_arguments.delta\ndata: {}\n\n",
                    serde_json::json!({"type": "response.function_call_arguments.delta",
                        "item_id": "fc_1", "output_index": 0, "delta": piece})
                ),
            });
        }
        wire.push_str(match family {
            Family::OpenAiChat => "data: [DONE]\n\n",
            Family::AnthropicMessages => "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
            _ => "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{}}\n\n",
        });
        wire
    }

    /// Adds to a Responses `wire` the `response.function_call_arguments.done`
    /// event that repeats `args` whole, before the stream's end, as the API
    /// sends it.
    fn with_arguments_done(wire: &mut String, args: &str) {
        let done = serde_json::json!({"type": "response.function_call_arguments.done",
            "item_id": "fc_1", "output_index": 0, "arguments": args});
        let end = wire.rfind("event: response.completed").unwrap();
        wire.insert_str(
            end,
            &format!("event: response.function_call_arguments.done\ndata: {done}\n\n"),
        );
    }

    /// The arguments of the `response.function_call_arguments.done` event
    /// the client sees in `raw`.
    fn arguments_done(raw: &str) -> String {
        let done = raw
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| serde_json::from_str::<serde_json::Value>(d).unwrap())
            .find(|v| v["type"] == "response.function_call_arguments.done")
            .unwrap();
        done["arguments"].as_str().unwrap().to_owned()
    }

    /// The tool-call arguments the client sees in `raw`.
    fn streamed_args(family: Family, raw: &str) -> String {
        let mut args = String::new();
        for data in raw.lines().filter_map(|l| l.strip_prefix("data: ")) {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else {
                continue;
            };
            let piece = match family {
                Family::OpenAiChat => {
                    &v["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                }
                Family::AnthropicMessages => &v["delta"]["partial_json"],
                _ => &v["delta"],
            };
            args.push_str(piece.as_str().unwrap_or_default());
        }
        args
    }

    fn stream_through(yaml: &str, family: Family, wire: &str) -> (String, OutputStream, Flow) {
        let chain = Arc::new(Chain::build(&Config::parse(yaml, Path::new("t")).unwrap()).unwrap());
        let api = match family {
            Family::OpenAiChat => Api::OpenAiChat,
            Family::AnthropicMessages => Api::AnthropicMessages,
            Family::Gemini => Api::Gemini,
            _ => Api::OpenAiResponses,
        };
        let mut s = OutputStream::new(chain, vec![0], family, Some(api));
        let mut out = Vec::new();
        let mut flow = Flow::Continue;
        for part in wire.as_bytes().chunks(7) {
            flow = s.push(part, &mut out);
            if flow == Flow::Stop {
                break;
            }
        }
        if flow == Flow::Continue {
            s.finish(&mut out);
        }
        let raw: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
        (String::from_utf8(raw).unwrap(), s, flow)
    }

    /// A secret in the arguments of a tool call the model streams is
    /// redacted however the deltas cut it, in the three dialects that
    /// stream arguments; the arguments stay JSON, the secret counts once.
    #[test]
    fn secrets_in_streamed_tool_arguments_are_redacted() {
        let token = format!("ghp_{GH_BODY}");
        let args = serde_json::json!({"path": ".env",
            "content": format!("# env\nTOKEN={token}\nDEBUG=1")})
        .to_string();
        let yaml = "policies:\n  chain: [r]\npolicy:\n  r:\n    type: redact\n";
        let families = [
            Family::OpenAiChat,
            Family::AnthropicMessages,
            Family::OpenAiResponses,
        ];
        for family in families {
            for size in [1, 2, 3, 5, 9, 17, 40, args.len()] {
                let wire = tool_call_wire(family, &args, size);
                let (raw, s, flow) = stream_through(yaml, family, &wire);
                assert_eq!(flow, Flow::Continue);
                assert!(!raw.contains("Ab3dE6"), "{family:?} size {size}: {raw}");
                let got = streamed_args(family, &raw);
                let v: serde_json::Value = serde_json::from_str(&got)
                    .unwrap_or_else(|e| panic!("{family:?} size {size}: {e}: {got}"));
                assert_eq!(
                    v["content"], "# env\nTOKEN=[REDACTED:github_pat]\nDEBUG=1",
                    "{family:?} size {size}"
                );
                assert_eq!(v["path"], ".env");
                let counted = redactions(&s);
                assert_eq!(counted, 1, "{family:?} size {size}");
            }
        }
    }

    /// Two tool calls in one answer: each one's arguments are checked in a
    /// window of its own, a secret in each is redacted and counted.
    #[test]
    fn each_tool_call_is_checked_on_its_own() {
        let token = format!("ghp_{GH_BODY}");
        let call = |index: usize, piece: &str| {
            format!(
                "data: {}\n\n",
                serde_json::json!({"choices": [{"index": 0, "delta": {"tool_calls": [
                    {"index": index, "function": {"arguments": piece}}]}}]})
            )
        };
        let first = serde_json::json!({"k": token}).to_string();
        let second = serde_json::json!({"k": format!("x {token}")}).to_string();
        let mut wire = String::new();
        for (index, args) in [(0, &first), (1, &second)] {
            let chars: Vec<char> = args.chars().collect();
            for piece in chars.chunks(4) {
                wire.push_str(&call(index, &piece.iter().collect::<String>()));
            }
        }
        wire.push_str("data: [DONE]\n\n");
        let yaml = "policies:\n  chain: [r]\npolicy:\n  r:\n    type: redact\n";
        let (raw, s, _) = stream_through(yaml, Family::OpenAiChat, &wire);
        let mut per_call = [String::new(), String::new()];
        for data in raw.lines().filter_map(|l| l.strip_prefix("data: ")) {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else {
                continue;
            };
            let t = &v["choices"][0]["delta"]["tool_calls"][0];
            let i = t["index"].as_u64().unwrap() as usize;
            per_call[i].push_str(t["function"]["arguments"].as_str().unwrap());
        }
        let parsed: Vec<serde_json::Value> = per_call
            .iter()
            .map(|a| serde_json::from_str(a).unwrap())
            .collect();
        assert_eq!(parsed[0]["k"], "[REDACTED:github_pat]");
        assert_eq!(parsed[1]["k"], "x [REDACTED:github_pat]");
        let counted = redactions(&s);
        assert_eq!(counted, 2);
    }

    /// Clean tool-call arguments pass byte-identical.
    #[test]
    fn clean_tool_arguments_are_forwarded_byte_identical() {
        let args = r#"{"path":"src/main.rs","content":"fn main() {\n    println!(\"hi\");\n}\n"}"#;
        let yaml = "policies:\n  chain: [r]\npolicy:\n  r:\n    type: redact\n";
        for family in [
            Family::OpenAiChat,
            Family::AnthropicMessages,
            Family::OpenAiResponses,
        ] {
            let wire = tool_call_wire(family, args, 4);
            let (raw, _, _) = stream_through(yaml, family, &wire);
            assert_eq!(raw, wire, "{family:?}");
        }
    }

    /// A pattern the content filter blocks ends the stream when it shows up
    /// in tool-call arguments, split or not; nothing of it reaches the client.
    #[test]
    fn a_blocked_pattern_in_tool_arguments_ends_the_stream() {
        let yaml = "policies:\n  chain: [f]\npolicy:\n  f:\n    type: content-filter\n    patterns: ['project-zeus']\n";
        let args = r#"{"query":"status of project-zeus please"}"#;
        for family in [
            Family::OpenAiChat,
            Family::AnthropicMessages,
            Family::OpenAiResponses,
        ] {
            for size in [1, 4, 100] {
                let wire = tool_call_wire(family, args, size);
                let (raw, s, flow) = stream_through(yaml, family, &wire);
                assert_eq!(flow, Flow::Stop, "{family:?} size {size}: {raw}");
                assert!(
                    !streamed_args(family, &raw).contains("project-zeus"),
                    "{raw}"
                );
                assert!(raw.contains("blocked"), "{family:?}: {raw}");
                assert!(
                    s.notes
                        .iter()
                        .any(|n| matches!(n, StreamNote::Blocked { .. })),
                    "{family:?}"
                );
            }
        }
    }

    /// A content filter that redacts or logs reads every match in the
    /// streamed text, not only the first of each check: a second match in
    /// one frame is replaced too, and a match after one already sent is
    /// still seen.
    #[test]
    fn a_stream_filter_acts_on_every_match() {
        fn text_wire(pieces: &[&str]) -> String {
            pieces.iter().map(|p| chunk_event(p)).collect()
        }
        let policy = |action: &str| {
            format!("policies:\n  chain: [f]\npolicy:\n  f:\n    type: content-filter\n    patterns: ['zeus9[0-9]']\n    keywords: [apollo]\n    action: {action}\n")
        };
        let redact = policy("redact");
        for pieces in [
            &["a zeus91 b zeus92 c Apollo d zeus93 e"][..],
            &["a zeus91 b ", "zeus92 c ", "Apollo d zeus93 e"],
        ] {
            let (raw, s, _) = stream_through(&redact, Family::OpenAiChat, &text_wire(pieces));
            let text = streamed_text(&raw);
            assert_eq!(
                text, "a [REDACTED:f] b [REDACTED:f] c [REDACTED:f] d [REDACTED:f] e",
                "{pieces:?}"
            );
            let counted = redactions(&s);
            assert_eq!(counted, 4, "{pieces:?}: {:?}", s.notes);
        }
        // Text without spaces in a script that has none is not held.
        let chain =
            Arc::new(Chain::build(&Config::parse(&redact, Path::new("t")).unwrap()).unwrap());
        let mut s = OutputStream::new(chain, vec![0], Family::OpenAiChat, Some(Api::OpenAiChat));
        for piece in ["这是", "一个", "测试"] {
            let mut out = Vec::new();
            assert_eq!(
                s.push(text_wire(&[piece]).as_bytes(), &mut out),
                Flow::Continue
            );
            let raw: Vec<u8> = out.concat();
            assert_eq!(streamed_text(&String::from_utf8(raw).unwrap()), piece);
        }
        let log = policy("log");
        let (raw, s, _) = stream_through(
            &log,
            Family::OpenAiChat,
            &text_wire(&["a zeus91 b ", "then zeus92 c ", "and Apollo."]),
        );
        assert_eq!(streamed_text(&raw), "a zeus91 b then zeus92 c and Apollo.");
        let rules: Vec<&str> = s
            .notes
            .iter()
            .filter_map(|n| match n {
                StreamNote::Logged { rule, .. } => Some(rule.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            rules,
            ["zeus9[0-9]", "zeus9[0-9]", "apollo"],
            "{:?}",
            s.notes
        );
    }

    /// A filtered phrase split across deltas reaches the client not even in
    /// part: the text that could still grow into it is held (at a space
    /// too), while text that cannot is released at once, mid-word included.
    #[test]
    fn no_part_of_a_filtered_phrase_is_released_before_it_is_whole() {
        let policy = |action: &str| {
            format!("policies:\n  chain: [f]\npolicy:\n  f:\n    type: content-filter\n    keywords: ['Project Falcon']\n    patterns: ['(?i)codename\\s+\\w+']\n    action: {action}\n")
        };
        let chain = |action: &str| {
            Arc::new(
                Chain::build(&Config::parse(&policy(action), Path::new("t")).unwrap()).unwrap(),
            )
        };
        let released = |s: &mut OutputStream, piece: &str| {
            let mut out = Vec::new();
            let flow = s.push(chunk_event(piece).as_bytes(), &mut out);
            (
                streamed_text(&String::from_utf8(out.concat()).unwrap()),
                flow,
            )
        };
        // Frames are held whole; the one the phrase starts in is not sent.
        for (pieces, before) in [
            (
                &["The plan: ", "project ", "falcon ships"][..],
                "The plan: ",
            ),
            (
                &["The plan: ", "Project", " Fal", "con ships"],
                "The plan: ",
            ),
            (&["Its ", "codename ", "is ", "zeus"], "Its "),
        ] {
            let mut s = OutputStream::new(
                chain("block"),
                vec![0],
                Family::OpenAiChat,
                Some(Api::OpenAiChat),
            );
            let mut seen = String::new();
            let mut flow = Flow::Continue;
            for piece in pieces {
                let (text, f) = released(&mut s, piece);
                seen.push_str(&text);
                flow = f;
                if flow == Flow::Stop {
                    break;
                }
            }
            assert_eq!(flow, Flow::Stop, "{pieces:?}");
            assert_eq!(seen, before, "{pieces:?}");
        }
        let (raw, _, _) = stream_through(
            &policy("redact"),
            Family::OpenAiChat,
            &["The plan: project ", "falcon ships"]
                .iter()
                .map(|p| chunk_event(p))
                .collect::<String>(),
        );
        assert_eq!(streamed_text(&raw), "The plan: [REDACTED:f] ships");
        // Text that cannot begin a match goes out as it comes, even when a
        // delta ends mid-word; a held start that does not grow into a match
        // goes out with the next delta.
        let mut s = OutputStream::new(
            chain("block"),
            vec![0],
            Family::OpenAiChat,
            Some(Api::OpenAiChat),
        );
        assert_eq!(released(&mut s, "hello wor").0, "hello wor");
        assert_eq!(released(&mut s, "ld, the proj").0, "");
        assert_eq!(
            released(&mut s, "ection is late").0,
            "ld, the projection is late"
        );
        // Without a redact policy, token-shaped words are not held either.
        assert_eq!(released(&mut s, ", key sk-4f9a").0, ", key sk-4f9a");
    }

    /// Gemini streams a function call whole, its `args` an object: every
    /// string in it is read by the stream policies, a secret there is
    /// redacted (the event stays JSON, the other values untouched) and a
    /// filtered word blocks.
    #[test]
    fn gemini_streamed_function_call_args_are_checked() {
        let token = format!("ghp_{GH_BODY}");
        let wire = |args: serde_json::Value| {
            let call = serde_json::json!({"candidates": [{"content": {"role": "model", "parts": [
                {"text": "Calling the tool."},
                {"functionCall": {"name": "deploy", "args": args}}]}}]});
            let more = serde_json::json!({"candidates": [{"content": {"role": "model",
                "parts": [{"text": "Done"}]}, "finishReason": "STOP"}]});
            format!("data: {call}\r\n\r\ndata: {more}\r\n\r\n")
        };
        let redact = "policies:\n  chain: [r]\npolicy:\n  r:\n    type: redact\n";
        let args =
            serde_json::json!({"env": {"token": token, "note": "a \"quoted\" word"}, "n": 3});
        let (raw, s, flow) = stream_through(redact, Family::Gemini, &wire(args));
        assert_eq!(flow, Flow::Continue);
        assert!(!raw.contains(GH_BODY), "{raw}");
        let datas: Vec<serde_json::Value> = raw
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        let parts = &datas[0]["candidates"][0]["content"]["parts"];
        assert_eq!(parts[0]["text"], "Calling the tool.");
        let args = &parts[1]["functionCall"]["args"];
        assert_eq!(args["env"]["token"], "[REDACTED:github_pat]", "{raw}");
        assert_eq!(args["env"]["note"], "a \"quoted\" word");
        assert_eq!(args["n"], 3);
        assert_eq!(
            datas[1]["candidates"][0]["content"]["parts"][0]["text"],
            "Done"
        );
        let redacted = redactions(&s);
        assert_eq!(redacted, 1, "{:?}", s.notes);

        let filter = "policies:\n  chain: [f]\npolicy:\n  f:\n    type: content-filter\n    patterns: ['project-zeus']\n";
        let args = serde_json::json!({"query": "status of project-zeus"});
        let (raw, _, flow) = stream_through(filter, Family::Gemini, &wire(args));
        assert_eq!(flow, Flow::Stop, "{raw}");
        assert!(!raw.contains("project-zeus"), "{raw}");
    }

    /// A replacement in arguments never leaves half an escape sequence: the
    /// arguments stay JSON whatever the match's edges.
    #[test]
    fn replacements_in_arguments_take_whole_escapes() {
        // Ends inside `\"`, starts inside `\n`.
        let yaml = "policies:\n  chain: [f]\npolicy:\n  f:\n    type: content-filter\n    patterns: ['zeus9.{2}', '[a-z]+-apollo']\n    action: redact\n";
        let cases = [
            (
                serde_json::json!({"a": "zeus9\"x"}),
                "[REDACTED:f]x",
                "9\\\"",
            ),
            (
                serde_json::json!({"a": "y\nfoo-apollo z"}),
                "y[REDACTED:f] z",
                "-apollo",
            ),
        ];
        for (args, want, cut) in cases {
            let args = args.to_string();
            for family in [Family::OpenAiChat, Family::AnthropicMessages] {
                for size in [1, 3, 100] {
                    let wire = tool_call_wire(family, &args, size);
                    let (raw, _, _) = stream_through(yaml, family, &wire);
                    let got = streamed_args(family, &raw);
                    let v: serde_json::Value = serde_json::from_str(&got)
                        .unwrap_or_else(|e| panic!("{family:?} size {size}: {e}: {got}"));
                    assert!(!got.contains(cut), "{family:?} size {size}: {got}");
                    // Cut in small deltas, an escape just before a match
                    // (the `\n` whose `n` the pattern takes) may have gone
                    // out before the match came: it is then kept whole.
                    if size == 100 {
                        assert_eq!(v["a"], want, "{family:?}: {got}");
                    }
                }
            }
        }
        assert_eq!(escape_around(br#"a\nb"#, 2), Some(1..3));
        assert_eq!(escape_around(br#"a\\nb"#, 3), None);
        assert_eq!(escape_around(br#"\u00e9x"#, 4), Some(0..6));
        assert_eq!(escape_around(br#"\u00e9x"#, 6), None);
        assert_eq!(escape_safe(br#"ab\ncd"#, 0, 3..5), 2..5);
        assert_eq!(escape_safe(br#"ab\ncd"#, 3, 3..5), 4..5);
        assert_eq!(escape_safe(br#"ab\"cd"#, 0, 0..3), 0..4);
    }

    /// A filter's match that runs on past the end of a string in streamed
    /// arguments (`\S+` takes the closing `"}` too) is cut at the string's
    /// end: the arguments stay JSON.
    #[test]
    fn a_filter_match_in_arguments_stops_at_the_end_of_its_string() {
        let yaml = "policies:\n  chain: [f]\npolicy:\n  f:\n    type: content-filter\n    patterns: ['project-\\S+']\n    action: redact\n";
        let args = r#"{"q":"project-zeus","n":1}"#;
        for family in [
            Family::OpenAiChat,
            Family::AnthropicMessages,
            Family::OpenAiResponses,
        ] {
            for size in [1, 5, 100] {
                let mut wire = tool_call_wire(family, args, size);
                if family == Family::OpenAiResponses {
                    with_arguments_done(&mut wire, args);
                }
                let (raw, _, _) = stream_through(yaml, family, &wire);
                let got = streamed_args(family, &raw);
                let v: serde_json::Value = serde_json::from_str(&got)
                    .unwrap_or_else(|e| panic!("{family:?} size {size}: {e}: {got}"));
                assert_eq!(v["q"], "[REDACTED:f]", "{family:?} size {size}: {got}");
                assert_eq!(v["n"], 1, "{family:?} size {size}: {got}");
                if family == Family::OpenAiResponses {
                    let whole: serde_json::Value =
                        serde_json::from_str(&arguments_done(&raw)).unwrap();
                    assert_eq!(
                        whole, v,
                        "size {size}: the whole arguments match the deltas"
                    );
                }
            }
        }
        assert_eq!(within_string(br#"ab"},"c"#, 0..6), 0..2);
        assert_eq!(within_string(br#"a\"b"}"#, 0..6), 0..4);
        assert_eq!(within_string(br#"","x"#, 0..4), 0..4);
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
            let counted = redactions(&s);
            assert_eq!(counted, 1, "cut {cut}");
        }
    }

    /// The Responses events that repeat the whole answer, in the order the
    /// API sends them after its deltas.
    fn responses_done_events(text: &str) -> String {
        let events = [
            serde_json::json!({"type": "response.output_text.done", "item_id": "m",
                "output_index": 0, "content_index": 0, "text": text}),
            serde_json::json!({"type": "response.content_part.done", "item_id": "m",
                "output_index": 0, "content_index": 0,
                "part": {"type": "output_text", "text": text, "annotations": []}}),
            serde_json::json!({"type": "response.output_item.done", "output_index": 0,
                "item": {"type": "message", "id": "m", "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}]}}),
            serde_json::json!({"type": "response.completed", "response": {"id": "r",
                "output": [{"type": "message", "id": "m", "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}]}],
                "usage": {"input_tokens": 5, "output_tokens": 9}}}),
        ];
        events
            .iter()
            .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap()))
            .collect()
    }

    /// A Responses stream repeats its answer whole in its `….done` events
    /// and in `response.completed`: a secret the deltas had cut is cut
    /// there too, and still counts once.
    #[test]
    fn a_responses_stream_repeats_no_secret_in_its_whole_text_events() {
        let token = format!("ghp_{GH_BODY}");
        let reply = format!("use {token} now");
        let yaml = "policies:\n  chain: [r]\npolicy:\n  r:\n    type: redact\n";
        let chars: Vec<char> = reply.chars().collect();
        let mut wire = String::new();
        for piece in chars.chunks(5) {
            let delta = serde_json::json!({"type": "response.output_text.delta", "item_id": "m",
                "output_index": 0, "content_index": 0, "delta": piece.iter().collect::<String>()});
            wire.push_str(&format!(
                "event: response.output_text.delta\ndata: {delta}\n\n"
            ));
        }
        wire.push_str(&responses_done_events(&reply));
        let (raw, mut s, flow) = stream_through(yaml, Family::OpenAiResponses, &wire);
        assert_eq!(flow, Flow::Continue);
        assert!(!raw.contains(&GH_BODY[..8]), "{raw}");
        let redacted = "use [REDACTED:github_pat] now";
        let mut deltas = String::new();
        let mut whole = Vec::new();
        for data in raw.lines().filter_map(|l| l.strip_prefix("data: ")) {
            let v: serde_json::Value = serde_json::from_str(data).unwrap();
            match v["type"].as_str().unwrap() {
                "response.output_text.delta" => deltas.push_str(v["delta"].as_str().unwrap()),
                "response.output_text.done" => whole.push(v["text"].clone()),
                "response.content_part.done" => whole.push(v["part"]["text"].clone()),
                "response.output_item.done" => whole.push(v["item"]["content"][0]["text"].clone()),
                "response.completed" => {
                    whole.push(v["response"]["output"][0]["content"][0]["text"].clone());
                    assert_eq!(v["response"]["usage"]["output_tokens"], 9);
                }
                other => panic!("unexpected event {other}"),
            }
        }
        assert_eq!(deltas, redacted);
        assert_eq!(whole, vec![serde_json::json!(redacted); 4], "{raw}");
        let notes = s.take_notes();
        assert_eq!(notes.len(), 1, "{notes:?}");
    }

    /// The arguments a Responses stream repeats whole in
    /// `response.function_call_arguments.done` are redacted and stay JSON.
    #[test]
    fn a_responses_stream_repeats_no_secret_in_its_finished_arguments() {
        let token = format!("ghp_{GH_BODY}");
        let args =
            serde_json::json!({"path": ".env", "content": format!("TOKEN={token}")}).to_string();
        let yaml = "policies:\n  chain: [r]\npolicy:\n  r:\n    type: redact\n";
        let mut wire = tool_call_wire(Family::OpenAiResponses, &args, 9);
        with_arguments_done(&mut wire, &args);
        let (raw, mut s, _) = stream_through(yaml, Family::OpenAiResponses, &wire);
        assert!(!raw.contains(&GH_BODY[..8]), "{raw}");
        let done = arguments_done(&raw);
        let args: serde_json::Value = serde_json::from_str(&done).unwrap();
        assert_eq!(args["content"], "TOKEN=[REDACTED:github_pat]");
        assert_eq!(streamed_args(Family::OpenAiResponses, &raw), done);
        assert_eq!(s.take_notes().len(), 1);
    }

    /// A blocked phrase in an event that carries text whole stops the
    /// stream there, as in a delta.
    #[test]
    fn a_filtered_phrase_in_a_whole_text_event_blocks_the_stream() {
        let yaml = "policies:\n  chain: [f]\npolicy:\n  f:\n    type: content-filter\n    keywords: ['Project Falcon']\n    action: block\n";
        let wire = responses_done_events("the Project Falcon plan");
        let (raw, mut s, flow) = stream_through(yaml, Family::OpenAiResponses, &wire);
        assert_eq!(flow, Flow::Stop);
        assert!(!raw.contains("Falcon"), "{raw}");
        assert!(s
            .take_notes()
            .iter()
            .any(|n| matches!(n, StreamNote::Blocked { policy, .. } if &**policy == "f")),);
    }

    /// A stream the upstream closes without the blank line that ends its
    /// last event: that event is still checked (line-reading clients take
    /// it) before it goes out.
    #[test]
    fn an_unterminated_last_event_is_checked_too() {
        let token = format!("ghp_{GH_BODY}");
        let yaml = "policies:\n  chain: [r]\npolicy:\n  r:\n    type: redact\n";
        let first =
            serde_json::json!({"candidates": [{"content": {"parts": [{"text": "Here: "}]}}]});
        let last = serde_json::json!({"candidates": [{"content": {"parts": [{"text": format!("{token} ok")}]}}]});
        for ending in ["\n", "\r\n", ""] {
            let wire = format!("data: {first}\n\ndata: {last}{ending}");
            let (raw, mut s, flow) = stream_through(yaml, Family::Gemini, &wire);
            assert_eq!(flow, Flow::Continue);
            assert!(!raw.contains(&GH_BODY[..8]), "{ending:?}: {raw}");
            assert!(
                raw.contains("[REDACTED:github_pat] ok"),
                "{ending:?}: {raw}"
            );
            assert_eq!(s.take_notes().len(), 1);
        }
    }

    /// Events with no text behind a held word keep their place, but a
    /// flood of them is not piled up behind it.
    #[test]
    fn events_without_text_behind_a_held_word_are_bounded() {
        let mut s = redacting_stream();
        let mut out = Vec::new();
        s.push(chunk_event("the key is ").as_bytes(), &mut out);
        s.push(chunk_event("ghp_Ab3dE6").as_bytes(), &mut out);
        let before = streamed_text(&String::from_utf8(out.concat()).unwrap());
        assert_eq!(before, "the key is ", "the token's start is held");
        // A few pings stay behind the held word, in order.
        out.clear();
        for _ in 0..10 {
            s.push(b": ping\n\n", &mut out);
        }
        assert!(out.is_empty(), "released early");
        s.push(
            chunk_event(&format!("{} ok", &GH_BODY[6..])).as_bytes(),
            &mut out,
        );
        let raw = String::from_utf8(out.concat()).unwrap();
        assert_eq!(streamed_text(&raw), "[REDACTED:github_pat] ok");
        assert_eq!(raw.matches(": ping").count(), 10);
        assert!(raw.find(": ping") > raw.find("REDACTED"), "{raw}");
        // A flood is released once it passes the bound.
        out.clear();
        s.push(chunk_event("next ghp_Zz9").as_bytes(), &mut out);
        for _ in 0..MAX_HELD_BARE * 4 {
            s.push(b": ping\n\n", &mut out);
            assert!(s.held.len() <= MAX_HELD_BARE + 1, "{}", s.held.len());
        }
        assert!(!out.is_empty(), "never released");
        // So is a flood of deltas whose text is empty.
        out.clear();
        s.push(chunk_event("then ghp_Yy8").as_bytes(), &mut out);
        for _ in 0..MAX_HELD_BARE * 4 {
            s.push(chunk_event("").as_bytes(), &mut out);
            assert!(s.held.len() <= MAX_HELD_BARE + 1, "{}", s.held.len());
        }
        assert!(!out.is_empty(), "never released");
    }
}
