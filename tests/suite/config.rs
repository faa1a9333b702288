//! Policy configs: every file in `examples/` loads, and `kt policy check`
//! (the real binary) prints the resolved chain or every located problem.
#![allow(clippy::unwrap_used)]

use keeptrusts::config::{CacheBackend, Config, Endpoint, PolicyKind, PolicyOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

fn example(name: &str) -> Config {
    let path = examples_dir().join(name);
    Config::load(&path).unwrap_or_else(|e| panic!("{}:\n{e}", path.display()))
}

fn kt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kt"))
        .args(args)
        .env_remove("KT_LOG")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into()
}

#[test]
fn every_example_parses() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(examples_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 7, "examples: {files:?}");
    for f in &files {
        let c = Config::load(f).unwrap_or_else(|e| panic!("{}:\n{e}", f.display()));
        assert!(
            !c.policies.is_empty(),
            "{} resolves to no policies",
            f.display()
        );
    }
}

#[test]
fn examples_resolve_as_their_guides_intend() {
    // The Cody guide: three well-known ids with empty `provider:`, audit only.
    let cody = example("vscode-cody.yaml");
    let ids: Vec<&str> = cody.providers.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, ["sourcegraph", "openai", "anthropic"]);
    assert!(cody.providers.iter().all(|t| t.base_url.is_some()));
    assert_eq!(cody.chain().count(), 1);

    // The troubleshooting guide's cache, in the list shape.
    let cache = example("ide-cache-list.yaml");
    assert_eq!(cache.policies[0].kind, PolicyKind::Cache);

    // Hosted team: Postgres storage, Redis cache shared by the team.
    let team = example("hosted-team.yaml");
    assert!(team.storage.is_some());
    assert_eq!(team.auth.required, Some(true));
    let shared = team
        .policies
        .iter()
        .find(|p| p.kind == PolicyKind::Cache)
        .unwrap();
    let PolicyOptions::Cache(o) = &shared.options else {
        panic!()
    };
    assert!(matches!(o.backend, CacheBackend::Redis(_)));

    // Autocomplete-only cache: present for completions, absent for chat.
    let auto = example("autocomplete-cache.yaml");
    let on = |e| auto.chain_for(e).any(|p| p.name == "completions-cache");
    assert!(on(Endpoint::Completions) && !on(Endpoint::ChatCompletions));
}

#[test]
fn policy_check_prints_the_chain_per_endpoint() {
    let file = examples_dir().join("contract-reference.yaml");
    let out = kt(&["policy", "check", file.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        stdout.contains("pack:      vscode-cody-providers-1 1.0.0"),
        "{stdout}"
    );
    assert!(stdout.contains("https://api.anthropic.com"), "{stdout}");
    // The cache only shows under `completions`.
    // The lines of one endpoint's chain: those indented under its header.
    let section = |name: &str| -> String {
        let header = format!("  {name}");
        stdout
            .lines()
            .skip_while(|l| *l != header)
            .skip(1)
            .take_while(|l| l.starts_with("    "))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(section("completions").contains("4. ide-cache"), "{stdout}");
    assert!(
        !section("chat/completions").contains("ide-cache"),
        "{stdout}"
    );
    assert!(
        section("chat/completions").contains("3. content-filter    input"),
        "{stdout}"
    );
}

#[test]
fn policy_check_reports_every_problem_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "policies:\n  chain: [audit-logger, ide-cache, filter]\npolicy:\n  ide-cache:\n    type: cache\n    ttl_secs: 60\n  filter:\n    type: content-filter\n    action: blok\n",
    )
    .unwrap();
    let out = kt(&["policy", "check", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = text(&out.stderr);
    let f = file.display().to_string();
    assert!(
        stderr.contains(&format!(
            "{f}:6:5: policy.ide-cache.ttl_secs: unknown key `ttl_secs`"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{f}:9:13: policy.filter.action: unknown value `blok`"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("(2 problems)"), "{stderr}");
}

#[test]
fn policy_check_on_a_missing_file_is_one_line() {
    let out = kt(&["policy", "check", "/nonexistent/policy-config.yaml"]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("kt: error: cannot read /nonexistent/policy-config.yaml"),
        "{stderr}"
    );
}

/// A cheap stand-in for fuzzing: every prefix of every example either
/// loads or fails with located problems; nothing panics.
#[test]
fn truncated_examples_never_panic() {
    for entry in std::fs::read_dir(examples_dir()).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for (i, _) in text.char_indices() {
            if let Err(e) = Config::parse(&text[..i], &path) {
                assert!(!e.problems().is_empty());
            }
        }
    }
}

/// `kt policy check` finds what would stop the gateway from starting:
/// `upstream.ca_files` that cannot be read or hold no certificate.
#[test]
fn policy_check_reads_the_upstream_ca_files() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let missing = dir.path().join("missing.pem");
    for (ca, said) in [
        (&missing, "cannot read upstream CA file"),
        (&empty, "holds no usable certificate"),
    ] {
        let config = dir.path().join("p.yaml");
        std::fs::write(
            &config,
            format!("upstream:\n  ca_files: [{:?}]\n", ca.display().to_string()),
        )
        .unwrap();
        let out = kt(&["policy", "check", config.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let err = text(&out.stderr);
        assert!(
            err.contains("upstream.ca_files") && err.contains(said),
            "{err}"
        );
    }
}

/// `kt policy check` compiles the chain as the gateway does: a pattern
/// that matches the empty string, or more policies than a chain holds,
/// is refused here and not only at start-up or on a reload.
#[test]
fn policy_check_compiles_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let many: Vec<String> = (0..65).map(|i| format!("p{i}")).collect();
    let mut too_many = format!("policies:\n  chain: [{}]\npolicy:\n", many.join(", "));
    for p in &many {
        too_many.push_str(&format!("  {p}: {{type: passthrough}}\n"));
    }
    let empty = "policies:\n  chain: [r]\npolicy:\n  r:\n    type: redact\n    patterns: [{name: anything, regex: 'x*'}]\n";
    for (yaml, said) in [
        (too_many.as_str(), "at most 64"),
        (empty, "matches the empty string"),
    ] {
        let config = dir.path().join("p.yaml");
        std::fs::write(&config, yaml).unwrap();
        let out = kt(&["policy", "check", config.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let err = text(&out.stderr);
        assert!(err.contains(said), "{err}");
        assert!(err.contains("is not a valid policy config"), "{err}");
    }
}

/// Users copy the README's YAML into their policy config: every block is a
/// whole config that loads (the indented ones inside lists too).
#[test]
fn every_yaml_block_in_the_readme_loads() {
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let text = std::fs::read_to_string(&readme).unwrap();
    let mut blocks = Vec::new();
    let mut open: Option<(usize, usize, String)> = None;
    for (n, line) in text.lines().enumerate() {
        let indent = line.len() - line.trim_start().len();
        match &mut open {
            None if line.trim_start() == "```yaml" => open = Some((n + 1, indent, String::new())),
            Some((start, pad, body)) => {
                if line.trim_start() == "```" {
                    blocks.push((*start, std::mem::take(body)));
                    open = None;
                } else {
                    body.push_str(line.get(*pad..).unwrap_or(""));
                    body.push('\n');
                }
            }
            None => {}
        }
    }
    assert!(blocks.len() >= 6, "{} yaml blocks", blocks.len());
    for (line, yaml) in blocks {
        let at = readme.with_extension(format!("md:{line}"));
        if let Err(e) = Config::parse(&yaml, &at) {
            panic!("README.md line {line}:\n{yaml}\n{e}");
        }
    }
}
