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

/// Twilio's `SK` is two letters that occur in every other English word, so
/// insist on the exact case and on 32 hex digits before running anything.
pub(crate) fn twilio(hay: &[u8], hit: Range<usize>, win: Range<usize>) -> Option<Range<usize>> {
    let ok = hay.get(hit.clone()) == Some(&b"SK"[..])
        && left_boundary(hay, hit.start)
        && hay
            .get(hit.end..hit.end + 32)
            .is_some_and(|t| t.iter().all(u8::is_ascii_hexdigit));
    ok.then_some(win)
}

/// For `name = value` rules: the keyword must sit in an identifier that is
/// followed by an assignment operator, and the rest of the line must hold
/// something literal-looking (a quote, a digit or a symbol) soon after it.
/// Returns just that assignment as the window, so the regex only ever sees
/// a line's worth of bytes.
pub(crate) fn assignment(hay: &[u8], hit: Range<usize>, _: Range<usize>) -> Option<Range<usize>> {
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
    if !matches!(hay.get(p), Some(b'=' | b':' | b'!' | b'?' | b'|')) {
        return None;
    }
    let line_end = memchr::memchr(b'\n', &hay[p..]).map_or(hay.len(), |i| p + i + 1);
    let end = line_end.min(p + 320);
    let probe = &hay[p + 1..end.min(p + 65)];
    let literal = probe.iter().any(|&b| {
        b.is_ascii_digit()
            || matches!(
                b,
                b'"' | b'\''
                    | b'`'
                    | b'!'
                    | b'@'
                    | b'#'
                    | b'%'
                    | b'^'
                    | b'&'
                    | b'*'
                    | b'+'
                    | b'/'
                    | b'~'
            )
    });
    literal.then_some(start..end)
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

/// For `?key=…` / `&token=…`: the parameter name must follow `?` or `&`.
pub(crate) fn query_param(hay: &[u8], hit: Range<usize>, _: Range<usize>) -> Option<Range<usize>> {
    let s = scan_back(hay, hit.start, 48, is_ident);
    if s == 0 || !matches!(hay[s - 1], b'?' | b'&') {
        return None;
    }
    Some(s - 1..hay.len().min(hit.end + 600))
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'+' | b'/' | b'-' | b'=')
}

/// For `Authorization: …` always; for bare `Bearer`/`Basic` only when a
/// 16-byte token follows (`basic` is also an English word).
pub(crate) fn auth_scheme(
    hay: &[u8],
    hit: Range<usize>,
    win: Range<usize>,
) -> Option<Range<usize>> {
    if hay[hit.clone()].eq_ignore_ascii_case(b"authorization") {
        return Some(win);
    }
    if !left_boundary(hay, hit.start) {
        return None;
    }
    let p = scan_fwd(hay, hit.end, 4, is_blank);
    (p > hit.end && scan_fwd(hay, p, 16, is_token_char) - p >= 16).then_some(win)
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
const NOT_KEYS: &[&str] = &[
    "monkey", "turkey", "donkey", "hockey", "whiskey", "jockey", "hotkey",
];

/// Identifier words that make `…key`/`…token`/`…password` describe something
/// other than the secret itself: its id, name, path, length, type, the
/// public half, a cache or sort key, a UI label, a timestamp, a page cursor.
const NOT_SECRET_WORDS: &[&str] = &[
    "id",
    "ids",
    "name",
    "names",
    "url",
    "uri",
    "urls",
    "path",
    "paths",
    "file",
    "filename",
    "dir",
    "type",
    "kind",
    "len",
    "length",
    "size",
    "bits",
    "count",
    "format",
    "fmt",
    "encoding",
    "prefix",
    "suffix",
    "version",
    "header",
    "headers",
    "field",
    "param",
    "index",
    "idx",
    "public",
    "pub",
    "pubkey",
    "publickey",
    "primary",
    "foreign",
    "sort",
    "partition",
    "cache",
    "lookup",
    "map",
    "label",
    "hint",
    "placeholder",
    "prompt",
    "message",
    "msg",
    "error",
    "err",
    "regex",
    "pattern",
    "policy",
    "rule",
    "rules",
    "provider",
    "region",
    "endpoint",
    "host",
    "port",
    "mode",
    "method",
    "scheme",
    "timeout",
    "ttl",
    "expiry",
    "expires",
    "expiration",
    "at",
    "date",
    "time",
    "timestamp",
    "max",
    "min",
    "limit",
    "algorithm",
    "alg",
    "spec",
    "usage",
    "env",
    "var",
    "column",
    "col",
    "ref",
    "arn",
    "location",
    "template",
    "storage",
    "input",
    "validation",
    "validator",
    "strength",
    "reset",
    "changed",
    "updated",
    "created",
    "translation",
    "i18n",
    "locale",
    "idempotency",
    "dedup",
    "dedupe",
    "page",
    "next",
    "cursor",
    "continuation",
    "domain",
    "server",
    "issuer",
    "audience",
    "scope",
    "scopes",
    "enabled",
    "disabled",
    "required",
    "optional",
    "description",
    "desc",
    "example",
    "sample",
    "dummy",
    "fake",
    "mock",
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
const PLACEHOLDER_MARKS: &[&str] = &[
    "xxxx",
    "****",
    "....",
    "<",
    ">",
    "${",
    "{{",
    "}}",
    "%(",
    "$(",
    "your",
    "example",
    "placeholder",
    "changeme",
    "change_me",
    "change-me",
    "replace",
    "redacted",
    "dummy",
    "sample",
    "insert",
    "fixme",
    "todo",
    "notreal",
    "not_real",
    "not-real",
    "foobar",
];

fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

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
    const STOCK: &[&str] = &[
        "password",
        "passwd",
        "passphrase",
        "secret",
        "changeme",
        "admin",
        "administrator",
        "root",
        "default",
        "none",
        "null",
        "nil",
        "undefined",
        "true",
        "false",
        "empty",
        "required",
        "optional",
        "string",
        "hidden",
        "redacted",
        "example",
        "test",
        "testing",
        "demo",
        "guest",
        "username",
        "pass",
        "pwd",
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
