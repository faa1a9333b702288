//! `kt events verify`: walks every segment in order and checks each event's hash and its link to the event before.
//!
//! The check works on the stored bytes (see [`chain`](super::chain)). The
//! chain must start where the log's [`anchor`](super::anchor) says: 64
//! zeros for a log that still has its first event, otherwise the hash of
//! the last event retention removed, at the first segment it kept. So
//! whole oldest segments removed by retention pass; any other edit,
//! deletion (events cut from the start of the log included), insertion or
//! reordering is reported. Segments older than the anchor's first segment
//! are what a prune cut short left behind: checked for their links, but
//! their own start is not anchored.
//!
//! What is left of a log cut back at its end, or of one whose newest events
//! were rewritten and re-chained, still links up. Only a hash recorded
//! outside the log shows it: [`Checkpoints`] are such hashes (the last hash
//! an earlier `verify` printed), and each must still be in the chain.

use super::anchor::{self, Anchor};
use super::chain::{hash_of, is_hash, unsealed, GENESIS_HASH};
use super::segment;
use std::collections::HashSet;
use std::path::PathBuf;

/// What a successful verification covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub segments: usize,
    pub events: u64,
    /// The trusted first `prev_hash`; `None` for an empty log.
    pub anchor: Option<String>,
    /// The hash of the last event; `None` for an empty log.
    pub last_hash: Option<String>,
    /// Whether the newest segment ends in an incomplete line (a write in
    /// progress, or a crash the writer will repair on its next start). That
    /// line is not counted and not checked.
    pub incomplete_tail: bool,
    /// The start was adopted from a log pruned before kt recorded anchors:
    /// events missing before it cannot be ruled out.
    pub adopted: bool,
    /// Segments before the anchor's first segment, left by a prune that was
    /// cut short (their own start is not anchored).
    pub unanchored_segments: usize,
}

impl VerifyReport {
    /// Whether the chain starts at the very first event ever written.
    pub fn from_genesis(&self) -> bool {
        self.anchor.as_deref() == Some(GENESIS_HASH)
    }
}

/// What is wrong with a line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("not a JSON event")]
    NotJson,
    #[error("blank line")]
    BlankLine,
    #[error("missing or malformed \"{0}\"")]
    MissingField(&'static str),
    #[error("\"hash\" is not where the writer puts it (line re-encoded?)")]
    NotCanonical,
    #[error("content does not match its hash (edited?)")]
    HashMismatch,
    #[error("prev_hash {found} is not the hash of the event before ({expected}): events deleted, inserted or reordered")]
    ChainBreak { expected: String, found: String },
    #[error("incomplete last line in a segment that is not the newest")]
    Incomplete,
    #[error("prev_hash {found} is not the recorded start of the chain ({expected}, in {ANCHOR}): events are missing before this line, or the anchor was altered", ANCHOR = anchor::ANCHOR_FILE)]
    MissingBefore { expected: String, found: String },
    #[error("prev_hash {found} is not the first event's (64 zeros) and no start is recorded ({ANCHOR} is missing): events are missing before this line", ANCHOR = anchor::ANCHOR_FILE)]
    Unanchored { found: String },
    #[error("the chain's recorded start names segment {0}, which is missing: events are missing")]
    AnchorSegmentMissing(String),
    #[error("not a valid chain anchor: {0}")]
    BadAnchor(String),
}

impl Problem {
    /// Stable snake_case label.
    pub fn kind(&self) -> &'static str {
        match self {
            Problem::NotJson => "not_json",
            Problem::BlankLine => "blank_line",
            Problem::MissingField(_) => "missing_field",
            Problem::NotCanonical => "not_canonical",
            Problem::HashMismatch => "hash_mismatch",
            Problem::ChainBreak { .. } => "chain_break",
            Problem::Incomplete => "incomplete",
            Problem::MissingBefore { .. } => "missing_before",
            Problem::Unanchored { .. } => "unanchored",
            Problem::AnchorSegmentMissing(_) => "anchor_segment_missing",
            Problem::BadAnchor(_) => "bad_anchor",
        }
    }
}

/// Why verification failed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("audit log tampered: {file} line {line}: {problem}")]
    Tampered {
        /// The segment file.
        file: PathBuf,
        /// 1-based.
        line: usize,
        problem: Problem,
    },
}

impl VerifyError {
    /// Stable snake_case label.
    pub fn kind(&self) -> &'static str {
        match self {
            VerifyError::Io { .. } => "verify_io",
            VerifyError::Tampered { .. } => "verify_tampered",
        }
    }
}

/// Event hashes recorded outside the log that the chain must still hold.
#[derive(Debug, Clone, Default)]
pub struct Checkpoints {
    /// Not seen yet.
    missing: HashSet<String>,
}

impl Checkpoints {
    pub fn new(hashes: impl IntoIterator<Item = String>) -> Self {
        Checkpoints {
            missing: hashes.into_iter().collect(),
        }
    }

    /// Notes that the chain holds `hash`.
    pub fn see(&mut self, hash: &str) {
        if !self.missing.is_empty() {
            self.missing.remove(hash);
        }
    }

    /// The checkpoints not (yet) found, sorted.
    pub fn missing(&self) -> Vec<&str> {
        let mut out: Vec<&str> = self.missing.iter().map(String::as_str).collect();
        out.sort_unstable();
        out
    }
}

/// Checks the whole log in `dir`.
pub fn verify(dir: &std::path::Path) -> Result<VerifyReport, VerifyError> {
    verify_with(dir, &mut Checkpoints::default())
}

/// [`verify`], noting in `checkpoints` each of them the chain holds.
pub fn verify_with(
    dir: &std::path::Path,
    checkpoints: &mut Checkpoints,
) -> Result<VerifyReport, VerifyError> {
    let io = |e: super::EventsError| match e {
        super::EventsError::Io { path, source } => VerifyError::Io { path, source },
        other => VerifyError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::other(other.to_string()),
        },
    };
    let read_anchor = || {
        anchor::read(dir).map_err(|e| match e {
            super::EventsError::Corrupt { path, problem, .. } => VerifyError::Tampered {
                file: path,
                line: 1,
                problem: Problem::BadAnchor(problem),
            },
            other => io(other),
        })
    };
    // A prune records its anchor, then removes segments: an anchor read
    // before a prune with segments listed after it would not match, so a
    // listing counts only with the same anchor on both sides of it.
    let mut tries = 0;
    let (recorded, segments) = loop {
        let recorded = read_anchor()?;
        let segments = segment::list(dir).map_err(io)?;
        tries += 1;
        if tries == 3 || read_anchor()? == recorded {
            break (recorded, segments);
        }
    };
    // Where the recorded start applies: the first line from that segment on.
    let start_at = match recorded.as_ref().and_then(|a| a.first_segment.as_deref()) {
        None => 0,
        Some(_) if segments.is_empty() => 0,
        Some(name) => segments
            .iter()
            .position(|s| s.name() == name)
            .ok_or_else(|| VerifyError::Tampered {
                file: anchor::path(dir),
                line: 1,
                problem: Problem::AnchorSegmentMissing(name.to_string()),
            })?,
    };
    let mut report = VerifyReport {
        segments: segments.len(),
        events: 0,
        anchor: None,
        last_hash: None,
        incomplete_tail: false,
        adopted: recorded.as_ref().is_some_and(|a| a.adopted),
        unanchored_segments: start_at,
    };
    let mut start_pending = true;
    let count = segments.len();
    for (si, seg) in segments.into_iter().enumerate() {
        let bytes = std::fs::read(&seg.path).map_err(|source| VerifyError::Io {
            path: seg.path.clone(),
            source,
        })?;
        let mut lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
        // The piece after the last newline: empty, or an incomplete line.
        let tail = lines.pop().unwrap_or_default();
        for (i, line) in lines.iter().enumerate() {
            let tampered = |problem| VerifyError::Tampered {
                file: seg.path.clone(),
                line: i + 1,
                problem,
            };
            let at_start = start_pending && si >= start_at;
            let before = if at_start {
                report.last_hash.clone()
            } else {
                None
            };
            check_line(line, &mut report).map_err(tampered)?;
            if at_start {
                start_pending = false;
                // The line's prev_hash: the hash before it, or for the very
                // first line the anchor check_line took from it.
                let found = before.or_else(|| report.anchor.clone()).unwrap_or_default();
                check_start(&found, recorded.as_ref()).map_err(tampered)?;
            }
            if let Some(hash) = &report.last_hash {
                checkpoints.see(hash);
            }
        }
        if !tail.is_empty() {
            if si + 1 == count {
                report.incomplete_tail = true;
            } else {
                return Err(VerifyError::Tampered {
                    file: seg.path.clone(),
                    line: lines.len() + 1,
                    problem: Problem::Incomplete,
                });
            }
        }
    }
    Ok(report)
}

/// Whether the chain may start with `prev_hash`: the first event ever
/// written, or where the recorded anchor says.
fn check_start(prev_hash: &str, recorded: Option<&Anchor>) -> Result<(), Problem> {
    match recorded {
        _ if prev_hash == GENESIS_HASH => Ok(()),
        Some(a) if a.prev_hash == prev_hash => Ok(()),
        Some(a) => Err(Problem::MissingBefore {
            expected: a.prev_hash.clone(),
            found: prev_hash.to_string(),
        }),
        None => Err(Problem::Unanchored {
            found: prev_hash.to_string(),
        }),
    }
}

/// Checks one stored line against the chain so far in `report` (the first
/// line checked sets the anchor), and counts it.
pub fn check_line(line: &[u8], report: &mut VerifyReport) -> Result<(), Problem> {
    if line.trim_ascii().is_empty() {
        return Err(Problem::BlankLine);
    }
    let text = std::str::from_utf8(line).map_err(|_| Problem::NotJson)?;
    let value: serde_json::Value = serde_json::from_str(text).map_err(|_| Problem::NotJson)?;
    if !value.is_object() {
        return Err(Problem::NotJson);
    }
    let field = |name: &'static str| match value.get(name).and_then(|v| v.as_str()) {
        Some(h) if is_hash(h) => Ok(h),
        _ => Err(Problem::MissingField(name)),
    };
    let hash = field("hash")?;
    let prev_hash = field("prev_hash")?;
    let canonical = unsealed(text, hash).ok_or(Problem::NotCanonical)?;
    if hash_of(prev_hash, canonical.as_bytes()) != hash {
        return Err(Problem::HashMismatch);
    }
    match &report.last_hash {
        Some(expected) if expected != prev_hash => {
            return Err(Problem::ChainBreak {
                expected: expected.clone(),
                found: prev_hash.to_string(),
            })
        }
        Some(_) => {}
        None => report.anchor = Some(prev_hash.to_string()),
    }
    report.last_hash = Some(hash.to_string());
    report.events += 1;
    Ok(())
}
