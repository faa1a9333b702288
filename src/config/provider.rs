//! `providers.targets`: the upstream LLM providers the direct API routes to,
//! resolved with the defaults of the well-known ids.

use super::de::Spanned;
use super::error::{unknown_word, Problem};
use serde::Deserialize;
use std::fmt;
use std::str::FromStr;

/// The API shape of a provider target (contract §5/§7 provider names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProviderType {
    Openai,
    Anthropic,
    Sourcegraph,
    GithubCopilot,
    AzureOpenai,
    Gemini,
    Mistral,
}

impl ProviderType {
    pub const ALL: [ProviderType; 7] = [
        ProviderType::Openai,
        ProviderType::Anthropic,
        ProviderType::Sourcegraph,
        ProviderType::GithubCopilot,
        ProviderType::AzureOpenai,
        ProviderType::Gemini,
        ProviderType::Mistral,
    ];

    /// The names as written in config and events.
    pub const NAMES: [&'static str; 7] = [
        "openai",
        "anthropic",
        "sourcegraph",
        "github-copilot",
        "azure-openai",
        "gemini",
        "mistral",
    ];

    pub fn as_str(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    /// Defaults a target with this well-known id gets: base URL and the
    /// environment variable holding its key.
    ///
    /// - `azure-openai` has no default base URL: each Azure resource has its
    ///   own host (`https://RESOURCE.openai.azure.com`).
    /// - `github-copilot` has no key variable: Copilot clients bring their
    ///   own short-lived token, which kt passes through.
    /// - `sourcegraph` reads `SRC_ACCESS_TOKEN`, the variable the Sourcegraph
    ///   CLI already uses.
    pub fn defaults(self) -> (Option<&'static str>, Option<&'static str>) {
        match self {
            ProviderType::Openai => (Some("https://api.openai.com/v1"), Some("OPENAI_API_KEY")),
            ProviderType::Anthropic => {
                (Some("https://api.anthropic.com"), Some("ANTHROPIC_API_KEY"))
            }
            ProviderType::Sourcegraph => {
                (Some("https://sourcegraph.com"), Some("SRC_ACCESS_TOKEN"))
            }
            ProviderType::GithubCopilot => (Some("https://api.githubcopilot.com"), None),
            ProviderType::AzureOpenai => (None, Some("AZURE_OPENAI_API_KEY")),
            ProviderType::Gemini => (
                Some("https://generativelanguage.googleapis.com"),
                Some("GEMINI_API_KEY"),
            ),
            ProviderType::Mistral => (Some("https://api.mistral.ai/v1"), Some("MISTRAL_API_KEY")),
        }
    }
}

impl FromStr for ProviderType {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        Self::NAMES
            .iter()
            .position(|n| *n == s)
            .map(|i| Self::ALL[i])
            .ok_or(())
    }
}

impl fmt::Display for ProviderType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A resolved provider target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderTarget {
    /// The target id; events report it as `provider`.
    pub id: String,
    pub kind: ProviderType,
    /// Without a trailing `/`. `None` only for `azure-openai` left at its
    /// defaults (usable for interception, not for direct API routing).
    pub base_url: Option<String>,
    /// Environment variable holding the provider key kt injects.
    pub api_key_env: Option<String>,
    /// Models routed to this target by `model`; empty = none listed.
    pub models: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTarget {
    id: Spanned<String>,
    #[serde(default)]
    provider: Option<RawProviderSpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProviderSpec {
    #[serde(default, rename = "type")]
    kind: Option<Spanned<String>>,
    #[serde(default)]
    base_url: Option<Spanned<String>>,
    #[serde(default)]
    api_key_env: Option<Spanned<String>>,
    #[serde(default)]
    models: Vec<Spanned<String>>,
}

impl RawTarget {
    pub(crate) fn id(&self) -> &Spanned<String> {
        &self.id
    }

    /// `complete` is false when some entry could not be read: the checks
    /// that need one present are skipped and no target is returned.
    pub(crate) fn resolve(
        self,
        complete: bool,
        problems: &mut Vec<Problem>,
    ) -> Option<ProviderTarget> {
        let id = self.id;
        let spec = self.provider.unwrap_or_default();
        // Checks of single values first, so they are reported whatever
        // else is wrong with the target.
        let mut ok = complete;
        if !id_ok(&id.value) {
            problems.push(id.problem(format!(
                "`{}` is not a valid target id (letters, digits, `.`, `-`, `_`)",
                id.value
            )));
            ok = false;
        }
        let base_url = spec.base_url.map(|u| {
            let url = u.value.trim_end_matches('/').to_string();
            if let Some(msg) = url_error(&url) {
                problems.push(u.problem(msg));
            }
            url
        });
        if let Some(v) = &spec.api_key_env {
            if !env_name_ok(&v.value) {
                problems.push(v.problem(format!(
                    "`{}` is not an environment variable name (letters, digits, `_`; not starting with a digit)",
                    v.value
                )));
            }
        }
        let mut models = Vec::new();
        for m in spec.models {
            if m.value.trim().is_empty() {
                problems.push(m.problem("empty model name"));
            } else {
                models.push(m.value);
            }
        }
        let known = id.value.parse::<ProviderType>().ok();
        let kind = match (&spec.kind, known) {
            (Some(t), _) => match t.value.parse::<ProviderType>() {
                Ok(k) => Some(k),
                Err(()) => {
                    problems.push(t.problem(unknown_word(
                        "provider type",
                        &t.value,
                        &ProviderType::NAMES,
                    )));
                    None
                }
            },
            (None, Some(k)) => Some(k),
            (None, None) => {
                if ok {
                    let mut msg = format!(
                        "`{}` is not a well-known provider id, so it needs `provider.type` (one of {})",
                        id.value,
                        ProviderType::NAMES.join(", ")
                    );
                    if let Some(s) = super::error::did_you_mean(&id.value, &ProviderType::NAMES) {
                        msg.push_str(&format!("; or did you mean the id `{s}`?"));
                    }
                    problems.push(id.problem(msg));
                }
                None
            }
        };
        let kind = kind.filter(|_| ok)?;
        // Defaults belong to the well-known id with its own API shape; a
        // custom id (a local OpenAI-compatible server, say) names its URL.
        let (def_url, def_key) = match known {
            Some(k) if k == kind => kind.defaults(),
            _ => (None, None),
        };
        if base_url.is_none() && known.is_none() {
            problems.push(id.problem(format!(
                "target `{}` needs `provider.base_url`: only well-known ids have a default",
                id.value
            )));
            return None;
        }
        Some(ProviderTarget {
            id: id.value,
            kind,
            base_url: base_url.or_else(|| def_url.map(str::to_string)),
            api_key_env: spec
                .api_key_env
                .map(|v| v.value)
                .or_else(|| def_key.map(str::to_string)),
            models,
        })
    }
}

fn id_ok(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

fn env_name_ok(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn url_error(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    let Some(rest) = rest else {
        return Some(format!("`{url}` must start with https:// or http://"));
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || url.parse::<http::Uri>().is_err() {
        return Some(format!("`{url}` is not a valid URL"));
    }
    None
}
