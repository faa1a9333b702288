//! `keys.json`: the stored access key records (never the keys), and the
//! create/revoke operations on it.
//!
//! Writes go to a temporary file in the same folder (mode 0600), are synced,
//! then renamed over `keys.json`, so a reader — the running gateway — sees
//! either the old or the new file, never half of one. Concurrent `kt keys`
//! commands are serialised by a `keys.json.lock` file created exclusively
//! (a stale one, left by a killed process, is taken over after a minute).
//! A file that cannot be read is an error naming it; it is never replaced.

use super::key::{self, LOOKUP_LEN, SALT_LEN};
use super::KeysError;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The format version this kt writes and reads.
const VERSION: u32 = 1;

/// The whole file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyFile {
    pub version: u32,
    pub keys: Vec<KeyRecord>,
}

impl Default for KeyFile {
    fn default() -> Self {
        KeyFile {
            version: VERSION,
            keys: Vec::new(),
        }
    }
}

/// One access key, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Public, random, unrelated to the key (`key_` + 12 hex digits).
    pub id: String,
    pub user: String,
    #[serde(default)]
    pub team: Option<String>,
    #[serde(default)]
    pub admin: bool,
    /// RFC 3339 UTC.
    pub created: String,
    /// RFC 3339 UTC; `None` while the key is active.
    #[serde(default)]
    pub revoked_at: Option<String>,
    /// Hex of the non-secret lookup tag (see [`key`](super::key)).
    pub lookup: String,
    /// Hex of the random salt.
    pub salt: String,
    /// Hex of `SHA-256(salt || key)`.
    pub hash: String,
}

/// A record's digests, decoded.
pub(super) struct Digests {
    pub lookup: [u8; LOOKUP_LEN],
    pub salt: [u8; SALT_LEN],
    pub hash: [u8; 32],
}

impl KeyRecord {
    pub fn is_active(&self) -> bool {
        self.revoked_at.is_none()
    }

    /// The digests, or why they are unreadable.
    pub(super) fn digests(&self) -> Result<Digests, String> {
        fn decode<const N: usize>(field: &str, hex_text: &str) -> Result<[u8; N], String> {
            let mut out = [0u8; N];
            hex::decode_to_slice(hex_text, &mut out)
                .map_err(|_| format!("`{field}` is not {N} bytes of hex"))?;
            Ok(out)
        }
        Ok(Digests {
            lookup: decode("lookup", &self.lookup)?,
            salt: decode("salt", &self.salt)?,
            hash: decode("hash", &self.hash)?,
        })
    }
}

/// Reads the key file; a missing file is an empty one.
pub fn load(path: &Path) -> Result<KeyFile, KeysError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(KeyFile::default()),
        Err(source) => {
            return Err(KeysError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    parse(path, &text)
}

/// Parses and checks the text of a key file.
pub fn parse(path: &Path, text: &str) -> Result<KeyFile, KeysError> {
    let corrupt = |reason: String| KeysError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let file: KeyFile = serde_json::from_str(text).map_err(|e| corrupt(e.to_string()))?;
    if file.version > VERSION {
        return Err(KeysError::Newer {
            path: path.to_path_buf(),
            version: file.version,
        });
    }
    let mut ids = std::collections::HashSet::new();
    for r in &file.keys {
        r.digests()
            .map_err(|e| corrupt(format!("key {}: {e}", r.id)))?;
        if !ids.insert(r.id.as_str()) {
            return Err(corrupt(format!("key id {} appears twice", r.id)));
        }
    }
    Ok(file)
}

/// A key just created: the key itself (shown once) and its record.
#[derive(Debug)]
pub struct Created {
    pub key: String,
    pub record: KeyRecord,
}

/// Creates a key for `user` (and `team`), stores its record, and returns
/// the key. The key is never written anywhere.
pub fn create(
    path: &Path,
    user: &str,
    team: Option<&str>,
    admin: bool,
) -> Result<Created, KeysError> {
    check_names(user, team)?;
    update(path, |file| {
        let created = loop {
            let c = new_key(user, team, admin)?;
            if !file.keys.iter().any(|r| r.id == c.record.id) {
                break c;
            }
        };
        file.keys.push(created.record.clone());
        Ok(created)
    })
}

/// A new key and its record (not stored anywhere yet), after checking the
/// names.
pub fn new_key(user: &str, team: Option<&str>, admin: bool) -> Result<Created, KeysError> {
    check_names(user, team)?;
    let secret = key::generate();
    let salt = key::new_salt();
    let record = KeyRecord {
        id: key::new_id(),
        user: user.to_string(),
        team: team.map(str::to_string),
        admin,
        created: now(),
        revoked_at: None,
        lookup: hex::encode(key::lookup_tag(&secret)),
        salt: hex::encode(salt),
        hash: hex::encode(key::salted_hash(&salt, &secret)),
    };
    Ok(Created {
        key: secret,
        record,
    })
}

/// What `revoke` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoked {
    /// Revoked now.
    Now(KeyRecord),
    /// It had been revoked before (at the time given); nothing changed.
    Already(KeyRecord),
}

/// Revokes the key with public id `id`. The record stays, marked revoked,
/// so `kt keys list` still explains who had it and when it ended.
pub fn revoke(path: &Path, id: &str) -> Result<Revoked, KeysError> {
    update(path, |file| {
        let record = file
            .keys
            .iter_mut()
            .find(|r| r.id == id)
            .ok_or_else(|| KeysError::UnknownId(id.to_string()))?;
        if record.revoked_at.is_some() {
            return Ok(Revoked::Already(record.clone()));
        }
        record.revoked_at = Some(now());
        Ok(Revoked::Now(record.clone()))
    })
}

fn check_names(user: &str, team: Option<&str>) -> Result<(), KeysError> {
    check_name("user", user)?;
    team.map_or(Ok(()), |t| check_name("team", t))
}

/// Names end up in events, filters and table output: printable, no spaces
/// or commas, and short.
fn check_name(what: &'static str, value: &str) -> Result<(), KeysError> {
    let bad = |reason| KeysError::BadName {
        what,
        value: value.to_string(),
        reason,
    };
    if value.is_empty() {
        return Err(bad("it is empty"));
    }
    if value.chars().count() > 128 {
        return Err(bad("it is longer than 128 characters"));
    }
    if value
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == ',' || c == '=')
    {
        return Err(bad(
            "use letters, digits and punctuation other than `,` and `=`, without spaces",
        ));
    }
    Ok(())
}

/// The current time as stored in records.
pub fn now() -> String {
    crate::events::format_ts(time::OffsetDateTime::now_utc())
}

/// Load, change and save the file under the lock. Nothing is written when
/// `change` fails.
fn update<T>(
    path: &Path,
    change: impl FnOnce(&mut KeyFile) -> Result<T, KeysError>,
) -> Result<T, KeysError> {
    let _lock = Lock::acquire(path)?;
    let mut file = load(path)?;
    let out = change(&mut file)?;
    file.version = VERSION;
    save(path, &file)?;
    Ok(out)
}

/// Writes `file` to `path` atomically with mode 0600.
pub fn save(path: &Path, file: &KeyFile) -> Result<(), KeysError> {
    let io = |source| KeysError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = parent(path);
    std::fs::create_dir_all(&dir).map_err(io)?;
    let mut text = serde_json::to_string_pretty(file).map_err(|e| io(std::io::Error::other(e)))?;
    text.push('\n');
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        file_name(path),
        hex::encode(key::new_salt())
    ));
    let written = (|| {
        let mut f = private_file(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    // The rename is durable once the folder is synced (not possible on
    // every platform, hence best effort).
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map_or_else(|| "keys.json".into(), |n| n.to_string_lossy().into_owned())
}

/// A new file readable by its owner only.
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path)
}

/// An exclusive lock file beside the key file, removed on drop.
struct Lock {
    path: PathBuf,
}

/// How long `acquire` waits for another kt to finish.
const LOCK_WAIT: Duration = Duration::from_secs(10);
/// A lock file older than this was left by a process that died.
const LOCK_STALE: Duration = Duration::from_secs(60);

impl Lock {
    fn acquire(keys: &Path) -> Result<Lock, KeysError> {
        let path = parent(keys).join(format!("{}.lock", file_name(keys)));
        let io = |source| KeysError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(parent(keys)).map_err(io)?;
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        loop {
            match private_file(&path) {
                Ok(mut f) => {
                    let _ = writeln!(f, "{}", std::process::id());
                    return Ok(Lock { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let stale = std::fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| SystemTime::now().duration_since(t).ok())
                        .is_some_and(|age| age > LOCK_STALE);
                    if stale {
                        tracing::warn!(lock = %path.display(), "taking over a stale lock file");
                        let _ = std::fs::remove_file(&path);
                        continue;
                    }
                    if std::time::Instant::now() >= deadline {
                        return Err(KeysError::Locked {
                            path: keys.to_path_buf(),
                            lock: path,
                        });
                    }
                    std::thread::sleep(Duration::from_millis(25));
                }
                Err(e) => return Err(io(e)),
            }
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn create_list_revoke_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        assert!(load(&path).unwrap().keys.is_empty(), "missing = empty");
        let a = create(&path, "dev1", Some("platform"), false).unwrap();
        let b = create(&path, "ops", None, true).unwrap();
        let file = load(&path).unwrap();
        assert_eq!(file.keys, vec![a.record.clone(), b.record.clone()]);
        assert_ne!(a.record.id, b.record.id);

        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&a.key) && !text.contains(&a.key[3..]));
        assert!(!text.contains(&b.key[3..]));

        assert!(
            matches!(revoke(&path, &a.record.id).unwrap(), Revoked::Now(r) if r.revoked_at.is_some())
        );
        assert!(matches!(
            revoke(&path, &a.record.id).unwrap(),
            Revoked::Already(_)
        ));
        assert!(matches!(
            revoke(&path, "key_000000000000"),
            Err(KeysError::UnknownId(_))
        ));
        let file = load(&path).unwrap();
        assert!(!file.keys[0].is_active() && file.keys[1].is_active());
        assert!(!dir.path().join("keys.json.lock").exists());
    }

    #[cfg(unix)]
    #[test]
    fn the_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        create(&path, "dev1", None, false).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_corrupt_file_is_named_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        std::fs::write(&path, "{\"version\":1,\"keys\":[{").unwrap();
        let err = create(&path, "dev1", None, false).unwrap_err();
        assert!(matches!(err, KeysError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("keys.json"), "{err}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"version\":1,\"keys\":[{",
            "never overwritten"
        );
        // Bad digests and repeated ids are corrupt too.
        let ok = create(&dir.path().join("other.json"), "u", None, false)
            .unwrap()
            .record;
        let mut bad = ok.clone();
        bad.hash = "zz".into();
        let text = serde_json::to_string(&KeyFile {
            version: 1,
            keys: vec![bad],
        })
        .unwrap();
        assert!(matches!(
            parse(&path, &text),
            Err(KeysError::Corrupt { .. })
        ));
        let text = serde_json::to_string(&KeyFile {
            version: 1,
            keys: vec![ok.clone(), ok],
        })
        .unwrap();
        assert!(parse(&path, &text)
            .unwrap_err()
            .to_string()
            .contains("twice"));
        assert!(matches!(
            parse(&path, "{\"version\":2,\"keys\":[]}"),
            Err(KeysError::Newer { version: 2, .. })
        ));
    }

    #[test]
    fn names_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        for bad in ["", "a b", "a,b", "x=y", "tab\there"] {
            assert!(
                matches!(
                    create(&path, bad, None, false),
                    Err(KeysError::BadName { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(create(&path, "ok", Some(""), false).is_err());
        assert!(!path.exists(), "nothing written on bad input");
        create(&path, "dev1@example.com", Some("team-a"), false).unwrap();
    }

    #[test]
    fn a_held_lock_makes_writers_wait_and_a_stale_one_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let lock = Lock::acquire(&path).unwrap();
        let p = path.clone();
        let writer = std::thread::spawn(move || create(&p, "dev1", None, false));
        std::thread::sleep(Duration::from_millis(100));
        assert!(load(&path).unwrap().keys.is_empty(), "waits for the lock");
        drop(lock);
        writer.join().unwrap().unwrap();
        assert_eq!(load(&path).unwrap().keys.len(), 1);

        // A lock file from a process that died long ago.
        let lock_path = dir.path().join("keys.json.lock");
        let f = std::fs::File::create(&lock_path).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(3600))
            .unwrap();
        drop(f);
        create(&path, "dev2", None, false).unwrap();
        assert_eq!(load(&path).unwrap().keys.len(), 2);
    }
}
