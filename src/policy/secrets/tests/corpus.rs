//! Checks an external corpus when `KT_SECRETS_CORPUS` names one: a JSON
//! Lines file of `{kind, text, expect: "redact"|"keep", secret}` rows.
//! `redact` rows must lose `secret` with the rest of the text unchanged
//! apart from placeholders; `keep` rows must come back unchanged.

use super::*;

fn check_row(row: &serde_json::Value) -> Result<(), String> {
    let field = |k: &str| row.get(k).and_then(|v| v.as_str());
    let text = field("text").ok_or("row without text")?;
    let r = scanner().redact(text);
    match field("expect") {
        Some("keep") if r.findings.is_empty() => Ok(()),
        Some("keep") => Err(format!("changed: {:?}", r.text)),
        Some("redact") => {
            let secret = field("secret").ok_or("redact row without secret")?;
            if r.text.contains(secret) {
                return Err(format!("secret still there: {:?}", r.text));
            }
            // Undo each placeholder with the original bytes: everything
            // outside the findings must be untouched.
            let pos = text.find(secret).ok_or("secret not in text")?;
            let covered = r
                .findings
                .iter()
                .any(|f| f.range.start <= pos && pos + secret.len() <= f.range.end);
            let exact = r
                .findings
                .iter()
                .any(|f| f.range == (pos..pos + secret.len()));
            if !covered {
                return Err("no finding covers the secret".into());
            }
            if !exact {
                return Err(format!("finding wider than the secret: {:?}", r.text));
            }
            Ok(())
        }
        other => Err(format!("bad expect {other:?}")),
    }
}

#[test]
fn external_corpus() {
    let Ok(path) = std::env::var("KT_SECRETS_CORPUS") else {
        return;
    };
    let data = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut per_kind: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut failures = Vec::new();
    for (n, line) in data
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let row: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{path}:{}: {e}", n + 1));
        let kind = row
            .get("kind")
            .and_then(|v| v.as_str())
            .unwrap_or("?")
            .to_string();
        let entry = per_kind.entry(kind.clone()).or_default();
        entry.1 += 1;
        match check_row(&row) {
            Ok(()) => entry.0 += 1,
            Err(e) => failures.push(format!("line {} ({kind}): {e}", n + 1)),
        }
    }
    let (pass, total) = per_kind
        .values()
        .fold((0, 0), |a, v| (a.0 + v.0, a.1 + v.1));
    println!("secret corpus {path}: {pass}/{total} rows pass");
    for (kind, (p, t)) in &per_kind {
        println!("  {kind:<28} {p}/{t}");
    }
    report(failures);
}
