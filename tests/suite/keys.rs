//! Access keys end to end: `kt keys` on a real home folder, `407` on the
//! forward proxy and `401`/`403` on the admin routes when keys are
//! required, users and teams on audit events, revocation seen by a running
//! gateway, and the key never reaching an origin or the key file.

use crate::common::client::{self, body_string, read_head, ConnectReply, Http};
use crate::common::origin::{Alpn, Origin};
use crate::common::{connect_to, TestCa, TestGateway};
use base64::Engine as _;
use bytes::Bytes;
use keeptrusts::events::{read_last, Filters};
use keeptrusts::keys::file;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HOST: &str = "api.openai.com";

fn kt(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kt"))
        .args(args)
        .arg("--data-dir")
        .arg(home)
        .env_remove("KEEPTRUSTS_STORAGE")
        .env_remove("KEEPTRUSTS_HOME")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into()
}

/// `kt keys create` through the binary; returns (key, id).
fn create(home: &Path, args: &[&str]) -> (String, String) {
    let mut all = vec!["keys", "create"];
    all.extend_from_slice(args);
    let out = kt(home, &all);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let key = text(&out.stdout).trim().to_string();
    let err = text(&out.stderr);
    let id = err
        .split_whitespace()
        .find(|w| w.starts_with("key_"))
        .unwrap_or_else(|| panic!("no id in {err}"))
        .to_string();
    (key, id)
}

fn basic(user: &str, key: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{key}"));
    format!("Basic {b64}")
}

/// `CONNECT target` with an optional `Proxy-Authorization`.
async fn connect(proxy: SocketAddr, target: &str, auth: Option<&str>) -> (TcpStream, ConnectReply) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let auth = auth
        .map(|a| format!("Proxy-Authorization: {a}\r\n"))
        .unwrap_or_default();
    let req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let reply = read_head(&mut s).await;
    (s, reply)
}

fn chat() -> Bytes {
    Bytes::from(
        serde_json::json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
            .to_string(),
    )
}

/// An absolute-form request through the proxy on a fresh connection;
/// returns the raw response.
async fn absolute(proxy: SocketAddr, url: &str, auth: Option<&str>) -> String {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let host = url.split('/').nth(2).unwrap();
    let auth = auth
        .map(|a| format!("Proxy-Authorization: {a}\r\n"))
        .unwrap_or_default();
    let req = format!("GET {url} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// GET on an admin route with an optional Bearer key.
async fn admin_get(
    gw: SocketAddr,
    path: &str,
    key: Option<&str>,
) -> http::Response<hyper::body::Incoming> {
    let tcp = TcpStream::connect(gw).await.unwrap();
    let mut http = Http::over(tcp, false).await;
    let mut req = http::Request::builder()
        .uri(path)
        .header("host", gw.to_string());
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    http.request(req.body(http_body_util::Full::new(Bytes::new())).unwrap())
        .await
}

#[test]
fn keys_commands_create_list_and_revoke_without_storing_keys() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let (dev, dev_id) = create(h, &["--user", "dev1", "--team", "platform"]);
    let (ops, ops_id) = create(h, &["--user", "ops", "--admin"]);
    for k in [&dev, &ops] {
        assert!(k.starts_with("kt_") && k.len() == 43, "{k}");
        assert!(k[3..].bytes().all(|b| b.is_ascii_alphanumeric()), "{k}");
    }
    assert_ne!(dev, ops);

    let stored = std::fs::read_to_string(h.join("keys.json")).unwrap();
    assert!(!stored.contains(&dev[3..]) && !stored.contains(&ops[3..]));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(h.join("keys.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "keys.json is private");
    }

    let list = kt(h, &["keys", "list"]);
    assert!(list.status.success(), "{}", text(&list.stderr));
    let table = text(&list.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0]
        .split_whitespace()
        .eq(["ID", "USER", "TEAM", "ADMIN", "CREATED", "STATUS"]));
    assert!(
        lines[1].starts_with(&dev_id)
            && lines[1].contains("platform")
            && lines[1].ends_with("active")
    );
    assert!(lines[2].starts_with(&ops_id) && lines[2].contains(" yes "));
    assert!(!table.contains(&dev[3..]));

    // Unknown id: exit 1 and a clear line.
    let bad = kt(h, &["keys", "revoke", "key_000000000000"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        text(&bad.stderr).contains("no access key with id key_000000000000"),
        "{}",
        text(&bad.stderr)
    );

    let rev = kt(h, &["keys", "revoke", &dev_id]);
    assert!(rev.status.success(), "{}", text(&rev.stderr));
    let json = kt(h, &["keys", "list", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["id"], dev_id.as_str());
    assert_eq!(rows[0]["status"], "revoked");
    assert!(rows[0]["revoked_at"].is_string());
    assert_eq!(rows[1]["admin"], true);
    assert_eq!(rows[1]["team"], serde_json::Value::Null);
    let raw = text(&json.stdout);
    assert!(!raw.contains("hash") && !raw.contains("salt") && !raw.contains(&ops[3..]));

    // --storage: a folder holds its own keys.json; an unreachable database
    // is a clear error.
    let other = tempfile::tempdir().unwrap();
    let out = kt(
        h,
        &[
            "keys",
            "create",
            "--user",
            "u",
            "--storage",
            other.path().to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(other.path().join("keys.json").is_file());
    let pg = kt(
        h,
        &["keys", "list", "--storage", "postgres://kt@127.0.0.1:1/kt"],
    );
    assert_eq!(pg.status.code(), Some(1));
    assert!(
        text(&pg.stderr).contains("cannot open the shared store")
            && text(&pg.stderr).contains("127.0.0.1:1"),
        "{}",
        text(&pg.stderr)
    );
    // Bad names are refused before anything is written.
    let out = kt(h, &["keys", "create", "--user", "two words"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(kt(h, &["keys", "list", "--json"]).stdout, json.stdout);
}

#[tokio::test]
async fn the_proxy_refuses_requests_without_a_valid_key_and_attributes_the_rest() {
    let ca = TestCa::new("keys CA");
    let origin = Origin::tls(&ca, &[HOST, "web.test"], Alpn::Both).await;
    let plain = Origin::plain().await;
    let mut gw = TestGateway::start(&ca, |s| {
        s.auth_required = Some(true);
        s.connect_to.push(connect_to(HOST, 443, origin.addr));
        s.connect_to.push(connect_to("web.test", 443, origin.addr));
        s.connect_to.push(connect_to("plain.test", 80, plain.addr));
    })
    .await;
    let keys = gw.home.path().join("keys.json");
    let dev = file::create(&keys, "dev1", Some("platform"), false)
        .unwrap()
        .key;
    let store = gw.gateway.auth().store().unwrap();
    assert!(store.refresh(), "the new key file is read");

    // CONNECT: no key, a wrong key, a malformed header.
    let other = keeptrusts::keys::key::generate();
    for auth in [
        None,
        Some(basic("dev1", &other)),
        Some("Basic !!".to_string()),
    ] {
        let (_, reply) = connect(gw.addr, &format!("{HOST}:443"), auth.as_deref()).await;
        assert_eq!(reply.status, 407, "{auth:?}: {reply:?}");
        assert!(
            reply
                .head
                .to_ascii_lowercase()
                .contains("proxy-authenticate: basic realm=\"kt\""),
            "{}",
            reply.head
        );
        assert!(reply.body.contains("kt keys create"), "{}", reply.body);
        assert!(!reply.body.contains(&other), "the key is not echoed");
    }
    // Blind tunnels need a key too.
    let (_, reply) = connect(gw.addr, "example.invalid:443", None).await;
    assert_eq!(reply.status, 407);

    // A good key: the intercepted session is the key's user for every
    // request in it.
    let (s, reply) = connect(
        gw.addr,
        &format!("{HOST}:443"),
        Some(&basic("anyname", &dev)),
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let tls = client::tls(s, HOST, &[gw.ca_der()], &[b"h2"])
        .await
        .unwrap();
    let mut http = Http::over(tls, true).await;
    for _ in 0..2 {
        let resp = http
            .send("POST", HOST, "/v1/chat/completions", chat())
            .await;
        assert_eq!(resp.status(), 200);
        let _ = body_string(resp).await;
    }
    drop(http);

    // Absolute-form, plain and TLS upstream: refused without a key; with
    // one, forwarded without Proxy-Authorization.
    for url in ["http://plain.test/echo", "https://web.test/echo"] {
        let out = absolute(gw.addr, url, None).await;
        assert!(out.starts_with("HTTP/1.1 407"), "{url}: {out}");
        assert!(
            out.to_ascii_lowercase()
                .contains("proxy-authenticate: basic"),
            "{out}"
        );
        let out = absolute(gw.addr, url, Some(&basic("dev1", &dev))).await;
        assert!(out.starts_with("HTTP/1.1 200"), "{url}: {out}");
        let body = &out[out.find("\r\n\r\n").unwrap() + 4..];
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        let headers = json["headers"].as_object().unwrap();
        assert!(
            !headers.contains_key("proxy-authorization"),
            "{url}: {json}"
        );
        assert!(
            !body.contains(&dev[3..]),
            "{url}: the key reached the origin"
        );
    }

    let dir = gw.close_events().await;
    let (events, _) = read_last(&dir, 100, &Filters::default()).unwrap();
    assert_eq!(events.len(), 4, "two exchanges, input and output each");
    for e in &events {
        assert_eq!(e.user.as_deref(), Some("dev1"), "{e:?}");
        assert_eq!(e.team.as_deref(), Some("platform"), "{e:?}");
    }
    let log: String = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert!(!log.contains(&dev[3..]), "the key reached the audit log");
}

/// Polls `check` until it is true, for at most 10 s.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "not within 10 s: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_running_gateway_picks_up_created_and_revoked_keys() {
    let ca = TestCa::new("keys CA");
    let origin = Origin::tls(&ca, &[HOST], Alpn::Both).await;
    let gw = TestGateway::start(&ca, |s| {
        s.auth_required = Some(true);
        s.connect_to.push(connect_to(HOST, 443, origin.addr));
    })
    .await;
    let home = gw.home.path().to_path_buf();
    let addr = gw.addr;
    let status = |key: String| async move {
        connect(addr, &format!("{HOST}:443"), Some(&basic("dev1", &key)))
            .await
            .1
            .status
    };

    // Created while the gateway runs: accepted without a restart.
    let (key, id) = tokio::task::spawn_blocking({
        let home = home.clone();
        move || create(&home, &["--user", "dev1"])
    })
    .await
    .unwrap();
    eventually("the new key is accepted", async || {
        status(key.clone()).await == 200
    })
    .await;

    // Sessions opened with the key before it is revoked, one per protocol.
    let mut sessions = Vec::new();
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let (s, reply) = connect(addr, &format!("{HOST}:443"), Some(&basic("dev1", &key))).await;
        assert_eq!(reply.status, 200);
        let tls = client::tls(s, HOST, &[gw.ca_der()], &[alpn]).await.unwrap();
        let mut http = Http::over(tls, alpn == b"h2").await;
        let resp = http
            .send("POST", HOST, "/v1/chat/completions", chat())
            .await;
        assert_eq!(resp.status(), 200);
        let _ = body_string(resp).await;
        sessions.push(http);
    }

    // Revoked while the gateway runs: refused without a restart.
    let out = tokio::task::spawn_blocking({
        let home = home.clone();
        move || kt(&home, &["keys", "revoke", &id])
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    eventually("the revoked key is refused", async || {
        status(key.clone()).await == 407
    })
    .await;
    // And inside the sessions it opened: the next request is refused.
    for http in &mut sessions {
        let resp = http
            .send("POST", HOST, "/v1/chat/completions", chat())
            .await;
        assert_eq!(resp.status(), 403, "h2: {}", http.is_h2());
        assert_eq!(resp.headers()["x-kt-error"], "key_revoked");
    }
    assert_eq!(origin.hits.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test]
async fn admin_routes_need_an_admin_key_when_keys_are_required() {
    let ca = TestCa::new("keys CA");
    let origin = Origin::tls(&ca, &[HOST], Alpn::Both).await;
    let gw = TestGateway::start(&ca, |s| {
        s.auth_required = Some(true);
        s.connect_to.push(connect_to(HOST, 443, origin.addr));
    })
    .await;
    let keys = gw.home.path().join("keys.json");
    let dev = file::create(&keys, "dev1", None, false).unwrap().key;
    let ops = file::create(&keys, "ops", Some("sre"), true).unwrap().key;
    assert!(gw.gateway.auth().store().unwrap().refresh());

    for path in ["/_kt/events", "/_kt/", "/_kt/anything"] {
        let resp = admin_get(gw.addr, path, None).await;
        assert_eq!(resp.status(), 401, "{path}");
        assert_eq!(resp.headers()["www-authenticate"], "Bearer realm=\"kt\"");
        assert_eq!(resp.headers()["content-type"], "application/json");
        let json: serde_json::Value = serde_json::from_str(&body_string(resp).await).unwrap();
        assert_eq!(json["error"]["type"], "authentication_error");
        let resp = admin_get(gw.addr, path, Some("kt_wrong")).await;
        assert_eq!(resp.status(), 401, "{path}");
        let resp = admin_get(gw.addr, path, Some(&dev)).await;
        assert_eq!(resp.status(), 403, "{path}: not an admin key");
    }
    let resp = admin_get(gw.addr, "/_kt/events?n=0", Some(&ops)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    drop(resp);

    // Probes, metrics and the CA stay open.
    for path in ["/healthz", "/readyz", "/metrics", "/_kt/ca.pem"] {
        assert_eq!(admin_get(gw.addr, path, None).await.status(), 200, "{path}");
    }

    // `kt events tail --gateway` sends the key as a Bearer token.
    let url = format!("http://{}", gw.addr);
    let tail = |key: Option<String>| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = Command::new(env!("CARGO_BIN_EXE_kt"));
            c.args([
                "events",
                "tail",
                "--gateway",
                &url,
                "-n",
                "5",
                "--no-follow",
            ])
            .env_remove("KEEPTRUSTS_ACCESS_KEY");
            if let Some(k) = key {
                c.env("KEEPTRUSTS_ACCESS_KEY", k);
            }
            c.output().unwrap()
        })
    };
    let out = tail(None).await.unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("401"), "{}", text(&out.stderr));
    let out = tail(Some(ops.clone())).await.unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// An open `/_kt/events` feed ends once its admin key is revoked: a leaked
/// key cannot keep reading the audit trail past its revocation.
#[tokio::test]
async fn an_open_feed_ends_when_its_admin_key_is_revoked() {
    use http_body_util::BodyExt;
    let ca = TestCa::new("keys CA");
    let gw = TestGateway::start(&ca, |s| s.auth_required = Some(true)).await;
    let keys = gw.home.path().join("keys.json");
    let ops = file::create(&keys, "ops", None, true).unwrap();
    let other = file::create(&keys, "ops2", None, true).unwrap();
    assert!(gw.gateway.auth().store().unwrap().refresh());
    let mut feeds = Vec::new();
    for key in [&ops.key, &other.key] {
        let resp = admin_get(gw.addr, "/_kt/events?n=0", Some(key)).await;
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert!(first.starts_with(b": end of history"), "{first:?}");
        feeds.push(body);
    }
    file::revoke(&keys, &ops.record.id).unwrap();
    assert!(gw.gateway.auth().store().unwrap().refresh());
    let mut revoked = feeds.remove(0);
    let rest = tokio::time::timeout(Duration::from_secs(10), async {
        let mut rest = Vec::new();
        while let Some(Ok(f)) = revoked.frame().await {
            rest.extend_from_slice(&f.into_data().unwrap_or_default());
        }
        rest
    })
    .await
    .expect("the feed of a revoked key stayed open");
    assert!(
        String::from_utf8_lossy(&rest).contains("access revoked"),
        "{rest:?}"
    );
    // The other admin's feed is still open.
    let still = tokio::time::timeout(Duration::from_millis(1500), feeds[0].frame()).await;
    assert!(still.is_err(), "the feed of a valid key ended: {still:?}");
}

/// A blind tunnel opened with a key is closed once the key is revoked, as
/// an intercepted session refuses its next request.
#[tokio::test]
async fn a_tunnel_ends_when_its_key_is_revoked() {
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = echo.accept().await.unwrap();
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    });
    let ca = TestCa::new("keys CA");
    let gw = TestGateway::start(&ca, |s| {
        s.auth_required = Some(true);
        s.connect_to.push(connect_to("example.org", 443, echo_addr));
    })
    .await;
    let keys = gw.home.path().join("keys.json");
    let dev = file::create(&keys, "dev1", None, false).unwrap();
    assert!(gw.gateway.auth().store().unwrap().refresh());
    let auth = basic("dev1", &dev.key);
    let (mut s, reply) = connect(gw.addr, "example.org:443", Some(&auth)).await;
    assert_eq!(reply.status, 200);
    s.write_all(b"ping").await.unwrap();
    let mut echoed = [0u8; 4];
    s.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"ping");
    file::revoke(&keys, &dev.record.id).unwrap();
    assert!(gw.gateway.auth().store().unwrap().refresh());
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the tunnel outlived its key's revocation");
    assert!(rest.is_empty(), "{rest:?}");
}

#[tokio::test]
async fn without_required_keys_valid_ones_still_name_the_user() {
    let ca = TestCa::new("keys CA");
    let origin = Origin::tls(&ca, &[HOST], Alpn::Both).await;
    // Loopback and no auth setting: keys are optional.
    let mut gw = TestGateway::start(&ca, |s| {
        s.connect_to.push(connect_to(HOST, 443, origin.addr));
    })
    .await;
    assert!(!gw.gateway.auth().required());
    let keys = gw.home.path().join("keys.json");
    let dev = file::create(&keys, "dev1", Some("platform"), false)
        .unwrap()
        .key;
    assert!(gw.gateway.auth().store().unwrap().refresh());

    let bogus = keeptrusts::keys::key::generate();
    for auth in [None, Some(basic("dev1", &dev)), Some(basic("dev1", &bogus))] {
        let (s, reply) = connect(gw.addr, &format!("{HOST}:443"), auth.as_deref()).await;
        assert_eq!(reply.status, 200, "{auth:?}");
        let tls = client::tls(s, HOST, &[gw.ca_der()], &[b"http/1.1"])
            .await
            .unwrap();
        let mut http = Http::over(tls, false).await;
        let resp = http
            .send("POST", HOST, "/v1/chat/completions", chat())
            .await;
        assert_eq!(resp.status(), 200);
        let _ = body_string(resp).await;
    }
    // The admin feed is open too.
    assert_eq!(
        admin_get(gw.addr, "/_kt/events?n=0", None).await.status(),
        200
    );

    let dir = gw.close_events().await;
    let (events, _) = read_last(&dir, 100, &Filters::default()).unwrap();
    let users: Vec<Option<&str>> = events
        .iter()
        .filter(|e| e.phase.as_str() == "input")
        .map(|e| e.user.as_deref())
        .collect();
    assert_eq!(
        users,
        [None, Some("dev1"), None],
        "no key, good key, bad key"
    );
}

/// Runs `kt gateway run` until its banner, then kills it; returns stderr.
fn gateway_start_log(
    home: &Path,
    args: &[&str],
) -> (String, Option<SocketAddr>, std::process::Child) {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_kt"))
        .args(["gateway", "run", "--data-dir"])
        .arg(home)
        .args(args)
        .env_remove("HTTPS_PROXY")
        .env_remove("HTTP_PROXY")
        .env("KT_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut log = String::new();
    let mut addr = None;
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        log.push_str(&line);
        log.push('\n');
        if let Some(a) = line.strip_prefix("kt gateway listening on ") {
            addr = a.trim().parse().ok();
        }
        if line.contains("export HTTPS_PROXY") {
            break;
        }
    }
    (log, addr, child)
}

#[tokio::test]
async fn the_gateway_binary_enforces_keys_off_loopback_and_warns_at_start() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path().to_path_buf();
    // Not loopback: keys required by default; none exist yet.
    let (log, addr, mut child) = tokio::task::spawn_blocking({
        let h = h.clone();
        move || gateway_start_log(&h, &["--listen", "0.0.0.0:0"])
    })
    .await
    .unwrap();
    assert!(log.contains("kt keys create --user NAME"), "{log}");
    assert!(
        log.contains("access keys    : required (0 active)"),
        "{log}"
    );
    let port = addr.unwrap().port();
    let local: SocketAddr = ([127, 0, 0, 1], port).into();
    let (_, reply) = connect(local, "example.invalid:443", None).await;
    assert_eq!(reply.status, 407, "no open proxy: {reply:?}");
    child.kill().unwrap();
    child.wait().unwrap();

    // An explicit opt-out off loopback is allowed, with a warning.
    let cfg = h.join("open.yaml");
    std::fs::write(&cfg, "auth:\n  required: false\n").unwrap();
    let (log, _, mut child) = tokio::task::spawn_blocking({
        let h = h.clone();
        let cfg = cfg.to_str().unwrap().to_string();
        move || gateway_start_log(&h, &["--listen", "0.0.0.0:0", "--policy-config", &cfg])
    })
    .await
    .unwrap();
    assert!(log.contains("anyone who can reach this port"), "{log}");
    assert!(!log.contains("kt keys create --user NAME"), "{log}");
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A kt access key sent where a provider key goes, through the proxy (a
/// client set up for the direct API, then pointed at the proxy), is not
/// passed on to the provider; the provider's own keys are.
#[tokio::test]
async fn a_kt_key_in_a_proxied_request_never_reaches_the_provider() {
    let ca = TestCa::new("ca");
    let origin = Origin::tls(&ca, &["api.openai.com"], Alpn::Both).await;
    let gw = TestGateway::start(&ca, |s| {
        s.connect_to = vec![connect_to("api.openai.com", 443, origin.addr)];
    })
    .await;
    let kt_key = format!("kt_{}", "a1".repeat(20));
    let cases = [
        ("authorization", format!("Bearer {kt_key}"), false),
        ("x-api-key", kt_key.clone(), false),
        ("authorization", "Bearer sk-provider-key".to_string(), true),
        ("x-api-key", "sk-ant-provider".to_string(), true),
    ];
    let (mut http, _) =
        client::through_proxy(gw.addr, "api.openai.com", &[gw.ca_der()], &[b"h2"]).await;
    for (name, value, passes) in cases {
        let req = http::Request::post("https://api.openai.com/v1/chat/completions")
            .header("content-type", "application/json")
            .header(name, &value)
            .body(http_body_util::Full::new(Bytes::from_static(
                br#"{"model":"m","messages":[]}"#,
            )))
            .unwrap();
        let resp = http.request(req).await;
        assert_eq!(resp.status(), 200);
        drop(body_string(resp).await);
        let (_, headers) = origin.last_request.lock().unwrap().clone().unwrap();
        let got = headers.get(name).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(got, passes.then_some(value), "{name}");
    }
}
