use super::*;
use crate::llm::family::Family;
use crate::llm::fixtures;
use serde_json::Value;

fn set(patterns: &[&str]) -> PointerSet {
    PointerSet::new(patterns).unwrap()
}

/// The pointers of the strings `sel` selects, in document order.
fn selected(doc: &[u8], sel: Selector<'_>) -> Vec<String> {
    let mut out = Vec::new();
    visit_strings(doc, sel, |p, _| out.push(p.to_pointer())).unwrap();
    out
}

fn decode(raw: &str) -> Result<String> {
    let mut s = String::new();
    decode_into(raw, 0, &mut s).map(|()| s)
}

#[test]
fn escapes_decode() {
    assert_eq!(
        decode(r#"a\"b\\c\/d\n\t\b\f\r\u0041\u00e9\ud83d\ude00"#).unwrap(),
        "a\"b\\c/d\n\t\u{8}\u{c}\rAé😀"
    );
    assert_eq!(decode(r"\uD83D\uDE00").unwrap(), "😀");
    assert_eq!(decode("plain ünïcode").unwrap(), "plain ünïcode");
    // A surrogate without its other half reads as U+FFFD.
    for (lone, text) in [
        (r"\ud83d", "\u{FFFD}"),
        (r"\ud83d\u0041", "\u{FFFD}A"),
        (r"\ude00", "\u{FFFD}"),
        (r"\ud83dx", "\u{FFFD}x"),
        (r"\ud83d\n", "\u{FFFD}\n"),
    ] {
        assert_eq!(decode(lone).unwrap(), text, "{lone}");
    }
    for bad in [r"\ud83d\u12", r"\x", r"\u12", r"\u12g4", "\\"] {
        assert!(
            matches!(decode(bad), Err(JsonTextError::InvalidEscape { .. })),
            "{bad}"
        );
    }
}

#[test]
fn escapes_round_trip() {
    let samples = [
        "",
        "plain",
        "quote \" backslash \\ slash /",
        "lines\nand\r\ntabs\t",
        "controls \u{0}\u{1}\u{8}\u{c}\u{1f}\u{7f}",
        "unicode é ☃ 😀 \u{2028}",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----\n",
    ];
    for s in samples {
        let mut enc = Vec::new();
        encode_str_into(s, &mut enc);
        let literal = format!("\"{}\"", std::str::from_utf8(&enc).unwrap());
        let via_serde: String = serde_json::from_str(&literal).unwrap();
        assert_eq!(via_serde, s);
        assert_eq!(decode(std::str::from_utf8(&enc).unwrap()).unwrap(), s);
        // serde_json's spelling of the same string decodes alike.
        let serde_lit = serde_json::to_string(s).unwrap();
        assert_eq!(decode(&serde_lit[1..serde_lit.len() - 1]).unwrap(), s);
    }
    let mut enc = Vec::new();
    encode_str_into("\u{1}\u{1f}", &mut enc);
    assert_eq!(enc, br"\u0001\u001f");
}

#[test]
fn pem_string_reaches_the_callback_decoded_and_is_replaced() {
    let doc = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"deploy key:\n-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\nthanks"}],"temperature":0.0}"#;
    let pointers = Family::OpenAiChat.prompt_pointers();
    let mut seen = Vec::new();
    let out = rewrite_strings(doc, Selector::Pointers(pointers), |s| {
        seen.push(s.to_owned());
        let start = s.find("-----BEGIN")?;
        let end = s.find("KEY-----\nthanks")? + "KEY-----".len();
        Some(format!(
            "{}[REDACTED:private_key]{}",
            &s[..start],
            &s[end..]
        ))
    })
    .unwrap();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].contains("KEY-----\nb3Bl"), "decoded newlines");
    let Cow::Owned(out) = out else {
        panic!("changed document must be owned")
    };
    let got: Value = serde_json::from_slice(&out).unwrap();
    let mut want: Value = serde_json::from_slice(doc).unwrap();
    want["messages"][0]["content"] = "deploy key:\n[REDACTED:private_key]\nthanks".into();
    assert_eq!(got, want);
    // Bytes around the string are untouched (`0.0` stays `0.0`).
    let text = std::str::from_utf8(&out).unwrap();
    assert!(text.starts_with(
        r#"{"model":"gpt-4o","messages":[{"role":"user","content":"deploy key:\n[REDACTED"#
    ));
    assert!(text.ends_with(r#"]\nthanks"}],"temperature":0.0}"#));
}

#[test]
fn unchanged_documents_are_borrowed_and_identical() {
    for fx in &fixtures::ALL {
        for doc in [fx.request, fx.response] {
            let mut calls = 0;
            let out = rewrite_strings(doc, Selector::AllStrings, |_| {
                calls += 1;
                None
            })
            .unwrap();
            assert!(matches!(out, Cow::Borrowed(_)), "{:?}", fx.family);
            assert_eq!(&*out, doc);
            assert!(calls > 0);
            // Returning the same text is "unchanged" too: escapes such as
            // `\/` and `\u00e9` keep their spelling.
            let out = rewrite_strings(doc, Selector::AllStrings, |s| Some(s.to_owned())).unwrap();
            assert!(matches!(out, Cow::Borrowed(_)), "{:?}", fx.family);
        }
    }
}

#[test]
fn changed_string_is_the_only_difference() {
    for fx in &fixtures::ALL {
        let doc = fx.request;
        let pointers = fx.family.prompt_pointers();
        let first = selected(doc, Selector::Pointers(pointers))
            .into_iter()
            .next()
            .unwrap();
        let replacement = "new \"text\"\nwith é and \\ and \u{1}";
        let out = rewrite_strings_at(doc, Selector::Pointers(pointers), |p, _| {
            (p.to_pointer() == first).then(|| replacement.to_owned())
        })
        .unwrap();
        let got: Value = serde_json::from_slice(&out).unwrap();
        let mut want: Value = serde_json::from_slice(doc).unwrap();
        *want.pointer_mut(&first).unwrap() = replacement.into();
        assert_eq!(got, want, "{:?}", fx.family);
        // Same prefix up to the string, same suffix after it.
        let prefix = doc
            .iter()
            .zip(out.iter())
            .take_while(|(a, b)| a == b)
            .count();
        let suffix = doc
            .iter()
            .rev()
            .zip(out.iter().rev())
            .take_while(|(a, b)| a == b)
            .count();
        // Every quote in the differing region is an escaped one: the change
        // stays inside one literal.
        for i in prefix..doc.len() - suffix {
            assert!(
                doc[i] != b'"' || doc[i - 1] == b'\\',
                "only the inside of one literal differs ({:?})",
                fx.family
            );
        }
    }
}

#[test]
fn family_prompt_pointers_select_exactly_the_prompt_text() {
    let expect: [(Family, &[&str]); 8] = [
        (
            Family::OpenAiChat,
            &[
                "/messages/0/content",
                "/messages/1/content/0/text",
                "/messages/2/tool_calls/0/function/arguments",
                "/messages/3/content",
                "/messages/4/content",
                "/tools/0/function/description",
            ],
        ),
        (
            Family::OpenAiCompletions,
            &["/prompt", "/suffix", "/extra/context/0"],
        ),
        (Family::FimChatShaped, &["/prompt", "/suffix"]),
        (
            Family::OpenAiResponses,
            &[
                "/instructions",
                "/input/0/content/0/text",
                "/input/1/arguments",
                "/input/2/output",
                "/input/3/content",
                "/tools/0/description",
            ],
        ),
        (
            Family::AnthropicMessages,
            &[
                "/system/0/text",
                "/messages/0/content",
                "/messages/1/content/0/text",
                "/messages/1/content/1/input/file_path",
                "/messages/1/content/2/input/file_path",
                "/messages/2/content/0/content",
                "/messages/2/content/1/content/0/text",
                "/messages/2/content/2/text",
            ],
        ),
        (
            Family::Gemini,
            &[
                "/contents/0/parts/0/text",
                "/contents/1/parts/0/text",
                "/contents/2/parts/1/text",
                "/systemInstruction/parts/0/text",
            ],
        ),
        (
            Family::Sourcegraph,
            &[
                "/messages/0/text",
                "/messages/1/text",
                "/messages/2/text",
                "/messages/3/content/0/text",
                "/messages/3/content/1/content",
            ],
        ),
        (Family::Embeddings, &["/input/0", "/input/1"]),
    ];
    for (family, want) in expect {
        let doc = fixtures::get(family).request;
        let got = selected(doc, Selector::Pointers(family.prompt_pointers()));
        assert_eq!(got, want, "{family:?}");
    }
}

/// Anthropic tool inputs and text documents, Gemini function call
/// arguments and results, Responses tool output parts: read as prompt; a
/// base64 source and inline data are not.
#[test]
fn family_prompt_pointers_read_tool_inputs_and_text_documents() {
    let anthropic = br#"{"messages":[{"role":"assistant","content":[
        {"type":"tool_use","id":"t","name":"Write","input":{"path":"a.rs","edits":[{"new":"fn x()"}],"n":3}}]},
        {"role":"user","content":[
        {"type":"document","source":{"type":"text","media_type":"text/plain","data":"file text"},"title":"a.txt"},
        {"type":"document","source":{"type":"content","content":"inline"}},
        {"type":"document","source":{"type":"content","content":[{"type":"text","text":"part"}]}},
        {"type":"document","source":{"type":"base64","media_type":"application/pdf","data":"JVBERi0="}},
        {"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBORw0="}},
        {"type":"tool_result","tool_use_id":"t","content":[
            {"type":"document","source":{"type":"text","media_type":"text/plain","data":"nested"}},
            {"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBO"}}]}]}]}"#;
    assert_eq!(
        selected(
            anthropic,
            Selector::Pointers(Family::AnthropicMessages.prompt_pointers())
        ),
        [
            "/messages/0/content/0/input/path",
            "/messages/0/content/0/input/edits/0/new",
            "/messages/1/content/0/source/data",
            "/messages/1/content/1/source/content",
            "/messages/1/content/2/source/content/0/text",
            "/messages/1/content/5/content/0/source/data",
        ]
    );
    let gemini = br#"{"contents":[{"role":"model","parts":[{"functionCall":{"name":"read","args":{"path":"x","opts":{"q":"y"}}}}]},
        {"role":"user","parts":[{"functionResponse":{"name":"read","response":{"content":"z"}}},
        {"inlineData":{"mimeType":"image/png","data":"iVBO"}}]}]}"#;
    assert_eq!(
        selected(gemini, Selector::Pointers(Family::Gemini.prompt_pointers())),
        [
            "/contents/0/parts/0/functionCall/args/path",
            "/contents/0/parts/0/functionCall/args/opts/q",
            "/contents/1/parts/0/functionResponse/response/content",
        ]
    );
    // The same fields in proto spelling, which Google's API accepts too.
    let snake = br#"{"system_instruction":{"parts":[{"text":"sys"}]},
        "contents":[{"role":"model","parts":[{"function_call":{"name":"read","args":{"path":"x"}}}]},
        {"role":"user","parts":[{"function_response":{"name":"read","response":{"content":"z"}}}]}],
        "tools":[{"function_declarations":[{"name":"read","description":"reads"}]}]}"#;
    assert_eq!(
        selected(snake, Selector::Pointers(Family::Gemini.prompt_pointers())),
        [
            "/system_instruction/parts/0/text",
            "/contents/0/parts/0/function_call/args/path",
            "/contents/1/parts/0/function_response/response/content",
            "/tools/0/function_declarations/0/description",
        ]
    );
    let responses = br#"{"input":[{"type":"function_call_output","call_id":"c","output":[{"type":"input_text","text":"out"}]}]}"#;
    assert_eq!(
        selected(
            responses,
            Selector::Pointers(Family::OpenAiResponses.prompt_pointers())
        ),
        ["/input/0/output/0/text"]
    );
}

/// The tool calls a model makes are output as much as its text.
#[test]
fn family_output_pointers_read_tool_call_arguments() {
    let cases: [(Family, &[u8], &[&str]); 4] = [
        (
            Family::OpenAiChat,
            br#"{"choices":[{"message":{"content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]}}]}"#,
            &["/choices/0/message/tool_calls/0/function/arguments"],
        ),
        (
            Family::OpenAiResponses,
            br#"{"output":[{"type":"function_call","call_id":"c","name":"f","arguments":"{}"}]}"#,
            &["/output/0/arguments"],
        ),
        (
            Family::AnthropicMessages,
            br#"{"content":[{"type":"text","text":"t"},{"type":"tool_use","id":"x","name":"f","input":{"a":{"b":"c"}}}]}"#,
            &["/content/0/text", "/content/1/input/a/b"],
        ),
        (
            Family::Gemini,
            br#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"f","args":{"a":"b"}}}]}}]}"#,
            &["/candidates/0/content/parts/0/functionCall/args/a"],
        ),
    ];
    for (family, doc, want) in cases {
        let got = selected(doc, Selector::Pointers(family.output_pointers()));
        assert_eq!(got, want, "{family:?}");
    }
}

#[test]
fn family_output_pointers_select_the_output_text() {
    let expect: [(Family, &[&str]); 8] = [
        (Family::OpenAiChat, &["/choices/0/message/content"]),
        (
            Family::OpenAiCompletions,
            &["/choices/0/text", "/choices/1/text"],
        ),
        (Family::FimChatShaped, &["/choices/0/message/content"]),
        (Family::OpenAiResponses, &["/output/0/content/0/text"]),
        (
            Family::AnthropicMessages,
            &["/content/1/text", "/content/2/text"],
        ),
        (Family::Gemini, &["/candidates/0/content/parts/0/text"]),
        (Family::Sourcegraph, &["/completion"]),
        (Family::Embeddings, &[]),
    ];
    for (family, want) in expect {
        let doc = fixtures::get(family).response;
        let got = selected(doc, Selector::Pointers(family.output_pointers()));
        assert_eq!(got, want, "{family:?}");
    }
}

#[test]
fn pointer_patterns() {
    let doc = br#"{"a":{"b/c":"slash","m~n":"tilde","0":"zero-key"},"l":["x",["y","z"]],"o":{"k1":"v1","k2":2}}"#;
    let sel = |p: &[&str]| selected(doc, Selector::Pointers(&set(p)));
    assert_eq!(sel(&["/a/b~1c", "/a/m~0n"]), ["/a/b~1c", "/a/m~0n"]);
    assert_eq!(sel(&["/a/0", "/l/0"]), ["/a/0", "/l/0"]);
    assert_eq!(sel(&["/l/*"]), ["/l/0"], "containers are not selected");
    assert_eq!(sel(&["/l/*/*"]), ["/l/1/0", "/l/1/1"]);
    assert_eq!(sel(&["/o/*"]), ["/o/k1"], "`*` also spans object members");
    assert_eq!(sel(&["/nope", "/a/b"]), Vec::<String>::new());
    assert_eq!(selected(br#""top""#, Selector::Pointers(&set(&[""]))), [""]);
    assert_eq!(
        selected(doc, Selector::AllStrings),
        ["/a/b~1c", "/a/m~0n", "/a/0", "/l/0", "/l/1/0", "/l/1/1", "/o/k1"]
    );
    // A member name spelled with escapes still matches.
    let doc = br#"{"mess\u0061ges":[{"content":"hi"}]}"#;
    assert_eq!(
        selected(
            doc,
            Selector::Pointers(Family::OpenAiChat.prompt_pointers())
        ),
        ["/messages/0/content"]
    );
    // `01` is a member name, not an index.
    assert_eq!(
        selected(br#"["a","b"]"#, Selector::Pointers(&set(&["/01", "/1"]))),
        ["/1"]
    );
}

#[test]
fn recursive_wildcard_selects_every_string_below() {
    let doc = br#"{"a":{"in":{"p":"x","n":[1,"y",{"deep":"z"}],"k":true}},"b":"s","in":"top"}"#;
    let sel = |p: &[&str]| selected(doc, Selector::Pointers(&set(p)));
    assert_eq!(
        sel(&["/a/in/**"]),
        ["/a/in/p", "/a/in/n/1", "/a/in/n/2/deep"]
    );
    // `**` may stand for no segment: a string right at the path counts.
    assert_eq!(sel(&["/in/**", "/b/**"]), ["/b", "/in"]);
    assert_eq!(
        sel(&["/*/in/**"]),
        ["/a/in/p", "/a/in/n/1", "/a/in/n/2/deep"]
    );
    assert_eq!(
        sel(&["/**"]),
        selected(doc, Selector::AllStrings),
        "`/**` is every string"
    );
    // Mixed with plain patterns in one set, each keeps its meaning.
    assert_eq!(
        sel(&["/b", "/a/in/n/**"]),
        ["/a/in/n/1", "/a/in/n/2/deep", "/b"]
    );
}

#[test]
fn conditions_select_by_a_member_of_the_object() {
    let doc = br#"[{"source":{"type":"text","data":"plain"}},
        {"source":{"data":"late","type":"text"}},
        {"source":{"type":"base64","data":"aGk="}},
        {"source":{"type":"tex\u0074","data":"escaped"}},
        {"source":{"type":"base64","type":"text","data":"twice"}},
        {"source":{"type":1,"data":"number"}},
        {"source":"text"},
        {"source":{"data":"no type"}}]"#;
    let sel = |p: &[&str]| selected(doc, Selector::Pointers(&set(p)));
    assert_eq!(
        sel(&["/*/source[type=text]/data"]),
        [
            "/0/source/data",
            "/1/source/data",
            "/3/source/data",
            "/4/source/data"
        ]
    );
    // A condition on a segment that lands on a string never holds.
    assert_eq!(sel(&["/*/source[type=text]"]), Vec::<String>::new());
    // Conditions and `**` combine; an unconditioned pattern is unaffected.
    assert_eq!(
        sel(&["/*[source=text]/**", "/7/source/data"]),
        ["/6/source", "/7/source/data"]
    );
    // Conditions on arrays fail; a malformed object fails its condition
    // and the walk reports the error.
    assert_eq!(
        selected(br#"{"a":["x"]}"#, Selector::Pointers(&set(&["/a[t=x]/0"]))),
        Vec::<String>::new()
    );
    let err = visit_strings(
        br#"{"a":{"t":"x","d":"v",}}"#,
        Selector::Pointers(&set(&["/a[t=x]/d"])),
        |_, _| {},
    );
    assert!(err.is_err());
}

#[test]
fn bad_patterns_are_refused() {
    for p in [
        "a",
        "a/b",
        "/~2",
        "/x~",
        "/a/**/b",
        "/a/**[t=x]",
        "/a[t]",
        "/a[=x]",
        "/a[t~2=x]",
    ] {
        let e = PointerSet::new([p]).unwrap_err();
        assert_eq!(e.kind(), "bad_pointer_pattern", "{p}");
    }
    let many: Vec<String> = (0..=MAX_PATTERNS).map(|i| format!("/{i}")).collect();
    assert_eq!(
        PointerSet::new(&many).unwrap_err(),
        JsonTextError::TooManyPatterns { max: MAX_PATTERNS }
    );
    assert_eq!(PointerSet::new(&many[..MAX_PATTERNS]).unwrap().len(), 64);
}

#[test]
fn sixty_four_patterns_all_work() {
    let patterns: Vec<String> = (0..MAX_PATTERNS).map(|i| format!("/k{i}")).collect();
    let set = PointerSet::new(&patterns).unwrap();
    let doc = r#"{"k0":"a","k63":"b","k64":"c"}"#;
    assert_eq!(
        selected(doc.as_bytes(), Selector::Pointers(&set)),
        ["/k0", "/k63"]
    );
}

#[test]
fn malformed_json_is_an_error() {
    let bad: &[&[u8]] = &[
        b"",
        b"   ",
        b"{",
        b"}",
        b"[1,]",
        b"[,1]",
        b"{\"a\" 1}",
        b"{\"a\":}",
        b"{\"a\":1,}",
        b"{a:1}",
        b"{\"a\":1}}",
        b"{\"a\":1} x",
        b"[01]",
        b"[1.]",
        b"[.5]",
        b"[1e]",
        b"[-]",
        b"[+1]",
        b"[tru]",
        b"[nul]",
        b"[True]",
        b"[\"a\nb\"]",
        b"[\"\\q\"]",
        b"[\"\\u12\"]",
        b"\"abc",
        b"[\"abc\\",
        b"\xEF\xBB\xBF{}",
        b"{\"a\":1}\x00",
        b"[1 2]",
        b"NaN",
    ];
    for doc in bad {
        assert!(
            rewrite_strings(doc, Selector::AllStrings, |_| None).is_err(),
            "{:?}",
            String::from_utf8_lossy(doc)
        );
    }
    for good in [
        &b"0"[..],
        b"-0.5e+3",
        b" [] ",
        b"{}",
        b"\"\"",
        b"[true,false,null]",
    ] {
        assert!(rewrite_strings(good, Selector::AllStrings, |_| None).is_ok());
    }
}

#[test]
fn raw_control_characters_are_refused_wherever_they_are() {
    let long = "x".repeat(100);
    let control = |offset| JsonTextError::Syntax {
        offset,
        expected: "no raw control character in a string",
    };
    let cases = [
        // Far from either end of the string, and after an escape.
        (format!("[\"{long}\u{1}{long}\"]"), control(102)),
        (format!("[\"{long}\\n{long}\u{1f}\"]"), control(204)),
        // In a string that never ends: the character is what is wrong.
        (format!("[\"{long}\u{1}{long}"), control(102)),
        (format!("[\"{long}"), JsonTextError::UnexpectedEnd),
    ];
    for (doc, want) in cases {
        let got = rewrite_strings(doc.as_bytes(), Selector::AllStrings, |_| None).unwrap_err();
        assert_eq!(got, want, "{doc:?}");
    }
    // DEL and everything above 0x1f may appear raw.
    let doc = format!("[\"{long}\u{7f} \\\" é{long}\"]");
    let mut seen = Vec::new();
    rewrite_strings(doc.as_bytes(), Selector::AllStrings, |s| {
        seen.push(s.to_string());
        None
    })
    .unwrap();
    assert_eq!(seen, [format!("{long}\u{7f} \" é{long}")]);
}

#[test]
fn every_truncation_of_every_fixture_is_an_error() {
    for fx in &fixtures::ALL {
        for doc in [fx.request, fx.response] {
            let end = doc.trim_ascii_end().len();
            for n in 0..end {
                let r = rewrite_strings(&doc[..n], Selector::AllStrings, |_| None);
                assert!(r.is_err(), "{:?} cut at {n}", fx.family);
            }
        }
    }
    assert_eq!(
        rewrite_strings(b"{\"a\":\"x", Selector::AllStrings, |_| None).unwrap_err(),
        JsonTextError::UnexpectedEnd
    );
}

#[test]
fn nesting_is_bounded() {
    let nest = |n: usize| format!("{}\"s\"{}", "[".repeat(n), "]".repeat(n));
    assert!(rewrite_strings(nest(MAX_DEPTH).as_bytes(), Selector::AllStrings, |_| None).is_ok());
    assert_eq!(
        rewrite_strings(nest(MAX_DEPTH + 1).as_bytes(), Selector::AllStrings, |_| {
            None
        })
        .unwrap_err(),
        JsonTextError::TooDeep { max: MAX_DEPTH }
    );
    // Far deeper input fails at the limit, without exhausting the stack.
    let deep = "{\"a\":".repeat(200_000);
    assert_eq!(
        rewrite_strings(deep.as_bytes(), Selector::AllStrings, |_| None).unwrap_err(),
        JsonTextError::TooDeep { max: MAX_DEPTH }
    );
}

#[test]
fn invalid_utf8_is_an_error() {
    let doc = b"{\"content\":\"caf\xC3\"}";
    assert_eq!(
        rewrite_strings(doc, Selector::AllStrings, |_| None).unwrap_err(),
        JsonTextError::InvalidUtf8 { offset: 15 }
    );
}

/// A surrogate without its other half (JavaScript writes one for a string
/// cut inside an emoji) reads as U+FFFD: the document is still readable,
/// the text around it is checked, and an unchanged string keeps its bytes.
#[test]
fn lone_surrogates_read_as_replacement_characters() {
    let doc = br#"{"messages":[{"content":"cut \ud83d here"}],"other":"\udc00","k":"v"}"#;
    let mut seen = Vec::new();
    visit_strings(doc, Selector::AllStrings, |_, s| seen.push(s.to_owned())).unwrap();
    assert_eq!(seen, ["cut \u{FFFD} here", "\u{FFFD}", "v"]);
    let out = rewrite_strings(doc, Selector::AllStrings, |s| {
        (s == "v").then(|| "w".to_owned())
    })
    .unwrap();
    assert_eq!(
        &*out,
        br#"{"messages":[{"content":"cut \ud83d here"}],"other":"\udc00","k":"w"}"#
    );
    let out = rewrite_strings(doc, Selector::AllStrings, |s| {
        s.contains("here").then(|| s.replace("here", "there"))
    })
    .unwrap();
    let mut seen = Vec::new();
    visit_strings(&out, Selector::AllStrings, |_, s| seen.push(s.to_owned())).unwrap();
    assert_eq!(seen, ["cut \u{FFFD} there", "\u{FFFD}", "v"]);
    assert!(out.windows(6).any(|w| w == br"\udc00"), "untouched");
}

/// Mutated fixtures: the walker never panics, accepts exactly what
/// serde_json accepts, and keeps unchanged documents byte-identical.
#[test]
fn mutations_agree_with_serde_json() {
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let alphabet = b"{}[]\",:\\/u0123456789eE+-.tfnl \n\x01\xC3\xA9";
    for fx in &fixtures::ALL {
        for doc in [fx.request, fx.response] {
            for _ in 0..300 {
                let mut d = doc.to_vec();
                for _ in 0..(next() % 3 + 1) {
                    let i = (next() as usize) % d.len();
                    match next() % 3 {
                        0 => d[i] = alphabet[(next() as usize) % alphabet.len()],
                        1 => {
                            d.remove(i);
                        }
                        _ => d.insert(i, alphabet[(next() as usize) % alphabet.len()]),
                    }
                }
                let ours = rewrite_strings(&d, Selector::AllStrings, |_| None);
                // Oracle: serde_json's grammar check, plus its decoding of
                // strings (lone surrogates); JSON sets no number range, so
                // serde's "number out of range" still counts as valid.
                let grammar = serde_json::from_slice::<serde::de::IgnoredAny>(&d);
                let theirs = serde_json::from_slice::<Value>(&d);
                // A lone surrogate, which serde_json refuses, reads as
                // U+FFFD here (see above).
                let tolerated = |e: &serde_json::Error| {
                    let e = e.to_string();
                    e.contains("number out of range")
                        || e.contains("surrogate")
                        || e.contains("end of hex escape")
                };
                let theirs_ok = grammar.as_ref().map_or_else(tolerated, |_| true)
                    && theirs.as_ref().map_or_else(tolerated, |_| true);
                assert_eq!(
                    ours.is_ok(),
                    theirs_ok,
                    "{:?}: ours {:?} serde {:?} on {}",
                    fx.family,
                    ours.as_ref().err(),
                    theirs.as_ref().err(),
                    String::from_utf8_lossy(&d)
                );
                if let Ok(out) = ours {
                    assert_eq!(&*out, &d[..]);
                }
            }
        }
    }
}
