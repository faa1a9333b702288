//! The `redact` policy: the secret scanner (built-in rules plus the
//! policy's own patterns), narrowed to the kinds the policy keeps.

use super::secrets::{CustomRule, Finding, Scanner, SecretsError};
use crate::config::RedactOptions;
use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

/// Default bytes of stream text kept back while they may still be the start
/// of a secret (see `policy::stream`).
pub const DEFAULT_HOLDBACK: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum RedactError {
    #[error(transparent)]
    Rules(#[from] SecretsError),
}

/// A compiled `redact` policy.
#[derive(Debug)]
pub struct Redactor {
    scanner: Arc<Scanner>,
    /// Only these built-in kinds are redacted (all when `None`); the
    /// policy's own patterns always are.
    kinds: Option<Vec<String>>,
    disable: Vec<String>,
    /// Upper bound on the stream text held back at once.
    pub holdback: usize,
}

/// The built-in rules, compiled once per process.
fn builtin() -> Arc<Scanner> {
    static BUILTIN: OnceLock<Arc<Scanner>> = OnceLock::new();
    BUILTIN.get_or_init(|| Arc::new(Scanner::builtin())).clone()
}

impl Redactor {
    pub fn new(options: &RedactOptions) -> Result<Self, RedactError> {
        let scanner = if options.patterns.is_empty() {
            builtin()
        } else {
            let custom: Vec<CustomRule> = options
                .patterns
                .iter()
                .map(|p| CustomRule {
                    name: p.name.clone(),
                    pattern: p.regex.as_str().to_string(),
                })
                .collect();
            Arc::new(Scanner::with_custom(&custom)?)
        };
        Ok(Redactor {
            scanner,
            kinds: options.kinds.clone(),
            disable: options.disable.clone(),
            holdback: options
                .stream_holdback_bytes
                .map_or(DEFAULT_HOLDBACK, |b| b as usize),
        })
    }

    /// A redactor with the built-in rules only (tests, benches).
    pub fn builtin() -> Self {
        Redactor {
            scanner: builtin(),
            kinds: None,
            disable: Vec::new(),
            holdback: DEFAULT_HOLDBACK,
        }
    }

    /// How long a stream may hold the word `text` ends in: see
    /// [`Scanner::open_token_len`].
    pub fn open_token_len(&self, text: &str) -> usize {
        self.scanner.open_token_len(text)
    }

    fn keeps(&self, f: &Finding) -> bool {
        let kind = &*f.kind;
        let rule = &*f.rule;
        if self.disable.iter().any(|d| d == kind || d == rule) {
            return false;
        }
        // `kinds` picks among the built-in kinds (RedactOptions::kinds):
        // a custom pattern is written to be redacted, and `kinds: []` with
        // patterns (which the config allows) means "only my patterns".
        f.custom
            || self
                .kinds
                .as_ref()
                .is_none_or(|k| k.iter().any(|k| k == kind || k == rule))
    }

    /// The secrets in `text` this policy redacts, in text order.
    pub fn find(&self, text: &str) -> Vec<Finding> {
        let mut found = self.scanner.find(text);
        found.retain(|f| self.keeps(f));
        found
    }

    /// `text` with each secret replaced by `[REDACTED:<kind>]`; borrowed
    /// when nothing was found. The findings are appended to `found`.
    pub fn redact<'t>(&self, text: &'t str, found: &mut Vec<Finding>) -> Cow<'t, str> {
        let findings = self.find(text);
        if findings.is_empty() {
            return Cow::Borrowed(text);
        }
        let out = replace_ranges(text, &findings, 0);
        found.extend(findings);
        Cow::Owned(out)
    }
}

/// `[REDACTED:<kind>]`.
pub fn placeholder(kind: &str) -> String {
    format!("[REDACTED:{kind}]")
}

/// `text` with each finding's range (shifted by `-offset`, clipped to
/// `text`) replaced by its placeholder. Findings must be in order and not
/// overlap.
pub fn replace_ranges(text: &str, findings: &[Finding], offset: usize) -> String {
    let mut out = String::with_capacity(text.len() + 16 * findings.len());
    let mut at = 0;
    for f in findings {
        let start = f.range.start.saturating_sub(offset).min(text.len());
        let end = f.range.end.saturating_sub(offset).min(text.len());
        if f.range.end <= offset || start < at {
            continue;
        }
        out.push_str(text.get(at..start).unwrap_or_default());
        out.push_str(&placeholder(&f.kind));
        at = end;
    }
    out.push_str(text.get(at..).unwrap_or_default());
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const PAT: &str = "ghp_abcdefghijklmnopqrstuvwxyz0123456789";

    #[test]
    fn redacts_builtin_kinds_and_honours_kind_filters() {
        let r = Redactor::builtin();
        let text = format!("token = \"{PAT}\" ok");
        let mut found = Vec::new();
        let out = r.redact(&text, &mut found);
        assert!(!out.contains(PAT), "{out}");
        assert!(out.contains("[REDACTED:"), "{out}");
        assert_eq!(found.len(), 1);

        let kind = found[0].kind.to_string();
        let off = Redactor::new(&RedactOptions {
            disable: vec![kind],
            ..RedactOptions::default()
        })
        .unwrap();
        let mut found = Vec::new();
        assert_eq!(off.redact(&text, &mut found), text);
    }

    #[test]
    fn kinds_narrow_the_built_in_rules_only() {
        let ticket = || crate::config::NamedPattern {
            name: "ticket".into(),
            regex: regex::Regex::new("TCK-[0-9]{6}").unwrap(),
        };
        let text = format!("see TCK-123456 with token {PAT} and jwt");
        let redacted = |o: RedactOptions| {
            let mut found = Vec::new();
            Redactor::new(&o)
                .unwrap()
                .redact(&text, &mut found)
                .into_owned()
        };
        // A built-in kind named in `kinds` and the policy's own pattern.
        let out = redacted(RedactOptions {
            patterns: vec![ticket()],
            kinds: Some(vec!["github_pat".into()]),
            ..RedactOptions::default()
        });
        assert_eq!(
            out,
            "see [REDACTED:ticket] with token [REDACTED:github_pat] and jwt"
        );
        // `kinds: []` with patterns: only the patterns.
        let out = redacted(RedactOptions {
            patterns: vec![ticket()],
            kinds: Some(Vec::new()),
            ..RedactOptions::default()
        });
        assert_eq!(
            out,
            format!("see [REDACTED:ticket] with token {PAT} and jwt")
        );
        // `disable` still switches a pattern off.
        let out = redacted(RedactOptions {
            patterns: vec![ticket()],
            disable: vec!["ticket".into()],
            ..RedactOptions::default()
        });
        assert_eq!(
            out,
            "see TCK-123456 with token [REDACTED:github_pat] and jwt"
        );
    }

    #[test]
    fn replace_ranges_clips_to_the_window() {
        let f = Finding {
            kind: "k".into(),
            rule: "r".into(),
            range: 3..9,
            custom: false,
        };
        // The window starts at byte 5 of the scanned text: bytes 5..9 of the
        // secret are in it.
        assert_eq!(replace_ranges("abcdXYZ", &[f], 5), "[REDACTED:k]XYZ");
    }
}
