//! Onboarding: `kt setup` merging into real settings files, `kt doctor`
//! against broken and working set-ups, and the dashboard in a real
//! headless browser.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

fn kt_in(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kt"))
        .arg("--data-dir")
        .arg(home)
        .args(args)
        .env_remove("HTTPS_PROXY")
        .env_remove("HTTP_PROXY")
        .env_remove("https_proxy")
        .env_remove("http_proxy")
        .env_remove("KEEPTRUSTS_GATEWAY")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into()
}

fn backups(dir: &Path, name: &str) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("{name}.bak-"))
        })
        .collect()
}

/// Writes `original`, runs `kt setup CLIENT --write --file` twice, and
/// checks that everything in `kept` survived, that a backup holds the
/// original, and that the second run changed nothing.
fn round_trip(client: &str, original: &str, kept: &[&str], added: &[&str]) -> String {
    let home = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("settings.json");
    std::fs::write(&file, original).unwrap();
    let f = file.to_str().unwrap();
    let first = kt_in(home.path(), &["setup", client, "--write", "--file", f]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert!(
        text(&first.stdout).contains("backup:"),
        "{}",
        text(&first.stdout)
    );
    let merged = std::fs::read_to_string(&file).unwrap();
    for k in kept.iter().chain(added) {
        assert!(merged.contains(k), "{k:?} missing after merge:\n{merged}");
    }
    let saved = backups(dir.path(), "settings.json");
    assert_eq!(saved.len(), 1, "one backup: {saved:?}");
    assert_eq!(std::fs::read_to_string(&saved[0]).unwrap(), original);

    let second = kt_in(home.path(), &["setup", client, "--write", "--file", f]);
    assert!(second.status.success(), "{}", text(&second.stderr));
    assert!(
        text(&second.stdout).contains("already up to date"),
        "{}",
        text(&second.stdout)
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), merged);
    assert_eq!(
        backups(dir.path(), "settings.json").len(),
        1,
        "no new backup"
    );
    merged
}

#[test]
fn setup_vscode_merges_into_jsonc_keeping_comments_and_keys() {
    let original = r#"// User settings
{
    "editor.fontSize": 13, // small screens
    /* proxy set by IT, replaced by kt */
    "http.proxy": "http://it-proxy.example:3128",
    "files.exclude": {
        "**/node_modules": true,
    },
    "workbench.colorTheme": "Default Dark+",
}
"#;
    let merged = round_trip(
        "vscode",
        original,
        &[
            "// User settings",
            "\"editor.fontSize\": 13, // small screens",
            "/* proxy set by IT, replaced by kt */",
            "\"**/node_modules\": true,",
            "\"workbench.colorTheme\": \"Default Dark+\",",
        ],
        &[
            "\"http.proxy\": \"http://127.0.0.1:41002\"",
            "\"http.proxyStrictSSL\": true",
        ],
    );
    assert!(!merged.contains("it-proxy.example"));
}

#[test]
fn setup_zed_merges_the_openai_api_url() {
    let original = r#"// Zed settings
{
  "theme": "One Dark",
  "language_models": {
    "openai": {
      "available_models": [{ "name": "gpt-4o", "max_tokens": 128000 }],
    },
  },
}
"#;
    round_trip(
        "zed",
        original,
        &[
            "// Zed settings",
            "\"theme\": \"One Dark\"",
            "\"available_models\": [{ \"name\": \"gpt-4o\", \"max_tokens\": 128000 }]",
        ],
        &["\"api_url\": \"http://127.0.0.1:41002/v1\""],
    );
}

#[test]
fn setup_without_write_prints_and_touches_nothing() {
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("never.json");
    let out = kt_in(
        home.path(),
        &["setup", "continue", "--file", file.to_str().unwrap()],
    );
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("provider: openai"));
    assert!(text(&out.stdout).contains("apiBase: http://127.0.0.1:41002/v1"));
    assert!(!file.exists());
}
