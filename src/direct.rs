//! The direct API's routing table: which configured provider target serves
//! a request to `/v1/...`, the upstream URL it goes to, and the provider
//! credential kt puts on it in place of the caller's access key.
//!
//! Built from `providers.targets` when the config loads (and again on each
//! reload), so a request costs a scan of a handful of targets and no
//! environment lookups.

use crate::config::{Config, ProviderTarget, ProviderType};
use crate::llm::recognize::Provider;
use crate::upstream::pool::Origin;
use http::HeaderValue;
use std::fmt::Write as _;
use std::sync::Arc;

/// The two request shapes the direct API speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `/v1/chat/completions`, `/v1/completions`, `/v1/fim/completions`,
    /// `/v1/embeddings`, `/v1/responses`.
    OpenAi,
    /// `/v1/messages` (and `/v1/messages/count_tokens`).
    Anthropic,
}

impl Shape {
    /// The shape of a request path of the direct API; `None` for paths it
    /// does not serve.
    pub fn of_path(path: &str) -> Option<Shape> {
        let rest = path.strip_prefix("/v1/")?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        match rest {
            "chat/completions" | "completions" | "fim/completions" | "embeddings" | "responses" => {
                Some(Shape::OpenAi)
            }
            "messages" | "messages/count_tokens" => Some(Shape::Anthropic),
            _ => None,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Shape::OpenAi => "the OpenAI API (/v1/chat/completions, /v1/completions, /v1/fim/completions, /v1/embeddings, /v1/responses)",
            Shape::Anthropic => "the Anthropic Messages API (/v1/messages)",
        }
    }
}

/// How the provider key travels upstream.
#[derive(Debug, Clone)]
pub enum Credential {
    /// `Authorization: Bearer KEY` (OpenAI, Mistral, OpenAI-compatible servers).
    Bearer(HeaderValue),
    /// `x-api-key: KEY` (Anthropic).
    XApiKey(HeaderValue),
    /// `api-key: KEY` (Azure OpenAI).
    ApiKey(HeaderValue),
}

impl Credential {
    /// The header name and value to set.
    pub fn header(&self) -> (&'static str, &HeaderValue) {
        match self {
            Credential::Bearer(v) => ("authorization", v),
            Credential::XApiKey(v) => ("x-api-key", v),
            Credential::ApiKey(v) => ("api-key", v),
        }
    }
}

/// A provider target the direct API can send requests to.
#[derive(Debug)]
pub struct Target {
    /// The configured id, reported as the events' `provider`.
    pub id: Arc<str>,
    pub kind: ProviderType,
    /// The provider the recognizer and metrics know it as.
    pub provider: Provider,
    pub shape: Shape,
    pub origin: Origin,
    /// The base URL's path without a trailing `/` (`/v1`, `/openai/v1`, or
    /// empty).
    base_path: String,
    /// The base URL's query (Azure's `api-version=…`), put on every
    /// upstream request.
    base_query: Option<String>,
    /// The provider key read from `api_key_env` when the config loaded.
    pub credential: Option<Credential>,
    /// The variable it came from (for messages when it is unset).
    pub key_env: Option<String>,
    models: Vec<String>,
}

/// The name of a query parameter (`name=value`, or a bare `name`).
fn param_name(param: &str) -> &str {
    param.split_once('=').map_or(param, |(name, _)| name)
}

impl Target {
    /// The upstream path and query for a direct-API request path
    /// (`/v1/chat/completions?x`): the part after `/v1` appended to the base
    /// path, or the whole path when the base URL has none (Anthropic's).
    /// The base URL's query parameters come first, and a client parameter
    /// of the same name is dropped: the config's `api-version` is the one
    /// the deployment serves.
    pub fn upstream_path(&self, path_and_query: &str) -> String {
        let (path, client_query) = match path_and_query.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (path_and_query, None),
        };
        let mut out = String::with_capacity(self.base_path.len() + path_and_query.len());
        // OpenAI-style base URLs end in their version (`…/v1`,
        // `…/v1beta/openai`), which stands for the client's `/v1`.
        // Anthropic's stop before it (its SDK appends `/v1/messages` to a
        // gateway's `…/anthropic`), unless one was written with it.
        let keeps_version = self.shape == Shape::Anthropic && !self.base_path.ends_with("/v1");
        if self.base_path.is_empty() || keeps_version {
            out.push_str(&self.base_path);
            out.push_str(path);
        } else {
            out.push_str(&self.base_path);
            out.push_str(path.strip_prefix("/v1").unwrap_or(path));
        }
        let Some(base_query) = &self.base_query else {
            if let Some(query) = client_query {
                out.push('?');
                out.push_str(query);
            }
            return out;
        };
        out.push('?');
        out.push_str(base_query);
        for param in client_query.into_iter().flat_map(|q| q.split('&')) {
            let configured = || {
                base_query
                    .split('&')
                    .any(|b| param_name(b) == param_name(param))
            };
            if !param.is_empty() && !configured() {
                out.push('&');
                out.push_str(param);
            }
        }
        out
    }

    /// True when `model` is in the target's `models:` (an entry ending in
    /// `*` matches by prefix).
    pub fn serves(&self, model: &str) -> bool {
        self.models.iter().any(|m| match m.strip_suffix('*') {
            Some(prefix) => model.starts_with(prefix),
            None => m == model,
        })
    }

    /// The models listed for this target (patterns excluded).
    pub fn listed_models(&self) -> impl Iterator<Item = &str> {
        self.models
            .iter()
            .filter(|m| !m.ends_with('*'))
            .map(String::as_str)
    }
}

/// Why a request has no target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error(
        "no provider target serves {shape_desc}: add one to providers.targets in the policy config"
    )]
    NoTarget { shape_desc: &'static str },
    #[error("model `{model}` is served by target `{target}`, which speaks {speaks}: send the request there")]
    WrongShape {
        model: String,
        target: String,
        speaks: &'static str,
    },
}

/// Every target the direct API can route to, in config order.
#[derive(Debug, Default)]
pub struct Routes {
    targets: Vec<Target>,
    /// Configured targets the direct API cannot use, and why (logged once
    /// at start).
    unusable: Vec<(String, &'static str)>,
    /// No targets were configured: these are the well-known defaults.
    implicit: bool,
}

impl Routes {
    /// The routes of `config`'s `providers.targets`. Without a config, or
    /// with no targets configured, the well-known `openai` and `anthropic`
    /// targets with their defaults (keys from `OPENAI_API_KEY` and
    /// `ANTHROPIC_API_KEY`).
    pub fn from_config(config: Option<&Config>) -> Routes {
        Self::build(config, |name| std::env::var(name).ok())
    }

    /// Like [`Routes::from_config`], reading provider keys with `env`.
    pub fn build(config: Option<&Config>, env: impl Fn(&str) -> Option<String>) -> Routes {
        let defaults;
        let mut routes = Routes::default();
        let targets: &[ProviderTarget] = match config {
            Some(c) if !c.providers.is_empty() => &c.providers,
            _ => {
                routes.implicit = true;
                defaults = [ProviderType::Openai, ProviderType::Anthropic].map(|kind| {
                    let (url, key) = kind.defaults();
                    ProviderTarget {
                        id: kind.as_str().to_string(),
                        kind,
                        base_url: url.map(str::to_string),
                        api_key_env: key.map(str::to_string),
                        models: Vec::new(),
                    }
                });
                &defaults
            }
        };
        for t in targets {
            match Self::target(t, &env) {
                Ok(target) => routes.targets.push(target),
                Err(why) => routes.unusable.push((t.id.clone(), why)),
            }
        }
        routes
    }

    fn target(
        t: &ProviderTarget,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<Target, &'static str> {
        let shape = match t.kind {
            ProviderType::Openai | ProviderType::AzureOpenai | ProviderType::Mistral => {
                Shape::OpenAi
            }
            ProviderType::Anthropic => Shape::Anthropic,
            // Gemini speaks OpenAI only on its compatible surface.
            ProviderType::Gemini
                if t.base_url
                    .as_deref()
                    .is_some_and(|u| u.trim_end_matches('/').ends_with("/openai")) =>
            {
                Shape::OpenAi
            }
            ProviderType::Gemini => {
                return Err("gemini targets serve the direct API only with base_url set to the OpenAI-compatible surface (https://generativelanguage.googleapis.com/v1beta/openai)")
            }
            ProviderType::GithubCopilot => {
                return Err("Copilot needs the client's own GitHub token: use the forward proxy")
            }
            ProviderType::Sourcegraph => {
                return Err("Sourcegraph's API is not OpenAI-shaped: use the forward proxy")
            }
        };
        let url = t.base_url.as_deref().ok_or(
            "no base_url (Azure OpenAI needs https://RESOURCE.openai.azure.com/openai/v1)",
        )?;
        let uri: http::Uri = url.parse().map_err(|_| "base_url is not a valid URL")?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("base_url must start with https:// or http://"),
        };
        let host = uri.host().ok_or("base_url has no host")?;
        let origin = Origin::new(
            tls,
            host,
            uri.port_u16().unwrap_or(if tls { 443 } else { 80 }),
        );
        let base_path = uri.path().trim_end_matches('/').to_string();
        let base_query = uri.query().filter(|q| !q.is_empty()).map(str::to_string);
        let credential = t
            .api_key_env
            .as_deref()
            .and_then(env)
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty())
            .and_then(|key| {
                let value = |s: String| {
                    HeaderValue::try_from(s).ok().map(|mut v| {
                        v.set_sensitive(true);
                        v
                    })
                };
                match t.kind {
                    ProviderType::Anthropic => value(key).map(Credential::XApiKey),
                    ProviderType::AzureOpenai => value(key).map(Credential::ApiKey),
                    _ => value(format!("Bearer {key}")).map(Credential::Bearer),
                }
            });
        Ok(Target {
            id: Arc::from(t.id.as_str()),
            kind: t.kind,
            provider: Provider::parse(t.kind.as_str()).unwrap_or(Provider::Unknown),
            shape,
            origin,
            base_path,
            base_query,
            credential,
            key_env: t.api_key_env.clone(),
            models: t.models.clone(),
        })
    }

    /// The target for a request of `shape` naming `model`: the first target
    /// of that shape whose `models:` lists it, else the first target of
    /// that shape. A model only targets of the other shape list is an
    /// error naming the first of them.
    pub fn route(&self, shape: Shape, model: Option<&str>) -> Result<&Target, RouteError> {
        if let Some(model) = model {
            // One model may be listed in both shapes (Claude on a LiteLLM
            // target and on Anthropic's): the request's shape decides.
            let mut serving = self.targets.iter().filter(|t| t.serves(model));
            if let Some(t) = serving.clone().find(|t| t.shape == shape) {
                return Ok(t);
            }
            if let Some(t) = serving.next() {
                return Err(RouteError::WrongShape {
                    model: model.to_string(),
                    target: t.id.to_string(),
                    speaks: t.shape.describe(),
                });
            }
        }
        self.targets
            .iter()
            .find(|t| t.shape == shape)
            .ok_or(RouteError::NoTarget {
                shape_desc: shape.describe(),
            })
    }

    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// Lines worth a warning at start: configured targets the direct API
    /// cannot use, and those without a provider key. (The implicit defaults
    /// stay quiet: most laptops use the forward proxy only.)
    pub fn warnings(&self) -> Vec<String> {
        if self.implicit {
            return Vec::new();
        }
        let mut out: Vec<String> = self
            .unusable
            .iter()
            .map(|(id, why)| {
                format!("provider target `{id}` is not available on the direct API: {why}")
            })
            .collect();
        for t in &self.targets {
            if t.credential.is_none() {
                let mut line = format!("provider target `{}` has no provider key", t.id);
                if let Some(env) = &t.key_env {
                    let _ = write!(line, " ({env} is unset)");
                }
                line.push_str(": direct-API requests to it go without one, unless the caller sends its own provider key and access keys are not required");
                out.push(line);
            }
        }
        out
    }

    /// The targets whose models only their provider knows: no model named
    /// in `models:` (patterns at most), and a provider key to ask with.
    pub fn unlisted(&self) -> impl Iterator<Item = &Target> {
        self.targets
            .iter()
            .filter(|t| t.listed_models().next().is_none() && t.credential.is_some())
    }

    /// Every model the direct API offers, with the target a request for it
    /// goes to: each target's listed `models:` (owned by the target a
    /// request of that target's shape is routed to, which an earlier
    /// pattern may claim), then what `fetched` says providers offer,
    /// keeping only the models its patterns (if any) match and a request
    /// would be routed to that same target for. Each model once.
    pub fn model_list<'a>(
        &'a self,
        fetched: &'a [(&'a Target, Arc<[String]>)],
    ) -> Vec<(&'a str, &'a Target)> {
        let mut seen = std::collections::HashSet::new();
        let listed = self.targets.iter().flat_map(|t| {
            t.listed_models()
                .map(move |m| (m, self.route(t.shape, Some(m)).unwrap_or(t)))
        });
        let offered = fetched.iter().flat_map(|(t, ids)| {
            ids.iter()
                .map(String::as_str)
                .filter(|id| {
                    (t.models.is_empty() || t.serves(id))
                        && self
                            .route(t.shape, Some(id))
                            .is_ok_and(|r| std::ptr::eq(r, *t))
                })
                .map(move |id| (id, *t))
        });
        listed
            .chain(offered)
            .filter(|(m, _)| seen.insert(*m))
            .collect()
    }

    /// `GET /v1/models`: [`Routes::model_list`] in OpenAI list shape.
    pub fn models_json(&self, fetched: &[(&Target, Arc<[String]>)]) -> String {
        let data: Vec<serde_json::Value> = self
            .model_list(fetched)
            .into_iter()
            .map(|(m, t)| {
                serde_json::json!({
                    "id": m,
                    "object": "model",
                    "created": 0,
                    "owned_by": &*t.id,
                })
            })
            .collect();
        serde_json::json!({ "object": "list", "data": data }).to_string()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::path::Path;

    fn routes(yaml: &str) -> Routes {
        let config = Config::parse(yaml, Path::new("t.yaml")).unwrap();
        Routes::build(Some(&config), |name| {
            (name == "OPENAI_API_KEY" || name == "LOCAL_KEY").then(|| format!("secret-{name}"))
        })
    }

    const TWO: &str = "providers:\n  targets:\n    - id: openai\n      provider:\n        models: [gpt-4o, gpt-4o-mini]\n    - id: anthropic\n      provider:\n        models: ['claude-*']\n    - id: local\n      provider:\n        type: openai\n        base_url: http://127.0.0.1:11434\n        api_key_env: LOCAL_KEY\n        models: [qwen2.5-coder]\n";

    #[test]
    fn shapes_of_paths() {
        assert_eq!(Shape::of_path("/v1/chat/completions"), Some(Shape::OpenAi));
        assert_eq!(Shape::of_path("/v1/fim/completions/"), Some(Shape::OpenAi));
        assert_eq!(Shape::of_path("/v1/responses"), Some(Shape::OpenAi));
        assert_eq!(Shape::of_path("/v1/messages"), Some(Shape::Anthropic));
        assert_eq!(Shape::of_path("/v1/models"), None);
        assert_eq!(Shape::of_path("/v2/chat/completions"), None);
        assert_eq!(Shape::of_path("/v1/chat"), None);
    }

    #[test]
    fn routes_by_model_then_by_shape() {
        let r = routes(TWO);
        let t = r.route(Shape::OpenAi, Some("gpt-4o-mini")).unwrap();
        assert_eq!(&*t.id, "openai");
        let t = r.route(Shape::OpenAi, Some("qwen2.5-coder")).unwrap();
        assert_eq!(&*t.id, "local");
        assert_eq!(
            t.origin.to_string(),
            Origin::new(false, "127.0.0.1", 11434).to_string()
        );
        // Unlisted: the first target of the shape.
        let t = r.route(Shape::OpenAi, Some("o3")).unwrap();
        assert_eq!(&*t.id, "openai");
        let t = r
            .route(Shape::Anthropic, Some("claude-sonnet-4-5"))
            .unwrap();
        assert_eq!(&*t.id, "anthropic");
        let t = r.route(Shape::Anthropic, None).unwrap();
        assert_eq!(&*t.id, "anthropic");
        // A listed model sent in the other shape names where it belongs.
        let err = r
            .route(Shape::OpenAi, Some("claude-3-5-haiku"))
            .unwrap_err();
        assert!(matches!(&err, RouteError::WrongShape { target, .. } if target == "anthropic"));
        assert!(err.to_string().contains("/v1/messages"), "{err}");
    }

    /// A LiteLLM-style OpenAI target serving Claude, listed before
    /// Anthropic's own, and a catch-all pattern before a target that lists
    /// one of its models.
    const OVERLAPPING: &str = "providers:\n  targets:\n    - id: gateway\n      provider:\n        type: openai\n        base_url: http://127.0.0.1:4001/v1\n        models: ['gpt-*']\n    - id: litellm\n      provider:\n        type: openai\n        base_url: http://127.0.0.1:4000/v1\n        models: ['claude-*', gpt-4o]\n    - id: anthropic\n      provider:\n        models: ['claude-*', claude-opus-4]\n";

    #[test]
    fn a_model_served_in_both_shapes_goes_to_the_target_of_the_requests_shape() {
        let r = routes(OVERLAPPING);
        let id = |shape, model| r.route(shape, Some(model)).map(|t| t.id.to_string());
        assert_eq!(
            id(Shape::Anthropic, "claude-sonnet-4-5").unwrap(),
            "anthropic"
        );
        assert_eq!(id(Shape::Anthropic, "claude-opus-4").unwrap(), "anthropic");
        assert_eq!(id(Shape::OpenAi, "claude-sonnet-4-5").unwrap(), "litellm");
        assert_eq!(id(Shape::OpenAi, "gpt-4o").unwrap(), "gateway");
        // Only OpenAI-shaped targets list it: the first is named.
        let err = r.route(Shape::Anthropic, Some("gpt-4o")).unwrap_err();
        assert!(matches!(&err, RouteError::WrongShape { target, .. } if target == "gateway"));
    }

    #[test]
    fn the_model_list_names_the_target_requests_go_to() {
        let r = routes(OVERLAPPING);
        let list: Vec<(&str, &str)> = r
            .model_list(&[])
            .into_iter()
            .map(|(m, t)| (m, &*t.id))
            .collect();
        assert_eq!(
            list,
            [("gpt-4o", "gateway"), ("claude-opus-4", "anthropic")]
        );
        // A provider's own list: Claude models reach litellm in the OpenAI
        // shape, so they are offered under it.
        let litellm = r.targets().iter().find(|t| &*t.id == "litellm").unwrap();
        let fetched = [(litellm, Arc::from(["claude-sonnet-4-5".to_string()]))];
        let list: Vec<(&str, &str)> = r
            .model_list(&fetched)
            .into_iter()
            .map(|(m, t)| (m, &*t.id))
            .collect();
        assert!(list.contains(&("claude-sonnet-4-5", "litellm")), "{list:?}");
    }

    #[test]
    fn no_target_of_a_shape_is_an_error_naming_the_fix() {
        let r = routes("providers:\n  targets:\n    - id: openai\n");
        let err = r.route(Shape::Anthropic, Some("claude-x")).unwrap_err();
        assert!(err.to_string().contains("providers.targets"), "{err}");
    }

    #[test]
    fn upstream_paths_keep_the_base_path() {
        let r = routes(TWO);
        let openai = r.route(Shape::OpenAi, Some("gpt-4o")).unwrap();
        assert_eq!(
            openai.upstream_path("/v1/chat/completions"),
            "/v1/chat/completions"
        );
        let local = r.route(Shape::OpenAi, Some("qwen2.5-coder")).unwrap();
        assert_eq!(
            local.upstream_path("/v1/fim/completions?x=1"),
            "/v1/fim/completions?x=1"
        );
        let anthropic = r.route(Shape::Anthropic, None).unwrap();
        assert_eq!(anthropic.upstream_path("/v1/messages"), "/v1/messages");
        // An Anthropic base URL with a path is a gateway's prefix, to which
        // Anthropic's SDK appends `/v1/messages`; one ending in `/v1` has it.
        for (base, want) in [
            ("https://gw.example/anthropic", "/anthropic/v1/messages"),
            ("https://gw.example/anthropic/v1", "/anthropic/v1/messages"),
        ] {
            let r = routes(&format!(
                "providers:\n  targets:\n    - id: anthropic\n      provider:\n        base_url: {base}\n"
            ));
            let t = r.route(Shape::Anthropic, None).unwrap();
            assert_eq!(t.upstream_path("/v1/messages"), want, "{base}");
        }
        let gemini = routes("providers:\n  targets:\n    - id: gemini\n      provider:\n        base_url: https://generativelanguage.googleapis.com/v1beta/openai/\n");
        let g = gemini.route(Shape::OpenAi, None).unwrap();
        assert_eq!(
            g.upstream_path("/v1/chat/completions"),
            "/v1beta/openai/chat/completions"
        );
    }

    #[test]
    fn the_base_urls_query_goes_on_every_upstream_request() {
        let azure = routes("providers:\n  targets:\n    - id: azure-openai\n      provider:\n        base_url: https://r.openai.azure.com/openai/v1?api-version=preview\n");
        let t = azure.route(Shape::OpenAi, None).unwrap();
        assert_eq!(
            t.upstream_path("/v1/chat/completions"),
            "/openai/v1/chat/completions?api-version=preview"
        );
        assert_eq!(
            t.upstream_path("/v1/chat/completions?api-version=2024-02-01&x=1"),
            "/openai/v1/chat/completions?api-version=preview&x=1"
        );
        assert_eq!(
            t.upstream_path("/v1/models?"),
            "/openai/v1/models?api-version=preview"
        );
        let root = routes("providers:\n  targets:\n    - id: anthropic\n      provider:\n        base_url: https://proxy.example?team=a\n");
        let t = root.route(Shape::Anthropic, None).unwrap();
        assert_eq!(
            t.upstream_path("/v1/messages?beta=true"),
            "/v1/messages?team=a&beta=true"
        );
    }

    #[test]
    fn credentials_per_provider_and_never_printed() {
        let r = routes(TWO);
        let openai = r.route(Shape::OpenAi, Some("gpt-4o")).unwrap();
        let (name, value) = openai.credential.as_ref().unwrap().header();
        assert_eq!(name, "authorization");
        assert_eq!(value, "Bearer secret-OPENAI_API_KEY");
        assert!(value.is_sensitive());
        assert!(!format!("{value:?}").contains("secret"));
        // ANTHROPIC_API_KEY is unset here.
        let anthropic = r.route(Shape::Anthropic, None).unwrap();
        assert!(anthropic.credential.is_none());
        let warnings = r.warnings();
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("ANTHROPIC_API_KEY is unset")),
            "{warnings:?}"
        );
        let azure = routes("providers:\n  targets:\n    - id: azure-openai\n      provider:\n        base_url: https://r.openai.azure.com/openai/v1\n        api_key_env: OPENAI_API_KEY\n");
        let t = azure.route(Shape::OpenAi, None).unwrap();
        assert_eq!(t.credential.as_ref().unwrap().header().0, "api-key");
    }

    #[test]
    fn targets_the_direct_api_cannot_use_are_reported() {
        let r = routes("providers:\n  targets:\n    - id: sourcegraph\n    - id: github-copilot\n    - id: openai\n");
        assert_eq!(r.targets().len(), 1);
        let warnings = r.warnings().join("\n");
        assert!(
            warnings.contains("`sourcegraph`") && warnings.contains("`github-copilot`"),
            "{warnings}"
        );
    }

    #[test]
    fn without_targets_the_well_known_ones_serve() {
        let r = Routes::build(None, |_| None);
        assert!(r.warnings().is_empty());
        assert_eq!(
            &*r.route(Shape::OpenAi, Some("gpt-4o")).unwrap().id,
            "openai"
        );
        assert_eq!(
            &*r.route(Shape::Anthropic, Some("claude")).unwrap().id,
            "anthropic"
        );
    }

    #[test]
    fn the_model_list_names_each_listed_model_once() {
        let json: serde_json::Value = serde_json::from_str(&routes(TWO).models_json(&[])).unwrap();
        assert_eq!(json["object"], "list");
        let ids: Vec<&str> = json["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["gpt-4o", "gpt-4o-mini", "qwen2.5-coder"]);
        assert_eq!(json["data"][2]["owned_by"], "local");
    }
}
