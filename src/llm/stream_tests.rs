use super::*;
use crate::llm::fixtures;
use crate::llm::inspect::response_usage;
use crate::llm::json_text::{visit_strings, Selector};
use crate::llm::sse::SseDecoder;

fn events(input: &[u8]) -> Vec<SseEvent> {
    let mut d = SseDecoder::new();
    d.feed(input);
    d.finish();
    std::iter::from_fn(|| d.next_event())
        .map(|r| r.unwrap())
        .collect()
}

/// One SSE frame built from an event name and data.
fn ev(event: Option<&str>, data: &str) -> SseEvent {
    let mut raw = String::new();
    if let Some(e) = event {
        raw.push_str(&format!("event: {e}\n"));
    }
    raw.push_str(&format!("data: {data}\n\n"));
    let mut v = events(raw.as_bytes());
    assert_eq!(v.len(), 1);
    v.remove(0)
}

fn tally(family: Family, input: &[u8]) -> StreamTally {
    let mut t = StreamTally::new(family);
    for e in events(input) {
        t.observe(&e);
    }
    t
}

/// The output strings of a whole response, in document order.
fn output_texts(family: Family, body: &[u8]) -> Vec<String> {
    let mut v = Vec::new();
    visit_strings(
        body,
        Selector::Pointers(family.output_pointers()),
        |_, s| v.push(s.to_owned()),
    )
    .unwrap();
    v
}

#[test]
fn streamed_text_equals_the_whole_response_text() {
    for fx in fixtures::ALL.iter().filter(|f| f.stream.is_some()) {
        let f = fx.family;
        let t = tally(f, fx.stream.unwrap());
        assert_eq!(t.bad_events(), 0, "{f:?}");
        assert!(t.fault().is_none(), "{f:?}");
        let whole = output_texts(f, fx.response);
        if f == Family::OpenAiCompletions {
            // Two interleaved choices (n = 2).
            assert_eq!(t.choices(), 2);
            assert_eq!([t.text(0), t.text(1)], [&whole[0][..], &whole[1][..]]);
        } else {
            assert_eq!(t.choices(), 1, "{f:?}");
            assert_eq!(t.text(0), whole.concat(), "{f:?}");
        }
        assert!(!t.text(0).is_empty());
    }
}

#[test]
fn expected_texts() {
    let text = |f| {
        tally(f, fixtures::get(f).stream.unwrap())
            .text(0)
            .to_owned()
    };
    assert_eq!(
        text(Family::OpenAiChat),
        "The YAML is valid; the loader fails because `port` is quoted:\n\n```yaml\nport: \"5432\"\n```\nUse `port: 5432` — café is fine."
    );
    assert_eq!(
        text(Family::AnthropicMessages),
        "Required: `DATABASE_URL` (it has no default). `REDIS_URL` defaults to localhost."
    );
    assert_eq!(
        text(Family::Gemini),
        "The screenshot shows the same panic: `config.get(\"port\")` returned `None`."
    );
    assert_eq!(
        text(Family::Sourcegraph),
        "`Login` is a stub: the handler body was never written, so every request returns an empty 200."
    );
}

#[test]
fn stream_end_per_family() {
    for fx in fixtures::ALL.iter().filter(|f| f.stream.is_some()) {
        let f = fx.family;
        let evs = events(fx.stream.unwrap());
        let ends: Vec<usize> = (0..evs.len())
            .filter(|&i| is_stream_end(f, &evs[i]))
            .collect();
        if f == Family::Gemini {
            assert!(ends.is_empty(), "Gemini ends at connection close");
            assert_eq!(f.stream_end(), StreamEnd::ConnectionClose);
        } else {
            assert_eq!(
                ends,
                [evs.len() - 1],
                "{f:?}: only the last event ends the stream"
            );
        }
        assert_eq!(tally(f, fx.stream.unwrap()).ended(), f != Family::Gemini);
    }
    // Without `event:` lines, the data's `type` decides.
    assert!(is_stream_end(
        Family::AnthropicMessages,
        &ev(None, r#"{"type":"message_stop"}"#)
    ));
    assert!(is_stream_end(
        Family::OpenAiResponses,
        &ev(None, r#"{"type":"response.incomplete","response":{}}"#)
    ));
    assert!(!is_stream_end(
        Family::OpenAiResponses,
        &ev(Some("response.created"), "{}")
    ));
    assert!(is_stream_end(Family::OpenAiChat, &ev(None, "[DONE]")));
    assert!(!is_stream_end(
        Family::OpenAiChat,
        &ev(None, r#"{"choices":[]}"#)
    ));
    assert!(!is_stream_end(
        Family::AnthropicMessages,
        &ev(None, "[DONE]")
    ));
    assert!(!is_stream_end(Family::Sourcegraph, &ev(None, "{}")));
}

#[test]
fn usage_of_streams_matches_the_whole_responses() {
    for fx in fixtures::ALL.iter().filter(|f| f.stream.is_some()) {
        let f = fx.family;
        let streamed = tally(f, fx.stream.unwrap()).usage();
        let whole = response_usage(f, fx.response).unwrap().unwrap();
        if f == Family::OpenAiCompletions {
            // Copilot ghost text streams carry no usage: not measured, not 0.
            assert!(streamed.is_empty());
            assert_eq!(streamed.tokens_in, None);
        } else {
            assert_eq!(streamed, whole, "{f:?}");
        }
    }
    let u = |f| tally(f, fixtures::get(f).stream.unwrap()).usage();
    assert_eq!(
        u(Family::AnthropicMessages),
        Usage {
            tokens_in: Some(1245),
            tokens_out: Some(38),
            cached_in: Some(1200),
            cache_write: Some(0)
        }
    );
    let chat = u(Family::OpenAiChat);
    assert_eq!(
        (chat.tokens_in, chat.tokens_out, chat.cached_in),
        (Some(182), Some(31), Some(128))
    );
    let gemini = u(Family::Gemini);
    assert_eq!((gemini.tokens_in, gemini.tokens_out), (Some(402), Some(19)));
    let responses = u(Family::OpenAiResponses);
    assert_eq!(
        (responses.tokens_in, responses.tokens_out),
        (Some(311), Some(23))
    );
}

#[test]
fn deltas_skip_non_text_events() {
    let collect = |f, e: &SseEvent| {
        let mut v = Vec::new();
        for_each_delta(f, e, |d| v.push((d.index, d.text.into_owned(), d.snapshot))).unwrap();
        v
    };
    let a = Family::AnthropicMessages;
    assert!(collect(a, &ev(Some("content_block_delta"), r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hmm"}}"#)).is_empty());
    assert!(collect(a, &ev(Some("content_block_delta"), r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"a\""}}"#)).is_empty());
    assert!(collect(a, &ev(Some("ping"), r#"{"type": "ping"}"#)).is_empty());
    let r = Family::OpenAiResponses;
    assert!(collect(
        r,
        &ev(
            Some("response.function_call_arguments.delta"),
            r#"{"type":"response.function_call_arguments.delta","delta":"{\"x\""}"#
        )
    )
    .is_empty());
    assert!(collect(
        r,
        &ev(
            Some("response.reasoning_summary_text.delta"),
            r#"{"delta":"thinking"}"#
        )
    )
    .is_empty());
    let c = Family::OpenAiChat;
    assert!(collect(c, &ev(None, r#"{"choices":[{"index":0,"delta":{"content":null,"tool_calls":[{"index":0,"function":{"arguments":"{}"}}]}}]}"#)).is_empty());
    // Azure's first chunk: prompt filter results, no choices.
    assert!(collect(c, &ev(None, r#"{"choices":[],"prompt_filter_results":[{"prompt_index":0,"content_filter_results":{}}]}"#)).is_empty());
    // Copilot side-channel chunks without choices.
    assert!(collect(
        c,
        &ev(None, r#"{"copilot_references":[{"type":"file","id":"x"}]}"#)
    )
    .is_empty());
    assert!(collect(c, &ev(None, "[DONE]")).is_empty());
    // Escaped text arrives decoded.
    assert_eq!(
        collect(
            c,
            &ev(
                None,
                r#"{"choices":[{"index":2,"delta":{"content":"a\nb \u00e9"}}]}"#
            )
        ),
        [(2, "a\nb é".to_owned(), false)]
    );
    // Broken JSON in a text-bearing event is an error, not a panic.
    assert!(for_each_delta(c, &ev(None, "{\"choices\":[{"), |_| {}).is_err());
}

#[test]
fn sourcegraph_legacy_snapshots_replace_the_text() {
    // api-version 1: `completion` is the whole text so far.
    let input = b"event: completion\ndata: {\"completion\":\"Hel\"}\n\nevent: completion\ndata: {\"completion\":\"Hello, wor\"}\n\nevent: completion\ndata: {\"completion\":\"Hello, world\",\"stopReason\":\"stop\"}\n\nevent: done\ndata: {}\n\n";
    let t = tally(Family::Sourcegraph, input);
    assert_eq!(t.text(0), "Hello, world");
    assert!(t.ended());
    let e = ev(Some("completion"), r#"{"completion":"Hel"}"#);
    let mut snapshots = Vec::new();
    for_each_delta(Family::Sourcegraph, &e, |d| snapshots.push(d.snapshot)).unwrap();
    assert_eq!(snapshots, [true]);
}

#[test]
fn mid_stream_errors_are_detected() {
    let t = tally(Family::AnthropicMessages, fixtures::ANTHROPIC_STREAM_ERROR);
    assert_eq!(t.text(0), "Let me");
    assert!(!t.ended());
    assert_eq!(
        t.fault(),
        Some(&StreamFault {
            code: Some("overloaded_error".into()),
            message: "Overloaded".into()
        })
    );

    /// Family, event name, data, expected code, expected message.
    type Case = (
        Family,
        Option<&'static str>,
        &'static str,
        Option<&'static str>,
        &'static str,
    );
    let cases: [Case; 7] = [
        (
            Family::OpenAiChat,
            None,
            r#"{"error":{"message":"The server had an error","type":"server_error","param":null,"code":null}}"#,
            Some("server_error"),
            "The server had an error",
        ),
        (
            Family::OpenAiChat,
            None,
            r#"{"choices":[],"copilot_errors":[{"type":"reference","code":"content_filtered","message":"Response filtered","identifier":"x"}]}"#,
            Some("content_filtered"),
            "Response filtered",
        ),
        (
            Family::Gemini,
            None,
            r#"{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}"#,
            Some("UNAVAILABLE"),
            "The model is overloaded.",
        ),
        (
            Family::Sourcegraph,
            Some("error"),
            r#"{"error":"rate limit exceeded"}"#,
            None,
            "rate limit exceeded",
        ),
        (
            Family::OpenAiResponses,
            Some("error"),
            r#"{"type":"error","code":"ERR_SOMETHING","message":"Something went wrong","param":null,"sequence_number":1}"#,
            Some("ERR_SOMETHING"),
            "Something went wrong",
        ),
        (
            Family::OpenAiResponses,
            Some("response.failed"),
            r#"{"type":"response.failed","response":{"status":"failed","error":{"code":"server_error","message":"boom"},"usage":null}}"#,
            Some("server_error"),
            "boom",
        ),
        (
            Family::Sourcegraph,
            Some("error"),
            "not json",
            None,
            "not json",
        ),
    ];
    for (f, name, data, code, message) in cases {
        let fault = stream_fault(f, &ev(name, data)).unwrap_or_else(|| panic!("{data}"));
        assert_eq!(fault.code.as_deref(), code, "{data}");
        assert_eq!(fault.message, message, "{data}");
    }
    // `response.failed` also ends a Responses stream.
    assert!(is_stream_end(
        Family::OpenAiResponses,
        &ev(
            Some("response.failed"),
            r#"{"type":"response.failed","response":{}}"#
        )
    ));
}

#[test]
fn ordinary_events_are_not_errors() {
    for (_, f, input) in fixtures::streams() {
        for e in events(input) {
            if e.event() == Some("error") {
                continue;
            }
            assert_eq!(stream_fault(f, &e), None, "{:?}", e.data());
        }
    }
    let f = Family::OpenAiChat;
    for data in [
        r#"{"choices":[{"index":0,"delta":{"content":"say \"error\" twice"}}]}"#,
        r#"{"choices":[],"error":null}"#,
        r#"{"choices":[{"delta":{"content":"\"error\": 1"}}]}"#,
    ] {
        assert_eq!(stream_fault(f, &ev(None, data)), None, "{data}");
    }
}

#[test]
fn peer_indexes_cannot_force_allocation() {
    let mut t = StreamTally::new(Family::OpenAiChat);
    t.observe(&ev(
        None,
        r#"{"choices":[{"index":4294967295,"delta":{"content":"x"}}]}"#,
    ));
    t.observe(&ev(
        None,
        r#"{"choices":[{"index":3,"delta":{"content":"y"}}]}"#,
    ));
    assert_eq!(t.choices(), 4);
    assert_eq!(t.text(3), "y");
    assert_eq!(t.text(4_000_000), "");
}

#[test]
fn a_fault_summary_is_one_short_line() {
    let f = StreamFault {
        code: Some("overloaded_error".into()),
        message: "Overloaded".into(),
    };
    assert_eq!(f.summary(), "overloaded_error: Overloaded");
    let f = StreamFault {
        code: None,
        message: format!("line one\nline two {}", "x".repeat(400)),
    };
    let s = f.summary();
    assert!(s.starts_with("line one line two x"), "{s}");
    assert!(s.ends_with('…') && s.chars().count() == 161, "{s}");
    let f = StreamFault {
        code: None,
        message: String::new(),
    };
    assert_eq!(f.summary(), "unspecified");
}

#[test]
fn tool_arguments_name_the_call_being_streamed_and_count_its_characters() {
    let chat = |d: &str| ev(None, d);
    let args = |slot, chars| Some(ToolArguments { slot, chars });
    let cases = [
        (
            Family::OpenAiChat,
            chat(
                r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":2,"function":{"arguments":"{\"a"}}]}}]}"#,
            ),
            args(2, 3),
        ),
        (
            Family::OpenAiChat,
            chat(
                r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"function":{"arguments":"{"}}]}}]}"#,
            ),
            args(0, 1),
        ),
        // Two calls in one chunk: the first names the slot, both count.
        (
            Family::OpenAiChat,
            chat(
                r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"function":{"arguments":"ab"}},{"index":2,"function":{"arguments":"cdé"}}]}}]}"#,
            ),
            args(1, 5),
        ),
        // Completion endpoints that stream the chat shape carry them too.
        (
            Family::FimChatShaped,
            chat(
                r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"xy"}}]}}]}"#,
            ),
            args(0, 2),
        ),
        (
            Family::OpenAiChat,
            chat(r#"{"choices":[{"index":0,"delta":{"content":"say \"tool_calls\""}}]}"#),
            None,
        ),
        (
            Family::OpenAiChat,
            chat(r#"{"choices":[{"index":0,"delta":{"tool_calls":[]}}]}"#),
            None,
        ),
        (
            Family::OpenAiResponses,
            ev(
                Some("response.function_call_arguments.delta"),
                r#"{"type":"response.function_call_arguments.delta","output_index":1,"delta":"{\"q\""}"#,
            ),
            args(1, 4),
        ),
        (
            Family::OpenAiResponses,
            ev(
                Some("response.output_text.delta"),
                r#"{"type":"response.output_text.delta","delta":"function_call_arguments.delta"}"#,
            ),
            None,
        ),
        (
            Family::AnthropicMessages,
            ev(
                Some("content_block_delta"),
                r#"{"type":"content_block_delta","index":3,"delta":{"type":"input_json_delta","partial_json":"{"}}"#,
            ),
            args(3, 1),
        ),
        (
            Family::AnthropicMessages,
            ev(
                Some("content_block_delta"),
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"input_json_delta"}}"#,
            ),
            None,
        ),
        // Unreadable past the gate: still read as arguments, slot 0.
        (
            Family::OpenAiChat,
            chat(
                r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":"1","function":{"arguments":"{"}}]}}]}"#,
            ),
            args(0, 0),
        ),
        (Family::Gemini, chat(r#"{"candidates":[]}"#), None),
    ];
    for (family, event, want) in cases {
        assert_eq!(tool_arguments(family, &event), want, "{family:?} {event:?}");
    }
}
