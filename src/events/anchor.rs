//! The chain's recorded start (`events/anchor.json`): the `prev_hash` the log's first kept event must carry, so that `verify` can tell events deleted from the start of the log from segments retention removed.
//!
//! Without it the first `prev_hash` on disk would have to be trusted,
//! whatever it is, and deleting the first lines of the log would go
//! unnoticed. The writer records the start when it opens a log that has no
//! anchor yet (64 zeros for a new log); retention rewrites it, before it
//! removes anything, with the hash of the last event it removes and the
//! name of the first segment it keeps.
//!
//! A log pruned by a kt that kept no anchor is *adopted*: its first
//! `prev_hash` becomes the anchor, marked as such, with a warning. That is
//! the only start that is taken on trust, and `verify` says so.

use super::chain::{is_hash, GENESIS_HASH};
use super::segment::{self, Segment};
use super::EventsError;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The anchor's file name in the events folder.
pub const ANCHOR_FILE: &str = "anchor.json";

/// Where the chain starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    /// What the first event of `first_segment` (of the log, when `None`)
    /// carries as `prev_hash`.
    pub prev_hash: String,
    /// The first segment retention kept; `None` before any was removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_segment: Option<String>,
    /// Segments retention removed so far.
    #[serde(default)]
    pub segments_pruned: u64,
    /// The start was taken from a log pruned before kt recorded anchors.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopted: bool,
}

/// The anchor file of the log in `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(ANCHOR_FILE)
}

/// The recorded anchor; `None` when there is no file.
pub fn read(dir: &Path) -> Result<Option<Anchor>, EventsError> {
    let path = path(dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(EventsError::io(&path, e)),
    };
    let corrupt = |problem: &str| EventsError::Corrupt {
        path: path.clone(),
        line: 1,
        problem: problem.into(),
    };
    let anchor: Anchor =
        serde_json::from_str(&text).map_err(|_| corrupt("not a kt chain anchor"))?;
    if !is_hash(&anchor.prev_hash) {
        return Err(corrupt("\"prev_hash\" is not a hash"));
    }
    if anchor
        .first_segment
        .as_deref()
        .is_some_and(|n| segment::parse_name(n).is_none())
    {
        return Err(corrupt("\"first_segment\" is not a segment name"));
    }
    Ok(Some(anchor))
}

/// Replaces the anchor: a reader sees the old one or the new one, and the
/// new one is durable before this returns (retention removes segments
/// only then).
pub fn write(dir: &Path, anchor: &Anchor) -> Result<(), EventsError> {
    let path = path(dir);
    let tmp = dir.join(format!("{ANCHOR_FILE}.tmp"));
    let mut text = serde_json::to_vec(anchor).map_err(|e| EventsError::io(&path, e.into()))?;
    text.push(b'\n');
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp).map_err(|e| EventsError::io(&tmp, e))?;
    file.write_all(&text)
        .and_then(|()| file.sync_all())
        .map_err(|e| EventsError::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| EventsError::io(&path, e))?;
    #[cfg(unix)]
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| EventsError::io(dir, e))?;
    Ok(())
}

/// Records where the log in `dir` starts if nothing is recorded yet (the
/// writer calls it on open): 64 zeros for a log that starts there, or an
/// adopted anchor for one an older kt pruned. An anchor file that is there
/// is left alone even if malformed: `verify` reports that, and traffic
/// does not stop for it.
pub fn ensure(dir: &Path) -> Result<(), EventsError> {
    let path = path(dir);
    match std::fs::symlink_metadata(&path) {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(EventsError::io(&path, e)),
    }
    let mut anchor = Anchor {
        prev_hash: GENESIS_HASH.to_string(),
        first_segment: None,
        segments_pruned: 0,
        adopted: false,
    };
    if let Some((seg, prev_hash)) = first_prev_hash(dir)? {
        if prev_hash != GENESIS_HASH {
            tracing::warn!(
                segment = %seg.path.display(),
                prev_hash = %prev_hash,
                "the audit log has no recorded start and does not begin with its first event \
                 (pruned by an older kt?): taking its first prev_hash as the anchor; \
                 `kt events verify` will say the start was adopted"
            );
            anchor = Anchor {
                prev_hash,
                first_segment: Some(seg.name()),
                segments_pruned: 0,
                adopted: true,
            };
        }
    }
    write(dir, &anchor)
}

/// The first event's `prev_hash` and its segment; `None` for a log without
/// events.
fn first_prev_hash(dir: &Path) -> Result<Option<(Segment, String)>, EventsError> {
    for seg in segment::list(dir)? {
        let bytes = std::fs::read(&seg.path).map_err(|e| EventsError::io(&seg.path, e))?;
        let Some(line) = bytes
            .split(|&b| b == b'\n')
            .find(|l| !l.trim_ascii().is_empty())
        else {
            continue;
        };
        let corrupt = |problem: &str| EventsError::Corrupt {
            path: seg.path.clone(),
            line: 1,
            problem: problem.into(),
        };
        let value: serde_json::Value =
            serde_json::from_slice(line).map_err(|_| corrupt("not a JSON object"))?;
        return match value.get("prev_hash").and_then(|h| h.as_str()) {
            Some(h) if is_hash(h) => Ok(Some((seg, h.to_string()))),
            _ => Err(corrupt("no valid \"prev_hash\" field")),
        };
    }
    Ok(None)
}

/// The anchor retention records before it removes `removed` (a prefix of
/// the log's segments), keeping `first_kept` and every segment after it:
/// the hash of the last event removed.
pub(super) fn after_removing(
    dir: &Path,
    removed: &[Segment],
    first_kept: &Segment,
) -> Result<Anchor, EventsError> {
    // A damaged anchor must not stop retention for good (the log would
    // grow without end): the new one is recorded from the segments removed,
    // and `verify` has reported the damaged one until now.
    let previous = match read(dir) {
        Err(e @ EventsError::Corrupt { .. }) => {
            tracing::warn!(error = %e, "the audit log's anchor is damaged; retention records a new one");
            None
        }
        read => read?,
    };
    let mut prev_hash = None;
    for seg in removed.iter().rev() {
        let bytes = std::fs::read(&seg.path).map_err(|e| EventsError::io(&seg.path, e))?;
        // Complete lines only: a segment that is not the newest has no other.
        let complete = bytes
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(&bytes[..0], |p| &bytes[..=p]);
        if let Some(hash) = super::log::last_hash(&seg.path, complete)? {
            prev_hash = Some(hash);
            break;
        }
    }
    // Only empty segments go: the start stays where it was.
    let prev_hash = prev_hash
        .or_else(|| previous.as_ref().map(|a| a.prev_hash.clone()))
        .unwrap_or_else(|| GENESIS_HASH.to_string());
    // Segments older than the previous anchor's first one were counted by
    // the prune that recorded it (and cut short before removing them).
    let counted_before = previous
        .as_ref()
        .and_then(|a| a.first_segment.as_deref())
        .and_then(segment::parse_name);
    let newly = removed
        .iter()
        .filter(|s| counted_before.is_none_or(|first| (s.date, s.seq) >= first))
        .count() as u64;
    Ok(Anchor {
        prev_hash,
        first_segment: Some(first_kept.name()),
        segments_pruned: previous.map_or(0, |a| a.segments_pruned) + newly,
        adopted: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_anchor_reads_back_and_is_private() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(read(tmp.path()).unwrap(), None);
        let anchor = Anchor {
            prev_hash: "a".repeat(64),
            first_segment: Some("2026-11-23.1.jsonl".into()),
            segments_pruned: 3,
            adopted: false,
        };
        write(tmp.path(), &anchor).unwrap();
        assert_eq!(read(tmp.path()).unwrap(), Some(anchor));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path(tmp.path())).unwrap().permissions();
            assert_eq!(mode.mode() & 0o777, 0o600);
        }
        assert!(!tmp.path().join("anchor.json.tmp").exists());
    }

    #[test]
    fn a_malformed_anchor_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        for bad in [
            "nonsense",
            r#"{"prev_hash":"abc"}"#,
            r#"{"prev_hash":"0000000000000000000000000000000000000000000000000000000000000000","first_segment":"x"}"#,
        ] {
            std::fs::write(path(tmp.path()), bad).unwrap();
            assert!(matches!(read(tmp.path()), Err(EventsError::Corrupt { .. })));
        }
    }
}
