//! The policy config file (`policy-config.yaml`): strict parsing of the
//! contract's top-level sections, with file:line:column on every error.
//!
//! Policy bodies are kept as YAML values here; the policy engine validates
//! them against each policy type.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Errors reading a config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The whole config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    #[serde(default)]
    pub pack: Option<Pack>,
    #[serde(default)]
    pub providers: Option<Providers>,
    #[serde(default)]
    pub intercept: InterceptSection,
    #[serde(default)]
    pub upstream: UpstreamSection,
    #[serde(default)]
    pub auth: AuthSection,
    #[serde(default)]
    pub storage: Option<StorageSection>,
    #[serde(default)]
    pub policies: Option<Policies>,
    /// Per-policy settings keyed by policy name (the "chain" shape).
    #[serde(default)]
    pub policy: BTreeMap<String, serde_yaml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pack {
    pub name: String,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Providers {
    #[serde(default)]
    pub targets: Vec<ProviderTarget>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderTarget {
    pub id: String,
    #[serde(default)]
    pub provider: Option<ProviderSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub base_url: Option<String>,
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default)]
    pub models: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterceptSection {
    /// Hosts decrypted beside the built-in LLM hosts.
    #[serde(default)]
    pub hosts: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    /// `HOST:PORT:ADDR:PORT` rules, as `--connect-to`.
    #[serde(default)]
    pub connect_to: Vec<String>,
    /// Extra PEM files trusted for upstream TLS, as `--upstream-ca`.
    #[serde(default)]
    pub ca_files: Vec<PathBuf>,
    /// Corporate proxy to chain through, as `--upstream-proxy`.
    #[serde(default)]
    pub proxy: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    #[serde(default)]
    pub required: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    pub url: String,
}

/// `policies:` is either `{chain: [...]}` or a list of named policies.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Policies {
    Chain(ChainShape),
    List(Vec<NamedPolicy>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainShape {
    pub chain: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedPolicy {
    pub name: String,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub config: Option<serde_yaml::Value>,
}

impl PolicyConfig {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses `text`; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        if text.trim().is_empty() {
            return Ok(PolicyConfig::default());
        }
        let config: PolicyConfig = serde_yaml::from_str(text).map_err(|e| {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((0, 0));
            ConfigError::Parse {
                path: path.to_path_buf(),
                line,
                column,
                message: e.to_string(),
            }
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if let Some(Policies::Chain(chain)) = &self.policies {
            for name in &chain.chain {
                if !self.policy.contains_key(name) && !is_policy_type(name) {
                    problems.push(format!(
                        "policies.chain: `{name}` has no `policy.{name}` section and is not a policy type"
                    ));
                }
            }
        }
        for (name, body) in &self.policy {
            if !body.is_mapping() && !body.is_null() {
                problems.push(format!("policy.{name}: expected a mapping"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                message: problems.join("; "),
            })
        }
    }
}

/// The policy types the contract names.
pub const POLICY_TYPES: &[&str] = &[
    "audit-logger",
    "redact",
    "content-filter",
    "cache",
    "passthrough",
    "rate-limit",
    "budget",
];

fn is_policy_type(name: &str) -> bool {
    POLICY_TYPES.contains(&name)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_an_error_with_location() {
        let err = PolicyConfig::parse("intercept:\n  hostz: [a]\n", Path::new("p.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("p.yaml:2:"), "{err}");
        assert!(err.contains("hostz"), "{err}");
    }

    #[test]
    fn both_policy_shapes_parse() {
        let a =
            "policies:\n  chain: [audit-logger]\npolicy:\n  audit-logger:\n    immutable: true\n";
        assert!(PolicyConfig::parse(a, Path::new("a")).is_ok());
        let b = "policies:\n  - name: ide-cache\n    type: cache\n    config:\n      ttl_seconds: 3600\n";
        assert!(matches!(
            PolicyConfig::parse(b, Path::new("b")).unwrap().policies,
            Some(Policies::List(_))
        ));
    }

    #[test]
    fn chain_naming_nothing_is_rejected() {
        let err = PolicyConfig::parse("policies:\n  chain: [nope]\n", Path::new("c"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn intercept_and_upstream_sections() {
        let c = PolicyConfig::parse(
            "intercept:\n  hosts: [sg.example.com]\nupstream:\n  connect_to: ['a:443:127.0.0.1:8443']\n  ca_files: [/tmp/x.pem]\n",
            Path::new("d"),
        )
        .unwrap();
        assert_eq!(c.intercept.hosts, vec!["sg.example.com"]);
        assert_eq!(c.upstream.connect_to.len(), 1);
    }
}
