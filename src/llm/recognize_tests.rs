use super::*;
use crate::llm::hosts::{HostSet, BUILTIN_LLM_HOSTS};
use http::HeaderValue;

const POST: &str = "POST";
const GET: &str = "GET";

/// One row: request in, expected classification out.
struct Row {
    host: &'static str,
    method: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    provider: &'static str,
    endpoint: &'static str,
    api: Option<&'static str>,
    family: Option<Family>,
    inspect: bool,
    model: Option<&'static str>,
    stream: Option<bool>,
    autocomplete: bool,
}

const fn llm(
    host: &'static str,
    path: &'static str,
    provider: &'static str,
    endpoint: &'static str,
    api: &'static str,
    family: Family,
) -> Row {
    Row {
        host,
        method: POST,
        path,
        headers: &[],
        provider,
        endpoint,
        api: Some(api),
        family: Some(family),
        inspect: true,
        model: None,
        stream: None,
        autocomplete: false,
    }
}

/// Traffic passed through untouched.
const fn pass(
    host: &'static str,
    method: &'static str,
    path: &'static str,
    provider: &'static str,
    endpoint: &'static str,
) -> Row {
    Row {
        host,
        method,
        path,
        headers: &[],
        provider,
        endpoint,
        api: None,
        family: None,
        inspect: false,
        model: None,
        stream: None,
        autocomplete: false,
    }
}

impl Row {
    const fn model(mut self, m: &'static str) -> Self {
        self.model = Some(m);
        self
    }
    const fn stream(mut self, s: bool) -> Self {
        self.stream = Some(s);
        self
    }
    const fn autocomplete(mut self) -> Self {
        self.autocomplete = true;
        self
    }
    const fn headers(mut self, h: &'static [(&'static str, &'static str)]) -> Self {
        self.headers = h;
        self
    }
    const fn method(mut self, m: &'static str) -> Self {
        self.method = m;
        self.inspect = false;
        self
    }
}

use Family as F;

const CHAT: &str = "chat/completions";
const COMPLETIONS: &str = "completions";

fn table() -> Vec<Row> {
    vec![
        // --- GitHub Copilot (§1.1, §1.2) ---
        llm("api.githubcopilot.com", "/chat/completions", "github-copilot", CHAT, "openai-chat", F::OpenAiChat)
            .headers(&[("openai-intent", "conversation-panel")]),
        llm("api.individual.githubcopilot.com", "/chat/completions", "github-copilot", CHAT, "openai-chat", F::OpenAiChat),
        llm("api.business.githubcopilot.com", "/responses", "github-copilot", CHAT, "openai-responses", F::OpenAiResponses),
        llm("api.enterprise.githubcopilot.com", "/v1/messages", "github-copilot", CHAT, "anthropic-messages", F::AnthropicMessages),
        llm("api.githubcopilot.com", "/embeddings", "github-copilot", "embeddings", "openai-embeddings", F::Embeddings),
        // Next-edit suggestions on the proxy host.
        llm("proxy.individual.githubcopilot.com", "/chat/completions", "github-copilot", CHAT, "openai-chat", F::OpenAiChat),
        // Ghost text: the engine in the path is the model.
        llm("proxy.individual.githubcopilot.com", "/v1/engines/gpt-41-copilot/completions", "github-copilot", COMPLETIONS, "openai-completions", F::OpenAiCompletions)
            .model("gpt-41-copilot")
            .autocomplete()
            .headers(&[("openai-intent", "copilot-ghost")]),
        llm("copilot-proxy.githubusercontent.com", "/v1/engines/copilot-codex/completions", "github-copilot", COMPLETIONS, "openai-completions", F::OpenAiCompletions)
            .model("copilot-codex")
            .autocomplete(),
        llm("copilot-api.acme.ghe.com", "/chat/completions", "github-copilot", CHAT, "openai-chat", F::OpenAiChat),
        // The ghost-text header marks autocomplete even on a chat path.
        llm("api.githubcopilot.com", "/chat/completions", "github-copilot", CHAT, "openai-chat", F::OpenAiChat)
            .headers(&[("OpenAI-Intent", " Copilot-Ghost ")])
            .autocomplete(),
        pass("api.githubcopilot.com", GET, "/models", "github-copilot", "models"),
        pass("api.githubcopilot.com", POST, "/models/session", "github-copilot", "models"),
        pass("api.githubcopilot.com", POST, "/models/claude-sonnet-4/policy", "github-copilot", "models"),
        pass("api.githubcopilot.com", GET, "/_ping", "github-copilot", "other"),
        pass("proxy.business.githubcopilot.com", GET, "/_ping", "github-copilot", "other"),
        pass("api.githubcopilot.com", POST, "/mcp/", "github-copilot", "other"),
        pass("api.githubcopilot.com", POST, "/mcp/x/chat/completions", "github-copilot", "other"),
        pass("api.githubcopilot.com", POST, "/agents/github/chat/completions", "github-copilot", "other"),
        pass("api.githubcopilot.com", POST, "/search/code", "github-copilot", "other"),
        pass("api.githubcopilot.com", POST, "/search/docs", "github-copilot", "other"),
        pass("telemetry.individual.githubcopilot.com", POST, "/telemetry", "github-copilot", "other"),
        pass("origin-tracker.githubusercontent.com", POST, "/twirp/github.snippy.v1.SnippyAPI/Match", "unknown", "other"),
        pass("origin-tracker.individual.githubcopilot.com", POST, "/twirp/github.snippy.v1.SnippyAPI/Match", "github-copilot", "other"),
        // Responses over WebSocket: named, never inspected.
        Row {
            headers: &[("upgrade", "websocket")],
            ..llm("api.githubcopilot.com", "/responses", "github-copilot", CHAT, "openai-responses", F::OpenAiResponses).method(GET)
        },
        // --- Sourcegraph Cody (§1.3) ---
        llm("sourcegraph.com", "/.api/completions/stream?api-version=7&client-name=vscode&client-version=1.90.0", "sourcegraph", CHAT, "sourcegraph", F::Sourcegraph)
            .stream(true),
        llm("sourcegraph.com", "/.api/completions/code?client-name=vscode&api-version=2", "sourcegraph", COMPLETIONS, "sourcegraph", F::Sourcegraph)
            .autocomplete(),
        llm("sourcegraph.com", "/.api/llm/chat/completions", "sourcegraph", CHAT, "openai-chat", F::OpenAiChat),
        // Enterprise instances on customer hosts: recognised by path.
        llm("sourcegraph.acme.internal", "/.api/completions/stream?api-version=7", "sourcegraph", CHAT, "sourcegraph", F::Sourcegraph)
            .stream(true),
        llm("code.example.org:8443", "/.api/completions/code", "sourcegraph", COMPLETIONS, "sourcegraph", F::Sourcegraph)
            .autocomplete(),
        pass("sourcegraph.com", GET, "/.api/llm/models", "sourcegraph", "models"),
        pass("sourcegraph.com", POST, "/.api/graphql?CurrentUser", "sourcegraph", "other"),
        pass("sourcegraph.acme.internal", GET, "/.api/search/stream?q=foo", "sourcegraph", "other"),
        pass("sourcegraph.com", POST, "/.api/telemetry", "sourcegraph", "other"),
        llm("cody-gateway.sourcegraph.com", "/v1/completions/anthropic-messages", "sourcegraph", CHAT, "anthropic-messages", F::AnthropicMessages)
            .headers(&[("x-sourcegraph-feature", "chat_completions")]),
        llm("cody-gateway.sourcegraph.com", "/v1/completions/anthropic-messages", "sourcegraph", COMPLETIONS, "anthropic-messages", F::AnthropicMessages)
            .headers(&[("x-sourcegraph-feature", "code_completions")])
            .autocomplete(),
        llm("cody-gateway.sourcegraph.com", "/v1/completions/fireworks", "sourcegraph", COMPLETIONS, "openai-completions", F::OpenAiCompletions)
            .autocomplete(),
        llm("cody-gateway.sourcegraph.com", "/v1/completions/openai", "sourcegraph", CHAT, "openai-chat", F::OpenAiChat),
        pass("cody-gateway.sourcegraph.com", GET, "/-/__version", "sourcegraph", "other"),
        // --- OpenAI (§1.4) ---
        llm("api.openai.com", "/v1/chat/completions", "openai", CHAT, "openai-chat", F::OpenAiChat),
        llm("API.OpenAI.com:443", "/v1/chat/completions/", "openai", CHAT, "openai-chat", F::OpenAiChat),
        llm("api.openai.com", "/v1/completions", "openai", COMPLETIONS, "openai-completions", F::OpenAiCompletions)
            .autocomplete(),
        llm("api.openai.com", "/v1/responses", "openai", CHAT, "openai-responses", F::OpenAiResponses),
        // Another product's autocomplete header is no autocomplete here: it
        // would skip the output policies.
        llm("api.openai.com", "/v1/chat/completions", "openai", CHAT, "openai-chat", F::OpenAiChat)
            .headers(&[("openai-intent", "copilot-ghost"), ("x-sourcegraph-feature", "code_completions")]),
        llm("api.openai.com", "/v1/embeddings", "openai", "embeddings", "openai-embeddings", F::Embeddings),
        pass("api.openai.com", GET, "/v1/models", "openai", "models"),
        pass("api.openai.com", GET, "/v1/models/gpt-4o", "openai", "models"),
        pass("api.openai.com", GET, "/v1/models/ft:gpt-4o-mini:acme::9x1", "openai", "models"),
        pass("api.openai.com", GET, "/v1/responses/resp_123", "openai", "other"),
        pass("api.openai.com", POST, "/v1/responses/resp_123/cancel", "openai", "other"),
        pass("api.openai.com", POST, "/v1/threads/thread_1/messages", "openai", "other"),
        pass("api.openai.com", POST, "/v1/files", "openai", "other"),
        // Stored chat completions are listed with GET: named, not inspected.
        llm("api.openai.com", "/v1/chat/completions?limit=10", "openai", CHAT, "openai-chat", F::OpenAiChat).method(GET),
        // --- Anthropic (§1.5) ---
        llm("api.anthropic.com", "/v1/messages", "anthropic", CHAT, "anthropic-messages", F::AnthropicMessages)
            .headers(&[("anthropic-version", "2023-06-01")]),
        llm("api.anthropic.com", "/v1/messages/count_tokens", "anthropic", "other", "anthropic-messages", F::AnthropicMessages),
        pass("api.anthropic.com", POST, "/v1/messages/batches", "anthropic", "other"),
        pass("api.anthropic.com", GET, "/v1/models", "anthropic", "models"),
        // --- Azure OpenAI (§1.6) ---
        llm("myres.openai.azure.com", "/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21", "azure-openai", CHAT, "openai-chat", F::OpenAiChat)
            .model("gpt4o-prod"),
        llm("myres.openai.azure.com", "/openai/deployments/instruct/completions?api-version=2024-10-21", "azure-openai", COMPLETIONS, "openai-completions", F::OpenAiCompletions)
            .model("instruct")
            .autocomplete(),
        llm("myres.openai.azure.com", "/openai/deployments/embed-small/embeddings?api-version=2024-10-21", "azure-openai", "embeddings", "openai-embeddings", F::Embeddings)
            .model("embed-small"),
        llm("myres.openai.azure.com", "/openai/v1/chat/completions", "azure-openai", CHAT, "openai-chat", F::OpenAiChat),
        llm("myres.openai.azure.com", "/openai/v1/responses", "azure-openai", CHAT, "openai-responses", F::OpenAiResponses),
        llm("myres.cognitiveservices.azure.com", "/openai/deployments/d1/chat/completions?api-version=2025-01-01-preview", "azure-openai", CHAT, "openai-chat", F::OpenAiChat)
            .model("d1"),
        pass("myres.openai.azure.com", GET, "/openai/deployments?api-version=2022-12-01", "azure-openai", "other"),
        // --- Gemini (§1.7) ---
        llm("generativelanguage.googleapis.com", "/v1beta/models/gemini-2.5-flash:generateContent", "gemini", CHAT, "gemini", F::Gemini)
            .model("gemini-2.5-flash")
            .stream(false),
        llm("generativelanguage.googleapis.com", "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse&key=AIzaXXXX", "gemini", CHAT, "gemini", F::Gemini)
            .model("gemini-2.5-pro")
            .stream(true),
        llm("generativelanguage.googleapis.com", "/v1beta/models/text-embedding-004:embedContent", "gemini", "embeddings", "gemini", F::Embeddings)
            .model("text-embedding-004"),
        llm("generativelanguage.googleapis.com", "/v1beta/models/text-embedding-004:batchEmbedContents", "gemini", "embeddings", "gemini", F::Embeddings)
            .model("text-embedding-004"),
        llm("generativelanguage.googleapis.com", "/v1beta/models/gemini-2.5-flash:countTokens", "gemini", "other", "gemini", F::Gemini)
            .model("gemini-2.5-flash"),
        llm("generativelanguage.googleapis.com", "/v1beta/openai/chat/completions", "gemini", CHAT, "openai-chat", F::OpenAiChat),
        llm("us-central1-aiplatform.googleapis.com", "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.5-pro:streamGenerateContent?alt=sse", "gemini", CHAT, "gemini", F::Gemini)
            .model("gemini-2.5-pro")
            .stream(true),
        pass("generativelanguage.googleapis.com", GET, "/v1beta/models", "gemini", "models"),
        pass("generativelanguage.googleapis.com", GET, "/v1beta/models/gemini-2.5-flash", "gemini", "models"),
        pass("generativelanguage.googleapis.com", POST, "/v1beta/cachedContents", "gemini", "other"),
        // --- Mistral / Codestral (§1.8) ---
        llm("api.mistral.ai", "/v1/chat/completions", "mistral", CHAT, "openai-chat", F::OpenAiChat),
        llm("api.mistral.ai", "/v1/fim/completions", "mistral", COMPLETIONS, "openai-completions", F::FimChatShaped)
            .autocomplete(),
        llm("codestral.mistral.ai", "/v1/fim/completions", "mistral", COMPLETIONS, "openai-completions", F::FimChatShaped)
            .autocomplete(),
        llm("codestral.mistral.ai", "/v1/chat/completions", "mistral", CHAT, "openai-chat", F::OpenAiChat),
        pass("api.mistral.ai", GET, "/v1/models", "mistral", "models"),
        // --- Other intercepted hosts: path rules, provider unknown ---
        llm("api.deepseek.com", "/beta/completions", "unknown", COMPLETIONS, "openai-completions", F::OpenAiCompletions)
            .autocomplete(),
        llm("llm.corp.example", "/v1/chat/completions", "unknown", CHAT, "openai-chat", F::OpenAiChat),
        pass("llm.corp.example", POST, "/api/chat", "unknown", "other"),
        pass("example.com", GET, "/", "unknown", "other"),
        pass("example.com", GET, "", "unknown", "other"),
        pass("[::1]:8080", GET, "/healthz", "unknown", "other"),
        pass("api.openai.com.evil.example", GET, "/v1/models", "unknown", "models"),
    ]
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(
            http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

#[test]
fn classification_table() {
    let rows = table();
    for r in &rows {
        let method = Method::from_bytes(r.method.as_bytes()).unwrap();
        let c = classify(r.host, &method, r.path, &headers(r.headers));
        let ctx = format!("{} {} {}", r.method, r.host, r.path);
        assert_eq!(c.provider().as_str(), r.provider, "provider: {ctx}");
        assert_eq!(c.endpoint().as_str(), r.endpoint, "endpoint: {ctx}");
        assert_eq!(c.api().map(Api::as_str), r.api, "api: {ctx}");
        assert_eq!(c.family(), r.family, "family: {ctx}");
        assert_eq!(c.inspect(), r.inspect, "inspect: {ctx}");
        assert_eq!(c.model(), r.model, "model: {ctx}");
        assert_eq!(c.stream_hint(), r.stream, "stream: {ctx}");
        assert_eq!(c.autocomplete(), r.autocomplete, "autocomplete: {ctx}");
    }
    // Every provider, family and endpoint appears in the table.
    for p in Provider::ALL {
        assert!(rows.iter().any(|r| r.provider == p.as_str()), "{p:?}");
    }
    for f in Family::ALL {
        assert!(rows.iter().any(|r| r.family == Some(f)), "{f:?}");
    }
    for e in Endpoint::ALL {
        assert!(rows.iter().any(|r| r.endpoint == e.as_str()), "{e:?}");
    }
}

#[test]
fn provider_hints_override_the_host() {
    let h = HeaderMap::new();
    // A configured Sourcegraph Enterprise host.
    let c = classify_with(
        Some(Provider::Sourcegraph),
        "sg.acme.io",
        &Method::POST,
        "/.api/llm/chat/completions",
        &h,
    );
    assert_eq!(
        (c.provider(), c.api()),
        (Provider::Sourcegraph, Some(Api::OpenAiChat))
    );
    // kt's own direct API, routed to an Anthropic target.
    let c = classify_with(
        Some(Provider::Anthropic),
        "127.0.0.1:41002",
        &Method::POST,
        "/v1/messages",
        &h,
    );
    assert_eq!(c.provider(), Provider::Anthropic);
    assert_eq!(c.family(), Some(Family::AnthropicMessages));
    assert!(c.inspect());
    // Continue in Azure mode against the direct API.
    let c = classify_with(
        Some(Provider::AzureOpenAi),
        "localhost:41002",
        &Method::POST,
        "/v1/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21",
        &h,
    );
    assert_eq!(
        (c.endpoint(), c.model()),
        (Endpoint::ChatCompletions, Some("gpt4o"))
    );
    let c = classify_with(
        Some(Provider::Mistral),
        "localhost:41002",
        &Method::POST,
        "/v1/fim/completions",
        &h,
    );
    assert_eq!(
        (c.provider(), c.family()),
        (Provider::Mistral, Some(Family::FimChatShaped))
    );
    // Without a hint, the same request is from an unknown provider.
    let c = classify("127.0.0.1:41002", &Method::POST, "/v1/messages", &h);
    assert_eq!(c.provider(), Provider::Unknown);
}

#[test]
fn every_builtin_host_has_a_provider_and_agrees_with_the_host_matcher() {
    let set = HostSet::builtin_llm();
    for pattern in BUILTIN_LLM_HOSTS {
        let host = pattern.replace('*', "tenant");
        assert!(set.matches(&host));
        assert_ne!(Provider::from_host(&host), Provider::Unknown, "{host}");
    }
    for host in [
        "openai.com",
        "githubcopilot.com",
        ".githubcopilot.com",
        "copilot-api..ghe.com",
        "evilapi.openai.com",
        "api.openai.com.evil.com",
        "github.com",
        "openai.azure.com",
        "",
    ] {
        assert_eq!(Provider::from_host(host), Provider::Unknown, "{host}");
    }
    assert_eq!(
        Provider::from_host("api.githubcopilot.com."),
        Provider::GithubCopilot
    );
    assert_eq!(
        Provider::from_host("API.ANTHROPIC.COM:443"),
        Provider::Anthropic
    );
}

#[test]
fn names_round_trip() {
    for p in Provider::ALL {
        assert_eq!(Provider::parse(p.as_str()), Some(p));
    }
    for e in Endpoint::ALL {
        assert_eq!(Endpoint::parse(e.as_str()), Some(e));
    }
    assert_eq!(Provider::parse("OpenAI"), None);
    assert_eq!(Endpoint::parse("chat"), None);
}

#[test]
fn odd_paths_do_not_panic() {
    let h = HeaderMap::new();
    for path in [
        "",
        "/",
        "//",
        "?",
        "/?x",
        "#",
        "/:",
        ":",
        "/models/:",
        "/a:b",
        "/é/ü:ß",
        "/openai/deployments/",
        "/openai/deployments//chat/completions",
        "/v1/engines//completions",
        "/.api/",
        "/.api",
        "/v1/completions/",
    ] {
        for host in [
            "api.openai.com",
            "cody-gateway.sourcegraph.com",
            "api.githubcopilot.com",
            "x",
        ] {
            let _ = classify(host, &Method::POST, path, &h);
        }
    }
    let c = classify(
        "api.openai.com",
        &Method::POST,
        "/openai/deployments//chat/completions",
        &h,
    );
    assert_eq!(c.model(), None, "an empty deployment is no model");
}

#[test]
fn encoded_paths_are_read_as_a_decoding_upstream_reads_them() {
    for (raw, want) in [
        ("/v1/chat/%63ompletions", Some("/v1/chat/completions")),
        (
            "/v1/chat%2Fcompletions?x=%41",
            Some("/v1/chat/completions?x=%41"),
        ),
        ("/v1/chat/completions;x=1", Some("/v1/chat/completions")),
        ("/v1;a=b/messages%3Bq", Some("/v1/messages;q")),
        ("/v1/chat/completions?q=%20;x", None),
        ("/v1/chat/completions", None),
        ("/v1/chat/completions/", Some("/v1/chat/completions")),
        (
            "//v1//chat/completions?a=/",
            Some("/v1/chat/completions?a=/"),
        ),
        ("/v1/x/../chat/./completions", Some("/v1/chat/completions")),
        ("/../../v1/chat/completions", Some("/v1/chat/completions")),
        (
            "/v1/x/%2e%2e/chat/completions",
            Some("/v1/chat/completions"),
        ),
        ("/v1/x/..;p/chat/completions", Some("/v1/chat/completions")),
        ("/v1/chat/completions/..", Some("/v1/chat")),
        ("/.api/completions/stream", None),
        ("/", None),
        ("/..", Some("/")),
        ("*", None),
    ] {
        assert_eq!(normalized_path(raw).as_deref(), want, "{raw}");
    }
    let post = Method::POST;
    let path = normalized_path("/v1/chat/%63ompletions").unwrap();
    let class = classify("api.openai.com", &post, &path, &HeaderMap::new());
    assert!(class.inspect());
    assert_eq!(class.endpoint(), Endpoint::ChatCompletions);
}
