//! Scanner tests. Every secret here is generated at test time from a fixed
//! seed (right prefix, length and alphabet, random body), so none is real.

mod corpus;
mod ordinary;
mod rules;

use super::*;
use std::sync::OnceLock;

pub(super) fn scanner() -> &'static Scanner {
    static SCANNER: OnceLock<Scanner> = OnceLock::new();
    SCANNER.get_or_init(Scanner::builtin)
}

pub(super) const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
pub(super) const LOWER_ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
pub(super) const URLSAFE: &[u8] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
pub(super) const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
pub(super) const HEX: &[u8] = b"0123456789abcdef";
pub(super) const DIGITS: &[u8] = b"0123456789";
pub(super) const BASE32: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
pub(super) const BECH32: &[u8] = b"QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L";

/// A small deterministic generator (xorshift64*) for fake secrets.
pub(super) struct Gen(u64);

impl Gen {
    pub fn new(seed: u64) -> Gen {
        Gen(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// `len` random bytes of `alphabet`, with every class the alphabet has
    /// (lower, upper, digit) present, as in any real token of that length.
    pub fn s(&mut self, alphabet: &[u8], len: usize) -> String {
        loop {
            let v: Vec<u8> = (0..len)
                .map(|_| alphabet[(self.next() % alphabet.len() as u64) as usize])
                .collect();
            let has = |f: fn(&u8) -> bool| !alphabet.iter().any(f) || v.iter().any(f);
            if len < 8
                || (has(u8::is_ascii_lowercase)
                    && has(u8::is_ascii_uppercase)
                    && has(u8::is_ascii_digit))
            {
                return String::from_utf8_lossy(&v).into_owned();
            }
        }
    }

    /// Base64 lines of a PEM body (64 per line, joined by `sep`).
    pub fn pem_body(&mut self, bytes: usize, sep: &str) -> String {
        let raw = self.s(B64, bytes);
        raw.as_bytes()
            .chunks(64)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join(sep)
    }
}

/// `template` with `{S}` replaced by `secret` must redact to `template`
/// with `{S}` replaced by `[REDACTED:kind]`, in exactly one finding.
pub(super) fn expect_redacted(kind: &str, secret: &str, template: &str) -> Result<(), String> {
    let text = template.replace("{S}", secret);
    let want = template.replace("{S}", &format!("[REDACTED:{kind}]"));
    let r = scanner().redact(&text);
    if r.text != want || r.findings.len() != 1 {
        return Err(format!(
            "{kind}: {text:?}\n   got {:?}\n  want {want:?}\n  findings {:?}",
            r.text, r.findings
        ));
    }
    Ok(())
}

pub(super) fn expect_kept(text: &str) -> Result<(), String> {
    let found = scanner().find(text);
    if found.is_empty() {
        Ok(())
    } else {
        let what: Vec<_> = found
            .iter()
            .map(|f| (&*f.kind, &text[f.range.clone()]))
            .collect();
        Err(format!("false positive in {text:?}: {what:?}"))
    }
}

pub(super) fn report(failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_builtin_rule_compiles() {
    assert_eq!(scanner().rules().count(), super::rules::BUILTIN.len());
    assert!(scanner().prefilter.is_some());
    for (id, kind) in scanner().rules() {
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            "{id}"
        );
        assert!(
            kind.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "{kind}"
        );
    }
    let mut long: HashSet<&str> = HashSet::new();
    for def in super::rules::BUILTIN {
        assert!(!def.keywords.is_empty(), "{} has no keyword", def.id);
        assert!(def.keywords.iter().all(|k| k.len() >= 2), "{}", def.id);
        long.extend(def.keywords.iter().copied().filter(|k| k.len() >= 3));
    }
    // Past this, the automaton loses its SIMD prefilter (see rules.rs).
    assert!(
        long.len() <= super::rules::MAX_KEYWORDS,
        "{} keywords",
        long.len()
    );
}

#[test]
fn scanner_is_send_sync_and_cheap_to_share() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<Scanner>();
    let s = Arc::new(scanner().clone());
    let handles: Vec<_> = (0..2)
        .map(|i| {
            let s = s.clone();
            std::thread::spawn(move || {
                s.find(&format!("k{i} = ghp_{}", Gen::new(i + 7).s(ALNUM, 36)))
                    .len()
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().ok(), Some(1));
    }
}

#[test]
fn clean_text_is_borrowed() {
    let text = "fn main() { println!(\"hello\"); }";
    let r = scanner().redact(text);
    assert!(matches!(r.text, Cow::Borrowed(_)));
    assert!(r.findings.is_empty() && !r.truncated);
    assert!(scanner().redact("").findings.is_empty());
}

#[test]
fn allow_marker_suppresses_its_line_only() {
    let tok = format!("ghp_{}", Gen::new(1).s(ALNUM, 36));
    let allowed = format!("const T = \"{tok}\"; // test fixture, kt:allow\n");
    assert!(scanner().find(&allowed).is_empty());
    // A marker on a line of its own covers nothing else.
    let two = format!("a = \"{tok}\"\n# kt:allow\nb = \"{tok}\" # kt:allow\n");
    let found = scanner().find(&two);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].range.start, 5);
}

/// In JSON text (a tool call's arguments writing a file) the file's lines
/// end at escaped line breaks: a marker covers its own line of the file,
/// not every later one.
#[test]
fn allow_marker_in_json_text_covers_its_own_line_only() {
    let tok = format!("ghp_{}", Gen::new(1).s(ALNUM, 36));
    let content = format!("A={tok} # kt:allow\nB={tok}\r\nC={tok}\n");
    let args = serde_json::json!({"path": ".env", "content": content}).to_string();
    let found = scanner().find(&args);
    assert_eq!(found.len(), 2, "{args}");
    assert!(args[..found[0].range.start].ends_with(r"\nB="), "{args}");
    // A marker after the secret on its line still covers it.
    let after = serde_json::json!({"c": format!("x\nA={tok} # kt:allow\ny")}).to_string();
    assert!(scanner().find(&after).is_empty(), "{after}");
    // An escaped backslash before an `n` is no line break: one line.
    let one = serde_json::json!({"c": format!("A={tok} \\n B={tok} # kt:allow")}).to_string();
    assert!(one.contains(r"\\n B"), "{one}");
    assert!(scanner().find(&one).is_empty(), "{one}");
    assert_eq!(line_start(br"a\\\nb", 5), 5);
    assert_eq!(line_start(br"a\\nb", 4), 0);
    assert_eq!(line_end(br"a\\\nb", 1), 3);
    assert_eq!(line_end(br"a\\nb", 1), 5);
}

#[test]
fn custom_rules() {
    let mut g = Gen::new(2);
    let custom = [
        CustomRule {
            name: "internal_token".into(),
            pattern: r"\bitk_[a-z0-9]{32}\b".into(),
        },
        CustomRule {
            name: "employee-pin".into(),
            pattern: r"(?i)pin\s*[:=]\s*(?P<secret>\d{6})\b".into(),
        },
    ];
    let s = Scanner::with_custom(&custom).expect("valid custom rules");
    let itk = format!("itk_{}", g.s(LOWER_ALNUM, 32));
    let text = format!("use {itk} and PIN: 493817 please");
    let r = s.redact(&text);
    assert_eq!(
        r.text,
        "use [REDACTED:internal_token] and PIN: [REDACTED:employee-pin] please"
    );
    assert_eq!(&*r.findings[0].rule, "internal_token");
    // Built-in rules still apply.
    assert_eq!(s.find(&format!("x ghp_{}", g.s(ALNUM, 36))).len(), 1);
}

/// A case-blind custom rule runs over the lowered text; what it finds, and
/// where, is what its pattern finds in the text itself.
#[test]
fn case_blind_custom_rules_find_the_same_ranges_on_lowered_text() {
    let custom = [
        CustomRule {
            name: "pw".into(),
            pattern: r"(?i)pass(?:word|wd)\s*[:=]\s*(?P<secret>[^\s,]{6,})".into(),
        },
        CustomRule {
            name: "ticket".into(),
            pattern: r"\bTKT-[0-9]{5}\b".into(),
        },
    ];
    let s = Scanner::with_custom(&custom).expect("valid custom rules");
    let folded = |id: &str| s.rules.iter().find(|r| &*r.id == id).map(|r| r.folded);
    assert_eq!(folded("pw"), Some(true));
    assert_eq!(folded("ticket"), Some(false), "literal letters see case");
    let original = Regex::new(&custom[0].pattern).unwrap();
    for text in [
        "PASSWORD=Hunter2Hunter2 and TKT-12345",
        "Ärger: passwd : SÉCRET-Ünïcode, PassWord= äöüÄÖÜxyz",
        "the tkt-12345 Password:short pAsSwOrD=ABCDEFGH",
        "ſecret PASSWD=ſſſſſſſ K-PassWord=KKKKKK",
    ] {
        let want: Vec<Range<usize>> = original
            .captures_iter(text.as_bytes())
            .filter_map(|c| c.name("secret").map(|m| m.range()))
            .collect();
        let got: Vec<Range<usize>> = s
            .find(text)
            .into_iter()
            .filter(|f| &*f.rule == "pw")
            .map(|f| f.range)
            .collect();
        assert_eq!(got, want, "{text}");
        assert!(!want.is_empty(), "{text}");
        let tickets = s.find(text).iter().filter(|f| &*f.rule == "ticket").count();
        assert_eq!(tickets, usize::from(text.contains("TKT-")), "{text}");
    }
}

#[test]
fn custom_rule_errors_name_the_rule() {
    let bad = |name: &str, pattern: &str| {
        Scanner::with_custom(&[CustomRule {
            name: name.into(),
            pattern: pattern.into(),
        }])
        .err()
    };
    let e = bad("broken", "tok_[a-z").expect("must fail");
    assert_eq!(e.kind(), "secrets_invalid_pattern");
    let msg = e.to_string();
    assert!(
        msg.contains("\"broken\"") && msg.contains("invalid regex"),
        "{msg}"
    );
    assert!(matches!(
        bad("", "x"),
        Some(SecretsError::InvalidRuleName { .. })
    ));
    assert!(matches!(
        bad("has space", "x"),
        Some(SecretsError::InvalidRuleName { .. })
    ));
    assert!(matches!(
        bad("empty", "a*"),
        Some(SecretsError::MatchesEmpty { .. })
    ));
    let dup = CustomRule {
        name: "twice".into(),
        pattern: "abc".into(),
    };
    let e = Scanner::with_custom(&[dup.clone(), dup]).err();
    assert!(matches!(e, Some(SecretsError::DuplicateRule { .. })));
}

#[test]
fn overlapping_matches_merge_under_the_most_specific_kind() {
    let mut g = Gen::new(3);
    // generic-secret and github-pat match the same bytes.
    let tok = format!("ghp_{}", g.s(ALNUM, 36));
    let text = format!("github_token = \"{tok}\"");
    let r = scanner().redact(&text);
    assert_eq!(r.text, "github_token = \"[REDACTED:github_pat]\"");
    // http-auth-token and jwt overlap.
    let jwt = format!(
        "eyJhbGciOiJIUzI1NiJ9.eyJ{}.{}",
        g.s(URLSAFE, 40),
        g.s(URLSAFE, 43)
    );
    let text = format!("Authorization: Bearer {jwt}\n");
    let r = scanner().redact(&text);
    assert_eq!(r.text, "Authorization: Bearer [REDACTED:jwt]\n");
    // A broad custom rule overlapping a built-in one: the union is redacted
    // once, named after the stronger rule.
    let s = Scanner::with_custom(&[CustomRule {
        name: "ticket".into(),
        pattern: r"KEY-[A-Za-z0-9_]{10,}".into(),
    }])
    .expect("valid");
    let text = format!("see KEY-{tok} now");
    let r = s.redact(&text);
    assert_eq!(r.text, "see [REDACTED:github_pat] now");
    assert_eq!(r.findings.len(), 1);
    assert_eq!(r.findings[0].range, 4..text.len() - 4);
}

#[test]
fn several_secrets_in_one_text() {
    let mut g = Gen::new(4);
    let gh = format!("ghp_{}", g.s(ALNUM, 36));
    let aws = format!("AKIA{}", g.s(BASE32, 16));
    let pw = g.s(ALNUM, 14);
    let slack = format!(
        "xoxb-{}-{}-{}",
        g.s(DIGITS, 12),
        g.s(DIGITS, 12),
        g.s(ALNUM, 24)
    );
    let text = format!(
        "GITHUB_TOKEN={gh}\nAWS_ACCESS_KEY_ID={aws}\nDB_PASSWORD='{pw}'\nSLACK={slack}\nthe end"
    );
    let r = scanner().redact(&text);
    assert_eq!(
        r.text,
        "GITHUB_TOKEN=[REDACTED:github_pat]\nAWS_ACCESS_KEY_ID=[REDACTED:aws_access_key_id]\n\
         DB_PASSWORD='[REDACTED:password]'\nSLACK=[REDACTED:slack_token]\nthe end"
    );
    let kinds: Vec<_> = r.findings.iter().map(|f| &*f.kind).collect();
    assert_eq!(
        kinds,
        ["github_pat", "aws_access_key_id", "password", "slack_token"]
    );
    assert_eq!(r.counts().get("password"), Some(&1));
    for f in &r.findings {
        assert!(!text[f.range.clone()].contains('\n'));
    }
}

/// A `.env` file written through a tool call is JSON text: its lines end
/// in the two characters `\n`, and an assigned value ends there as at a
/// real line end.
#[test]
fn assignment_values_end_at_a_json_escape() {
    let mut g = Gen::new(8);
    let pw = format!("{}7", g.s(ALNUM, 11));
    let key = g.s(ALNUM, 16);
    let content = format!("DB_PASSWORD={pw}\nAPI_KEY={key}\r\n\tTOKEN={key}\tx\n");
    let args = serde_json::json!({"path": ".env", "content": content}).to_string();
    assert!(args.contains(r"\n"), "{args}");
    let r = scanner().redact(&args);
    let kinds: Vec<_> = r.findings.iter().map(|f| &*f.kind).collect();
    assert_eq!(
        kinds,
        ["password", "generic_secret", "generic_secret"],
        "{args}"
    );
    let v: serde_json::Value = serde_json::from_str(&r.text).unwrap();
    assert_eq!(
        v["content"],
        "DB_PASSWORD=[REDACTED:password]\nAPI_KEY=[REDACTED:generic_secret]\r\n\t\
         TOKEN=[REDACTED:generic_secret]\tx\n"
    );
    // `\"` closes a quoted value in JSON text, as it did before.
    let quoted = serde_json::json!({"cmd": format!("export DB_PASSWORD=\"{pw}\"")}).to_string();
    assert_eq!(scanner().find(&quoted).len(), 1, "{quoted}");
}

#[test]
fn utf8_around_secrets_keeps_char_boundaries() {
    let mut g = Gen::new(5);
    let tok = format!("glpat-{}", g.s(URLSAFE, 20));
    let text = format!("🔑 clé «{tok}» — ключ доступа, 鍵");
    let r = scanner().redact(&text);
    assert_eq!(r.text, "🔑 clé «[REDACTED:gitlab_pat]» — ключ доступа, 鍵");
    let f = &r.findings[0];
    assert!(text.is_char_boundary(f.range.start) && text.is_char_boundary(f.range.end));
    // A byte-level custom rule that stops inside a character is widened to
    // the whole character.
    let s = Scanner::with_custom(&[CustomRule {
        name: "half".into(),
        pattern: r"(?-u)zz\xC3".into(),
    }])
    .expect("valid");
    let r = s.redact("a zzé b");
    assert_eq!(r.text, "a [REDACTED:half] b");
}

#[test]
fn scan_cap_reports_truncation() {
    let mut g = Gen::new(6);
    let a = format!("ghp_{}", g.s(ALNUM, 36));
    let b = format!("ghp_{}", g.s(ALNUM, 36));
    let text = format!("x = {a}\n{}\ny = {b}\n", "é".repeat(100));
    // 102 falls inside an `é`: the scan stops before it.
    let s = scanner().clone().with_max_scan_len(102);
    assert_eq!(s.max_scan_len(), 102);
    let r = s.redact(&text);
    assert!(r.truncated);
    assert_eq!(r.findings.len(), 1);
    assert!(r.text.contains(&b) && !r.text.contains(&a));
    let full = scanner().scan(&text);
    assert!(!full.truncated);
    assert_eq!(full.findings.len(), 2);
}

/// A pasted file of several MiB in one JSON string: a secret at its end
/// is found like one at its start.
#[test]
fn a_secret_past_the_first_mebibytes_of_a_text_is_found() {
    let mut g = Gen::new(7);
    let token = format!("ghp_{}", g.s(ALNUM, 36));
    let text = format!("{}\nTOKEN={token}\n", "let x = 1;\n".repeat(600_000));
    assert!(text.len() > 6 << 20);
    let r = scanner().redact(&text);
    assert!(!r.truncated);
    assert_eq!(r.findings.len(), 1);
    assert!(r.text.ends_with("TOKEN=[REDACTED:github_pat]\n"));
}

#[test]
fn max_secret_len_covers_tokens_and_is_capped() {
    let n = scanner().max_secret_len();
    assert!((1024..=8192).contains(&n), "{n}");
}

#[test]
fn a_word_holding_a_keyword_may_grow_to_its_rules_longest_match() {
    let s = scanner();
    let jwt_start = "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjM0";
    assert_eq!(s.open_token_len(jwt_start), 4096);
    assert_eq!(s.open_token_len("export TOKEN=eyJhbGci"), 4096, "after `=`");
    assert_eq!(
        s.open_token_len("token:\u{3000}eyJhbGci"),
        4096,
        "after any whitespace"
    );
    // The word that counts is the last one.
    assert_eq!(s.open_token_len("eyJhbGciOiJSUzI1NiJ9 and then"), 0);
    assert_eq!(s.open_token_len("the answer is forty two"), 0);
    assert_eq!(s.open_token_len(""), 0);
    assert!(s.open_token_len("x ghp_Ab3dE6") > 0);
    assert!(s.open_token_len(&"eyJ".repeat(9000)) <= s.max_secret_len());
}

#[test]
fn find_works_on_a_window_of_a_larger_text() {
    let mut g = Gen::new(8);
    let tok = format!("npm_{}", g.s(LOWER_ALNUM, 36));
    let text = format!("{}{tok} trailing", "lorem ipsum ".repeat(50));
    let start = text.len() - tok.len() - 20;
    let window = &text[start..];
    let found = scanner().find(window);
    assert_eq!(found.len(), 1);
    assert_eq!(&window[found[0].range.clone()], tok);
}

#[test]
fn private_key_longer_than_the_window_is_redacted_whole() {
    let mut g = Gen::new(9);
    let body = g.pem_body(12_000, "\n");
    let key = format!("-----BEGIN RSA PRIVATE KEY-----\n{body}\n-----END RSA PRIVATE KEY-----");
    expect_redacted("private_key", &key, "key.pem:\n{S}\nthanks").unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn escaped_newlines_in_pasted_json_are_handled() {
    let mut g = Gen::new(10);
    let body = g.pem_body(900, "\\n");
    let key = format!("-----BEGIN PRIVATE KEY-----\\n{body}\\n-----END PRIVATE KEY-----");
    expect_redacted("private_key", &key, "{\"key\": \"{S}\\n\"}").unwrap_or_else(|e| panic!("{e}"));
    let tok = format!("ghp_{}", g.s(ALNUM, 36));
    expect_redacted("github_pat", &tok, "log: \"env:\\nGH={S}\\nCI=1\"")
        .unwrap_or_else(|e| panic!("{e}"));
    expect_redacted("github_pat", &tok, "log: \"env:\\n{S}\\nCI=1\"")
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn secrets_at_the_edges_of_the_text() {
    let mut g = Gen::new(11);
    let tok = format!("AIza{}", g.s(URLSAFE, 35));
    expect_redacted("google_api_key", &tok, "{S}").unwrap_or_else(|e| panic!("{e}"));
    expect_redacted("google_api_key", &tok, "{S} at start").unwrap_or_else(|e| panic!("{e}"));
    expect_redacted("google_api_key", &tok, "at end {S}").unwrap_or_else(|e| panic!("{e}"));
}
