//! The cheap byte-level tests around the regexes: gates that decide, at a
//! keyword hit, whether a rule's regex is worth running (and on which bytes),
//! and checks that have the last word on a regex match.
//!
//! Gates exist for speed: words like `key`, `token` or `://` are everywhere
//! in code, so the generic rules only look at a hit when an assignment or a
//! `user:pass@` actually follows it. Checks exist for precision: they hold
//! the judgement a regex cannot express (entropy, placeholders, identifiers
//! that merely contain `key`).

use std::ops::Range;

/// A regex match under review.
pub(crate) struct Candidate<'h> {
    /// The scanned bytes (the match's context is there).
    pub hay: &'h [u8],
    /// The part that would be redacted.
    pub secret: Range<usize>,
    /// The identifier the value is assigned to (generic rules only).
    pub ident: Option<Range<usize>>,
}

impl Candidate<'_> {
    pub fn secret(&self) -> &[u8] {
        &self.hay[self.secret.clone()]
    }

    fn ident(&self) -> &[u8] {
        self.ident.clone().map_or(&[][..], |r| &self.hay[r])
    }

    /// Whether the secret was written between quotes.
    fn quoted(&self) -> bool {
        self.secret.start > 0 && matches!(self.hay[self.secret.start - 1], b'"' | b'\'' | b'`')
    }

    /// `password == other` compares with a variable; only a quoted literal
    /// on the right of a comparison is a secret.
    fn plain_value(&self) -> bool {
        let op = self
            .ident
            .as_ref()
            .map_or(&[][..], |i| &self.hay[i.end..self.secret.start]);
        self.quoted()
            || memchr::memmem::find(op, b"==").is_none()
                && memchr::memmem::find(op, b"!=").is_none()
    }
}

pub(crate) fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn is_ident(b: u8) -> bool {
    is_word(b) || b == b'.' || b == b'-'
}

/// True when a token may start at `at`: not glued to a preceding word
/// (`task_ghp_…` is an identifier, not a token). A JSON/shell escape such as
/// a literal `\n` right before the token counts as a separator, because
/// pasted logs and JSON keep their escapes.
pub(crate) fn left_boundary(hay: &[u8], at: usize) -> bool {
    if at == 0 || !is_word(hay[at - 1]) {
        return true;
    }
    at >= 2 && hay[at - 2] == b'\\' && matches!(hay[at - 1], b'n' | b'r' | b't')
}

/// Shannon entropy in bits per byte.
pub(crate) fn entropy(bytes: &[u8]) -> f64 {
    if bytes.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &b in bytes {
        counts[b as usize] += 1;
    }
    let n = bytes.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

fn scan_back(hay: &[u8], from: usize, max: usize, keep: fn(u8) -> bool) -> usize {
    let floor = from.saturating_sub(max);
    let mut i = from;
    while i > floor && keep(hay[i - 1]) {
        i -= 1;
    }
    i
}

fn scan_fwd(hay: &[u8], from: usize, max: usize, keep: fn(u8) -> bool) -> usize {
    let ceil = hay.len().min(from.saturating_add(max));
    let mut i = from;
    while i < ceil && keep(hay[i]) {
        i += 1;
    }
    i
}

fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

// ---------------------------------------------------------------- gates --
//
// A gate gets the haystack, the keyword hit and the rule's default window,
// and returns the window to search (or None to skip the hit).

/// The keyword must start a token (see [`left_boundary`]).
pub(crate) fn word_start(hay: &[u8], hit: Range<usize>, win: Range<usize>) -> Option<Range<usize>> {
    left_boundary(hay, hit.start).then_some(win)
}

fn starts_with_ci(hay: &[u8], at: usize, word: &[u8]) -> bool {
    hay.get(at..at + word.len())
        .is_some_and(|w| w.eq_ignore_ascii_case(word))
}

fn ends_with_ci_at(hay: &[u8], end: usize, word: &[u8]) -> bool {
    end >= word.len() && hay[end - word.len()..end].eq_ignore_ascii_case(word)
}

fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

const VALUE_CHARS: &[u8] = b"_+/=.~!@#$%^&*:?-";

fn is_value(b: u8) -> bool {
    b.is_ascii_alphanumeric() || VALUE_CHARS.contains(&b)
}

fn is_quote(b: u8) -> bool {
    matches!(b, b'"' | b'\'' | b'`')
}

/// Length of the assignment operator at `p`, as [`super::rules`]'s
/// `ASSIGNMENT` pattern knows them.
fn operator_len(hay: &[u8], p: usize) -> Option<usize> {
    let rest = &hay[p..hay.len().min(p + 3)];
    for op in [
        &b"==="[..],
        b"!==",
        b"||=",
        b"??=",
        b"==",
        b"!=",
        b":=",
        b"=>",
        b"=",
        b":",
    ] {
        if rest.starts_with(op) {
            return Some(op.len());
        }
    }
    None
}

/// Whether a literal value of `min` to 200 characters starts at `p` (after
/// an optional quote) and properly ends (quote, blank, delimiter, line end),
/// as the `ASSIGNMENT` regex and the checks will require.
fn literal_at(hay: &[u8], mut p: usize, min: usize) -> bool {
    if hay.get(p) == Some(&b'\\') {
        p += 1;
    }
    if hay.get(p).copied().is_some_and(is_quote) {
        p += 1;
    }
    let end = scan_fwd(hay, p, 201, is_value);
    end - p >= min
        && hay.get(end).is_none_or(|&b| {
            is_quote(b)
                || matches!(
                    b,
                    b' ' | b'\t' | b',' | b';' | b')' | b'}' | b']' | b'\r' | b'\n' | b'\\'
                )
        })
}

/// The bones of the `name = value` rules: the keyword sits in an identifier
/// followed by an assignment operator and then a literal of `min`+ bytes
/// (directly, or after a type annotation: `password: str = "…"`). Returns
/// the identifier's start, the operator's position and the line's end.
fn assignment_parts(hay: &[u8], hit: &Range<usize>, min: usize) -> Option<(usize, usize, usize)> {
    let start = scan_back(hay, hit.start, 80, is_ident);
    if start > 0 && matches!(hay[start - 1], b'?' | b'&') {
        // A URL query parameter: the query rule, which knows where the value
        // ends (`&`), handles it.
        return None;
    }
    let mut p = scan_fwd(hay, hit.end, 80, is_ident);
    // Closing quote or bracket of a key: `"key": …`, `['key'] = …`, `\"key\":`.
    p = scan_fwd(hay, p, 4, |b| {
        matches!(b, b'"' | b'\'' | b'`' | b']' | b'\\')
    });
    p = scan_fwd(hay, p, 8, is_blank);
    let op = operator_len(hay, p)?;
    let line_end = memchr::memchr(b'\n', &hay[p..]).map_or(hay.len(), |i| p + i + 1);
    let v = scan_fwd(hay, p + op, 8, is_blank);
    if literal_at(hay, v, min) {
        return Some((start, p, line_end));
    }
    if hay[p] == b':' && op == 1 {
        let ann = scan_fwd(hay, v, 48, |b| {
            b.is_ascii_alphanumeric() || b"_.<>[]|&' ".contains(&b)
        });
        if hay.get(ann) == Some(&b'=') && hay.get(ann + 1) != Some(&b'=') {
            let v = scan_fwd(hay, ann + 1, 8, is_blank);
            if literal_at(hay, v, min) {
                return Some((start, p, line_end));
            }
        }
    }
    None
}

/// For rules whose pattern is an assignment to a name around the keyword:
/// the window is just that assignment, so the regex sees one line at most.
pub(crate) fn assignment(hay: &[u8], hit: Range<usize>, _: Range<usize>) -> Option<Range<usize>> {
    let (start, op, line_end) = assignment_parts(hay, &hit, 6)?;
    Some(start..line_end.min(op + 320))
}

/// [`assignment`], when the identifier names a secret.
pub(crate) fn assignment_secret(
    hay: &[u8],
    hit: Range<usize>,
    _: Range<usize>,
) -> Option<Range<usize>> {
    let (start, op, line_end) = assignment_parts(hay, &hit, 12)?;
    let ident_end = scan_fwd(hay, hit.end, 80, is_ident);
    matches!(classify(&hay[start..ident_end]), Named::Secret)
        .then_some(start..line_end.min(op + 320))
}

/// [`assignment`], when the identifier names a password.
pub(crate) fn assignment_password(
    hay: &[u8],
    hit: Range<usize>,
    _: Range<usize>,
) -> Option<Range<usize>> {
    let (start, op, line_end) = assignment_parts(hay, &hit, 6)?;
    let ident_end = scan_fwd(hay, hit.end, 80, is_ident);
    matches!(classify(&hay[start..ident_end]), Named::Password)
        .then_some(start..line_end.min(op + 320))
}

/// Whether the value starting at `at` is being assigned to a name that reads
/// as a secret or a password (`password = "`, `\"api_key\": \"`,
/// `DB_PASS: `): a stream must hold such a value until it ends, as its first
/// part looks like any word and would otherwise be sent before the rest
/// makes it a match.
pub(crate) fn assigned_to_credential(hay: &[u8], at: usize) -> bool {
    let mut p = at.min(hay.len());
    if p > 0 && is_quote(hay[p - 1]) {
        p -= 1;
        if p > 0 && hay[p - 1] == b'\\' {
            p -= 1;
        }
    }
    p = scan_back(hay, p, 8, is_blank);
    let op_end = p;
    p = scan_back(hay, p, 3, |b| {
        matches!(b, b'=' | b':' | b'>' | b'!' | b'|' | b'?')
    });
    if p == op_end || operator_len(hay, p) != Some(op_end - p) {
        return false;
    }
    p = scan_back(hay, p, 8, is_blank);
    p = scan_back(hay, p, 4, |b| {
        matches!(b, b'"' | b'\'' | b'`' | b']' | b'\\')
    });
    let start = scan_back(hay, p, 80, is_ident);
    start < p && !matches!(classify(&hay[start..p]), Named::Nothing)
}

/// `api-key:` / `Ocp-Apim-Subscription-Key:` headers (Azure).
pub(crate) fn api_key_header(
    hay: &[u8],
    hit: Range<usize>,
    win: Range<usize>,
) -> Option<Range<usize>> {
    (ends_with_ci_at(hay, hit.start, b"api-") || ends_with_ci_at(hay, hit.start, b"subscription-"))
        .then_some(win)
}

/// `dop_v1_…`: the keyword is `_v1_`, the token starts three bytes earlier.
pub(crate) fn digitalocean(
    hay: &[u8],
    hit: Range<usize>,
    win: Range<usize>,
) -> Option<Range<usize>> {
    let s = hit.start.checked_sub(3)?;
    (matches!(&hay[s..hit.start], b"dop" | b"doo" | b"dor") && left_boundary(hay, s)).then_some(win)
}

/// `AGE-SECRET-KEY-1…`, found through its `ECRET`.
pub(crate) fn age_key(hay: &[u8], hit: Range<usize>, win: Range<usize>) -> Option<Range<usize>> {
    let s = hit.start.checked_sub(5)?;
    (hay[s..].starts_with(b"AGE-SECRET-KEY-1") && left_boundary(hay, s)).then_some(win)
}

/// Legacy Vault tokens only count after a `vault…token` name.
pub(crate) fn vault_context(
    hay: &[u8],
    hit: Range<usize>,
    win: Range<usize>,
) -> Option<Range<usize>> {
    // Runs on every `token`: look only at the identifier it is part of.
    let ident = &hay[scan_back(hay, hit.start, 30, is_ident)..hit.start];
    contains_ci(ident, b"vault").then_some(win)
}

/// `-----BEGIN … PRIVATE KEY`, not a certificate or `BEGIN TRANSACTION`.
pub(crate) fn pem_begin(hay: &[u8], hit: Range<usize>, win: Range<usize>) -> Option<Range<usize>> {
    let line = &hay[hit.end..hay.len().min(hit.end + 120)];
    let ok = hit.start >= 5
        && &hay[hit.start - 5..hit.start] == b"-----"
        && memchr::memmem::find(line, b"PRIVATE KEY").is_some();
    ok.then_some(win)
}

fn sk_then(hay: &[u8], hit: &Range<usize>, tails: &[&[u8]]) -> bool {
    left_boundary(hay, hit.start) && tails.iter().any(|t| hay[hit.end..].starts_with(t))
}

pub(crate) fn sk_openai(hay: &[u8], hit: Range<usize>, win: Range<usize>) -> Option<Range<usize>> {
    sk_then(hay, &hit, &[b"proj-", b"svcacct-", b"admin-"]).then_some(win)
}

pub(crate) fn sk_anthropic(
    hay: &[u8],
    hit: Range<usize>,
    win: Range<usize>,
) -> Option<Range<usize>> {
    sk_then(hay, &hit, &[b"ant-"]).then_some(win)
}

pub(crate) fn sk_openrouter(
    hay: &[u8],
    hit: Range<usize>,
    win: Range<usize>,
) -> Option<Range<usize>> {
    sk_then(hay, &hit, &[b"or-v1-"]).then_some(win)
}

/// DeepSeek keys are a plain `sk-` + 32 hex: only near the word "deepseek".
pub(crate) fn deepseek_context(
    hay: &[u8],
    hit: Range<usize>,
    win: Range<usize>,
) -> Option<Range<usize>> {
    let near = &hay[hit.start.saturating_sub(256)..hay.len().min(hit.end + 300)];
    (left_boundary(hay, hit.start)
        && hay
            .get(hit.end..hit.end + 32)
            .is_some_and(|t| t.iter().all(u8::is_ascii_hexdigit))
        && contains_ci(near, b"deepseek"))
    .then_some(win)
}

/// For `scheme://user:pass@host`: a `:` then an `@` must follow the `://`
/// before the authority ends. The window runs from the scheme to the host.
pub(crate) fn url_userinfo(hay: &[u8], hit: Range<usize>, _: Range<usize>) -> Option<Range<usize>> {
    let start = scan_back(hay, hit.start, 32, |b| {
        b.is_ascii_alphanumeric() || matches!(b, b'+' | b'.' | b'-')
    });
    if start == hit.start {
        return None;
    }
    let mut colon = false;
    for (i, &b) in hay[hit.end..].iter().take(400).enumerate() {
        match b {
            b'@' if colon => return Some(start..hay.len().min(hit.end + i + 2)),
            b':' => colon = true,
            b'@' | b'/' | b'?' | b'#' | b'"' | b'\'' | b'<' | b'>' | b'\\' => return None,
            _ if b.is_ascii_whitespace() => return None,
            _ => {}
        }
    }
    None
}

/// For `?api_key=…` / `&token=…`: the parameter around the keyword follows
/// `?` or `&` and is followed by `=`.
pub(crate) fn query_param(hay: &[u8], hit: Range<usize>, _: Range<usize>) -> Option<Range<usize>> {
    let s = scan_back(hay, hit.start, 48, is_ident);
    let e = scan_fwd(hay, hit.end, 48, is_ident);
    let ok = s > 0
        && matches!(hay[s - 1], b'?' | b'&')
        && (hay.get(e) == Some(&b'=') || hay[hit.clone()].ends_with(b"="));
    ok.then(|| s - 1..hay.len().min(hit.end + 600))
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'+' | b'/' | b'-' | b'=')
}

/// `Authorization:`/`= …` (keyword `uth`), or `Bearer` (keyword `earer`)
/// followed by a 16-byte token. The window is the one line.
pub(crate) fn auth_scheme(
    hay: &[u8],
    hit: Range<usize>,
    win: Range<usize>,
) -> Option<Range<usize>> {
    let s = hit.start.checked_sub(1)?;
    let line_end = memchr::memchr(b'\n', &hay[hit.end..]).map_or(hay.len(), |i| hit.end + i + 1);
    if &hay[hit.clone()] == b"earer" {
        let p = scan_fwd(hay, hit.end, 4, is_blank);
        let ok = matches!(hay[s], b'B' | b'b')
            && left_boundary(hay, s)
            && p > hit.end
            && scan_fwd(hay, p, 16, is_token_char) - p >= 16;
        return ok.then_some(s..line_end.min(win.end));
    }
    if !starts_with_ci(hay, s, b"authorization") {
        return None;
    }
    let mut p = scan_fwd(hay, s + 13, 2, |b| b == b'\\' || is_quote(b));
    p = scan_fwd(hay, p, 4, is_blank);
    matches!(hay.get(p), Some(b':' | b'=')).then_some(s..line_end.min(win.end))
}

// --------------------------------------------------------------- checks --

fn char_classes(s: &[u8]) -> usize {
    let lower = s.iter().any(u8::is_ascii_lowercase);
    let upper = s.iter().any(u8::is_ascii_uppercase);
    let digit = s.iter().any(u8::is_ascii_digit);
    usize::from(lower) + usize::from(upper) + usize::from(digit)
}

/// At least two of lower case, upper case and digits: random tokens always
/// are, identifiers like `sk_test_validates_input` are not.
pub(crate) fn mixed(c: &Candidate<'_>) -> bool {
    char_classes(c.secret()) >= 2
}

pub(crate) fn digit_and_letter(c: &Candidate<'_>) -> bool {
    let s = c.secret();
    s.iter().any(u8::is_ascii_digit) && s.iter().any(u8::is_ascii_alphabetic)
}

/// AWS ids are base32 and nearly always contain a digit; an `ASIA…` run of
/// capitals alone is more likely a constant name. `AKIA` is distinctive
/// enough on its own.
pub(crate) fn aws_key_id(c: &Candidate<'_>) -> bool {
    let s = c.secret();
    s.starts_with(b"AKIA") || s[4..].iter().any(u8::is_ascii_digit)
}

/// A Copilot token is a `;`-separated list that always carries an expiry.
pub(crate) fn copilot_token(c: &Candidate<'_>) -> bool {
    memchr::memmem::find(c.secret(), b";exp=").is_some()
}

/// A real key has a long base64 run; `-----BEGIN PRIVATE KEY-----\n...` in
/// documentation does not.
pub(crate) fn pem_body(c: &Candidate<'_>) -> bool {
    let mut run = 0;
    for &b in c.secret() {
        if b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=') {
            run += 1;
            if run >= 40 {
                return true;
            }
        } else {
            run = 0;
        }
    }
    false
}

/// Calls `f` with each word of an identifier: split at non-alphanumerics and
/// at camelCase humps (`dbPassword` → `db`, `Password`).
fn for_each_segment(ident: &[u8], mut f: impl FnMut(&[u8])) {
    let mut start = 0;
    for i in 0..ident.len() {
        let b = ident[i];
        if !b.is_ascii_alphanumeric() {
            if start < i {
                f(&ident[start..i]);
            }
            start = i + 1;
        } else if i > start && b.is_ascii_uppercase() && ident[i - 1].is_ascii_lowercase() {
            f(&ident[start..i]);
            start = i;
        }
    }
    if start < ident.len() {
        f(&ident[start..]);
    }
}

fn ends_with_ci(s: &[u8], suffix: &[u8]) -> bool {
    s.len() >= suffix.len() && s[s.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
}

fn eq_any(s: &[u8], words: &[&str]) -> bool {
    words.iter().any(|w| s.eq_ignore_ascii_case(w.as_bytes()))
}

/// Words ending in `key` that are not about keys.
#[rustfmt::skip]
const NOT_KEYS: &[&str] = &[
    "monkey", "turkey", "donkey", "hockey", "whiskey", "jockey", "hotkey",
];

/// Identifier words that make `…key`/`…token`/`…password` describe something
/// other than the secret itself: its id, name, path, length, type, the
/// public half, a cache or sort key, a UI label, a timestamp, a page cursor.
#[rustfmt::skip]
const NOT_SECRET_WORDS: &[&str] = &[
    "id", "ids", "name", "names", "url", "uri", "urls", "path", "paths", "file", "filename", "dir",
    "type", "kind", "len", "length", "size", "bits", "count", "format", "fmt", "encoding", "prefix",
    "suffix", "version", "header", "headers", "field", "param", "index", "idx", "public", "pub",
    "pubkey", "publickey", "primary", "foreign", "sort", "partition", "cache", "lookup", "map",
    "label", "hint", "placeholder", "prompt", "message", "msg", "error", "err", "regex", "pattern",
    "policy", "rule", "rules", "provider", "region", "endpoint", "host", "port", "mode", "method",
    "scheme", "timeout", "ttl", "expiry", "expires", "expiration", "at", "date", "time",
    "timestamp", "max", "min", "limit", "algorithm", "alg", "spec", "usage", "env", "var", "column",
    "col", "ref", "arn", "location", "template", "storage", "input", "validation", "validator",
    "strength", "reset", "changed", "updated", "created", "translation", "i18n", "locale",
    "idempotency", "dedup", "dedupe", "page", "next", "cursor", "continuation", "domain", "server",
    "issuer", "audience", "scope", "scopes", "enabled", "disabled", "required", "optional",
    "description", "desc", "example", "sample", "dummy", "fake", "mock",
];

enum Named {
    Nothing,
    Secret,
    Password,
}

fn classify(ident: &[u8]) -> Named {
    let (mut secret, mut password, mut denied) = (false, false, false);
    for_each_segment(ident, |seg| {
        if eq_any(seg, NOT_SECRET_WORDS) || eq_any(seg, NOT_KEYS) {
            denied = true;
        } else if ["password", "passwd", "passphrase", "pwd"]
            .iter()
            .any(|w| ends_with_ci(seg, w.as_bytes()))
            || seg.eq_ignore_ascii_case(b"pass")
        {
            password = true;
        } else if [
            "key",
            "token",
            "secret",
            "secrets",
            "credential",
            "credentials",
            "creds",
            "auth",
            "sig",
            "signature",
        ]
        .iter()
        .any(|w| ends_with_ci(seg, w.as_bytes()))
        {
            secret = true;
        }
    });
    match (denied, password, secret) {
        (true, _, _) => Named::Nothing,
        (false, true, _) => Named::Password,
        (false, false, true) => Named::Secret,
        _ => Named::Nothing,
    }
}

/// Substrings that mark a value as a placeholder or a template, not a secret.
#[rustfmt::skip]
const PLACEHOLDER_MARKS: &[&str] = &[
    "xxxx", "****", "....", "<", ">", "${", "{{", "}}", "%(", "$(", "your", "example",
    "placeholder", "changeme", "change_me", "change-me", "replace", "redacted", "dummy", "sample",
    "insert", "fixme", "todo", "notreal", "not_real", "not-real", "foobar",
];

fn placeholder(v: &[u8]) -> bool {
    PLACEHOLDER_MARKS
        .iter()
        .any(|m| contains_ci(v, m.as_bytes()))
}

/// References to a secret rather than the secret: `$VAR`, `%VAR%`,
/// `settings.API_KEY`, a URL, a file path.
fn reference(v: &[u8]) -> bool {
    let first = v.first().copied().unwrap_or(b' ');
    if matches!(first, b'$' | b'*' | b'&' | b'/' | b'.')
        || (first == b'%' && v.get(1).is_some_and(u8::is_ascii_alphabetic))
        || v.starts_with(b"~/")
    {
        return true;
    }
    if memchr::memmem::find(v, b"://").is_some() {
        return true;
    }
    // A dotted path of identifiers: `os.environ`, `settings.DB_PASSWORD`.
    // Parts mixing all three character classes are random, as in a JWT.
    v.contains(&b'.')
        && v.split(|&b| b == b'.').all(|part| {
            part.first()
                .is_some_and(|&b| b.is_ascii_alphabetic() || b == b'_')
                && part.iter().all(|&b| is_word(b))
                && char_classes(part) < 3
        })
}

fn distinct(v: &[u8]) -> usize {
    let mut seen = [false; 256];
    v.iter()
        .filter(|&&b| !std::mem::replace(&mut seen[b as usize], true))
        .count()
}

/// `app-settings-v2`, `my-service-2024`: every part between separators is a
/// plain word or number. Random tokens mix classes inside their parts.
fn slug(v: &[u8]) -> bool {
    v.split(|&b| matches!(b, b'-' | b'_' | b'.' | b':' | b'/'))
        .all(|part| {
            part.len() <= 3
                || part.iter().all(u8::is_ascii_lowercase)
                || part.iter().all(u8::is_ascii_uppercase)
                || part.iter().all(u8::is_ascii_digit)
                || (part[0].is_ascii_uppercase() && part[1..].iter().all(u8::is_ascii_lowercase))
        })
}

/// `api_key = "…"`, `AUTH_TOKEN=…`, `"clientSecret": "…"`: the identifier
/// names a secret, and the value is a literal that looks random (letters and
/// digits, not a slug, not a placeholder or a reference).
pub(crate) fn generic_secret(c: &Candidate<'_>) -> bool {
    let v = c.secret();
    matches!(classify(c.ident()), Named::Secret)
        && (12..=200).contains(&v.len())
        && digit_and_letter(c)
        && !placeholder(v)
        && !reference(v)
        && !slug(v)
        && distinct(v) >= 6
        && c.plain_value()
}

/// Passwords are short and need not look random, so the identifier carries
/// the weight: any literal assigned to a `password`-like name is redacted,
/// unless it is a stock word (`changeme`, `password`, `null`…), a
/// placeholder, a reference, or an unquoted bare word (`password: String`).
pub(crate) fn password(c: &Candidate<'_>) -> bool {
    #[rustfmt::skip]
    const STOCK: &[&str] = &[
        "password", "passwd", "passphrase", "secret", "changeme", "admin", "administrator", "root",
        "default", "none", "null", "nil", "undefined", "true", "false", "empty", "required",
        "optional", "string", "hidden", "redacted", "example", "test", "testing", "demo", "guest",
        "username", "pass", "pwd",
    ];
    let v = c.secret();
    let bare_word = v.iter().all(|&b| b.is_ascii_alphabetic() || b == b'_');
    matches!(classify(c.ident()), Named::Password)
        && (6..=128).contains(&v.len())
        && !eq_any(v, STOCK)
        && !placeholder(v)
        && !reference(v)
        && distinct(v) >= 3
        && (c.quoted() || !bare_word)
        && c.plain_value()
}

/// The password of `scheme://user:password@host`, unless it is a template
/// or one of the stock passwords of local development setups.
pub(crate) fn url_password(c: &Candidate<'_>) -> bool {
    #[rustfmt::skip]
    const STOCK: &[&str] = &[
        "password", "pass", "passwd", "pwd", "secret", "changeme", "admin", "root", "postgres",
        "mysql", "redis", "user", "guest", "test",
    ];
    let v = c.secret();
    v.len() >= 4 && !eq_any(v, STOCK) && !placeholder(v) && !reference(v) && distinct(v) >= 3
}

/// `?api_key=…`, `&sig=…`: a secret-named query parameter with a random value.
pub(crate) fn query_secret(c: &Candidate<'_>) -> bool {
    let v = c.secret();
    !matches!(classify(c.ident()), Named::Nothing)
        && v.len() >= 8
        && !placeholder(v)
        && !reference(v)
        && char_classes(v) >= 2
}

/// The credential after `Bearer`/`Basic`/`Authorization:`.
pub(crate) fn auth_token(c: &Candidate<'_>) -> bool {
    let v = c.secret();
    !placeholder(v) && !reference(v) && char_classes(v) >= 2 && distinct(v) >= 6
}
