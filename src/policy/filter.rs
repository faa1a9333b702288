//! The `content-filter` policy's matcher: configured regexes and keywords
//! over prompt and completion text, built once per config.

use crate::config::{ContentFilterOptions, FilterAction};
use std::borrow::Cow;
use std::ops::Range;

/// Errors building a filter.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("content-filter patterns: {0}")]
    Patterns(#[from] regex::Error),
}

/// A compiled content filter.
#[derive(Debug)]
pub struct ContentFilter {
    /// One pass tells whether any pattern matches at all; the individual
    /// regexes only run to locate matches (redact) or name the rule.
    set: Option<regex::RegexSet>,
    patterns: Vec<regex::Regex>,
    /// All keywords as one case-insensitive regex: the regex engine's
    /// literal prefilters beat a case-insensitive Aho-Corasick scan.
    keywords: Option<regex::Regex>,
    keyword_list: Vec<String>,
    pub action: FilterAction,
    pub message: Option<String>,
}

/// What matched first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterHit {
    /// The pattern or keyword that matched (configuration text, never the
    /// matched content).
    pub rule: String,
    pub range: Range<usize>,
}

impl ContentFilter {
    pub fn new(options: &ContentFilterOptions) -> Result<Self, FilterError> {
        let set = if options.patterns.is_empty() {
            None
        } else {
            Some(regex::RegexSet::new(
                options.patterns.iter().map(|r| r.as_str()),
            )?)
        };
        let keywords = if options.keywords.is_empty() {
            None
        } else {
            let mut words: Vec<&String> = options.keywords.iter().collect();
            // Longest first, so the leftmost match is also the longest.
            words.sort_by_key(|w| std::cmp::Reverse(w.len()));
            let alternation = words
                .iter()
                .map(|w| regex::escape(w))
                .collect::<Vec<_>>()
                .join("|");
            Some(regex::Regex::new(&format!("(?i:{alternation})"))?)
        };
        Ok(ContentFilter {
            set,
            patterns: options.patterns.clone(),
            keywords,
            keyword_list: options.keywords.clone(),
            action: options.action,
            message: options.message.clone(),
        })
    }

    /// The first match in `text`, if any.
    pub fn find(&self, text: &str) -> Option<FilterHit> {
        let mut best: Option<FilterHit> = None;
        if let Some(re) = &self.keywords {
            if let Some(m) = re.find(text) {
                let rule = self
                    .keyword_list
                    .iter()
                    .find(|k| {
                        k.eq_ignore_ascii_case(m.as_str())
                            || k.to_lowercase() == m.as_str().to_lowercase()
                    })
                    .cloned()
                    .unwrap_or_else(|| m.as_str().to_string());
                best = Some(FilterHit {
                    rule,
                    range: m.range(),
                });
            }
        }
        if let Some(set) = &self.set {
            for i in set.matches(text).iter() {
                let Some(re) = self.patterns.get(i) else {
                    continue;
                };
                if let Some(m) = re.find(text) {
                    if best.as_ref().is_none_or(|b| m.start() < b.range.start) {
                        best = Some(FilterHit {
                            rule: re.as_str().to_string(),
                            range: m.range(),
                        });
                    }
                }
            }
        }
        best
    }

    /// `text` with every match replaced by `placeholder`, and the number of
    /// replacements; borrowed when nothing matched.
    pub fn redact<'t>(&self, text: &'t str, placeholder: &str) -> (Cow<'t, str>, usize) {
        let mut ranges: Vec<Range<usize>> = Vec::new();
        if let Some(re) = &self.keywords {
            ranges.extend(re.find_iter(text).map(|m| m.range()));
        }
        if let Some(set) = &self.set {
            for i in set.matches(text).iter() {
                if let Some(re) = self.patterns.get(i) {
                    ranges.extend(re.find_iter(text).map(|m| m.range()));
                }
            }
        }
        if ranges.is_empty() {
            return (Cow::Borrowed(text), 0);
        }
        ranges.sort_by_key(|r| (r.start, std::cmp::Reverse(r.end)));
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        let mut count = 0;
        for r in ranges {
            if r.start < at {
                at = at.max(r.end);
                continue;
            }
            out.push_str(text.get(at..r.start).unwrap_or_default());
            out.push_str(placeholder);
            at = r.end;
            count += 1;
        }
        out.push_str(text.get(at..).unwrap_or_default());
        (Cow::Owned(out), count)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn filter(patterns: &[&str], keywords: &[&str]) -> ContentFilter {
        ContentFilter::new(&ContentFilterOptions {
            patterns: patterns
                .iter()
                .map(|p| regex::Regex::new(p).unwrap())
                .collect(),
            keywords: keywords.iter().map(|k| k.to_string()).collect(),
            action: FilterAction::Block,
            message: None,
        })
        .unwrap()
    }

    #[test]
    fn finds_patterns_and_keywords_case_insensitively() {
        let f = filter(&[r"(?i)internal-project-\w+"], &["Falcon"]);
        let hit = f.find("please review INTERNAL-PROJECT-zeus now").unwrap();
        assert_eq!(hit.rule, r"(?i)internal-project-\w+");
        assert_eq!(hit.range, 14..35);
        let hit = f.find("the FALCON launch").unwrap();
        assert_eq!(hit.rule, "Falcon");
        assert!(f.find("nothing to see").is_none());
    }

    #[test]
    fn earliest_match_wins() {
        let f = filter(&["zeta"], &["alpha"]);
        assert_eq!(f.find("alpha then zeta").unwrap().rule, "alpha");
        assert_eq!(f.find("zeta then alpha").unwrap().rule, "zeta");
    }

    #[test]
    fn redacts_every_match_once() {
        let f = filter(&[r"secret-\d+"], &["codename"]);
        let (out, n) = f.redact("a secret-12 and Codename and secret-7.", "[X]");
        assert_eq!(out, "a [X] and [X] and [X].");
        assert_eq!(n, 3);
        let (out, n) = f.redact("clean", "[X]");
        assert!(matches!(out, Cow::Borrowed(_)));
        assert_eq!(n, 0);
    }
}
