//! `policy::secrets::Scanner` (the built-in rules) on arbitrary text: the
//! input as UTF-8 when it is, else converted lossily.
//!
//! Checks: no panic; findings are in text order, non-empty, not
//! overlapping, on char boundaries and inside the scanned part; `scan` and
//! `redact` agree and the redacted text is the input with exactly those
//! ranges replaced; scanning the redacted text again finds none of the
//! reported secrets that are secrets on their own. A second scanner with a 64-byte scan limit exercises
//! truncation at a char boundary.

use keeptrusts::policy::secrets::Scanner;
use std::sync::OnceLock;

fn scanners() -> &'static [Scanner; 2] {
    static S: OnceLock<[Scanner; 2]> = OnceLock::new();
    S.get_or_init(|| [Scanner::builtin(), Scanner::builtin().with_max_scan_len(64)])
}

fn check(scanner: &Scanner, text: &str) {
    let scan = scanner.scan(text);
    let scanned = if scan.truncated {
        scanner.max_scan_len()
    } else {
        text.len()
    };
    assert_eq!(scan.truncated, text.len() > scanner.max_scan_len());
    let mut last = 0;
    for f in &scan.findings {
        let r = f.range.clone();
        assert!(r.start >= last && r.start < r.end, "{:?}", scan.findings);
        assert!(
            r.end <= text.len() && r.start < scanned,
            "{r:?} of {}",
            text.len()
        );
        assert!(text.is_char_boundary(r.start) && text.is_char_boundary(r.end));
        last = r.end;
    }
    let red = scanner.redact(text);
    assert_eq!(red.findings, scan.findings);
    assert_eq!(red.truncated, scan.truncated);
    let mut want = String::with_capacity(text.len());
    let mut at = 0;
    for f in &red.findings {
        want.push_str(&text[at..f.range.start]);
        want.push_str(&format!("[REDACTED:{}]", f.kind));
        at = f.range.end;
    }
    want.push_str(&text[at..]);
    assert_eq!(red.text, want);
    if scan.truncated || red.findings.is_empty() {
        return;
    }
    // No reported secret that is a secret on its own (a `ghp_…` token, not
    // the value of `password = …`) survives anywhere the scanner finds one.
    // Text equal to a value only its context made a secret may stay
    // elsewhere, and may become a finding once a placeholder changed that
    // context (`p: strin= "[REDACTED:password]"` now matches `strin=`).
    let again = scanner.scan(&red.text);
    if again.truncated {
        return;
    }
    for g in &again.findings {
        let left = &red.text[g.range.clone()];
        for f in &red.findings {
            let secret = &text[f.range.clone()];
            if scanner.find(secret).is_empty() {
                continue;
            }
            assert!(
                !left.contains(secret),
                "the {} found at {:?} ({secret:?}) is still found after redaction at {:?}\nredacted: {:?}",
                f.kind,
                f.range,
                g.range,
                red.text
            );
        }
    }
}

/// Runs the checks on one input; panics on a violation.
pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for scanner in scanners() {
        check(scanner, &text);
    }
}
