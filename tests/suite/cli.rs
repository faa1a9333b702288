//! The real `kt` binary: CA commands, start-up errors, and a gateway run
//! that serves a request and exits 0 on SIGTERM.
#![allow(clippy::unwrap_used)]

use crate::common::client::{echo_through, through_proxy};
use crate::common::origin::{Alpn, Origin};
use crate::common::TestCa;
use bytes::Bytes;
use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn kt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kt"))
        .args(args)
        .env_remove("HTTPS_PROXY")
        .env_remove("HTTP_PROXY")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into()
}

#[test]
fn ca_init_is_idempotent_and_path_prints_the_cert() {
    let home = tempfile::tempdir().unwrap();
    let d = home.path().to_str().unwrap();
    let first = kt(&["ca", "init", "--data-dir", d]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    let path = text(&first.stdout).trim().to_string();
    assert!(path.ends_with(".pem") && std::path::Path::new(&path).is_file());
    let pem1 = std::fs::read(&path).unwrap();
    let second = kt(&["ca", "init", "--data-dir", d]);
    assert_eq!(text(&second.stdout).trim(), path);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        pem1,
        "init must not replace the CA"
    );
    let p = kt(&["ca", "path", "--data-dir", d]);
    assert_eq!(text(&p.stdout).trim(), path);
    // --ca-dir overrides only the CA folder.
    let other = tempfile::tempdir().unwrap();
    let o = kt(&["ca", "init", "--ca-dir", other.path().to_str().unwrap()]);
    assert!(text(&o.stdout)
        .trim()
        .starts_with(other.path().to_str().unwrap()));
}

/// Before the CA exists, `kt ca path` still prints where it will be (the
/// path `kt ca init` then creates), exits 0, and says on stderr how to
/// create it.
#[test]
fn ca_path_without_a_ca_prints_where_it_will_be() {
    let home = tempfile::tempdir().unwrap();
    let d = home.path().to_str().unwrap();
    let out = kt(&["ca", "path", "--data-dir", d]);
    assert!(out.status.success(), "{out:?}");
    let path = text(&out.stdout).trim().to_string();
    assert_eq!(path, home.path().join("certs/kt-ca.pem").to_str().unwrap());
    assert!(
        !std::path::Path::new(&path).exists(),
        "path creates nothing"
    );
    let err = text(&out.stderr);
    assert!(err.contains("no CA") && err.contains("kt ca init"), "{err}");
    let init = kt(&["ca", "init", "--data-dir", d]);
    assert_eq!(text(&init.stdout).trim(), path);
    let again = kt(&["ca", "path", "--data-dir", d]);
    assert!(
        again.status.success() && again.stderr.is_empty(),
        "{again:?}"
    );
}

#[test]
fn ca_install_dry_run_prints_commands_and_node_line() {
    let home = tempfile::tempdir().unwrap();
    let d = home.path().to_str().unwrap();
    kt(&["ca", "init", "--data-dir", d]);
    let out = kt(&["ca", "install", "--dry-run", "--data-dir", d]);
    let stdout = text(&out.stdout);
    if out.status.success() {
        assert!(stdout.contains("NODE_EXTRA_CA_CERTS="), "{stdout}");
        assert!(stdout.contains(d), "names the CA file: {stdout}");
    } else {
        // Unsupported platform: the error says how to do it by hand.
        assert!(!text(&out.stderr).is_empty());
    }
    let un = kt(&["ca", "uninstall", "--dry-run", "--data-dir", d]);
    assert!(un.status.success() || !text(&un.stderr).is_empty());
}

/// Before `kt ca init`, the dry run shows what the real run does: create
/// the CA (where), then trust it with that path; it creates nothing
/// (before, it failed with "run `kt ca init` first").
#[test]
fn ca_install_dry_run_before_the_ca_exists_says_it_would_create_it() {
    let home = tempfile::tempdir().unwrap();
    let d = home.path().to_str().unwrap();
    let out = kt(&["ca", "install", "--dry-run", "--data-dir", d]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(!stderr.contains("kt ca init"), "{stderr}");
    let cert = home.path().join("certs/kt-ca.pem");
    if out.status.success() {
        let dir = home.path().join("certs");
        let create = format!("would create a new CA in {}", dir.display());
        assert!(stdout.contains(&create), "{stdout}");
        assert!(stdout.contains(cert.to_str().unwrap()), "{stdout}");
    } else {
        // Unsupported platform: the error says how to do it by hand.
        assert!(stderr.contains(cert.to_str().unwrap()), "{stderr}");
    }
    assert!(
        !home.path().join("certs").exists(),
        "the dry run created it"
    );
}

/// `sudo kt ca install`, as the Quick start says: root, with root's
/// `$HOME` and `SUDO_USER` naming the user. kt takes the CA folder from
/// that user's home, not root's, and root does not create a CA there;
/// the dry run says so as the real run would. Needs root (and the `nobody`
/// user, whose home is /nonexistent); skipped otherwise.
#[test]
fn ca_commands_through_sudo_use_the_sudo_users_home() {
    let uid = Command::new("id").arg("-u").output().unwrap();
    let nobody = Command::new("getent").args(["passwd", "nobody"]).output();
    let nobody_home = nobody.map(|o| text(&o.stdout)).unwrap_or_default();
    if text(&uid.stdout).trim() != "0" || !nobody_home.contains(":/nonexistent:") {
        eprintln!("skipped: needs root and the user nobody with home /nonexistent");
        return;
    }
    let root_home = tempfile::tempdir().unwrap();
    let as_sudo = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_kt"))
            .args(args)
            .env("HOME", root_home.path())
            .env("SUDO_USER", "nobody")
            .env_remove("KEEPTRUSTS_HOME")
            .output()
            .unwrap()
    };
    let path = as_sudo(&["ca", "path"]);
    assert_eq!(
        text(&path.stdout).trim(),
        "/nonexistent/.keeptrusts/certs/kt-ca.pem"
    );
    // Only the dry run: a broken real run would change this machine's
    // trust store (the unit tests in src/cli/ca.rs cover the refusal).
    let out = as_sudo(&["ca", "install", "--dry-run"]);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("no CA in /nonexistent/.keeptrusts/certs")
            && err.contains("run `kt ca init` as nobody (without sudo) first"),
        "{err}"
    );
    assert!(!root_home.path().join(".keeptrusts").exists());
    assert!(!std::path::Path::new("/nonexistent").exists());
}

/// A certificate without its key: `kt ca install` refuses it, and the
/// dry run fails the same way instead of printing a plan.
#[test]
fn ca_install_dry_run_refuses_a_lone_certificate_as_the_real_run_does() {
    let home = tempfile::tempdir().unwrap();
    let d = home.path().to_str().unwrap();
    assert!(kt(&["ca", "init", "--data-dir", d]).status.success());
    std::fs::remove_file(home.path().join("certs/kt-ca-key.pem")).unwrap();
    let out = kt(&["ca", "install", "--dry-run", "--data-dir", d]);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{}", text(&out.stdout));
    assert!(
        err.contains("kt-ca.pem") && err.contains("certificate and key must both exist"),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
}

#[test]
fn bad_input_fails_with_one_clear_line() {
    let home = tempfile::tempdir().unwrap();
    let d = home.path().to_str().unwrap();
    let bad = home.path().join("bad.yaml");
    std::fs::write(&bad, "intercept:\n  hostz: [x]\n").unwrap();
    let out = kt(&[
        "gateway",
        "run",
        "--data-dir",
        d,
        "--policy-config",
        bad.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("bad.yaml:2:"), "{err}");

    let out = kt(&[
        "gateway",
        "run",
        "--data-dir",
        d,
        "--policy-config",
        "/nonexistent.yaml",
    ]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("/nonexistent.yaml"));

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = kt(&["gateway", "run", "--data-dir", d, "--listen", &addr]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("cannot listen"),
        "{}",
        text(&out.stderr)
    );

    // (A non-loopback listener now starts, with keys required: see
    // suite::keys.) A key file kt cannot read stops the start.
    let keys_home = tempfile::tempdir().unwrap();
    std::fs::write(keys_home.path().join("keys.json"), "{not json").unwrap();
    let kd = keys_home.path().to_str().unwrap();
    let out = kt(&[
        "gateway",
        "run",
        "--data-dir",
        kd,
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("keys.json is not valid"),
        "{}",
        text(&out.stderr)
    );

    let out = kt(&[
        "gateway",
        "run",
        "--data-dir",
        d,
        "--listen",
        "127.0.0.1:0",
        "--connect-to",
        "nonsense",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--connect-to"),
        "{}",
        text(&out.stderr)
    );

    let out = kt(&["gateway", "run", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
}

/// A `kt gateway run` child process on a free port, with its stderr lines.
pub(crate) struct Running {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    /// What it wrote before its banner (start-up warnings).
    early: Vec<String>,
    pub(crate) addr: std::net::SocketAddr,
    home: tempfile::TempDir,
}

pub(crate) fn spawn_gateway(ca: &TestCa, origin: &Origin, extra: &[&std::ffi::OsStr]) -> Running {
    spawn_gateway_with(ca, origin, extra, &[])
}

/// As [`spawn_gateway`], with extra environment variables.
pub(crate) fn spawn_gateway_with(
    ca: &TestCa,
    origin: &Origin,
    extra: &[&std::ffi::OsStr],
    envs: &[(&str, &str)],
) -> Running {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kt"));
    cmd.args(["gateway", "run"]);
    if !extra.iter().any(|a| *a == "--listen") {
        cmd.args(["--listen", "127.0.0.1:0"]);
    }
    let mut child = cmd
        .arg("--data-dir")
        .arg(home.path())
        .arg("--upstream-ca")
        .arg(&ca.pem_path)
        .arg("--connect-to")
        .arg(format!(
            "api.openai.com:443:127.0.0.1:{}",
            origin.addr.port()
        ))
        .args(extra)
        .env_remove("KEEPTRUSTS_STORAGE")
        .env_remove("HTTPS_PROXY")
        .env_remove("HTTP_PROXY")
        .envs(envs.iter().copied())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut early = Vec::new();
    let addr: std::net::SocketAddr = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(30))
            .expect("no start-up banner");
        if let Some(a) = line.strip_prefix("kt gateway listening on ") {
            break a.trim().parse().unwrap();
        }
        early.push(line);
    };
    Running {
        child,
        lines,
        early,
        addr,
        home,
    }
}

impl Running {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the gateway (SIGTERM) and returns every stderr line it wrote,
    /// and its home folder (kept until the caller drops it). The wait runs
    /// off the test's runtime, so client connections still open on it can
    /// close and the drain need not wait them out.
    pub(crate) async fn stop_and_collect(self) -> (Vec<String>, tempfile::TempDir) {
        self.signal("-TERM");
        let mut child = self.child;
        let _ = tokio::task::spawn_blocking(move || child.wait()).await;
        let mut lines = self.early;
        lines.extend(self.lines.iter());
        (lines, self.home)
    }

    pub(crate) fn ca_der(&self) -> rustls_pki_types::CertificateDer<'static> {
        let pem = std::fs::read(self.home.path().join("certs/kt-ca.pem")).unwrap();
        rustls_pki_types::pem::PemObject::from_pem_slice(&pem).unwrap()
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits (bounded) for a stderr line containing `needle`.
    fn expect_line(&self, needle: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no log line containing {needle:?}"));
            if line.contains(needle) {
                return;
            }
        }
    }
}

#[tokio::test]
async fn gateway_binary_serves_and_exits_cleanly_on_sigterm() {
    let ca = TestCa::new("ca");
    let origin = Origin::tls(&ca, &["api.openai.com"], Alpn::Both).await;
    let gw = spawn_gateway(&ca, &origin, &[]);
    echo_through(gw.addr, gw.ca_der()).await;

    gw.signal("-TERM");
    let Running {
        mut child, lines, ..
    } = gw;
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0), "exit 0 after SIGTERM");
    // Every line, to the pipe's end: the reader thread may not have
    // passed the last ones on when the exit is seen.
    let rest: Vec<String> = lines.iter().collect();
    assert!(rest.iter().any(|l| l.contains("drain")), "{rest:?}");
}

/// `localhost` is `127.0.0.1` to some clients and `::1` to others (macOS
/// resolves `::1` first, and Node before 20 does not fall back): a gateway
/// on either loopback address answers on the other too. Where the other
/// address cannot be had (no IPv6, or another program holds the port
/// there) the gateway still starts, and says so.
#[tokio::test]
async fn gateway_binary_answers_on_both_loopback_addresses() {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
    let ca = TestCa::new("ca");
    let origin = Origin::tls(&ca, &["api.openai.com"], Alpn::Both).await;
    let has_v6 = std::net::TcpListener::bind("[::1]:0").is_ok();
    let skipped = "not listening on the other loopback address";

    let gw = spawn_gateway(&ca, &origin, &[]);
    assert_eq!(gw.addr.ip(), Ipv4Addr::LOCALHOST);
    if has_v6 {
        let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, gw.addr.port()));
        echo_through(v6, gw.ca_der()).await;
        let (lines, _home) = gw.stop_and_collect().await;
        let also = format!("  also on        : {v6} (localhost over IPv6)");
        assert!(lines.contains(&also), "{lines:?}");
    } else {
        let (lines, _home) = gw.stop_and_collect().await;
        assert!(lines.iter().any(|l| l.contains(skipped)), "{lines:?}");
        return;
    }

    let gw = spawn_gateway(&ca, &origin, &["--listen".as_ref(), "[::1]:0".as_ref()]);
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, gw.addr.port()));
    echo_through(v4, gw.ca_der()).await;
    drop(gw.stop_and_collect().await);

    // Another program on ::1 at the port: kt serves on 127.0.0.1 alone,
    // and the other program keeps its connections.
    // The port must be free on 127.0.0.1, where other tests' sockets come
    // and go: one that was free a moment ago is the best to be had.
    let (held, port) = (0..16)
        .find_map(|_| {
            let held = std::net::TcpListener::bind("[::1]:0").unwrap();
            let port = held.local_addr().unwrap().port();
            std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))
                .is_ok()
                .then_some((held, port))
        })
        .expect("a port free on both loopback addresses");
    let listen = format!("127.0.0.1:{port}");
    let gw = spawn_gateway(&ca, &origin, &["--listen".as_ref(), listen.as_ref()]);
    echo_through(gw.addr, gw.ca_der()).await;
    let _client = std::net::TcpStream::connect(("::1", port)).unwrap();
    held.set_nonblocking(false).unwrap();
    let (_conn, from) = held.accept().unwrap();
    assert!(from.ip().is_loopback());
    let (lines, _home) = gw.stop_and_collect().await;
    assert!(lines.iter().any(|l| l.contains(skipped)), "{lines:?}");
    assert!(!lines.iter().any(|l| l.contains("also on")), "{lines:?}");
}

/// Two gateways given one home would each continue the audit chain from
/// the same last event and break it: the second is refused at start, names
/// the first, and the first's log stays whole.
#[tokio::test]
async fn a_second_gateway_on_the_same_home_is_refused() {
    let ca = TestCa::new("ca");
    let origin = Origin::tls(&ca, &["api.openai.com"], Alpn::Both).await;
    let first = spawn_gateway(&ca, &origin, &[]);
    let mut second = Command::new(env!("CARGO_BIN_EXE_kt"))
        .args(["gateway", "run", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(first.home.path())
        .env_remove("KEEPTRUSTS_STORAGE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            second.kill().unwrap();
            panic!("the second gateway is running on the first one's home");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    let pid = format!("(pid {})", first.child.id());
    assert!(
        err.contains("is being written by another kt process") && err.contains(&pid),
        "{err}"
    );
    assert_eq!(
        err.matches("is being written by another kt process")
            .count(),
        1,
        "said once: {err}"
    );
    let (mut http, _) =
        through_proxy(first.addr, "api.openai.com", &[first.ca_der()], &[b"h2"]).await;
    let chat = Bytes::from_static(br#"{"model":"m","messages":[]}"#);
    let resp = http
        .send("POST", "api.openai.com", "/v1/chat/completions", chat)
        .await;
    assert_eq!(resp.status(), 200);
    drop(http);
    let (_lines, home) = first.stop_and_collect().await;
    let verified = kt(&[
        "events",
        "verify",
        "--data-dir",
        home.path().to_str().unwrap(),
    ]);
    let said = String::from_utf8_lossy(&verified.stdout);
    assert!(verified.status.success(), "{verified:?}");
    assert!(said.contains("2 events"), "{said}");
}

/// Guides write `--listen localhost:PORT`: the name is resolved, not
/// refused. A config's warnings (here a passthrough that silences the
/// redaction after it) are logged where the gateway starts, not only by
/// `kt policy check`.
#[tokio::test]
async fn gateway_binary_listens_on_a_name_and_logs_its_config_warnings() {
    let ca = TestCa::new("ca");
    let origin = Origin::tls(&ca, &["api.openai.com"], Alpn::Both).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("policy.yaml");
    std::fs::write(
        &config,
        "policies:\n  chain: [log, cody, secrets]\npolicy:\n  log: {type: audit-logger}\n  \
         cody: {type: passthrough, when: {hosts: [sourcegraph.com]}}\n  secrets: {type: redact}\n",
    )
    .unwrap();
    let gw = spawn_gateway(
        &ca,
        &origin,
        &[
            "--listen".as_ref(),
            "localhost:0".as_ref(),
            "--policy-config".as_ref(),
            config.as_os_str(),
        ],
    );
    assert!(gw.addr.ip().is_loopback(), "{}", gw.addr);
    echo_through(gw.addr, gw.ca_der()).await;
    let (lines, _home) = gw.stop_and_collect().await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains("passthrough `cody` turns off secrets")),
        "{lines:?}"
    );
}

/// The log answers "does my IDE's traffic reach kt, and is it decrypted?":
/// the first CONNECT to each host says intercepted or tunnelled, once per
/// host however many connections follow.
#[tokio::test]
async fn gateway_binary_logs_the_first_connect_to_each_host_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = TestCa::new("ca");
    let origin = Origin::tls(&ca, &["api.openai.com"], Alpn::Both).await;
    let blind = format!("blind.test:443:127.0.0.1:{}", origin.addr.port());
    let gw = spawn_gateway(&ca, &origin, &["--connect-to".as_ref(), blind.as_ref()]);
    for _ in 0..2 {
        echo_through(gw.addr, gw.ca_der()).await;
        let mut tunnel = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        tunnel
            .write_all(b"CONNECT blind.test:443 HTTP/1.1\r\nHost: blind.test:443\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 12];
        tunnel.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
    }
    let (lines, _home) = gw.stop_and_collect().await;
    let count = |needle: &str| lines.iter().filter(|l| l.contains(needle)).count();
    assert_eq!(
        count("first CONNECT to this host: intercepted"),
        1,
        "{lines:?}"
    );
    assert_eq!(
        count("first CONNECT to this host: tunnelled untouched"),
        1,
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("intercepted") && l.contains("api.openai.com:443")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("tunnelled") && l.contains("blind.test:443")),
        "{lines:?}"
    );
}

/// The stop signals are handled from the moment the gateway says it
/// listens: a SIGTERM right after the banner drains and exits 0 rather than
/// killing the process (several starts, as the old window was narrow).
#[tokio::test]
async fn gateway_binary_handles_sigterm_as_soon_as_it_listens() {
    let ca = TestCa::new("ca");
    let origin = Origin::tls(&ca, &["api.openai.com"], Alpn::Both).await;
    for round in 0..5 {
        let gw = spawn_gateway(&ca, &origin, &[]);
        gw.signal("-TERM");
        let Running { mut child, .. } = gw;
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status.code(), Some(0), "round {round}: {status:?}");
    }
}

#[tokio::test]
async fn gateway_binary_reloads_policies_on_file_change_and_sighup() {
    let ca = TestCa::new("ca");
    let origin = Origin::tls(&ca, &["api.openai.com"], Alpn::Both).await;
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    let filter = |word: &str| {
        format!("policies:\n  chain: [content-filter]\npolicy:\n  content-filter:\n    patterns: ['{word}']\n")
    };
    std::fs::write(&policy, filter("alpha")).unwrap();
    let gw = spawn_gateway(
        &ca,
        &origin,
        &["--policy-config".as_ref(), policy.as_os_str()],
    );
    let (mut http, _) =
        through_proxy(gw.addr, "api.openai.com", &[gw.ca_der()], &[b"http/1.1"]).await;
    let body =
        Bytes::from_static(br#"{"model":"m","messages":[{"role":"user","content":"beta"}]}"#);
    async fn chat_status(http: &mut crate::common::client::Http, body: &Bytes) -> u16 {
        http.send(
            "POST",
            "api.openai.com",
            "/v1/chat/completions",
            body.clone(),
        )
        .await
        .status()
        .as_u16()
    }
    assert_eq!(chat_status(&mut http, &body).await, 200);

    // A changed file is picked up without a signal.
    std::fs::write(&policy, filter("beta")).unwrap();
    gw.expect_line("policy config reloaded");
    // The new config's warnings are logged with it, as at start.
    gw.expect_line("no audit-logger in the chain");
    assert_eq!(chat_status(&mut http, &body).await, 409);

    // A bad config on SIGHUP is refused and the chain in force stays.
    std::fs::write(&policy, "policies:\n  chain: [nope]\n").unwrap();
    gw.signal("-HUP");
    gw.expect_line("policy config rejected");
    assert_eq!(chat_status(&mut http, &body).await, 409);
    drop(http);
    gw.signal("-TERM");
    let mut child = gw.child;
    let code = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code.code(), Some(0));
}

/// 1,000 concurrent exchanges and a SIGTERM while most are in flight: every
/// exchange a client saw complete is in the audit log (input and output),
/// none twice, and the chain verifies after the exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_event_is_lost_under_1000_concurrent_requests_and_sigterm() {
    use crate::common::client::Http;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    const CONNS: usize = 10;
    const PER_CONN: usize = 100;
    let ca = TestCa::new("ca");
    let origin = Origin::tls(&ca, &["api.openai.com"], Alpn::Both).await;
    let gw = spawn_gateway(&ca, &origin, &[]);
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for c in 0..CONNS {
        let (http, _) = through_proxy(gw.addr, "api.openai.com", &[gw.ca_der()], &[b"h2"]).await;
        let Http::H2(send) = http else {
            panic!("h2 expected")
        };
        for r in 0..PER_CONN {
            let mut send = send.clone();
            let done = done.clone();
            let model = format!("m-{c}-{r}");
            tasks.push(tokio::spawn(async move {
                let body = serde_json::json!({"model": model, "stream": true,
                    "messages": [{"role": "user", "content": "hi"}]});
                let req = http::Request::post("https://api.openai.com/v1/chat/completions")
                    .header("content-type", "application/json")
                    .header("x-test-reply", "a reply of a few chunks")
                    .header("x-test-chunk", "2")
                    .body(http_body_util::Full::new(Bytes::from(body.to_string())))
                    .unwrap();
                let ok = async {
                    send.ready().await.ok()?;
                    let resp = send.send_request(req).await.ok()?;
                    if resp.status() != 200 {
                        return None;
                    }
                    let body = http_body_util::BodyExt::collect(resp.into_body())
                        .await
                        .ok()?
                        .to_bytes();
                    body.ends_with(b"data: [DONE]\n\n").then_some(())
                }
                .await;
                done.fetch_add(1, Ordering::Relaxed);
                ok.map(|_| model)
            }));
        }
    }
    // SIGTERM once a third have finished, with the rest in flight.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while done.load(Ordering::Relaxed) < CONNS * PER_CONN / 3 {
        assert!(std::time::Instant::now() < deadline, "requests stalled");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    gw.signal("-TERM");
    let mut served = Vec::new();
    for t in tasks {
        if let Some(model) = t.await.unwrap() {
            served.push(model);
        }
    }
    let Running {
        mut child, home, ..
    } = gw;
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        served.len() > CONNS * PER_CONN / 3,
        "only {} served",
        served.len()
    );

    eprintln!(
        "served {} of {} (the rest refused by the drain)",
        served.len(),
        CONNS * PER_CONN
    );
    let dir = home.path().join("events");
    let report = keeptrusts::events::verify(&dir).unwrap();
    let (events, _) =
        keeptrusts::events::read_last(&dir, 10_000, &keeptrusts::events::Filters::default())
            .unwrap();
    assert_eq!(report.events as usize, events.len());
    let mut seen: HashMap<(String, &str), usize> = HashMap::new();
    for e in &events {
        if let Some(m) = &e.model {
            *seen.entry((m.to_string(), e.phase.as_str())).or_default() += 1;
        }
    }
    for model in &served {
        for phase in ["input", "output"] {
            assert_eq!(
                seen.get(&(model.clone(), phase)),
                Some(&1),
                "{phase} event of {model}: {} served, {} events",
                served.len(),
                events.len()
            );
        }
    }
    let out = kt(&[
        "events",
        "verify",
        "--data-dir",
        home.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// A bad flag or value gets one line naming it (and what would do, and
/// where help is), exit code 2, as kt's own errors get one line.
#[test]
fn usage_errors_are_one_line() {
    let missing = "the following required arguments were not provided: ";
    let cases: [(&[&str], &[&str]); 9] = [
        (
            &["keys", "create"],
            &[&format!(
                "{missing}--user <NAME> (see `kt keys create --help`)"
            )],
        ),
        (&["keys", "revoke"], &[&format!("{missing}<ID>")]),
        (&["policy", "check"], &[&format!("{missing}<FILE>")]),
        (&["setup"], &[&format!("{missing}<CLIENT>")]),
        (
            &["policy", "check", "--bogus", "x.yaml"],
            &[
                "unexpected argument '--bogus'",
                "(see `kt policy check --help`)",
            ],
        ),
        (
            &["gateway", "run", "--intercept", "some"],
            &["invalid value 'some'", "possible values: llm, all, none"],
        ),
        (
            &["gateway", "run", "--max-connections", "0"],
            &["invalid value '0'", "1..=1048576"],
        ),
        (
            &["gateway", "run", "--max-connections", "4611686018427387904"],
            &["invalid value '4611686018427387904'", "1..=1048576"],
        ),
        (
            &["events", "tail", "--jsn"],
            &["a similar argument exists: '--json'"],
        ),
    ];
    for (args, wanted) in cases {
        let out = kt(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("kt: error: "), "{err}");
        for w in wanted {
            assert!(err.contains(w), "{args:?}: {w} not in {err}");
        }
    }
    // Help is still help.
    let help = kt(&["policy", "check", "--help"]);
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("Usage: kt policy check"));
}

/// A relative `--data-dir` is taken from where kt runs, but the paths kt
/// hands out (the CA for NODE_EXTRA_CA_CERTS, install commands) are read
/// from elsewhere, by editors and other shells: they are absolute.
#[test]
fn paths_from_a_relative_home_are_absolute() {
    let cwd = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_kt"))
            .args(args)
            .current_dir(cwd.path())
            .env_remove("KT_LOG")
            .output()
            .unwrap();
        text(&out.stdout)
    };
    let want = cwd.path().join("rel/certs/kt-ca.pem");
    let init = run(&["ca", "init", "--data-dir", "rel"]);
    assert_eq!(init.trim(), want.to_str().unwrap());
    let shell = run(&["setup", "shell", "--data-dir", "rel"]);
    let node = format!("export NODE_EXTRA_CA_CERTS={}\n", want.display());
    assert!(shell.contains(&node), "{shell}");
    let install = run(&["ca", "install", "--dry-run", "--ca-dir", "rel/certs"]);
    assert!(install.contains(want.to_str().unwrap()), "{install}");
}

/// `kt cache` takes `--storage` as the other stored-state commands do, and
/// says that the cache is not in the store rather than ignoring it.
#[test]
fn cache_commands_take_storage_and_say_where_the_cache_is() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gateway = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let out = kt(&[
        "cache",
        "stats",
        "--storage",
        "postgres://kt@127.0.0.1:1/kt",
        "--gateway",
        &gateway,
    ]);
    let err = text(&out.stderr);
    assert!(err.contains("the cache is not kept in the store"), "{err}");
    assert!(err.contains("cannot connect to the gateway"), "{err}");
    assert!(!err.contains("unexpected argument"), "{err}");
}

/// Tailing a log with nothing in it says why there is nothing (a chain
/// without an audit-logger records nothing), rather than printing nothing.
#[test]
fn tailing_an_empty_log_says_so() {
    let home = tempfile::tempdir().unwrap();
    let out = kt(&[
        "events",
        "tail",
        "--no-follow",
        "--data-dir",
        home.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty());
    let err = text(&out.stderr);
    assert!(
        err.contains("no events recorded") && err.contains("audit-logger"),
        "{err}"
    );
}

/// An error whose message already names its cause (an I/O error) prints
/// that cause once, not again as the next link of the chain.
#[test]
fn an_error_names_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let f = file.to_str().unwrap();
    for args in [
        &["events", "verify", "--data-dir", f][..],
        &["events", "tail", "--no-follow", "--data-dir", f],
        &["gateway", "run", "--listen", "127.0.0.1:0", "--data-dir", f],
    ] {
        let out = kt(args);
        assert!(!out.status.success(), "{args:?}");
        let err = text(&out.stderr);
        assert!(err.starts_with("kt: error: "), "{args:?}: {err}");
        assert_eq!(err.matches("(os error").count(), 1, "{args:?}: {err}");
    }
}

/// Logs read from a pipe (docker, journald, a redirected file) carry no
/// ANSI colour codes: kt colours them only on a terminal.
#[test]
fn logs_to_a_pipe_have_no_colour_codes() {
    let home = tempfile::tempdir().unwrap();
    let events = home.path().join("events");
    std::fs::create_dir(&events).unwrap();
    // An unreadable line: tail skips it with a logged warning.
    std::fs::write(events.join("2026-11-23.jsonl"), "not json\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kt"))
        .args(["events", "tail", "--no-follow", "--data-dir"])
        .arg(home.path())
        .env_remove("NO_COLOR")
        .env_remove("KT_LOG")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let err = text(&out.stderr);
    assert!(
        err.contains("skipping an unreadable audit log line"),
        "{err}"
    );
    assert!(!err.contains("\x1b["), "{err:?}");
}

/// The banner says what decides where traffic goes: the hosts the config
/// adds to interception, and a corporate proxy taken from the environment
/// (with the hosts `NO_PROXY` sends direct).
#[tokio::test]
async fn the_banner_names_config_intercept_hosts_and_an_environment_proxy() {
    let ca = TestCa::new("ca");
    let origin = Origin::tls(&ca, &["api.openai.com"], Alpn::Both).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("policy.yaml");
    std::fs::write(&config, "intercept:\n  hosts: [llm.corp.example]\n").unwrap();
    let gw = spawn_gateway_with(
        &ca,
        &origin,
        &["--policy-config".as_ref(), config.as_os_str()],
        &[
            ("HTTPS_PROXY", "http://user:secret@127.0.0.1:9"),
            ("NO_PROXY", "localhost,.corp.example"),
        ],
    );
    let (lines, _home) = gw.stop_and_collect().await;
    let text = lines.join("\n");
    assert!(
        text.contains("intercepting   : LLM hosts and llm.corp.example (intercept.hosts)"),
        "{text}"
    );
    assert!(
        text.contains(
            "upstream proxy : http://127.0.0.1:9 (with credentials), plain http direct; \
             direct to localhost,corp.example (NO_PROXY) (from the environment)"
        ),
        "{text}"
    );
    assert!(!text.contains("secret"), "{text}");
}

/// Guides for a console-managed gateway set KEEPTRUSTS_GATEWAY_TOKEN and
/// KEEPTRUSTS_API_URL; kt has no console, and says so rather than taking
/// them silently.
#[tokio::test]
async fn console_settings_kt_does_not_use_are_named_at_start() {
    let ca = TestCa::new("ca");
    let origin = Origin::tls(&ca, &["api.openai.com"], Alpn::Both).await;
    let gw = spawn_gateway_with(
        &ca,
        &origin,
        &[],
        &[
            ("KEEPTRUSTS_GATEWAY_TOKEN", "gw-key"),
            ("KEEPTRUSTS_API_URL", "https://api.example.com"),
        ],
    );
    let (lines, _home) = gw.stop_and_collect().await;
    let warned = lines
        .iter()
        .find(|l| l.contains("set but not used"))
        .cloned();
    let warned = warned.unwrap_or_else(|| panic!("{lines:?}"));
    assert!(
        warned.contains("KEEPTRUSTS_GATEWAY_TOKEN, KEEPTRUSTS_API_URL")
            && !warned.contains("gw-key"),
        "{warned}"
    );
}
