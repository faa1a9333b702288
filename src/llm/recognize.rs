//! Classifies a request to an LLM host from its host, method, path and
//! headers: the provider, the logical operation (`endpoint`), the wire
//! dialect (`api`) and body family, whether kt inspects it, and the hints the
//! path carries (model, streaming, autocomplete).
//!
//! Routing is path-first (research §1.9): one provider serves several body
//! shapes (Copilot speaks OpenAI chat, legacy completions, Responses and
//! Anthropic Messages on the same hosts), so the host only names the
//! provider and the path names the shape. Everything here borrows from the
//! inputs; nothing allocates.

use crate::llm::family::Family;
use http::header::HeaderName;
use http::{HeaderMap, Method};
use std::sync::LazyLock;

/// Header names looked up on every LLM request, parsed once rather than
/// from a `&str` per lookup.
const OPENAI_INTENT: HeaderName = HeaderName::from_static("openai-intent");
const SOURCEGRAPH_FEATURE: HeaderName = HeaderName::from_static("x-sourcegraph-feature");

/// Who serves the request (contract §7 `provider`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    OpenAi,
    Anthropic,
    GithubCopilot,
    Sourcegraph,
    AzureOpenAi,
    Gemini,
    Mistral,
    /// Intercepted traffic that matches no known provider.
    Unknown,
}

impl Provider {
    pub const ALL: [Provider; 8] = [
        Provider::OpenAi,
        Provider::Anthropic,
        Provider::GithubCopilot,
        Provider::Sourcegraph,
        Provider::AzureOpenAi,
        Provider::Gemini,
        Provider::Mistral,
        Provider::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::OpenAi => "openai",
            Provider::Anthropic => "anthropic",
            Provider::GithubCopilot => "github-copilot",
            Provider::Sourcegraph => "sourcegraph",
            Provider::AzureOpenAi => "azure-openai",
            Provider::Gemini => "gemini",
            Provider::Mistral => "mistral",
            Provider::Unknown => "unknown",
        }
    }

    /// The provider named `s` (an [`Provider::as_str`] value, e.g. a
    /// configured target's `type`).
    pub fn parse(s: &str) -> Option<Provider> {
        Provider::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// The provider of a built-in LLM host (port and trailing dot allowed,
    /// case-insensitive); [`Provider::Unknown`] for any other host.
    pub fn from_host(host: &str) -> Provider {
        let h = host_only(host);
        let is = |name: &str| h.eq_ignore_ascii_case(name);
        if is("api.openai.com") {
            Provider::OpenAi
        } else if is("api.anthropic.com") {
            Provider::Anthropic
        } else if ends_with(h, ".githubcopilot.com")
            || is("copilot-proxy.githubusercontent.com")
            || (starts_with(h, "copilot-api.")
                && ends_with(h, ".ghe.com")
                && h.len() > "copilot-api.".len() + ".ghe.com".len())
        {
            Provider::GithubCopilot
        } else if is("sourcegraph.com") || is("cody-gateway.sourcegraph.com") {
            Provider::Sourcegraph
        } else if is("generativelanguage.googleapis.com")
            // Vertex AI serves the same Gemini API (not a built-in host).
            || is("aiplatform.googleapis.com")
            || ends_with(h, "-aiplatform.googleapis.com")
        {
            Provider::Gemini
        } else if ends_with(h, ".openai.azure.com")
            || ends_with(h, ".cognitiveservices.azure.com")
            || ends_with(h, ".services.ai.azure.com")
        {
            Provider::AzureOpenAi
        } else if is("api.mistral.ai") || is("codestral.mistral.ai") {
            Provider::Mistral
        } else {
            Provider::Unknown
        }
    }
}

/// The logical operation, whatever the dialect (contract §7 `endpoint`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Deserialize)]
pub enum Endpoint {
    /// Chat: OpenAI chat, Anthropic messages, Responses, Copilot chat, Cody
    /// chat stream, Gemini generateContent.
    #[serde(rename = "chat/completions")]
    ChatCompletions,
    /// Inline / FIM code completion.
    #[serde(rename = "completions")]
    Completions,
    #[serde(rename = "embeddings")]
    Embeddings,
    #[serde(rename = "models")]
    Models,
    #[serde(rename = "other")]
    Other,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Endpoint {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        Endpoint::parse(s).ok_or(())
    }
}

impl Endpoint {
    pub const ALL: [Endpoint; 5] = [
        Endpoint::ChatCompletions,
        Endpoint::Completions,
        Endpoint::Embeddings,
        Endpoint::Models,
        Endpoint::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat/completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Models => "models",
            Endpoint::Other => "other",
        }
    }

    /// The endpoint named `s` (as used by `when.endpoints`).
    pub fn parse(s: &str) -> Option<Endpoint> {
        Endpoint::ALL.into_iter().find(|e| e.as_str() == s)
    }
}

/// The wire dialect (contract §7 `api`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    OpenAiChat,
    /// Legacy completions, and `/fim/completions` (its request is
    /// completions-shaped even though its response is chat-shaped; the
    /// body family tells the two apart).
    OpenAiCompletions,
    OpenAiResponses,
    AnthropicMessages,
    Sourcegraph,
    Gemini,
    OpenAiEmbeddings,
}

impl Api {
    pub fn as_str(self) -> &'static str {
        match self {
            Api::OpenAiChat => "openai-chat",
            Api::OpenAiCompletions => "openai-completions",
            Api::OpenAiResponses => "openai-responses",
            Api::AnthropicMessages => "anthropic-messages",
            Api::Sourcegraph => "sourcegraph",
            Api::Gemini => "gemini",
            Api::OpenAiEmbeddings => "openai-embeddings",
        }
    }
}

/// What a request is. Borrows the model name from the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classification<'a> {
    provider: Provider,
    endpoint: Endpoint,
    api: Option<Api>,
    family: Option<Family>,
    inspect: bool,
    websocket: bool,
    model: Option<&'a str>,
    stream: Option<bool>,
    autocomplete: bool,
}

impl<'a> Classification<'a> {
    pub fn provider(&self) -> Provider {
        self.provider
    }

    pub fn endpoint(&self) -> Endpoint {
        self.endpoint
    }

    /// The wire dialect; `None` for paths that are not LLM calls.
    pub fn api(&self) -> Option<Api> {
        self.api
    }

    /// The body family (which JSON pointers apply); `None` when unknown.
    pub fn family(&self) -> Option<Family> {
        self.family
    }

    /// True for a WebSocket upgrade to an LLM call (Copilot's WebSocket
    /// Responses, OpenAI's Realtime): kt cannot read its frames, but it is
    /// an exchange the audit trail records.
    pub fn websocket(&self) -> bool {
        self.websocket
    }

    /// True when policies read this request: a POST to an LLM call. False for
    /// everything to pass through untouched (model lists, pings, telemetry,
    /// MCP, code search, GraphQL, WebSocket upgrades, ...).
    pub fn inspect(&self) -> bool {
        self.inspect
    }

    /// The model named by the path (Azure deployment, Gemini model, Copilot
    /// engine). It wins over the body's `model` for these APIs.
    pub fn model(&self) -> Option<&'a str> {
        self.model
    }

    /// Whether the path asks for a stream (`:streamGenerateContent`, Cody
    /// `/stream`); `None` when the path does not say. A body `stream` field,
    /// when present, is more precise.
    pub fn stream_hint(&self) -> Option<bool> {
        self.stream
    }

    /// Inline code completion (ghost text, FIM): lighter policies apply.
    pub fn autocomplete(&self) -> bool {
        self.autocomplete
    }
}

/// The path of `path_and_query` as an upstream that decodes and tidies it
/// before routing would see it: `%XX` escapes decoded (`%2F` included),
/// each segment's `;parameters` dropped, then dot segments resolved (RFC
/// 3986 §5.2.4), repeated slashes merged and a trailing slash dropped; the
/// query kept. `None` when the path is already in that form, the common
/// case. Recognition and path rules read this form, so
/// `/v1/chat/%63ompletions`, `//v1/chat/completions` and
/// `/v1/x/../chat/completions/` are no way around the policies.
pub fn normalized_path(path_and_query: &str) -> Option<String> {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    // Not origin-form (`*`): nothing to tidy.
    if !path.starts_with('/') {
        return None;
    }
    let untidy = path.contains("//")
        || (path.len() > 1 && path.ends_with('/'))
        || path.split('/').any(|s| s == "." || s == "..");
    if !untidy && !path.contains(['%', ';']) {
        return None;
    }
    let mut decoded = String::with_capacity(path.len());
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            decoded.push('/');
        }
        let segment = segment.split_once(';').map_or(segment, |(s, _)| s);
        decoded.push_str(&percent_encoding::percent_decode_str(segment).decode_utf8_lossy());
    }
    // Empty segments (repeated or trailing slashes) are dropped with `.`;
    // `..` takes back the segment before it, never above the root.
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(path_and_query.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() {
        out.push('/');
    }
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    (out != path_and_query).then_some(out)
}

/// Classifies a request by the built-in host table plus path rules.
/// `host` may carry a port; `path_and_query` is the origin-form target.
pub fn classify<'a>(
    host: &str,
    method: &Method,
    path_and_query: &'a str,
    headers: &HeaderMap,
) -> Classification<'a> {
    classify_with(None, host, method, path_and_query, headers)
}

/// Like [`classify`], with the provider known from configuration when
/// `provider` is `Some`: a configured Sourcegraph Enterprise host
/// (`Some(Provider::Sourcegraph)`), or the target of the direct API. The
/// path rules still decide endpoint, dialect and inspection.
pub fn classify_with<'a>(
    provider: Option<Provider>,
    host: &str,
    method: &Method,
    path_and_query: &'a str,
    headers: &HeaderMap,
) -> Classification<'a> {
    let mut provider = provider.unwrap_or_else(|| Provider::from_host(host));
    let path = path_and_query
        .split_once('?')
        .map_or(path_and_query, |(p, _)| p);
    let path = path.split_once('#').map_or(path, |(p, _)| p);
    // Tolerate a trailing slash (`/v1/chat/completions/`), never the root.
    let path = match path.strip_suffix('/') {
        Some(p) if !p.is_empty() => p,
        _ => path,
    };

    let route = if let Some(rest) = path.strip_prefix("/.api/") {
        // Sourcegraph paths are recognised on any host: Enterprise
        // instances live on customer domains.
        if provider == Provider::Unknown {
            provider = Provider::Sourcegraph;
        }
        sourcegraph_route(rest)
    } else if provider == Provider::GithubCopilot && copilot_non_llm(path) {
        Route::not_llm(path)
    } else if provider == Provider::Sourcegraph && path.starts_with("/v1/completions/") {
        cody_gateway_route(path, headers)
    } else {
        generic_route(path)
    };

    let inspect = route.llm && method == Method::POST;
    let websocket = method == Method::GET
        && header_is(headers, &http::header::UPGRADE, "websocket")
        && (route.llm || path.ends_with("/realtime"));
    // Autocomplete answers skip the output policies, so a client's header
    // counts only where its product sends it: elsewhere it would be a way
    // round them.
    let autocomplete = route.llm
        && (route.endpoint == Endpoint::Completions
            || (provider == Provider::GithubCopilot
                && header_is(headers, &OPENAI_INTENT, "copilot-ghost"))
            || (provider == Provider::Sourcegraph
                && header_is(headers, &SOURCEGRAPH_FEATURE, "code_completions")));
    Classification {
        provider,
        endpoint: route.endpoint,
        api: route.api,
        family: route.family,
        inspect,
        websocket,
        model: route.model,
        stream: route.stream,
        autocomplete,
    }
}

/// The path's verdict before method and headers are considered.
struct Route<'a> {
    endpoint: Endpoint,
    api: Option<Api>,
    family: Option<Family>,
    /// An LLM call whose body kt can read (when it is a POST).
    llm: bool,
    model: Option<&'a str>,
    stream: Option<bool>,
}

impl<'a> Route<'a> {
    fn llm(endpoint: Endpoint, api: Api, family: Family) -> Self {
        Route {
            endpoint,
            api: Some(api),
            family: Some(family),
            llm: true,
            model: None,
            stream: None,
        }
    }

    /// Pass-through traffic.
    fn pass(endpoint: Endpoint) -> Self {
        Route {
            endpoint,
            api: None,
            family: None,
            llm: false,
            model: None,
            stream: None,
        }
    }

    /// Pass-through traffic: `models` when the path is about models.
    fn not_llm(path: &str) -> Self {
        if path.split('/').any(|s| s == "models") {
            Route::pass(Endpoint::Models)
        } else {
            Route::pass(Endpoint::Other)
        }
    }

    fn model(mut self, model: Option<&'a str>) -> Self {
        self.model = model.filter(|m| !m.is_empty());
        self
    }

    fn stream(mut self, stream: bool) -> Self {
        self.stream = Some(stream);
        self
    }
}

/// `rest` is the path after `/.api/`.
fn sourcegraph_route(rest: &str) -> Route<'_> {
    match rest {
        "completions/stream" => Route::llm(
            Endpoint::ChatCompletions,
            Api::Sourcegraph,
            Family::Sourcegraph,
        )
        .stream(true),
        "completions/code" => {
            Route::llm(Endpoint::Completions, Api::Sourcegraph, Family::Sourcegraph)
        }
        "llm/chat/completions" => Route::llm(
            Endpoint::ChatCompletions,
            Api::OpenAiChat,
            Family::OpenAiChat,
        ),
        _ if rest == "llm/models" || rest.starts_with("llm/models/") => {
            Route::pass(Endpoint::Models)
        }
        // GraphQL, search streams, telemetry: not LLM calls.
        _ => Route::pass(Endpoint::Other),
    }
}

/// Copilot hosts also carry model lists, pings, telemetry, code search,
/// agents and GitHub's MCP server; none of them is an LLM call (§1.1).
fn copilot_non_llm(path: &str) -> bool {
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    matches!(
        first,
        "mcp"
            | "agents"
            | "search"
            | "_ping"
            | "telemetry"
            | "twirp"
            | "copilot_internal"
            | "models"
    )
}

/// Cody Gateway (`/v1/completions/{upstream}`): the body is the upstream's
/// own shape.
fn cody_gateway_route<'a>(path: &'a str, headers: &HeaderMap) -> Route<'a> {
    let upstream = path.trim_start_matches("/v1/completions/");
    let code = header_is(headers, &SOURCEGRAPH_FEATURE, "code_completions");
    let chat_or_code = if code {
        Endpoint::Completions
    } else {
        Endpoint::ChatCompletions
    };
    match upstream {
        "anthropic-messages" => Route::llm(
            chat_or_code,
            Api::AnthropicMessages,
            Family::AnthropicMessages,
        ),
        "openai" | "azure-openai" => Route::llm(chat_or_code, Api::OpenAiChat, Family::OpenAiChat),
        // The autocomplete fast path: a legacy completions body.
        "fireworks" => Route::llm(
            Endpoint::Completions,
            Api::OpenAiCompletions,
            Family::OpenAiCompletions,
        ),
        _ => Route::not_llm(path),
    }
}

fn generic_route(path: &str) -> Route<'_> {
    let mut rev = path.rsplit('/');
    let last = rev.next().unwrap_or("");
    let prev = rev.next().unwrap_or("");
    let prev2 = rev.next().unwrap_or("");

    // Gemini: `.../models/{model}:{method}`.
    if let Some((model, method)) = last.rsplit_once(':') {
        if prev == "models" || prev == "tunedModels" {
            return gemini_route(model, method);
        }
    }

    // Azure: `/openai/deployments/{deployment}/...`: the deployment is the
    // model. The searcher is built once: building one costs more than
    // searching a path.
    const AZURE: &str = "/openai/deployments/";
    static FINDER: LazyLock<memchr::memmem::Finder<'static>> =
        LazyLock::new(|| memchr::memmem::Finder::new(AZURE));
    let azure_model = FINDER
        .find(path.as_bytes())
        .and_then(|i| path.get(i + AZURE.len()..))
        .and_then(|rest| rest.split('/').next());

    let route = match (prev2, prev, last) {
        // Copilot ghost text and legacy engines: the engine is the model.
        ("engines", engine, "completions") => {
            return Route::llm(
                Endpoint::Completions,
                Api::OpenAiCompletions,
                Family::OpenAiCompletions,
            )
            .model(Some(engine));
        }
        (_, "chat", "completions") => Route::llm(
            Endpoint::ChatCompletions,
            Api::OpenAiChat,
            Family::OpenAiChat,
        ),
        (_, "fim", "completions") => Route::llm(
            Endpoint::Completions,
            Api::OpenAiCompletions,
            Family::FimChatShaped,
        ),
        (_, _, "completions") => Route::llm(
            Endpoint::Completions,
            Api::OpenAiCompletions,
            Family::OpenAiCompletions,
        ),
        (_, _, "responses") => Route::llm(
            Endpoint::ChatCompletions,
            Api::OpenAiResponses,
            Family::OpenAiResponses,
        ),
        (_, "v1", "messages") => Route::llm(
            Endpoint::ChatCompletions,
            Api::AnthropicMessages,
            Family::AnthropicMessages,
        ),
        // Token counting is not an LLM call, but it ships the whole prompt
        // to the provider, so the prompt policies still see it.
        ("v1", "messages", "count_tokens") => Route::llm(
            Endpoint::Other,
            Api::AnthropicMessages,
            Family::AnthropicMessages,
        ),
        (_, _, "embeddings") => Route::llm(
            Endpoint::Embeddings,
            Api::OpenAiEmbeddings,
            Family::Embeddings,
        ),
        _ => return Route::not_llm(path),
    };
    route.model(azure_model)
}

fn gemini_route<'a>(model: &'a str, method: &str) -> Route<'a> {
    let route = match method {
        "generateContent" => {
            Route::llm(Endpoint::ChatCompletions, Api::Gemini, Family::Gemini).stream(false)
        }
        "streamGenerateContent" => {
            Route::llm(Endpoint::ChatCompletions, Api::Gemini, Family::Gemini).stream(true)
        }
        "embedContent" | "batchEmbedContents" => {
            Route::llm(Endpoint::Embeddings, Api::Gemini, Family::Embeddings)
        }
        // Ships the prompt like Anthropic's count_tokens (see there).
        "countTokens" => Route::llm(Endpoint::Other, Api::Gemini, Family::Gemini),
        // Other model methods, or an OpenAI fine-tuned model id
        // (`/v1/models/ft:gpt-4o-mini:org::id`) that merely contains ':'.
        _ => return Route::pass(Endpoint::Models),
    };
    route.model(Some(model))
}

/// True when header `name` equals `value` (ASCII case-insensitive).
fn header_is(headers: &HeaderMap, name: &HeaderName, value: &str) -> bool {
    headers.get(name).is_some_and(|v| {
        v.as_bytes()
            .trim_ascii()
            .eq_ignore_ascii_case(value.as_bytes())
    })
}

/// `host` without port and trailing dot. IPv6 literals stay bracketed.
fn host_only(host: &str) -> &str {
    let h = if host.starts_with('[') {
        host.split_once(']').map_or(host, |(h, _)| h)
    } else {
        match host.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        }
    };
    h.strip_suffix('.').unwrap_or(h)
}

/// `h` ends with `suffix` and has at least one byte before it.
fn ends_with(h: &str, suffix: &str) -> bool {
    h.len() > suffix.len()
        && h.as_bytes()
            .get(h.len() - suffix.len()..)
            .is_some_and(|t| t.eq_ignore_ascii_case(suffix.as_bytes()))
}

fn starts_with(h: &str, prefix: &str) -> bool {
    h.as_bytes()
        .get(..prefix.len())
        .is_some_and(|t| t.eq_ignore_ascii_case(prefix.as_bytes()))
}

#[cfg(test)]
#[path = "recognize_tests.rs"]
mod tests;
