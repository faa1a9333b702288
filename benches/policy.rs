//! Policy engine costs (`cargo bench --bench policy`): recognizing a request
//! and selecting its policies when none applies, the built-in chain, the
//! input phase of redact + content-filter on a 20 KB chat request and on a
//! 20 KB Anthropic agent request (text turns, tool calls, tool results,
//! and with a base64 image), and the output phase per SSE event. Plain timing loops with a fixed number of
//! iterations; prints a markdown table.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use keeptrusts::config::Config;
use keeptrusts::policy::exchange::Input;
use keeptrusts::policy::stream::Flow;
use keeptrusts::policy::Engine;
use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

const CHAIN: &str = "policies:\n  chain: [secret-redaction, content-filter]\npolicy:\n  secret-redaction:\n    type: redact\n    phases: [input, output]\n  content-filter:\n    phases: [input, output]\n    patterns: ['(?i)internal-project-\\w+']\n    keywords: [codename-falcon]\n";
const UNMATCHED: &str = "policies:\n  chain: [content-filter]\npolicy:\n  content-filter:\n    patterns: ['x']\n    when:\n      endpoints: [embeddings]\n";

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let headers = http::HeaderMap::new();
    let uri: http::Uri = "/v1/chat/completions".parse().unwrap();
    let post = http::Method::POST;
    let host: std::sync::Arc<str> = std::sync::Arc::from("api.openai.com");
    let anon = keeptrusts::identity::Identity::anonymous();
    let mut rows = Vec::new();

    let unmatched = engine(UNMATCHED);
    rows.push((
        "request no policy applies to (recognize + select)",
        per_call(200_000, || {
            black_box(unmatched.begin(&host, &post, &uri, &headers, &anon));
        }),
    ));
    let builtin = Engine::new(None).unwrap();
    rows.push((
        "built-in chain (audit only): begin + complete",
        per_call(200_000, || {
            let mut ex = builtin.begin(&host, &post, &uri, &headers, &anon).unwrap();
            ex.complete(Some(200));
        }),
    ));

    let chain = engine(CHAIN);
    let body = chat_body(20 * 1024);
    rows.push((
        "redact + content-filter input, 20 KB chat request",
        per_call(2_000, || {
            let mut ex = chain.begin(&host, &post, &uri, &headers, &anon).unwrap();
            match ex.input(body.clone()) {
                Input::Forward(b) => {
                    black_box(b);
                }
                Input::Respond(_) => panic!("unexpected block"),
            }
        }),
    ));

    let anthropic_uri: http::Uri = "/v1/messages".parse().unwrap();
    let anthropic_host: std::sync::Arc<str> = std::sync::Arc::from("api.anthropic.com");
    for (label, image) in [
        (
            "redact + content-filter input, 20 KB Anthropic agent request",
            false,
        ),
        (
            "redact + content-filter input, the same plus a 200 KB base64 image",
            true,
        ),
    ] {
        let body = anthropic_body(20 * 1024, image);
        rows.push((
            label,
            per_call(2_000, || {
                let mut ex = chain
                    .begin(&anthropic_host, &post, &anthropic_uri, &headers, &anon)
                    .unwrap();
                match ex.input(body.clone()) {
                    Input::Forward(b) => {
                        black_box(b);
                    }
                    Input::Respond(_) => panic!("unexpected block"),
                }
            }),
        ));
    }

    let big = chat_body(100 * 1024);
    rows.push((
        "request model + stream read, 100 KB chat request",
        per_call(2_000, || {
            black_box(keeptrusts::llm::inspect::request_meta(&big).unwrap());
        }),
    ));
    let answer = chat_answer();
    rows.push((
        "usage read, 1 KB chat completion",
        per_call(200_000, || {
            black_box(
                keeptrusts::llm::inspect::response_usage(
                    keeptrusts::llm::family::Family::OpenAiChat,
                    &answer,
                )
                .unwrap(),
            );
        }),
    ));

    let events: Vec<Bytes> = (0..200)
        .map(|i| {
            Bytes::from(format!(
                "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" word{i} and\"}}}}]}}\n\n"
            ))
        })
        .collect();
    let per_stream = per_call(500, || {
        let ex = chain.begin(&host, &post, &uri, &headers, &anon).unwrap();
        let mut stream = ex.output_stream().unwrap();
        let mut out = Vec::new();
        for ev in &events {
            assert_eq!(stream.push(ev, &mut out), Flow::Continue);
        }
        stream.finish(&mut out);
        black_box(out);
    });
    rows.push((
        "redact + content-filter output, per SSE event",
        per_stream / events.len() as f64,
    ));

    println!("| measurement | µs per call |");
    println!("|---|---:|");
    for (label, us) in rows {
        println!("| {label} | {us:.2} |");
    }
}

fn engine(yaml: &str) -> Engine {
    let config = Config::parse(yaml, Path::new("bench.yaml")).unwrap();
    Engine::new(Some(&config)).unwrap()
}

/// A chat request of about `size` bytes of code-heavy prompt, no secrets.
fn chat_body(size: usize) -> Bytes {
    let line = "    let total: u64 = items.iter().map(|item| item.price * item.quantity).sum();\n";
    let mut prompt = String::new();
    while prompt.len() < size {
        prompt.push_str(line);
    }
    Bytes::from(
        serde_json::json!({
            "model": "gpt-4o",
            "stream": true,
            "messages": [
                {"role": "system", "content": "You are a helpful coding assistant."},
                {"role": "user", "content": prompt},
            ],
        })
        .to_string(),
    )
}

/// An Anthropic agent request of about `size` bytes of prompt, no secrets:
/// turns of text, tool calls with their input objects and tool results, and
/// a base64 image (200 KB of data) when `image`.
fn anthropic_body(size: usize, image: bool) -> Bytes {
    let line = "    let total: u64 = items.iter().map(|item| item.price * item.quantity).sum();\n";
    let mut messages = Vec::new();
    let mut len = 0;
    let mut i = 0;
    while len < size {
        let file = line.repeat(12);
        len += file.len() + 60;
        messages.push(serde_json::json!({"role": "assistant", "content": [
            {"type": "text", "text": "Reading the next file."},
            {"type": "tool_use", "id": format!("t{i}"), "name": "Read",
                "input": {"file_path": format!("src/m{i}.rs"), "limit": 200}}]}));
        messages.push(serde_json::json!({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": format!("t{i}"), "content": file}]}));
        i += 1;
    }
    if image {
        let data = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk".repeat(3500);
        messages.push(serde_json::json!({"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}},
            {"type": "text", "text": "What does this show?"}]}));
    }
    Bytes::from(
        serde_json::json!({"model": "claude-sonnet-4-5", "max_tokens": 1024, "stream": true,
            "system": "You are a coding agent.", "messages": messages})
        .to_string(),
    )
}

/// A non-streamed chat completion of about 1 KB, usage last (as OpenAI
/// sends it).
fn chat_answer() -> Bytes {
    let text = "Benchmarks measure what a system does under a stated load. ".repeat(12);
    Bytes::from(format!(
        r#"{{"id":"chatcmpl-1","object":"chat.completion","created":1764806400,"model":"gpt-4o-mini-2024-07-18","choices":[{{"index":0,"message":{{"role":"assistant","content":"{text}","refusal":null,"annotations":[]}},"logprobs":null,"finish_reason":"stop"}}],"usage":{{"prompt_tokens":25,"completion_tokens":120,"total_tokens":145,"prompt_tokens_details":{{"cached_tokens":0,"audio_tokens":0}},"completion_tokens_details":{{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}},"service_tier":"default","system_fingerprint":"fp_0"}}"#
    ))
}

/// Mean microseconds per call over `n` calls, after a short warm-up.
fn per_call(n: u32, mut f: impl FnMut()) -> f64 {
    for _ in 0..(n / 10).max(1) {
        f();
    }
    let start = Instant::now();
    for _ in 0..n {
        f();
    }
    start.elapsed().as_secs_f64() * 1e6 / f64::from(n)
}
