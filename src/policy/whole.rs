//! Body policies over a JSON document whose strings are complete: a
//! non-streamed request or response, or a stream event that repeats the
//! whole text its deltas carried (a Responses `….done` event). Each policy
//! checks and rewrites every string it reads in one pass, no hold-back.

use super::chain::{Action, Policy};
use super::redact::{placeholder, replace_ranges};
use super::stream::{escape_safe, within_string, StreamNote};
use crate::config::FilterAction;
use crate::llm::json_text::{rewrite_strings, JsonTextError, Selector};
use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;

/// A string that is itself JSON text (a tool call's `arguments`).
fn is_json_text(s: &str) -> bool {
    s.trim_start().starts_with(['{', '['])
        && serde_json::from_str::<serde::de::IgnoredAny>(s).is_ok()
}

/// `text`, JSON text, with each of `hits` (in text order) replaced by its
/// label, a match cut at the end of the string it starts in and widened
/// to whole escapes (as the stream does for streamed arguments): a pattern
/// like `project-\S+` must not take the closing `"}`, nor a secret's end
/// half an escape, and leave the tool call invalid JSON. Also returns
/// which hits were replaced (one inside another's widened range is not).
fn replace_in_json_text<'t>(
    text: &'t str,
    hits: impl Iterator<Item = (Range<usize>, String)>,
) -> (Cow<'t, str>, Vec<usize>) {
    let bytes = text.as_bytes();
    let mut out = String::new();
    let mut at = 0;
    let mut replaced = Vec::new();
    for (i, (range, label)) in hits.enumerate() {
        let range = within_string(bytes, escape_safe(bytes, 0, range));
        if range.start < at || range.is_empty() {
            continue;
        }
        out.push_str(text.get(at..range.start).unwrap_or_default());
        out.push_str(&label);
        at = range.end;
        replaced.push(i);
    }
    if replaced.is_empty() {
        return (Cow::Borrowed(text), replaced);
    }
    out.push_str(text.get(at..).unwrap_or_default());
    (Cow::Owned(out), replaced)
}

/// What the policies made of a document.
#[derive(Debug)]
pub(crate) enum Whole {
    Same,
    Changed(Vec<u8>),
    Blocked {
        policy: Arc<str>,
        rule: String,
        message: String,
    },
}

/// Runs `policies` in order over `doc`: content filters over the strings
/// `text` selects (what was written, not metadata), the secret redactor
/// over every string. What they found is appended to `notes` (a filter's
/// redactions under the policy's name as kind); a blocking filter's hit
/// ends the run.
pub(crate) fn apply<'p>(
    policies: impl Iterator<Item = &'p Policy>,
    doc: &[u8],
    text: Selector<'_>,
    notes: &mut Vec<StreamNote>,
) -> Result<Whole, JsonTextError> {
    let mut current: Cow<'_, [u8]> = Cow::Borrowed(doc);
    for policy in policies {
        let rewritten = match &policy.action {
            Action::Filter(filter) => {
                let mut hit = None;
                let mut count = 0;
                let label = placeholder(&policy.name);
                let rewritten = rewrite_strings(&current, text, |s| {
                    if hit.is_some() {
                        return None;
                    }
                    match filter.action {
                        FilterAction::Redact => {
                            let (new, n) = match is_json_text(s) {
                                true => {
                                    let hits = filter
                                        .find_all(s)
                                        .into_iter()
                                        .map(|h| (h.range, label.clone()));
                                    let (new, replaced) = replace_in_json_text(s, hits);
                                    (new, replaced.len())
                                }
                                false => filter.redact(s, &label),
                            };
                            count += n;
                            match new {
                                Cow::Owned(o) => Some(o),
                                Cow::Borrowed(_) => None,
                            }
                        }
                        FilterAction::Block | FilterAction::Log => {
                            hit = filter.find(s).map(|h| h.rule);
                            None
                        }
                    }
                })?;
                if let Some(rule) = hit {
                    if filter.action == FilterAction::Block {
                        let message = filter
                            .message
                            .clone()
                            .unwrap_or_else(|| "blocked pattern detected".into());
                        return Ok(Whole::Blocked {
                            policy: policy.name.clone(),
                            rule,
                            message,
                        });
                    }
                    notes.push(StreamNote::Logged {
                        policy: policy.name.clone(),
                        rule,
                    });
                }
                notes.extend((0..count).map(|_| StreamNote::Redacted {
                    policy: policy.name.clone(),
                    kind: policy.name.clone(),
                }));
                rewritten
            }
            Action::Redact(redactor) => {
                let mut found = Vec::new();
                let rewritten = rewrite_strings(&current, Selector::AllStrings, |s| {
                    let findings = redactor.find(s);
                    if findings.is_empty() {
                        return None;
                    }
                    if !is_json_text(s) {
                        let out = replace_ranges(s, &findings, 0);
                        found.extend(findings);
                        return Some(out);
                    }
                    // A tool call's arguments: JSON text, kept JSON.
                    let hits = findings
                        .iter()
                        .map(|f| (f.range.clone(), placeholder(&f.kind)));
                    let (new, replaced) = replace_in_json_text(s, hits);
                    found.extend(
                        replaced
                            .into_iter()
                            .filter_map(|i| findings.get(i).cloned()),
                    );
                    match new {
                        Cow::Owned(o) => Some(o),
                        Cow::Borrowed(_) => None,
                    }
                })?;
                notes.extend(found.into_iter().map(|f| StreamNote::Redacted {
                    policy: policy.name.clone(),
                    kind: f.kind,
                }));
                rewritten
            }
            _ => continue,
        };
        if let Cow::Owned(new) = rewritten {
            current = Cow::Owned(new);
        }
    }
    Ok(match current {
        Cow::Borrowed(_) => Whole::Same,
        Cow::Owned(new) => Whole::Changed(new),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::llm::json_text::PointerSet;
    use std::path::Path;

    /// A filter's match in a tool call's arguments (JSON text in a string)
    /// stops at the end of the string it starts in: the arguments stay
    /// JSON, in a whole answer and in a stream's whole-text events alike.
    #[test]
    fn a_filter_match_in_arguments_keeps_them_json() {
        let yaml = "policies:\n  chain: [f]\npolicy:\n  f:\n    type: content-filter\n    patterns: ['project-\\S+']\n    action: redact\n";
        let chain =
            super::super::chain::Chain::build(&Config::parse(yaml, Path::new("t")).unwrap())
                .unwrap();
        let args = r#"{"q":"project-zeus","n":1,"note":"see project-apollo"}"#;
        let doc = serde_json::json!({"arguments": args, "text": "project-zeus ok"}).to_string();
        let pointers = PointerSet::new(["/arguments", "/text"]).unwrap();
        let mut notes = Vec::new();
        let out = match apply(
            chain.policies().iter(),
            doc.as_bytes(),
            Selector::Pointers(&pointers),
            &mut notes,
        )
        .unwrap()
        {
            Whole::Changed(out) => out,
            other => panic!("{other:?}"),
        };
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let args: serde_json::Value =
            serde_json::from_str(v["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(
            args,
            serde_json::json!({"q": "[REDACTED:f]", "n": 1, "note": "see [REDACTED:f]"})
        );
        assert_eq!(
            v["text"], "[REDACTED:f] ok",
            "plain text is redacted as before"
        );
        assert_eq!(notes.len(), 3);
    }

    /// The same for a redact policy's own patterns: a tool call's
    /// arguments keep their shape whatever the pattern takes.
    #[test]
    fn a_secret_pattern_in_arguments_keeps_them_json() {
        let yaml = "policies:\n  chain: [r]\npolicy:\n  r:\n    type: redact\n    kinds: []\n    patterns: [{name: internal, regex: 'int-\\S+'}]\n";
        let chain =
            super::super::chain::Chain::build(&Config::parse(yaml, Path::new("t")).unwrap())
                .unwrap();
        let args = r#"{"key":"int-abc123","n":1,"note":"see int-x\"y"}"#;
        let doc = serde_json::json!({"arguments": args}).to_string();
        let mut notes = Vec::new();
        let out = match apply(
            chain.policies().iter(),
            doc.as_bytes(),
            Selector::AllStrings,
            &mut notes,
        )
        .unwrap()
        {
            Whole::Changed(out) => out,
            other => panic!("{other:?}"),
        };
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let args: serde_json::Value = serde_json::from_str(v["arguments"].as_str().unwrap())
            .unwrap_or_else(|e| panic!("arguments no longer JSON ({e}): {v}"));
        assert_eq!(args["key"], "[REDACTED:internal]");
        assert_eq!(args["n"], 1);
        assert!(!args.to_string().contains("abc123"), "{args}");
        assert!(!args.to_string().contains("int-x"), "{args}");
        assert_eq!(notes.len(), 2, "{notes:?}");
    }
}
