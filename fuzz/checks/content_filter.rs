//! The `content-filter` matcher on an arbitrary pattern and text. Input: the
//! pattern (at most 64 bytes), a newline, the text.
//!
//! Checks: the filter, which may run a case-blind pattern rewritten over
//! the text's lowercased copy, finds the same first match and redacts the
//! same number of matches as the regex crate on the text itself, for the
//! input as a pattern and as a keyword; and a stream that had only the text
//! up to the middle of the first match would have been told that its end may
//! still grow into a match (or that the filter cannot tell), so it holds it.

use keeptrusts::config::{ContentFilterOptions, FilterAction};
use keeptrusts::policy::filter::ContentFilter;

/// Runs the checks on one input; panics on a violation.
pub fn run(data: &[u8]) {
    let input = String::from_utf8_lossy(data);
    let (pattern, text) = input.split_once('\n').unwrap_or((&input, ""));
    if pattern.len() > 64 {
        return;
    }
    let as_keyword = regex::RegexBuilder::new(&regex::escape(pattern))
        .case_insensitive(true)
        .build();
    if let Ok(re) = as_keyword {
        if !pattern.is_empty() {
            agree(&re, filter(Vec::new(), vec![pattern.to_string()]), text);
        }
    }
    let Ok(re) = regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
    else {
        return;
    };
    agree(&re, filter(vec![re.clone()], Vec::new()), text);
}

fn filter(patterns: Vec<regex::Regex>, keywords: Vec<String>) -> ContentFilter {
    let options = ContentFilterOptions {
        patterns,
        keywords,
        action: FilterAction::Block,
        message: None,
    };
    match ContentFilter::new(&options) {
        Ok(f) => f,
        Err(e) => panic!("a pattern that compiles makes a filter: {e}"),
    }
}

fn agree(re: &regex::Regex, filter: ContentFilter, text: &str) {
    let want = re.find(text).map(|m| m.range());
    let got = filter.find(text).map(|h| h.range);
    assert_eq!(got, want, "first match of {re} in {text:?}");
    let (_, n) = filter.redact(text, "[X]");
    assert_eq!(n, re.find_iter(text).count(), "matches of {re} in {text:?}");
    let Some(m) = want.filter(|m| m.len() > 1) else {
        return;
    };
    let Some(cut) = (m.start + 1..m.end).find(|&i| text.is_char_boundary(i)) else {
        return;
    };
    // Only a match the shorter text does not hold itself is cut by it.
    let head = &text[..cut];
    if re.find(head).is_some_and(|h| h.start() <= m.start) {
        return;
    }
    assert_ne!(
        filter.may_continue(head, m.start),
        Some(false),
        "{re}: {head:?} was said to start no match, but {text:?} matches at {m:?}"
    );
}
