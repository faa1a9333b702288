//! Segment files of the audit log: naming (`YYYY-MM-DD.jsonl`, then `YYYY-MM-DD.N.jsonl` past the size cap), ordering, and retention.

use super::EventsError;
use std::path::{Path, PathBuf};
use time::Date;

/// One segment file. Segments are ordered by (UTC day, sequence number);
/// the chain runs through them in that order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Segment {
    /// The UTC day the writer started the segment on.
    pub date: Date,
    /// 0 for `YYYY-MM-DD.jsonl`, N for `YYYY-MM-DD.N.jsonl`.
    pub seq: u32,
    pub path: PathBuf,
}

impl Segment {
    /// The segment `date`/`seq` in `dir`.
    pub fn new(dir: &Path, date: Date, seq: u32) -> Segment {
        Segment {
            date,
            seq,
            path: dir.join(file_name(date, seq)),
        }
    }

    /// The file name, for messages.
    pub fn name(&self) -> String {
        file_name(self.date, self.seq)
    }
}

fn file_name(date: Date, seq: u32) -> String {
    let day = format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    );
    if seq == 0 {
        format!("{day}.jsonl")
    } else {
        format!("{day}.{seq}.jsonl")
    }
}

/// Parses a segment file name; `None` for anything else in the folder.
pub fn parse_name(name: &str) -> Option<(Date, u32)> {
    let stem = name.strip_suffix(".jsonl")?;
    let (day, seq) = match stem.split_once('.') {
        Some((day, seq)) => {
            // No leading zeros or signs, so each (date, seq) has one name.
            if seq.is_empty() || seq.starts_with('0') || !seq.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            (day, seq.parse().ok()?)
        }
        None => (stem, 0),
    };
    let b = day.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let digits = |s: &str| s.bytes().all(|c| c.is_ascii_digit());
    let (y, m, d) = (&day[..4], &day[5..7], &day[8..]);
    if !digits(y) || !digits(m) || !digits(d) {
        return None;
    }
    let month = time::Month::try_from(m.parse::<u8>().ok()?).ok()?;
    let date = Date::from_calendar_date(y.parse().ok()?, month, d.parse().ok()?).ok()?;
    Some((date, seq))
}

/// Every segment in `dir`, oldest first. A missing folder has none.
pub fn list(dir: &Path) -> Result<Vec<Segment>, EventsError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(EventsError::io(dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| EventsError::io(dir, e))?;
        let name = entry.file_name();
        let Some((date, seq)) = name.to_str().and_then(parse_name) else {
            continue;
        };
        out.push(Segment {
            date,
            seq,
            path: entry.path(),
        });
    }
    out.sort();
    Ok(out)
}

/// Removes whole segments older than `retention_days` UTC days (a segment
/// dated today minus `retention_days` is kept). Returns what was removed.
///
/// The newest segment is never removed (the writer appends to it), and only
/// a prefix of the chain goes, so the rest stays verifiable: the hash of
/// the last event removed is recorded first in the log's
/// [`anchor`](super::anchor), where [`verify`] expects the chain to start.
///
/// [`verify`]: super::verify()
pub fn prune(dir: &Path, retention_days: u32) -> Result<Vec<PathBuf>, EventsError> {
    let today = time::OffsetDateTime::now_utc().date();
    let cutoff = today
        .checked_sub(time::Duration::days(i64::from(retention_days)))
        .unwrap_or(Date::MIN);
    prune_before(dir, cutoff)
}

/// [`prune`], keeping also `keep` and every segment after it: what a
/// reader of the log (the hosted-mode shipper) has yet to read.
pub fn prune_until(
    dir: &Path,
    retention_days: u32,
    keep: &Path,
) -> Result<Vec<PathBuf>, EventsError> {
    let today = time::OffsetDateTime::now_utc().date();
    let cutoff = today
        .checked_sub(time::Duration::days(i64::from(retention_days)))
        .unwrap_or(Date::MIN);
    remove_before(dir, cutoff, Some(keep))
}

/// Removes whole segments dated before `cutoff` (never the newest one).
pub fn prune_before(dir: &Path, cutoff: Date) -> Result<Vec<PathBuf>, EventsError> {
    remove_before(dir, cutoff, None)
}

fn remove_before(
    dir: &Path,
    cutoff: Date,
    keep: Option<&Path>,
) -> Result<Vec<PathBuf>, EventsError> {
    let segments = list(dir)?;
    let keep_from = segments.len().saturating_sub(1);
    // Sorted: the first segment kept ends the run.
    let doomed = segments[..keep_from]
        .iter()
        .take_while(|seg| {
            seg.date < cutoff && keep.is_none_or(|k| k.file_name() != seg.path.file_name())
        })
        .count();
    let Some(first_kept) = segments.get(doomed).filter(|_| doomed > 0) else {
        return Ok(Vec::new());
    };
    // Recorded first: a prune cut short leaves segments the anchor says are
    // gone, which `verify` accepts, never an unrecorded start.
    let anchor = super::anchor::after_removing(dir, &segments[..doomed], first_kept)?;
    super::anchor::write(dir, &anchor)?;
    let mut removed = Vec::new();
    for seg in segments.into_iter().take(doomed) {
        std::fs::remove_file(&seg.path).map_err(|e| EventsError::io(&seg.path, e))?;
        removed.push(seg.path);
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::Month;

    fn day(y: i32, m: Month, d: u8) -> Date {
        Date::from_calendar_date(y, m, d).unwrap()
    }

    #[test]
    fn names_round_trip_and_sort_numerically() {
        let dir = Path::new("/x");
        let a = Segment::new(dir, day(2026, Month::November, 23), 0);
        let b = Segment::new(dir, day(2026, Month::November, 23), 2);
        let c = Segment::new(dir, day(2026, Month::November, 23), 10);
        let d = Segment::new(dir, day(2026, Month::November, 24), 0);
        assert_eq!(a.name(), "2026-11-23.jsonl");
        assert_eq!(c.name(), "2026-11-23.10.jsonl");
        for s in [&a, &b, &c, &d] {
            assert_eq!(parse_name(&s.name()), Some((s.date, s.seq)));
        }
        let mut v = vec![d.clone(), c.clone(), a.clone(), b.clone()];
        v.sort();
        assert_eq!(v, vec![a, b, c, d]);
        for bad in [
            "2026-11-23.json",
            "2026-13-01.jsonl",
            "2026-11-23.01.jsonl",
            "2026-11-23..jsonl",
            "x.jsonl",
            "2026-11-23.-1.jsonl",
        ] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn list_ignores_other_files_and_missing_dir_is_empty() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(list(&tmp.path().join("nope")).unwrap().is_empty());
        std::fs::write(tmp.path().join("2026-11-23.1.jsonl"), "").unwrap();
        std::fs::write(tmp.path().join("2026-11-23.jsonl"), "").unwrap();
        std::fs::write(tmp.path().join("notes.txt"), "").unwrap();
        let names: Vec<_> = list(tmp.path())
            .unwrap()
            .iter()
            .map(Segment::name)
            .collect();
        assert_eq!(names, ["2026-11-23.jsonl", "2026-11-23.1.jsonl"]);
    }

    #[test]
    fn prune_removes_old_days_but_never_the_newest() {
        let tmp = tempfile::tempdir().unwrap();
        for n in ["2026-11-01.jsonl", "2026-11-01.1.jsonl", "2026-11-20.jsonl"] {
            std::fs::write(tmp.path().join(n), "").unwrap();
        }
        let removed = prune_before(tmp.path(), day(2026, Month::November, 10)).unwrap();
        assert_eq!(removed.len(), 2);
        let removed = prune_before(tmp.path(), day(2027, Month::January, 1)).unwrap();
        assert!(removed.is_empty());
        assert_eq!(list(tmp.path()).unwrap().len(), 1);
    }
}
