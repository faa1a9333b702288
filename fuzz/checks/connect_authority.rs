//! `proxy::authority::parse` (the CONNECT target) on arbitrary text.
//!
//! Checks: no panic; an accepted target has a non-zero port and a
//! lower-case host without brackets, and its `Display` form parses back to
//! the same target.

use keeptrusts::proxy::authority::parse;

/// Runs the checks on one input; panics on a violation.
pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(target) = parse(&text) else {
        return;
    };
    assert_ne!(target.port, 0);
    assert!(!target.host.contains(['[', ']']), "{target:?}");
    assert_eq!(target.host, target.host.to_ascii_lowercase());
    let shown = target.to_string();
    match parse(&shown) {
        Ok(again) => assert_eq!(again, target, "{text:?} -> {shown:?}"),
        Err(e) => panic!("{text:?} parsed as {target:?}, but its display {shown:?} does not: {e}"),
    }
}
