//! The policy config file (`policy-config.yaml`, contract §5): parsed
//! strictly into a validated [`Config`], with every problem reported at once
//! as `file:line:column: key.path: message`.
//!
//! Layout:
//! - `yaml`: a YAML tree that keeps the position of every node;
//! - `de`: a serde deserializer over that tree that locates each error and
//!   collects all unknown keys;
//! - `resolve`: the sections and both policy shapes, read piece by piece;
//! - [`policy`]: [`PolicySpec`] and the policy types, with their defaults;
//! - [`options`]: each type's options and their checks;
//! - [`when`]: `when:` conditions and their matcher;
//! - [`provider`]: provider targets and their defaults;
//! - `error`: [`Problem`] and [`ConfigError`].

mod de;
mod error;
pub mod options;
pub mod policy;
pub mod provider;
mod resolve;
pub mod when;
mod yaml;

pub use error::{ConfigError, Mark, Problem};
pub use options::{
    AuditLoggerOptions, BudgetAction, BudgetOptions, CacheBackend, CacheOptions,
    ContentFilterOptions, CounterBackend, FilterAction, Fsync, NamedPattern, RateLimitOptions,
    RedactOptions, Scope, DEFAULT_LIMITS_PREFIX,
};
pub use policy::{OnError, Phases, PolicyKind, PolicyOptions, PolicySpec};
pub use provider::{ProviderTarget, ProviderType};
pub use when::{Endpoint, Glob, HeaderRule, RequestFacts, When};

use std::path::{Path, PathBuf};

/// A validated policy config.
#[derive(Debug, Clone)]
pub struct Config {
    /// `pack:`; `None` when the file has none.
    pub pack: Option<Pack>,
    /// `providers.targets`, resolved with defaults, in file order.
    pub providers: Vec<ProviderTarget>,
    pub intercept: Intercept,
    pub upstream: Upstream,
    pub auth: Auth,
    /// `None`: the files under the home folder.
    pub storage: Option<Storage>,
    /// `pricing:` entries (model, USD per million tokens), laid over the
    /// built-in price table.
    pub pricing: Vec<(String, crate::llm::pricing::Price)>,
    /// Every policy in chain order, disabled ones included; see
    /// [`Config::chain`] for the ones that run.
    pub policies: Vec<PolicySpec>,
    /// Things that are valid but probably not meant (an empty chain, a
    /// content filter with nothing to match). `kt policy check` prints them.
    pub warnings: Vec<Problem>,
}

/// The former name of [`Config`].
pub type PolicyConfig = Config;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pack {
    pub name: String,
    pub version: Option<String>,
    /// `false` switches every policy of the pack off.
    pub enabled: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Intercept {
    /// Host patterns decrypted beside the built-in LLM hosts.
    pub hosts: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Upstream {
    /// `HOST:PORT:ADDR:PORT` rules, as `--connect-to` (already checked).
    pub connect_to: Vec<String>,
    /// Extra PEM files trusted for upstream TLS, as `--upstream-ca`.
    pub ca_files: Vec<PathBuf>,
    /// Corporate proxy to chain through, as `--upstream-proxy`.
    pub proxy: Option<String>,
    /// Ports a CONNECT may name besides 443.
    pub allowed_connect_ports: Vec<u16>,
    /// `response_timeout_seconds`: how long an upstream may take to start
    /// its answer.
    pub response_timeout: Option<std::time::Duration>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Auth {
    /// `None`: decided by the listen address (contract §4).
    pub required: Option<bool>,
    /// `auth.trusted_proxies`: the load balancers and reverse proxies whose
    /// `X-Forwarded-For` names the real client. From anywhere else the
    /// header is ignored (a client could write anything in it).
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// Where events and access keys are stored (`storage.url`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// `postgres://` or `postgresql://`: one store shared by replicas.
    Postgres { url: String },
    /// A folder (written as a path or `file://path`). A relative path is
    /// taken from the gateway's working directory, as `ca_files` are.
    Files { dir: PathBuf },
}

impl Storage {
    /// Reads a `storage.url` value; the error says what is accepted.
    pub fn parse(url: &str) -> Result<Storage, String> {
        let url = url.trim();
        if url.is_empty() {
            return Err("empty storage url".into());
        }
        for scheme in ["postgres://", "postgresql://"] {
            if let Some(rest) = url.strip_prefix(scheme) {
                if rest.is_empty() || rest.starts_with('/') {
                    return Err(format!(
                        "`{scheme}` needs a host: {scheme}USER@HOST:PORT/DB"
                    ));
                }
                return Ok(Storage::Postgres {
                    url: url.to_string(),
                });
            }
        }
        if let Some(path) = url.strip_prefix("file://") {
            if path.is_empty() {
                return Err("`file://` needs a folder path".into());
            }
            return Ok(Storage::Files { dir: path.into() });
        }
        if let Some((scheme, _)) = url.split_once("://") {
            return Err(format!(
                "storage scheme `{scheme}` is not supported: use postgres://USER@HOST:PORT/DB (or postgresql://), or a folder path"
            ));
        }
        Ok(Storage::Files { dir: url.into() })
    }
}

impl std::fmt::Display for Storage {
    /// Passwords in URLs are masked.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Storage::Postgres { url } => f.write_str(&redact_userinfo(url)),
            Storage::Files { dir } => write!(f, "files in {}", dir.display()),
        }
    }
}

/// `scheme://user:secret@host` → `scheme://user:***@host`.
pub(crate) fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => match rest[..at].split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***{}", &rest[at..]),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

impl Default for Config {
    /// The config of a gateway run without `--policy-config`: no
    /// providers, and the default chain, audit-logger only.
    fn default() -> Self {
        // Building from nothing cannot fail; keep a config without policies
        // rather than panic if it ever did (not `unwrap_or_default`: that
        // would be this function).
        resolve::build(None).unwrap_or_else(|_| Config::empty())
    }
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Self::parse(&text, path)
    }

    /// Validates `text`; `path` is only used in messages. An empty file is
    /// the default config.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let invalid = |problems| ConfigError::Invalid {
            path: path.to_path_buf(),
            problems,
        };
        let root = yaml::parse(text).map_err(invalid)?;
        resolve::build(root.as_ref()).map_err(invalid)
    }

    /// The policies that run, in order: enabled ones, none if the pack is
    /// disabled.
    pub fn chain(&self) -> impl Iterator<Item = &PolicySpec> {
        let pack_on = self.pack.as_ref().is_none_or(|p| p.enabled);
        self.policies.iter().filter(move |p| pack_on && p.enabled)
    }

    /// The policies that may run for `endpoint` (their other `when`
    /// conditions are decided per request).
    pub fn chain_for(&self, endpoint: Endpoint) -> impl Iterator<Item = &PolicySpec> {
        self.chain()
            .filter(move |p| p.when.allows_endpoint(endpoint))
    }

    /// The provider target with this id.
    pub fn provider(&self, id: &str) -> Option<&ProviderTarget> {
        self.providers.iter().find(|t| t.id == id)
    }
}

#[cfg(test)]
mod tests;
