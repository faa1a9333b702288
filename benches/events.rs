//! Audit trail costs (`cargo bench --bench events`): how many events a second
//! the log takes in and writes (hash-chained, batched fsync) from concurrent
//! senders, and what auditing adds to one exchange on the request path.
//! Plain timing loops with fixed counts; prints a markdown table.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use keeptrusts::events::{Action, Event, EventLog, LogOptions, Phase};
use keeptrusts::identity::Identity;
use keeptrusts::policy::exchange::Input;
use keeptrusts::policy::Engine;
use std::hint::black_box;
use std::time::Instant;

const SENDERS: usize = 4;
const EVENTS_PER_SENDER: usize = 100_000;
const EXCHANGES: u32 = 100_000;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut rows: Vec<(String, String)> = Vec::new();
    rt.block_on(async {
        let (rate, bytes) = append_throughput().await;
        rows.push((
            format!(
                "append: {} events from {SENDERS} senders, written + fsynced (batch)",
                SENDERS * EVENTS_PER_SENDER
            ),
            format!("{:.0} events/s ({:.0} B/event)", rate, bytes),
        ));
        rows.push((
            "seal one output event (canonical JSON, SHA-256, stored line)".into(),
            format!("{:.2} µs", seal_cost()),
        ));
        let (with, without) = audit_cost().await;
        rows.push((
            "exchange on the request path, audit off (begin + input + complete)".into(),
            format!("{without:.2} µs"),
        ));
        rows.push((
            "same with the audit logger (2 events built and queued)".into(),
            format!("{with:.2} µs"),
        ));
        rows.push((
            "added by auditing".into(),
            format!("{:.2} µs", with - without),
        ));
    });
    println!("| measurement | result |");
    println!("|---|---:|");
    for (label, v) in rows {
        println!("| {label} | {v} |");
    }
}

/// An output event as a real exchange fills it.
fn sample_event(i: usize) -> Event {
    let mut e = Event::new(Phase::Output, Action::Pass);
    e.mode = Some(keeptrusts::events::Mode::Proxy);
    e.provider = Some("openai".into());
    e.host = Some("api.openai.com".into());
    e.method = Some("POST".into());
    e.path = Some("/v1/chat/completions".into());
    e.endpoint = Some("chat/completions".into());
    e.api = Some("openai-chat".into());
    e.model = Some("gpt-4o".into());
    e.user = Some(format!("dev{}", i % 50).into());
    e.team = Some("platform".into());
    e.status = Some(200);
    e.latency_ms = Some(840);
    e.upstream_ms = Some(830);
    e.policy_us = Some(12);
    e.tokens_in = Some(1200);
    e.tokens_out = Some(300);
    e.cost_usd = Some(0.006);
    e.request_id = Some(format!("{i:016x}").into());
    e
}

/// Mean µs to seal one event as the writer does (buffers reused).
fn seal_cost() -> f64 {
    const N: usize = 200_000;
    let events: Vec<Event> = (0..1000).map(sample_event).collect();
    let (mut scratch, mut out) = (Vec::with_capacity(1024), Vec::with_capacity(1024));
    let mut prev = keeptrusts::events::GENESIS_HASH.to_string();
    let t = Instant::now();
    for i in 0..N {
        let mut e = events[i % events.len()].clone();
        e.prev_hash = std::mem::take(&mut prev);
        out.clear();
        keeptrusts::events::chain::seal_into(&mut e, &mut scratch, &mut out).unwrap();
        prev = std::mem::take(&mut e.hash);
        black_box(&out);
    }
    t.elapsed().as_secs_f64() * 1e6 / N as f64
}

/// Events per second through the sink to disk, and bytes per event.
async fn append_throughput() -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let (sink, writer) = EventLog::open(dir.path(), LogOptions::default()).unwrap();
    // Built before the clock starts: the request path builds its events.
    let batches: Vec<Vec<Event>> = (0..SENDERS)
        .map(|s| {
            (0..EVENTS_PER_SENDER)
                .map(|i| sample_event(s * EVENTS_PER_SENDER + i))
                .collect()
        })
        .collect();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for batch in batches {
        let sink = sink.clone();
        tasks.push(tokio::spawn(async move {
            for e in batch {
                sink.send(e).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    drop(sink);
    writer.close().await.unwrap();
    let secs = start.elapsed().as_secs_f64();
    let total = (SENDERS * EVENTS_PER_SENDER) as f64;
    let bytes: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    let report = keeptrusts::events::verify(dir.path()).unwrap();
    assert_eq!(report.events as f64, total, "every event written");
    (total / secs, bytes as f64 / total)
}

/// Mean µs per exchange with and without the audit logger.
async fn audit_cost() -> (f64, f64) {
    let headers = http::HeaderMap::new();
    let uri: http::Uri = "/v1/chat/completions".parse().unwrap();
    let post = http::Method::POST;
    let host: std::sync::Arc<str> = std::sync::Arc::from("api.openai.com");
    let anon = Identity::anonymous();
    let body = Bytes::from_static(
        br#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"explain this function please"}]}"#,
    );
    let run = |engine: &Engine| {
        let mut ex = engine.begin(&host, &post, &uri, &headers, &anon).unwrap();
        match ex.input(body.clone()) {
            Input::Forward(b) => {
                black_box(b);
            }
            Input::Respond(_) => unreachable!(),
        }
        ex.complete(Some(200));
    };

    let without = Engine::new(None).unwrap();
    let t = Instant::now();
    for _ in 0..EXCHANGES {
        run(&without);
    }
    let without_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(EXCHANGES);

    let dir = tempfile::tempdir().unwrap();
    let options = LogOptions {
        capacity: 2 * EXCHANGES as usize + 16,
        ..LogOptions::default()
    };
    let (sink, writer) = EventLog::open(dir.path(), options).unwrap();
    let with = Engine::with_sink(None, Some(sink)).unwrap();
    let t = Instant::now();
    for _ in 0..EXCHANGES {
        run(&with);
    }
    let with_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(EXCHANGES);
    with.settle().await;
    drop(with);
    writer.close().await.unwrap();
    (with_us, without_us)
}
