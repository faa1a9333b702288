//! Chromium's network stack, the one Electron apps such as VS Code use,
//! through kt as its HTTP proxy: once the `certutil` commands `kt ca install`
//! prints have put the kt CA in the user's NSS database, an LLM host is
//! intercepted over HTTP/2 and a host kt does not intercept is tunnelled with
//! the origin's own certificate; without the CA, or with an earlier kt CA
//! under its name, the browser refuses kt's certificate, kt counts the
//! refusal and `kt doctor` reports it. A page's own `fetch` streams a chat
//! through the policy chain: redacted, blocked, recorded with its usage;
//! its WebSocket is bridged and recorded, or refused where a policy fails
//! closed.
#![allow(clippy::unwrap_used)]

use crate::common::origin::{Alpn, Origin};
use crate::common::probe::{programs_present, wait_until};
use crate::common::{
    chromium, connect_to, doctor, doctor_check, steps, verified_events, TestCa, TestGateway,
};
use keeptrusts::config::PolicyConfig;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

const LLM_HOST: &str = "api.openai.com";
const OTHER_HOST: &str = "git.example.test";

/// Creates an empty NSS database where Chromium looks for it under `home`.
fn new_nss_db(home: &Path) -> String {
    let dir = home.join(".pki/nssdb");
    std::fs::create_dir_all(&dir).unwrap();
    let db = format!("sql:{}", dir.display());
    let out = Command::new("certutil")
        .args(["-N", "-d", &db, "--empty-password"])
        .output()
        .unwrap();
    assert!(out.status.success(), "certutil -N: {out:?}");
    db
}

/// Runs the `certutil` lines of `kt ca install --dry-run` (as a user would
/// paste them) for the CA in `ca_dir`, with `home` as the user's home.
fn install_in_nss(home: &Path, ca_dir: &Path) -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_kt"))
        .args(["ca", "install", "--dry-run", "--ca-dir"])
        .arg(ca_dir)
        .env("HOME", home)
        .env_remove("SUDO_USER")
        .output()
        .unwrap();
    assert!(out.status.success(), "kt ca install --dry-run: {out:?}");
    let plan = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<String> = plan
        .lines()
        .filter(|l| l.starts_with("certutil "))
        .map(str::to_owned)
        .collect();
    assert!(!lines.is_empty(), "no NSS step in the plan:\n{plan}");
    for line in &lines {
        let run = Command::new("sh").args(["-c", line]).output().unwrap();
        assert!(run.status.success(), "`{line}`: {run:?}");
    }
    lines
}

/// What `kt doctor` says of the kt CA in the NSS database under `home`
/// (its `ca_nss_trust` check's status).
async fn doctor_nss(gw: &TestGateway, home: &Path) -> String {
    let url = format!("http://{}", gw.addr);
    let args = ["--no-node", "--json", "--gateway", &url];
    let out = doctor(gw.home.path(), &args, &[("HOME", home.to_str().unwrap())]).await;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("kt doctor --json: {e}: {out:?}"));
    doctor_check(&report, "ca_nss_trust")["status"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Headless Chromium, with `home` as its user's home (so its NSS
/// database) and `proxy` as its only way out, prints the page at `url`
/// (after its scripts' requests have finished).
async fn chromium_through(proxy: std::net::SocketAddr, home: &Path, url: &str) -> String {
    let args = vec![
        "--disable-background-networking".into(),
        "--virtual-time-budget=10000".into(),
        "--dump-dom".into(),
        format!("--proxy-server=http://{proxy}"),
    ];
    chromium::run(args, url.to_owned(), Some(home.to_path_buf())).await
}

/// The sum of the `name` series whose labels include `labels`, from a
/// Prometheus text page (0 when there is none).
fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let scrape =
        prometheus_parse::Scrape::parse(metrics.lines().map(|l| Ok(l.to_owned()))).unwrap();
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("{name} is not a plain number"),
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_trusts_kt_after_ca_install_and_speaks_h2_through_it() {
    if !programs_present(&["chromium", "certutil"]) {
        return;
    }
    let test_ca = TestCa::new("browser test CA");
    let origin = Origin::tls(&test_ca, &[LLM_HOST, OTHER_HOST], Alpn::Both).await;
    let gw = TestGateway::start(&test_ca, |s| {
        s.connect_to = vec![
            connect_to(LLM_HOST, 443, origin.addr),
            connect_to(OTHER_HOST, 443, origin.addr),
        ];
    })
    .await;

    let hits = || origin.hits.load(std::sync::atomic::Ordering::SeqCst);

    // Without the kt CA, Chromium refuses the minted certificate: no page,
    // nothing reaches the origin, and kt counts a client TLS failure.
    let stranger = tempfile::tempdir().unwrap();
    new_nss_db(stranger.path());
    let llm_echo = format!("https://{LLM_HOST}/echo");
    let refused = chromium_through(gw.addr, stranger.path(), &llm_echo).await;
    assert!(
        !refused.contains("\"method\""),
        "loaded without the kt CA:\n{refused}"
    );
    assert_eq!(hits(), 0, "a refused connection reached the origin");
    let metrics = gw.metrics_text().await;
    let failures = "kt_client_tls_failures_total";
    let rejected = sample(&metrics, failures, &[("reason", "certificate_rejected")]);
    assert!(
        rejected >= 1.0,
        "no certificate_rejected counted:\n{metrics}"
    );
    let refusals = sample(&metrics, failures, &[]);
    // `kt doctor` sees the same: the CA is missing from that database.
    assert_eq!(doctor_nss(&gw, stranger.path()).await, "fail");

    // A database that holds an earlier kt CA under the same name (the data
    // dir was replaced since it was installed): Chromium refuses this CA's
    // leaves as before, and `kt doctor` says which certificate is there.
    let home = tempfile::tempdir().unwrap();
    let db = new_nss_db(home.path());
    let earlier = tempfile::tempdir().unwrap();
    let init = Command::new(env!("CARGO_BIN_EXE_kt"))
        .args(["ca", "init", "--ca-dir"])
        .arg(earlier.path())
        .output()
        .unwrap();
    assert!(init.status.success(), "{init:?}");
    let name = keeptrusts::tls::ca::CA_COMMON_NAME;
    let out = Command::new("certutil")
        .args(["-A", "-d", &db, "-n", name, "-t", "C,,", "-i"])
        .arg(String::from_utf8(init.stdout).unwrap().trim())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(doctor_nss(&gw, home.path()).await, "fail");
    let stale = chromium_through(gw.addr, home.path(), &llm_echo).await;
    assert!(
        !stale.contains("\"method\""),
        "loaded with another CA:\n{stale}"
    );
    assert_eq!(hits(), 0);
    let metrics = gw.metrics_text().await;
    let refused_before = refusals;
    let refusals = sample(&metrics, failures, &[]);
    assert!(
        refusals > refused_before,
        "the refusal is counted:\n{metrics}"
    );

    // `kt ca install`'s commands replace it with this CA: the LLM host
    // loads over HTTP/2 end to end (kt mirrors the client's version where
    // the upstream speaks it).
    let plan = install_in_nss(home.path(), gw.ca_pem.parent().unwrap());
    assert!(
        plan[0].starts_with("certutil -D"),
        "the earlier CA is removed first: {plan:?}"
    );
    assert_eq!(doctor_nss(&gw, home.path()).await, "ok");
    let page = chromium_through(gw.addr, home.path(), &llm_echo).await;
    assert!(
        page.contains("\"method\":\"GET\""),
        "no echo through kt:\n{page}"
    );
    assert!(page.contains("\"version\":\"HTTP/2.0\""), "{page}");
    let models_url = format!("https://{LLM_HOST}/v1/models");
    let models = chromium_through(gw.addr, home.path(), &models_url).await;
    assert!(models.contains("gpt-4.1"), "{models}");

    // A host kt does not intercept is tunnelled blind: the browser sees the
    // origin's own certificate, which it refuses while it knows only the kt
    // CA and accepts once the origin's CA (standing in for the public
    // roots) is trusted too. kt minted for the LLM host only.
    let other_echo = format!("https://{OTHER_HOST}/echo");
    let before = hits();
    let untrusted = chromium_through(gw.addr, home.path(), &other_echo).await;
    assert!(
        !untrusted.contains("\"method\""),
        "kt intercepted {OTHER_HOST}:\n{untrusted}"
    );
    assert_eq!(
        hits(),
        before,
        "a refused tunnel reached the origin's routes"
    );
    let out = Command::new("certutil")
        .args(["-A", "-d", &db, "-n", "test origin CA", "-t", "C,,", "-i"])
        .arg(&test_ca.pem_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let tunnelled = chromium_through(gw.addr, home.path(), &other_echo).await;
    assert!(
        tunnelled.contains("\"method\":\"GET\""),
        "no echo through the tunnel:\n{tunnelled}"
    );
    assert!(hits() > before);
    let metrics = gw.metrics_text().await;
    assert_eq!(
        sample(&metrics, "kt_cert_cache_hosts", &[]),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, failures, &[]),
        refusals,
        "the trusted visits and the tunnel added no client TLS failure:\n{metrics}"
    );
}

/// Opens `url` (a page of `origin`) in Chromium through `gw` and returns
/// the first thing the page reported to the origin's `/report`. A page
/// that reports waits for its own requests, where `--dump-dom`'s virtual
/// time may print it before a slow `fetch` has finished.
async fn page_report(gw: &TestGateway, origin: &Origin, home: &Path, url: String) -> String {
    let args = vec![
        "--disable-background-networking".into(),
        format!("--proxy-server=http://{}", gw.addr),
    ];
    let _browser = chromium::open(args, url, Some(home.to_path_buf()));
    let reported = || async { !origin.reports.lock().unwrap().is_empty() };
    assert!(
        wait_until(Duration::from_secs(60), reported).await,
        "the page reported nothing"
    );
    origin.reports.lock().unwrap().remove(0)
}

/// Opens the origin's WebSocket page in Chromium through `gw`: a socket
/// to OpenAI's Realtime path (answered with real frames), one message
/// each way; returns what the page reported once Chromium has closed.
async fn websocket_page(gw: &TestGateway, origin: &Origin, home: &Path) -> String {
    let to = "%2Fv1%2Frealtime%3Fmodel%3Dgpt-realtime%26frames";
    let url = format!("https://{LLM_HOST}/ws.html?to={to}");
    page_report(gw, origin, home, url).await
}

/// A GitHub token built at run time, so no secret-shaped literal sits in
/// the repository.
fn github_token() -> String {
    let body: String = (0..36).map(|i| char::from(b"Qw3rTy7u"[i % 8])).collect();
    format!("ghp_{body}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_in_chromium_streams_a_chat_through_the_policy_chain() {
    if !programs_present(&["chromium", "certutil"]) {
        return;
    }
    const CONFIG: &str = crate::common::AUDIT_REDACT_FILTER;
    let test_ca = TestCa::new("browser chat CA");
    let origin = Origin::tls(&test_ca, &[LLM_HOST], Alpn::Both).await;
    let config = Arc::new(PolicyConfig::parse(CONFIG, Path::new("t.yaml")).unwrap());
    let mut gw = TestGateway::start(&test_ca, |s| {
        s.connect_to = vec![connect_to(LLM_HOST, 443, origin.addr)];
        s.apply_config(&config);
    })
    .await;
    let home = tempfile::tempdir().unwrap();
    new_nss_db(home.path());
    install_in_nss(home.path(), gw.ca_pem.parent().unwrap());

    // The page's own requests: a streamed chat whose prompt carries a
    // token, then one the content filter blocks.
    let token = github_token();
    let reply = "Streaming through kt, one small delta after another, to the end.";
    let query = format!(
        "prompt=deploy%20with%20{token}&reply={reply}&blocked=about%20internal-project-zeus"
    )
    .replace(' ', "%20");
    let url = format!("https://{LLM_HOST}/chat.html?{query}");
    let report = page_report(&gw, &origin, home.path(), url).await;
    let out: serde_json::Value = serde_json::from_str(&report)
        .unwrap_or_else(|e| panic!("the page reported no result ({e}): {report}"));
    let first = &out["first"];
    assert_eq!(first["status"], 200, "{out}");
    assert_eq!(
        first["text"], reply,
        "the stream's deltas, whole and in order"
    );
    assert_eq!(first["rest"], "", "the stream ended on an event boundary");
    assert_eq!(out["second"]["status"], 409, "{out}");

    let sent = origin.last_body.lock().unwrap().clone().unwrap();
    let sent = String::from_utf8_lossy(&sent);
    assert!(
        !sent.contains(&token),
        "the token reached the provider: {sent}"
    );
    assert!(sent.contains("deploy with "), "{sent}");

    // A WebSocket to an LLM endpoint cannot be inspected, and redaction
    // fails closed: the browser sees the upgrade refused.
    let ws = websocket_page(&gw, &origin, home.path()).await;
    assert_eq!(ws, "closed: 1006");

    let events = verified_events(&gw.close_events().await);
    assert_eq!(
        steps(&events),
        [
            ("input", "redact"),
            ("output", "pass"),
            ("input", "block"),
            ("input", "block")
        ]
    );
    assert_eq!(
        events[3].reason.as_deref(),
        Some("not inspected: websocket; the policy fails closed")
    );
    let output = &events[1];
    assert_eq!(
        (output.status, output.tokens_in, output.tokens_out),
        (Some(200), Some(12), Some(7))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_from_chromium_is_bridged_and_recorded() {
    if !programs_present(&["chromium", "certutil"]) {
        return;
    }
    let test_ca = TestCa::new("browser websocket CA");
    let origin = Origin::tls(&test_ca, &[LLM_HOST], Alpn::Both).await;
    let mut gw = TestGateway::start(&test_ca, |s| {
        s.connect_to = vec![connect_to(LLM_HOST, 443, origin.addr)];
    })
    .await;
    let home = tempfile::tempdir().unwrap();
    new_nss_db(home.path());
    install_in_nss(home.path(), gw.ca_pem.parent().unwrap());

    // Chromium opens its WebSocket on a connection of its own over
    // HTTP/1.1; kt bridges the upgrade and the frames both ways.
    let ws = websocket_page(&gw, &origin, home.path()).await;
    assert_eq!(ws, "message: echo: hello over kt");

    // The answer's event is written when the session ends, which the
    // browser's exit (above) sets off: the drain waits for the bridge.
    assert!(
        gw.drain(Duration::from_secs(30)).await,
        "the WebSocket bridge outlived the browser"
    );
    let events = verified_events(&gw.close_events().await);
    assert_eq!(steps(&events), [("input", "pass"), ("output", "pass")]);
    let why = Some("not inspected: websocket");
    assert_eq!(
        (events[0].reason.as_deref(), events[0].path.as_deref()),
        (why, Some("/v1/realtime"))
    );
    assert_eq!(
        (events[1].reason.as_deref(), events[1].status),
        (why, Some(101))
    );
}
