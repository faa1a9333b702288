//! The whole team's events from the shared table: the last N, then each
//! new one as any replica ships it. Behind `kt events tail --storage` and,
//! in hosted mode, every replica's `/_kt/events`.
//!
//! Readers follow each replica's head in `kt_replicas` rather than the
//! table's serial ids: a head moves in the same transaction as the rows it
//! counts, so "rows of replica R with seq above what I have" never skips a
//! row that commits late, which ids can.

use super::{Db, StorageError};
use crate::events::{Event, Filters};
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

/// How often the heads are polled.
pub const POLL: Duration = Duration::from_millis(250);
/// Rows read per history page and per catch-up query.
const PAGE: i64 = 1000;
/// Most rows looked at for history that filters mostly reject.
const MAX_HISTORY_SCAN: usize = 200_000;

/// Follows the table; see [`TeamFeed::start`].
pub struct TeamFeed {
    db: Db,
    filters: Filters,
    /// The last seq handed out (or skipped by history) per replica.
    heads: HashMap<String, i64>,
    ready: VecDeque<Event>,
    interval: Duration,
    failing: bool,
}

impl TeamFeed {
    /// The last `n` matching events, oldest first, and a feed that goes on
    /// exactly after them.
    pub async fn start(
        db: &Db,
        n: usize,
        filters: Filters,
    ) -> Result<(Vec<Event>, TeamFeed), StorageError> {
        let mut conn = db.conn().await?;
        // One snapshot for the heads and the history: history ends where
        // the heads say the feed starts.
        let tx = conn
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(|e| db.err(e))?;
        let heads = tx
            .query("SELECT replica, last_seq FROM kt_replicas", &[])
            .await
            .map_err(|e| db.err(e))?
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
            .collect();
        let mut history = Vec::new();
        let mut before = i64::MAX;
        let mut scanned = 0;
        while history.len() < n && scanned < MAX_HISTORY_SCAN {
            let rows = tx
                .query(
                    "SELECT id, line FROM kt_events WHERE id < $1 ORDER BY id DESC LIMIT $2",
                    &[&before, &PAGE],
                )
                .await
                .map_err(|e| db.err(e))?;
            let Some(last) = rows.last() else { break };
            before = last.get(0);
            scanned += rows.len();
            for row in &rows {
                if let Some(e) = parse(row.get(1)) {
                    if filters.matches(&e) {
                        history.push(e);
                        if history.len() == n {
                            break;
                        }
                    }
                }
            }
        }
        tx.commit().await.map_err(|e| db.err(e))?;
        history.reverse();
        Ok((
            history,
            TeamFeed {
                db: db.clone(),
                filters,
                heads,
                ready: VecDeque::new(),
                interval: POLL,
                failing: false,
            },
        ))
    }

    /// The next matching event from any replica; waits for one. A database
    /// outage is logged once and waited out.
    pub async fn next(&mut self) -> Event {
        loop {
            if let Some(e) = self.ready.pop_front() {
                return e;
            }
            match self.poll().await {
                Ok(()) => {
                    if self.failing {
                        tracing::info!("events feed: shared store reachable again");
                    }
                    self.failing = false;
                }
                Err(e) if !self.failing => {
                    self.failing = true;
                    tracing::warn!("events feed: {e}; waiting for the shared store");
                }
                Err(_) => {}
            }
            if self.ready.is_empty() {
                tokio::time::sleep(self.interval).await;
            }
        }
    }

    /// Fetches the rows of every replica whose head moved. What was
    /// fetched and the heads it moves to are taken in together, after the
    /// last query: a query that fails, or a caller that stops waiting
    /// (`next` raced against a keep-alive), leaves the feed where it was,
    /// to fetch the same rows again, rather than past rows never handed out.
    async fn poll(&mut self) -> Result<(), StorageError> {
        let conn = self.db.conn().await?;
        let db = &self.db;
        let moved: Vec<(String, i64, i64)> = conn
            .query("SELECT replica, last_seq FROM kt_replicas", &[])
            .await
            .map_err(|e| db.err(e))?
            .iter()
            .filter_map(|r| {
                let replica: String = r.get(0);
                let head: i64 = r.get(1);
                let seen = self.heads.get(&replica).copied().unwrap_or(0);
                (head > seen).then_some((replica, seen, head))
            })
            .collect();
        let mut fresh: Vec<Event> = Vec::new();
        let mut heads = Vec::with_capacity(moved.len());
        for (replica, mut seen, head) in moved {
            while seen < head {
                let rows = conn
                    .query(
                        "SELECT seq, line FROM kt_events
                         WHERE replica = $1 AND seq > $2 AND seq <= $3
                         ORDER BY seq LIMIT $4",
                        &[&replica, &seen, &head, &PAGE],
                    )
                    .await
                    .map_err(|e| db.err(e))?;
                let Some(last) = rows.last() else {
                    // Rows removed by retention: nothing more to read.
                    seen = head;
                    break;
                };
                seen = last.get(0);
                fresh.extend(
                    rows.iter()
                        .filter_map(|r| parse(r.get(1)))
                        .filter(|e| self.filters.matches(e)),
                );
            }
            heads.push((replica, seen));
        }
        // Interleave replicas by time; ids are time-ordered too.
        fresh.sort_by(|a, b| a.ts.cmp(&b.ts).then_with(|| a.id.cmp(&b.id)));
        self.heads.extend(heads);
        self.ready.extend(fresh);
        Ok(())
    }
}

fn parse(line: &str) -> Option<Event> {
    match serde_json::from_str(line) {
        Ok(e) => Some(e),
        Err(e) => {
            tracing::warn!(error = %e, "skipping an unreadable event in the shared store");
            None
        }
    }
}
