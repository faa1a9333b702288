//! `llm::json_text` (the string walker the redactor rewrites bodies with)
//! on arbitrary bytes.
//!
//! Checks: no panic; a document the walker accepts is JSON serde_json
//! accepts too (as syntax: `2e2999999999997` is JSON, only not an `f64`); rewriting nothing borrows the input; rewriting every string
//! gives a document the walker accepts again, whose strings are exactly the
//! replacements, in the same order; `encode_str_into` + `decode_into`
//! round-trip every decoded string.

use keeptrusts::llm::json_text::{
    decode_into, encode_str_into, rewrite_strings, visit_strings, Selector,
};
use std::borrow::Cow;

fn strings(doc: &[u8]) -> Option<Vec<String>> {
    let mut out = Vec::new();
    visit_strings(doc, Selector::AllStrings, |_, s| out.push(s.to_owned())).ok()?;
    Some(out)
}

/// Runs the checks on one input; panics on a violation.
pub fn run(data: &[u8]) {
    let Some(original) = strings(data) else {
        return;
    };
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(data) {
        panic!("json_text accepted a document serde_json rejects: {e}");
    }

    match rewrite_strings(data, Selector::AllStrings, |_| None) {
        Ok(Cow::Borrowed(b)) => assert_eq!(b, data),
        other => panic!("identity rewrite: {other:?}"),
    }

    for s in &original {
        let mut enc = Vec::new();
        encode_str_into(s, &mut enc);
        let enc = String::from_utf8(enc).unwrap_or_default();
        let mut dec = String::new();
        assert!(decode_into(&enc, 0, &mut dec).is_ok(), "{enc:?}");
        assert_eq!(&dec, s);
    }

    let changed = |s: &str| format!("\"{s}\\\u{1}\u{7f}é\"");
    let rewritten = match rewrite_strings(data, Selector::AllStrings, |s| Some(changed(s))) {
        Ok(r) => r,
        Err(e) => panic!("rewrite of an accepted document failed: {e}"),
    };
    let want: Vec<String> = original.iter().map(|s| changed(s)).collect();
    assert_eq!(strings(&rewritten), Some(want));
}
