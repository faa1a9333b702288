//! The audit trail: the event type, the hash-chained JSON-lines log, its verification, and reading it back for `kt events tail`.
//!
//! # Layout
//!
//! - [`Event`] (this file): one event per phase per request, with the field
//!   names of the interface contract.
//! - [`chain`]: canonical JSON and the SHA-256 chaining of events.
//! - [`segment`]: segment file names (`YYYY-MM-DD.jsonl`, `YYYY-MM-DD.N.jsonl`),
//!   listing them in order, and retention ([`prune`]).
//! - [`log`]: the writer: [`EventLog::open`] gives an [`EventSink`] (cheap to
//!   clone, bounded, never drops) and a [`WriterHandle`] (flush on shutdown).
//! - [`anchor`]: where the chain starts (`anchor.json`), recorded by the
//!   writer and by retention.
//! - [`verify`](mod@verify): walks every segment and checks the chain.
//! - [`report`]: spend per user, team, model or provider (`kt report costs`).
//! - [`read`]: last N events, following the log as it grows, `--filter`
//!   parsing and the one-line text format of `kt events tail`.
//!
//! # The chain
//!
//! Each event carries `prev_hash` (the `hash` of the event before it; 64 zeros
//! for the first event of a brand new log) and
//! `hash = hex(SHA-256(prev_hash || canonical_json(event without hash)))`,
//! where canonical JSON has sorted keys and no whitespace. The chain runs
//! across segments. It starts at 64 zeros or, after retention removed old
//! segments, at the hash recorded in the log's [`anchor`] file.

pub mod anchor;
pub mod chain;
mod json;
pub mod log;
pub mod read;
pub mod report;
pub mod segment;
pub mod verify;

pub use chain::GENESIS_HASH;
pub use log::{EventLog, EventSink, LogOptions, SendError, WriterHandle, WriterStats};
pub use read::{
    format_line, position_after, read_last, Filter, FilterError, Filters, Follower, LineTail,
    Position, FILTER_KEYS,
};
pub use segment::{prune, prune_before, prune_until, Segment};
pub use verify::{verify, verify_with, Checkpoints, Problem, VerifyError, VerifyReport};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// A field's text: most values are kt's own names (`openai`, `POST`,
/// `chat/completions`), borrowed rather than copied into every event.
pub type Text = std::borrow::Cow<'static, str>;

/// Which side of the exchange an event describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The request on its way to the provider.
    Input,
    /// The response on its way back.
    Output,
    /// A CONNECT that was tunnelled or intercepted.
    Connect,
}

impl Phase {
    /// The name used in JSON and filters.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Input => "input",
            Phase::Output => "output",
            Phase::Connect => "connect",
        }
    }
}

/// What the gateway did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Pass,
    Block,
    Redact,
    CacheHit,
    Error,
    Tunnel,
}

impl Action {
    /// The name used in JSON and filters.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pass => "pass",
            Action::Block => "block",
            Action::Redact => "redact",
            Action::CacheHit => "cache_hit",
            Action::Error => "error",
            Action::Tunnel => "tunnel",
        }
    }
}

/// How the client reached the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Through the forward proxy (CONNECT + interception or plain HTTP).
    Proxy,
    /// Directly at the OpenAI-compatible API.
    Direct,
}

impl Mode {
    /// The name used in JSON and filters.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Proxy => "proxy",
            Mode::Direct => "direct",
        }
    }
}

/// One audit event. Field names are the contract's; every optional field is
/// absent from the JSON when unknown. Fields are declared in alphabetical
/// order so that serde's output is already the canonical (sorted-key) JSON
/// the hash chain needs, without building a `Value` per event.
///
/// `prev_hash` and `hash` are filled in by the writer; leave them empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub action: Action,
    /// The wire dialect (`openai-chat`, `anthropic-messages`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<Text>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_hit: Option<bool>,
    /// Extra: the client's address (through `auth.trusted_proxies`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<Arc<str>>,
    /// Extra, on cache hits: what the replayed answer cost when it was
    /// first fetched, saved this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_saved_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    /// The logical operation (`chat/completions`, `completions`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<Text>,
    /// This event's hash; filled by the writer.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<Arc<str>>,
    /// Unique and time-ordered: 12 hex digits of Unix milliseconds, then 20
    /// random hex digits, so ids sort by creation time.
    pub id: String,
    /// Whole exchange as the client saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<Text>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<Arc<str>>,
    /// Extra: kt's own share of the time to the response head (request
    /// body read, policies, connection handling), in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overhead_us: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<Arc<str>>,
    pub phase: Phase,
    /// The policy that decided `action` (block/redact/cache_hit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Time spent in the policy chain, in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_us: Option<u64>,
    /// Hash of the event before this one; filled by the writer.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prev_hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<Text>,
    /// Why, in words a user can act on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Extra (not in the contract's list): how many matches of each secret
    /// kind or pattern a `redact` action replaced, e.g. `{"aws_key": 2}`.
    /// Counts only, never the matched text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redactions: Option<BTreeMap<String, u64>>,
    /// Extra, with `log_bodies`: the request body as sent upstream (after
    /// redaction), cut at 64 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_body: Option<String>,
    /// Ties the input and output events of one exchange together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<Arc<str>>,
    /// Extra, with `log_bodies`: the response body as the client got it
    /// (after redaction), cut at 64 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_body: Option<String>,
    /// HTTP status sent to the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<Arc<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_in: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_out: Option<u64>,
    /// RFC 3339 UTC with milliseconds, e.g. `2026-11-23T10:32:15.123Z`.
    pub ts: String,
    /// Time spent waiting on the provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_ms: Option<u64>,
    /// Extra: where `tokens_in`/`tokens_out` come from: `provider` (the
    /// response's usage fields) or `estimated` (from the text, when the
    /// provider reports none, e.g. Copilot ghost text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_source: Option<Text>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<Arc<str>>,
}

impl Event {
    /// A new event stamped with a fresh id and the current time; every other
    /// field unknown.
    pub fn new(phase: Phase, action: Action) -> Event {
        Event::at(phase, action, time::OffsetDateTime::now_utc())
    }

    /// A new event with a fresh id, stamped `now`: the events of one
    /// exchange, built together, share one reading of the clock.
    pub fn at(phase: Phase, action: Action, now: time::OffsetDateTime) -> Event {
        Event {
            id: new_id(now),
            ts: format_ts(now),
            phase,
            action,
            policy: None,
            reason: None,
            mode: None,
            provider: None,
            host: None,
            method: None,
            path: None,
            endpoint: None,
            api: None,
            model: None,
            user: None,
            team: None,
            status: None,
            latency_ms: None,
            upstream_ms: None,
            policy_us: None,
            tokens_in: None,
            tokens_out: None,
            cost_usd: None,
            cost_saved_usd: None,
            cache_hit: None,
            client_ip: None,
            request_id: None,
            redactions: None,
            overhead_us: None,
            usage_source: None,
            request_body: None,
            response_body: None,
            prev_hash: String::new(),
            hash: String::new(),
        }
    }
}

/// `2026-11-23T10:32:15.123Z`. Formatted by hand, digit by digit: every
/// event carries one and `format!` was a measurable part of an exchange.
pub fn format_ts(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let mut out = [0u8; 24];
    // Years outside 0..=9999 are not representable in this form; clamp
    // rather than emit a malformed stamp.
    put_digits(&mut out[0..4], t.year().clamp(0, 9999) as u32);
    out[4] = b'-';
    put_digits(&mut out[5..7], u8::from(t.month()).into());
    out[7] = b'-';
    put_digits(&mut out[8..10], t.day().into());
    out[10] = b'T';
    put_digits(&mut out[11..13], t.hour().into());
    out[13] = b':';
    put_digits(&mut out[14..16], t.minute().into());
    out[16] = b':';
    put_digits(&mut out[17..19], t.second().into());
    out[19] = b'.';
    put_digits(&mut out[20..23], t.millisecond().into());
    out[23] = b'Z';
    ascii(&out)
}

/// A `String` from bytes this module wrote, all ASCII.
fn ascii(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap_or_default()
}

/// Writes `n` in decimal, zero-padded to the width of `out`.
fn put_digits(out: &mut [u8], mut n: u32) {
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// 12 hex digits of Unix milliseconds + 20 random hex digits (80 bits), so
/// ids are unique in practice and sort by creation time.
fn new_id(now: time::OffsetDateTime) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let millis = (now.unix_timestamp_nanos() / 1_000_000).max(0) as u128 & 0xffff_ffff_ffff;
    let random: u128 = rand::random::<u128>() & ((1u128 << 80) - 1);
    let mut value = (millis << 80) | random;
    let mut out = [0u8; 32];
    for slot in out.iter_mut().rev() {
        *slot = HEX[(value & 0xf) as usize];
        value >>= 4;
    }
    ascii(&out)
}

/// Errors of the log itself: opening, recovering and writing segments.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("audit log {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("audit log {path} line {line}: {problem}; refusing to continue the chain from it")]
    Corrupt {
        path: PathBuf,
        line: usize,
        problem: String,
    },
    #[error("the audit log writer has stopped")]
    WriterGone,
    #[error(
        "audit log {} is being written by another kt process{}: two writers would break its hash chain; stop that gateway, or give this one its own --data-dir",
        .dir.display(),
        .holder.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    InUse { dir: PathBuf, holder: Option<u32> },
}

impl EventsError {
    /// Stable snake_case label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            EventsError::Io { .. } => "events_io",
            EventsError::Corrupt { .. } => "events_corrupt",
            EventsError::WriterGone => "events_writer_gone",
            EventsError::InUse { .. } => "events_in_use",
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> EventsError {
        EventsError::Io {
            path: path.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_event_has_sortable_unique_id_and_millis_ts() {
        let a = Event::new(Phase::Input, Action::Pass);
        let b = Event::new(Phase::Input, Action::Pass);
        assert_eq!(a.id.len(), 32);
        assert_ne!(a.id, b.id);
        assert!(a.id[..12] <= b.id[..12]);
        assert_eq!(a.ts.len(), "2026-11-23T10:32:15.123Z".len());
        assert!(a.ts.ends_with('Z'));
        assert_eq!(&a.ts[10..11], "T");
    }

    #[test]
    fn format_ts_is_rfc3339_millis_utc() {
        let t = time::OffsetDateTime::from_unix_timestamp_nanos(1_795_429_935_007_000_000)
            .unwrap()
            .to_offset(time::UtcOffset::from_hms(2, 0, 0).unwrap());
        assert_eq!(format_ts(t), "2026-11-23T10:32:15.007Z");
        let t = time::OffsetDateTime::from_unix_timestamp_nanos(946_684_799_999_000_000).unwrap();
        assert_eq!(format_ts(t), "1999-12-31T23:59:59.999Z");
    }

    #[test]
    fn ids_are_32_hex_digits_led_by_the_millisecond_clock() {
        let t = time::OffsetDateTime::from_unix_timestamp_nanos(1_795_429_935_007_000_000).unwrap();
        let (a, b) = (new_id(t), new_id(t));
        assert_eq!(a.len(), 32);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_eq!(&a[..12], &format!("{:012x}", 1_795_429_935_007u64));
        assert_eq!(&a[..12], &b[..12]);
        assert_ne!(a, b, "80 random bits differ");
    }

    #[test]
    fn optional_fields_are_absent_and_names_match_the_contract() {
        let mut e = Event::new(Phase::Output, Action::CacheHit);
        let json = serde_json::to_string(&e).unwrap();
        assert!(json.contains(r#""phase":"output""#));
        assert!(json.contains(r#""action":"cache_hit""#));
        assert!(!json.contains("policy"));
        assert!(!json.contains("hash"));
        e.mode = Some(Mode::Direct);
        e.cache_hit = Some(true);
        e.latency_ms = Some(5);
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["mode"], "direct");
        assert_eq!(v["cache_hit"], true);
        assert_eq!(v["latency_ms"], 5);
        let back: Event = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
    }
}
