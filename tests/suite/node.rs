//! Node.js, the runtime of VS Code extensions (Copilot, Cody, Continue),
//! through kt as a forward proxy with its own HTTP clients: `https` over
//! llhttp, a strict parser, with a kept-alive agent, and `http2`. Each
//! trusts the kt CA through `NODE_EXTRA_CA_CERTS`, as the README tells
//! users to set it.
#![allow(clippy::unwrap_used)]

use crate::common::origin::{Alpn, Origin};
use crate::common::{connect_to, verified_events, TestCa, TestGateway};
use keeptrusts::config::PolicyConfig;
use std::path::Path;
use std::sync::Arc;

const HOST: &str = "api.openai.com";
const CONFIG: &str = crate::common::AUDIT_REDACT_FILTER;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_https_and_http2_clients_reach_an_llm_through_kt() {
    if !crate::common::probe::programs_present(&["node"]) {
        return;
    }
    let ca = TestCa::new("node test CA");
    let origin = Origin::tls(&ca, &[HOST], Alpn::Both).await;
    let config = Arc::new(PolicyConfig::parse(CONFIG, Path::new("t.yaml")).unwrap());
    let mut gw = TestGateway::start(&ca, |s| {
        s.connect_to = vec![connect_to(HOST, 443, origin.addr)];
        s.apply_config(&config);
    })
    .await;

    let reply = "Autumn moonlight: a worm digs silently into the chestnut.";
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/node/llm_client.js");
    let mut node = std::process::Command::new("node");
    node.arg(script)
        .arg(gw.addr.to_string())
        .args([HOST, reply, "about internal-project-zeus"])
        .env("NODE_EXTRA_CA_CERTS", &gw.ca_pem)
        .env_remove("HTTPS_PROXY")
        .env_remove("HTTP_PROXY")
        .env_remove("NODE_OPTIONS");
    let seen = crate::common::client_json(node).await;

    // HTTP/1.1: a stream, a whole answer and a block, on one connection.
    for (name, status, text) in [
        ("streamed", 200, reply),
        ("whole", 200, reply),
        ("refused", 409, "blocked"),
    ] {
        assert_eq!(seen[name]["status"], status, "{name}: {seen}");
        assert_eq!(seen[name]["text"], text, "{name}: {seen}");
        assert_eq!(seen[name]["version"], "1.1", "{name}: {seen}");
    }
    assert_eq!(seen["h1Tunnels"], 1, "kept alive: {seen}");
    // HTTP/2, negotiated with kt by ALPN.
    assert_eq!(seen["overH2"]["alpn"], "h2", "{seen}");
    assert_eq!(seen["overH2"]["status"], 200, "{seen}");
    assert_eq!(seen["overH2"]["text"], reply, "{seen}");

    let events = verified_events(&gw.close_events().await);
    crate::common::assert_three_chats_and_a_block(&events);
}
