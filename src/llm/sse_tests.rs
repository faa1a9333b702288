use super::*;
use crate::llm::fixtures;

/// A frame as the tests compare it: raw bytes and parsed fields.
#[derive(Debug, Clone, PartialEq, Eq)]
struct View {
    raw: Vec<u8>,
    event: Option<String>,
    data: Option<String>,
    id: Option<String>,
    retry: Option<u64>,
}

impl From<&SseEvent> for View {
    fn from(e: &SseEvent) -> Self {
        View {
            raw: e.raw().to_vec(),
            event: e.event().map(str::to_owned),
            data: e.data().map(str::to_owned),
            id: e.id().map(str::to_owned),
            retry: e.retry(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Out {
    Frame(View),
    TooLarge,
    Incomplete(View),
}

fn drain(d: &mut SseDecoder, out: &mut Vec<Out>) {
    while let Some(r) = d.next_event() {
        out.push(match r {
            Ok(e) => Out::Frame(View::from(&e)),
            Err(SseError::EventTooLarge { .. }) => Out::TooLarge,
            Err(SseError::Incomplete(e)) => Out::Incomplete(View::from(&*e)),
        });
    }
}

/// Feeds `chunks`, draining after each, then finishes.
fn run<'a>(chunks: impl IntoIterator<Item = &'a [u8]>, max: usize) -> Vec<Out> {
    let mut d = SseDecoder::with_max_event_size(max);
    let mut out = Vec::new();
    for c in chunks {
        d.feed(c);
        drain(&mut d, &mut out);
    }
    d.finish();
    drain(&mut d, &mut out);
    out
}

fn whole(input: &[u8]) -> Vec<Out> {
    run([input], DEFAULT_MAX_EVENT_SIZE)
}

fn frames(out: &[Out]) -> Vec<View> {
    out.iter()
        .map(|o| match o {
            Out::Frame(v) => v.clone(),
            other => panic!("unexpected {other:?}"),
        })
        .collect()
}

fn data_of(input: &[u8]) -> Vec<Option<String>> {
    frames(&whole(input)).into_iter().map(|v| v.data).collect()
}

/// Every two-chunk split and a byte-at-a-time feed give the same outcome.
fn assert_split_invariant(name: &str, input: &[u8], max: usize) -> Vec<Out> {
    let want = run([input], max);
    for cut in 0..=input.len() {
        let (a, b) = input.split_at(cut);
        assert_eq!(run([a, b], max), want, "{name}: split at {cut}");
    }
    assert_eq!(
        run(input.chunks(1), max),
        want,
        "{name}: one byte at a time"
    );
    assert_eq!(run(input.chunks(7), max), want, "{name}: 7-byte chunks");
    want
}

#[test]
fn fixtures_decode_alike_under_every_split_and_reproduce_their_bytes() {
    for (name, _, input) in fixtures::streams() {
        let out = assert_split_invariant(name, input, DEFAULT_MAX_EVENT_SIZE);
        let views = frames(&out);
        let concat: Vec<u8> = views.iter().flat_map(|v| v.raw.clone()).collect();
        assert_eq!(concat, input, "{name}: raw bytes reproduce the stream");
        let events = views.iter().filter(|v| v.data.is_some()).count();
        assert!(events >= 3, "{name}: {events} events");
        for v in views.iter().filter(|v| v.data.is_some()) {
            let d = v.data.as_deref().unwrap();
            assert!(
                d == "[DONE]" || serde_json::from_str::<serde_json::Value>(d).is_ok(),
                "{name}: data is JSON: {d}"
            );
        }
    }
}

#[test]
fn fixture_specifics() {
    // `data:` with no space (Copilot fixture), CRLF (Gemini), comments (OpenAI).
    let ghost = frames(&whole(
        fixtures::get(crate::llm::family::Family::OpenAiCompletions)
            .stream
            .unwrap(),
    ));
    assert!(ghost[0].data.as_deref().unwrap().starts_with("{\"id\""));
    assert_eq!(ghost.last().unwrap().data.as_deref(), Some("[DONE]"));

    let gemini = frames(&whole(
        fixtures::get(crate::llm::family::Family::Gemini)
            .stream
            .unwrap(),
    ));
    assert_eq!(gemini.len(), 3);
    assert!(gemini.iter().all(|v| v.raw.ends_with(b"}\r\n\r\n")));
    assert!(gemini
        .iter()
        .all(|v| !v.data.as_deref().unwrap().contains('\r')));

    let chat = frames(&whole(
        fixtures::get(crate::llm::family::Family::OpenAiChat)
            .stream
            .unwrap(),
    ));
    let comment = chat.iter().find(|v| v.raw.starts_with(b":")).unwrap();
    assert_eq!(comment.raw, b": keep-alive\n\n");
    assert_eq!(
        (comment.data.as_deref(), comment.event.as_deref()),
        (None, None)
    );

    let anthropic = frames(&whole(
        fixtures::get(crate::llm::family::Family::AnthropicMessages)
            .stream
            .unwrap(),
    ));
    assert_eq!(anthropic[0].event.as_deref(), Some("message_start"));
    assert_eq!(
        anthropic.last().unwrap().event.as_deref(),
        Some("message_stop")
    );
}

#[test]
fn field_parsing_follows_whatwg() {
    assert_eq!(data_of(b"data:x\n\n"), [Some("x".into())]);
    assert_eq!(data_of(b"data: x\n\n"), [Some("x".into())]);
    assert_eq!(
        data_of(b"data:  x\n\n"),
        [Some(" x".into())],
        "only one space"
    );
    assert_eq!(
        data_of(b"data: a\ndata:b\ndata\n\n"),
        [Some("a\nb\n".into())]
    );
    assert_eq!(data_of(b"data\n\n"), [Some(String::new())]);
    assert_eq!(data_of(b"data:\n\n"), [Some(String::new())]);
    assert_eq!(data_of(b"data: a\rdata: b\r\r"), [Some("a\nb".into())]);
    assert_eq!(
        data_of(b"data: a\r\n\r\ndata: b\n\ndata: c\r\r"),
        [Some("a".into()), Some("b".into()), Some("c".into())]
    );
    assert_eq!(
        data_of(b"Data: x\n\n"),
        [None],
        "field names are case-sensitive"
    );
    assert_eq!(data_of(b"\xEF\xBB\xBFdata: bom\n\n"), [Some("bom".into())]);
    assert_eq!(data_of(b"data: \xFFx\n\n"), [Some("\u{FFFD}x".into())]);

    let v = frames(&whole(
        b": comment\nevent: completion\nid: 7\nretry: 3000\nfoo: bar\ndata: {}\n\n",
    ));
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].event.as_deref(), Some("completion"));
    assert_eq!(v[0].id.as_deref(), Some("7"));
    assert_eq!(v[0].retry, Some(3000));
    assert_eq!(v[0].data.as_deref(), Some("{}"));

    let v = frames(&whole(b"event:\nid: a\0b\nretry: 3s\ndata: x\n\n"));
    assert_eq!(
        (v[0].event.as_deref(), v[0].id.as_deref(), v[0].retry),
        (None, None, None)
    );
}

#[test]
fn frames_without_data_are_yielded_for_forwarding() {
    let input = b"data: a\n\n\n: ping\n\nevent: x\n\ndata: b\n\n";
    let v = frames(&whole(input));
    let raws: Vec<&[u8]> = v.iter().map(|f| &f.raw[..]).collect();
    assert_eq!(
        raws,
        [
            &b"data: a\n\n"[..],
            b"\n",
            b": ping\n\n",
            b"event: x\n\n",
            b"data: b\n\n"
        ]
    );
    let with_data: Vec<_> = v.iter().map(|f| f.data.is_some()).collect();
    assert_eq!(with_data, [true, false, false, false, true]);
    assert_split_invariant("blank frames", input, 1024);
}

#[test]
fn end_of_stream() {
    assert_eq!(whole(b""), []);
    // A final `\r` completes its line at EOF, however the input was cut.
    let out = assert_split_invariant("cr at eof", b"data: x\r\r", 1024);
    assert_eq!(frames(&out).len(), 1);
    // A missing final blank line is reported, with the fields parsed so far.
    let out = assert_split_invariant("no blank line", b"data: a\n\ndata: [DONE]\n", 1024);
    assert_eq!(out.len(), 2);
    let Out::Incomplete(v) = &out[1] else {
        panic!("{out:?}")
    };
    assert_eq!(v.raw, b"data: [DONE]\n");
    assert_eq!(v.data.as_deref(), Some("[DONE]"));
    // An unterminated last line too.
    let out = whole(b"event: done\ndata: {}");
    let Out::Incomplete(v) = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(
        (v.event.as_deref(), v.data.as_deref()),
        (Some("done"), Some("{}"))
    );
    assert_eq!(v.raw, b"event: done\ndata: {}");

    let mut d = SseDecoder::new();
    d.feed(b"data: partial");
    d.finish();
    let err = d.next_event().unwrap().unwrap_err();
    assert_eq!(err.kind(), "sse_incomplete_event");
    assert!(d.next_event().is_none());
    d.feed(b"ignored after finish\n\n");
    assert!(d.next_event().is_none());
}

#[test]
fn oversized_events_stop_the_decoder_without_buffering() {
    let small = b"data: ok\n\n";
    let mut big = b"data: ".to_vec();
    big.extend(std::iter::repeat_n(b'x', 100));
    big.extend_from_slice(b"\n\ndata: after\n\n");
    let mut input = small.to_vec();
    input.extend_from_slice(&big);

    let out = assert_split_invariant("too large", &input, 64);
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(matches!(out[0], Out::Frame(_)));
    assert_eq!(out[1], Out::TooLarge);

    // A frame of exactly the limit passes.
    let exact = b"data: 12345\n\n";
    assert_eq!(frames(&run([&exact[..]], exact.len())).len(), 1);
    assert_eq!(run([&exact[..]], exact.len() - 1), [Out::TooLarge]);

    // An endless line is refused as soon as it passes the limit.
    let mut d = SseDecoder::with_max_event_size(64);
    let mut errors = 0;
    for _ in 0..1000 {
        d.feed(&[b'y'; 16]);
        while let Some(r) = d.next_event() {
            assert_eq!(r.unwrap_err().kind(), "sse_event_too_large");
            errors += 1;
        }
        assert!(d.pending_len() <= 64 + 16);
    }
    assert_eq!(errors, 1);
    let pending = d.take_pending();
    assert!(pending.len() > 64 && pending.iter().all(|&b| b == b'y'));
    assert_eq!(d.pending_len(), 0);
}

#[test]
fn long_lines_fed_byte_by_byte_stay_linear() {
    // 512 KiB in one data line, one byte per feed: quadratic rescanning
    // would take minutes here.
    let mut input = b"data: ".to_vec();
    input.extend(std::iter::repeat_n(b'z', 512 * 1024));
    input.extend_from_slice(b"\n\n");
    let mut d = SseDecoder::new();
    let mut n = 0;
    for b in input.chunks(1) {
        d.feed(b);
        while let Some(r) = d.next_event() {
            assert_eq!(r.unwrap().data().map(str::len), Some(512 * 1024));
            n += 1;
        }
    }
    assert_eq!(n, 1);
}
