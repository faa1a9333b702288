//! The JDK's HTTP client (`java.net.http`, JSSE for TLS), the stack of
//! JetBrains IDEs and other JVM tools, through kt as a forward proxy:
//! refused while the JVM's trust store lacks the kt CA, then, with the CA
//! imported by `keytool`, HTTP/1.1 and HTTP/2 chats through the policy
//! chain.
#![allow(clippy::unwrap_used)]

use crate::common::origin::{Alpn, Origin};
use crate::common::{connect_to, verified_events, TestCa, TestGateway};
use keeptrusts::config::PolicyConfig;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

const HOST: &str = "api.openai.com";

const REPLY: &str = "Frost on the window: the kettle hums a single, patient note.";
const BLOCKED: &str = "about internal-project-zeus";

/// Runs the JDK client through `gw` with `jvm` options (and `login`, a
/// user and key for the proxy), bounded in time, and returns what it
/// printed.
async fn java(gw: &TestGateway, jvm: &[String], login: &[&str]) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/java/LlmClient.java");
    let mut cmd = std::process::Command::new("timeout");
    cmd.arg("60")
        .arg("java")
        .args(jvm)
        .arg(script)
        .arg(gw.addr.to_string())
        .args([HOST, REPLY, BLOCKED])
        .args(login)
        .env_remove("JAVA_TOOL_OPTIONS")
        .env_remove("JDK_JAVA_OPTIONS")
        .env_remove("HTTPS_PROXY")
        .env_remove("HTTP_PROXY");
    crate::common::client_json(cmd).await
}

/// An origin for the LLM host and a gateway in front of it with the
/// redact-and-filter chain, asking for keys or not.
async fn gateway(keys_required: bool) -> (TestCa, Origin, TestGateway) {
    let ca = TestCa::new("java test CA");
    let origin = Origin::tls(&ca, &[HOST], Alpn::Both).await;
    let config = Arc::new(
        PolicyConfig::parse(crate::common::AUDIT_REDACT_FILTER, Path::new("t.yaml")).unwrap(),
    );
    let gw = TestGateway::start(&ca, |s| {
        s.auth_required = Some(keys_required);
        s.connect_to = vec![connect_to(HOST, 443, origin.addr)];
        s.apply_config(&config);
    })
    .await;
    (ca, origin, gw)
}

/// The text of an OpenAI chat answer: whole JSON, or SSE deltas in order.
fn chat_text(body: &str) -> String {
    if let Ok(whole) = serde_json::from_str::<serde_json::Value>(body) {
        return whole["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
    }
    crate::common::sse_text(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jdk_http_client_reaches_an_llm_through_kt_once_keytool_trusts_the_ca() {
    if !crate::common::probe::programs_present(&["java", "keytool"]) {
        return;
    }
    let (_ca, origin, mut gw) = gateway(false).await;
    // The JDK's own trust store does not hold the kt CA: JSSE refuses the
    // leaf, nothing reaches the origin, and kt counts the refusal. Like
    // Node.js, JSSE hangs up without an alert.
    let seen = java(&gw, &[], &[]).await;
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
    let (_store, trust) = truststore(&gw);
    let seen = java(&gw, &trust, &[]).await;
    assert_three_chats_and_a_block(&seen);
    assert_eq!(
        origin.hits.load(Ordering::SeqCst),
        3,
        "the refused prompt never left kt"
    );

    let events = verified_events(&gw.close_events().await);
    crate::common::assert_three_chats_and_a_block(&events);
}

/// A PKCS12 trust store holding `gw`'s CA, made with keytool, and the JVM
/// options that use it (the store lives as long as the returned folder).
fn truststore(gw: &TestGateway) -> (tempfile::TempDir, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("truststore.p12");
    let store_arg = store.to_str().unwrap();
    let ca = gw.ca_pem.to_str().unwrap();
    keytool(&[
        "-importcert",
        "-noprompt",
        "-alias",
        "keeptrusts-kt",
        "-storetype",
        "PKCS12",
        "-storepass",
        "changeit",
        "-file",
        ca,
        "-keystore",
        store_arg,
    ]);
    let trust = vec![
        format!("-Djavax.net.ssl.trustStore={store_arg}"),
        "-Djavax.net.ssl.trustStorePassword=changeit".to_owned(),
        "-Djavax.net.ssl.trustStoreType=PKCS12".to_owned(),
    ];
    (dir, trust)
}

/// What the client saw of its three chats and one filtered prompt: streams
/// that arrived as events, a whole answer and a `409`, over HTTP/1.1, and
/// a stream over HTTP/2.
fn assert_three_chats_and_a_block(seen: &serde_json::Value) {
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
            assert_eq!(chat_text(body), REPLY, "{name}: {seen}");
        } else {
            let error: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(error["error"]["code"], "blocked", "{seen}");
        }
    }
    for name in ["streamed", "overH2"] {
        let events = seen[name]["body"]
            .as_str()
            .unwrap()
            .matches("data: ")
            .count();
        assert!(events > 2, "{name}: {seen}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jdk_client_authenticates_to_a_gateway_that_requires_keys() {
    if !crate::common::probe::programs_present(&["java", "keytool"]) {
        return;
    }
    let (_ca, origin, mut gw) = gateway(true).await;
    let keys = gw.home.path().join("keys.json");
    let key = keeptrusts::keys::file::create(&keys, "dev1", Some("ide"), false)
        .unwrap()
        .key;
    assert!(gw.gateway.auth().store().unwrap().refresh());
    let (_store, mut jvm) = truststore(&gw);

    // The JDK answers a 407 for a CONNECT only with schemes not listed in
    // jdk.http.auth.tunneling.disabledSchemes, which holds Basic by
    // default: the key is never sent.
    let seen = java(&gw, &jvm, &["dev1", &key]).await;
    for name in ["streamed", "whole", "refused", "overH2"] {
        assert_eq!(seen[name]["status"], 407, "{name}: {seen}");
    }
    assert_eq!(origin.hits.load(Ordering::SeqCst), 0);

    // With Basic allowed for tunnels (the README's option) it is.
    jvm.push("-Djdk.http.auth.tunneling.disabledSchemes=".to_owned());
    let seen = java(&gw, &jvm, &["dev1", &key]).await;
    assert_three_chats_and_a_block(&seen);
    let events = verified_events(&gw.close_events().await);
    crate::common::assert_three_chats_and_a_block(&events);
    assert!(
        events.iter().all(|e| e.user.as_deref() == Some("dev1")),
        "{events:?}"
    );
}

/// Runs `keytool` with `args`; panics with its output when it fails.
fn keytool(args: &[&str]) {
    let out = std::process::Command::new("keytool")
        .args(args)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "keytool {args:?}: {said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kt_ca_and_kt_doctor_look_after_the_jdk_java_home_names() {
    if !crate::common::probe::programs_present(&["java", "keytool"]) {
        return;
    }
    // A JDK of its own, as SDKMAN or an IDE's bundled runtime has: its
    // keytool, and a cacerts that is not the system store's.
    let home = tempfile::tempdir().unwrap();
    let kt = |args: &[&str], java_home: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_kt"))
            .arg("--data-dir")
            .arg(home.path())
            .args(args)
            .env("JAVA_HOME", java_home)
            .output()
            .unwrap()
    };
    let jdk = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(jdk.path().join("bin")).unwrap();
    std::fs::create_dir_all(jdk.path().join("lib/security")).unwrap();
    let keytool_on_path = crate::common::probe::program_path("keytool").unwrap();
    let real = std::fs::canonicalize(keytool_on_path).unwrap();
    std::os::unix::fs::symlink(&real, jdk.path().join("bin/keytool")).unwrap();
    let cacerts = jdk.path().join("lib/security/cacerts");
    let cacerts_arg = cacerts.to_str().unwrap();
    let other = TestCa::new("some public root");
    let other_pem = other.pem_path.to_str().unwrap();
    let store = ["-storepass", "changeit", "-keystore", cacerts_arg];
    keytool(
        &[
            &[
                "-importcert",
                "-noprompt",
                "-alias",
                "other",
                "-file",
                other_pem,
            ],
            &store[..],
        ]
        .concat(),
    );
    assert!(kt(&["ca", "init"], jdk.path()).status.success());
    let ca_pem = home.path().join("certs/kt-ca.pem");

    // install and uninstall name this JDK's keytool.
    let plan = kt(&["ca", "install", "--dry-run"], jdk.path());
    let plan = String::from_utf8_lossy(&plan.stdout).into_owned();
    let import = format!(
        "{}/bin/keytool -importcert -noprompt -cacerts -storepass changeit -alias keeptrusts-kt -file {}",
        jdk.path().display(),
        ca_pem.display()
    );
    assert!(plan.contains(&import), "{plan}");
    let plan = kt(&["ca", "uninstall", "--dry-run"], jdk.path());
    let plan = String::from_utf8_lossy(&plan.stdout).into_owned();
    assert!(
        plan.contains("/bin/keytool -delete -cacerts -storepass changeit -alias keeptrusts-kt"),
        "{plan}"
    );

    // doctor: not in the store, then in it.
    let java_home = jdk.path().to_str().unwrap();
    let doctor = || async {
        let out = crate::common::doctor(
            home.path(),
            &["--no-node", "--json"],
            &[("JAVA_HOME", java_home)],
        )
        .await;
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        crate::common::doctor_check(&json, "ca_jdk_trust").clone()
    };
    let check = doctor().await;
    assert_eq!(check["status"], "warn", "{check}");
    let detail = check["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!(
            "not in the JDK's cacerts ({})",
            std::fs::canonicalize(&cacerts).unwrap().display()
        )),
        "{check}"
    );
    assert!(
        check["fix"].as_str().unwrap().contains("keytool line"),
        "{check}"
    );
    let ca_arg = ca_pem.to_str().unwrap();
    keytool(
        &[
            &[
                "-importcert",
                "-noprompt",
                "-alias",
                "keeptrusts-kt",
                "-file",
                ca_arg,
            ],
            &store[..],
        ]
        .concat(),
    );
    let check = doctor().await;
    assert_eq!(check["status"], "ok", "{check}");
}
