//! `GET /_kt/events`: the audit events as Server-Sent Events — the last N
//! from the log (`?n=N`), then each new one as it is written (unless
//! `follow=0`) — for `kt events tail --gateway` and dashboards.
//!
//! `filter=KEY%3DVALUE` (repeatable, ANDed, as `--filter`) selects events
//! here, so the last N are the last N that match rather than the last N
//! of all; a client that does not send it gets every event.

use super::ConnCtx;
use crate::body::{self, Body};
use crate::events::{read_last, EventSink, Filters};
use crate::storage::feed::TeamFeed;
use crate::storage::Db;
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

/// Where the feed reads history and live events.
#[derive(Clone)]
pub struct EventsFeed {
    pub sink: EventSink,
    pub dir: PathBuf,
    /// Hosted mode: the whole team's events come from the shared store.
    pub shared: Option<Db>,
    /// Hosted mode: how shipping this replica's events there goes.
    pub shipping: Option<Arc<crate::storage::ship::ShipStats>>,
}

/// The comment frame sent after the history, before live events.
pub const HISTORY_END: &[u8] = b": end of history\n\n";

/// Most history events sent on connect.
const MAX_HISTORY: usize = 10_000;
/// A comment line this often keeps proxies from timing the stream out and
/// finds clients that went away.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// How often an open feed asks whether its viewer may still read it: a
/// revoked key stops reading within this.
const RECHECK: Duration = Duration::from_secs(1);

/// Whether the viewer who opened a feed may still read it (their admin key
/// not revoked since).
pub(super) type Allowed = Arc<dyn Fn() -> bool + Send + Sync>;

pub(super) fn serve(ctx: &ConnCtx, query: Option<&str>, allowed: Allowed) -> Response<Body> {
    let Some(feed) = ctx.gw.events_feed() else {
        let mut r = Response::new(body::full("this gateway writes no audit log\n"));
        *r.status_mut() = StatusCode::NOT_FOUND;
        return r;
    };
    let params = || query.into_iter().flat_map(|q| q.split('&'));
    let n = params()
        .find_map(|kv| kv.strip_prefix("n="))
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0)
        .min(MAX_HISTORY);
    // `follow=0`: the history only, then the stream ends (for snapshots).
    let follow = !params().any(|kv| kv == "follow=0" || kv == "follow=false");
    let filters = match Filters::parse(
        params()
            .filter_map(|kv| kv.strip_prefix("filter="))
            .map(|v| percent_encoding::percent_decode_str(v).decode_utf8_lossy()),
    ) {
        Ok(filters) => filters,
        Err(e) => {
            let mut r = Response::new(body::full(format!("{e}\n")));
            *r.status_mut() = StatusCode::BAD_REQUEST;
            return r;
        }
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let shutdown = ctx.shutdown.clone();
    match feed.shared.clone() {
        Some(db) => {
            let local = feed.clone();
            tokio::spawn(async move {
                match TeamFeed::start(&db, n, filters.clone()).await {
                    Ok((history, team)) => {
                        shared(history, team, follow, tx, shutdown, allowed).await
                    }
                    Err(e) => {
                        tracing::warn!("events feed: {e}; serving this replica's events only");
                        let note = format!(
                            ": shared store unavailable ({}); this replica's events only\n\n",
                            e.kind()
                        );
                        if tx.send(Bytes::from(note)).await.is_ok() {
                            local_feed(local, n, filters, follow, tx, shutdown, allowed).await;
                        }
                    }
                }
            });
        }
        None => {
            tokio::spawn(local_feed(
                feed.clone(),
                n,
                filters,
                follow,
                tx,
                shutdown,
                allowed,
            ));
        }
    }
    let mut r = Response::new(body::channel(rx));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

/// The whole team's events from the shared store.
async fn shared(
    history: Vec<crate::events::Event>,
    team: TeamFeed,
    follow: bool,
    tx: tokio::sync::mpsc::Sender<Bytes>,
    shutdown: crate::shutdown::Shutdown,
    allowed: Allowed,
) {
    if send_history(&tx, history, follow).await {
        stream(&tx, &shutdown, Live::Team(team), &allowed).await;
    }
}

/// This gateway's own log: history from the files, then the writer's feed.
async fn local_feed(
    feed: EventsFeed,
    n: usize,
    filters: Filters,
    follow: bool,
    tx: tokio::sync::mpsc::Sender<Bytes>,
    shutdown: crate::shutdown::Shutdown,
    allowed: Allowed,
) {
    // Subscribe before reading history, so nothing falls in between (an
    // event may then come twice; the client can skip repeated ids).
    let live = feed.sink.subscribe();
    let dir = feed.dir.clone();
    let mut history = Vec::new();
    if n > 0 {
        let wanted = filters.clone();
        let read = tokio::task::spawn_blocking(move || read_last(&dir, n, &wanted)).await;
        if let Ok(Ok((events, _))) = read {
            history = events;
        }
    }
    if send_history(&tx, history, follow).await {
        stream(&tx, &shutdown, Live::Local(live, filters), &allowed).await;
    }
}

/// Where live events come from.
enum Live {
    /// The shared store: every replica's events.
    Team(TeamFeed),
    /// This gateway's writer, and which of its events the client wants.
    Local(
        tokio::sync::broadcast::Receiver<std::sync::Arc<crate::events::Event>>,
        Filters,
    ),
}

impl Live {
    /// The next frame to send; `None` when the source ended.
    async fn next(&mut self) -> Option<Bytes> {
        match self {
            Live::Team(team) => Some(frame(&team.next().await)),
            Live::Local(rx, filters) => loop {
                match rx.recv().await {
                    Ok(e) if filters.matches(&e) => return Some(frame(&e)),
                    Ok(_) => {}
                    Err(RecvError::Lagged(missed)) => {
                        return Some(Bytes::from(format!(
                            ": {missed} events skipped (client too slow)\n\n"
                        )))
                    }
                    Err(RecvError::Closed) => return None,
                }
            },
        }
    }
}

/// Sends the history and the end-of-history mark; whether to go on with
/// live events (the client is there and asked to follow).
async fn send_history(
    tx: &tokio::sync::mpsc::Sender<Bytes>,
    history: Vec<crate::events::Event>,
    follow: bool,
) -> bool {
    for e in history {
        if tx.send(frame(&e)).await.is_err() {
            return false;
        }
    }
    // Tells a client that asked for history only where it ends.
    tx.send(Bytes::from_static(HISTORY_END)).await.is_ok() && follow
}

/// Sends what `live` yields, with keep-alive comments between, until the
/// client leaves, `live` ends, the gateway drains (a live feed never ends
/// by itself, so it must end for draining to finish) or the viewer's key
/// is revoked.
async fn stream(
    tx: &tokio::sync::mpsc::Sender<Bytes>,
    shutdown: &crate::shutdown::Shutdown,
    mut live: Live,
    allowed: &Allowed,
) {
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    keepalive.tick().await;
    let mut recheck = tokio::time::interval(RECHECK);
    recheck.tick().await;
    loop {
        let bytes = tokio::select! {
            b = live.next() => match b {
                Some(b) => b,
                None => return,
            },
            _ = keepalive.tick() => Bytes::from_static(b": keep-alive\n\n"),
            _ = recheck.tick() => {
                if allowed() {
                    continue;
                }
                let _ = tx.send(Bytes::from_static(b": access revoked\n\n")).await;
                return;
            }
            _ = shutdown.draining() => return,
        };
        if tx.send(bytes).await.is_err() {
            return;
        }
    }
}

fn frame(e: &crate::events::Event) -> Bytes {
    match serde_json::to_string(e) {
        Ok(json) => Bytes::from(format!("data: {json}\n\n")),
        Err(_) => Bytes::new(),
    }
}
