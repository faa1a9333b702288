//! Reading the audit log back: last N events, following it as it grows, `--filter`, and the one-line text format of `kt events tail`.
//!
//! Readers never lock or write the log. They only consume complete lines
//! (ending in a newline), so a write in progress is picked up once finished.
//! Lines that do not parse are skipped with a warning: `tail` shows what it
//! can, and `kt events verify` is where damage is reported.

use super::segment::{self, parse_name};
use super::{Event, EventsError};
use std::collections::VecDeque;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Every field name `--filter` accepts: the contract's event fields, then
/// the extra fields kt writes.
pub const FILTER_KEYS: &[&str] = &[
    "id",
    "ts",
    "phase",
    "action",
    "policy",
    "reason",
    "mode",
    "provider",
    "host",
    "method",
    "path",
    "endpoint",
    "api",
    "model",
    "user",
    "team",
    "status",
    "latency_ms",
    "upstream_ms",
    "policy_us",
    "tokens_in",
    "tokens_out",
    "cost_usd",
    "cache_hit",
    "client_ip",
    "request_id",
    "prev_hash",
    "hash",
    "cost_saved_usd",
    "overhead_us",
    "usage_source",
    "redactions",
    "request_body",
    "response_body",
];

/// A bad `--filter`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("--filter {0:?}: expected KEY=VALUE")]
    Syntax(String),
    #[error("--filter {key:?}: unknown field; valid fields: {valid}")]
    UnknownKey { key: String, valid: String },
}

impl FilterError {
    /// Stable snake_case label.
    pub fn kind(&self) -> &'static str {
        match self {
            FilterError::Syntax(_) => "filter_syntax",
            FilterError::UnknownKey { .. } => "filter_unknown_key",
        }
    }
}

/// One `KEY=VALUE`: the event's field `KEY`, as text, equals `VALUE`. An
/// absent field never matches. Costs compare as numbers (`cost_usd=1`
/// matches `1.0`); `redactions=KIND` matches an event that redacted at
/// least one secret of that kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    key: &'static str,
    value: String,
}

impl std::str::FromStr for Filter {
    type Err = FilterError;

    fn from_str(s: &str) -> Result<Filter, FilterError> {
        let (key, value) = s
            .split_once('=')
            .filter(|(k, _)| !k.trim().is_empty())
            .ok_or_else(|| FilterError::Syntax(s.to_string()))?;
        let key = key.trim();
        let key =
            FILTER_KEYS
                .iter()
                .find(|k| **k == key)
                .ok_or_else(|| FilterError::UnknownKey {
                    key: key.to_string(),
                    valid: FILTER_KEYS.join(", "),
                })?;
        Ok(Filter {
            key,
            value: value.to_string(),
        })
    }
}

/// `KEY=VALUE`, as parsed.
impl std::fmt::Display for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.key, self.value)
    }
}

impl Filter {
    /// Whether `event` matches.
    pub fn matches(&self, event: &Event) -> bool {
        // Numeric, so `cost_usd=1` matches a stored `1.0`.
        let cost = |have: Option<f64>| match (have, self.value.parse::<f64>()) {
            (Some(have), Ok(want)) => have == want,
            _ => false,
        };
        match self.key {
            "cost_usd" => cost(event.cost_usd),
            "cost_saved_usd" => cost(event.cost_saved_usd),
            // A map of kind to count: the filter names a kind.
            "redactions" => event
                .redactions
                .as_ref()
                .and_then(|r| r.get(&self.value))
                .is_some_and(|n| *n > 0),
            key => field_text(event, key).as_deref() == Some(self.value.as_str()),
        }
    }
}

/// Several filters, ANDed; empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters(pub Vec<Filter>);

impl Filters {
    /// Parses each `KEY=VALUE`.
    pub fn parse<I, S>(args: I) -> Result<Filters, FilterError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        args.into_iter()
            .map(|a| a.as_ref().parse())
            .collect::<Result<_, _>>()
            .map(Filters)
    }

    /// Whether every filter matches.
    pub fn matches(&self, event: &Event) -> bool {
        self.0.iter().all(|f| f.matches(event))
    }
}

/// The text of field `key` as a filter sees it.
fn field_text(e: &Event, key: &str) -> Option<String> {
    fn s(v: &Option<impl AsRef<str>>) -> Option<String> {
        v.as_ref().map(|v| v.as_ref().to_owned())
    }
    fn n<T: ToString>(v: Option<T>) -> Option<String> {
        v.map(|v| v.to_string())
    }
    match key {
        "id" => Some(e.id.clone()),
        "ts" => Some(e.ts.clone()),
        "phase" => Some(e.phase.as_str().into()),
        "action" => Some(e.action.as_str().into()),
        "policy" => s(&e.policy),
        "reason" => s(&e.reason),
        "mode" => e.mode.map(|m| m.as_str().into()),
        "provider" => s(&e.provider),
        "host" => s(&e.host),
        "method" => s(&e.method),
        "path" => s(&e.path),
        "endpoint" => s(&e.endpoint),
        "api" => s(&e.api),
        "model" => s(&e.model),
        "user" => s(&e.user),
        "team" => s(&e.team),
        "status" => n(e.status),
        "latency_ms" => n(e.latency_ms),
        "upstream_ms" => n(e.upstream_ms),
        "policy_us" => n(e.policy_us),
        "tokens_in" => n(e.tokens_in),
        "tokens_out" => n(e.tokens_out),
        "cost_usd" => n(e.cost_usd),
        "cache_hit" => n(e.cache_hit),
        "client_ip" => s(&e.client_ip),
        "request_id" => s(&e.request_id),
        "prev_hash" => Some(e.prev_hash.clone()).filter(|h| !h.is_empty()),
        "hash" => Some(e.hash.clone()).filter(|h| !h.is_empty()),
        "cost_saved_usd" => n(e.cost_saved_usd),
        "overhead_us" => n(e.overhead_us),
        "usage_source" => s(&e.usage_source),
        "request_body" => s(&e.request_body),
        "response_body" => s(&e.response_body),
        // `redactions` is matched by kind in `Filter::matches`.
        _ => None,
    }
}

/// The `kt events tail` line for `event`:
///
/// `TS PHASE TARGET [ENDPOINT] [user:NAME] ACTION [status=N] [policy=P] [reason="R"] [latency=Nms]`
///
/// TS is cut to seconds; PHASE is upper case, padded to 6; TARGET is the
/// provider (for `connect` events the host, which is what was tunnelled),
/// falling back to the other, then `-`. `status=` is shown for errors only,
/// `latency=` for output events only.
/// `reason` is quoted with JSON escapes so one event is always one line.
/// With `colour`, ACTION is wrapped in ANSI colours.
pub fn format_line(event: &Event, colour: bool) -> String {
    let ts = match event.ts.get(..19) {
        Some(secs) if event.ts.len() > 19 => format!("{secs}Z"),
        _ => event.ts.clone(),
    };
    let phase = event.phase.as_str().to_ascii_uppercase();
    let mut out = format!("{ts} {phase:<6}");
    let (first, second) = match event.phase {
        super::Phase::Connect => (event.host.as_deref(), event.provider.as_deref()),
        _ => (event.provider.as_deref(), event.host.as_deref()),
    };
    out.push(' ');
    out.push_str(first.or(second).unwrap_or("-"));
    if let Some(endpoint) = &event.endpoint {
        out.push(' ');
        out.push_str(endpoint);
    }
    if let Some(user) = &event.user {
        out.push_str(" user:");
        out.push_str(user);
    }
    let action = event.action.as_str().to_ascii_uppercase();
    out.push(' ');
    if colour {
        let code = match event.action {
            super::Action::Pass => "32",
            super::Action::Block => "1;31",
            super::Action::Redact => "33",
            super::Action::CacheHit => "36",
            super::Action::Error => "35",
            super::Action::Tunnel => "2",
        };
        out.push_str(&format!("\x1b[{code}m{action}\x1b[0m"));
    } else {
        out.push_str(&action);
    }
    if event.action == super::Action::Error {
        if let Some(status) = event.status {
            out.push_str(&format!(" status={status}"));
        }
    }
    if let Some(policy) = &event.policy {
        out.push_str(" policy=");
        out.push_str(policy);
    }
    if let Some(reason) = &event.reason {
        out.push_str(" reason=");
        out.push_str(&serde_json::Value::from(reason.as_str()).to_string());
    }
    // The whole exchange's time is known once the answer is in: input
    // events carry a 0 (or nothing), so only output lines show it.
    if let (super::Phase::Output, Some(ms)) = (event.phase, event.latency_ms) {
        out.push_str(&format!(" latency={ms}ms"));
    }
    out
}

/// A place in the log: just after the last complete line read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position {
    /// `None`: the log had no segment yet; follow from its first one.
    pub segment: Option<PathBuf>,
    /// Byte offset in `segment`.
    pub offset: u64,
}

impl Position {
    /// The end of the log as it is now.
    pub fn end(dir: &Path) -> Result<Position, EventsError> {
        Ok(read_last(dir, 0, &Filters::default())?.1)
    }
}

/// The last `n` events matching `filters`, oldest first, across segments,
/// and the position just after them (to [`Follower::new`] from there without
/// a gap or a repeat). Segments are read backwards in chunks, so the cost
/// follows how far back the matches are, not the size of the log.
pub fn read_last(
    dir: &Path,
    n: usize,
    filters: &Filters,
) -> Result<(Vec<Event>, Position), EventsError> {
    let segments = segment::list(dir)?;
    let mut position = Position::default();
    let mut found: Vec<Event> = Vec::new();
    for (i, seg) in segments.iter().enumerate().rev() {
        let mut file = std::fs::File::open(&seg.path).map_err(|e| EventsError::io(&seg.path, e))?;
        let len = file
            .metadata()
            .map_err(|e| EventsError::io(&seg.path, e))?
            .len();
        // Only complete lines: a write in progress is the follower's job.
        let complete = complete_len(&mut file, len).map_err(|e| EventsError::io(&seg.path, e))?;
        if i + 1 == segments.len() {
            position = Position {
                segment: Some(seg.path.clone()),
                offset: complete,
            };
        }
        if found.len() >= n {
            break;
        }
        lines_backward(&mut file, complete, |line| {
            if let Some(e) = parse_line(&seg.path, line) {
                if filters.matches(&e) {
                    found.push(e);
                }
            }
            found.len() < n
        })
        .map_err(|e| EventsError::io(&seg.path, e))?;
    }
    found.reverse();
    Ok((found, position))
}

/// Bytes read per step when scanning backwards.
const CHUNK: u64 = 64 * 1024;

fn read_range(file: &mut std::fs::File, start: u64, end: u64) -> std::io::Result<Vec<u8>> {
    file.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::with_capacity((end - start) as usize);
    file.take(end - start).read_to_end(&mut buf)?;
    Ok(buf)
}

/// The length of `file` up to and including its last newline.
fn complete_len(file: &mut std::fs::File, len: u64) -> std::io::Result<u64> {
    let mut end = len;
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        let buf = read_range(file, start, end)?;
        if let Some(p) = buf.iter().rposition(|&b| b == b'\n') {
            return Ok(start + p as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// Calls `f` with each line of `file[..end]`, last first, until it returns
/// false.
fn lines_backward(
    file: &mut std::fs::File,
    end: u64,
    mut f: impl FnMut(&[u8]) -> bool,
) -> std::io::Result<()> {
    let mut pos = end;
    // The end of a line whose start is in a chunk not read yet.
    let mut carry: Vec<u8> = Vec::new();
    while pos > 0 {
        let start = pos.saturating_sub(CHUNK);
        let mut chunk = read_range(file, start, pos)?;
        chunk.extend_from_slice(&carry);
        pos = start;
        match chunk.iter().position(|&b| b == b'\n') {
            Some(first) => {
                for line in chunk[first + 1..].rsplit(|&b| b == b'\n') {
                    if !f(line) {
                        return Ok(());
                    }
                }
                chunk.truncate(first);
                carry = chunk;
            }
            None => carry = chunk,
        }
    }
    if !carry.is_empty() {
        f(&carry);
    }
    Ok(())
}

fn parse_line(path: &Path, line: &[u8]) -> Option<Event> {
    if line.trim_ascii().is_empty() {
        return None;
    }
    match serde_json::from_slice(line) {
        Ok(e) => Some(e),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "skipping an unreadable audit log line");
            None
        }
    }
}

/// Yields events as they are appended, moving on to new segments as the
/// writer rolls. Polls (every 200 ms by default): portable and cheap.
pub struct Follower {
    tail: LineTail,
    filters: Filters,
    interval: Duration,
    ready: VecDeque<Event>,
}

impl Follower {
    /// Follows the log in `dir` from `position`, yielding events that match.
    pub fn new(dir: &Path, position: Position, filters: Filters) -> Follower {
        Follower {
            tail: LineTail::new(dir, position),
            filters,
            interval: Duration::from_millis(200),
            ready: VecDeque::new(),
        }
    }

    /// Changes how often the log is polled.
    pub fn with_interval(mut self, interval: Duration) -> Follower {
        self.interval = interval;
        self
    }

    /// Where the follower has read up to (complete lines only).
    pub fn position(&self) -> Position {
        self.tail.position()
    }

    /// The next matching event; waits for one to be written.
    pub async fn next(&mut self) -> Result<Event, EventsError> {
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Ok(e);
            }
            let (filters, ready) = (&self.filters, &mut self.ready);
            self.tail.read(|path, line| {
                if let Some(e) = parse_line(path, line) {
                    if filters.matches(&e) {
                        ready.push_back(e);
                    }
                }
            })?;
            if self.ready.is_empty() {
                tokio::time::sleep(self.interval).await;
            }
        }
    }
}

/// The complete lines appended to the log after a [`Position`], across
/// segment rolls: what [`Follower`] parses, and what the hosted-mode
/// shipper copies byte for byte.
pub struct LineTail {
    dir: PathBuf,
    /// Always just after a newline (or at a segment's start): the bytes of
    /// an incomplete line are read again once it is complete, never kept.
    /// A writer that restarts cuts a torn line back and writes new lines
    /// in its place, so bytes kept from it would be glued to them.
    position: Position,
    /// Most bytes read from the file per call (more when one line is
    /// longer).
    limit: u64,
    /// How far to read: see [`until`](LineTail::until).
    end: Option<Position>,
}

impl LineTail {
    /// Reads the log in `dir` from `position`.
    pub fn new(dir: &Path, position: Position) -> LineTail {
        LineTail {
            dir: dir.to_path_buf(),
            position,
            limit: u64::MAX,
            end: None,
        }
    }

    /// Reads no further than `end` (`None`: to the end of the log): in its
    /// segment up to its offset, nothing of later segments. The shipper
    /// reads up to what the writer has fsynced, so the shared store never
    /// holds an event that a power loss could take from the local log.
    pub fn until(&mut self, end: Option<Position>) {
        self.end = end;
    }

    /// Reads at most `bytes` per [`read`](LineTail::read), so a long
    /// backlog is taken in steps.
    pub fn with_read_limit(mut self, bytes: u64) -> LineTail {
        self.limit = bytes.max(1);
        self
    }

    /// Just after the last complete line handed out.
    pub fn position(&self) -> Position {
        self.position.clone()
    }

    /// Calls `f` with each complete line written since the last call (and
    /// the segment it is in), switching segments when the current one is
    /// finished and a newer one exists.
    ///
    /// A call that finishes a segment without a line from it goes on into
    /// the next: a reader told "nothing new" at a segment's end would take
    /// the log for read (a shipper that is stopping ends there).
    pub fn read(&mut self, mut f: impl FnMut(&Path, &[u8])) -> Result<(), EventsError> {
        loop {
            let Some(current) = self.position.segment.clone() else {
                let Some(first) = segment::list(&self.dir)?.into_iter().next() else {
                    return Ok(());
                };
                self.position = Position {
                    segment: Some(first.path),
                    offset: 0,
                };
                continue;
            };
            if self.read_more(&current, &mut f)? == Found::Lines {
                return Ok(());
            }
            let key = current
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(parse_name);
            let next = segment::list(&self.dir)?
                .into_iter()
                .find(|s| key.is_none_or(|k| (s.date, s.seq) > k));
            let Some(next) = next else {
                return Ok(());
            };
            // The writer finished (and synced) this segment before it
            // created the next one, but it may have written to it since
            // the read above: read it to its end, whatever `end` said then.
            let end = self.end.take();
            let rest = self.read_more(&current, &mut f);
            self.end = end;
            match rest? {
                // Stay in this segment until a read finds nothing more:
                // one read stops at the read limit, and moving on now
                // would drop what lies past it.
                Found::Lines => return Ok(()),
                Found::Incomplete => {
                    tracing::warn!(path = %current.display(), "audit segment ends with an incomplete line");
                }
                Found::Nothing => {}
            }
            self.position = Position {
                segment: Some(next.path),
                offset: 0,
            };
        }
    }

    /// Hands out the complete lines of `path` after the current offset
    /// (up to the read limit, or to the end of the first line if that is
    /// longer) and moves the offset just past the last of them.
    fn read_more(
        &mut self,
        path: &Path,
        f: &mut impl FnMut(&Path, &[u8]),
    ) -> Result<Found, EventsError> {
        let mut file = match std::fs::File::open(path) {
            Ok(f) => f,
            // Pruned under us: move on to whatever comes next.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Found::Nothing),
            Err(e) => return Err(EventsError::io(path, e)),
        };
        let len = file.metadata().map_err(|e| EventsError::io(path, e))?.len();
        if len < self.position.offset {
            // Truncated below a line already handed out: resync.
            self.position.offset = len;
            return Ok(Found::Nothing);
        }
        let len = self.cap(path).map_or(len, |cap| cap.min(len));
        if len <= self.position.offset {
            return Ok(Found::Nothing);
        }
        file.seek(SeekFrom::Start(self.position.offset))
            .map_err(|e| EventsError::io(path, e))?;
        let available = len - self.position.offset;
        let mut fresh = Vec::new();
        loop {
            let start = fresh.len();
            let want = self.limit.min(available - start as u64);
            (&mut file)
                .take(want)
                .read_to_end(&mut fresh)
                .map_err(|e| EventsError::io(path, e))?;
            let ended = memchr::memchr(b'\n', &fresh[start..]).is_some();
            // Shorter than asked: the file is shorter than it said.
            let short = ((fresh.len() - start) as u64) < want;
            if ended || short || fresh.len() as u64 >= available {
                break;
            }
        }
        let Some(end) = fresh.iter().rposition(|&b| b == b'\n') else {
            return Ok(Found::Incomplete);
        };
        for line in fresh[..end].split(|&b| b == b'\n') {
            f(path, line);
        }
        self.position.offset += end as u64 + 1;
        Ok(Found::Lines)
    }
}

/// What a read of one segment found after the offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    /// Complete lines, handed out.
    Lines,
    /// The start of a line not complete yet (or never to be: torn).
    Incomplete,
    /// Nothing after the offset.
    Nothing,
}

impl LineTail {
    /// How much of `path` [`until`](LineTail::until) lets be read.
    fn cap(&self, path: &Path) -> Option<u64> {
        let end = self.end.as_ref()?;
        let Some(last) = &end.segment else {
            return Some(0);
        };
        if last == path {
            return Some(end.offset);
        }
        let key = |p: &Path| p.file_name().and_then(|n| n.to_str()).and_then(parse_name);
        match (key(path), key(last)) {
            (Some(this), Some(last)) if this < last => None,
            _ => Some(0),
        }
    }
}

/// The position just after the line whose `hash` is `hash`, newest
/// segment first; `None` when no kept segment has it. Finds where to resume
/// shipping from the last hash the shared store has.
pub fn position_after(dir: &Path, hash: &str) -> Result<Option<Position>, EventsError> {
    let needle = format!(",\"hash\":\"{hash}\"");
    for seg in segment::list(dir)?.into_iter().rev() {
        let bytes = std::fs::read(&seg.path).map_err(|e| EventsError::io(&seg.path, e))?;
        let finder = memchr::memmem::Finder::new(needle.as_bytes());
        if let Some(at) = finder.find(&bytes) {
            let end = memchr::memchr(b'\n', &bytes[at..]).map(|p| at + p + 1);
            if let Some(end) = end {
                return Ok(Some(Position {
                    segment: Some(seg.path),
                    offset: end as u64,
                }));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
#[path = "read_tests.rs"]
mod tests;
