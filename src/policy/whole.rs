//! Body policies over a JSON document whose strings are complete: a
//! non-streamed request or response, or a stream event that repeats the
//! whole text its deltas carried (a Responses `….done` event). Each policy
//! checks and rewrites every string it reads in one pass, no hold-back.

use super::chain::{Action, Policy};
use super::redact::placeholder;
use super::stream::StreamNote;
use crate::config::FilterAction;
use crate::llm::json_text::{rewrite_strings, JsonTextError, Selector};
use std::borrow::Cow;
use std::sync::Arc;

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
                            let (new, n) = filter.redact(s, &label);
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
                let rewritten =
                    rewrite_strings(&current, Selector::AllStrings, |s| {
                        match redactor.redact(s, &mut found) {
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
