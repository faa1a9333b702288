//! The audit log writer: one thread fed by a bounded channel that seals events into the hash chain and appends them to segment files.
//!
//! Senders never lose an event: when the channel is full, [`EventSink::send`]
//! waits (and [`WriterStats::full_waits`] counts it). The writer drains
//! whatever is queued as one batch, chains it, appends it with one `write`
//! per segment touched and fsyncs according to [`Fsync`] (with `batch`, one
//! fsync per [`LogOptions::sync_interval`], due even when no more events come). A failed write is
//! rolled back (the file truncated to its length before the write) and
//! retried with back-off; meanwhile the channel fills and requests wait,
//! which is the point: no audit, no traffic.
//!
//! The writer is a dedicated OS thread, not a tokio task, because every
//! thing it does is blocking file I/O; it talks to async code only through
//! the channel, a broadcast of written events and one-shot replies.

use super::chain::{is_hash, seal_into, GENESIS_HASH};
use super::segment::{self, Segment};
use super::{Event, EventsError, Position};
pub use crate::config::Fsync;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::Date;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

/// Settings of the writer.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// Events queued before senders wait.
    pub capacity: usize,
    /// A segment is rolled to `YYYY-MM-DD.N.jsonl` before it would exceed
    /// this size (a single larger event still gets a segment of its own).
    pub segment_max_bytes: u64,
    /// When to fsync.
    pub fsync: Fsync,
    /// Most events sealed and written as one batch.
    pub max_batch: usize,
    /// After the first event of a batch, how long the writer lets more
    /// arrive before writing (group commit): one write per batch instead
    /// of per event, and far fewer writer wake-ups on a busy gateway.
    /// Flushes and closes do not wait. Kept short because the writer
    /// shares the gateway's core: what gathers in one linger is sealed in
    /// one burst, and requests arriving meanwhile wait for it (2 ms rather
    /// than 5 took about 14% off the 32-connection p99 in two runs, with
    /// throughput the same within the rounds' spread).
    pub linger: Duration,
    /// With `fsync: batch`, the longest a written event waits for its
    /// fsync: the batches written within it share one. An fsync costs far
    /// more CPU than a batch's write (the journal commit and the disk's
    /// round trip), and on the gateway's own core each one is a pause.
    pub sync_interval: Duration,
    /// Written events kept for slow live-feed subscribers before they lag.
    pub feed_capacity: usize,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            capacity: 4096,
            segment_max_bytes: 64 * 1024 * 1024,
            fsync: Fsync::Batch,
            max_batch: 4096,
            linger: Duration::from_millis(2),
            sync_interval: Duration::from_millis(50),
            feed_capacity: 1024,
        }
    }
}

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct WriterStats {
    full_waits: AtomicU64,
    written: AtomicU64,
    write_errors: AtomicU64,
    syncs: AtomicU64,
}

impl WriterStats {
    /// Sends, and exchanges about to start, that found the channel full and
    /// had to wait.
    pub fn full_waits(&self) -> u64 {
        self.full_waits.load(Ordering::Relaxed)
    }
    /// Events appended to the log.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
    /// Failed (and retried) writes.
    pub fn write_errors(&self) -> u64 {
        self.write_errors.load(Ordering::Relaxed)
    }
    /// fsyncs of the log's segments.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }
}

/// A send to a writer that has stopped; carries the event back.
#[derive(Debug, thiserror::Error)]
#[error("the audit log writer has stopped")]
pub struct SendError(pub Box<Event>);

impl SendError {
    /// Stable snake_case label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        "events_writer_gone"
    }
}

enum Msg {
    Event(Box<Event>),
    /// Reply once everything queued before is written and fsynced.
    Flush(oneshot::Sender<Result<(), EventsError>>),
    /// Like `Flush`, then stop.
    Close(oneshot::Sender<Result<(), EventsError>>),
    /// From the next batch on, fsync this way (a policy reload).
    SetFsync(Fsync),
}

/// Where request handlers send events. Cheap to clone.
#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::Sender<Msg>,
    stats: Arc<WriterStats>,
    feed: broadcast::Sender<Arc<Event>>,
    synced: watch::Receiver<Position>,
}

impl EventSink {
    /// Queues `event`; waits while the channel is full, never drops it.
    /// `prev_hash` and `hash` are overwritten by the writer. A boxed event
    /// travels to the file as that one box: events are large, and moving
    /// them by value costs a copy at every step.
    pub async fn send(&self, event: impl Into<Box<Event>>) -> Result<(), SendError> {
        match self.tx.try_send(Msg::Event(event.into())) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(msg)) => {
                self.stats.full_waits.fetch_add(1, Ordering::Relaxed);
                self.tx.send(msg).await.map_err(|e| returned(e.0))
            }
            Err(mpsc::error::TrySendError::Closed(msg)) => Err(returned(msg)),
        }
    }

    /// Queues `event` if there is room at once; hands it back otherwise
    /// (full or closed), for the caller to [`send`](EventSink::send) it.
    pub fn try_send(&self, event: impl Into<Box<Event>>) -> Result<(), Box<Event>> {
        match self.tx.try_send(Msg::Event(event.into())) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(msg) | mpsc::error::TrySendError::Closed(msg)) => {
                Err(returned(msg).0)
            }
        }
    }

    /// Waits, at most `max_wait`, for room in the queue, behind the events
    /// already waiting for it; false if none came. Callers about to
    /// produce events (an exchange that starts) wait here, so traffic slows
    /// to the writer's pace instead of piling events up in memory: an event
    /// that finds the queue full waits in a task, and nothing else would
    /// bound how many do. True at once when there is room or the log is
    /// closed.
    pub async fn room(&self, max_wait: Duration) -> bool {
        if self.tx.capacity() > 0 {
            return true;
        }
        self.stats.full_waits.fetch_add(1, Ordering::Relaxed);
        // The permit comes in the channel's FIFO order and goes back unused.
        tokio::time::timeout(max_wait, self.tx.reserve())
            .await
            .is_ok()
    }

    /// Events in the queue, not yet taken by the writer (a gauge for metrics).
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Waits until everything sent before is written and fsynced.
    pub async fn flush(&self) -> Result<(), EventsError> {
        let (reply, done) = oneshot::channel();
        self.tx
            .send(Msg::Flush(reply))
            .await
            .map_err(|_| EventsError::WriterGone)?;
        done.await.map_err(|_| EventsError::WriterGone)?
    }

    /// Changes when the writer fsyncs, from the events after those already
    /// queued: a policy reload's `fsync:`. What was written before and
    /// awaits its deferred fsync is synced first.
    pub async fn set_fsync(&self, fsync: Fsync) -> Result<(), EventsError> {
        self.tx
            .send(Msg::SetFsync(fsync))
            .await
            .map_err(|_| EventsError::WriterGone)
    }

    /// A live feed of events as they are written (with their hashes).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.feed.subscribe()
    }

    /// How far the log is durable: the end of the last fsynced write
    /// (with `fsync: never`, of the last write), changed after each.
    /// Whatever copies the log elsewhere reads no further, or a power loss
    /// could leave the copy holding events the log no longer has.
    pub fn synced(&self) -> watch::Receiver<Position> {
        self.synced.clone()
    }

    /// Counters for metrics.
    pub fn stats(&self) -> &Arc<WriterStats> {
        &self.stats
    }

    /// True once the log was closed: sends fail from then on.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

fn returned(msg: Msg) -> SendError {
    match msg {
        Msg::Event(e) => SendError(e),
        // Unreachable: `send` only ever sends `Msg::Event`. An error event
        // stands in rather than a panic.
        Msg::Flush(_) | Msg::Close(_) | Msg::SetFsync(_) => SendError(Box::new(Event::new(
            super::Phase::Input,
            super::Action::Error,
        ))),
    }
}

/// Owner of the writer thread; [`close`](WriterHandle::close) it on shutdown.
pub struct WriterHandle {
    tx: mpsc::Sender<Msg>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Set before the close is queued: a writer retrying a batch on a
    /// failing disk would otherwise never reach the close behind it.
    closing: Arc<AtomicBool>,
}

impl WriterHandle {
    /// Tells the writer a close is coming, before it is queued: from now
    /// on a batch the disk refuses is given up after a few attempts rather
    /// than retried for ever. Shutdown calls this before waiting for the
    /// events still being sent, which a writer stuck on a full disk would
    /// otherwise never take.
    pub fn begin_close(&self) {
        self.closing.store(true, Ordering::Release);
    }

    /// Writes everything queued (including events queued after this call
    /// started but before the writer saw it), fsyncs and stops the writer.
    /// Later sends fail with [`SendError`].
    pub async fn close(mut self) -> Result<(), EventsError> {
        self.closing.store(true, Ordering::Release);
        let (reply, done) = oneshot::channel();
        self.tx
            .send(Msg::Close(reply))
            .await
            .map_err(|_| EventsError::WriterGone)?;
        let result = done.await.map_err(|_| EventsError::WriterGone)?;
        if let Some(thread) = self.thread.take() {
            // The thread has replied and only returns now; joining is brief.
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        result
    }
}

/// The audit log in one folder.
pub struct EventLog;

impl EventLog {
    /// Opens (creating if needed) the log in `dir`, continuing the chain from
    /// the last event on disk, and starts the writer.
    ///
    /// A torn last line (no trailing newline: the process died mid-write) is
    /// cut off with a warning rather than refused: it was never a complete
    /// event, so it is not part of the chain, and refusing would stop all
    /// traffic after every crash. A last *complete* line that is not a sealed
    /// event is refused ([`EventsError::Corrupt`]): that is damage, not a crash.
    pub fn open(dir: &Path, options: LogOptions) -> Result<(EventSink, WriterHandle), EventsError> {
        Self::open_with_clock(dir, options, utc_today)
    }

    /// [`open`](EventLog::open) with the UTC day supplied by `today`, so
    /// tests can cross midnight.
    pub(crate) fn open_with_clock(
        dir: &Path,
        options: LogOptions,
        today: fn() -> Date,
    ) -> Result<(EventSink, WriterHandle), EventsError> {
        private_dir(dir)?;
        // Before recovery: a second writer would cut the first one's line
        // in flight as torn, then fork the chain.
        let lock = lock_writer(dir)?;
        let (prev_hash, current) = recover(dir)?;
        super::anchor::ensure(dir)?;
        // What a crashed process wrote may still be in the page cache
        // only: made durable before it counts as such.
        let at_open = match &current {
            Some(open) if options.fsync != Fsync::Never => {
                open.file
                    .sync_data()
                    .map_err(|e| EventsError::io(&open.seg.path, e))?;
                open.position()
            }
            Some(open) => open.position(),
            None => Position::default(),
        };
        let (synced, synced_rx) = watch::channel(at_open);
        let (tx, rx) = mpsc::channel(options.capacity.max(1));
        let (feed, _) = broadcast::channel(options.feed_capacity.max(1));
        let stats = Arc::new(WriterStats::default());
        let closing = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            dir: dir.to_path_buf(),
            options,
            current,
            prev_hash,
            stats: stats.clone(),
            feed: feed.clone(),
            synced,
            today,
            dirty: false,
            last_sync: Instant::now(),
            buffers: BatchBuffers::default(),
            closing: closing.clone(),
            _lock: lock,
        };
        let thread = std::thread::Builder::new()
            .name("kt-events".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| EventsError::io(dir, e))?;
        Ok((
            EventSink {
                tx: tx.clone(),
                stats,
                feed,
                synced: synced_rx,
            },
            WriterHandle {
                tx,
                thread: Some(thread),
                closing,
            },
        ))
    }
}

/// The file in a log's folder whose lock marks its one writer; it holds
/// the writer's process id, for the error another one gets.
pub const WRITER_LOCK_FILE: &str = ".writer.lock";

/// Takes the log's writer lock, or says who holds it. Two writers (two
/// gateways given one `--data-dir`) would each continue the chain from the
/// same last event and break it. `None` where the file system has no
/// locks (some network mounts): the log is still written, with a warning.
fn lock_writer(dir: &Path) -> Result<Option<File>, EventsError> {
    let path = dir.join(WRITER_LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| EventsError::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => {
            // Only a note for whoever is refused next: not worth failing on.
            let _ = file
                .set_len(0)
                .and_then(|()| writeln!(file, "{}", std::process::id()));
            Ok(Some(file))
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.trim().parse().ok());
            Err(EventsError::InUse {
                dir: dir.to_path_buf(),
                holder,
            })
        }
        Err(std::fs::TryLockError::Error(e)) if e.kind() == std::io::ErrorKind::Unsupported => {
            tracing::warn!(
                path = %path.display(),
                "the file system cannot lock the audit log: make sure only one gateway writes to it"
            );
            Ok(None)
        }
        Err(std::fs::TryLockError::Error(e)) => Err(EventsError::io(&path, e)),
    }
}

struct OpenSegment {
    seg: Segment,
    file: File,
    len: u64,
}

impl OpenSegment {
    /// Its end.
    fn position(&self) -> Position {
        Position {
            segment: Some(self.seg.path.clone()),
            offset: self.len,
        }
    }
}

/// Finds the hash to continue from and the newest segment (opened for append).
fn recover(dir: &Path) -> Result<(String, Option<OpenSegment>), EventsError> {
    let segments = segment::list(dir)?;
    let mut prev_hash = None;
    for (i, seg) in segments.iter().enumerate().rev() {
        let newest = i + 1 == segments.len();
        let mut bytes = std::fs::read(&seg.path).map_err(|e| EventsError::io(&seg.path, e))?;
        if bytes.last().is_some_and(|&b| b != b'\n') {
            let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
            if !newest {
                return Err(EventsError::Corrupt {
                    path: seg.path.clone(),
                    line: line_count(&bytes[..keep]) + 1,
                    problem: "incomplete last line in a segment that is not the newest".into(),
                });
            }
            tracing::warn!(
                path = %seg.path.display(),
                cut_bytes = bytes.len() - keep,
                "audit log ends with an incomplete line (crash mid-write?); truncating it away"
            );
            let file = OpenOptions::new()
                .write(true)
                .open(&seg.path)
                .map_err(|e| EventsError::io(&seg.path, e))?;
            file.set_len(keep as u64)
                .and_then(|()| file.sync_all())
                .map_err(|e| EventsError::io(&seg.path, e))?;
            bytes.truncate(keep);
        }
        if let Some(hash) = last_hash(&seg.path, &bytes)? {
            prev_hash = Some(hash);
            break;
        }
    }
    let current = match segments.into_iter().last() {
        Some(seg) => {
            let file = append(&seg.path)?;
            let len = file
                .metadata()
                .map_err(|e| EventsError::io(&seg.path, e))?
                .len();
            Some(OpenSegment { seg, file, len })
        }
        None => None,
    };
    Ok((
        prev_hash.unwrap_or_else(|| GENESIS_HASH.to_string()),
        current,
    ))
}

fn line_count(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b == b'\n').count()
}

/// The `hash` of the last non-empty line of a segment's complete lines.
pub(super) fn last_hash(path: &Path, bytes: &[u8]) -> Result<Option<String>, EventsError> {
    let lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    let Some((idx, line)) = lines
        .iter()
        .enumerate()
        .rev()
        .find(|(_, l)| !l.trim_ascii().is_empty())
    else {
        return Ok(None);
    };
    let corrupt = |problem: &str| EventsError::Corrupt {
        path: path.to_path_buf(),
        line: idx + 1,
        problem: problem.into(),
    };
    let value: serde_json::Value =
        serde_json::from_slice(line).map_err(|_| corrupt("not a JSON object"))?;
    match value.get("hash").and_then(|h| h.as_str()) {
        Some(h) if is_hash(h) => Ok(Some(h.to_string())),
        _ => Err(corrupt("no valid \"hash\" field")),
    }
}

fn append(path: &Path) -> Result<File, EventsError> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).map_err(|e| EventsError::io(path, e))
}

/// Creates the log's folder for this user alone (0700), and narrows one
/// that others can enter: events hold who asked what, and with
/// `log_bodies` the prompts and answers themselves.
fn private_dir(dir: &Path) -> Result<(), EventsError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        builder.mode(0o700);
        builder.create(dir).map_err(|e| EventsError::io(dir, e))?;
        let mode = std::fs::metadata(dir)
            .map_err(|e| EventsError::io(dir, e))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            tracing::info!(path = %dir.display(), mode = format!("{:o}", mode & 0o777), "audit log folder was open to other users; narrowing it to 0700");
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| EventsError::io(dir, e))?;
        }
        Ok(())
    }
    #[cfg(not(unix))]
    builder.create(dir).map_err(|e| EventsError::io(dir, e))
}

struct Writer {
    dir: PathBuf,
    options: LogOptions,
    current: Option<OpenSegment>,
    /// Hash of the last event written (or recovered).
    prev_hash: String,
    stats: Arc<WriterStats>,
    feed: broadcast::Sender<Arc<Event>>,
    /// See [`EventSink::synced`].
    synced: watch::Sender<Position>,
    today: fn() -> Date,
    /// Written to the current segment and not yet fsynced (`fsync: batch`).
    dirty: bool,
    last_sync: Instant,
    /// A batch's buffers, kept between batches so that sealing and writing
    /// an event allocates nothing but its hash.
    buffers: BatchBuffers,
    /// See [`WriterHandle::closing`].
    closing: Arc<AtomicBool>,
    /// Held while the writer runs: one writer per log.
    _lock: Option<File>,
}

/// See [`Writer::buffers`].
#[derive(Default)]
struct BatchBuffers {
    /// The batch's lines back to back.
    lines: Vec<u8>,
    /// Where each line ends (after its newline).
    ends: Vec<usize>,
    /// The canonical form of the event being sealed.
    scratch: Vec<u8>,
}

impl BatchBuffers {
    /// Kept capacity above which a batch's buffers are given back: a burst
    /// of events with logged bodies should not pin megabytes.
    const KEEP: usize = 256 << 10;

    fn take(&mut self) -> BatchBuffers {
        let mut b = std::mem::take(self);
        b.lines.clear();
        b.ends.clear();
        b
    }

    fn put_back(&mut self, mut b: BatchBuffers) {
        if b.lines.capacity() > Self::KEEP {
            b.lines = Vec::new();
        }
        if b.scratch.capacity() > Self::KEEP {
            b.scratch = Vec::new();
        }
        *self = b;
    }
}

fn utc_today() -> Date {
    time::OffsetDateTime::now_utc().date()
}

/// The sealed lines of one batch, back to back in one buffer.
struct Lines<'a> {
    buf: &'a [u8],
    /// End offset (after the newline) of each line.
    ends: &'a [usize],
}

impl Lines<'_> {
    fn start(&self, i: usize) -> usize {
        i.checked_sub(1)
            .and_then(|p| self.ends.get(p))
            .copied()
            .unwrap_or(0)
    }

    /// Line `i`, newline included.
    fn get(&self, i: usize) -> &[u8] {
        let end = self.ends.get(i).copied().unwrap_or(self.buf.len());
        self.buf.get(self.start(i)..end).unwrap_or_default()
    }

    /// Lines `from..to`, back to back.
    fn span(&self, from: usize, to: usize) -> &[u8] {
        let end = to
            .checked_sub(1)
            .and_then(|l| self.ends.get(l))
            .copied()
            .unwrap_or(0);
        self.buf.get(self.start(from)..end).unwrap_or_default()
    }
}

/// The `hash` of a sealed line (the first `"hash":"` in it is the field:
/// see [`seal`]).
fn hash_of_line(line: &str) -> Option<String> {
    let at = line.find(",\"hash\":\"")? + 9;
    line.get(at..at + 64)
        .filter(|h| is_hash(h))
        .map(str::to_owned)
}

/// Most events taken as one batch with `fsync: always`.
const ALWAYS_MAX_BATCH: usize = 32;

/// Write attempts once a close is pending: shutdown must not hang forever on
/// a dead disk (about 1.5 s of back-off in all).
const CLOSING_ATTEMPTS: u32 = 5;

impl Writer {
    /// The most events taken as one batch.
    fn max_batch(&self) -> usize {
        let max_batch = self.options.max_batch.max(1);
        if self.options.fsync == Fsync::Always {
            // Syncing every event, a large batch saves nothing, and taking
            // the whole queue at once would free all its room in one go and
            // then leave it full while the batch syncs: new exchanges would
            // stop and go. Small batches free room at the disk's pace.
            return max_batch.min(ALWAYS_MAX_BATCH);
        }
        max_batch
    }

    fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut max_batch = self.max_batch();
        let mut busy = false;
        // Emptied by each write and kept: no allocation per batch.
        let mut batch = Vec::new();
        // A batch given up once a close was asked for (only then does a
        // write give up): the close reports it.
        let mut given_up: Option<EventsError> = None;
        while let Some((first, waited)) = self.next_msg(&mut rx) {
            // Lingering gathers a quiet gateway's events into one write;
            // when the last batch was full the queue is busy and there is
            // no need to wait for more.
            if matches!(first, Msg::Event(_)) && !self.options.linger.is_zero() && !busy && !waited
            {
                std::thread::sleep(self.options.linger);
            }
            let mut flushes = Vec::new();
            let mut close = None;
            let mut fsync = None;
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Event(e) => batch.push(e),
                    Msg::Flush(reply) => flushes.push(reply),
                    // Taken after this batch, which was queued before it.
                    Msg::SetFsync(f) => {
                        fsync = Some(f);
                        break;
                    }
                    Msg::Close(reply) => {
                        // Stop new sends but drain what is already queued,
                        // so a send that returned Ok is never lost.
                        rx.close();
                        close = Some(reply);
                    }
                }
                if batch.len() < max_batch || close.is_some() {
                    next = rx.try_recv().ok();
                }
            }
            busy = batch.len() >= max_batch;
            let closing = close.is_some();
            let written = if batch.is_empty() {
                Ok(())
            } else {
                self.write_batch(&mut batch, closing.then_some(CLOSING_ATTEMPTS))
            };
            for reply in flushes {
                let _ = reply.send(self.sync());
            }
            if let Some(reply) = close {
                let result = match given_up.take() {
                    Some(e) => Err(e),
                    None => written.and_then(|()| self.sync()),
                };
                let _ = reply.send(result);
                return;
            }
            if let Err(e) = written {
                given_up.get_or_insert(e);
            }
            if let Some(f) = fsync.filter(|f| *f != self.options.fsync) {
                if self.dirty {
                    self.sync_logged();
                }
                self.options.fsync = f;
                max_batch = self.max_batch();
                tracing::info!(fsync = ?f, "audit log fsync changed");
            }
        }
        // Every sender is gone without a close: still make it durable.
        if let Err(e) = self.sync() {
            tracing::error!(error = %e, "final fsync of the audit log failed");
        }
    }

    /// The next message, after the deferred fsync of `fsync: batch` once it
    /// is due; while a written batch awaits it, the wait is cut short to
    /// sync on time, as nothing else may come to do it. `true` with a
    /// message that arrived during such a wait: it has already lingered.
    fn next_msg(&mut self, rx: &mut mpsc::Receiver<Msg>) -> Option<(Msg, bool)> {
        let mut waited = false;
        while self.dirty {
            let due = self
                .options
                .sync_interval
                .saturating_sub(self.last_sync.elapsed());
            if due.is_zero() {
                // On failure still dirty: retried an interval later.
                self.sync_logged();
                continue;
            }
            match rx.try_recv() {
                Ok(msg) => return Some((msg, waited)),
                Err(mpsc::error::TryRecvError::Disconnected) => return None,
                Err(mpsc::error::TryRecvError::Empty) => {}
            }
            // In linger-sized naps, so an event arriving meanwhile is
            // written about as soon as it would have been.
            std::thread::sleep(due.min(self.options.linger.max(Duration::from_millis(1))));
            waited = true;
        }
        rx.blocking_recv().map(|msg| (msg, false))
    }

    fn sync(&mut self) -> Result<(), EventsError> {
        self.last_sync = Instant::now();
        let Some(open) = &self.current else {
            return Ok(());
        };
        self.stats.syncs.fetch_add(1, Ordering::Relaxed);
        open.file
            .sync_data()
            .map_err(|e| EventsError::io(&open.seg.path, e))?;
        self.dirty = false;
        self.synced.send_replace(open.position());
        Ok(())
    }

    /// The deferred fsync of `fsync: batch`; a failure is retried at the
    /// next interval (the lines are written: only their durability waits).
    fn sync_logged(&mut self) {
        if let Err(e) = self.sync() {
            self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "fsync of the audit log failed; retrying");
        }
    }

    /// Seals and writes `batch` (leaving it empty), retrying until it is
    /// on disk, or at most `attempts` times (when closing); what could not
    /// be written is then reported as lost.
    // Boxed events stay in their boxes: moving ~800 bytes per event into the
    // batch, and again out of it, was a measurable copy per event.
    #[allow(clippy::vec_box)]
    fn write_batch(
        &mut self,
        batch: &mut Vec<Box<Event>>,
        attempts: Option<u32>,
    ) -> Result<(), EventsError> {
        let mut buffers = self.buffers.take();
        let result = self.seal_and_write(batch, attempts, &mut buffers);
        self.buffers.put_back(buffers);
        result
    }

    #[allow(clippy::vec_box)]
    fn seal_and_write(
        &mut self,
        batch: &mut Vec<Box<Event>>,
        attempts: Option<u32>,
        buffers: &mut BatchBuffers,
    ) -> Result<(), EventsError> {
        let BatchBuffers {
            lines: buf,
            ends,
            scratch,
        } = buffers;
        let live = self.feed.receiver_count() > 0;
        let mut sealed = Vec::with_capacity(if live { batch.len() } else { 0 });
        let mut prev = self.prev_hash.clone();
        for mut event in batch.drain(..) {
            event.prev_hash = prev;
            let mark = buf.len();
            if let Err(e) = seal_into(&mut event, scratch, buf) {
                // Cannot happen for this type (maps have string keys);
                // keep the chain intact by skipping loudly.
                tracing::error!(error = %e, id = %event.id, "cannot encode audit event");
                buf.truncate(mark);
                prev = event.prev_hash;
                continue;
            }
            buf.push(b'\n');
            ends.push(buf.len());
            // The live feed costs nothing while nobody listens.
            if live {
                prev = event.hash.clone();
                sealed.push(Arc::<Event>::from(event));
            } else {
                prev = std::mem::take(&mut event.hash);
            }
        }
        let lines = Lines { buf, ends };
        let mut done = 0;
        let mut backoff = Duration::from_millis(50);
        let mut tries = 0;
        while let Err(e) = self.write_lines(&lines, &mut done) {
            self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
            tries += 1;
            let closing = self.closing.load(Ordering::Acquire);
            if attempts
                .or(closing.then_some(CLOSING_ATTEMPTS))
                .is_some_and(|max| tries >= max)
            {
                tracing::error!(error = %e, lost = ends.len() - done,
                    "audit log write failed at shutdown; giving up on the rest of the queue");
                // The chain continues from the last line on disk.
                let last = done.checked_sub(1).map(|i| lines.get(i));
                if let Some(hash) = last.and_then(|l| hash_of_line(&String::from_utf8_lossy(l))) {
                    self.prev_hash = hash;
                }
                return Err(e);
            }
            tracing::error!(error = %e, kind = e.kind(), retry_in_ms = backoff.as_millis() as u64,
                "audit log write failed; requests wait until it succeeds");
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        self.prev_hash = prev;
        self.stats
            .written
            .fetch_add(ends.len() as u64, Ordering::Relaxed);
        for event in sealed {
            // No subscribers is fine.
            let _ = self.feed.send(event);
        }
        Ok(())
    }

    /// Writes `lines[*done..]`, one `write` per segment touched (one per
    /// line, each synced, under `Fsync::Always`; under `Fsync::Batch` the
    /// segment is left dirty for [`Writer::run`] to sync), advancing
    /// `*done` past what is written. On error the partial write is
    /// truncated away.
    fn write_lines(&mut self, lines: &Lines<'_>, done: &mut usize) -> Result<(), EventsError> {
        let per_line = self.options.fsync == Fsync::Always;
        let count = lines.ends.len();
        while *done < count {
            let first = lines.get(*done).len() as u64;
            self.ensure_room(first)?;
            let Some(open) = self.current.as_mut() else {
                return Err(EventsError::WriterGone);
            };
            let mut end = *done + 1;
            let mut size = first;
            while !per_line
                && end < count
                && open.len + size + lines.get(end).len() as u64 <= self.options.segment_max_bytes
            {
                size += lines.get(end).len() as u64;
                end += 1;
            }
            if let Err(e) = open.file.write_all(lines.span(*done, end)) {
                // Best effort: a torn tail would also be cut at next start.
                let _ = open.file.set_len(open.len);
                return Err(EventsError::io(&open.seg.path, e));
            }
            open.len += size;
            *done = end;
            match self.options.fsync {
                Fsync::Always => self.sync()?,
                Fsync::Batch => self.dirty = true,
                // Durable is as durable as it gets.
                Fsync::Never => {
                    self.synced.send_replace(open.position());
                }
            }
        }
        Ok(())
    }

    /// Makes `current` a segment of today (or later, if the clock went back)
    /// with room for `incoming` bytes, rolling to a new segment if needed.
    fn ensure_room(&mut self, incoming: u64) -> Result<(), EventsError> {
        let today = (self.today)();
        let next = match &self.current {
            Some(open)
                if open.seg.date >= today
                    && (open.len == 0 || open.len + incoming <= self.options.segment_max_bytes) =>
            {
                return Ok(());
            }
            Some(open) if open.seg.date >= today => {
                Segment::new(&self.dir, open.seg.date, open.seg.seq + 1)
            }
            _ => Segment::new(&self.dir, today, 0),
        };
        // The segment left behind gets no later fsync.
        if self.dirty {
            self.sync()?;
        }
        let file = append(&next.path)?;
        let len = file
            .metadata()
            .map_err(|e| EventsError::io(&next.path, e))?
            .len();
        if self.options.fsync != Fsync::Never {
            sync_dir(&self.dir);
        }
        self.current = Some(OpenSegment {
            seg: next,
            file,
            len,
        });
        Ok(())
    }
}

/// Makes a new segment's directory entry durable (Unix only; best effort).
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!(error = %e, dir = %dir.display(), "fsync of the events folder failed");
    }
    #[cfg(not(unix))]
    let _ = dir;
}

#[cfg(test)]
#[path = "log_tests.rs"]
mod tests;
