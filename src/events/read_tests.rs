//! Tests of filters, the tail line format, last-N reading and following.

use super::*;
use crate::events::{segment::list, Action, EventLog, LogOptions, Mode, Phase};
use std::io::Write;

fn at(ts: &str, phase: Phase, action: Action, provider: &str) -> Event {
    let mut e = Event::new(phase, action);
    e.ts = ts.into();
    e.provider = Some(provider.to_owned().into());
    e.endpoint = Some("chat/completions".into());
    e.user = Some("dev1".into());
    e
}

#[test]
fn contract_lines_are_reproduced_exactly() {
    let a = at(
        "2026-11-23T10:32:15.123Z",
        Phase::Input,
        Action::Pass,
        "sourcegraph",
    );
    let mut b = at(
        "2026-11-23T10:32:17.000Z",
        Phase::Output,
        Action::Pass,
        "sourcegraph",
    );
    b.latency_ms = Some(1840);
    let mut c = at(
        "2026-11-23T10:33:02.999Z",
        Phase::Input,
        Action::Block,
        "openai",
    );
    c.policy = Some("content-filter".into());
    c.reason = Some("blocked pattern detected".into());
    // The gateway stamps input events with the time so far (0 ms for a
    // block): the contract's input lines show no latency.
    c.latency_ms = Some(0);
    assert_eq!(
        format_line(&a, false),
        "2026-11-23T10:32:15Z INPUT  sourcegraph chat/completions user:dev1 PASS"
    );
    assert_eq!(
        format_line(&b, false),
        "2026-11-23T10:32:17Z OUTPUT sourcegraph chat/completions user:dev1 PASS latency=1840ms"
    );
    assert_eq!(
        format_line(&c, false),
        r#"2026-11-23T10:33:02Z INPUT  openai chat/completions user:dev1 BLOCK policy=content-filter reason="blocked pattern detected""#
    );
}

#[test]
fn connect_error_and_sparse_events_format_sensibly() {
    let mut t = Event::new(Phase::Connect, Action::Tunnel);
    t.ts = "2026-11-23T10:00:00.000Z".into();
    t.host = Some("example.com:443".into());
    t.provider = Some("unknown".into());
    assert_eq!(
        format_line(&t, false),
        "2026-11-23T10:00:00Z CONNECT example.com:443 TUNNEL"
    );
    let mut e = Event::new(Phase::Output, Action::Error);
    e.ts = "2026-11-23T10:00:01.000Z".into();
    e.status = Some(502);
    e.reason = Some("upstream said \"no\"\nthen hung up".into());
    assert_eq!(
        format_line(&e, false),
        r#"2026-11-23T10:00:01Z OUTPUT - ERROR status=502 reason="upstream said \"no\"\nthen hung up""#
    );
    let mut h = Event::new(Phase::Input, Action::CacheHit);
    h.ts = "2026-11-23T10:00:02.000Z".into();
    h.host = Some("api.openai.com".into());
    assert_eq!(
        format_line(&h, false),
        "2026-11-23T10:00:02Z INPUT  api.openai.com CACHE_HIT"
    );
    assert_eq!(
        format_line(&h, true),
        "2026-11-23T10:00:02Z INPUT  api.openai.com \x1b[36mCACHE_HIT\x1b[0m"
    );
}

#[test]
fn filters_parse_and_match_as_text() {
    let mut e = at(
        "2026-11-23T10:00:00.000Z",
        Phase::Input,
        Action::Redact,
        "openai",
    );
    e.cache_hit = Some(true);
    e.status = Some(200);
    e.cost_usd = Some(1.0);
    e.mode = Some(Mode::Proxy);
    e.reason = Some("a=b".into());
    let ok = |args: &[&str]| Filters::parse(args).unwrap().matches(&e);
    assert!(ok(&[]));
    assert!(ok(&["action=redact"]));
    assert!(ok(&["cache_hit=true", "user=dev1", "provider=openai"]));
    assert!(ok(&[
        "status=200",
        "mode=proxy",
        "phase=input",
        "cost_usd=1"
    ]));
    assert!(ok(&["endpoint=chat/completions"]));
    assert!(!ok(&["action=redact", "user=dev2"]));
    assert!(!ok(&["cache_hit=false"]));
    assert!(!ok(&["team=x"]), "absent never matches");
    assert!(!ok(&["model="]), "absent is not empty");
    // A value may itself contain '='.
    assert!(ok(&["reason=a=b"]));
}

/// An event with every field kt writes set.
fn every_field() -> Event {
    let mut e = at(
        "2026-11-23T10:00:00.000Z",
        Phase::Output,
        Action::Redact,
        "openai",
    );
    e.api = Some("openai-chat".into());
    e.cache_hit = Some(false);
    e.client_ip = Some("10.0.0.7".into());
    e.cost_saved_usd = Some(0.5);
    e.cost_usd = Some(0.25);
    e.hash = "ab".repeat(32);
    e.host = Some("api.openai.com".into());
    e.latency_ms = Some(1840);
    e.method = Some("POST".into());
    e.mode = Some(Mode::Proxy);
    e.model = Some("gpt-4o".into());
    e.overhead_us = Some(42);
    e.path = Some("/v1/chat/completions".into());
    e.policy = Some("secret-redaction".into());
    e.policy_us = Some(17);
    e.prev_hash = "cd".repeat(32);
    e.reason = Some("secrets replaced".into());
    e.redactions = Some([("aws_access_key_id".to_owned(), 2)].into());
    e.request_body = Some("{}".into());
    e.request_id = Some("r1".into());
    e.response_body = Some("{\"ok\":true}".into());
    e.status = Some(200);
    e.team = Some("core".into());
    e.tokens_in = Some(10);
    e.tokens_out = Some(20);
    e.upstream_ms = Some(1800);
    e.usage_source = Some("estimated".into());
    e
}

#[test]
fn every_field_kt_writes_is_filterable_by_its_name() {
    let e = every_field();
    let serde_json::Value::Object(fields) = serde_json::to_value(&e).unwrap() else {
        panic!("an event is a JSON object");
    };
    assert_eq!(fields.len(), FILTER_KEYS.len(), "{fields:?}");
    for (key, value) in fields {
        let value = match value {
            serde_json::Value::String(s) => s,
            // redactions: the filter names a kind.
            serde_json::Value::Object(kinds) => kinds.keys().next().unwrap().clone(),
            other => other.to_string(),
        };
        let filter = format!("{key}={value}");
        let parsed = Filters::parse([&filter]).unwrap_or_else(|err| panic!("{err}"));
        assert!(parsed.matches(&e), "{filter} does not match");
    }
}

#[test]
fn extra_fields_filter_by_value() {
    let e = every_field();
    let ok = |args: &[&str]| Filters::parse(args).unwrap().matches(&e);
    assert!(ok(&["usage_source=estimated"]));
    assert!(!ok(&["usage_source=provider"]));
    assert!(ok(&["overhead_us=42"]));
    assert!(!ok(&["overhead_us=43"]));
    assert!(ok(&["cost_saved_usd=0.50"]), "compared as a number");
    assert!(!ok(&["cost_saved_usd=0.25"]));
    assert!(ok(&["client_ip=10.0.0.7"]));
    assert!(ok(&["redactions=aws_access_key_id"]));
    assert!(!ok(&["redactions=github_token"]), "a kind not redacted");
    assert!(!ok(&["redactions=2"]), "counts are not kinds");
    let mut none = e.clone();
    none.redactions = Some([("aws_access_key_id".to_owned(), 0)].into());
    assert!(!Filters::parse(["redactions=aws_access_key_id"])
        .unwrap()
        .matches(&none));
    none.redactions = None;
    none.usage_source = None;
    assert!(!Filters::parse(["redactions=aws_access_key_id"])
        .unwrap()
        .matches(&none));
    assert!(!Filters::parse(["usage_source=estimated"])
        .unwrap()
        .matches(&none));
}

#[test]
fn bad_filters_are_explained() {
    let err = "nope".parse::<Filter>().unwrap_err();
    assert_eq!(err.kind(), "filter_syntax");
    assert_eq!(
        "=x".parse::<Filter>().unwrap_err(),
        FilterError::Syntax("=x".into())
    );
    let err = Filters::parse(["action=pass", "colour=red"]).unwrap_err();
    assert_eq!(err.kind(), "filter_unknown_key");
    let msg = err.to_string();
    assert!(msg.contains("\"colour\""), "{msg}");
    assert!(msg.contains("action, policy, reason"), "{msg}");
    assert!(msg.contains("cache_hit"), "{msg}");
}

fn ev(n: usize) -> Event {
    let mut e = Event::new(Phase::Input, Action::Pass);
    e.user = Some(format!("u{n}").into());
    if n.is_multiple_of(3) {
        e.action = Action::Block;
    }
    e
}

fn tiny() -> LogOptions {
    LogOptions {
        segment_max_bytes: 600,
        ..LogOptions::default()
    }
}

async fn write(dir: &Path, range: std::ops::Range<usize>) {
    let (sink, handle) = EventLog::open(dir, tiny()).unwrap();
    for n in range {
        sink.send(ev(n)).await.unwrap();
    }
    handle.close().await.unwrap();
}

fn users(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| e.user.as_deref().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn last_n_reads_across_segments_with_filters() {
    let tmp = tempfile::tempdir().unwrap();
    let none = Filters::default();
    let (empty, pos) = read_last(tmp.path(), 5, &none).unwrap();
    assert!(empty.is_empty());
    assert_eq!(pos, Position::default());
    write(tmp.path(), 0..12).await;
    assert!(list(tmp.path()).unwrap().len() >= 3);
    let (last, pos) = read_last(tmp.path(), 5, &none).unwrap();
    assert_eq!(users(&last), ["u7", "u8", "u9", "u10", "u11"]);
    let newest = list(tmp.path()).unwrap().pop().unwrap();
    assert_eq!(pos.segment.as_ref(), Some(&newest.path));
    assert_eq!(pos.offset, std::fs::metadata(&newest.path).unwrap().len());
    let (all, _) = read_last(tmp.path(), 100, &none).unwrap();
    assert_eq!(all.len(), 12);
    let blocks = Filters::parse(["action=block"]).unwrap();
    let (b, _) = read_last(tmp.path(), 3, &blocks).unwrap();
    assert_eq!(users(&b), ["u3", "u6", "u9"]);
    let (zero, _) = read_last(tmp.path(), 0, &none).unwrap();
    assert!(zero.is_empty());
}

async fn next(f: &mut Follower) -> Event {
    tokio::time::timeout(Duration::from_secs(5), f.next())
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn follower_sees_appended_events_and_new_segments() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), 0..4).await;
    let (shown, pos) = read_last(tmp.path(), 2, &Filters::default()).unwrap();
    assert_eq!(users(&shown), ["u2", "u3"]);
    let mut f =
        Follower::new(tmp.path(), pos, Filters::default()).with_interval(Duration::from_millis(10));
    let segments_before = list(tmp.path()).unwrap().len();
    write(tmp.path(), 4..14).await;
    assert!(list(tmp.path()).unwrap().len() > segments_before + 1);
    let mut got = Vec::new();
    for _ in 4..14 {
        got.push(next(&mut f).await);
    }
    assert_eq!(
        users(&got),
        (4..14).map(|n| format!("u{n}")).collect::<Vec<_>>()
    );
    for pair in got.windows(2) {
        assert_eq!(pair[1].prev_hash, pair[0].hash);
    }
}

#[tokio::test]
async fn follower_waits_for_complete_lines_and_a_first_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let mut f = Follower::new(
        tmp.path(),
        Position::end(tmp.path()).unwrap(),
        Filters::parse(["action=block"]).unwrap(),
    )
    .with_interval(Duration::from_millis(10));
    let pending = tokio::time::timeout(Duration::from_millis(50), f.next()).await;
    assert!(pending.is_err(), "nothing written yet");
    write(tmp.path(), 0..2).await;
    assert_eq!(next(&mut f).await.user.as_deref(), Some("u0"));
    // A line arriving in two pieces is read once complete.
    let mut line = serde_json::to_string(&ev(3)).unwrap();
    line.push('\n');
    let path = list(tmp.path()).unwrap().pop().unwrap().path;
    let (head, tail) = line.split_at(20);
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    file.write_all(head.as_bytes()).unwrap();
    let pending = tokio::time::timeout(Duration::from_millis(50), f.next()).await;
    assert!(pending.is_err(), "half a line is not an event");
    file.write_all(tail.as_bytes()).unwrap();
    assert_eq!(next(&mut f).await.user.as_deref(), Some("u3"));
    assert_eq!(f.position().offset, std::fs::metadata(&path).unwrap().len());
}

#[test]
fn backward_line_reading_handles_lines_across_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("x");
    // Lines longer and shorter than a chunk, and a torn tail.
    let long = "a".repeat(CHUNK as usize + 17);
    let lines = [
        "one".to_string(),
        long.clone(),
        String::new(),
        "two".into(),
        long,
    ];
    let mut text = lines.join("\n");
    text.push('\n');
    let complete = text.len() as u64;
    text.push_str("torn");
    std::fs::write(&path, &text).unwrap();
    let mut file = std::fs::File::open(&path).unwrap();
    assert_eq!(
        complete_len(&mut file, text.len() as u64).unwrap(),
        complete
    );
    let mut seen = Vec::new();
    lines_backward(&mut file, complete, |l| {
        seen.push(String::from_utf8(l.to_vec()).unwrap());
        true
    })
    .unwrap();
    seen.retain(|l| !l.is_empty());
    let mut want: Vec<_> = lines.iter().filter(|l| !l.is_empty()).cloned().collect();
    want.reverse();
    assert_eq!(seen, want);
    let mut first = None;
    lines_backward(&mut file, complete, |l| {
        first = Some(l.len());
        false
    })
    .unwrap();
    assert_eq!(
        first,
        Some(0),
        "the empty piece after the last newline comes first"
    );
}

#[tokio::test]
async fn last_n_ignores_a_torn_tail_and_positions_before_it() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), 0..3).await;
    let path = list(tmp.path()).unwrap().pop().unwrap().path;
    let len = std::fs::metadata(&path).unwrap().len();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    file.write_all(b"{\"action\":").unwrap();
    let (last, pos) = read_last(tmp.path(), 10, &Filters::default()).unwrap();
    assert_eq!(users(&last).last().map(String::as_str), Some("u2"));
    assert_eq!(pos.offset, len);
}

/// A read that finishes a segment goes on into the next one: "nothing new"
/// at a segment's end would tell a stopping reader the log is read.
#[tokio::test]
async fn a_read_crosses_into_the_next_segment() {
    let dir = tempfile::tempdir().unwrap();
    let options = LogOptions {
        segment_max_bytes: 1,
        ..LogOptions::default()
    };
    let (sink, writer) = EventLog::open(dir.path(), options).unwrap();
    for _ in 0..3 {
        sink.send(Event::new(Phase::Input, Action::Pass))
            .await
            .unwrap();
    }
    writer.close().await.unwrap();
    assert_eq!(list(dir.path()).unwrap().len(), 3, "one event per segment");
    let mut tail = LineTail::new(dir.path(), Position::default());
    let mut lines = 0;
    for read in 1..=3 {
        let before = lines;
        tail.read(|_, _| lines += 1).unwrap();
        assert_eq!(lines, before + 1, "read {read} handed out no line");
    }
    tail.read(|_, _| lines += 1).unwrap();
    assert_eq!(lines, 3);
}

/// Reads `tail` until a read hands out nothing; the lines, as text.
fn read_all(tail: &mut LineTail) -> Vec<String> {
    let mut got = Vec::new();
    loop {
        let before = got.len();
        tail.read(|_, line| got.push(String::from_utf8_lossy(line).into_owned()))
            .unwrap();
        if got.len() == before {
            return got;
        }
    }
}

/// The writer may add more than one read's limit to a segment and roll to
/// the next between two reads, while the durable end the reader was given
/// still points into the old one. The whole rest of the old segment is
/// handed out before the next one; moving on after one limited read
/// dropped the rest (and the shipper then stopped at the hole for good).
#[test]
fn the_rest_of_a_finished_segment_is_read_past_the_read_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("2020-01-01.jsonl");
    let b = tmp.path().join("2020-01-01.1.jsonl");
    let line = |name: &str, i: usize| format!("{name}{i:03} {}", "x".repeat(90));
    let text = |lines: &[String]| lines.iter().map(|l| format!("{l}\n")).collect::<String>();
    let read_before: Vec<String> = (0..2).map(|i| line("a", i)).collect();
    std::fs::write(&a, text(&read_before)).unwrap();
    let cursor = Position {
        segment: Some(a.clone()),
        offset: std::fs::metadata(&a).unwrap().len(),
    };
    // About 3 KB more in A, then the roll to B.
    let rest_of_a: Vec<String> = (2..32).map(|i| line("a", i)).collect();
    let mut file = std::fs::OpenOptions::new().append(true).open(&a).unwrap();
    file.write_all(text(&rest_of_a).as_bytes()).unwrap();
    let in_b: Vec<String> = (0..3).map(|i| line("b", i)).collect();
    std::fs::write(&b, text(&in_b)).unwrap();

    let mut tail = LineTail::new(tmp.path(), cursor.clone()).with_read_limit(1024);
    tail.until(Some(cursor));
    assert_eq!(
        read_all(&mut tail),
        rest_of_a,
        "every line of A after the cursor"
    );
    tail.until(Some(Position {
        segment: Some(b.clone()),
        offset: std::fs::metadata(&b).unwrap().len(),
    }));
    assert_eq!(read_all(&mut tail), in_b, "then B's");
}

/// A writer that crashed mid-line cuts the torn line back on restart and
/// writes new lines in its place. A follower that read the torn bytes must
/// not skip that many bytes of what replaced them: with the new lines
/// longer than the torn one, the file never looks shorter than where the
/// follower was, so only reading again from the last newline sees them.
#[tokio::test]
async fn follower_reads_what_replaced_a_torn_line() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("2020-01-01.jsonl");
    let line = |e: &Event| {
        let mut text = serde_json::to_string(e).unwrap();
        text.push('\n');
        text
    };
    let events: Vec<Event> = (0..5)
        .map(|n| Event {
            // Longer than the torn line.
            reason: Some("r".repeat(400)),
            ..ev(n)
        })
        .collect();
    let whole = format!("{}{}", line(&events[0]), line(&events[1]));
    let torn = &line(&events[2])[..300];
    std::fs::write(&path, format!("{whole}{torn}")).unwrap();
    let mut f = Follower::new(tmp.path(), Position::default(), Filters::default())
        .with_interval(Duration::from_millis(10));
    // The first poll reads the torn bytes with the two whole lines.
    assert_eq!(next(&mut f).await, events[0]);
    assert_eq!(next(&mut f).await, events[1]);
    // The restart: cut back to the whole lines, then two more.
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(whole.len() as u64).unwrap();
    drop(file);
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    file.write_all(format!("{}{}", line(&events[3]), line(&events[4])).as_bytes())
        .unwrap();
    assert_eq!(next(&mut f).await, events[3], "not glued to the torn bytes");
    assert_eq!(next(&mut f).await, events[4]);
}

/// A line longer than the read limit is read whole by one read: the
/// bytes of an incomplete line are not kept between reads, so reading it a
/// limit at a time would never get past it.
#[test]
fn a_line_longer_than_the_read_limit_is_read_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let long = "x".repeat(3000);
    std::fs::write(
        tmp.path().join("2020-01-01.jsonl"),
        format!("{long}\nnext\n"),
    )
    .unwrap();
    let mut tail = LineTail::new(tmp.path(), Position::default()).with_read_limit(1024);
    let mut got = Vec::new();
    tail.read(|_, line| got.push(String::from_utf8_lossy(line).into_owned()))
        .unwrap();
    assert_eq!(got.first(), Some(&long), "the first read hands it out");
    got.extend(read_all(&mut tail));
    assert_eq!(got, [long.as_str(), "next"]);
}
