//! `llm::json_text` (the string walker the redactor rewrites bodies with)
//! and `llm::json_scan` (the top-level member finder audit and routing use)
//! on arbitrary bytes.
//!
//! Checks: no panic; a document the walker accepts is JSON serde_json
//! accepts too (as syntax: `2e2999999999997` is JSON, only not an `f64`); rewriting nothing borrows the input; rewriting every string
//! gives a document the walker accepts again, whose strings are exactly the
//! replacements, in the same order; `encode_str_into` + `decode_into`
//! round-trip every decoded string. `json_scan::members` never panics, and
//! on every object serde_json accepts it finds every member, with the value
//! serde_json read for it.

use keeptrusts::llm::json_text::{
    decode_into, encode_str_into, rewrite_strings, visit_strings, Selector,
};
use std::borrow::Cow;

fn strings(doc: &[u8]) -> Option<Vec<String>> {
    let mut out = Vec::new();
    visit_strings(doc, Selector::AllStrings, |_, s| out.push(s.to_owned())).ok()?;
    Some(out)
}

/// `json_scan` against serde_json's own reading of an object.
fn scan_agrees(data: &[u8]) {
    use keeptrusts::llm::json_scan::members;
    let _ = members(data, &["model", "usage"], |_, _| {});
    let Ok(object) = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(data)
    else {
        return;
    };
    let keys: Vec<&str> = object.keys().map(String::as_str).collect();
    let mut last: Vec<Option<&[u8]>> = vec![None; keys.len()];
    if let Err(e) = members(data, &keys, |i, rest| last[i] = Some(rest)) {
        panic!("json_scan refused an object serde_json reads: {e}");
    }
    for (key, rest) in keys.iter().zip(last) {
        let Some(rest) = rest else {
            panic!("json_scan missed the member {key:?}");
        };
        let mut de = serde_json::Deserializer::from_slice(rest);
        let value: serde_json::Value = match serde::Deserialize::deserialize(&mut de) {
            Ok(v) => v,
            Err(e) => panic!("the value json_scan found for {key:?} does not parse: {e}"),
        };
        // serde_json keeps the last of duplicate members, as `last` does.
        assert_eq!(Some(&value), object.get(*key), "{key:?}");
    }
}

/// Runs the checks on one input; panics on a violation.
pub fn run(data: &[u8]) {
    scan_agrees(data);
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
