//! Shipping the local audit log into the shared table.
//!
//! The local log is the spool: every event is sealed into this replica's
//! chain on local disk first, and the shipper copies the sealed lines, byte
//! for byte and in order, into `kt_events` under this replica's name, with
//! a sequence number. Each batch is one transaction that also moves the
//! replica's head in `kt_replicas`, after checking that the head is where
//! this shipper left it; so a batch lands whole or not at all, never twice,
//! and two processes can never interleave one chain.
//!
//! When the database is unreachable the batch is kept and retried with
//! back-off while the local log keeps growing; when it answers again
//! everything written meanwhile follows. On a restart, shipping resumes
//! after the line whose hash is the stored head.
//!
//! Only what the writer has fsynced is shipped ([`EventSink::synced`]): a
//! power loss can take the last unsynced writes from the local log, and a
//! store holding events the log lost could never be resumed from it.
//!
//! [`EventSink::synced`]: crate::events::EventSink::synced
//!
//! The hash of the last event shipped is also kept beside the log
//! ([`SHIPPED`]), whatever chain name it went under: a chain that has no
//! head yet (the host name or `KT_REPLICA_ID` changed, or `replica.id` was
//! removed) starts after it, linked to it, instead of shipping the whole
//! log again; and retention keeps the segments not yet shipped.

use super::{Db, StorageError};
use crate::events::{position_after, LineTail, Position};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Most events per transaction.
const MAX_BATCH: usize = 1000;
/// Most bytes of events per transaction.
const MAX_BATCH_BYTES: usize = 4 << 20;
/// Most bytes read from the log at a time, so a long backlog is read a
/// batch at a time, not whole.
const READ_LIMIT: u64 = 1 << 20;
/// Longest wait between retries while the database is down.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often the log is looked at when no write woke the shipper.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// The file, in the events folder, that holds the hash of the last event
/// shipped. Written after each batch lands and not fsynced: a copy a crash
/// left behind is older, which costs a renamed chain a few events stored
/// twice and retention a segment kept longer, never an event.
pub const SHIPPED: &str = "replica.shipped";

/// Counters, for metrics and tests.
#[derive(Debug, Default)]
pub struct ShipStats {
    shipped: AtomicU64,
    failures: AtomicU64,
}

impl ShipStats {
    /// Events stored in the shared table by this process.
    pub fn shipped(&self) -> u64 {
        self.shipped.load(Ordering::Relaxed)
    }
    /// Failed attempts (each retried).
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
}

/// One sealed line and the fields stored beside it.
struct Line {
    ts: String,
    hash: String,
    prev_hash: String,
    text: String,
}

impl Line {
    fn parse(bytes: &[u8]) -> Option<Line> {
        #[derive(serde::Deserialize)]
        struct Head {
            ts: String,
            hash: String,
            prev_hash: String,
        }
        let text = std::str::from_utf8(bytes).ok()?;
        let head: Head = serde_json::from_str(text).ok()?;
        Some(Line {
            ts: head.ts,
            hash: head.hash,
            prev_hash: head.prev_hash,
            text: text.to_string(),
        })
    }
}

/// Where this replica's chain stands in the table, and the local log
/// position just after that event.
struct Cursor {
    tail: LineTail,
    /// The stored head's seq; 0: the chain has no head yet.
    seq: i64,
    /// The hash of the event just before `tail`: the stored head, or for a
    /// chain without one, the last event shipped under another name.
    hash: Option<String>,
    /// Where the local log is broken, past the lines read so far: nothing
    /// after it is shipped. Kept because `tail` has already read past it.
    hole: Option<Hole>,
}

/// A break in the local log found while reading a batch.
enum Hole {
    /// A line whose `prev_hash` is not the hash of the event before it.
    Link { after: String, next: String },
    /// A line that is not a sealed event.
    Damaged {
        path: PathBuf,
        after: Option<String>,
    },
}

impl Hole {
    fn error(&self) -> StorageError {
        match self {
            Hole::Link { after, next } => StorageError::Gap {
                after: after.clone(),
                next: next.clone(),
            },
            Hole::Damaged { path, after } => StorageError::Damaged {
                path: path.clone(),
                after: after.clone(),
            },
        }
    }
}

/// Why a batch did not land.
enum Failed {
    /// The stored head is not where this shipper left it (another process
    /// shipped, or a commit whose answer was lost went through): resume
    /// from the stored head.
    Moved,
    Db(StorageError),
}

/// Runs the shipper; stop it with [`finish`](ShipperHandle::finish).
pub struct ShipperHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    stats: Arc<ShipStats>,
}

impl ShipperHandle {
    /// The shipper's counters.
    pub fn stats(&self) -> &Arc<ShipStats> {
        &self.stats
    }

    /// Ships what is left (the log must be flushed first), retrying while
    /// the database fails, waiting at most `grace`; whatever could not be
    /// shipped stays in the local log and goes on the next start.
    pub async fn finish(self, grace: Duration) {
        let _ = self.stop.send(true);
        let mut task = self.task;
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            task.abort();
            tracing::warn!(
                "audit events not yet in the shared store stay in the local log; they are shipped on the next start"
            );
        }
    }
}

/// Starts shipping the log in `dir` as replica `replica` once `ready`
/// (the schema is in place). `synced` (the writer's durable end of the
/// log, [`EventSink::synced`]) bounds what is shipped and makes shipping
/// prompt; without it (no writer runs) the whole log is shipped, polled.
///
/// [`EventSink::synced`]: crate::events::EventSink::synced
pub fn start(
    db: Db,
    dir: PathBuf,
    replica: String,
    synced: Option<watch::Receiver<Position>>,
    ready: watch::Receiver<bool>,
) -> ShipperHandle {
    let (stop, stopping) = watch::channel(false);
    let stats = Arc::new(ShipStats::default());
    let shipper = Shipper {
        db,
        dir,
        replica,
        stats: stats.clone(),
        known_seq: AtomicI64::new(-1),
    };
    let task = tokio::spawn(async move {
        // Nothing to do before the schema exists. Ready wins over a stop
        // that came first: a shipper started just before shutdown still
        // ships what was written.
        let mut ready = ready;
        let mut until_stop = stopping.clone();
        tokio::select! {
            biased;
            r = ready.wait_for(|r| *r) => if r.is_err() { return },
            _ = until_stop.wait_for(|s| *s) => return,
        }
        shipper.run(synced, stopping).await
    });
    ShipperHandle { stop, task, stats }
}

struct Shipper {
    db: Db,
    dir: PathBuf,
    replica: String,
    stats: Arc<ShipStats>,
    /// The stored chain head's `seq` as this shipper last knew it (-1:
    /// not known yet). A resume that finds the head further on counts the
    /// difference as shipped: a commit whose answer was lost went through.
    known_seq: AtomicI64,
}

impl Shipper {
    async fn run(
        self,
        mut synced: Option<watch::Receiver<Position>>,
        mut stopping: watch::Receiver<bool>,
    ) {
        let mut cursor: Option<Cursor> = None;
        let mut pending: Vec<Line> = Vec::new();
        let mut backoff = Duration::from_millis(100);
        let mut down_since: Option<u64> = None;
        loop {
            // A handle dropped without `finish` stops the shipper the same way.
            let stop = *stopping.borrow() || stopping.has_changed().is_err();
            let end = synced.as_mut().map(|s| s.borrow_and_update().clone());
            let step = self.step(&mut cursor, &mut pending, end).await;
            match step {
                Ok(0) if stop => return,
                Ok(0) => {
                    // Caught up: sleep until a write, a tick or the stop.
                    tokio::select! {
                        _ = synced_more(&mut synced) => {}
                        _ = tokio::time::sleep(IDLE_POLL) => {}
                        _ = stopping.changed() => {}
                    }
                }
                Ok(n) => {
                    if let Some(failures) = down_since.take() {
                        tracing::info!(
                            database = %self.db.shown(),
                            failed_attempts = self.stats.failures() - failures,
                            "audit events: shared store reachable again; shipping the backlog"
                        );
                    }
                    backoff = Duration::from_millis(100);
                    tracing::trace!(events = n, "shipped audit events");
                }
                Err(e) => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    if down_since.is_none() {
                        down_since = Some(self.stats.failures() - 1);
                        // A gap is the local log's, and waits for an
                        // operator, not for the store.
                        let wait = match e {
                            StorageError::Gap { .. } | StorageError::Damaged { .. } => "",
                            _ => "; they stay in the local log and are shipped when the shared store answers",
                        };
                        tracing::warn!("audit events: {e}{wait}");
                    }
                    if stop {
                        // Finishing: a blip at shutdown is retried for as
                        // long as `finish` waits (it then ends the task; what
                        // is left goes on the next start). With no handle
                        // left nobody waits.
                        if stopping.has_changed().is_err() {
                            return;
                        }
                        tokio::time::sleep(backoff).await;
                    } else {
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = stopping.changed() => {}
                        }
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Ships one batch; how many events landed (0: nothing to ship).
    async fn step(
        &self,
        cursor: &mut Option<Cursor>,
        pending: &mut Vec<Line>,
        end: Option<Position>,
    ) -> Result<usize, StorageError> {
        let c = match cursor {
            Some(c) => c,
            None => {
                let c = cursor.insert(self.resume().await?);
                let known = self.known_seq.swap(c.seq, Ordering::Relaxed);
                if known >= 0 && c.seq > known {
                    let landed = u64::try_from(c.seq - known).unwrap_or(0);
                    self.stats.shipped.fetch_add(landed, Ordering::Relaxed);
                }
                c
            }
        };
        if pending.is_empty() {
            if let Some(hole) = &c.hole {
                return Err(hole.error());
            }
            *pending = next_batch(&self.dir, c, end).await?;
            // Events removed before they were shipped (retention, a hand)
            // or damaged must stop shipping, not leave a silent hole in
            // the shared chain: the lines before the first break go, and
            // nothing after it.
            let mut before = c.hash.clone();
            for (i, line) in pending.iter().enumerate() {
                if let Some(after) = before.filter(|after| *after != line.prev_hash) {
                    c.hole = Some(Hole::Link {
                        after,
                        next: line.prev_hash.clone(),
                    });
                    pending.truncate(i);
                    break;
                }
                before = Some(line.hash.clone());
            }
        }
        if pending.is_empty() {
            return match &c.hole {
                Some(hole) => Err(hole.error()),
                None => Ok(0),
            };
        }
        match self.insert(c, pending).await {
            Ok(()) => {
                let n = pending.len();
                c.seq += n as i64;
                self.known_seq.store(c.seq, Ordering::Relaxed);
                c.hash = pending.last().map(|l| l.hash.clone());
                pending.clear();
                self.note_shipped(c.hash.clone()).await;
                self.stats.shipped.fetch_add(n as u64, Ordering::Relaxed);
                Ok(n)
            }
            Err(Failed::Moved) => {
                tracing::info!(replica = %self.replica, "audit events: the shared chain head moved; resuming from it");
                *cursor = None;
                pending.clear();
                Ok(0)
            }
            Err(Failed::Db(e)) => Err(e),
        }
    }

    /// Where to continue: after the stored head, found in the local log.
    async fn resume(&self) -> Result<Cursor, StorageError> {
        let conn = self.db.conn().await?;
        let head = conn
            .query_opt(
                "SELECT last_seq, last_hash FROM kt_replicas WHERE replica = $1",
                &[&self.replica],
            )
            .await
            .map_err(|e| self.db.err(e))?;
        drop(conn);
        let Some(head) = head else {
            return self.start_chain().await;
        };
        let (seq, hash): (i64, String) = (head.get(0), head.get(1));
        let dir = self.dir.clone();
        let wanted = hash.clone();
        let found = tokio::task::spawn_blocking(move || position_after(&dir, &wanted))
            .await
            .map_err(StorageError::task)??;
        match found {
            Some(position) => {
                // A log shipped before the marker existed gets one.
                self.note_shipped(Some(hash.clone())).await;
                Ok(Cursor {
                    tail: LineTail::new(&self.dir, position).with_read_limit(READ_LIMIT),
                    seq,
                    hash: Some(hash),
                    hole: None,
                })
            }
            None => Err(StorageError::Spool(crate::events::EventsError::Corrupt {
                path: self.dir.clone(),
                line: 0,
                problem: format!(
                    "the shared store's last event of replica {} ({hash}) is not in the local log; remove {} and {} to ship the local log again as a new chain",
                    self.replica,
                    self.dir.join(super::replica::FILE).display(),
                    self.dir.join(SHIPPED).display()
                ),
            })),
        }
    }

    /// Where a chain without a head starts: after the last event this log
    /// shipped under any name, else at the log's start.
    async fn start_chain(&self) -> Result<Cursor, StorageError> {
        let dir = self.dir.clone();
        let found = tokio::task::spawn_blocking(move || {
            let Some(hash) = last_shipped(&dir)? else {
                return Ok(None);
            };
            let position = position_after(&dir, &hash)?;
            Ok::<_, crate::events::EventsError>(Some((hash, position)))
        })
        .await
        .map_err(StorageError::task)??;
        let (position, hash) = match found {
            None => (Position::default(), None),
            Some((hash, Some(position))) => {
                tracing::info!(replica = %self.replica, after = %hash, "audit events: a new chain, continuing after the last event shipped");
                (position, Some(hash))
            }
            Some((hash, None)) => {
                return Err(StorageError::Spool(crate::events::EventsError::Corrupt {
                    path: self.dir.join(SHIPPED),
                    line: 1,
                    problem: format!(
                        "the last event shipped ({hash}) is not in the local log; remove this file to ship the local log again as a new chain"
                    ),
                }))
            }
        };
        Ok(Cursor {
            tail: LineTail::new(&self.dir, position).with_read_limit(READ_LIMIT),
            seq: 0,
            hash,
            hole: None,
        })
    }

    /// Keeps `hash` as the last event shipped (see [`SHIPPED`]).
    async fn note_shipped(&self, hash: Option<String>) {
        let Some(hash) = hash else { return };
        let path = self.dir.join(SHIPPED);
        let tmp = self.dir.join(format!("{SHIPPED}.tmp"));
        let written = tokio::task::spawn_blocking(move || {
            std::fs::write(&tmp, format!("{hash}\n")).and_then(|()| std::fs::rename(&tmp, &path))
        })
        .await;
        if let Ok(Err(e)) = written {
            tracing::warn!(error = %e, "audit events: cannot note the last event shipped");
        }
    }

    async fn insert(&self, c: &Cursor, lines: &[Line]) -> Result<(), Failed> {
        let db = |e| Failed::Db(self.db.err(e));
        let mut conn = self.db.conn().await.map_err(Failed::Db)?;
        let tx = conn.transaction().await.map_err(db)?;
        let head = tx
            .query_opt(
                "SELECT last_seq, last_hash FROM kt_replicas WHERE replica = $1 FOR UPDATE",
                &[&self.replica],
            )
            .await
            .map_err(db)?;
        let stored = head.map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1)));
        let expected = c.hash.clone().filter(|_| c.seq > 0).map(|h| (c.seq, h));
        if stored != expected {
            return Err(Failed::Moved);
        }
        let seqs: Vec<i64> = (1..=lines.len() as i64).map(|i| c.seq + i).collect();
        let ts: Vec<&str> = lines.iter().map(|l| l.ts.as_str()).collect();
        let hashes: Vec<&str> = lines.iter().map(|l| l.hash.as_str()).collect();
        let prevs: Vec<&str> = lines.iter().map(|l| l.prev_hash.as_str()).collect();
        let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
        tx.execute(
            "INSERT INTO kt_events (replica, seq, ts, hash, prev_hash, line)
             SELECT $1, s, t::timestamptz, h, p, l
             FROM unnest($2::int8[], $3::text[], $4::text[], $5::text[], $6::text[]) AS u(s, t, h, p, l)",
            &[&self.replica, &seqs, &ts, &hashes, &prevs, &texts],
        )
        .await
        .map_err(db)?;
        let last_seq = c.seq + lines.len() as i64;
        let last_hash = hashes.last().copied().unwrap_or_default();
        tx.execute(
            "INSERT INTO kt_replicas (replica, last_seq, last_hash) VALUES ($1, $2, $3)
             ON CONFLICT (replica) DO UPDATE
             SET last_seq = EXCLUDED.last_seq, last_hash = EXCLUDED.last_hash, updated_at = now()",
            &[&self.replica, &last_seq, &last_hash],
        )
        .await
        .map_err(db)?;
        tx.execute("SELECT pg_notify('kt_events', $1)", &[&self.replica])
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)
    }
}

/// The next batch after the cursor. On an error the cursor stays where it
/// was: its reader is lent to a blocking task, and what stands in for it
/// meanwhile is a reader at the same place (a reader left at the start of
/// the log would ship every kept event again under new sequence numbers).
/// `end`: how far the log is durable.
async fn next_batch(
    dir: &Path,
    c: &mut Cursor,
    end: Option<Position>,
) -> Result<Vec<Line>, StorageError> {
    c.tail.until(end);
    let here = LineTail::new(dir, c.tail.position()).with_read_limit(READ_LIMIT);
    let (tail, lines, damaged) = read_batch(std::mem::replace(&mut c.tail, here)).await?;
    c.tail = tail;
    if let Some(path) = damaged {
        let after = lines.last().map(|l| l.hash.clone()).or(c.hash.clone());
        c.hole = Some(Hole::Damaged { path, after });
    }
    Ok(lines)
}

/// Retention of a shipped log: whole segments older than `retention_days`
/// UTC days, but never the one holding the last event shipped nor any
/// after it (shipping resumes there), and none while no event is known to
/// have been shipped.
pub fn prune(dir: &Path, retention_days: u32) -> Result<Vec<PathBuf>, crate::events::EventsError> {
    let Some(hash) = last_shipped(dir)? else {
        return Ok(Vec::new());
    };
    match position_after(dir, &hash)?.and_then(|p| p.segment) {
        Some(keep) => crate::events::prune_until(dir, retention_days, &keep),
        None => Ok(Vec::new()),
    }
}

/// The hash of the last event shipped from the log in `dir`, if noted.
pub fn last_shipped(dir: &Path) -> Result<Option<String>, crate::events::EventsError> {
    let path = dir.join(SHIPPED);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let hash = text.trim();
            if crate::events::chain::is_hash(hash) {
                Ok(Some(hash.to_string()))
            } else {
                Err(crate::events::EventsError::Corrupt {
                    path,
                    line: 1,
                    problem: "not an event hash".into(),
                })
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(crate::events::EventsError::io(&path, e)),
    }
}

/// Reads up to one batch of new complete lines (file I/O, off the async
/// workers). The batch ends at a line that is not a sealed event; the file
/// it is in comes back with it.
async fn read_batch(
    mut tail: LineTail,
) -> Result<(LineTail, Vec<Line>, Option<PathBuf>), StorageError> {
    tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        let mut bytes = 0;
        let mut damaged: Option<PathBuf> = None;
        while lines.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES && damaged.is_none() {
            let before = lines.len();
            tail.read(|path, raw| {
                if damaged.is_some() || raw.trim_ascii().is_empty() {
                    return;
                }
                match Line::parse(raw) {
                    Some(line) => {
                        bytes += line.text.len();
                        lines.push(line);
                    }
                    None => {
                        tracing::error!(
                            path = %path.display(),
                            "audit log line is not a sealed event; neither it nor any after it is shipped (run `kt events verify`)"
                        );
                        damaged = Some(path.to_path_buf());
                    }
                }
            })?;
            if lines.len() == before {
                break;
            }
        }
        Ok((tail, lines, damaged))
    })
    .await
    .map_err(StorageError::task)?
}

/// Waits until the writer has made more of the log durable; never once
/// it has stopped (what it made durable stays readable).
async fn synced_more(synced: &mut Option<watch::Receiver<Position>>) {
    if let Some(rx) = synced {
        if rx.changed().await.is_ok() {
            return;
        }
    }
    std::future::pending().await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::events::{Action, Event, EventLog, LogOptions, Phase};

    /// A log of `n` events in `dir`, closed; the hashes in order.
    async fn log(dir: &Path, n: usize) -> Vec<String> {
        let (sink, writer) = EventLog::open(dir, LogOptions::default()).unwrap();
        let mut feed = sink.subscribe();
        for _ in 0..n {
            sink.send(Event::new(Phase::Input, Action::Pass))
                .await
                .unwrap();
        }
        writer.close().await.unwrap();
        let mut hashes = Vec::new();
        for _ in 0..n {
            hashes.push(feed.recv().await.unwrap().hash.clone());
        }
        hashes
    }

    fn cursor_after(dir: &Path, hash: &str) -> Cursor {
        let at = position_after(dir, hash).unwrap().unwrap();
        Cursor {
            tail: LineTail::new(dir, at).with_read_limit(READ_LIMIT),
            seq: 1,
            hash: Some(hash.to_string()),
            hole: None,
        }
    }

    #[tokio::test]
    async fn retention_keeps_what_is_not_shipped() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("events");
        let mut hashes = Vec::new();
        // One segment a day, long ago.
        fn day(d: u8) -> time::Date {
            time::Date::from_calendar_date(2020, time::Month::January, d).unwrap()
        }
        let days: [fn() -> time::Date; 3] = [|| day(1), || day(2), || day(3)];
        for today in days {
            let (sink, writer) =
                EventLog::open_with_clock(&dir, LogOptions::default(), today).unwrap();
            let mut feed = sink.subscribe();
            sink.send(Event::new(Phase::Input, Action::Pass))
                .await
                .unwrap();
            writer.close().await.unwrap();
            hashes.push(feed.recv().await.unwrap().hash.clone());
        }
        assert!(prune(&dir, 30).unwrap().is_empty(), "nothing shipped yet");
        std::fs::write(dir.join(SHIPPED), format!("{}\n", hashes[1])).unwrap();
        assert_eq!(prune(&dir, 30).unwrap(), [dir.join("2020-01-01.jsonl")]);
        let mut c = cursor_after(&dir, &hashes[1]);
        // The first read only steps over the end of the cursor's segment.
        let mut lines = next_batch(&dir, &mut c, None).await.unwrap();
        if lines.is_empty() {
            lines = next_batch(&dir, &mut c, None).await.unwrap();
        }
        assert_eq!(
            lines[0].hash, hashes[2],
            "shipping goes on from the kept segment"
        );
    }

    #[tokio::test]
    async fn only_what_the_writer_fsynced_is_shipped() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("events");
        let options = LogOptions {
            sync_interval: Duration::from_secs(60),
            ..LogOptions::default()
        };
        let (sink, writer) = EventLog::open(&dir, options).unwrap();
        let synced = sink.synced();
        sink.send(Event::new(Phase::Input, Action::Pass))
            .await
            .unwrap();
        while sink.stats().written() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut c = Cursor {
            tail: LineTail::new(&dir, Position::default()).with_read_limit(READ_LIMIT),
            seq: 0,
            hash: None,
            hole: None,
        };
        let end = || Some(synced.borrow().clone());
        let lines = next_batch(&dir, &mut c, end()).await.unwrap();
        assert!(lines.is_empty(), "written, not yet fsynced");
        sink.flush().await.unwrap();
        let lines = next_batch(&dir, &mut c, end()).await.unwrap();
        assert_eq!(lines.len(), 1, "fsynced");
        writer.close().await.unwrap();
    }

    #[tokio::test]
    async fn a_failed_read_leaves_the_cursor_where_it_was() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("events");
        let hashes = log(&dir, 3).await;
        let mut c = cursor_after(&dir, &hashes[0]);
        // The folder briefly unreadable: a file stands in its place.
        let aside = tmp.path().join("aside");
        std::fs::rename(&dir, &aside).unwrap();
        std::fs::write(&dir, "").unwrap();
        assert!(next_batch(&dir, &mut c, None).await.is_err());
        std::fs::remove_file(&dir).unwrap();
        std::fs::rename(&aside, &dir).unwrap();
        let lines = next_batch(&dir, &mut c, None).await.unwrap();
        let got: Vec<&str> = lines.iter().map(|l| l.hash.as_str()).collect();
        assert_eq!(
            got,
            [&hashes[1], &hashes[2]],
            "the events after the cursor, once"
        );
    }
}
