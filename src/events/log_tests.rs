//! Tests of the writer, recovery, segments, retention and verification together.

use super::*;
use crate::events::anchor::{read as read_anchor, write as write_anchor, Anchor, ANCHOR_FILE};
use crate::events::chain::GENESIS_HASH;
use crate::events::segment::{list, prune, prune_before};
use crate::events::verify::{verify, Problem, VerifyError};
use crate::events::{Action, Phase};

fn ev(n: usize) -> Event {
    let mut e = Event::new(Phase::Input, Action::Pass);
    e.user = Some(format!("u{n}").into());
    e.provider = Some("openai".into());
    e.endpoint = Some("chat/completions".into());
    e
}

fn opts() -> LogOptions {
    LogOptions::default()
}

fn tiny() -> LogOptions {
    LogOptions {
        segment_max_bytes: 700,
        ..LogOptions::default()
    }
}

async fn write(dir: &Path, options: LogOptions, range: std::ops::Range<usize>) {
    let (sink, handle) = EventLog::open(dir, options).unwrap();
    for n in range {
        sink.send(ev(n)).await.unwrap();
    }
    handle.close().await.unwrap();
}

/// Every stored line, with its segment path, in chain order.
fn lines(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for seg in list(dir).unwrap() {
        for line in std::fs::read_to_string(&seg.path).unwrap().lines() {
            out.push((seg.path.clone(), line.to_string()));
        }
    }
    out
}

fn events(dir: &Path) -> Vec<Event> {
    lines(dir)
        .iter()
        .map(|(_, l)| serde_json::from_str(l).unwrap())
        .collect()
}

fn tampered(dir: &Path) -> (PathBuf, usize, Problem) {
    match verify(dir) {
        Err(VerifyError::Tampered {
            file,
            line,
            problem,
        }) => (file, line, problem),
        other => panic!("expected tamper, got {other:?}"),
    }
}

/// Rewrites one segment file's lines.
fn edit(path: &Path, f: impl FnOnce(&mut Vec<String>)) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut v: Vec<String> = text.lines().map(str::to_string).collect();
    f(&mut v);
    let mut out = v.join("\n");
    out.push('\n');
    std::fs::write(path, out).unwrap();
}

#[tokio::test]
async fn chain_continues_across_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), opts(), 0..3).await;
    write(tmp.path(), opts(), 3..5).await;
    let report = verify(tmp.path()).unwrap();
    assert_eq!(report.events, 5);
    assert_eq!(report.segments, 1);
    assert!(report.from_genesis());
    let all = events(tmp.path());
    assert_eq!(all[0].prev_hash, GENESIS_HASH);
    assert_eq!(all[3].prev_hash, all[2].hash);
    assert_eq!(report.last_hash.as_deref(), Some(all[4].hash.as_str()));
    let users: Vec<String> = all
        .iter()
        .map(|e| e.user.as_deref().unwrap().to_owned())
        .collect();
    assert_eq!(users, ["u0", "u1", "u2", "u3", "u4"]);
}

#[tokio::test]
async fn chain_continues_across_segment_rolls() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), tiny(), 0..10).await;
    write(tmp.path(), tiny(), 10..13).await;
    let segs = list(tmp.path()).unwrap();
    assert!(segs.len() >= 4, "{segs:?}");
    for s in &segs {
        let len = std::fs::metadata(&s.path).unwrap().len();
        assert!(len <= 700, "{} is {len} bytes", s.name());
    }
    assert_eq!(segs[1].seq, 1);
    let report = verify(tmp.path()).unwrap();
    assert_eq!(report.events, 13);
    assert_eq!(report.segments, segs.len());
}

#[tokio::test]
async fn every_fsync_policy_writes_a_valid_chain() {
    for fsync in [Fsync::Always, Fsync::Batch, Fsync::Never] {
        let tmp = tempfile::tempdir().unwrap();
        let options = LogOptions {
            fsync,
            segment_max_bytes: 700,
            ..LogOptions::default()
        };
        write(tmp.path(), options, 0..7).await;
        assert_eq!(verify(tmp.path()).unwrap().events, 7, "{fsync:?}");
    }
}

/// `fsync: batch` options whose deferred fsync never comes due in a test.
fn unsynced() -> LogOptions {
    LogOptions {
        linger: Duration::ZERO,
        sync_interval: Duration::from_secs(600),
        ..LogOptions::default()
    }
}

#[tokio::test]
async fn batches_written_within_the_sync_interval_share_one_fsync() {
    let tmp = tempfile::tempdir().unwrap();
    let (sink, handle) = EventLog::open(tmp.path(), unsynced()).unwrap();
    let mut feed = sink.subscribe();
    // One batch each: the feed hears of an event once it is written.
    for n in 0..3 {
        sink.send(ev(n)).await.unwrap();
        assert_eq!(
            feed.recv().await.unwrap().user.as_deref(),
            Some(format!("u{n}").as_str())
        );
    }
    assert_eq!(lines(tmp.path()).len(), 3, "written before any fsync");
    assert_eq!(sink.stats().syncs(), 0);
    sink.flush().await.unwrap();
    assert_eq!(sink.stats().syncs(), 1, "a flush syncs what is pending");
    handle.close().await.unwrap();
    assert_eq!(verify(tmp.path()).unwrap().events, 3);
}

#[tokio::test]
async fn a_written_batch_is_synced_by_its_deadline_without_further_events() {
    let tmp = tempfile::tempdir().unwrap();
    let options = LogOptions {
        sync_interval: Duration::from_millis(50),
        ..unsynced()
    };
    let (sink, handle) = EventLog::open(tmp.path(), options).unwrap();
    let mut feed = sink.subscribe();
    sink.send(ev(0)).await.unwrap();
    feed.recv().await.unwrap();
    // Nothing else is sent: only the writer's own deadline can sync it.
    let synced = async {
        while sink.stats().syncs() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), synced)
        .await
        .expect("the pending fsync never came");
    assert_eq!(sink.stats().syncs(), 1);
    handle.close().await.unwrap();
}

#[tokio::test]
async fn a_dirty_segment_is_synced_before_the_next_one_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let options = LogOptions {
        segment_max_bytes: 700,
        ..unsynced()
    };
    let (sink, handle) = EventLog::open(tmp.path(), options).unwrap();
    let mut feed = sink.subscribe();
    for n in 0..3 {
        sink.send(ev(n)).await.unwrap();
        feed.recv().await.unwrap();
    }
    let segments = list(tmp.path()).unwrap().len();
    assert!(segments >= 2, "{segments} segments");
    // Every segment but the newest was synced when it was left.
    assert_eq!(sink.stats().syncs(), segments as u64 - 1);
    handle.close().await.unwrap();
}

#[tokio::test]
async fn fsync_always_syncs_every_event_and_never_syncs_none() {
    for (fsync, expected) in [(Fsync::Always, 4), (Fsync::Never, 0)] {
        let tmp = tempfile::tempdir().unwrap();
        let options = LogOptions {
            fsync,
            ..unsynced()
        };
        let (sink, handle) = EventLog::open(tmp.path(), options).unwrap();
        let mut feed = sink.subscribe();
        for n in 0..4 {
            sink.send(ev(n)).await.unwrap();
        }
        for _ in 0..4 {
            feed.recv().await.unwrap();
        }
        assert_eq!(sink.stats().syncs(), expected, "{fsync:?}");
        handle.close().await.unwrap();
    }
}

#[tokio::test]
async fn verify_detects_an_edited_field() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), opts(), 0..5).await;
    let (path, _) = lines(tmp.path()).remove(0);
    edit(&path, |v| v[2] = v[2].replace("\"u2\"", "\"u9\""));
    let (file, line, problem) = tampered(tmp.path());
    assert_eq!((file, line, problem), (path, 3, Problem::HashMismatch));
}

#[tokio::test]
async fn verify_detects_lines_deleted_from_the_start() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), opts(), 0..5).await;
    let (path, _) = lines(tmp.path()).remove(0);
    edit(&path, |v| {
        v.drain(..2);
    });
    let (file, line, problem) = tampered(tmp.path());
    assert_eq!(
        (file, line, problem.kind()),
        (path.clone(), 1, "missing_before")
    );
    // Without the anchor file the start is no more trusted.
    std::fs::remove_file(tmp.path().join(ANCHOR_FILE)).unwrap();
    let (file, line, problem) = tampered(tmp.path());
    assert_eq!((file, line, problem.kind()), (path, 1, "unanchored"));
    assert!(verify(tmp.path())
        .unwrap_err()
        .to_string()
        .contains("events are missing before this line"));
}

#[tokio::test]
async fn verify_detects_a_deleted_line() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), opts(), 0..5).await;
    let (path, _) = lines(tmp.path()).remove(0);
    edit(&path, |v| {
        v.remove(1);
    });
    let (file, line, problem) = tampered(tmp.path());
    assert_eq!((file, line, problem.kind()), (path, 2, "chain_break"));
}

#[tokio::test]
async fn verify_detects_an_inserted_line() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), opts(), 0..5).await;
    let (path, _) = lines(tmp.path()).remove(0);
    // A copy of a genuine line (its own hash is right; its link is not).
    edit(&path, |v| {
        let copy = v[0].clone();
        v.insert(3, copy);
    });
    let (file, line, problem) = tampered(tmp.path());
    assert_eq!(
        (file, line, problem.kind()),
        (path.clone(), 4, "chain_break")
    );
    // A fabricated line.
    let tmp2 = tempfile::tempdir().unwrap();
    write(tmp2.path(), opts(), 0..3).await;
    let (path2, _) = lines(tmp2.path()).remove(0);
    edit(&path2, |v| v.insert(1, r#"{"action":"pass"}"#.into()));
    let (file, line, problem) = tampered(tmp2.path());
    assert_eq!((file, line), (path2, 2));
    assert_eq!(problem, Problem::MissingField("hash"));
}

#[tokio::test]
async fn verify_detects_swapped_lines() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), opts(), 0..5).await;
    let (path, _) = lines(tmp.path()).remove(0);
    edit(&path, |v| v.swap(2, 3));
    let (file, line, problem) = tampered(tmp.path());
    assert_eq!((file, line, problem.kind()), (path, 3, "chain_break"));
}

#[tokio::test]
async fn verify_detects_a_deleted_middle_segment() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), tiny(), 0..10).await;
    let segs = list(tmp.path()).unwrap();
    assert!(segs.len() >= 3);
    std::fs::remove_file(&segs[1].path).unwrap();
    let (file, line, problem) = tampered(tmp.path());
    assert_eq!(
        (file, line, problem.kind()),
        (segs[2].path.clone(), 1, "chain_break")
    );
    assert!(verify(tmp.path())
        .unwrap_err()
        .to_string()
        .contains(&format!("{} line 1", segs[2].path.display())));
}

#[tokio::test]
async fn verify_of_an_empty_or_missing_log_is_ok() {
    let tmp = tempfile::tempdir().unwrap();
    let report = verify(&tmp.path().join("events")).unwrap();
    assert_eq!((report.segments, report.events), (0, 0));
    assert_eq!(report.anchor, None);
}

#[tokio::test]
async fn torn_last_line_is_reported_then_truncated_on_open() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), opts(), 0..3).await;
    let (path, _) = lines(tmp.path()).remove(0);
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(br#"{"action":"pass","endpo"#).unwrap();
    drop(f);
    let report = verify(tmp.path()).unwrap();
    assert!(report.incomplete_tail);
    assert_eq!(report.events, 3);
    write(tmp.path(), opts(), 3..4).await;
    let report = verify(tmp.path()).unwrap();
    assert!(!report.incomplete_tail);
    assert_eq!(report.events, 4);
    assert!(!std::fs::read_to_string(&path).unwrap().contains("endpo\""));
}

#[tokio::test]
async fn open_refuses_a_corrupt_complete_last_line() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), opts(), 0..2).await;
    let (path, _) = lines(tmp.path()).remove(0);
    edit(&path, |v| v.push("garbage".into()));
    match EventLog::open(tmp.path(), opts()) {
        Err(e @ EventsError::Corrupt { line: 3, .. }) => assert_eq!(e.kind(), "events_corrupt"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("opened a corrupt log"),
    }
}

/// Polls `fut` once; true if it was ready. The poll registers the waker,
/// so awaiting `fut` afterwards still works.
async fn ready_at_first_poll<F: std::future::Future>(mut fut: std::pin::Pin<&mut F>) -> bool {
    std::future::poll_fn(|cx| std::task::Poll::Ready(fut.as_mut().poll(cx).is_ready())).await
}

#[tokio::test]
async fn room_waits_while_the_queue_is_full_and_not_after() {
    let tmp = tempfile::tempdir().unwrap();
    let options = LogOptions {
        capacity: 1,
        // The writer holds its first event this long before writing, so
        // the queue stays full for the test's checks.
        linger: Duration::from_secs(2),
        ..LogOptions::default()
    };
    let (sink, handle) = EventLog::open(tmp.path(), options).unwrap();
    let long = Duration::from_secs(30);
    assert!(ready_at_first_poll(std::pin::pin!(sink.room(long))).await);

    sink.send(ev(0)).await.unwrap();
    // The writer took event 0 and lingers; event 1 takes the only slot.
    while sink.queued() > 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    sink.try_send(ev(1)).unwrap();
    let waits = sink.stats().full_waits();
    assert!(!sink.room(Duration::from_millis(20)).await, "no room came");
    let mut room = std::pin::pin!(sink.room(long));
    assert!(
        !ready_at_first_poll(room.as_mut()).await,
        "room while the queue is full"
    );
    assert_eq!(sink.stats().full_waits(), waits + 2);
    assert!(room.await);
    assert_eq!(sink.queued(), 0);
    handle.close().await.unwrap();
    assert_eq!(verify(tmp.path()).unwrap().events, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_channel_waits_and_never_drops() {
    let tmp = tempfile::tempdir().unwrap();
    let options = LogOptions {
        capacity: 1,
        ..LogOptions::default()
    };
    let (sink, handle) = EventLog::open(tmp.path(), options).unwrap();
    let mut tasks = Vec::new();
    for t in 0..40 {
        let sink = sink.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                sink.send(ev(t * 100 + i)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    handle.close().await.unwrap();
    assert_eq!(sink.stats().written(), 1000);
    assert!(sink.stats().full_waits() > 0);
    assert_eq!(verify(tmp.path()).unwrap().events, 1000);
    let mut users: Vec<String> = events(tmp.path())
        .into_iter()
        .map(|e| e.user.as_deref().unwrap_or_default().to_owned())
        .collect();
    users.sort();
    users.dedup();
    assert_eq!(users.len(), 1000);
    // Per sender, the chain keeps send order.
    let all = events(tmp.path());
    let task7: Vec<_> = all
        .iter()
        .filter_map(|e| e.user.as_deref()?.strip_prefix("u7"))
        .filter(|s| s.len() == 2)
        .map(|s| s.parse::<usize>().unwrap())
        .collect();
    assert_eq!(task7, (0..25).collect::<Vec<_>>());
}

#[tokio::test]
async fn close_flushes_everything_queued_and_later_sends_fail() {
    let tmp = tempfile::tempdir().unwrap();
    let options = LogOptions {
        fsync: Fsync::Never,
        ..LogOptions::default()
    };
    let (sink, handle) = EventLog::open(tmp.path(), options).unwrap();
    for n in 0..200 {
        sink.send(ev(n)).await.unwrap();
    }
    handle.close().await.unwrap();
    assert_eq!(lines(tmp.path()).len(), 200);
    let err = sink.send(ev(999)).await.unwrap_err();
    assert_eq!(err.0.user.as_deref(), Some("u999"));
    assert_eq!(err.kind(), "events_writer_gone");
    assert!(sink.flush().await.is_err());
}

#[tokio::test]
async fn flush_waits_for_the_write_and_feed_sees_sealed_events() {
    let tmp = tempfile::tempdir().unwrap();
    let (sink, handle) = EventLog::open(tmp.path(), opts()).unwrap();
    let mut feed = sink.subscribe();
    sink.send(ev(1)).await.unwrap();
    sink.send(ev(2)).await.unwrap();
    sink.flush().await.unwrap();
    assert_eq!(lines(tmp.path()).len(), 2);
    let a = feed.recv().await.unwrap();
    let b = feed.recv().await.unwrap();
    assert_eq!(a.prev_hash, GENESIS_HASH);
    assert_eq!(b.prev_hash, a.hash);
    assert_eq!(b.user.as_deref(), Some("u2"));
    handle.close().await.unwrap();
}

#[tokio::test]
async fn writer_overwrites_caller_supplied_hashes() {
    let tmp = tempfile::tempdir().unwrap();
    let (sink, handle) = EventLog::open(tmp.path(), opts()).unwrap();
    let mut e = ev(1);
    e.prev_hash = "f".repeat(64);
    e.hash = "e".repeat(64);
    sink.send(e).await.unwrap();
    handle.close().await.unwrap();
    assert_eq!(events(tmp.path())[0].prev_hash, GENESIS_HASH);
    verify(tmp.path()).unwrap();
}

#[tokio::test]
async fn prune_keeps_the_rest_of_the_chain_verifiable() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), tiny(), 0..10).await;
    let segs = list(tmp.path()).unwrap();
    assert!(segs.len() >= 3);
    // Pretend the first two segments were written on older days.
    let day = |d| time::Date::from_calendar_date(2020, time::Month::January, d).unwrap();
    std::fs::rename(&segs[0].path, tmp.path().join("2020-01-01.jsonl")).unwrap();
    std::fs::rename(&segs[1].path, tmp.path().join("2020-01-02.jsonl")).unwrap();
    assert!(verify(tmp.path()).unwrap().from_genesis());
    let removed = prune_before(tmp.path(), day(2)).unwrap();
    assert_eq!(removed, vec![tmp.path().join("2020-01-01.jsonl")]);
    let report = verify(tmp.path()).unwrap();
    assert!(!report.from_genesis());
    assert!(!report.adopted);
    assert_eq!(report.events, 10 - lines_in_removed(&segs));
    let recorded = read_anchor(tmp.path()).unwrap().unwrap();
    assert_eq!(recorded.first_segment.as_deref(), Some("2020-01-02.jsonl"));
    assert_eq!(recorded.segments_pruned, 1);
    assert_eq!(Some(recorded.prev_hash), report.anchor);
    let removed = prune(tmp.path(), 30).unwrap();
    assert_eq!(removed, vec![tmp.path().join("2020-01-02.jsonl")]);
    verify(tmp.path()).unwrap();
    // And the writer continues the chain after pruning.
    write(tmp.path(), tiny(), 10..12).await;
    verify(tmp.path()).unwrap();
}

/// A log of `tiny` segments whose first two are dated in 2020.
async fn log_with_old_segments(dir: &Path) -> Vec<Segment> {
    write(dir, tiny(), 0..10).await;
    let segs = list(dir).unwrap();
    assert!(segs.len() >= 3);
    std::fs::rename(&segs[0].path, dir.join("2020-01-01.jsonl")).unwrap();
    std::fs::rename(&segs[1].path, dir.join("2020-01-02.jsonl")).unwrap();
    list(dir).unwrap()
}

fn jan_2020(d: u8) -> time::Date {
    time::Date::from_calendar_date(2020, time::Month::January, d).unwrap()
}

#[tokio::test]
async fn verify_detects_lines_deleted_from_the_start_of_a_pruned_log() {
    let tmp = tempfile::tempdir().unwrap();
    let segs = log_with_old_segments(tmp.path()).await;
    prune_before(tmp.path(), jan_2020(2)).unwrap();
    edit(&segs[1].path, |v| {
        v.remove(0);
    });
    let (file, line, problem) = tampered(tmp.path());
    assert_eq!(
        (file, line, problem.kind()),
        (segs[1].path.clone(), 1, "missing_before")
    );
}

#[tokio::test]
async fn verify_refuses_a_forged_anchor() {
    let tmp = tempfile::tempdir().unwrap();
    let segs = log_with_old_segments(tmp.path()).await;
    prune_before(tmp.path(), jan_2020(2)).unwrap();
    let genuine = read_anchor(tmp.path()).unwrap().unwrap();
    let forged = Anchor {
        prev_hash: "ab".repeat(32),
        ..genuine.clone()
    };
    write_anchor(tmp.path(), &forged).unwrap();
    let (file, line, problem) = tampered(tmp.path());
    assert_eq!(
        (file, line, problem.kind()),
        (segs[1].path.clone(), 1, "missing_before")
    );
    // Naming a segment that is not there as the start.
    write_anchor(
        tmp.path(),
        &Anchor {
            first_segment: Some("2099-01-01.jsonl".into()),
            ..genuine.clone()
        },
    )
    .unwrap();
    assert_eq!(tampered(tmp.path()).2.kind(), "anchor_segment_missing");
    std::fs::write(tmp.path().join(ANCHOR_FILE), "{}").unwrap();
    assert_eq!(tampered(tmp.path()).2.kind(), "bad_anchor");
    write_anchor(tmp.path(), &genuine).unwrap();
    verify(tmp.path()).unwrap();
}

#[tokio::test]
async fn a_prune_cut_short_still_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let segs = log_with_old_segments(tmp.path()).await;
    // The anchor is recorded, then the process dies before removing.
    let anchor = crate::events::anchor::after_removing(tmp.path(), &segs[..1], &segs[1]).unwrap();
    write_anchor(tmp.path(), &anchor).unwrap();
    let report = verify(tmp.path()).unwrap();
    assert_eq!((report.events, report.unanchored_segments), (10, 1));
    // The next prune finishes the job.
    prune_before(tmp.path(), jan_2020(2)).unwrap();
    let report = verify(tmp.path()).unwrap();
    assert_eq!(report.unanchored_segments, 0);
    assert_eq!(read_anchor(tmp.path()).unwrap().unwrap().segments_pruned, 1);
}

/// A damaged anchor fails `verify`, but retention still runs (the log
/// would otherwise grow for good) and records a sound one.
#[tokio::test]
async fn a_damaged_anchor_does_not_stop_retention() {
    let tmp = tempfile::tempdir().unwrap();
    log_with_old_segments(tmp.path()).await;
    std::fs::write(tmp.path().join(ANCHOR_FILE), "nonsense").unwrap();
    assert_eq!(tampered(tmp.path()).2.kind(), "bad_anchor");
    prune_before(tmp.path(), jan_2020(2)).unwrap();
    assert!(!tmp.path().join("2020-01-01.jsonl").exists());
    let report = verify(tmp.path()).unwrap();
    assert!(!report.from_genesis());
}

#[tokio::test]
async fn a_log_pruned_by_an_older_kt_is_adopted_when_the_writer_opens_it() {
    let tmp = tempfile::tempdir().unwrap();
    log_with_old_segments(tmp.path()).await;
    // What an older kt left: segments pruned, no anchor.
    std::fs::remove_file(tmp.path().join("2020-01-01.jsonl")).unwrap();
    std::fs::remove_file(tmp.path().join(ANCHOR_FILE)).unwrap();
    assert_eq!(tampered(tmp.path()).2.kind(), "unanchored");
    write(tmp.path(), tiny(), 10..11).await;
    let report = verify(tmp.path()).unwrap();
    assert!(report.adopted && !report.from_genesis());
    // Once retention runs, the start is recorded, not adopted.
    prune_before(tmp.path(), jan_2020(3)).unwrap();
    assert!(!verify(tmp.path()).unwrap().adopted);
}

/// Lines that were in the first segment before it was renamed and pruned.
fn lines_in_removed(segs: &[Segment]) -> u64 {
    // The first segment holds what fit under the cap before the first roll;
    // count from the remaining files instead of the removed one.
    let remaining: u64 = segs[1..]
        .iter()
        .map(|s| {
            let p = if s.seq == 1 {
                s.path.with_file_name("2020-01-02.jsonl")
            } else {
                s.path.clone()
            };
            std::fs::read_to_string(p).unwrap().lines().count() as u64
        })
        .sum();
    10 - remaining
}

static DAY: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(23);

fn test_day() -> time::Date {
    let d = DAY.load(std::sync::atomic::Ordering::SeqCst);
    time::Date::from_calendar_date(2026, time::Month::November, d).unwrap()
}

#[tokio::test]
async fn a_new_utc_day_starts_a_new_segment_and_the_chain_carries_on() {
    let tmp = tempfile::tempdir().unwrap();
    let (sink, handle) = EventLog::open_with_clock(tmp.path(), opts(), test_day).unwrap();
    sink.send(ev(0)).await.unwrap();
    sink.flush().await.unwrap();
    DAY.store(24, std::sync::atomic::Ordering::SeqCst);
    sink.send(ev(1)).await.unwrap();
    handle.close().await.unwrap();
    // A restart on a later day continues into that day's file.
    DAY.store(26, std::sync::atomic::Ordering::SeqCst);
    let (sink, handle) = EventLog::open_with_clock(tmp.path(), opts(), test_day).unwrap();
    sink.send(ev(2)).await.unwrap();
    handle.close().await.unwrap();
    // The clock going back keeps appending to the newest segment.
    DAY.store(25, std::sync::atomic::Ordering::SeqCst);
    let (sink, handle) = EventLog::open_with_clock(tmp.path(), opts(), test_day).unwrap();
    sink.send(ev(3)).await.unwrap();
    handle.close().await.unwrap();
    let names: Vec<_> = list(tmp.path())
        .unwrap()
        .iter()
        .map(Segment::name)
        .collect();
    assert_eq!(
        names,
        ["2026-11-23.jsonl", "2026-11-24.jsonl", "2026-11-26.jsonl"]
    );
    let report = verify(tmp.path()).unwrap();
    assert_eq!((report.segments, report.events), (3, 4));
}

#[tokio::test]
async fn verify_rejects_an_incomplete_line_before_the_newest_segment() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), tiny(), 0..6).await;
    let segs = list(tmp.path()).unwrap();
    let mut f = OpenOptions::new().append(true).open(&segs[0].path).unwrap();
    f.write_all(b"{\"act").unwrap();
    let n = std::fs::read_to_string(&segs[0].path)
        .unwrap()
        .lines()
        .count();
    let (file, line, problem) = tampered(tmp.path());
    assert_eq!(
        (file, line, problem),
        (segs[0].path.clone(), n, Problem::Incomplete)
    );
}

#[tokio::test]
async fn a_log_has_one_writer_at_a_time() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (sink, handle) = EventLog::open(dir, opts()).unwrap();
    sink.send(ev(1)).await.unwrap();
    let second = EventLog::open(dir, opts())
        .err()
        .expect("a second writer opened the log");
    match &second {
        EventsError::InUse { dir: d, holder } => {
            assert_eq!(d, dir);
            assert_eq!(*holder, Some(std::process::id()));
        }
        other => panic!("{other}"),
    }
    let msg = second.to_string();
    assert!(msg.contains("--data-dir") && msg.contains("pid"), "{msg}");
    // The refused writer left the log as it was: the first goes on.
    sink.send(ev(2)).await.unwrap();
    handle.close().await.unwrap();
    // Closed, the log takes its next writer, which continues the chain.
    write(dir, opts(), 3..4).await;
    assert_eq!(events(dir).len(), 3);
    verify(dir).unwrap();
}

/// The log is this user's alone: a new folder is 0700 and its segments
/// 0600, and a folder others could enter is narrowed.
#[cfg(unix)]
#[tokio::test]
async fn the_log_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let tmp = tempfile::tempdir().unwrap();
    let fresh = tmp.path().join("new/events");
    write(&fresh, opts(), 0..3).await;
    assert_eq!(mode(&fresh), 0o700);
    for (path, _) in lines(&fresh) {
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
    let open = tmp.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    write(&open, opts(), 0..1).await;
    assert_eq!(mode(&open), 0o700);
}

/// Writes one event to the log in `dir` (whose segments each hold one
/// event), then makes the next segment a device that refuses every write
/// (ENOSPC); returns that segment's path, to remove once done.
#[cfg(target_os = "linux")]
async fn fail_from_the_next_segment(dir: &Path, sink: &EventSink) -> std::path::PathBuf {
    use crate::events::segment::Segment;
    sink.send(ev(0)).await.unwrap();
    sink.flush().await.unwrap();
    let first = list(dir).unwrap().remove(0);
    let next = Segment::new(dir, first.date, first.seq + 1);
    std::os::unix::fs::symlink("/dev/full", &next.path).unwrap();
    next.path
}

/// Waits (bounded) until the writer has met a failed write.
#[cfg(target_os = "linux")]
async fn until_a_write_failed(sink: &EventSink) {
    let failing = tokio::time::Instant::now() + Duration::from_secs(10);
    while sink.stats().write_errors() == 0 {
        assert!(
            tokio::time::Instant::now() < failing,
            "the write never failed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A failing disk holds traffic (events wait for their write) but not the
/// shutdown: once a close is asked for, a batch that cannot be written is
/// given up after a few attempts, and the close ends, reporting it.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_close_ends_the_writer_even_on_a_failing_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("events");
    // Every event after the first rolls to a new segment.
    let options = LogOptions {
        segment_max_bytes: 1,
        linger: Duration::ZERO,
        ..opts()
    };
    let (sink, handle) = EventLog::open(&dir, options).unwrap();
    let next = fail_from_the_next_segment(&dir, &sink).await;
    sink.send(ev(1)).await.unwrap();
    until_a_write_failed(&sink).await;
    let closed = tokio::time::timeout(Duration::from_secs(30), handle.close()).await;
    let result = closed.expect("the close hung on the failing disk");
    // The write's own error (ENOSPC), not only the final fsync's.
    let err = result.expect_err("the event it could not write is reported");
    assert!(err.to_string().contains("No space left"), "{err}");
    std::fs::remove_file(&next).unwrap();
    assert_eq!(events(&dir).len(), 1, "what was written stays");
}

/// Sends waiting for room behind a batch the disk refuses get in once a
/// close is announced: shutdown waits for them before it queues the close,
/// and must not wait for ever.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn waiting_sends_get_in_once_a_close_is_announced_on_a_failing_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("events");
    let options = LogOptions {
        segment_max_bytes: 1,
        linger: Duration::ZERO,
        capacity: 2,
        max_batch: 1,
        ..opts()
    };
    let (sink, handle) = EventLog::open(&dir, options).unwrap();
    let next = fail_from_the_next_segment(&dir, &sink).await;
    // More events than the queue holds: the last ones wait for room.
    let senders: Vec<_> = (1..8)
        .map(|i| {
            let sink = sink.clone();
            tokio::spawn(async move { sink.send(ev(i)).await })
        })
        .collect();
    until_a_write_failed(&sink).await;
    handle.begin_close();
    for s in senders {
        let sent = tokio::time::timeout(Duration::from_secs(60), s).await;
        sent.expect("a send still waits behind the failing disk")
            .unwrap()
            .unwrap();
    }
    let closed = tokio::time::timeout(Duration::from_secs(30), handle.close()).await;
    let _ = closed.expect("the close hung");
    std::fs::remove_file(&next).unwrap();
}

/// A reload's `fsync:` reaches the writer: from the events after it, the
/// log is synced the new way.
#[tokio::test]
async fn the_fsync_mode_can_change_while_the_log_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let options = LogOptions {
        fsync: Fsync::Never,
        linger: Duration::ZERO,
        ..opts()
    };
    let (sink, handle) = EventLog::open(tmp.path(), options).unwrap();
    let written = |n: u64| {
        let sink = sink.clone();
        async move {
            let by = tokio::time::Instant::now() + Duration::from_secs(10);
            while sink.stats().written() < n {
                assert!(tokio::time::Instant::now() < by, "never written");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    for i in 0..3 {
        sink.send(ev(i)).await.unwrap();
    }
    written(3).await;
    assert_eq!(sink.stats().syncs(), 0, "fsync: never synced");
    sink.set_fsync(Fsync::Always).await.unwrap();
    for i in 3..6 {
        sink.send(ev(i)).await.unwrap();
    }
    written(6).await;
    assert!(sink.stats().syncs() >= 3, "{} fsyncs", sink.stats().syncs());
    handle.close().await.unwrap();
    assert_eq!(events(tmp.path()).len(), 6);
}
