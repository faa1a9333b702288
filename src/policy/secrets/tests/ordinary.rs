//! False positives on ordinary source: code full of `token`, `key`,
//! `password`, `auth`, URLs and hashes, and not one secret.

use super::*;

const ORDINARY_CODE: &str = include_str!("ordinary_code.txt");

#[test]
fn ordinary_code_has_no_findings() {
    assert!(ORDINARY_CODE.lines().count() >= 300);
    let found = scanner().find(ORDINARY_CODE);
    let shown: Vec<_> = found
        .iter()
        .map(|f| (&*f.rule, &ORDINARY_CODE[f.range.clone()]))
        .collect();
    assert!(found.is_empty(), "false positives: {shown:?}");
}

#[test]
fn each_line_alone_has_no_findings() {
    // Scanning line by line exercises the text edges and window clamping.
    let bad: Vec<_> = ORDINARY_CODE
        .lines()
        .filter(|l| !scanner().find(l).is_empty())
        .collect();
    assert!(bad.is_empty(), "{bad:?}");
}
