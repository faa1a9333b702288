//! The JDK's HTTP client (`java.net.http`, JSSE for TLS), the stack of
//! JetBrains IDEs and other JVM tools, through kt as a forward proxy:
//! refused while the JVM's trust store lacks the kt CA, then, with the CA
//! imported by `keytool`, HTTP/1.1 and HTTP/2 chats through the policy
//! chain.
#![allow(clippy::unwrap_used)]

use crate::common::origin::{Alpn, Origin};
use crate::common::{connect_to, steps, verified_events, TestCa, TestGateway};
use keeptrusts::config::PolicyConfig;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

const HOST: &str = "api.openai.com";

/// Runs the JDK client through `gw` with `jvm` options, bounded in time,
/// and returns what it printed.
async fn java(gw: &TestGateway, jvm: Vec<String>, reply: &str, blocked: &str) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/java/LlmClient.java");
    let mut cmd = std::process::Command::new("timeout");
    cmd.arg("60")
        .arg("java")
        .args(jvm)
        .arg(script)
        .arg(gw.addr.to_string())
        .args([HOST, reply, blocked])
        .env_remove("JAVA_TOOL_OPTIONS")
        .env_remove("JDK_JAVA_OPTIONS")
        .env_remove("HTTPS_PROXY")
        .env_remove("HTTP_PROXY");
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let seen: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    assert!(out.status.success(), "{seen}");
    seen
}

/// The text of an OpenAI chat answer: whole JSON, or SSE deltas in order.
fn chat_text(body: &str) -> String {
    if let Ok(whole) = serde_json::from_str::<serde_json::Value>(body) {
        return whole["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
    }
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str::<serde_json::Value>(d).unwrap())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jdk_http_client_reaches_an_llm_through_kt_once_keytool_trusts_the_ca() {
    if !crate::common::probe::programs_present(&["java", "keytool"]) {
        return;
    }
    let ca = TestCa::new("java test CA");
    let origin = Origin::tls(&ca, &[HOST], Alpn::Both).await;
    let config = Arc::new(
        PolicyConfig::parse(crate::common::AUDIT_REDACT_FILTER, Path::new("t.yaml")).unwrap(),
    );
    let mut gw = TestGateway::start(&ca, |s| {
        s.connect_to = vec![connect_to(HOST, 443, origin.addr)];
        s.apply_config(&config);
    })
    .await;
    let reply = "Frost on the window: the kettle hums a single, patient note.";
    let blocked = "about internal-project-zeus";

    // The JDK's own trust store does not hold the kt CA: JSSE refuses the
    // leaf, nothing reaches the origin, and kt counts the refusal. Like
    // Node.js, JSSE hangs up without an alert.
    let seen = java(&gw, Vec::new(), reply, blocked).await;
    let error = seen["error"].as_str().unwrap_or_default();
    assert!(error.contains("SSLHandshakeException"), "{seen}");
    assert_eq!(origin.hits.load(Ordering::SeqCst), 0);
    let metrics = gw.metrics_text().await;
    assert!(
        metrics.contains("kt_client_tls_failures_total{reason=\"closed\"} 1"),
        "{metrics}"
    );

    // Imported with keytool, as a user does for a JDK that does not follow
    // the OS store (the README's line).
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("truststore.p12");
    let imported = std::process::Command::new("keytool")
        .args([
            "-importcert",
            "-noprompt",
            "-alias",
            "keeptrusts-kt",
            "-storetype",
            "PKCS12",
        ])
        .args(["-storepass", "changeit", "-file"])
        .arg(&gw.ca_pem)
        .arg("-keystore")
        .arg(&store)
        .output()
        .unwrap();
    assert!(
        imported.status.success(),
        "{}",
        String::from_utf8_lossy(&imported.stderr)
    );
    let trust = vec![
        format!("-Djavax.net.ssl.trustStore={}", store.display()),
        "-Djavax.net.ssl.trustStorePassword=changeit".to_owned(),
        "-Djavax.net.ssl.trustStoreType=PKCS12".to_owned(),
    ];
    let seen = java(&gw, trust, reply, blocked).await;
    assert!(seen.get("error").is_none(), "{seen}");
    for (name, status, version) in [
        ("streamed", 200, "1.1"),
        ("whole", 200, "1.1"),
        ("refused", 409, "1.1"),
        ("overH2", 200, "2"),
    ] {
        assert_eq!(seen[name]["status"], status, "{name}: {seen}");
        assert_eq!(seen[name]["version"], version, "{name}: {seen}");
        let body = seen[name]["body"].as_str().unwrap();
        if status == 200 {
            assert_eq!(chat_text(body), reply, "{name}: {seen}");
        } else {
            let error: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(error["error"]["code"], "blocked", "{seen}");
        }
    }
    // The streams arrived as events: more than one line each.
    for name in ["streamed", "overH2"] {
        let lines = seen[name]["body"]
            .as_str()
            .unwrap()
            .matches("data: ")
            .count();
        assert!(lines > 2, "{name}: {seen}");
    }
    assert_eq!(
        origin.hits.load(Ordering::SeqCst),
        3,
        "the refused prompt never left kt"
    );

    let events = verified_events(&gw.close_events().await);
    let mut trail = steps(&events);
    trail.sort();
    assert_eq!(
        trail,
        [
            ("input", "block"),
            ("input", "pass"),
            ("input", "pass"),
            ("input", "pass"),
            ("output", "pass"),
            ("output", "pass"),
            ("output", "pass"),
        ]
    );
    let usage: Vec<_> = events
        .iter()
        .filter(|e| e.phase.as_str() == "output")
        .map(|e| (e.tokens_in, e.tokens_out))
        .collect();
    assert!(usage.contains(&(Some(9), Some(4))), "{usage:?}");
}
