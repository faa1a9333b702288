//! The policy chain: the config's policies compiled once (regexes, scanners,
//! matchers), in order, shared by every exchange until a reload replaces it.

use super::filter::{ContentFilter, FilterError};
use super::limits::{BudgetTracker, RateLimiter};
use super::redact::{RedactError, Redactor};
use crate::config::{
    AuditLoggerOptions, CacheOptions, Config, OnError, Phases, PolicyKind, PolicyOptions,
    PolicySpec, RequestFacts, When,
};
use crate::llm::pricing::Pricing;
use std::sync::Arc;

/// At most this many policies: a request's selection is a 64-bit set.
pub const MAX_POLICIES: usize = 64;

/// Errors compiling a chain (the config was valid, but a policy could not
/// be built from it).
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("policy {policy}: {source}")]
    Redact { policy: String, source: RedactError },
    #[error("policy {policy}: {source}")]
    Filter { policy: String, source: FilterError },
    #[error("the chain has {0} policies; at most {MAX_POLICIES} are supported")]
    TooMany(usize),
    #[error("policy {policy}: its backend cannot be used: {source}")]
    LimitBackend {
        policy: String,
        source: crate::redis_link::LinkError,
    },
}

/// One compiled policy.
#[derive(Debug)]
pub struct Policy {
    pub name: Arc<str>,
    pub kind: PolicyKind,
    pub phases: Phases,
    pub when: When,
    pub on_error: OnError,
    pub action: Action,
}

/// What a policy does, compiled.
#[derive(Debug)]
pub enum Action {
    Audit(AuditLoggerOptions),
    Redact(Redactor),
    Filter(ContentFilter),
    Cache(CacheOptions),
    Passthrough,
    /// Shared with the chain a reload replaces when the policy is unchanged,
    /// so its counters carry over.
    RateLimit(Arc<RateLimiter>),
    Budget(Arc<BudgetTracker>),
}

/// The policies of one config, in chain order.
#[derive(Debug, Default)]
pub struct Chain {
    policies: Vec<Policy>,
    /// Model prices for `cost_usd` (built-in table plus `pricing:`).
    pricing: Arc<Pricing>,
}

/// The policies that apply to one request: bit `i` is `policies[i]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Selection(u64);

impl Selection {
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn contains(self, index: usize) -> bool {
        index < 64 && self.0 & (1 << index) != 0
    }

    fn insert(&mut self, index: usize) {
        if index < 64 {
            self.0 |= 1 << index;
        }
    }

    pub fn remove(&mut self, index: usize) {
        if index < 64 {
            self.0 &= !(1 << index);
        }
    }
}

fn pricing_of(config: &Config) -> Pricing {
    Pricing::with_overrides(config.pricing.iter().map(|(m, p)| (m.as_str(), *p)))
}

impl Chain {
    /// Compiles the enabled policies of `config`.
    pub fn build(config: &Config) -> Result<Chain, ChainError> {
        Self::build_after(config, None)
    }

    /// Compiles `config` to replace `previous`: a `rate-limit` or `budget`
    /// policy with the same name and options keeps its counters.
    pub fn build_after(config: &Config, previous: Option<&Chain>) -> Result<Chain, ChainError> {
        let specs: Vec<&PolicySpec> = config.chain().collect();
        if specs.len() > MAX_POLICIES {
            return Err(ChainError::TooMany(specs.len()));
        }
        let policies = specs
            .into_iter()
            .map(|spec| compile(spec, previous))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Chain {
            policies,
            pricing: Arc::new(pricing_of(config)),
        })
    }

    /// The options of the chain's audit logger, if it has one.
    pub fn audit_options(&self) -> Option<&AuditLoggerOptions> {
        self.policies.iter().find_map(|p| match &p.action {
            Action::Audit(o) => Some(o),
            _ => None,
        })
    }

    /// The model price table in force with this chain.
    pub fn pricing(&self) -> &Pricing {
        &self.pricing
    }

    /// The built-in chain used without a config: the audit logger only.
    pub fn builtin() -> Chain {
        Chain {
            policies: vec![Policy {
                name: "audit-logger".into(),
                kind: PolicyKind::AuditLogger,
                phases: Phases::BOTH,
                when: When::default(),
                on_error: OnError::FailOpen,
                action: match PolicyOptions::defaults(PolicyKind::AuditLogger) {
                    Some(PolicyOptions::AuditLogger(o)) => Action::Audit(o),
                    _ => Action::Passthrough,
                },
            }],
            pricing: Arc::default(),
        }
    }

    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    pub fn get(&self, index: usize) -> Option<&Policy> {
        self.policies.get(index)
    }

    /// The policies whose `when` matches `facts`.
    pub fn select(&self, facts: &RequestFacts<'_>) -> Selection {
        let mut selection = Selection::default();
        for (i, p) in self.policies.iter().enumerate() {
            if p.when.matches(facts) {
                selection.insert(i);
            }
        }
        selection
    }

    /// The selected policies, with their index, in chain order.
    pub fn selected(&self, selection: Selection) -> impl Iterator<Item = (usize, &Policy)> {
        self.policies
            .iter()
            .enumerate()
            .filter(move |(i, _)| selection.contains(*i))
    }
}

/// The action of the policy named `name` in `previous`, if any.
fn previous_action<'a>(previous: Option<&'a Chain>, name: &str) -> Option<&'a Action> {
    previous?
        .policies
        .iter()
        .find(|p| &*p.name == name)
        .map(|p| &p.action)
}

fn compile(spec: &PolicySpec, previous: Option<&Chain>) -> Result<Policy, ChainError> {
    let before = previous_action(previous, &spec.name);
    let action = match &spec.options {
        PolicyOptions::AuditLogger(o) => Action::Audit(o.clone()),
        PolicyOptions::Redact(o) => {
            Action::Redact(Redactor::new(o).map_err(|source| ChainError::Redact {
                policy: spec.name.clone(),
                source,
            })?)
        }
        PolicyOptions::ContentFilter(o) => {
            Action::Filter(ContentFilter::new(o).map_err(|source| ChainError::Filter {
                policy: spec.name.clone(),
                source,
            })?)
        }
        PolicyOptions::Cache(o) => Action::Cache(o.clone()),
        PolicyOptions::Passthrough => Action::Passthrough,
        PolicyOptions::RateLimit(o) => Action::RateLimit(match before {
            Some(Action::RateLimit(l)) if l.options() == o => l.clone(),
            _ => Arc::new(RateLimiter::new(&spec.name, o).map_err(|source| {
                ChainError::LimitBackend {
                    policy: spec.name.clone(),
                    source,
                }
            })?),
        }),
        PolicyOptions::Budget(o) => Action::Budget(match before {
            Some(Action::Budget(b)) if b.options() == o => b.clone(),
            _ => Arc::new(BudgetTracker::new(&spec.name, o).map_err(|source| {
                ChainError::LimitBackend {
                    policy: spec.name.clone(),
                    source,
                }
            })?),
        }),
    };
    Ok(Policy {
        name: spec.name.as_str().into(),
        kind: spec.kind,
        phases: spec.phases,
        when: spec.when.clone(),
        on_error: spec.on_error,
        action,
    })
}
