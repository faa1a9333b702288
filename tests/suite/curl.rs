//! curl (OpenSSL, nghttp2), the client the README's examples use, through
//! kt as its proxy: refused without the kt CA (and counted as such), HTTP/1.1
//! with `Expect: 100-continue` answered, an HTTP/2 stream, and a tunnel
//! that shows the origin's own certificate.
#![allow(clippy::unwrap_used)]

use crate::common::origin::{Alpn, Origin};
use crate::common::{connect_to, TestCa, TestGateway};
use std::process::Output;

const HOST: &str = "api.openai.com";
const OTHER: &str = "git.example.test";

/// Runs curl through `gw` with `args`, bounded in time.
async fn curl(gw: &TestGateway, args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["--silent", "--show-error", "--max-time", "30", "--proxy"])
        .arg(format!("http://{}", gw.addr))
        .args(args)
        .env_remove("HTTPS_PROXY")
        .env_remove("HTTP_PROXY")
        .env_remove("https_proxy")
        .env_remove("http_proxy")
        .env_remove("CURL_CA_BUNDLE")
        .env_remove("SSL_CERT_FILE");
    tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_through_kt_as_the_readme_shows() {
    if !crate::common::probe::programs_present(&["curl"]) {
        return;
    }
    let ca = TestCa::new("curl test CA");
    let origin = Origin::tls(&ca, &[HOST, OTHER], Alpn::Both).await;
    let gw = TestGateway::start(&ca, |s| {
        s.connect_to = vec![
            connect_to(HOST, 443, origin.addr),
            connect_to(OTHER, 443, origin.addr),
        ];
    })
    .await;
    let kt_ca = gw.ca_pem.to_str().unwrap().to_owned();
    let models = format!("https://{HOST}/v1/models");

    // Without the kt CA: curl's certificate error (exit 60), and kt counts
    // the `unknown_ca` alert OpenSSL sends.
    let out = curl(&gw, &["--cacert", ca.pem_path.to_str().unwrap(), &models]).await;
    assert_eq!(out.status.code(), Some(60), "{}", text(&out.stderr));
    let metrics = gw.metrics_text().await;
    assert!(
        metrics.contains("kt_client_tls_failures_total{reason=\"untrusted_ca\"} 1"),
        "{metrics}"
    );

    // HTTP/1.1 with a body large enough that curl asks `Expect:
    // 100-continue`: kt answers 100 itself, then the chat goes through.
    let prompt = "x".repeat(4096);
    let body = serde_json::json!({"model": "gpt-4o",
        "messages": [{"role": "user", "content": prompt}]})
    .to_string();
    let chat = format!("https://{HOST}/v1/chat/completions");
    let out = curl(
        &gw,
        &[
            "--cacert",
            &kt_ca,
            "--http1.1",
            "--verbose",
            "-H",
            "content-type: application/json",
            "-H",
            "x-test-reply: continued",
            "-H",
            "Expect: 100-continue",
            "--data-binary",
            &body,
            &chat,
        ],
    )
    .await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("< HTTP/1.1 100 Continue"), "{stderr}");
    let answer: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(answer["choices"][0]["message"]["content"], "continued");
    assert_eq!(
        origin.last_body.lock().unwrap().as_ref().unwrap().len(),
        body.len()
    );

    // HTTP/2 to kt, a streamed chat read as it comes (`--no-buffer`).
    let stream = serde_json::json!({"model": "gpt-4o", "stream": true,
        "messages": [{"role": "user", "content": "hi"}]})
    .to_string();
    let out = curl(
        &gw,
        &[
            "--cacert",
            &kt_ca,
            "--http2",
            "--no-buffer",
            "--write-out",
            "\nversion=%{http_version}",
            "-H",
            "content-type: application/json",
            "-H",
            "x-test-reply: streamed over h2",
            "--data-binary",
            &stream,
            &chat,
        ],
    )
    .await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout.ends_with("\nversion=2"), "{stdout}");
    assert_eq!(crate::common::sse_text(&stdout), "streamed over h2");
    assert!(stdout.contains("data: [DONE]"), "{stdout}");

    // A host kt does not intercept: curl verifies the origin's own
    // certificate (the test CA), which it could not with only kt's.
    let echo = format!("https://{OTHER}/echo");
    let out = curl(&gw, &["--cacert", &kt_ca, &echo]).await;
    assert_eq!(out.status.code(), Some(60), "{}", text(&out.stderr));
    let out = curl(
        &gw,
        &[
            "--cacert",
            ca.pem_path.to_str().unwrap(),
            "--verbose",
            &echo,
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("issuer: CN=curl test CA"),
        "{}",
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("\"method\":\"GET\""));
}
