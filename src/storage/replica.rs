//! The name under which this replica's chain is stored: `NAME.SUFFIX`,
//! where NAME is `$KT_REPLICA_ID` or the host name (a pod's name under
//! Kubernetes) and SUFFIX is random, chosen once and kept beside the local
//! log. The chain in the table is the local log's chain, so the name must
//! live and die with that log: a fresh data folder (a new container, an
//! emptied volume) starts a new chain under a new name instead of
//! colliding with the old one.

use std::path::{Path, PathBuf};

/// The file, in the events folder, that holds the name.
pub const FILE: &str = "replica.id";

/// Most bytes kept of NAME.
const MAX_NAME: usize = 48;

/// Reads the replica name kept in `events_dir`, or makes and keeps a new
/// one. A kept name whose NAME part no longer matches the configured one
/// (KT_REPLICA_ID changed) is replaced: the chain continues under the new
/// name from the first event not yet shipped (the shipper keeps the last
/// one shipped beside the log: [`super::ship::SHIPPED`]).
pub fn id(events_dir: &Path) -> std::io::Result<String> {
    let name = configured_name();
    let path = events_dir.join(FILE);
    if let Ok(kept) = std::fs::read_to_string(&path) {
        let kept = kept.trim();
        if kept
            .rsplit_once('.')
            .is_some_and(|(n, s)| n == name && !s.is_empty())
        {
            return Ok(kept.to_string());
        }
    }
    let id = format!("{name}.{:08x}", rand::random::<u32>());
    std::fs::create_dir_all(events_dir)?;
    write_atomically(&path, &id)?;
    Ok(id)
}

fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp: PathBuf = path.with_extension("id.tmp");
    std::fs::write(&tmp, format!("{text}\n"))?;
    std::fs::rename(&tmp, path)
}

/// `$KT_REPLICA_ID`, else the host name, cleaned to `[A-Za-z0-9_-]`.
fn configured_name() -> String {
    let raw = std::env::var("KT_REPLICA_ID")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .or_else(host_name)
        .unwrap_or_else(|| "kt".into());
    clean(&raw)
}

fn clean(raw: &str) -> String {
    let mut out: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(MAX_NAME)
        .collect();
    if out.is_empty() {
        out.push_str("kt");
    }
    out
}

fn host_name() -> Option<String> {
    if let Some(h) = std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()) {
        return Some(h);
    }
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_are_cleaned_and_bounded() {
        assert_eq!(clean("kt-0.gateway.svc"), "kt-0-gateway-svc");
        assert_eq!(clean("  "), "kt");
        assert_eq!(clean(&"x".repeat(100)).len(), MAX_NAME);
    }

    #[test]
    fn the_id_is_kept_with_the_log_and_new_for_a_new_log() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let first = id(a.path()).unwrap();
        assert_eq!(id(a.path()).unwrap(), first, "kept across restarts");
        assert_ne!(id(b.path()).unwrap(), first, "a fresh log gets its own");
        assert!(first.starts_with(&configured_name()));
    }
}
