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

/// `--write` to a client's own settings file needs the client's folder:
/// without it (VS Code not installed for this user, or another edition)
/// kt says so and creates nothing; once the folder is there it writes.
#[cfg(target_os = "linux")]
#[test]
fn setup_write_creates_no_folder_for_a_client_that_is_not_there() {
    let home = tempfile::tempdir().unwrap();
    let user = tempfile::tempdir().unwrap();
    let write_with = |xdg_config_home: Option<&Path>| {
        let mut kt = Command::new(env!("CARGO_BIN_EXE_kt"));
        kt.arg("--data-dir")
            .arg(home.path())
            .args(["setup", "vscode", "--write"])
            .env("HOME", user.path())
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("HTTPS_PROXY")
            .env_remove("HTTP_PROXY")
            .env_remove("KEEPTRUSTS_GATEWAY");
        if let Some(dir) = xdg_config_home {
            kt.env("XDG_CONFIG_HOME", dir);
        }
        kt.output().unwrap()
    };
    let write = || write_with(None);
    let out = write();
    assert!(!out.status.success(), "{out:?}");
    let err = text(&out.stderr);
    assert!(
        err.contains(".config/Code/User does not exist") && err.contains("--file"),
        "{err}"
    );
    assert!(!user.path().join(".config").exists());

    let folder = user.path().join(".config/Code/User");
    std::fs::create_dir_all(&folder).unwrap();
    let out = write();
    assert!(out.status.success(), "{out:?}");
    let written = std::fs::read_to_string(folder.join("settings.json")).unwrap();
    assert!(written.contains("\"http.proxy\""), "{written}");

    // VS Code (Electron) keeps its settings under $XDG_CONFIG_HOME when
    // that is set: so does kt.
    let xdg = user.path().join("xdg");
    std::fs::create_dir_all(xdg.join("Code/User")).unwrap();
    let out = write_with(Some(&xdg));
    assert!(out.status.success(), "{out:?}");
    let written = std::fs::read_to_string(xdg.join("Code/User/settings.json")).unwrap();
    assert!(written.contains("\"http.proxy\""), "{written}");
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

/// `~/.bashrc -> dotfiles/bashrc`: `kt setup shell --write` edits the
/// dotfiles copy and `~/.bashrc` is still the link (kt replaced it with a
/// regular file before, cutting it off from the dotfiles).
#[cfg(unix)]
#[test]
fn setup_write_keeps_a_symlinked_profile_a_link() {
    let home = tempfile::tempdir().unwrap();
    let dotfiles = home.path().join("dotfiles");
    std::fs::create_dir(&dotfiles).unwrap();
    std::fs::write(dotfiles.join("bashrc"), "alias ll='ls -l'\n").unwrap();
    let link = home.path().join(".bashrc");
    std::os::unix::fs::symlink(dotfiles.join("bashrc"), &link).unwrap();
    let f = link.to_str().unwrap();
    let out = kt_in(home.path(), &["setup", "shell", "--write", "--file", f]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let meta = std::fs::symlink_metadata(&link).unwrap();
    assert!(
        meta.file_type().is_symlink(),
        "~/.bashrc is no longer a link"
    );
    let merged = std::fs::read_to_string(dotfiles.join("bashrc")).unwrap();
    assert!(merged.starts_with("alias ll='ls -l'\n"), "{merged}");
    assert!(merged.contains("HTTPS_PROXY"), "{merged}");
    let again = kt_in(home.path(), &["setup", "shell", "--write", "--file", f]);
    assert!(text(&again.stdout).contains("already up to date"));

    // A link to nothing: refused, naming both paths; nothing created.
    let dangling = home.path().join(".zshrc");
    std::os::unix::fs::symlink(dotfiles.join("zshrc"), &dangling).unwrap();
    let f = dangling.to_str().unwrap();
    let out = kt_in(home.path(), &["setup", "shell", "--write", "--file", f]);
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(f) && err.contains("dotfiles/zshrc"), "{err}");
    assert!(std::fs::symlink_metadata(&dangling)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(!dotfiles.join("zshrc").exists());
}

/// A profile whose kt block lost its end line: `kt setup shell --write`
/// fails naming the file and the start line, and changes nothing (before,
/// it appended a second block, and the run after that deleted the lines
/// between the two).
#[test]
fn setup_write_refuses_a_block_without_its_end_line() {
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join(".bashrc");
    let original = "alias ll='ls -l'\n# >>> kt setup >>>\nexport HTTPS_PROXY=x\nexport MINE=1\n";
    std::fs::write(&file, original).unwrap();
    let f = file.to_str().unwrap();
    for _ in 0..2 {
        let out = kt_in(home.path(), &["setup", "shell", "--write", "--file", f]);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{}", text(&out.stdout));
        assert!(err.contains(f) && err.contains("line 2"), "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), original);
    }
    assert!(backups(home.path(), ".bashrc").is_empty());
}

mod doctor {
    use super::text;
    use crate::common::origin::{Alpn, Origin};
    use crate::common::{connect_to, doctor, doctor_check as check, TestCa, TestGateway};
    use std::path::Path;

    fn free_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
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
            "ok    client_tls ",
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
        let node = crate::common::probe::has_program("node");
        assert_eq!(
            stdout.contains("ok    node_extra_ca "),
            node,
            "node present: {node}\n{stdout}"
        );
    }

    /// A client without the kt CA shows in the doctor's report, with the
    /// count the gateway kept.
    #[tokio::test]
    async fn clients_that_refused_the_certificate_are_reported() {
        let test_ca = TestCa::new("public roots stand-in");
        let origin = Origin::tls(&test_ca, &["api.githubcopilot.com"], Alpn::H1).await;
        let gateway = TestGateway::start(&test_ca, |s| {
            s.connect_to = vec![connect_to("api.githubcopilot.com", 443, origin.addr)];
        })
        .await;
        crate::common::client::refused_tls(
            gateway.addr,
            "api.githubcopilot.com:443",
            "api.githubcopilot.com",
            std::slice::from_ref(&test_ca.cert_der),
        )
        .await;

        let gw = format!("http://127.0.0.1:{}", gateway.addr.port());
        let home = gateway.home.path();
        let out = doctor(home, &["--gateway", &gw, "--no-node", "--json"], &[]).await;
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let c = check(&json, "client_tls");
        assert_eq!(c["status"], "warn", "{c}");
        let detail = c["detail"].as_str().unwrap();
        assert!(detail.contains("untrusted_ca 1"), "{detail}");
        assert!(c["fix"].as_str().unwrap().contains("kt ca install"), "{c}");
    }
}

mod dashboard {
    use crate::common::client::{body_string, read_head, tls, Http};
    use crate::common::origin::{Alpn, Origin};
    use crate::common::{connect_to, TestCa, TestGateway};
    use base64::Engine as _;
    use bytes::Bytes;
    use keeptrusts::config::PolicyConfig;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const HOST: &str = "api.openai.com";
    const CONFIG: &str = "auth:\n  required: true\npolicies:\n  chain: [audit-logger, content-filter]\npolicy:\n  audit-logger: {}\n  content-filter:\n    patterns: ['internal-project-\\w+']\n";

    /// One chat request through the proxy as the holder of `key`.
    async fn chat_as(
        gw: &TestGateway,
        key: &str,
        content: &str,
        roots: &[rustls_pki_types::CertificateDer<'static>],
    ) -> u16 {
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("dev:{key}"));
        let req = format!("CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\nProxy-Authorization: Basic {auth}\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        assert_eq!(read_head(&mut s).await.status, 200);
        let tls = tls(s, HOST, roots, &[b"http/1.1"]).await.unwrap();
        let mut http = Http::over(tls, false).await;
        let body = serde_json::json!({"model": "gpt-4o", "messages": [{"role": "user", "content": content}]});
        let resp = http
            .send(
                "POST",
                HOST,
                "/v1/chat/completions",
                Bytes::from(body.to_string()),
            )
            .await;
        let status = resp.status().as_u16();
        let _ = body_string(resp).await;
        status
    }

    /// A raw HTTP/1.1 GET to the gateway; returns the whole response text.
    async fn get(gw: &TestGateway, path: &str, headers: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n{headers}\r\n",
            gw.addr
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .expect("response did not end")
            .unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Runs headless Chromium on `url` with `args`.
    async fn chromium(mut args: Vec<String>, url: String) -> String {
        args.push("--virtual-time-budget=5000".into());
        crate::common::chromium::run(args, url, None).await
    }

    fn events_tbody(dom: &str) -> &str {
        let start = dom.find("<tbody>").expect("no events table body");
        let end = dom[start..].find("</tbody>").unwrap() + start;
        &dom[start..end]
    }

    fn artifacts() -> PathBuf {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
        let dir = target.join("test-artifacts");
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[tokio::test]
    async fn the_dashboard_shows_events_and_filters_them_in_a_real_browser() {
        let ca = TestCa::new("dashboard CA");
        let origin = Origin::tls(&ca, &[HOST], Alpn::H1).await;
        let config = Arc::new(PolicyConfig::parse(CONFIG, Path::new("t.yaml")).unwrap());
        let mut keys = Vec::new();
        let gw = TestGateway::start(&ca, |s| {
            s.connect_to.push(connect_to(HOST, 443, origin.addr));
            s.apply_config(&config);
            let file = s.keys_file.clone().unwrap();
            for (user, team, admin) in [
                ("alice", "red", false),
                ("bob", "blue", false),
                ("ops", "sre", true),
            ] {
                keys.push(
                    keeptrusts::keys::file::create(&file, user, Some(team), admin)
                        .unwrap()
                        .key,
                );
            }
        })
        .await;
        let roots = [gw.ca_der()];
        assert_eq!(
            chat_as(&gw, &keys[0], "hello from alice", &roots).await,
            200
        );
        assert_eq!(
            chat_as(&gw, &keys[1], "about internal-project-zeus", &roots).await,
            409
        );

        // The page and the feed need an admin key; a wrong one is refused.
        assert!(get(&gw, "/_kt/", "").await.starts_with("HTTP/1.1 401"));
        assert!(get(&gw, &format!("/_kt/?key={}", keys[0]), "")
            .await
            .starts_with("HTTP/1.1 403"));
        let login = get(&gw, &format!("/_kt/?key={}", keys[2]), "").await;
        assert!(login.starts_with("HTTP/1.1 303"), "{login}");
        let cookie_line = login
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
            .expect("the login sets a cookie");
        for attr in ["HttpOnly", "SameSite=Strict", "Path=/_kt"] {
            assert!(cookie_line.contains(attr), "{cookie_line}");
        }
        let cookie = format!("Cookie: kt_admin={}\r\n", keys[2]);
        let page = get(&gw, "/_kt/", &cookie).await;
        assert!(
            page.starts_with("HTTP/1.1 200"),
            "{}",
            &page[..200.min(page.len())]
        );
        let csp = page
            .lines()
            .find(|l| {
                l.to_ascii_lowercase()
                    .starts_with("content-security-policy:")
            })
            .unwrap();
        assert!(
            csp.contains("script-src 'sha256-") && csp.contains("connect-src 'self'"),
            "{csp}"
        );
        // The cookie opens /_kt/* only: never the direct API.
        assert!(get(&gw, "/v1/models", &cookie)
            .await
            .starts_with("HTTP/1.1 401"));

        // Wait (bounded) until the three events are readable from the log.
        let started = Instant::now();
        loop {
            let feed = get(&gw, "/_kt/events?n=10&follow=0", &cookie).await;
            if feed.matches("\ndata: ").count() >= 3 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "events never arrived:\n{feed}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        if !crate::common::probe::programs_present(&["chromium"]) {
            return;
        }
        let base = format!("http://{}/_kt/?key={}", gw.addr, keys[2]);
        let dom = chromium(vec!["--dump-dom".into()], format!("{base}#once=1")).await;
        assert!(dom.contains("data-events=\"3\""), "{dom}");
        let rows = events_tbody(&dom);
        assert!(rows.contains(">alice<") && rows.contains(">bob<"), "{rows}");
        assert!(
            rows.contains(">block<") && rows.contains(">content-filter<"),
            "{rows}"
        );
        assert!(dom.contains("id=\"total-blocks\">1<"), "block counted");
        let policies = &dom[dom.find("id=\"policies\"").unwrap()..];
        assert!(policies[..policies.find("</table>").unwrap()].contains(">content-filter<"));

        let filtered = chromium(
            vec!["--dump-dom".into()],
            format!("{base}#filter=user:alice&once=1"),
        )
        .await;
        assert!(filtered.contains("data-shown=\"2\""), "{filtered}");
        let rows = events_tbody(&filtered);
        assert!(rows.contains(">alice<"), "{rows}");
        assert!(
            !rows.contains(">bob<") && !rows.contains(">block<"),
            "the filter hides bob's block:\n{rows}"
        );

        let shot = artifacts().join("dashboard.png");
        let _ = std::fs::remove_file(&shot);
        chromium(
            vec![
                format!("--screenshot={}", shot.display()),
                "--window-size=1280,900".into(),
            ],
            format!("{base}#once=1"),
        )
        .await;
        let png = std::fs::read(&shot).expect("no screenshot written");
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "{} bytes",
            png.len()
        );
    }
}

/// When kt cannot add Continue's model itself (`models:` in flow style),
/// the error is one line and the entry to add by hand is printed on
/// stdout, ready to paste; the file is left as it was.
#[test]
fn an_entry_kt_cannot_add_is_printed_after_a_one_line_error() {
    let home = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.yaml");
    let original = "name: a\nversion: 1.0.0\nschema: v1\nmodels: [{name: mine}]\n";
    std::fs::write(&file, original).unwrap();
    let f = file.to_str().unwrap();
    let out = kt_in(home.path(), &["setup", "continue", "--write", "--file", f]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = text(&out.stderr);
    let errors: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("kt: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(errors[0].contains("flow style"), "{err}");
    assert!(
        err.lines().all(|l| l.starts_with("kt: ")),
        "the entry leaked into stderr: {err}"
    );
    let entry = text(&out.stdout);
    assert!(entry.contains("- name: kt gateway (gpt-4o)"), "{entry}");
    assert!(
        entry.contains("apiBase: http://127.0.0.1:41002/v1"),
        "{entry}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), original);
}
