//! Options of each policy type: the validated types the policies are
//! built from, and the raw forms read from config with their checks.

use super::de::Spanned;
use super::error::{did_you_mean, one_of, Problem};
use serde::de::{self, Visitor};
use serde::Deserialize;
use std::fmt;

/// Who shares a cache entry, a rate-limit bucket or a budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    User,
    Team,
    Global,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scope::User => "user",
            Scope::Team => "team",
            Scope::Global => "global",
        })
    }
}

/// When the audit log is flushed to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// After every event: nothing is lost on power failure; slowest.
    Always,
    /// Group commit (the default): the batches written within the writer's
    /// sync interval (50 ms) share one fsync, so at most that much is at
    /// risk on power failure; a process crash loses nothing written.
    #[default]
    Batch,
    /// Leave it to the OS.
    Never,
}

/// `audit-logger` options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditLoggerOptions {
    /// Promise an append-only trail: no event is ever rewritten or lost,
    /// and a request that cannot be recorded is refused (fail_closed).
    pub immutable: bool,
    /// Days events are kept before whole log files may be pruned;
    /// absent = kept forever.
    pub retention_days: Option<u32>,
    /// Also record traffic that runs no policy: non-LLM paths on LLM hosts
    /// and blind tunnels (one `connect` event each).
    pub log_all_access: bool,
    /// Store request and response bodies (after redaction) in events.
    /// Off by default: events then hold metadata, counts and costs only.
    pub log_bodies: bool,
    /// Default `batch`.
    pub fsync: Fsync,
}

/// A custom secret pattern of the `redact` policy.
#[derive(Debug, Clone)]
pub struct NamedPattern {
    /// Replaces the match as `[REDACTED:NAME]`.
    pub name: String,
    pub regex: regex::Regex,
}

/// `redact` options.
#[derive(Debug, Clone, Default)]
pub struct RedactOptions {
    /// Patterns beside the built-in secret kinds.
    pub patterns: Vec<NamedPattern>,
    /// Only these built-in kinds (`None` = all of them).
    pub kinds: Option<Vec<String>>,
    /// Built-in kinds switched off.
    pub disable: Vec<String>,
    /// How many bytes of a response stream are held back so a secret split
    /// across events is still caught; `None` = the redactor's default.
    pub stream_holdback_bytes: Option<u32>,
}

/// What `content-filter` does on a match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FilterAction {
    /// Refuse with 409 (the default).
    #[default]
    Block,
    /// Replace the match and go on.
    Redact,
    /// Record an event only.
    Log,
}

impl fmt::Display for FilterAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FilterAction::Block => "block",
            FilterAction::Redact => "redact",
            FilterAction::Log => "log",
        })
    }
}

/// `content-filter` options.
#[derive(Debug, Clone, Default)]
pub struct ContentFilterOptions {
    pub patterns: Vec<regex::Regex>,
    /// Matched as whole text, ASCII case-insensitively.
    pub keywords: Vec<String>,
    pub action: FilterAction,
    /// Text of the block response; absent = a generic one naming the policy.
    pub message: Option<String>,
}

/// Where cached responses live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheBackend {
    /// In-process memory (the default): per replica, lost on restart.
    Memory,
    /// A Redis server (`redis://` or `rediss://` URL), shared by replicas.
    Redis(String),
}

impl CacheBackend {
    /// The Redis URL, when the entries live there.
    pub fn redis_url(&self) -> Option<&str> {
        match self {
            CacheBackend::Redis(url) => Some(url),
            CacheBackend::Memory => None,
        }
    }
}

/// `cache` options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheOptions {
    /// Default 3600.
    pub ttl_seconds: u64,
    /// Default `team`: a team's developers share hits, teams never do.
    pub scope: Scope,
    pub backend: CacheBackend,
    /// Bound on the whole cache; `None` = the backend's default.
    pub max_bytes: Option<u64>,
    /// Larger responses are not stored; `None` = the backend's default.
    pub max_entry_bytes: Option<u64>,
    /// Also cache requests with sampling (temperature > 0, n > 1), whose
    /// answers differ from call to call. Off by default.
    pub allow_nondeterministic: bool,
    /// Prefix of the Redis keys, so several deployments (or tests) can
    /// share one Redis database; `None` = `kt:cache:`.
    pub key_prefix: Option<String>,
}

/// Where `rate-limit` and `budget` keep their counters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CounterBackend {
    /// In-process memory (the default): per replica, lost on restart.
    #[default]
    Memory,
    /// A Redis server shared by replicas, keys under `key_prefix`.
    Redis { url: String, key_prefix: String },
}

impl CounterBackend {
    /// The Redis URL, when the counters live there.
    pub fn redis_url(&self) -> Option<&str> {
        match self {
            CounterBackend::Redis { url, .. } => Some(url),
            CounterBackend::Memory => None,
        }
    }
}

/// The key prefix of shared counters when `key_prefix` is not set.
pub const DEFAULT_LIMITS_PREFIX: &str = "kt:limits:";

/// `rate-limit` options: a token bucket per `per` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitOptions {
    pub requests_per_minute: Option<u32>,
    /// Counted from reported (or estimated) usage.
    pub tokens_per_minute: Option<u64>,
    /// Default `user`.
    pub per: Scope,
    /// Requests allowed at once above the steady rate; set exactly when
    /// `requests_per_minute` is, defaulting to it.
    pub burst: Option<u32>,
    pub backend: CounterBackend,
}

/// What `budget` does when spending reaches the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetAction {
    /// Refuse with 429 until the period ends (the default).
    #[default]
    Block,
    /// Record an event only.
    Log,
}

/// `budget` options (US dollars, from the pricing table).
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetOptions {
    pub usd_per_day: Option<f64>,
    pub usd_per_month: Option<f64>,
    /// Default `team`.
    pub per: Scope,
    pub action: BudgetAction,
    pub backend: CounterBackend,
}

pub(crate) const DEFAULT_CACHE_TTL: u64 = 3600;
/// The longest cache TTL a config may ask for: one year.
pub(crate) const MAX_CACHE_TTL: u64 = 365 * 24 * 3600;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAudit {
    #[serde(default)]
    immutable: bool,
    #[serde(default)]
    retention_days: Option<Spanned<u32>>,
    #[serde(default)]
    log_all_access: bool,
    #[serde(default)]
    log_bodies: bool,
    #[serde(default)]
    fsync: Fsync,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRedact {
    #[serde(default)]
    patterns: Vec<RawNamedPattern>,
    #[serde(default)]
    kinds: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    disable: Vec<Spanned<String>>,
    #[serde(default)]
    stream_holdback_bytes: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNamedPattern {
    name: Spanned<String>,
    regex: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawContentFilter {
    #[serde(default)]
    patterns: Vec<Spanned<String>>,
    #[serde(default)]
    keywords: Vec<Spanned<String>>,
    #[serde(default)]
    action: FilterAction,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCache {
    #[serde(default)]
    ttl_seconds: Option<Spanned<u64>>,
    #[serde(default)]
    scope: Option<Scope>,
    #[serde(default)]
    backend: Option<Spanned<String>>,
    #[serde(default)]
    max_bytes: Option<Spanned<ByteSize>>,
    #[serde(default)]
    max_entry_bytes: Option<Spanned<ByteSize>>,
    #[serde(default)]
    allow_nondeterministic: bool,
    #[serde(default)]
    key_prefix: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRateLimit {
    #[serde(default)]
    requests_per_minute: Option<Spanned<u32>>,
    #[serde(default)]
    tokens_per_minute: Option<Spanned<u64>>,
    #[serde(default)]
    per: Option<Scope>,
    #[serde(default)]
    burst: Option<Spanned<u32>>,
    #[serde(default)]
    backend: Option<Spanned<String>>,
    #[serde(default)]
    key_prefix: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBudget {
    #[serde(default)]
    usd_per_day: Option<Spanned<f64>>,
    #[serde(default)]
    usd_per_month: Option<Spanned<f64>>,
    #[serde(default)]
    per: Option<Scope>,
    #[serde(default)]
    action: BudgetAction,
    #[serde(default)]
    backend: Option<Spanned<String>>,
    #[serde(default)]
    key_prefix: Option<Spanned<String>>,
}

/// `passthrough` takes no options.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPassthrough {}

/// A size in bytes: an integer, or text with a unit (`64MiB`, `10 MB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size in bytes (1048576, 64MiB, 10MB)")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_size(v).ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self))
            }
        }
        d.deserialize_any(V)
    }
}

fn parse_size(s: &str) -> Option<ByteSize> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult).map(ByteSize)
}

/// A regex compiled with a bound on its compiled size, so one pattern
/// cannot take a large share of memory on every request.
fn compile_regex(
    src: &Spanned<String>,
    what: &str,
    problems: &mut Vec<Problem>,
) -> Option<regex::Regex> {
    match regex::RegexBuilder::new(&src.value)
        .size_limit(1 << 20)
        .build()
    {
        Ok(r) => Some(r),
        Err(e) => {
            // The regex crate's message spans several lines (pattern, caret,
            // reason); keep its last line, the reason.
            let reason = e.to_string();
            let reason = reason.lines().last().unwrap_or("invalid").trim();
            let reason = reason.strip_prefix("error: ").unwrap_or(reason);
            problems.push(src.problem(format!("{what} does not compile: {reason}")));
            None
        }
    }
}

fn positive<T: PartialOrd + Default + fmt::Display>(
    v: &Spanned<T>,
    problems: &mut Vec<Problem>,
) -> bool {
    if v.value > T::default() {
        true
    } else {
        problems.push(v.problem(format!("must be greater than 0, found {}", v.value)));
        false
    }
}

/// The shape of a secret kind name: that of a custom pattern's name, and
/// all that is checked of `kinds:`/`disable:` entries when some pattern
/// could not be read (see [`known_kind`]).
fn kind_name_ok(k: &Spanned<String>, problems: &mut Vec<Problem>) -> bool {
    let ok = !k.value.is_empty()
        && k.value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok {
        problems.push(k.problem(format!(
            "`{}` is not a secret kind name (letters, digits, `-`, `_`)",
            k.value
        )));
    }
    ok
}

impl RawAudit {
    pub(crate) fn validate(self, problems: &mut Vec<Problem>) -> AuditLoggerOptions {
        AuditLoggerOptions {
            immutable: self.immutable,
            retention_days: self
                .retention_days
                .filter(|d| positive(d, problems))
                .map(|d| d.value),
            log_all_access: self.log_all_access,
            log_bodies: self.log_bodies,
            fsync: self.fsync,
        }
    }
}

impl RawRedact {
    /// `complete` is false when some entry could not be read; checks that
    /// need an entry present are then skipped (they would only echo the
    /// problem already reported). The same holds for the other types.
    pub(crate) fn validate(self, complete: bool, problems: &mut Vec<Problem>) -> RedactOptions {
        let mut out = RedactOptions {
            stream_holdback_bytes: self.stream_holdback_bytes,
            ..RedactOptions::default()
        };
        let mut seen: Vec<&str> = Vec::new();
        for p in &self.patterns {
            if !kind_name_ok(&p.name, problems) {
                continue;
            }
            if seen.contains(&p.name.value.as_str()) {
                problems.push(
                    p.name
                        .problem(format!("pattern name `{}` is used twice", p.name.value)),
                );
                continue;
            }
            seen.push(&p.name.value);
            let what = format!("regex of pattern `{}`", p.name.value);
            if let Some(regex) = compile_regex(&p.regex, &what, problems) {
                out.patterns.push(NamedPattern {
                    name: p.name.value.clone(),
                    regex,
                });
            }
        }
        if let (Some(kinds), Some(first)) = (&self.kinds, self.disable.first()) {
            problems.push(first.problem(format!(
                "`disable` and `kinds` (line {}) cannot be combined: list only the kinds you want in `kinds`",
                kinds.mark.line
            )));
        }
        // A name the scanner does not know would silently match nothing:
        // `kinds: [github_token]` (for `github_pat`) would let every GitHub
        // token through. The names of this policy's own patterns count
        // (they are kinds too), so the check needs all of them read.
        let written: Vec<&str> = self
            .patterns
            .iter()
            .map(|p| p.name.value.as_str())
            .collect();
        let name_ok = |k: &Spanned<String>, problems: &mut Vec<Problem>| {
            if complete {
                known_kind(k, &written, problems)
            } else {
                kind_name_ok(k, problems)
            }
        };
        if let Some(kinds) = &self.kinds {
            if complete && kinds.value.is_empty() && self.patterns.is_empty() {
                problems.push(kinds.problem(
                    "an empty `kinds` list and no `patterns` redact nothing; use `enabled: false` instead",
                ));
            }
            out.kinds = Some(
                kinds
                    .value
                    .iter()
                    .filter(|k| name_ok(k, problems))
                    .map(|k| k.value.clone())
                    .collect(),
            );
        }
        out.disable = self
            .disable
            .iter()
            .filter(|k| name_ok(k, problems))
            .map(|k| k.value.clone())
            .collect();
        out
    }
}

/// Whether `k` names a built-in secret kind or rule id, or one of the
/// policy's own `patterns` (`custom`); if not, the problem says which
/// names there are.
fn known_kind(k: &Spanned<String>, custom: &[&str], problems: &mut Vec<Problem>) -> bool {
    use crate::policy::secrets::{builtin_kinds, builtin_rule_ids};
    let name = k.value.as_str();
    let kinds = builtin_kinds();
    if kinds.contains(&name) || custom.contains(&name) || builtin_rule_ids().any(|id| id == name) {
        return true;
    }
    let mut candidates: Vec<&str> = Vec::new();
    candidates.extend(&kinds);
    candidates.extend(custom);
    // Pushed one by one: `extend` would ask `custom` to live for 'static.
    for id in builtin_rule_ids() {
        candidates.push(id);
    }
    let mut msg = format!("unknown secret kind `{name}`");
    if let Some(s) = did_you_mean(name, &candidates) {
        msg.push_str(&format!(" (did you mean `{s}`?)"));
    }
    // Every kind is listed: a near miss may not be the one meant
    // (`github_token` is closest to `gitlab_token`, not `github_pat`).
    msg.push_str(&format!(", expected a built-in kind ({})", one_of(&kinds)));
    if !custom.is_empty() {
        msg.push_str(&format!(
            " or a name of this policy's `patterns` ({})",
            one_of(custom)
        ));
    }
    problems.push(k.problem(msg));
    false
}

impl RawContentFilter {
    /// `warnings` gets the note that a filter with nothing to match is a
    /// no-op (valid, but probably not what was meant).
    pub(crate) fn validate(
        self,
        at: &Spanned<String>,
        complete: bool,
        problems: &mut Vec<Problem>,
        warnings: &mut Vec<Problem>,
    ) -> ContentFilterOptions {
        let nothing_written = self.patterns.is_empty() && self.keywords.is_empty();
        let patterns = self
            .patterns
            .iter()
            .enumerate()
            .filter_map(|(i, p)| compile_regex(p, &format!("pattern {}", i + 1), problems))
            .collect();
        let mut keywords = Vec::new();
        for k in self.keywords {
            if k.value.trim().is_empty() {
                problems.push(k.problem("empty keyword"));
            } else {
                keywords.push(k.value);
            }
        }
        let out = ContentFilterOptions {
            patterns,
            keywords,
            action: self.action,
            message: self.message,
        };
        if complete && nothing_written {
            warnings.push(
                at.problem("content-filter has no `patterns` or `keywords`: it matches nothing"),
            );
        }
        out
    }
}

impl RawCache {
    pub(crate) fn validate(self, problems: &mut Vec<Problem>) -> CacheOptions {
        let ttl_seconds = match &self.ttl_seconds {
            Some(t) if t.value > MAX_CACHE_TTL => {
                // Clocks and Redis's PX overflow long before u64 does.
                problems.push(t.problem(format!(
                    "must be at most {MAX_CACHE_TTL} (a year), found {}",
                    t.value
                )));
                DEFAULT_CACHE_TTL
            }
            Some(t) if positive(t, problems) => t.value,
            _ => DEFAULT_CACHE_TTL,
        };
        let backend = match redis_url(self.backend, "cache", problems) {
            None => CacheBackend::Memory,
            Some(url) => CacheBackend::Redis(url),
        };
        if let (Some(total), Some(entry)) = (&self.max_bytes, &self.max_entry_bytes) {
            if entry.value.0 > total.value.0 {
                problems.push(entry.problem(format!(
                    "max_entry_bytes ({}) is larger than max_bytes ({})",
                    entry.value.0, total.value.0
                )));
            }
        }
        for size in [&self.max_bytes, &self.max_entry_bytes]
            .into_iter()
            .flatten()
        {
            if size.value.0 == 0 {
                problems.push(size.problem("must be greater than 0"));
            }
        }
        check_prefix(self.key_prefix.as_ref(), "kt:cache:", problems);
        CacheOptions {
            ttl_seconds,
            scope: self.scope.unwrap_or(Scope::Team),
            backend,
            max_bytes: self.max_bytes.map(|s| s.value.0),
            max_entry_bytes: self.max_entry_bytes.map(|s| s.value.0),
            allow_nondeterministic: self.allow_nondeterministic,
            key_prefix: self.key_prefix.map(|p| p.value),
        }
    }
}

/// The Redis URL of a `backend` option; `None` for `memory` (the default).
fn redis_url(
    backend: Option<Spanned<String>>,
    what: &str,
    problems: &mut Vec<Problem>,
) -> Option<String> {
    let b = backend.filter(|b| b.value != "memory")?;
    let scheme_ok = ["redis://", "rediss://"]
        .iter()
        .any(|s| b.value.starts_with(s) && b.value.len() > s.len());
    if !scheme_ok {
        problems.push(b.problem(format!(
            "{what} backend `{}` is not supported: use `memory` (the default) or a redis://HOST:PORT/DB (rediss:// for TLS) URL",
            super::redact_userinfo(&b.value)
        )));
    } else if let Err(e) = redis::Client::open(b.value.as_str()) {
        // The client the gateway opens at start reads it the same way.
        problems.push(b.problem(format!(
            "{what} backend `{}` is not a usable Redis URL ({e}): redis://[USER:PASSWORD@]HOST[:PORT][/DB]",
            super::redact_userinfo(&b.value)
        )));
    }
    Some(b.value)
}

/// A `key_prefix` must be usable in Redis key names as written.
fn check_prefix(prefix: Option<&Spanned<String>>, example: &str, problems: &mut Vec<Problem>) {
    if let Some(p) = prefix {
        let printable = p.value.bytes().all(|b| b.is_ascii_graphic());
        if p.value.is_empty() || !printable {
            problems.push(p.problem(format!(
                "key_prefix must be non-empty printable ASCII without spaces, e.g. `{example}`"
            )));
        }
    }
}

/// Where a `rate-limit` or `budget` policy counts: in process, or in the
/// Redis of `backend` (a `key_prefix` without a Redis backend is an error).
fn counter_backend(
    backend: Option<Spanned<String>>,
    key_prefix: Option<Spanned<String>>,
    what: &str,
    problems: &mut Vec<Problem>,
) -> CounterBackend {
    check_prefix(key_prefix.as_ref(), DEFAULT_LIMITS_PREFIX, problems);
    match redis_url(backend, what, problems) {
        Some(url) => CounterBackend::Redis {
            url,
            key_prefix: key_prefix.map_or_else(|| DEFAULT_LIMITS_PREFIX.to_string(), |p| p.value),
        },
        None => {
            if let Some(p) = key_prefix {
                problems.push(p.problem(
                    "key_prefix applies to a Redis backend, and this policy counts in memory",
                ));
            }
            CounterBackend::Memory
        }
    }
}

impl RawRateLimit {
    pub(crate) fn validate(
        self,
        at: &Spanned<String>,
        complete: bool,
        problems: &mut Vec<Problem>,
    ) -> RateLimitOptions {
        if complete && self.requests_per_minute.is_none() && self.tokens_per_minute.is_none() {
            problems.push(at.problem(
                "rate-limit needs `requests_per_minute` or `tokens_per_minute` (or both)",
            ));
        }
        let rpm_written = self.requests_per_minute.is_some();
        let rpm = self
            .requests_per_minute
            .filter(|r| positive(r, problems))
            .map(|r| r.value);
        let tpm = self
            .tokens_per_minute
            .filter(|t| positive(t, problems))
            .map(|t| t.value);
        let burst = match (&self.burst, rpm) {
            (Some(b), Some(_)) if positive(b, problems) => Some(b.value),
            (Some(b), None) if complete && !rpm_written => {
                problems
                    .push(b.problem("`burst` applies to `requests_per_minute`, which is not set"));
                None
            }
            _ => rpm,
        };
        RateLimitOptions {
            requests_per_minute: rpm,
            tokens_per_minute: tpm,
            per: self.per.unwrap_or(Scope::User),
            burst,
            backend: counter_backend(self.backend, self.key_prefix, "rate-limit", problems),
        }
    }
}

impl RawBudget {
    pub(crate) fn validate(
        self,
        at: &Spanned<String>,
        complete: bool,
        problems: &mut Vec<Problem>,
    ) -> BudgetOptions {
        if complete && self.usd_per_day.is_none() && self.usd_per_month.is_none() {
            problems.push(at.problem("budget needs `usd_per_day` or `usd_per_month` (or both)"));
        }
        let check = |v: Option<Spanned<f64>>, problems: &mut Vec<Problem>| {
            v.filter(|v| {
                let ok = v.value.is_finite() && v.value > 0.0;
                if !ok {
                    problems.push(v.problem(format!(
                        "must be a positive amount of dollars, found {}",
                        v.value
                    )));
                }
                ok
            })
            .map(|v| v.value)
        };
        BudgetOptions {
            usd_per_day: check(self.usd_per_day, problems),
            usd_per_month: check(self.usd_per_month, problems),
            per: self.per.unwrap_or(Scope::Team),
            action: self.action,
            backend: counter_backend(self.backend, self.key_prefix, "budget", problems),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB"), Some(ByteSize(64 << 20)));
        assert_eq!(parse_size("10 MB"), Some(ByteSize(10_000_000)));
        assert_eq!(parse_size("512"), Some(ByteSize(512)));
        assert_eq!(parse_size("1 TB"), None);
        assert_eq!(parse_size("MiB"), None);
    }
}
