//! The `content-filter` policy's matcher: configured regexes and keywords
//! over prompt and completion text, built once per config. It also tells a
//! stream whether the text it holds could still grow into a match, so no
//! part of a blocked phrase is released before the phrase is whole.

use crate::config::{ContentFilterOptions, FilterAction};
use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::{Anchored, Input};
use std::borrow::Cow;
use std::ops::Range;
use std::sync::Mutex;

/// Errors building a filter.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("content-filter patterns: {0}")]
    Patterns(#[from] regex::Error),
}

/// A compiled content filter.
#[derive(Debug)]
pub struct ContentFilter {
    /// Every pattern and keyword is blind to ASCII case (`(?i)`, and the
    /// keywords always), so they run rewritten over the text's
    /// ASCII-lowercased copy, where they are plain literals to the regex
    /// engine's substring search (see [`super::fold`]).
    folded: bool,
    regexes: Compiled,
    /// The patterns as configured: a hit names one of these.
    names: Vec<String>,
    keyword_list: Vec<String>,
    /// `None` for a filter that only logs (streams never wait for it), or
    /// when the patterns do not build as a lazy DFA: streams then fall back
    /// to holding the last word. Boxed: a DFA is large, and a
    /// policy's action is an enum of every policy's options.
    prefixes: Option<Box<Prefixes>>,
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

/// The regexes a filter runs.
#[derive(Debug)]
struct Compiled {
    /// One pass tells whether any pattern matches at all; the individual
    /// regexes only run to locate matches (redact) or name the rule.
    set: Option<regex::RegexSet>,
    patterns: Vec<regex::Regex>,
    /// All keywords as one case-insensitive regex: the regex engine's
    /// literal prefilters beat a case-insensitive Aho-Corasick scan.
    keywords: Option<regex::Regex>,
}

impl Compiled {
    fn new(patterns: &[String], keywords: Option<&str>) -> Result<Self, regex::Error> {
        Ok(Compiled {
            set: if patterns.is_empty() {
                None
            } else {
                Some(regex::RegexSet::new(patterns)?)
            },
            patterns: patterns
                .iter()
                .map(|p| regex::Regex::new(p))
                .collect::<Result<_, _>>()?,
            keywords: keywords.map(regex::Regex::new).transpose()?,
        })
    }
}

impl ContentFilter {
    pub fn new(options: &ContentFilterOptions) -> Result<Self, FilterError> {
        let names: Vec<String> = options.patterns.iter().map(|r| r.to_string()).collect();
        let keywords = (!options.keywords.is_empty()).then(|| {
            let mut words: Vec<&String> = options.keywords.iter().collect();
            // Longest first, so the leftmost match is also the longest.
            words.sort_by_key(|w| std::cmp::Reverse(w.len()));
            let alternation = words
                .iter()
                .map(|w| regex::escape(w))
                .collect::<Vec<_>>()
                .join("|");
            format!("(?i:{alternation})")
        });
        let folded_patterns: Option<Vec<String>> =
            names.iter().map(|p| super::fold::lowered(p)).collect();
        let folded_keywords = match &keywords {
            Some(k) => super::fold::lowered(k).map(Some),
            None => Some(None),
        };
        // A rewritten pattern is equivalent to its original; should one
        // still not compile, the originals serve.
        let folded = folded_patterns
            .zip(folded_keywords)
            .and_then(|(p, k)| Compiled::new(&p, k.as_deref()).ok());
        let (folded, regexes) = match folded {
            Some(c) => (true, c),
            None => (false, Compiled::new(&names, keywords.as_deref())?),
        };
        // Only a filter that redacts or blocks holds stream text back.
        let prefixes = match options.action {
            FilterAction::Log => None,
            _ => {
                let mut all = names.clone();
                all.extend(keywords);
                Prefixes::new(&all).map(Box::new)
            }
        };
        Ok(ContentFilter {
            folded,
            regexes,
            names,
            keyword_list: options.keywords.clone(),
            prefixes,
            action: options.action,
            message: options.message.clone(),
        })
    }

    /// What the regexes run over: `text`, or its lowercased copy in `low`.
    /// Offsets in either are offsets in `text`.
    fn haystack<'a>(&self, text: &'a str, low: &'a mut String) -> &'a str {
        if self.folded {
            super::fold::lowercase_into(text, low);
            low
        } else {
            text
        }
    }

    /// The first match in `text`, if any.
    pub fn find(&self, text: &str) -> Option<FilterHit> {
        let mut low = String::new();
        let hay = self.haystack(text, &mut low);
        let mut best: Option<FilterHit> = None;
        if let Some(re) = &self.regexes.keywords {
            if let Some(m) = re.find(hay) {
                best = Some(FilterHit {
                    rule: self.keyword_rule(text, m.range()),
                    range: m.range(),
                });
            }
        }
        if let Some(set) = &self.regexes.set {
            for i in set.matches(hay).iter() {
                let (Some(re), Some(name)) = (self.regexes.patterns.get(i), self.names.get(i))
                else {
                    continue;
                };
                if let Some(m) = re.find(hay) {
                    if best.as_ref().is_none_or(|b| m.start() < b.range.start) {
                        best = Some(FilterHit {
                            rule: name.clone(),
                            range: m.range(),
                        });
                    }
                }
            }
        }
        best
    }

    /// Every match in `text`, in order; matches that overlap are merged
    /// into one (named by the one that starts first, the longest on a tie),
    /// so replacing each hit replaces every matched byte once.
    pub fn find_all(&self, text: &str) -> Vec<FilterHit> {
        let mut low = String::new();
        let hay = self.haystack(text, &mut low);
        // (range, pattern index; keywords are `usize::MAX`)
        let mut found: Vec<(Range<usize>, usize)> = Vec::new();
        if let Some(re) = &self.regexes.keywords {
            found.extend(re.find_iter(hay).map(|m| (m.range(), usize::MAX)));
        }
        if let Some(set) = &self.regexes.set {
            for i in set.matches(hay).iter() {
                if let Some(re) = self.regexes.patterns.get(i) {
                    found.extend(re.find_iter(hay).map(|m| (m.range(), i)));
                }
            }
        }
        found.sort_by_key(|(r, _)| (r.start, std::cmp::Reverse(r.end)));
        let mut hits: Vec<FilterHit> = Vec::with_capacity(found.len());
        for (range, i) in found {
            if let Some(last) = hits.last_mut() {
                if range.start < last.range.end {
                    last.range.end = last.range.end.max(range.end);
                    continue;
                }
            }
            let rule = match self.names.get(i) {
                Some(name) => name.clone(),
                None => self.keyword_rule(text, range.clone()),
            };
            hits.push(FilterHit { rule, range });
        }
        hits
    }

    /// The configured keyword that matched `range` of `text` (keywords match
    /// whatever their case).
    fn keyword_rule(&self, text: &str, range: Range<usize>) -> String {
        let found = text.get(range).unwrap_or_default();
        self.keyword_list
            .iter()
            .find(|k| k.eq_ignore_ascii_case(found) || k.to_lowercase() == found.to_lowercase())
            .cloned()
            .unwrap_or_else(|| found.to_string())
    }

    /// Whether some match could begin at or after byte `from` of `text` and
    /// end beyond it: the text's end is the start of a match that more text
    /// would complete. `None` when that cannot be told (no DFA, or one that
    /// gave up on this text).
    pub fn may_continue(&self, text: &str, from: usize) -> Option<bool> {
        self.prefixes.as_ref()?.may_continue(text, from)
    }

    /// `text` with every match replaced by `placeholder`, and the number of
    /// replacements; borrowed when nothing matched.
    pub fn redact<'t>(&self, text: &'t str, placeholder: &str) -> (Cow<'t, str>, usize) {
        let hits = self.find_all(text);
        if hits.is_empty() {
            return (Cow::Borrowed(text), 0);
        }
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for hit in &hits {
            out.push_str(text.get(at..hit.range.start).unwrap_or_default());
            out.push_str(placeholder);
            at = hit.range.end;
        }
        out.push_str(text.get(at..).unwrap_or_default());
        (Cow::Owned(out), hits.len())
    }
}

/// Every pattern and the keywords as one anchored lazy DFA: run from a
/// position, it dies as soon as the text there cannot be the start of any
/// match.
struct Prefixes {
    dfa: DFA,
    /// The bytes a match can begin with, whatever comes before: most
    /// starts are ruled out by one lookup rather than a DFA step.
    first: [bool; 256],
    /// Reused between checks, so states built once stay built; a check that
    /// finds it busy (another stream's) builds a cache of its own.
    cache: Mutex<Cache>,
}

/// DFA steps one check may take: a pattern that starts with a repetition
/// (`\w+…`) keeps every start alive for long, and the answer is then "may
/// continue" anyway.
const PREFIX_STEPS: usize = 16 * 1024;

impl Prefixes {
    fn new(patterns: &[String]) -> Option<Prefixes> {
        if patterns.is_empty() {
            return None;
        }
        let dfa = DFA::builder()
            // `\b` is Unicode-aware in the patterns: on non-ASCII text the
            // DFA stops, and the check says it cannot tell.
            .configure(DFA::config().unicode_word_boundary(true))
            .build_many(patterns)
            .ok()?;
        let mut cache = dfa.create_cache();
        let mut first = [false; 256];
        // What a start state is depends on the byte before it (`\b`, `^`):
        // a byte may begin a match after any of these.
        for before in [&b""[..], b"a", b" ", b"\n", b"\r", b"\xc3\xa9"] {
            for b in 0..=255u8 {
                let mut hay = before.to_vec();
                hay.push(b);
                let input = Input::new(&hay)
                    .range(before.len()..)
                    .anchored(Anchored::Yes);
                let alive = match dfa.start_state_forward(&mut cache, &input) {
                    Ok(sid) => dfa
                        .next_state(&mut cache, sid, b)
                        .map_or(true, |next| !next.is_dead()),
                    Err(_) => true,
                };
                first[usize::from(b)] |= alive;
            }
        }
        Some(Prefixes {
            dfa,
            first,
            cache: Mutex::new(cache),
        })
    }

    fn may_continue(&self, text: &str, from: usize) -> Option<bool> {
        match self.cache.try_lock() {
            Ok(mut cache) => self.search(&mut cache, text, from),
            Err(_) => self.search(&mut self.dfa.create_cache(), text, from),
        }
    }

    /// Tries each start from the end backwards (short suffixes first, and
    /// most starts die on their first byte).
    fn search(&self, cache: &mut Cache, text: &str, from: usize) -> Option<bool> {
        let hay = text.as_bytes();
        let mut steps = 0;
        for start in (from.min(hay.len())..hay.len()).rev() {
            let begins = hay.get(start).is_some_and(|&b| self.first[usize::from(b)]);
            if !begins || !text.is_char_boundary(start) {
                continue;
            }
            let input = Input::new(hay).range(start..).anchored(Anchored::Yes);
            let mut sid = self.dfa.start_state_forward(cache, &input).ok()?;
            let mut alive = true;
            for &b in hay.get(start..).unwrap_or_default() {
                steps += 1;
                if steps > PREFIX_STEPS {
                    return Some(true);
                }
                sid = self.dfa.next_state(cache, sid, b).ok()?;
                if sid.is_dead() {
                    alive = false;
                    break;
                }
                if sid.is_quit() {
                    return None;
                }
            }
            if alive {
                return Some(true);
            }
        }
        Some(false)
    }
}

impl std::fmt::Debug for Prefixes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefixes")
            .field("patterns", &self.dfa.pattern_len())
            .finish_non_exhaustive()
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
    fn case_blind_filters_run_over_lowercased_text_with_the_same_results() {
        let folded = filter(&[r"(?i)internal-project-\w+", r"\d{4}-\d{4}"], &["Falcon"]);
        // One pattern that sees case keeps the whole filter on the text.
        let plain = filter(
            &[r"(?i)internal-project-\w+", r"\d{4}-\d{4}", "Zeus"],
            &["Falcon"],
        );
        assert!(folded.folded);
        assert!(!plain.folded);
        let text = "é INTERNAL-PROJECT-Ünïcode, then fALCON and 1234-5678";
        let start = text.find("INTERNAL").unwrap();
        let end = text.find(',').unwrap();
        for f in [&folded, &plain] {
            let hit = f.find(text).unwrap();
            assert_eq!(hit.rule, r"(?i)internal-project-\w+");
            assert_eq!(hit.range, start..end);
            let (out, n) = f.redact(text, "[X]");
            assert_eq!(out, "é [X], then [X] and [X]");
            assert_eq!(n, 3);
            // A keyword hit names the keyword as configured.
            assert_eq!(f.find("the fALCON").unwrap().rule, "Falcon");
            assert!(f.find("internal project falco").is_none());
        }
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

    #[test]
    fn finds_every_match_in_order_with_overlaps_merged() {
        let f = filter(&[r"secret-\d+", r"\d+-x"], &["Codename"]);
        let hits: Vec<(String, std::ops::Range<usize>)> = f
            .find_all("CODENAME, secret-12-x and 7-x")
            .into_iter()
            .map(|h| (h.rule, h.range))
            .collect();
        assert_eq!(
            hits,
            [
                ("Codename".to_string(), 0..8),
                // secret-12 and 12-x overlap: one hit over both.
                (r"secret-\d+".to_string(), 10..21),
                (r"\d+-x".to_string(), 26..29),
            ]
        );
        assert!(f.find_all("clean").is_empty());
    }

    #[test]
    fn tells_whether_the_end_of_a_text_could_still_grow_into_a_match() {
        let f = filter(
            &[r"(?i)internal-project-\w+", r"\bcode\s*name\s*:\s*\w+"],
            &["Project Falcon"],
        );
        let may = |text: &str| f.may_continue(text, 0).unwrap();
        // The start of a keyword phrase, whatever its case and however far
        // into it the text ends, a space included; the start of a pattern's
        // match.
        for text in [
            "we ship project",
            "we ship PROJECT ",
            "we ship Project Fal",
            "see Internal-Pro",
            "see internal-",
            "the code name: ",
            "the codename",
        ] {
            assert!(may(text), "{text:?}");
        }
        // Nothing at the end could begin a match: it can be released.
        for text in ["we ship prose", "", "the codex", "projection", "project x"] {
            assert!(!may(text), "{text:?}");
        }
        // Starts before `from` are not tried.
        assert_eq!(f.may_continue("we ship project", 8), Some(true));
        assert_eq!(f.may_continue("we ship project", 9), Some(false));
        // A pattern that starts with a repetition keeps many starts alive
        // for long: past a bounded amount of work the answer is "may
        // continue", which only holds text a little longer.
        let wide = filter(&[r"\w+ secret"], &[]);
        assert_eq!(wide.may_continue(&"word. ".repeat(200), 0), Some(false));
        assert_eq!(wide.may_continue("a word ", 0), Some(true));
        assert_eq!(wide.may_continue(&("a".repeat(4000) + "!"), 0), Some(true));
        assert_eq!(wide.may_continue(&("a".repeat(100) + "!"), 0), Some(false));
    }
}
