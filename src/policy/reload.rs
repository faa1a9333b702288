//! Hot reload of the policy config: on SIGHUP and when the file changes on
//! disk, the new config is validated and its chain swapped in atomically;
//! a bad config is logged and the old chain stays in force.

use super::Engine;
use crate::config::{ConfigError, PolicyConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How often the file's modification time and size are checked.
pub const POLL: Duration = Duration::from_secs(1);

/// Reloads `path` into `engine` until the task is dropped. `loaded` is
/// the file's [`fingerprint`] taken before the config in force was read:
/// taken when the task first runs instead, an edit made in between would
/// never be noticed.
pub async fn watch(path: PathBuf, engine: Arc<Engine>, poll: Duration, loaded: Fingerprint) {
    let mut settle = Settle::new(loaded);
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let signalled = async {
            match hup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let signalled = std::future::pending::<()>();
        tokio::select! {
            _ = signalled => {
                settle.loaded(fingerprint(&path));
                reload(&path, &engine, "SIGHUP");
            }
            _ = tokio::time::sleep(poll) => {
                if settle.poll(fingerprint(&path)) {
                    reload(&path, &engine, "file changed");
                }
            }
        }
    }
}

/// When a changed file is reloaded: once it has stopped changing (the
/// same fingerprint at two polls in a row). A file caught while it is
/// rewritten (truncated by `cp` or an editor, half written) would
/// otherwise be loaded as it stood: an empty one is the built-in chain,
/// and swapping to it and back drops every policy and resets the rate and
/// budget counters.
struct Settle {
    /// The file as last loaded.
    loaded: Fingerprint,
    /// The file at the last poll.
    seen: Fingerprint,
}

impl Settle {
    fn new(loaded: Fingerprint) -> Settle {
        Settle {
            loaded,
            seen: loaded,
        }
    }

    /// The file at this poll; true when it is due for a reload.
    fn poll(&mut self, now: Fingerprint) -> bool {
        let still = now == self.seen;
        self.seen = now;
        if still && now != self.loaded {
            self.loaded = now;
            return true;
        }
        false
    }

    /// The file was loaded as it is now (SIGHUP).
    fn loaded(&mut self, now: Fingerprint) {
        self.loaded = now;
        self.seen = now;
    }
}

/// Loads `path` and swaps its chain in; returns whether it did. An empty
/// file is refused here, though it is the built-in chain at start-up: on a
/// running gateway it is far likelier a failed write (a template that
/// rendered nothing) than a wish to drop every policy; `{}` says that.
pub fn reload(path: &Path, engine: &Engine, why: &str) -> bool {
    // Read once: the emptiness check and the parse see the same text.
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) => {
            let e = ConfigError::Read {
                path: path.to_path_buf(),
                error,
            };
            tracing::error!(why, "policy config rejected, keeping the old one: {e}");
            return false;
        }
    };
    if text.bytes().all(|b| b.is_ascii_whitespace()) {
        tracing::error!(path = %path.display(), why, "policy config is empty, keeping the old one (write `{{}}` for the built-in chain)");
        return false;
    }
    match PolicyConfig::parse(&text, path) {
        Ok(config) => match engine.reload(&config) {
            Ok(()) => {
                tracing::info!(path = %path.display(), why, "policy config reloaded");
                for w in &config.warnings {
                    tracing::warn!("{}", w.display_in(path));
                }
                true
            }
            Err(e) => {
                tracing::error!(path = %path.display(), why, "policy config rejected, keeping the old one: {e}");
                false
            }
        },
        Err(e) => {
            tracing::error!(why, "policy config rejected, keeping the old one: {e}");
            false
        }
    }
}

/// What tells a changed file: its modification time, size and, on Unix,
/// inode (`None` while it cannot be read). The inode catches a path
/// swapped to another file of the same size written within one tick of
/// the file clock, as a Kubernetes ConfigMap update can be.
pub type Fingerprint = Option<(SystemTime, u64, u64)>;

pub fn fingerprint(path: &Path) -> Fingerprint {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some((meta.modified().ok()?, meta.len(), inode))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn names(engine: &Engine) -> Vec<String> {
        engine
            .chain()
            .policies()
            .iter()
            .map(|p| p.name.to_string())
            .collect()
    }

    #[tokio::test]
    async fn an_edit_before_the_watcher_first_runs_is_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.yaml");
        std::fs::write(&path, "policies:\n  chain: [audit-logger]\n").unwrap();
        let loaded = fingerprint(&path);
        let engine = Arc::new(Engine::new(Some(&Config::load(&path).unwrap())).unwrap());
        assert_eq!(names(&engine), ["audit-logger"]);
        // Edited after the load, before the watcher starts.
        std::fs::write(&path, "policies:\n  chain: [audit-logger, passthrough]\n").unwrap();
        let watcher = tokio::spawn(watch(
            path.clone(),
            engine.clone(),
            Duration::from_millis(5),
            loaded,
        ));
        let reloaded = tokio::time::timeout(Duration::from_secs(5), async {
            while names(&engine).len() != 2 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .is_ok();
        watcher.abort();
        assert!(reloaded, "the edit was missed: {:?}", names(&engine));
    }

    /// A change is reloaded once the file holds still for a poll: a file
    /// caught mid-rewrite is not loaded, and what it settles on is.
    #[test]
    fn a_change_is_reloaded_once_the_file_holds_still() {
        let at = |secs: u64, len: u64| {
            Some((SystemTime::UNIX_EPOCH + Duration::from_secs(secs), len, 7))
        };
        let mut s = Settle::new(at(1, 100));
        assert!(!s.poll(at(1, 100)), "unchanged");
        assert!(!s.poll(at(2, 0)), "truncated: caught mid-rewrite");
        assert!(!s.poll(at(3, 40)), "still being written");
        assert!(s.poll(at(3, 40)), "settled");
        assert!(!s.poll(at(3, 40)), "loaded already");
        // Back to what was loaded before it settled: nothing to do.
        assert!(!s.poll(at(4, 0)));
        assert!(!s.poll(at(3, 40)));
        assert!(!s.poll(at(3, 40)));
        s.loaded(at(5, 50));
        assert!(!s.poll(at(5, 50)), "SIGHUP loaded it");
    }

    /// An emptied file keeps the policies in force: on a running gateway
    /// it is a failed write, not a wish to drop them.
    #[test]
    fn an_empty_file_is_not_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.yaml");
        std::fs::write(&path, "policies:\n  chain: [audit-logger, passthrough]\n").unwrap();
        let engine = Engine::new(Some(&Config::load(&path).unwrap())).unwrap();
        std::fs::write(&path, " \n").unwrap();
        assert!(!reload(&path, &engine, "test"));
        assert_eq!(names(&engine), ["audit-logger", "passthrough"]);
        std::fs::write(&path, "{}\n").unwrap();
        assert!(
            reload(&path, &engine, "test"),
            "`{{}}` is the built-in chain"
        );
        assert_ne!(names(&engine), ["audit-logger", "passthrough"]);
    }

    /// Kubernetes updates a mounted ConfigMap by writing the new files into
    /// a fresh folder and swapping the `..data` symlink over to it: the
    /// path the gateway was given is never written itself.
    #[cfg(unix)]
    #[tokio::test]
    async fn a_configmap_style_symlink_swap_is_reloaded() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let version = |name: &str, chain: &str| {
            let folder = dir.path().join(name);
            std::fs::create_dir(&folder).unwrap();
            let file = folder.join("policy.yaml");
            std::fs::write(&file, format!("policies:\n  chain: {chain}\n")).unwrap();
            let when = SystemTime::UNIX_EPOCH + Duration::from_secs(1_765_000_000);
            std::fs::File::options()
                .write(true)
                .open(&file)
                .and_then(|f| f.set_modified(when))
                .unwrap();
        };
        // Same length and modification time (one tick of the file clock),
        // so only the file's identity changes.
        version("..2026_12_06_a", "[audit-logger, passthrough]");
        version("..2026_12_06_b", "[passthrough, audit-logger]");
        symlink("..2026_12_06_a", dir.path().join("..data")).unwrap();
        let path = dir.path().join("policy.yaml");
        symlink("..data/policy.yaml", &path).unwrap();
        let loaded = fingerprint(&path);
        let engine = Arc::new(Engine::new(Some(&Config::load(&path).unwrap())).unwrap());
        assert_eq!(names(&engine), ["audit-logger", "passthrough"]);
        let watcher = tokio::spawn(watch(
            path.clone(),
            engine.clone(),
            Duration::from_millis(5),
            loaded,
        ));
        symlink("..2026_12_06_b", dir.path().join("..data_tmp")).unwrap();
        std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
        let reloaded = tokio::time::timeout(Duration::from_secs(5), async {
            while names(&engine) != ["passthrough", "audit-logger"] {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .is_ok();
        watcher.abort();
        assert!(reloaded, "the swap was missed: {:?}", names(&engine));
    }
}
