//! The policy chain through the real proxy: redaction before the upstream,
//! content-filter blocks that never reach it, stream output policies, `when`
//! rules, passthrough, and hot reload.

use crate::common::client::{body_json, body_string, through_proxy, Http};
use crate::common::origin::{Alpn, Origin};
use crate::common::{connect_to, TestCa, TestGateway};
use bytes::Bytes;
use keeptrusts::config::PolicyConfig;
use std::path::Path;
use std::sync::Arc;

const HOST: &str = "api.openai.com";
const ANTHROPIC: &str = "api.anthropic.com";
const GEMINI: &str = "generativelanguage.googleapis.com";

/// A GitHub token built at run time, so no secret-shaped literal sits in
/// the repository.
fn github_token() -> String {
    let body: String = (0..36).map(|i| char::from(b"aZ3kQ9mX"[i % 8])).collect();
    format!("ghp_{body}")
}

async fn setup(yaml: &str) -> (TestCa, Origin, TestGateway) {
    let ca = TestCa::new("policy upstream CA");
    let origin = Origin::tls(&ca, &[HOST, ANTHROPIC, GEMINI], Alpn::Both).await;
    let config = Arc::new(PolicyConfig::parse(yaml, Path::new("test.yaml")).unwrap());
    let gw = TestGateway::start(&ca, |s| {
        s.connect_to.push(connect_to(HOST, 443, origin.addr));
        s.connect_to.push(connect_to(ANTHROPIC, 443, origin.addr));
        s.connect_to.push(connect_to(GEMINI, 443, origin.addr));
        s.apply_config(&config);
    })
    .await;
    (ca, origin, gw)
}

async fn client(gw: &TestGateway, host: &str) -> Http {
    through_proxy(gw.addr, host, &[gw.ca_der()], &[b"http/1.1"])
        .await
        .0
}

fn chat(content: &str, stream: bool) -> Bytes {
    Bytes::from(
        serde_json::json!({
            "model": "gpt-4o",
            "stream": stream,
            "messages": [{"role": "user", "content": content}],
        })
        .to_string(),
    )
}

/// POSTs a non-streaming chat request with `content` as the user message.
async fn post_chat(http: &mut Http, content: &str) -> http::Response<hyper::body::Incoming> {
    http.send("POST", HOST, "/v1/chat/completions", chat(content, false))
        .await
}

fn last_body(origin: &Origin) -> Option<String> {
    origin
        .last_body
        .lock()
        .unwrap()
        .as_ref()
        .map(|b| String::from_utf8_lossy(b).into_owned())
}

const REDACT: &str =
    "policies:\n  chain: [secret-redaction]\npolicy:\n  secret-redaction:\n    type: redact\n";

#[tokio::test]
async fn secrets_in_prompts_are_redacted_before_the_upstream() {
    let (_ca, origin, gw) = setup(REDACT).await;
    let mut http = client(&gw, HOST).await;
    let token = github_token();
    let prompt = format!("deploy with\nexport GITHUB_TOKEN={token}\nthanks");
    let resp = post_chat(&mut http, &prompt).await;
    assert_eq!(resp.status(), 200);
    let sent = last_body(&origin).expect("the upstream got the request");
    assert!(
        !sent.contains(&token),
        "secret reached the upstream: {sent}"
    );
    let json: serde_json::Value = serde_json::from_str(&sent).expect("still valid JSON");
    let content = json["messages"][0]["content"].as_str().unwrap();
    assert!(content.contains("[REDACTED:"), "{content}");
    assert!(
        content.starts_with("deploy with\nexport GITHUB_TOKEN="),
        "{content}"
    );
    assert!(content.ends_with("\nthanks"), "{content}");
    assert_eq!(json["model"], "gpt-4o", "the rest is untouched");
}

#[tokio::test]
async fn a_request_without_secrets_reaches_the_upstream_byte_identical() {
    let (_ca, origin, gw) = setup(REDACT).await;
    let mut http = client(&gw, HOST).await;
    // Unusual but valid JSON formatting must survive untouched.
    let body = Bytes::from_static(
        b"{ \"model\" : \"gpt-4o\",\n  \"messages\": [ {\"role\":\"user\",\"content\":\"fn main() { println!(\\\"hi\\\"); }\"} ] }",
    );
    let resp = http
        .send("POST", HOST, "/v1/chat/completions", body.clone())
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(last_body(&origin).unwrap().as_bytes(), &body[..]);
}

const FILTER: &str = "policies:\n  chain: [content-filter]\npolicy:\n  content-filter:\n    phases: [input]\n    patterns: ['(?i)internal-project-\\w+']\n    action: block\n";

/// Tool-call arguments and tool descriptions reach the model as prompt:
/// the content filter reads them.
#[tokio::test]
async fn content_filter_reads_tool_calls_and_tool_descriptions() {
    let (_ca, origin, gw) = setup(FILTER).await;
    let openai = [
        serde_json::json!({"model": "gpt-4o", "messages": [
            {"role": "user", "content": "go"},
            {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                "function": {"name": "lookup", "arguments": "{\"q\":\"internal-project-zeus\"}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "ok"}]}),
        serde_json::json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "go"}],
            "tools": [{"type": "function", "function": {"name": "f",
                "description": "Reads internal-project-zeus files"}}]}),
    ];
    let mut http = client(&gw, HOST).await;
    for body in openai {
        let resp = http
            .send(
                "POST",
                HOST,
                "/v1/chat/completions",
                Bytes::from(body.to_string()),
            )
            .await;
        assert_eq!(resp.status(), 409, "{body}");
    }
    let mut http = client(&gw, ANTHROPIC).await;
    let body = serde_json::json!({"model": "claude-sonnet-4-5", "max_tokens": 10,
        "messages": [{"role": "user", "content": "go"}],
        "tools": [{"name": "f", "description": "About internal-project-zeus",
            "input_schema": {"type": "object"}}]});
    let resp = post_anthropic(&mut http, &body.to_string()).await;
    assert_eq!(resp.status(), 409);
    assert_eq!(origin.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}

async fn post_anthropic(http: &mut Http, body: &str) -> http::Response<hyper::body::Incoming> {
    http.send(
        "POST",
        ANTHROPIC,
        "/v1/messages",
        Bytes::from(body.to_owned()),
    )
    .await
}

/// An Anthropic request whose last user turn holds `blocks`, after an
/// assistant turn that called a tool with `input`.
fn anthropic_turns(input: serde_json::Value, blocks: serde_json::Value) -> String {
    serde_json::json!({"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Write",
            "input": input}]},
        {"role": "user", "content": blocks}]})
    .to_string()
}

/// What an earlier tool call wrote (Anthropic's `tool_use.input`, an
/// object, to any depth) and text documents reach the model as prompt: the
/// content filter reads them; base64 sources (images, PDFs) it does not.
#[tokio::test]
async fn content_filter_reads_anthropic_tool_inputs_and_text_documents() {
    let (_ca, origin, gw) = setup(FILTER).await;
    let mut http = client(&gw, ANTHROPIC).await;
    let ok = serde_json::json!([{"type": "tool_result", "tool_use_id": "t1", "content": "done"}]);
    let blocked = [
        anthropic_turns(
            serde_json::json!({"path": "notes.md", "edits": [{"new": "about internal-project-zeus"}]}),
            ok.clone(),
        ),
        anthropic_turns(
            serde_json::json!({}),
            serde_json::json!([{"type": "document", "source": {"type": "text",
                "media_type": "text/plain", "data": "see internal-project-zeus"}}]),
        ),
        anthropic_turns(
            serde_json::json!({}),
            serde_json::json!([{"type": "document", "source": {"type": "content",
                "content": [{"type": "text", "text": "internal-project-zeus"}]}}]),
        ),
    ];
    for body in blocked {
        let resp = post_anthropic(&mut http, &body).await;
        assert_eq!(resp.status(), 409, "{body}");
    }
    assert_eq!(origin.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    // Base64 data is not text: whatever its bytes spell, it passes.
    let image = anthropic_turns(
        serde_json::json!({"path": "a.png"}),
        serde_json::json!([{"type": "image", "source": {"type": "base64",
            "media_type": "image/png", "data": "internal-project-zeus"}}]),
    );
    let resp = post_anthropic(&mut http, &image).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(last_body(&origin).unwrap(), image);
}

/// A secret in a tool call's input object and in a text document is
/// redacted in place: the rest of the body reaches the upstream
/// byte-identical.
#[tokio::test]
async fn secrets_in_anthropic_tool_inputs_and_documents_are_redacted() {
    let (_ca, origin, gw) = setup(REDACT).await;
    let mut http = client(&gw, ANTHROPIC).await;
    let token = github_token();
    let body = anthropic_turns(
        serde_json::json!({"path": ".env", "content": format!("TOKEN={token}\nDEBUG=1"), "n": 1}),
        serde_json::json!([{"type": "document", "source": {"type": "text",
            "media_type": "text/plain", "data": format!("# env\nGITHUB_TOKEN={token}\n")}}]),
    );
    let resp = post_anthropic(&mut http, &body).await;
    assert_eq!(resp.status(), 200);
    let sent = last_body(&origin).unwrap();
    assert_eq!(sent, body.replace(&token, "[REDACTED:github_pat]"));
    serde_json::from_str::<serde_json::Value>(&sent).expect("still valid JSON");
}

#[tokio::test]
async fn content_filter_blocks_with_409_and_the_upstream_is_never_contacted() {
    let (_ca, origin, gw) = setup(FILTER).await;
    let mut http = client(&gw, HOST).await;
    let resp = post_chat(&mut http, "summarise Internal-Project-Zeus for me").await;
    assert_eq!(resp.status(), 409);
    // The SDKs would retry a 409 twice: asking again cannot change it.
    assert_eq!(resp.headers()["x-should-retry"], "false");
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let json = body_json(resp).await;
    assert_eq!(json["error"]["type"], "policy_violation");
    assert_eq!(json["error"]["code"], "blocked");
    assert_eq!(json["error"]["policy"], "content-filter");
    assert!(last_body(&origin).is_none(), "the upstream saw the request");

    // The same connection keeps working for clean requests.
    let resp = post_chat(&mut http, "hello").await;
    assert_eq!(resp.status(), 200);
    assert!(last_body(&origin).is_some());
}

#[tokio::test]
async fn anthropic_blocks_are_anthropic_shaped() {
    let (_ca, origin, gw) = setup(FILTER).await;
    let mut http = client(&gw, ANTHROPIC).await;
    let body = serde_json::json!({
        "model": "claude-sonnet-4-5", "max_tokens": 64,
        "messages": [{"role": "user", "content": "about internal-project-apollo"}],
    });
    let resp = post_anthropic(&mut http, &body.to_string()).await;
    assert_eq!(resp.status(), 409);
    let json = body_json(resp).await;
    assert_eq!(json["type"], "error");
    assert_eq!(json["error"]["code"], "blocked");
    assert!(last_body(&origin).is_none());
}

#[tokio::test]
async fn non_llm_paths_on_llm_hosts_are_not_inspected() {
    let (_ca, origin, gw) = setup(FILTER).await;
    let mut http = client(&gw, HOST).await;
    let resp = http
        .send(
            "POST",
            HOST,
            "/echo",
            Bytes::from_static(b"internal-project-zeus"),
        )
        .await;
    assert_eq!(resp.status(), 200, "{}", body_string(resp).await);
    assert!(origin.hits.load(std::sync::atomic::Ordering::SeqCst) >= 1);
}

#[tokio::test]
async fn when_endpoints_limits_where_a_policy_applies() {
    let yaml = "policies:\n  chain: [content-filter]\npolicy:\n  content-filter:\n    patterns: ['forbidden']\n    when:\n      endpoints: [completions]\n";
    let (_ca, origin, gw) = setup(yaml).await;
    let mut http = client(&gw, HOST).await;
    let resp = post_chat(&mut http, "a forbidden word").await;
    assert_eq!(resp.status(), 200, "chat is not an autocomplete endpoint");
    assert!(last_body(&origin).unwrap().contains("forbidden"));
}

#[tokio::test]
async fn passthrough_forwards_untouched() {
    let yaml = "policies:\n  chain: [passthrough, secret-redaction]\npolicy:\n  secret-redaction:\n    type: redact\n";
    let (_ca, origin, gw) = setup(yaml).await;
    let mut http = client(&gw, HOST).await;
    let token = github_token();
    let resp = post_chat(&mut http, &token).await;
    assert_eq!(resp.status(), 200);
    assert!(last_body(&origin).unwrap().contains(&token));
}

/// The assistant text of an OpenAI SSE stream, and whether `[DONE]` came.
fn stream_text(raw: &str) -> (String, bool, Vec<serde_json::Value>) {
    let mut text = String::new();
    let mut done = false;
    let mut errors = Vec::new();
    for line in raw.lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(data).unwrap();
        if v.get("error").is_some() {
            errors.push(v);
        } else if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
    }
    (text, done, errors)
}

async fn stream_reply(http: &mut Http, reply: &str, chunk: usize) -> String {
    let req = http::Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("host", HOST)
        .header("content-type", "application/json")
        .header("x-test-reply", reply)
        .header("x-test-chunk", chunk.to_string())
        .body(http_body_util::Full::new(chat("write code", true)))
        .unwrap();
    let resp = http.request(req).await;
    assert_eq!(resp.status(), 200);
    body_string(resp).await
}

#[tokio::test]
async fn a_secret_split_across_stream_chunks_is_redacted() {
    let (_ca, _origin, gw) = setup(REDACT).await;
    let mut http = client(&gw, HOST).await;
    let token = github_token();
    let reply = format!("Use token {token} in the header. Done.");
    for chunk in [1, 3, 7, 40] {
        let raw = stream_reply(&mut http, &reply, chunk).await;
        let (text, done, errors) = stream_text(&raw);
        assert!(done, "chunk {chunk}: stream not finished: {raw}");
        assert!(errors.is_empty(), "{errors:?}");
        assert!(!text.contains(&token), "chunk {chunk}: leaked: {text}");
        assert!(!raw.contains(&token[..12]), "chunk {chunk}: prefix leaked");
        assert!(
            text.starts_with("Use token [REDACTED:"),
            "chunk {chunk}: {text}"
        );
        assert!(
            text.ends_with(" in the header. Done."),
            "chunk {chunk}: {text}"
        );
    }
}

/// A content filter with `action: redact` replaces every match in a
/// streamed answer, however the chunks cut it, not only the first of each
/// check.
#[tokio::test]
async fn a_stream_filter_redacts_every_match() {
    let yaml = "policies:\n  chain: [codenames]\npolicy:\n  codenames:\n    type: content-filter\n    phases: [output]\n    patterns: ['project-zeus']\n    keywords: [apollo]\n    action: redact\n";
    let (_ca, _origin, gw) = setup(yaml).await;
    let mut http = client(&gw, HOST).await;
    let reply = "See project-zeus and project-zeus, then Apollo; project-zeus ends.";
    for chunk in [200, 9, 4, 1] {
        let raw = stream_reply(&mut http, reply, chunk).await;
        let (text, done, errors) = stream_text(&raw);
        assert!(done && errors.is_empty(), "chunk {chunk}: {raw}");
        assert_eq!(
            text,
            "See [REDACTED:codenames] and [REDACTED:codenames], then [REDACTED:codenames]; [REDACTED:codenames] ends.",
            "chunk {chunk}"
        );
    }
}

/// A Gemini stream carries a function call whole, its `args` an object:
/// a secret in it is redacted on the way to the client (the event stays
/// JSON, the other values as sent) and a filtered word ends the stream.
#[tokio::test]
async fn secrets_and_filtered_words_in_streamed_gemini_function_calls_are_caught() {
    let path = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse";
    let body = Bytes::from(r#"{"contents":[{"role":"user","parts":[{"text":"deploy"}]}]}"#);
    let gemini_stream = |args: String| {
        http::Request::builder()
            .method("POST")
            .uri(path)
            .header("host", GEMINI)
            .header("content-type", "application/json")
            .header("x-test-reply", args)
            .body(http_body_util::Full::new(body.clone()))
            .unwrap()
    };
    let token = github_token();
    let (_ca, _origin, gw) = setup(REDACT).await;
    let mut http = client(&gw, GEMINI).await;
    let args = serde_json::json!({"env": {"token": token, "region": "eu"}});
    let resp = http.request(gemini_stream(args.to_string())).await;
    assert_eq!(resp.status(), 200);
    let raw = body_string(resp).await;
    assert!(!raw.contains(&token), "{raw}");
    let first = raw.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
    let v: serde_json::Value = serde_json::from_str(first).unwrap();
    let args = &v["candidates"][0]["content"]["parts"][1]["functionCall"]["args"];
    assert!(
        args["env"]["token"]
            .as_str()
            .unwrap()
            .starts_with("[REDACTED:"),
        "{raw}"
    );
    assert_eq!(args["env"]["region"], "eu");
    assert!(raw.contains("Done."), "{raw}");

    let (_ca, _origin, gw) = setup(FILTER_OUT).await;
    let mut http = client(&gw, GEMINI).await;
    let args = serde_json::json!({"query": "status of project-zeus"});
    let resp = http.request(gemini_stream(args.to_string())).await;
    let raw = body_string(resp).await;
    assert!(!raw.contains("project-zeus"), "{raw}");
    assert!(!raw.contains("Done."), "the stream went on: {raw}");
}

/// Without `alt=sse` a Gemini stream is one JSON array of its chunks, read
/// whole: the output policies read the text in each chunk as they do in
/// the event stream.
#[tokio::test]
async fn output_policies_read_a_gemini_stream_sent_as_a_json_array() {
    let path = "/v1beta/models/gemini-2.5-flash:streamGenerateContent";
    let body = Bytes::from(r#"{"contents":[{"role":"user","parts":[{"text":"deploy"}]}]}"#);
    let ask = |args: serde_json::Value| {
        http::Request::builder()
            .method("POST")
            .uri(path)
            .header("host", GEMINI)
            .header("content-type", "application/json")
            .header("x-test-reply", args.to_string())
            .body(http_body_util::Full::new(body.clone()))
            .unwrap()
    };
    let (_ca, _origin, gw) = setup(FILTER_OUT).await;
    let mut http = client(&gw, GEMINI).await;
    let resp = http
        .request(ask(serde_json::json!({"query": "status of project-zeus"})))
        .await;
    let raw = body_string(resp).await;
    assert!(!raw.contains("project-zeus"), "{raw}");
    assert!(!raw.contains("Done."), "{raw}");
    let resp = http
        .request(ask(serde_json::json!({"query": "status of the build"})))
        .await;
    assert_eq!(resp.status(), 200);
    let raw = body_string(resp).await;
    assert!(raw.starts_with('[') && raw.contains("Done."), "{raw}");
}

#[tokio::test]
async fn clean_streams_pass_unchanged() {
    let (_ca, _origin, gw) = setup(REDACT).await;
    let mut http = client(&gw, HOST).await;
    let reply = "Sure, here is the plan: first read the file, then write tests.";
    let raw = stream_reply(&mut http, reply, 5).await;
    let (text, done, _) = stream_text(&raw);
    assert!(done);
    assert_eq!(text, reply);
}

#[tokio::test]
async fn an_output_block_ends_the_stream_with_an_error_event() {
    let yaml = "policies:\n  chain: [content-filter]\npolicy:\n  content-filter:\n    phases: [output]\n    patterns: ['project-zeus']\n";
    let (_ca, _origin, gw) = setup(yaml).await;
    let mut http = client(&gw, HOST).await;
    let raw = stream_reply(&mut http, "Details about project-zeus follow here.", 4).await;
    let (text, done, errors) = stream_text(&raw);
    assert!(!done, "a blocked stream must not look complete: {raw}");
    assert_eq!(errors.len(), 1, "{raw}");
    assert_eq!(errors[0]["error"]["code"], "blocked");
    assert!(!text.contains("project-zeus"), "{text}");
}

/// A blocked phrase cut across stream chunks is not shown even in part:
/// the chunks that could still grow into it are held until it is whole.
#[tokio::test]
async fn no_word_of_a_blocked_phrase_reaches_the_client() {
    let yaml = "policies:\n  chain: [content-filter]\npolicy:\n  content-filter:\n    phases: [output]\n    keywords: ['Project Zeus Alpha']\n";
    let (_ca, _origin, gw) = setup(yaml).await;
    let mut http = client(&gw, HOST).await;
    for chunk in [4, 9, 1] {
        let raw = stream_reply(&mut http, "Details about project zeus alpha follow.", chunk).await;
        let (text, done, errors) = stream_text(&raw);
        assert!(!done && errors.len() == 1, "chunk {chunk}: {raw}");
        assert!(
            !text.is_empty() && "Details about ".starts_with(&text),
            "chunk {chunk}: the client saw {text:?}: {raw}"
        );
    }
}

/// Asks `host` for an answer that is one tool call with `args` as its
/// arguments, streamed in deltas of `chunk` characters or whole.
async fn tool_call_reply(
    http: &mut Http,
    host: &str,
    args: &str,
    chunk: usize,
    stream: bool,
) -> http::Response<hyper::body::Incoming> {
    let (path, body) = if host == ANTHROPIC {
        let body = serde_json::json!({"model": "claude-sonnet-4-5", "max_tokens": 64,
            "stream": stream, "messages": [{"role": "user", "content": "write it"}]});
        ("/v1/messages", Bytes::from(body.to_string()))
    } else {
        ("/v1/chat/completions", chat("write it", stream))
    };
    let req = http::Request::builder()
        .method("POST")
        .uri(path)
        .header("host", host)
        .header("content-type", "application/json")
        .header("x-test-reply", args)
        .header("x-test-chunk", chunk.to_string())
        .header("x-test-tool-call", "1")
        .body(http_body_util::Full::new(body))
        .unwrap();
    http.request(req).await
}

/// The tool-call arguments in an OpenAI or Anthropic event stream, and its
/// error events.
fn streamed_tool_args(raw: &str) -> (String, Vec<serde_json::Value>) {
    let mut args = String::new();
    let mut errors = Vec::new();
    for data in raw.lines().filter_map(|l| l.strip_prefix("data: ")) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else {
            continue;
        };
        if v.get("error").is_some() {
            errors.push(v);
        } else if let Some(a) = v["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .or(v["delta"]["partial_json"].as_str())
        {
            args.push_str(a);
        }
    }
    (args, errors)
}

/// A secret in the arguments of a tool call the model streams is redacted
/// however the deltas cut it; the arguments stay JSON.
#[tokio::test]
async fn a_secret_in_streamed_tool_call_arguments_is_redacted() {
    let (_ca, _origin, gw) = setup(REDACT).await;
    let token = github_token();
    let args =
        serde_json::json!({"path": ".env", "content": format!("A=1\nTOKEN={token}\n")}).to_string();
    for host in [HOST, ANTHROPIC] {
        let mut http = client(&gw, host).await;
        for chunk in [1, 5, 16] {
            let resp = tool_call_reply(&mut http, host, &args, chunk, true).await;
            assert_eq!(resp.status(), 200);
            let raw = body_string(resp).await;
            assert!(!raw.contains(&token[..12]), "{host} chunk {chunk}: {raw}");
            let (got, errors) = streamed_tool_args(&raw);
            assert!(errors.is_empty(), "{errors:?}");
            let v: serde_json::Value = serde_json::from_str(&got).expect("arguments stay JSON");
            assert_eq!(v["content"], "A=1\nTOKEN=[REDACTED:github_pat]\n", "{host}");
        }
    }
}

/// The output content filter reads the tool calls the model makes, streamed
/// (the stream ends with an error event) or whole (`409`-style block).
#[tokio::test]
async fn an_output_filter_reads_tool_call_arguments() {
    let yaml = "policies:\n  chain: [content-filter]\npolicy:\n  content-filter:\n    phases: [output]\n    patterns: ['project-zeus']\n";
    let (_ca, _origin, gw) = setup(yaml).await;
    let args = r#"{"query":"status of project-zeus"}"#;
    for host in [HOST, ANTHROPIC] {
        let mut http = client(&gw, host).await;
        let resp = tool_call_reply(&mut http, host, args, 3, true).await;
        let raw = body_string(resp).await;
        let (got, errors) = streamed_tool_args(&raw);
        assert_eq!(errors.len(), 1, "{host}: {raw}");
        assert!(!got.contains("project-zeus"), "{host}: {got}");
        let resp = tool_call_reply(&mut http, host, args, 3, false).await;
        let status = resp.status();
        let body = body_string(resp).await;
        assert!(!body.contains("project-zeus"), "{host}: {status} {body}");
        assert!(body.contains("blocked"), "{host}: {status} {body}");
    }
}

#[tokio::test]
async fn reload_swaps_the_chain_and_a_bad_config_keeps_the_old_one() {
    let (_ca, origin, gw) = setup(REDACT).await;
    let mut http = client(&gw, HOST).await;
    let resp = post_chat(&mut http, "internal-project-x").await;
    assert_eq!(resp.status(), 200);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, FILTER).unwrap();
    let engine = gw.gateway.engine();
    assert!(keeptrusts::policy::reload::reload(&path, engine, "test"));
    let resp = post_chat(&mut http, "internal-project-x").await;
    assert_eq!(resp.status(), 409, "the new chain applies");

    std::fs::write(&path, "policies:\n  chain: [nope]\n").unwrap();
    assert!(!keeptrusts::policy::reload::reload(&path, engine, "test"));
    let resp = post_chat(&mut http, "internal-project-x").await;
    assert_eq!(resp.status(), 409, "the old chain stays in force");
    drop(origin);
}

const FILTER_OUT: &str = "policies:\n  chain: [audit-logger, content-filter]\npolicy:\n  audit-logger: {}\n  content-filter:\n    phases: [output]\n    patterns: ['project-zeus']\n";

/// Posts a chat request whose answer carries `reply` and the test origin's
/// extra `labels`; returns status, kt's `x-kt-error` if any, and body.
async fn labelled_answer(
    http: &mut Http,
    reply: &str,
    labels: &[(&str, &str)],
) -> (u16, Option<String>, String) {
    let mut b = http::Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("host", HOST)
        .header("content-type", "application/json")
        .header("x-test-reply", reply);
    for (k, v) in labels {
        b = b.header(*k, *v);
    }
    let req = b
        .body(http_body_util::Full::new(chat("hi", false)))
        .unwrap();
    let resp = http.request(req).await;
    let status = resp.status().as_u16();
    let error = resp
        .headers()
        .get("x-kt-error")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, error, body_string(resp).await)
}

/// An answer the output policies cannot read (compressed although kt asked
/// for identity, or neither JSON nor SSE) is refused when a policy fails
/// closed, and passes marked "not inspected" when it fails open; an error
/// status always passes, its meaning intact.
#[tokio::test]
async fn answers_the_output_policies_cannot_read_are_refused_or_marked() {
    let (_ca, _origin, mut gw) = setup(FILTER_OUT).await;
    let mut http = client(&gw, HOST).await;
    let secret = "the project-zeus plans";
    for label in [
        ("x-test-encoding", "gzip"),
        ("x-test-content-type", "text/plain"),
    ] {
        let (status, _, body) = labelled_answer(&mut http, secret, &[label]).await;
        assert_eq!(status, 502, "{label:?}: {body}");
        assert!(
            body.contains("cannot inspect the upstream response"),
            "{body}"
        );
        assert!(!body.contains("project-zeus"), "{body}");
    }
    let (status, _, body) = labelled_answer(
        &mut http,
        "slow down",
        &[
            ("x-test-content-type", "text/plain"),
            ("x-test-status", "429"),
        ],
    )
    .await;
    assert_eq!(status, 429, "{body}");
    let events = crate::suite::hostile::events(&mut gw).await;
    let outs = crate::suite::hostile::outputs(&events);
    let seen: Vec<_> = outs
        .iter()
        .map(|e| {
            (
                e.action.as_str(),
                e.policy.as_deref(),
                e.reason.as_deref(),
                e.status,
            )
        })
        .collect();
    let closed = |why: &'static str| Some(why);
    assert_eq!(
        seen,
        [
            (
                "block",
                Some("content-filter"),
                closed("not inspected: encoded; the policy fails closed"),
                Some(502)
            ),
            (
                "block",
                Some("content-filter"),
                closed("not inspected: content_type; the policy fails closed"),
                Some(502)
            ),
            (
                "error",
                None,
                Some("upstream answered 429; not inspected: content_type"),
                Some(429)
            ),
        ]
    );

    let open = FILTER_OUT.replace("patterns:", "on_error: fail_open\n    patterns:");
    let (_ca, _origin, mut gw) = setup(&open).await;
    let mut http = client(&gw, HOST).await;
    let (status, _, body) =
        labelled_answer(&mut http, secret, &[("x-test-content-type", "text/plain")]).await;
    assert_eq!(status, 200);
    assert!(
        body.contains("project-zeus"),
        "failing open forwards it: {body}"
    );
    let events = crate::suite::hostile::events(&mut gw).await;
    let outs = crate::suite::hostile::outputs(&events);
    assert_eq!(outs[0].action.as_str(), "pass");
    assert_eq!(
        outs[0].reason.as_deref(),
        Some("not inspected: content_type")
    );
}

/// A JSON answer larger than kt reads for its output policies is kt's 502
/// naming the cause, recorded as the upstream's failure, not the client's.
#[tokio::test]
async fn an_answer_too_large_to_inspect_is_a_502_recorded_as_such() {
    let ca = TestCa::new("policy upstream CA");
    let origin = Origin::tls(&ca, &[HOST], Alpn::Both).await;
    let config = Arc::new(PolicyConfig::parse(FILTER_OUT, Path::new("t.yaml")).unwrap());
    let mut gw = TestGateway::start(&ca, |s| {
        s.connect_to.push(connect_to(HOST, 443, origin.addr));
        s.apply_config(&config);
        s.limits.max_inspected_body = 1024;
    })
    .await;
    let mut http = client(&gw, HOST).await;
    let (status, error, body) = labelled_answer(&mut http, &"x".repeat(4096), &[]).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(error.as_deref(), Some("upstream_too_large"));
    assert!(body.contains("upstream_too_large"), "{body}");
    let events = crate::suite::hostile::events(&mut gw).await;
    let out = crate::suite::hostile::outputs(&events)[0].clone();
    assert_eq!((out.action.as_str(), out.status), ("error", Some(502)));
    let reason = out.reason.unwrap_or_default();
    assert!(reason.starts_with("upstream_too_large: "), "{reason}");
}

/// A path spelled with escapes or `;parameters` is the same endpoint to an
/// upstream that decodes before routing, so the policies apply to it too.
#[tokio::test]
async fn encoded_paths_do_not_get_around_the_policies() {
    let yaml = "policies:\n  chain: [content-filter]\npolicy:\n  content-filter:\n    patterns: ['project-zeus']\n";
    let (_ca, origin, gw) = setup(yaml).await;
    let mut http = client(&gw, HOST).await;
    for path in [
        "/v1/chat/%63ompletions",
        "/v1/chat%2Fcompletions",
        "/v1/chat/completions;x=1",
    ] {
        let resp = http
            .send("POST", HOST, path, chat("about project-zeus", false))
            .await;
        assert_eq!(resp.status(), 409, "{path}");
    }
    assert_eq!(origin.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}
