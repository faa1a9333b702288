//! The gateway's view of `keys.json`: an index from lookup tag to record,
//! so checking a key is two SHA-256s and one hash-map probe, kept in step
//! with the file while the gateway runs.
//!
//! `kt keys create`/`revoke` are separate processes that rewrite the file
//! (atomically, by rename). A lookup notices at most once per
//! [`RELOAD_EVERY`] whether the file changed (size, mtime or inode) and
//! then re-reads it; so a new key works, and a revoked key stops working,
//! within about a second without a restart or signal. A file that became
//! unreadable keeps the last good keys in force and is logged once per
//! change; a deleted file means no keys.

use super::file::{self, KeyFile};
use super::key::{self, LOOKUP_LEN, SALT_LEN};
use super::KeysError;
use crate::identity::Identity;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

/// How often lookups look at the file for changes.
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// The keys of one version of the file.
#[derive(Default)]
struct Index {
    by_tag: HashMap<[u8; LOOKUP_LEN], Entry>,
    active: usize,
}

struct Entry {
    id: Arc<str>,
    salt: [u8; SALT_LEN],
    hash: [u8; 32],
    identity: Identity,
    revoked: bool,
}

impl Index {
    fn build(file: &KeyFile) -> Index {
        let mut index = Index::default();
        for r in &file.keys {
            // `file::parse` checked every record's digests.
            let Ok(d) = r.digests() else { continue };
            let entry = Entry {
                id: Arc::from(r.id.as_str()),
                salt: d.salt,
                hash: d.hash,
                identity: Identity {
                    user: Some(Arc::from(r.user.as_str())),
                    team: r.team.as_deref().map(Arc::from),
                    admin: r.admin,
                    client: None,
                },
                revoked: !r.is_active(),
            };
            index.active += usize::from(r.is_active());
            index.by_tag.insert(d.lookup, entry);
        }
        index
    }
}

/// What a presented key turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// An active key: who it belongs to.
    Valid(Identity),
    /// A key that was revoked (its id, for the log).
    Revoked(Arc<str>),
    /// Not a key of this gateway (or not shaped like one).
    Unknown,
}

/// What identifies one version of the file on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stamp {
    Missing,
    Present {
        len: u64,
        modified: Option<SystemTime>,
        inode: u64,
    },
}

impl Stamp {
    fn of(path: &Path) -> Result<Stamp, std::io::Error> {
        match std::fs::metadata(path) {
            Ok(m) => Ok(Stamp::Present {
                len: m.len(),
                modified: m.modified().ok(),
                inode: inode(&m),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Stamp::Missing),
            Err(e) => Err(e),
        }
    }
}

#[cfg(unix)]
fn inode(m: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(m)
}

#[cfg(not(unix))]
fn inode(_: &std::fs::Metadata) -> u64 {
    0
}

/// The access keys a gateway accepts. Shared by every connection.
pub struct KeyStore {
    /// The file followed; `None` when the keys are fed in with
    /// [`replace`](KeyStore::replace) (hosted mode's key table).
    path: Option<PathBuf>,
    index: RwLock<Arc<Index>>,
    /// The version of the file `index` was built from (or that failed to
    /// load, so that it is reported once, not every second).
    stamp: Mutex<Stamp>,
    epoch: Instant,
    /// Milliseconds after `epoch` when the file is next looked at.
    next_check: AtomicU64,
    interval: Duration,
}

impl KeyStore {
    /// Loads `path` (a missing file is no keys). A file that cannot be read
    /// is an error: starting with no keys would lock everybody out, or
    /// hide the problem.
    pub fn open(path: &Path) -> Result<KeyStore, KeysError> {
        Self::with_interval(path, RELOAD_EVERY)
    }

    /// As [`open`](Self::open), looking for changes every `interval`.
    pub fn with_interval(path: &Path, interval: Duration) -> Result<KeyStore, KeysError> {
        let io = |source| KeysError::Io {
            path: path.to_path_buf(),
            source,
        };
        let stamp = Stamp::of(path).map_err(io)?;
        let file = file::load(path)?;
        let interval_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
        Ok(KeyStore {
            path: Some(path.to_path_buf()),
            index: RwLock::new(Arc::new(Index::build(&file))),
            stamp: Mutex::new(stamp),
            epoch: Instant::now(),
            next_check: AtomicU64::new(interval_ms),
            interval,
        })
    }

    /// A store that follows no file: its keys come from
    /// [`replace`](KeyStore::replace).
    pub fn detached(file: &KeyFile) -> KeyStore {
        KeyStore {
            path: None,
            index: RwLock::new(Arc::new(Index::build(file))),
            stamp: Mutex::new(Stamp::Missing),
            epoch: Instant::now(),
            next_check: AtomicU64::new(u64::MAX),
            interval: Duration::MAX,
        }
    }

    /// Puts `file`'s keys in force.
    pub fn replace(&self, file: &KeyFile) {
        let index = Arc::new(Index::build(file));
        *self.index.write().unwrap_or_else(|p| p.into_inner()) = index;
    }

    /// The key file this store follows, if it follows one.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Keys that are not revoked.
    pub fn active_keys(&self) -> usize {
        self.index().active
    }

    /// Who `key` belongs to.
    pub fn lookup(&self, key: &str) -> Lookup {
        self.refresh_if_due();
        if !key::is_well_formed(key) {
            return Lookup::Unknown;
        }
        let index = self.index();
        let Some(entry) = index.by_tag.get(&key::lookup_tag(key)) else {
            return Lookup::Unknown;
        };
        if !key::verify(&entry.salt, &entry.hash, key) {
            return Lookup::Unknown;
        }
        if entry.revoked {
            return Lookup::Revoked(entry.id.clone());
        }
        Lookup::Valid(entry.identity.clone())
    }

    fn index(&self) -> Arc<Index> {
        self.index.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Re-reads the file if it is time to look and it changed. One caller
    /// does the looking; the others go on with the current keys.
    fn refresh_if_due(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let due = self.next_check.load(Ordering::Relaxed);
        if now < due {
            return;
        }
        let next = now.saturating_add(u64::try_from(self.interval.as_millis()).unwrap_or(0));
        if self
            .next_check
            .compare_exchange(due, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.refresh();
        }
    }

    /// Re-reads the file now if it changed since the last read; returns
    /// whether the keys in force were replaced. Failures are logged and
    /// leave the last good keys in force.
    pub fn refresh(&self) -> bool {
        let Some(path) = &self.path else {
            return false;
        };
        // The stamp is taken before reading, so a change racing with the
        // read shows as a new stamp next time and is read again then.
        let stamp = match Stamp::of(path) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot look at the access key file");
                return false;
            }
        };
        let mut last = self.stamp.lock().unwrap_or_else(|p| p.into_inner());
        if *last == stamp {
            return false;
        }
        *last = stamp;
        match file::load(path) {
            Ok(file) => {
                let index = Arc::new(Index::build(&file));
                tracing::info!(
                    path = %path.display(),
                    active = index.active,
                    "access keys reloaded"
                );
                *self.index.write().unwrap_or_else(|p| p.into_inner()) = index;
                true
            }
            Err(e) => {
                tracing::error!("{e}; the keys loaded before stay in force");
                false
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::keys::file::{create, revoke};

    #[test]
    fn lookup_finds_active_keys_and_tells_revoked_ones_apart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let dev = create(&path, "dev1", Some("platform"), false).unwrap();
        let ops = create(&path, "ops", None, true).unwrap();
        revoke(&path, &ops.record.id).unwrap();
        let store = KeyStore::open(&path).unwrap();
        assert_eq!(store.active_keys(), 1);
        assert_eq!(
            store.lookup(&dev.key),
            Lookup::Valid(Identity::user("dev1", Some("platform")))
        );
        assert_eq!(
            store.lookup(&ops.key),
            Lookup::Revoked(Arc::from(ops.record.id.as_str()))
        );
        assert_eq!(store.lookup(&key::generate()), Lookup::Unknown);
        assert_eq!(store.lookup("not a key"), Lookup::Unknown);
        assert_eq!(store.lookup(&format!("{}x", dev.key)), Lookup::Unknown);
    }

    #[test]
    fn a_missing_file_is_no_keys_and_a_corrupt_one_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        assert_eq!(KeyStore::open(&path).unwrap().active_keys(), 0);
        std::fs::write(&path, "not json").unwrap();
        assert!(matches!(
            KeyStore::open(&path),
            Err(KeysError::Corrupt { .. })
        ));
    }

    #[test]
    fn changes_on_disk_are_picked_up_and_bad_ones_keep_the_old_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        // Interval zero: every lookup looks at the file.
        let store = KeyStore::with_interval(&path, Duration::ZERO).unwrap();
        let dev = create(&path, "dev1", None, false).unwrap();
        assert!(matches!(store.lookup(&dev.key), Lookup::Valid(_)));
        revoke(&path, &dev.record.id).unwrap();
        assert!(matches!(store.lookup(&dev.key), Lookup::Revoked(_)));

        let other = create(&path, "dev2", None, false).unwrap();
        assert!(matches!(store.lookup(&other.key), Lookup::Valid(_)));
        std::fs::write(&path, "{ broken").unwrap();
        assert!(!store.refresh());
        assert!(
            matches!(store.lookup(&other.key), Lookup::Valid(_)),
            "a broken file keeps the last good keys"
        );
        std::fs::remove_file(&path).unwrap();
        assert!(store.refresh());
        assert_eq!(store.lookup(&other.key), Lookup::Unknown);
    }

    #[test]
    fn the_file_is_looked_at_no_more_than_once_per_interval() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let store = KeyStore::with_interval(&path, Duration::from_secs(3600)).unwrap();
        let dev = create(&path, "dev1", None, false).unwrap();
        assert_eq!(
            store.lookup(&dev.key),
            Lookup::Unknown,
            "not due yet: the new key is not seen"
        );
        assert!(store.refresh(), "an explicit refresh sees it");
        assert!(matches!(store.lookup(&dev.key), Lookup::Valid(_)));
    }
}
