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

mod doctor {
    use super::text;
    use crate::common::origin::{Alpn, Origin};
    use crate::common::{connect_to, TestCa, TestGateway};
    use std::path::Path;
    use std::process::{Command, Output};

    /// Runs `kt doctor` with exactly the proxy variables given (and a home
    /// folder without NSS databases), off the test's runtime so an
    /// in-process gateway keeps serving.
    async fn doctor(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
        let user_home = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kt"));
        cmd.arg("--data-dir").arg(home).arg("doctor").args(args);
        for v in [
            "HTTPS_PROXY",
            "HTTP_PROXY",
            "https_proxy",
            "http_proxy",
            "NO_PROXY",
            "no_proxy",
            "KEEPTRUSTS_ACCESS_KEY",
            "KEEPTRUSTS_GATEWAY",
            "NODE_EXTRA_CA_CERTS",
        ] {
            cmd.env_remove(v);
        }
        cmd.env("HOME", user_home.path());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .unwrap()
            .unwrap();
        drop(user_home);
        out
    }

    fn free_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    fn check<'a>(json: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
        json.as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no check {name} in {json:#}"))
    }

    #[tokio::test]
    async fn a_broken_setup_fails_each_check_with_its_fix() {
        let home = tempfile::tempdir().unwrap();
        let init = super::kt_in(home.path(), &["ca", "init"]);
        assert!(init.status.success(), "{}", text(&init.stderr));
        // A bundle without the kt CA stands for an OS that does not trust it.
        let bundle = home.path().join("os-bundle.crt");
        let other = TestCa::new("someone else");
        std::fs::copy(&other.pem_path, &bundle).unwrap();
        let port = free_port();
        let gw = format!("http://127.0.0.1:{port}");
        let args = [
            "--gateway",
            &gw,
            "--ca-bundle",
            bundle.to_str().unwrap(),
            "--no-node",
        ];
        let env = [
            ("HTTPS_PROXY", gw.as_str()),
            ("NO_PROXY", "github.com,*.npmjs.org"),
        ];

        let out = doctor(home.path(), &args, &env).await;
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{stdout}");
        for (line, fix) in [
            ("FAIL  gateway", "fix: start it: kt gateway run"),
            ("FAIL  ca_os_trust", "fix: sudo kt ca install"),
            (
                "FAIL  no_proxy",
                "fix: export NO_PROXY=localhost,127.0.0.1,::1",
            ),
        ] {
            let at = stdout
                .find(line)
                .unwrap_or_else(|| panic!("no {line:?} in\n{stdout}"));
            let next = stdout[at..].lines().nth(1).unwrap();
            assert!(next.trim_start().starts_with(fix), "{line}: fix {next:?}");
        }
        assert!(stdout.contains(&format!("nothing listens on 127.0.0.1:{port}")));

        let mut json_args = args.to_vec();
        json_args.push("--json");
        let out = doctor(home.path(), &json_args, &env).await;
        assert_eq!(out.status.code(), Some(1));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        for name in ["gateway", "ca_os_trust", "no_proxy"] {
            let c = check(&json, name);
            assert_eq!(c["status"], "fail", "{c}");
            assert!(c["fix"].as_str().is_some_and(|f| !f.is_empty()), "{c}");
            assert!(c["detail"].as_str().is_some_and(|d| !d.is_empty()));
        }
        assert_eq!(check(&json, "ca_file")["status"], "ok");
    }

    #[tokio::test]
    async fn a_port_held_by_another_program_is_named() {
        let home = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            while let Ok((mut s, _)) = listener.accept().await {
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
                    )
                    .await;
            }
        });
        let gw = format!("http://127.0.0.1:{port}");
        let out = doctor(home.path(), &["--gateway", &gw, "--no-node", "--json"], &[]).await;
        assert_eq!(out.status.code(), Some(1));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let c = check(&json, "gateway");
        assert_eq!(c["status"], "fail");
        let detail = c["detail"].as_str().unwrap();
        assert!(detail.contains("is not kt"), "{detail}");
        if Path::new("/proc/net/tcp").exists() {
            // This test process holds the port; the doctor finds it in /proc.
            assert!(
                detail.contains(&format!("pid {}", std::process::id())),
                "{detail}"
            );
        }
    }

    #[tokio::test]
    async fn a_working_setup_passes_end_to_end() {
        let test_ca = TestCa::new("public roots stand-in");
        let origin = Origin::tls(&test_ca, &["api.githubcopilot.com"], Alpn::H1).await;
        let gateway = TestGateway::start(&test_ca, |s| {
            s.connect_to = vec![connect_to("api.githubcopilot.com", 443, origin.addr)];
        })
        .await;
        let home = gateway.home.path();
        let policy = home.join("policy.yaml");
        std::fs::write(&policy, "policies:\n  chain: [audit-logger]\n").unwrap();
        let gw = format!("http://127.0.0.1:{}", gateway.addr.port());
        let ca = gateway.ca_pem.to_str().unwrap().to_string();
        let args = [
            "--gateway",
            &gw,
            // The trusted bundle here is the kt CA itself.
            "--ca-bundle",
            &ca,
            "--policy-config",
            policy.to_str().unwrap(),
        ];
        let env = [
            ("HTTPS_PROXY", gw.as_str()),
            ("http_proxy", gw.as_str()),
            ("NO_PROXY", "localhost,127.0.0.1,::1"),
        ];
        let out = doctor(home, &args, &env).await;
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
        assert!(!stdout.contains("FAIL  "), "{stdout}");
        for line in [
            "ok    gateway ",
            "ok    ca_file ",
            "ok    gateway_ca ",
            "ok    ca_os_trust ",
            "ok    proxy_env ",
            "ok    no_proxy ",
            "ok    probe ",
            "ok    access_key ",
            "ok    events ",
            "ok    policy_config ",
        ] {
            assert!(stdout.contains(line), "no {line:?} in\n{stdout}");
        }
        assert!(
            stdout.contains("certificate chains to the kt CA"),
            "{stdout}"
        );
        assert!(
            origin.hits.load(std::sync::atomic::Ordering::SeqCst) >= 1,
            "the probe reached the origin"
        );
        let node = super::has_program("node");
        assert_eq!(
            stdout.contains("ok    node_extra_ca "),
            node,
            "node present: {node}\n{stdout}"
        );
    }
}

/// True when `program` is on PATH.
pub(crate) fn has_program(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}
