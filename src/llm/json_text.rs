//! Finds JSON string values at chosen locations, hands their decoded text to a
//! callback, and re-encodes only the strings the callback changed, leaving
//! every other byte of the document exactly as it was.
//!
//! Why a hand-rolled scanner: the redactor runs on every LLM request, bodies
//! are often hundreds of kilobytes (whole files folded into prompts), and the
//! usual outcome is "nothing to change". A `serde_json::Value` tree would
//! allocate every string and map of the body and re-serialising it would
//! reorder nothing but still rewrite number and escape spellings. serde_json's
//! `RawValue` keeps bytes but gives no offsets for nested strings. This
//! recursive-descent walker validates the document in one pass, tracks the
//! path only as a linked list on the stack, copies nothing when no string
//! changes, and splices re-encoded strings into a copy only when one does.

use std::borrow::Cow;
use std::fmt;

/// Containers nested deeper than this are refused (the walker recurses).
pub const MAX_DEPTH: usize = 128;

/// Most patterns one [`PointerSet`] can hold (they are tracked as a `u64` mask).
pub const MAX_PATTERNS: usize = 64;

/// Why a document could not be walked, or a pattern not compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonTextError {
    #[error("JSON body is not valid UTF-8 (at byte {offset})")]
    InvalidUtf8 { offset: usize },
    #[error("JSON body ends unexpectedly")]
    UnexpectedEnd,
    #[error("invalid JSON at byte {offset}: expected {expected}")]
    Syntax {
        offset: usize,
        expected: &'static str,
    },
    #[error("invalid escape in JSON string at byte {offset}")]
    InvalidEscape { offset: usize },
    #[error("JSON nested deeper than {max} levels")]
    TooDeep { max: usize },
    #[error("invalid JSON pointer pattern {pattern:?}: {reason}")]
    BadPattern {
        pattern: String,
        reason: &'static str,
    },
    #[error("more than {max} JSON pointer patterns in one set")]
    TooManyPatterns { max: usize },
}

impl JsonTextError {
    /// Stable snake_case label for events and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            JsonTextError::InvalidUtf8 { .. } => "invalid_utf8",
            JsonTextError::UnexpectedEnd => "truncated_json",
            JsonTextError::Syntax { .. } => "invalid_json",
            JsonTextError::InvalidEscape { .. } => "invalid_json_escape",
            JsonTextError::TooDeep { .. } => "json_too_deep",
            JsonTextError::BadPattern { .. } => "bad_pointer_pattern",
            JsonTextError::TooManyPatterns { .. } => "too_many_pointer_patterns",
        }
    }
}

type Result<T> = std::result::Result<T, JsonTextError>;

/// One segment of a compiled pattern: where it steps, and an optional
/// condition on the value it lands on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seg {
    step: Step,
    when: Option<Cond>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// `*`: any array element or object member.
    Any,
    /// `**` (last segment only): zero or more segments of any kind, so the
    /// pattern selects every string at or below the path before it.
    Rest,
    /// A member name; when it is a canonical array index (`0`, `17`) it also
    /// matches that array element, as RFC 6901 pointers do.
    Key { name: String, index: Option<usize> },
}

/// `[member=value]` after a segment: the value the segment lands on must be
/// an object with a string member `member` equal to `value` (any of them,
/// should the name repeat).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cond {
    member: String,
    value: String,
}

impl Seg {
    fn matches_key(&self, key: &str) -> bool {
        match &self.step {
            Step::Any | Step::Rest => true,
            Step::Key { name, .. } => name == key,
        }
    }

    fn matches_index(&self, i: usize) -> bool {
        match &self.step {
            Step::Any | Step::Rest => true,
            Step::Key { index, .. } => *index == Some(i),
        }
    }
}

/// A compiled set of JSON Pointer patterns (RFC 6901, plus `*` for every
/// array element and every object member), such as `/messages/*/content`. A pattern selects the string
/// values found exactly at its path; a pattern that lands on a number, an
/// object or an array selects nothing there (list `/input` and `/input/*`
/// when a field may be a string or an array of strings).
///
/// Two extensions: a last segment `**` selects every string at or below
/// the path before it, at any depth (`/messages/*/content/*/input/**`: the
/// string leaves of a tool call's input object); and a segment may end in
/// `[member=value]`, which it matches only on an object whose string member
/// `member` is `value` (`/messages/*/content/*/source[type=text]/data`: a
/// text document's data, not a base64 image's). A condition costs a look
/// ahead over that object, and only where the pattern reaches.
#[derive(Debug, Clone, Default)]
pub struct PointerSet {
    patterns: Vec<Vec<Seg>>,
    /// `complete[d]`: mask of the patterns that have exactly `d` segments,
    /// so "is this string selected" is one AND at each string value.
    complete: Vec<u64>,
    /// `open[d]`: mask of the patterns ending in `**` after at most `d`
    /// segments, which select every string at depth `d` they reach; the
    /// last entry holds for every greater depth.
    open: Vec<u64>,
    /// `conditioned[d]`: mask of the patterns whose segment `d` has a
    /// condition.
    conditioned: Vec<u64>,
}

impl PointerSet {
    /// Compiles `patterns`. Each is `""` (the whole document) or starts with `/`.
    pub fn new<I, S>(patterns: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut set = PointerSet::default();
        for p in patterns {
            if set.patterns.len() == MAX_PATTERNS {
                return Err(JsonTextError::TooManyPatterns { max: MAX_PATTERNS });
            }
            let segs = parse_pattern(p.as_ref())?;
            let bit = 1u64 << set.patterns.len();
            let mark = |masks: &mut Vec<u64>, d: usize| {
                if masks.len() <= d {
                    masks.resize(d + 1, 0);
                }
                if let Some(m) = masks.get_mut(d) {
                    *m |= bit;
                }
            };
            match segs.last() {
                Some(Seg {
                    step: Step::Rest, ..
                }) => {
                    // `**` may stand for no segment at all.
                    let from = segs.len() - 1;
                    mark(&mut set.open, from);
                }
                _ => mark(&mut set.complete, segs.len()),
            }
            for (d, seg) in segs.iter().enumerate() {
                if seg.when.is_some() {
                    mark(&mut set.conditioned, d);
                }
            }
            set.patterns.push(segs);
        }
        // `open` is cumulative: a `**` reached at depth d holds below it.
        let mut acc = 0;
        for m in &mut set.open {
            acc |= *m;
            *m = acc;
        }
        Ok(set)
    }

    pub fn len(&self) -> usize {
        self.patterns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    fn all_mask(&self) -> u64 {
        match self.patterns.len() {
            0 => 0,
            n if n >= 64 => u64::MAX,
            n => (1u64 << n) - 1,
        }
    }

    /// The patterns that select a string found at `depth` once its path
    /// has matched them.
    fn complete_at(&self, depth: usize) -> u64 {
        let open = match self.open.get(depth) {
            Some(&m) => m,
            None => self.open.last().copied().unwrap_or(0),
        };
        self.complete.get(depth).copied().unwrap_or(0) | open
    }

    fn conditioned_at(&self, depth: usize) -> u64 {
        self.conditioned.get(depth).copied().unwrap_or(0)
    }

    /// Segment `depth` of pattern `i`; past a trailing `**`, that `**`.
    fn seg(&self, i: usize, depth: usize) -> Option<&Seg> {
        let segs = self.patterns.get(i)?;
        segs.get(depth)
            .or_else(|| segs.last().filter(|s| s.step == Step::Rest))
    }

    /// The subset of `mask` whose segment at `depth` accepts `pred`.
    fn descend(&self, mask: u64, depth: usize, pred: impl Fn(&Seg) -> bool) -> u64 {
        let mut out = 0u64;
        let mut m = mask;
        while m != 0 {
            let i = m.trailing_zeros() as usize;
            m &= m - 1;
            if self.seg(i, depth).is_some_and(&pred) {
                out |= 1u64 << i;
            }
        }
        out
    }

    /// The subset of `mask` whose conditions at segment `depth` hold for
    /// the value at the start of `doc`.
    fn check_conditions(&self, mask: u64, depth: usize, doc: &[u8]) -> u64 {
        let mut m = mask & self.conditioned_at(depth);
        let mut out = mask & !m;
        if doc.first() != Some(&b'{') {
            return out;
        }
        while m != 0 {
            let i = m.trailing_zeros() as usize;
            m &= m - 1;
            let holds = self
                .seg(i, depth)
                .and_then(|s| s.when.as_ref())
                .is_some_and(|c| {
                    // A malformed object fails the condition; the walk
                    // reports the error when it gets there.
                    super::json_scan::object_has_string(doc, &c.member, &c.value).unwrap_or(false)
                });
            if holds {
                out |= 1u64 << i;
            }
        }
        out
    }
}

fn parse_pattern(p: &str) -> Result<Vec<Seg>> {
    let bad = |reason| JsonTextError::BadPattern {
        pattern: p.to_owned(),
        reason,
    };
    if p.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = p.strip_prefix('/') else {
        return Err(bad("must start with '/'"));
    };
    let mut segs: Vec<Seg> = Vec::new();
    for raw in rest.split('/') {
        if segs.last().is_some_and(|s| s.step == Step::Rest) {
            return Err(bad("'**' must be the last segment"));
        }
        let (raw, when) = match raw.strip_suffix(']').and_then(|r| r.split_once('[')) {
            Some((head, cond)) => {
                let Some((member, value)) = cond.split_once('=') else {
                    return Err(bad("a condition is '[member=value]'"));
                };
                if member.is_empty() {
                    return Err(bad("a condition names a member"));
                }
                let cond = Cond {
                    member: unescape(member)
                        .ok_or_else(|| bad("'~' must be followed by 0 or 1"))?,
                    value: unescape(value).ok_or_else(|| bad("'~' must be followed by 0 or 1"))?,
                };
                (head, Some(cond))
            }
            None => (raw, None),
        };
        let step = match raw {
            "*" => Step::Any,
            "**" if when.is_some() => return Err(bad("'**' takes no condition")),
            "**" => Step::Rest,
            _ => {
                let name = unescape(raw).ok_or_else(|| bad("'~' must be followed by 0 or 1"))?;
                let canonical_index = !name.is_empty()
                    && name.bytes().all(|b| b.is_ascii_digit())
                    && (name == "0" || !name.starts_with('0'));
                let index = if canonical_index {
                    name.parse().ok()
                } else {
                    None
                };
                Step::Key { name, index }
            }
        };
        segs.push(Seg { step, when });
    }
    if segs.len() >= MAX_DEPTH {
        return Err(bad("deeper than the nesting limit"));
    }
    Ok(segs)
}

/// A pointer segment with `~0` and `~1` decoded; `None` for a bad `~`.
fn unescape(raw: &str) -> Option<String> {
    let mut name = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '~' {
            match chars.next() {
                Some('0') => name.push('~'),
                Some('1') => name.push('/'),
                _ => return None,
            }
        } else {
            name.push(c);
        }
    }
    Some(name)
}

/// Which string values a walk hands to the callback.
#[derive(Debug, Clone, Copy)]
pub enum Selector<'p> {
    /// Every string value in the document (object keys are never selected).
    AllStrings,
    /// The string values at these patterns.
    Pointers(&'p PointerSet),
}

/// Where a string value sits, as a linked list of segments living on the
/// walker's stack (so tracking it costs no allocation).
#[derive(Debug, Clone, Copy)]
pub struct JsonPath<'a> {
    parent: Option<&'a JsonPath<'a>>,
    seg: PathSeg<'a>,
}

#[derive(Debug, Clone, Copy)]
enum PathSeg<'a> {
    Root,
    /// The raw member name between its quotes (may hold escapes).
    Key(&'a str),
    Index(usize),
}

impl<'a> JsonPath<'a> {
    const ROOT: JsonPath<'static> = JsonPath {
        parent: None,
        seg: PathSeg::Root,
    };

    /// Number of segments (0 for the document root).
    pub fn depth(&self) -> usize {
        let mut n = 0;
        let mut cur = Some(self);
        while let Some(p) = cur {
            if !matches!(p.seg, PathSeg::Root) {
                n += 1;
            }
            cur = p.parent;
        }
        n
    }

    /// The RFC 6901 pointer of this location, e.g. `/messages/0/content`.
    pub fn to_pointer(&self) -> String {
        let mut segs: Vec<PathSeg<'_>> = Vec::new();
        let mut cur = Some(self);
        while let Some(p) = cur {
            if !matches!(p.seg, PathSeg::Root) {
                segs.push(p.seg);
            }
            cur = p.parent;
        }
        let mut out = String::new();
        let mut key = String::new();
        for seg in segs.iter().rev() {
            out.push('/');
            match seg {
                PathSeg::Root => {}
                PathSeg::Index(i) => out.push_str(&i.to_string()),
                PathSeg::Key(raw) => {
                    key.clear();
                    // Keys were validated by the walk; an undecodable one
                    // (impossible here) would show raw rather than fail.
                    let name = if raw.contains('\\') && decode_into(raw, 0, &mut key).is_ok() {
                        key.as_str()
                    } else {
                        raw
                    };
                    for c in name.chars() {
                        match c {
                            '~' => out.push_str("~0"),
                            '/' => out.push_str("~1"),
                            c => out.push(c),
                        }
                    }
                }
            }
        }
        out
    }
}

impl fmt::Display for JsonPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_pointer())
    }
}

/// Calls `f` with the decoded text of each selected string value. Returning
/// `Some(new)` replaces that string; `None` leaves it. The result borrows
/// `doc` when nothing changed, and is otherwise `doc` with only the changed
/// string literals re-encoded.
pub fn rewrite_strings<'d, F>(doc: &'d [u8], sel: Selector<'_>, mut f: F) -> Result<Cow<'d, [u8]>>
where
    F: FnMut(&str) -> Option<String>,
{
    rewrite_strings_at(doc, sel, |_, s| f(s))
}

/// Like [`rewrite_strings`], also telling the callback where each string is.
pub fn rewrite_strings_at<'d, F>(doc: &'d [u8], sel: Selector<'_>, f: F) -> Result<Cow<'d, [u8]>>
where
    F: FnMut(&JsonPath<'_>, &str) -> Option<String>,
{
    let src = std::str::from_utf8(doc).map_err(|e| JsonTextError::InvalidUtf8 {
        offset: e.valid_up_to(),
    })?;
    let mut w = Walker {
        src,
        bytes: doc,
        pos: 0,
        sel,
        f,
        out: None,
        copied: 0,
        scratch: String::new(),
        key_scratch: String::new(),
    };
    let mask = match sel {
        Selector::AllStrings => 0,
        Selector::Pointers(set) => set.all_mask(),
    };
    w.value(&JsonPath::ROOT, mask, 0)?;
    w.skip_ws();
    if w.pos != doc.len() {
        return Err(JsonTextError::Syntax {
            offset: w.pos,
            expected: "end of document",
        });
    }
    Ok(match w.out {
        None => Cow::Borrowed(doc),
        Some(mut out) => {
            out.extend_from_slice(doc.get(w.copied..).unwrap_or_default());
            Cow::Owned(out)
        }
    })
}

/// Calls `f` with each selected string value and its location; validates the
/// whole document. Allocates only to decode strings that contain escapes.
pub fn visit_strings<F>(doc: &[u8], sel: Selector<'_>, mut f: F) -> Result<()>
where
    F: FnMut(&JsonPath<'_>, &str),
{
    rewrite_strings_at(doc, sel, |path, s| {
        f(path, s);
        None
    })
    .map(drop)
}

/// Appends `s` to `out` as the inside of a JSON string literal (no quotes).
/// Only `"`, `\` and control characters are escaped; everything else,
/// including non-ASCII text and `/`, is written as UTF-8.
pub fn encode_str_into(s: &str, out: &mut Vec<u8>) {
    let bytes = s.as_bytes();
    if !needs_escape(bytes) {
        out.extend_from_slice(bytes);
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(bytes.get(start..i).unwrap_or_default());
        if esc.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(bytes.get(start..).unwrap_or_default());
}

/// Whether any byte of `bytes` must be escaped in a JSON string: most
/// strings (ids, names, paths) need nothing, and this makes them one copy.
fn needs_escape(bytes: &[u8]) -> bool {
    any_byte(bytes, |b| b < 0x20 || b == b'"' || b == b'\\')
}

/// Offset of the first raw control character (below 0x20) in `bytes`; the
/// common answer, none, comes from [`any_byte`]'s vectorized pass.
fn first_control(bytes: &[u8]) -> Option<usize> {
    let control = |b: u8| b < 0x20;
    if any_byte(bytes, control) {
        bytes.iter().position(|&b| control(b))
    } else {
        None
    }
}

/// Whether `test` holds for any byte of `bytes`. Checked in blocks without
/// early exit, so the compiler vectorizes it.
#[inline(always)]
fn any_byte(bytes: &[u8], test: impl Fn(u8) -> bool) -> bool {
    bytes
        .chunks(32)
        .any(|block| block.iter().fold(false, |any, &b| any | test(b)))
}

/// Decodes the inside of a JSON string literal (`raw`, without quotes) into
/// `out`. `base` is the byte offset of `raw` in the document, for errors.
pub fn decode_into(raw: &str, base: usize, out: &mut String) -> Result<()> {
    let bytes = raw.as_bytes();
    let mut i = 0;
    while let Some(rel) = memchr::memchr(b'\\', bytes.get(i..).unwrap_or_default()) {
        let at = i + rel;
        out.push_str(raw.get(i..at).unwrap_or_default());
        let esc = JsonTextError::InvalidEscape { offset: base + at };
        let c = match bytes.get(at + 1) {
            Some(b'"') => '"',
            Some(b'\\') => '\\',
            Some(b'/') => '/',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => {
                let hi = hex4(bytes, at + 2).ok_or(esc.clone())?;
                i = at + 6;
                // A surrogate without its other half (JavaScript's
                // JSON.stringify writes one for a string cut inside an
                // emoji, and JSON parsers of JavaScript and Python take it)
                // reads as U+FFFD: the text around it is still checked.
                let code = match hi {
                    0xD800..=0xDBFF => {
                        let lo = match (bytes.get(i), bytes.get(i + 1)) {
                            (Some(b'\\'), Some(b'u')) => hex4(bytes, i + 2),
                            _ => None,
                        };
                        match lo {
                            Some(lo @ 0xDC00..=0xDFFF) => {
                                i += 6;
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            }
                            _ => 0xFFFD,
                        }
                    }
                    0xDC00..=0xDFFF => 0xFFFD,
                    c => c,
                };
                out.push(char::from_u32(code).ok_or(esc)?);
                continue;
            }
            _ => return Err(esc),
        };
        out.push(c);
        i = at + 2;
    }
    out.push_str(raw.get(i..).unwrap_or_default());
    Ok(())
}

fn hex4(bytes: &[u8], at: usize) -> Option<u32> {
    let digits = bytes.get(at..at + 4)?;
    let mut v = 0u32;
    for &d in digits {
        v = v * 16 + char::from(d).to_digit(16)?;
    }
    Some(v)
}

/// A string literal's content span (between the quotes) and whether it
/// contains a backslash escape.
struct StrSpan {
    start: usize,
    end: usize,
    escaped: bool,
}

struct Walker<'d, 'p, F> {
    src: &'d str,
    bytes: &'d [u8],
    pos: usize,
    sel: Selector<'p>,
    f: F,
    /// The rewritten document, created at the first changed string.
    out: Option<Vec<u8>>,
    /// Bytes of `doc` before this offset are already in `out`.
    copied: usize,
    scratch: String,
    key_scratch: String,
}

impl<F> Walker<'_, '_, F>
where
    F: FnMut(&JsonPath<'_>, &str) -> Option<String>,
{
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn syntax(&self, expected: &'static str) -> JsonTextError {
        if self.pos >= self.bytes.len() {
            JsonTextError::UnexpectedEnd
        } else {
            JsonTextError::Syntax {
                offset: self.pos,
                expected,
            }
        }
    }

    fn expect(&mut self, b: u8, expected: &'static str) -> Result<()> {
        self.skip_ws();
        if self.peek() == Some(b) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.syntax(expected))
        }
    }

    /// `mask`: patterns whose segments all matched the path so far.
    fn value(&mut self, path: &JsonPath<'_>, mask: u64, depth: usize) -> Result<()> {
        self.skip_ws();
        // Patterns with a condition on the segment that led here keep
        // only if this value meets it (one AND when none has one).
        let mask = match self.sel {
            Selector::Pointers(set)
                if mask != 0 && depth > 0 && mask & set.conditioned_at(depth - 1) != 0 =>
            {
                let rest = self.bytes.get(self.pos..).unwrap_or_default();
                set.check_conditions(mask, depth - 1, rest)
            }
            _ => mask,
        };
        match self.peek() {
            Some(b'{') => self.object(path, mask, depth + 1),
            Some(b'[') => self.array(path, mask, depth + 1),
            Some(b'"') => {
                let span = self.string()?;
                let selected = match self.sel {
                    Selector::AllStrings => true,
                    Selector::Pointers(set) => mask & set.complete_at(depth) != 0,
                };
                if selected {
                    self.selected_string(path, span)?;
                }
                Ok(())
            }
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(self.syntax("a JSON value")),
        }
    }

    fn object(&mut self, path: &JsonPath<'_>, mask: u64, depth: usize) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(JsonTextError::TooDeep { max: MAX_DEPTH });
        }
        self.pos += 1; // '{'
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return Err(self.syntax("a member name"));
            }
            let key = self.string()?;
            self.expect(b':', "':'")?;
            let raw_key = self.src.get(key.start..key.end).unwrap_or_default();
            let child_mask = self.key_mask(mask, depth, raw_key, &key)?;
            let child = JsonPath {
                parent: Some(path),
                seg: PathSeg::Key(raw_key),
            };
            self.value(&child, child_mask, depth)?;
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(self.syntax("',' or '}'")),
            }
        }
    }

    fn key_mask(&mut self, mask: u64, depth: usize, raw: &str, key: &StrSpan) -> Result<u64> {
        let Selector::Pointers(set) = self.sel else {
            return Ok(0);
        };
        if mask == 0 {
            return Ok(0);
        }
        // Segment `depth - 1` of a pattern names the member at this depth.
        let name = if key.escaped {
            self.key_scratch.clear();
            decode_into(raw, key.start, &mut self.key_scratch)?;
            self.key_scratch.as_str()
        } else {
            raw
        };
        Ok(set.descend(mask, depth - 1, |s| s.matches_key(name)))
    }

    fn array(&mut self, path: &JsonPath<'_>, mask: u64, depth: usize) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(JsonTextError::TooDeep { max: MAX_DEPTH });
        }
        self.pos += 1; // '['
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(());
        }
        let mut index = 0usize;
        loop {
            let child_mask = match self.sel {
                Selector::Pointers(set) if mask != 0 => {
                    set.descend(mask, depth - 1, |s| s.matches_index(index))
                }
                _ => 0,
            };
            let child = JsonPath {
                parent: Some(path),
                seg: PathSeg::Index(index),
            };
            self.value(&child, child_mask, depth)?;
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(self.syntax("',' or ']'")),
            }
            index += 1;
        }
    }

    /// Scans a string literal starting at its opening quote; validates
    /// escapes syntactically and rejects raw control characters.
    fn string(&mut self) -> Result<StrSpan> {
        self.pos += 1; // '"'
        let start = self.pos;
        let mut escaped = false;
        loop {
            let rest = self.bytes.get(self.pos..).unwrap_or_default();
            // Prompts are long strings with few escapes: the quote or
            // backslash is found at vector speed, and the bytes skipped on
            // the way are checked for raw control characters in one
            // branch-free pass (a byte-by-byte search for all three ran at
            // about a byte per cycle).
            let stop = memchr::memchr2(b'"', b'\\', rest);
            let skipped = rest.get(..stop.unwrap_or(rest.len())).unwrap_or_default();
            if let Some(at) = first_control(skipped) {
                self.pos += at;
                return Err(JsonTextError::Syntax {
                    offset: self.pos,
                    expected: "no raw control character in a string",
                });
            }
            let Some(rel) = stop else {
                self.pos = self.bytes.len();
                return Err(JsonTextError::UnexpectedEnd);
            };
            self.pos += rel;
            if self.peek() == Some(b'"') {
                let end = self.pos;
                self.pos += 1;
                return Ok(StrSpan {
                    start,
                    end,
                    escaped,
                });
            }
            // A backslash.
            escaped = true;
            let at = self.pos;
            match self.bytes.get(at + 1) {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.pos += 2,
                Some(b'u') if hex4(self.bytes, at + 2).is_some() => self.pos += 6,
                None => return Err(JsonTextError::UnexpectedEnd),
                Some(b'u') if self.bytes.len() < at + 6 => {
                    return Err(JsonTextError::UnexpectedEnd)
                }
                _ => return Err(JsonTextError::InvalidEscape { offset: at }),
            }
        }
    }

    fn selected_string(&mut self, path: &JsonPath<'_>, span: StrSpan) -> Result<()> {
        let raw = self.src.get(span.start..span.end).unwrap_or_default();
        let text: &str = if span.escaped {
            self.scratch.clear();
            decode_into(raw, span.start, &mut self.scratch)?;
            &self.scratch
        } else {
            raw
        };
        let Some(new) = (self.f)(path, text) else {
            return Ok(());
        };
        if new == text {
            // Keep the original spelling (escapes such as `\/` or `\u00e9`).
            return Ok(());
        }
        let out = self
            .out
            .get_or_insert_with(|| Vec::with_capacity(self.bytes.len() + 64));
        out.extend_from_slice(self.bytes.get(self.copied..span.start).unwrap_or_default());
        encode_str_into(&new, out);
        self.copied = span.end;
        Ok(())
    }

    fn literal(&mut self, word: &'static [u8]) -> Result<()> {
        let end = self.pos + word.len();
        match self.bytes.get(self.pos..end) {
            Some(got) if got == word => {
                self.pos = end;
                Ok(())
            }
            Some(_) => Err(self.syntax("true, false or null")),
            None if word.starts_with(self.bytes.get(self.pos..).unwrap_or_default()) => {
                Err(JsonTextError::UnexpectedEnd)
            }
            None => Err(self.syntax("true, false or null")),
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        self.pos - start
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Result<()> {
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.syntax("a digit")),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(self.syntax("a digit after '.'"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(self.syntax("an exponent digit"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "json_text_tests.rs"]
mod tests;
