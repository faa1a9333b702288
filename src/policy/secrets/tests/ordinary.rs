//! False positives on ordinary source. `ordinary_code.txt` is dense with
//! `token`, `key`, `password`, `auth`, URLs and hashes (an auth module, a
//! tokenizer, a key cache); `typical_code.txt` is everyday code. Neither
//! holds a secret.

use super::*;

const FIXTURES: [(&str, &str); 2] = [
    ("ordinary_code.txt", include_str!("ordinary_code.txt")),
    ("typical_code.txt", include_str!("typical_code.txt")),
];

#[test]
fn ordinary_code_has_no_findings() {
    assert!(
        FIXTURES
            .iter()
            .map(|(_, t)| t.lines().count())
            .sum::<usize>()
            >= 500
    );
    for (name, text) in FIXTURES {
        let found = scanner().find(text);
        let shown: Vec<_> = found
            .iter()
            .map(|f| (&*f.rule, &text[f.range.clone()]))
            .collect();
        assert!(found.is_empty(), "false positives in {name}: {shown:?}");
    }
}

#[test]
fn each_line_alone_has_no_findings() {
    // Scanning line by line exercises the text edges and window clamping.
    for (name, text) in FIXTURES {
        let bad: Vec<_> = text
            .lines()
            .filter(|l| !scanner().find(l).is_empty())
            .collect();
        assert!(bad.is_empty(), "{name}: {bad:?}");
    }
}
