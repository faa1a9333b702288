//! One policy of the chain as validated from config: its type, switches,
//! phases, `when` conditions, failure mode and typed options.
//!
//! Defaults per type (used when `phases` / `on_error` are not written):
//!
//! | type           | phases         | on_error                                   |
//! |----------------|----------------|--------------------------------------------|
//! | audit-logger   | input, output  | fail_closed if `immutable`, else fail_open |
//! | redact         | input, output  | fail_closed                                |
//! | content-filter | input          | fail_closed                                |
//! | cache          | input, output  | fail_open                                  |
//! | passthrough    | input, output  | fail_open                                  |
//! | rate-limit     | input, output  | fail_open                                  |
//! | budget         | input, output  | fail_closed                                |
//!
//! Safety policies (redaction, filtering, spend caps) fail closed: if they
//! cannot run, the request must not go out unchecked. Convenience policies
//! (cache, rate limits) fail open: their failure should cost speed, not
//! availability. An audit logger fails closed only when it promises an
//! immutable trail, since a request that passes unrecorded breaks that
//! promise.

use super::de::Spanned;
use super::error::Problem;
use super::options::{
    AuditLoggerOptions, BudgetAction, BudgetOptions, CacheBackend, CacheOptions,
    ContentFilterOptions, Fsync, RateLimitOptions, RedactOptions, Scope, DEFAULT_CACHE_TTL,
};
use super::when::When;
use serde::Deserialize;
use std::fmt;
use std::str::FromStr;

/// The policy types of contract §5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyKind {
    AuditLogger,
    Redact,
    ContentFilter,
    Cache,
    Passthrough,
    RateLimit,
    Budget,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 7] = [
        PolicyKind::AuditLogger,
        PolicyKind::Redact,
        PolicyKind::ContentFilter,
        PolicyKind::Cache,
        PolicyKind::Passthrough,
        PolicyKind::RateLimit,
        PolicyKind::Budget,
    ];

    /// The type names, as written in config.
    pub const NAMES: [&'static str; 7] = [
        "audit-logger",
        "redact",
        "content-filter",
        "cache",
        "passthrough",
        "rate-limit",
        "budget",
    ];

    pub fn as_str(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    /// Phases used when the policy does not list its own.
    pub fn default_phases(self) -> Phases {
        match self {
            PolicyKind::ContentFilter => Phases {
                input: true,
                output: false,
            },
            _ => Phases::BOTH,
        }
    }

    /// Failure mode used when the policy does not set `on_error`;
    /// `immutable` is the audit logger's option of that name.
    pub fn default_on_error(self, immutable: bool) -> OnError {
        match self {
            PolicyKind::Redact | PolicyKind::ContentFilter | PolicyKind::Budget => {
                OnError::FailClosed
            }
            PolicyKind::AuditLogger if immutable => OnError::FailClosed,
            _ => OnError::FailOpen,
        }
    }
}

impl FromStr for PolicyKind {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        Self::NAMES
            .iter()
            .position(|n| *n == s)
            .map(|i| Self::ALL[i])
            .ok_or(())
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where in an exchange a policy runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phases {
    /// On the request, before it goes upstream.
    pub input: bool,
    /// On the response (stream events and the whole body).
    pub output: bool,
}

impl Phases {
    pub const BOTH: Phases = Phases {
        input: true,
        output: true,
    };
}

impl fmt::Display for Phases {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match (self.input, self.output) {
            (true, true) => "input+output",
            (true, false) => "input",
            (false, true) => "output",
            (false, false) => "none",
        })
    }
}

/// One element of `phases:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Phase {
    Input,
    Output,
}

/// What happens to the request when the policy itself fails (internal
/// error, unreachable backend, body it cannot parse).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Refuse the request (the policy's protection is not given up).
    FailClosed,
    /// Let the request through as if the policy were not there.
    FailOpen,
}

impl fmt::Display for OnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OnError::FailClosed => "fail_closed",
            OnError::FailOpen => "fail_open",
        })
    }
}

/// A validated policy, in chain order.
#[derive(Debug, Clone)]
pub struct PolicySpec {
    /// The name events and block responses report (`policy=NAME`).
    pub name: String,
    pub kind: PolicyKind,
    /// `enabled: false` keeps the policy in the file but out of the chain.
    pub enabled: bool,
    pub phases: Phases,
    pub when: When,
    pub on_error: OnError,
    pub options: PolicyOptions,
}

/// Options per policy type.
#[derive(Debug, Clone)]
pub enum PolicyOptions {
    AuditLogger(AuditLoggerOptions),
    Redact(RedactOptions),
    ContentFilter(ContentFilterOptions),
    Cache(CacheOptions),
    Passthrough,
    RateLimit(RateLimitOptions),
    Budget(BudgetOptions),
}

impl PolicyOptions {
    /// The options' type.
    pub fn kind(&self) -> PolicyKind {
        match self {
            PolicyOptions::AuditLogger(_) => PolicyKind::AuditLogger,
            PolicyOptions::Redact(_) => PolicyKind::Redact,
            PolicyOptions::ContentFilter(_) => PolicyKind::ContentFilter,
            PolicyOptions::Cache(_) => PolicyKind::Cache,
            PolicyOptions::Passthrough => PolicyKind::Passthrough,
            PolicyOptions::RateLimit(_) => PolicyKind::RateLimit,
            PolicyOptions::Budget(_) => PolicyKind::Budget,
        }
    }

    /// The defaults of `kind` (what a chain entry with no section gets).
    /// `None` for types that need options (rate-limit, budget).
    pub fn defaults(kind: PolicyKind) -> Option<PolicyOptions> {
        Some(match kind {
            PolicyKind::AuditLogger => PolicyOptions::AuditLogger(AuditLoggerOptions {
                immutable: false,
                retention_days: None,
                log_all_access: false,
                log_bodies: false,
                fsync: Fsync::Batch,
            }),
            PolicyKind::Redact => PolicyOptions::Redact(RedactOptions::default()),
            PolicyKind::ContentFilter => {
                PolicyOptions::ContentFilter(ContentFilterOptions::default())
            }
            PolicyKind::Cache => PolicyOptions::Cache(CacheOptions {
                ttl_seconds: DEFAULT_CACHE_TTL,
                scope: Scope::Team,
                backend: CacheBackend::Memory,
                max_bytes: None,
                max_entry_bytes: None,
                allow_nondeterministic: false,
                key_prefix: None,
            }),
            PolicyKind::Passthrough => PolicyOptions::Passthrough,
            PolicyKind::RateLimit | PolicyKind::Budget => return None,
        })
    }

    /// A one-line summary of the options that differ from the defaults
    /// or matter for reading the chain (`ttl=3600s scope=team`).
    pub fn summary(&self) -> String {
        match self {
            PolicyOptions::AuditLogger(o) => {
                let mut w = vec![format!("fsync={:?}", o.fsync).to_lowercase()];
                if o.immutable {
                    w.push("immutable".into());
                }
                if let Some(d) = o.retention_days {
                    w.push(format!("retention={d}d"));
                }
                if o.log_all_access {
                    w.push("log_all_access".into());
                }
                if o.log_bodies {
                    w.push("log_bodies".into());
                }
                w.join(" ")
            }
            PolicyOptions::Redact(o) => {
                let mut w = vec![match &o.kinds {
                    Some(k) => format!("kinds={}", k.join(",")),
                    None => "kinds=all built-in".into(),
                }];
                if !o.disable.is_empty() {
                    w.push(format!("disable={}", o.disable.join(",")));
                }
                if !o.patterns.is_empty() {
                    let names: Vec<&str> = o.patterns.iter().map(|p| p.name.as_str()).collect();
                    w.push(format!("custom={}", names.join(",")));
                }
                w.join(" ")
            }
            PolicyOptions::ContentFilter(o) => format!(
                "action={} patterns={} keywords={}",
                o.action,
                o.patterns.len(),
                o.keywords.len()
            ),
            PolicyOptions::Cache(o) => {
                let backend = match &o.backend {
                    CacheBackend::Memory => "memory".to_string(),
                    CacheBackend::Redis(url) => super::redact_userinfo(url),
                };
                format!("ttl={}s scope={} backend={backend}", o.ttl_seconds, o.scope)
            }
            PolicyOptions::Passthrough => String::new(),
            PolicyOptions::RateLimit(o) => {
                let mut w = Vec::new();
                if let Some(r) = o.requests_per_minute {
                    w.push(format!("{r} req/min"));
                }
                if let Some(b) = o.burst {
                    w.push(format!("burst={b}"));
                }
                if let Some(t) = o.tokens_per_minute {
                    w.push(format!("{t} tokens/min"));
                }
                w.push(format!("per {}", o.per));
                if let Some(url) = o.backend.redis_url() {
                    w.push(format!("shared in {}", super::redact_userinfo(url)));
                }
                w.join(" ")
            }
            PolicyOptions::Budget(o) => {
                let mut w = Vec::new();
                if let Some(d) = o.usd_per_day {
                    w.push(format!("${d}/day"));
                }
                if let Some(m) = o.usd_per_month {
                    w.push(format!("${m}/month"));
                }
                w.push(format!("per {}", o.per));
                w.push(format!(
                    "action={}",
                    match o.action {
                        BudgetAction::Block => "block",
                        BudgetAction::Log => "log",
                    }
                ));
                if let Some(url) = o.backend.redis_url() {
                    w.push(format!("shared in {}", super::redact_userinfo(url)));
                }
                w.join(" ")
            }
        }
    }
}

/// Keys every policy takes beside its type's options (contract §5).
pub(crate) const COMMON_KEYS: &[&str] = &["enabled", "phases", "when", "on_error"];

/// The common keys as written (the policy section less its options).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCommon {
    #[serde(default, rename = "type")]
    pub kind: Option<Spanned<String>>,
    #[serde(default)]
    pub enabled: Option<Spanned<bool>>,
    #[serde(default)]
    pub phases: Option<Spanned<Vec<Phase>>>,
    #[serde(default)]
    pub when: Option<Spanned<super::when::RawWhen>>,
    #[serde(default)]
    pub on_error: Option<Spanned<OnError>>,
}

impl RawCommon {
    /// Fills what `self` lacks from `other`; a key set in both is a problem.
    pub(crate) fn merge(mut self, other: RawCommon, problems: &mut Vec<Problem>) -> RawCommon {
        fn one<T>(a: &mut Option<Spanned<T>>, b: Option<Spanned<T>>, problems: &mut Vec<Problem>) {
            if let Some(b) = b {
                match a {
                    Some(first) => problems.push(b.problem(format!(
                        "also set at line {}; set it in one place",
                        first.mark.line
                    ))),
                    None => *a = Some(b),
                }
            }
        }
        one(&mut self.kind, other.kind, problems);
        one(&mut self.enabled, other.enabled, problems);
        one(&mut self.phases, other.phases, problems);
        one(&mut self.when, other.when, problems);
        one(&mut self.on_error, other.on_error, problems);
        self
    }
}

/// `phases:` as a set; an empty list is a problem.
pub(crate) fn phases_of(list: &Spanned<Vec<Phase>>, problems: &mut Vec<Problem>) -> Option<Phases> {
    if list.value.is_empty() {
        problems.push(list.problem(
            "list at least one phase (input, output); use `enabled: false` to switch a policy off",
        ));
        return None;
    }
    Some(Phases {
        input: list.value.contains(&Phase::Input),
        output: list.value.contains(&Phase::Output),
    })
}

/// Builds the finished spec from validated parts.
pub(crate) fn assemble(
    name: String,
    kind: PolicyKind,
    common: RawCommon,
    when: When,
    options: PolicyOptions,
    problems: &mut Vec<Problem>,
) -> PolicySpec {
    let immutable = matches!(&options, PolicyOptions::AuditLogger(o) if o.immutable);
    let phases = common
        .phases
        .as_ref()
        .and_then(|p| phases_of(p, problems))
        .unwrap_or_else(|| kind.default_phases());
    PolicySpec {
        name,
        kind,
        enabled: common.enabled.is_none_or(|e| e.value),
        phases,
        when,
        on_error: common
            .on_error
            .map_or_else(|| kind.default_on_error(immutable), |o| o.value),
        options,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip() {
        for k in PolicyKind::ALL {
            assert_eq!(k.as_str().parse::<PolicyKind>(), Ok(k));
        }
        assert!("cahce".parse::<PolicyKind>().is_err());
    }
}
