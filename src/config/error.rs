//! Config problems: each one located by line, column and key path, and the
//! error that carries all of them at once.

use std::fmt;
use std::path::{Path, PathBuf};

/// A position in the config text: 1-based line and column (in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Mark {
    pub line: usize,
    pub column: usize,
}

impl Mark {
    /// A position unknown to the parser (for example a default that was
    /// never written). Displayed without line and column.
    pub const UNKNOWN: Mark = Mark { line: 0, column: 0 };

    pub fn new(line: usize, column: usize) -> Self {
        Mark { line, column }
    }
}

/// One thing wrong with a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where in the file (`Mark::UNKNOWN` when the file has no such spot,
    /// e.g. a required section that is missing).
    pub mark: Mark,
    /// Dotted key path, `[i]` for list items (`policies[1].config.ttl_seconds`);
    /// empty for the document itself.
    pub path: String,
    pub message: String,
}

impl Problem {
    pub fn new(mark: Mark, path: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            mark,
            path: path.into(),
            message: message.into(),
        }
    }

    /// `FILE:LINE:COL: key.path: message`, leaving out the parts unknown.
    pub fn display_in<'a>(&'a self, file: &'a Path) -> impl fmt::Display + 'a {
        InFile {
            problem: self,
            file,
            prefix: "",
        }
    }

    /// As [`Problem::display_in`], with `warning: ` before the key path.
    pub fn display_warning_in<'a>(&'a self, file: &'a Path) -> impl fmt::Display + 'a {
        InFile {
            problem: self,
            file,
            prefix: "warning: ",
        }
    }
}

struct InFile<'a> {
    problem: &'a Problem,
    file: &'a Path,
    prefix: &'a str,
}

impl fmt::Display for InFile<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.problem;
        write!(f, "{}", self.file.display())?;
        if p.mark.line > 0 {
            write!(f, ":{}:{}", p.mark.line, p.mark.column)?;
        }
        write!(f, ": {}", self.prefix)?;
        if !p.path.is_empty() {
            write!(f, "{}: ", p.path)?;
        }
        write!(f, "{}", p.message)
    }
}

/// Why a config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all. (The I/O error is part of the
    /// message rather than a `source()`, so that `{:#}` chains print it once.)
    #[error("cannot read {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// The file was read but is not a valid config: YAML syntax, unknown
    /// keys or types, wrong values. Every problem found is listed, in file
    /// order; `Display` prints one per line.
    #[error("{}", ProblemLines { path, problems })]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// The problems found (empty for `Read`).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid { problems, .. } => problems,
        }
    }
}

struct ProblemLines<'a> {
    path: &'a Path,
    problems: &'a [Problem],
}

impl fmt::Display for ProblemLines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}", p.display_in(self.path))?;
        }
        Ok(())
    }
}

/// Appends a key to a dotted path.
pub(crate) fn child_key(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// Appends a list index to a path.
pub(crate) fn child_index(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

/// `a, b, c` for an expected-values list.
pub(crate) fn one_of(expected: &[&str]) -> String {
    expected.join(", ")
}

/// The expected word closest to `got`, if it is close enough to be a typo.
pub(crate) fn did_you_mean<'a>(got: &str, expected: &[&'a str]) -> Option<&'a str> {
    let got_l = got.to_ascii_lowercase();
    expected
        .iter()
        .map(|e| (edit_distance(&got_l, &e.to_ascii_lowercase()), *e))
        // A third of the word may be wrong, but at least one edit is allowed.
        .filter(|(d, e)| *d <= (e.len() / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, e)| e)
}

/// `unknown key `x` (did you mean `y`?); expected one of a, b` style text.
pub(crate) fn unknown_word(what: &str, got: &str, expected: &[&str]) -> String {
    let mut msg = format!("unknown {what} `{got}`");
    if let Some(s) = did_you_mean(got, expected) {
        msg.push_str(&format!(" (did you mean `{s}`?)"));
    }
    if expected.is_empty() {
        msg.push_str(", this section takes no keys");
    } else {
        msg.push_str(&format!(", expected one of {}", one_of(expected)));
    }
    msg
}

/// Edit distance over chars where swapping two neighbours counts as one
/// edit (optimal string alignment), so `cahce` is one step from `cache`.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut before: Vec<usize> = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for i in 0..a.len() {
        cur[0] = i + 1;
        for j in 0..b.len() {
            let cost = usize::from(a[i] != b[j]);
            let mut d = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
            if i > 0 && j > 0 && a[i] == b[j - 1] && a[i - 1] == b[j] {
                d = d.min(before[j - 1] + 1);
            }
            cur[j + 1] = d;
        }
        std::mem::swap(&mut before, &mut prev);
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_has_file_line_column_and_path() {
        let p = Problem::new(Mark::new(14, 7), "policy.cf.action", "bad");
        assert_eq!(
            p.display_in(Path::new("p.yaml")).to_string(),
            "p.yaml:14:7: policy.cf.action: bad"
        );
        let q = Problem::new(Mark::UNKNOWN, "", "empty");
        assert_eq!(
            q.display_in(Path::new("p.yaml")).to_string(),
            "p.yaml: empty"
        );
    }

    #[test]
    fn suggestions_only_for_near_misses() {
        assert_eq!(
            did_you_mean("ttl_secs", &["ttl_seconds", "scope"]),
            Some("ttl_seconds")
        );
        assert_eq!(did_you_mean("colour", &["ttl_seconds", "scope"]), None);
        assert_eq!(
            did_you_mean("ttl_second", &["ttl_seconds", "scope"]),
            Some("ttl_seconds")
        );
        assert_eq!(
            did_you_mean("blok", &["block", "redact", "log"]),
            Some("block")
        );
        assert_eq!(did_you_mean("zzz", &["block", "redact", "log"]), None);
        assert_eq!(did_you_mean("cahce", &["cache", "budget"]), Some("cache"));
        assert_eq!(edit_distance("abcd", "badc"), 2);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
