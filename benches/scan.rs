//! Throughput of the secret scanner (`cargo bench --bench scan`).
//!
//! Inputs, built here from the scanner's false-positive fixtures, ~100 KB
//! each: a typical code-heavy prompt (Rust, TypeScript, Python, SQL) with no
//! secret; the same with 10 fake secrets spread through it; and a dense
//! worst case, code about auth, tokens and keys with a prefilter keyword
//! every ~50 bytes. Prints MB/s for `find` and `redact`. Every run is bounded
//! in iterations and time. Like `benches/load.rs`, it measures only when
//! given `--bench`, so `cargo test --all-targets` merely starts and exits.

#![allow(clippy::print_stdout)]

use keeptrusts::policy::secrets::{CustomRule, Scanner};
use std::hint::black_box;
use std::time::{Duration, Instant};

const TYPICAL: &str = include_str!("../src/policy/secrets/tests/typical_code.txt");
const DENSE: &str = include_str!("../src/policy/secrets/tests/ordinary_code.txt");
const TARGET_LEN: usize = 100 * 1024;

struct Gen(u64);

impl Gen {
    fn s(&mut self, alphabet: &[u8], len: usize) -> String {
        (0..len)
            .map(|_| {
                self.0 ^= self.0 >> 12;
                self.0 ^= self.0 << 25;
                self.0 ^= self.0 >> 27;
                let r = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
                alphabet[(r % alphabet.len() as u64) as usize] as char
            })
            .collect()
    }
}

fn prompt(code: &str) -> String {
    let mut s = String::with_capacity(TARGET_LEN + code.len());
    while s.len() < TARGET_LEN {
        s.push_str(code);
    }
    s
}

/// The clean prompt with ten secret-bearing lines inserted at line starts
/// spread evenly through it.
fn prompt_with_secrets(clean: &str) -> String {
    const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    const DIGITS: &[u8] = b"0123456789";
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut g = Gen(0x9E37_79B9_7F4A_7C15);
    let pem = g
        .s(B64, 1200)
        .as_bytes()
        .chunks(64)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("\n");
    let lines = [
        format!("const GITHUB = \"ghp_{}\";\n", g.s(ALNUM, 36)),
        format!(
            "aws_access_key_id = AKIA{}\n",
            g.s(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16)
        ),
        format!(
            "OPENAI_API_KEY=sk-proj-{}T3BlbkFJ{}\n",
            g.s(ALNUM, 74),
            g.s(ALNUM, 74)
        ),
        format!("  api_key: AIza{}\n", g.s(ALNUM, 35)),
        format!("-----BEGIN PRIVATE KEY-----\n{pem}\n-----END PRIVATE KEY-----\n"),
        format!(
            "DATABASE_URL=postgres://app:{}@db:5432/app\n",
            g.s(ALNUM, 16)
        ),
        format!("client_secret = \"{}\"\n", g.s(ALNUM, 32)),
        format!(
            "SLACK=xoxb-{}-{}-{}\n",
            g.s(DIGITS, 12),
            g.s(DIGITS, 12),
            g.s(ALNUM, 24)
        ),
        format!("password: \"{}\"\n", g.s(ALNUM, 14)),
        format!(
            "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJ{}.{}\n",
            g.s(ALNUM, 40),
            g.s(ALNUM, 43)
        ),
    ];
    let starts: Vec<usize> = clean.match_indices('\n').map(|(i, _)| i + 1).collect();
    let mut out = String::with_capacity(clean.len() + 4096);
    let mut last = 0;
    for (k, line) in lines.iter().enumerate() {
        let at = starts[(k + 1) * starts.len() / (lines.len() + 1)];
        out.push_str(&clean[last..at]);
        out.push_str(line);
        last = at;
    }
    out.push_str(&clean[last..]);
    out
}

/// Runs `f` for at most `budget` or `max_iters`, returns MB/s and µs/call.
fn measure(
    bytes: usize,
    budget: Duration,
    max_iters: u32,
    mut f: impl FnMut() -> usize,
) -> (f64, f64) {
    for _ in 0..10 {
        black_box(f());
    }
    let start = Instant::now();
    let mut iters = 0u32;
    while iters < max_iters && start.elapsed() < budget {
        black_box(f());
        iters += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    let per_call = secs / f64::from(iters.max(1));
    (bytes as f64 / per_call / 1e6, per_call * 1e6)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let t = Instant::now();
    let scanner = Scanner::builtin();
    println!(
        "scanner build: {:.1} ms ({} rules)",
        t.elapsed().as_secs_f64() * 1e3,
        scanner.rules().count()
    );

    let clean = prompt(TYPICAL);
    let dirty = prompt_with_secrets(&clean);
    let dense = prompt(DENSE);
    let counts = [&clean, &dirty, &dense].map(|t| scanner.find(t).len());
    println!(
        "inputs: typical {} bytes, typical + secrets {} bytes, dense {} bytes; findings {counts:?}",
        clean.len(),
        dirty.len(),
        dense.len()
    );
    if counts != [0, 10, 0] {
        println!("WARNING: expected [0, 10, 0] findings");
    }

    let budget = Duration::from_secs(2);
    let cases: [(&str, &str, bool); 6] = [
        ("find, typical", &clean, false),
        ("redact, typical", &clean, true),
        ("find, 10 secrets", &dirty, false),
        ("redact, 10 secrets", &dirty, true),
        ("find, dense", &dense, false),
        ("redact, dense", &dense, true),
    ];
    for (name, text, redact) in cases {
        let (mbs, us) = measure(text.len(), budget, 20_000, || {
            if redact {
                scanner.redact(text).text.len()
            } else {
                scanner.find(text).len()
            }
        });
        println!("{name:<20} {mbs:>8.0} MB/s  {us:>8.1} µs/call");
    }

    // A configured rule of the kind users write, blind to case: it runs
    // over the text's lowercased copy (`policy::fold`).
    let rule = CustomRule {
        name: "password".into(),
        pattern: r"(?i)(?:db|database)_password\s*[:=]\s*(?P<secret>\S{8,})".into(),
    };
    let custom = match Scanner::with_custom(&[rule]) {
        Ok(s) => s,
        Err(e) => {
            println!("custom rule refused: {e}");
            return;
        }
    };
    let (mbs, us) = measure(clean.len(), budget, 20_000, || custom.find(&clean).len());
    println!(
        "{:<20} {mbs:>8.0} MB/s  {us:>8.1} µs/call",
        "find, + (?i) rule"
    );
}
