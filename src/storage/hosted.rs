//! A hosted gateway's link to the shared store: migrations on start (retried
//! while the database is down), then the key watcher and the event shipper.

use super::keys::KeyWatcher;
use super::ship::{self, ShipperHandle};
use super::{schema, Db};
use crate::events::Position;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Longest wait between attempts to reach the database on start.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The running link; [`finish`](Hosted::finish) it after the audit log is
/// flushed.
pub struct Hosted {
    db: Db,
    replica: String,
    ready: watch::Receiver<bool>,
    watcher: JoinHandle<()>,
    shipper: ShipperHandle,
}

impl Hosted {
    /// Starts migrating, then following keys and shipping `events_dir` as
    /// `replica`. Returns at once; [`ready`](Hosted::ready) tells when the
    /// database was first reached.
    pub fn start(
        db: Db,
        events_dir: PathBuf,
        replica: String,
        synced: Option<watch::Receiver<Position>>,
        watcher: KeyWatcher,
    ) -> Hosted {
        let (set_ready, ready) = watch::channel(false);
        let link = db.clone();
        let watcher = tokio::spawn(async move {
            let mut backoff = Duration::from_millis(200);
            let mut warned = false;
            loop {
                match schema::migrate(&link).await {
                    Ok(()) => break,
                    Err(e) => {
                        if !warned {
                            tracing::warn!(
                                "shared store: {e}; serving anyway (events wait in the local log, the keys known before stay in force) and retrying"
                            );
                            warned = true;
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
            let seen = match watcher.load_now().await {
                Ok(v) => Some(v),
                Err(e) => {
                    tracing::warn!("access keys: {e}");
                    None
                }
            };
            tracing::info!(database = %link.shown(), "shared store ready");
            let _ = set_ready.send(true);
            watcher.run(seen).await;
        });
        let shipper = ship::start(
            db.clone(),
            events_dir,
            replica.clone(),
            synced,
            ready.clone(),
        );
        Hosted {
            db,
            replica,
            ready,
            watcher,
            shipper,
        }
    }

    /// Waits (at most `limit`) until the database was reached and the keys
    /// read; whether it was.
    pub async fn ready(&self, limit: Duration) -> bool {
        let mut ready = self.ready.clone();
        tokio::time::timeout(limit, ready.wait_for(|r| *r))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The shared database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// How shipping events to the shared store goes (for `/metrics`).
    pub fn ship_stats(&self) -> Arc<super::ship::ShipStats> {
        self.shipper.stats().clone()
    }

    /// This replica's chain name.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Ships what is left (within `grace`) and stops.
    pub async fn finish(self, grace: Duration) {
        self.watcher.abort();
        self.shipper.finish(grace).await;
    }
}
