//! Access keys in the shared database (`kt_keys`), and the watcher that
//! keeps a running gateway's [`KeyStore`] in step with the table.
//!
//! Rows hold what `keys.json` holds: salted hashes, never keys. The watcher
//! asks for the table's version once per [`keys::RELOAD_EVERY`] and reloads
//! only when it moved, so a created key works and a revoked key stops
//! working on every replica within about a second. The last keys read are
//! also written to a local file, so a gateway that restarts while the
//! database is down still knows its users.
//!
//! [`keys::RELOAD_EVERY`]: crate::keys::store::RELOAD_EVERY

use super::{Db, StorageError};
use crate::keys::file::{self, Created, KeyFile, KeyRecord, Revoked};
use crate::keys::{KeyStore, KeysError};
use std::path::PathBuf;
use std::sync::Arc;

const COLUMNS: &str = r#"id, "user", team, admin, created, revoked_at, lookup, salt, hash"#;

fn record(row: &tokio_postgres::Row) -> KeyRecord {
    KeyRecord {
        id: row.get(0),
        user: row.get(1),
        team: row.get(2),
        admin: row.get(3),
        created: row.get(4),
        revoked_at: row.get(5),
        lookup: row.get(6),
        salt: row.get(7),
        hash: row.get(8),
    }
}

/// Every stored key record, oldest first.
pub async fn list(db: &Db) -> Result<KeyFile, StorageError> {
    let conn = db.conn().await?;
    let rows = conn
        .query(
            &format!("SELECT {COLUMNS} FROM kt_keys ORDER BY created, id"),
            &[],
        )
        .await
        .map_err(|e| db.err(e))?;
    Ok(KeyFile {
        keys: rows.iter().map(record).collect(),
        ..KeyFile::default()
    })
}

/// Creates a key; only its record is stored.
pub async fn create(
    db: &Db,
    user: &str,
    team: Option<&str>,
    admin: bool,
) -> Result<Created, StorageError> {
    let conn = db.conn().await?;
    loop {
        let created = file::new_key(user, team, admin)?;
        let r = &created.record;
        let inserted = conn
            .execute(
                &format!(
                    "INSERT INTO kt_keys ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                     ON CONFLICT DO NOTHING"
                ),
                &[
                    &r.id,
                    &r.user,
                    &r.team,
                    &r.admin,
                    &r.created,
                    &r.revoked_at,
                    &r.lookup,
                    &r.salt,
                    &r.hash,
                ],
            )
            .await
            .map_err(|e| db.err(e))?;
        // Zero rows: an id (or lookup tag) collision; draw again.
        if inserted == 1 {
            return Ok(created);
        }
    }
}

/// Revokes the key with id `id`; the record stays, marked.
pub async fn revoke(db: &Db, id: &str) -> Result<Revoked, StorageError> {
    let conn = db.conn().await?;
    let updated = conn
        .query_opt(
            &format!(
                "UPDATE kt_keys SET revoked_at = $2, version = nextval('kt_keys_version')
                 WHERE id = $1 AND revoked_at IS NULL RETURNING {COLUMNS}"
            ),
            &[&id, &file::now()],
        )
        .await
        .map_err(|e| db.err(e))?;
    if let Some(row) = updated {
        return Ok(Revoked::Now(record(&row)));
    }
    let existing = conn
        .query_opt(
            &format!("SELECT {COLUMNS} FROM kt_keys WHERE id = $1"),
            &[&id],
        )
        .await
        .map_err(|e| db.err(e))?;
    match existing {
        Some(row) => Ok(Revoked::Already(record(&row))),
        None => Err(KeysError::UnknownId(id.to_string()).into()),
    }
}

/// What changes whenever a key is created or revoked: the highest
/// version, the number of keys and the number revoked.
///
/// The highest version alone misses changes: a version is drawn when a
/// change is made, not when it commits, so a change can commit after one
/// with a higher version that a watcher has already seen. A create that
/// commits late still moves the count of keys, and a revocation the count
/// of revoked keys (rows are never deleted, and a revoked key stays
/// revoked, so neither count can come back to a value already seen).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    max: i64,
    keys: i64,
    revoked: i64,
}

/// Reads the table's [`Version`].
async fn version(db: &Db) -> Result<Version, StorageError> {
    let conn = db.conn().await?;
    let row = conn
        .query_one(
            "SELECT coalesce(max(version), 0), count(*), count(revoked_at) FROM kt_keys",
            &[],
        )
        .await
        .map_err(|e| db.err(e))?;
    Ok(Version {
        max: row.get(0),
        keys: row.get(1),
        revoked: row.get(2),
    })
}

/// The gateway's key index, fed from the table.
pub struct KeyWatcher {
    db: Db,
    store: Arc<KeyStore>,
    /// The local copy of the last keys read.
    cache: PathBuf,
}

impl KeyWatcher {
    /// A store holding the keys of the local copy (none if there is none
    /// yet), to be kept current by [`run`](KeyWatcher::run).
    pub fn new(db: Db, cache: PathBuf) -> Result<KeyWatcher, StorageError> {
        let known = file::load(&cache)?;
        Ok(KeyWatcher {
            db,
            store: Arc::new(KeyStore::detached(&known)),
            cache,
        })
    }

    /// The store the gateway checks keys against.
    pub fn store(&self) -> &Arc<KeyStore> {
        &self.store
    }

    /// Reads the table now if it changed since `seen`; returns the new
    /// version.
    async fn refresh(&self, seen: Option<Version>) -> Result<Version, StorageError> {
        let now = version(&self.db).await?;
        if seen == Some(now) {
            return Ok(now);
        }
        let keys = list(&self.db).await?;
        self.store.replace(&keys);
        let active = keys.keys.iter().filter(|k| k.is_active()).count();
        tracing::info!(active, database = %self.db.shown(), "access keys loaded");
        let cache = self.cache.clone();
        let saved = tokio::task::spawn_blocking(move || file::save(&cache, &keys)).await;
        if let Ok(Err(e)) = saved {
            tracing::warn!("cannot keep a local copy of the access keys: {e}");
        }
        Ok(now)
    }

    /// Follows the table until the task is dropped; `seen` is the version
    /// [`load_now`](KeyWatcher::load_now) read, if it did.
    pub async fn run(self, seen: Option<Version>) {
        let mut seen = seen;
        let mut failing = false;
        let mut tick = tokio::time::interval(crate::keys::store::RELOAD_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if seen.is_some() {
            // The first tick is immediate; the keys were just read.
            tick.tick().await;
        }
        loop {
            tick.tick().await;
            match self.refresh(seen).await {
                Ok(v) => {
                    if failing {
                        tracing::info!("access keys: database reachable again");
                    }
                    failing = false;
                    seen = Some(v);
                }
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!("access keys: {e}; the keys read before stay in force");
                }
                Err(_) => {}
            }
        }
    }

    /// Reads the table once (start-up): the keys in force before the
    /// first request when the database answers. Returns the version read.
    pub async fn load_now(&self) -> Result<Version, StorageError> {
        self.refresh(None).await
    }
}
