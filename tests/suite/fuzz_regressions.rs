//! The fuzz targets' checks (`fuzz/checks/`, shared with `fuzz/fuzz_targets/`)
//! run on every input kept under `fuzz/regressions/<target>/` (inputs that
//! once failed a target) and on the repository's own sample inputs, so a
//! fixed bug stays fixed without cargo-fuzz and a check that rejects real
//! traffic is caught here.

use std::path::{Path, PathBuf};

#[path = "../../fuzz/checks/config_loader.rs"]
mod config_loader;
#[path = "../../fuzz/checks/connect_authority.rs"]
mod connect_authority;
#[path = "../../fuzz/checks/content_filter.rs"]
mod content_filter;
#[path = "../../fuzz/checks/json_text.rs"]
mod json_text;
#[path = "../../fuzz/checks/request_classifier.rs"]
mod request_classifier;
#[path = "../../fuzz/checks/secret_scanner.rs"]
mod secret_scanner;
#[path = "../../fuzz/checks/sse_decoder.rs"]
mod sse_decoder;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The files directly inside `dir` whose name ends with `suffix`, sorted.
fn files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = entries
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.is_file() && p.to_string_lossy().ends_with(suffix))
        .collect();
    v.sort();
    v
}

/// Feeds `check` every kept regression input of `target`, then `extra`.
fn replay(target: &str, check: fn(&[u8]), extra: &[Vec<u8>]) {
    for path in files(&root().join("fuzz/regressions").join(target), "") {
        let data = std::fs::read(&path).unwrap();
        eprintln!("{target}: {}", path.display());
        check(&data);
    }
    for data in extra {
        check(data);
    }
}

/// The bytes of the LLM fixtures' files named `name` (`stream.sse`, ...).
fn fixtures(name: &str) -> Vec<Vec<u8>> {
    let dir = root().join("tests/fixtures/llm");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    dirs.iter()
        .filter_map(|d| std::fs::read(d.join(name)).ok())
        .collect()
}

#[test]
fn sse_decoder() {
    // Layout byte 0x0e: default limit, seven cuts (all at byte 0 here but
    // the last ones, which the `u16`s of the fixture's own bytes choose).
    let inputs = fixtures("stream.sse")
        .into_iter()
        .flat_map(|s| [[&[0x00u8][..], &s].concat(), [&[0x0eu8][..], &s].concat()])
        .collect::<Vec<_>>();
    assert!(!inputs.is_empty());
    replay("sse_decoder", sse_decoder::run, &inputs);
}

#[test]
fn request_classifier() {
    let inputs = fixtures("request.json")
        .into_iter()
        .map(|b| {
            [
                &b"POST\napi.openai.com\n/v1/chat/completions\ncontent-type: application/json\n\n"
                    [..],
                &b,
            ]
            .concat()
        })
        .collect::<Vec<_>>();
    replay("request_classifier", request_classifier::run, &inputs);
}

#[test]
fn secret_scanner() {
    let code = std::fs::read(root().join("src/policy/secrets/tests/typical_code.txt")).unwrap();
    replay("secret_scanner", secret_scanner::run, &[code]);
}

#[test]
fn config_loader() {
    let examples = files(&root().join("examples"), ".yaml")
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect::<Vec<_>>();
    assert!(!examples.is_empty());
    replay("config_loader", config_loader::run, &examples);
}

#[test]
fn connect_authority() {
    let samples = [
        "api.openai.com:443",
        "[::1]:443",
        "127.0.0.1:8443",
        "A.B.:1",
    ];
    let inputs = samples.map(|s| s.as_bytes().to_vec());
    replay("connect_authority", connect_authority::run, &inputs);
}

#[test]
fn json_text() {
    let mut inputs = fixtures("request.json");
    inputs.extend(fixtures("response.json"));
    assert!(!inputs.is_empty());
    replay("json_text", json_text::run, &inputs);
}

#[test]
fn content_filter() {
    let samples = [
        "(?i)internal-project-\\w+\nsee INTERNAL-PROJECT-Zeus and internal-project-é",
        "(?i)\\bkey\\b\na Key, the KEY; monkey",
        "(?i)straße|kelvin\nSTRASSE Straße \u{212a}ELVIN",
        "[a-zA-Z]+\\d\nabc9 XYZ1 é2",
        "Falcon\nthe FALCON and the Falcon",
        "\nempty pattern",
        "Project Falcon Alpha\nour project falcon alpha plan",
        "(?i)\\bcode\\s*name:\\s*\\w+\nthe Code name: zeus",
    ];
    let inputs = samples.map(|s| s.as_bytes().to_vec());
    replay("content_filter", content_filter::run, &inputs);
}
