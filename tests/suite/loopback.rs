//! kt's own sockets on loopback: where the host's congestion control paces
//! (BBR), the connection a client opens to kt and the one kt opens to a
//! loopback origin both run a congestion control that does not.
#![allow(clippy::unwrap_used)]

use crate::common::client::{body_json, through_proxy};
use crate::common::origin::{Alpn, Origin};
use crate::common::{connect_to, TestCa, TestGateway};
use bytes::Bytes;

const HOST: &str = "api.openai.com";

/// The congestion control of each established TCP socket `ss` lists for
/// `filter` (an `ss` state filter such as `sport = :41002`), or `None`
/// when `ss` (iproute2) is not installed.
fn congestion_of(filter: &str) -> Option<Vec<String>> {
    let out = std::process::Command::new("ss")
        .args(["-H", "-t", "-i", "-n", "state", "established"])
        .args(filter.split(' '))
        .output()
        .ok()?;
    assert!(out.status.success(), "ss failed: {out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    Some(
        text.split_whitespace()
            .filter(|w| ["bbr", "bbr2", "bbr3", "cubic", "reno"].contains(w))
            .map(str::to_owned)
            .collect(),
    )
}

fn host_default() -> String {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control")
        .unwrap()
        .trim()
        .to_owned()
}

#[tokio::test]
async fn the_client_leg_and_the_upstream_leg_do_not_pace_on_loopback() {
    let ca = TestCa::new("upstream test CA");
    let origin = Origin::tls(&ca, &[HOST], Alpn::H1).await;
    let gw = TestGateway::start(&ca, |s| {
        s.connect_to = vec![connect_to(HOST, 443, origin.addr)]
    })
    .await;
    let (mut http, _) = through_proxy(gw.addr, HOST, &[gw.ca_der()], &[b"http/1.1"]).await;
    let resp = http.send("POST", HOST, "/echo", Bytes::from("{}")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(body_json(resp).await["method"], "POST");

    // Both connections are open: the client's (kept alive) and kt's pooled
    // one to the origin. kt's ends are the one leaving kt's port and the
    // one going to the origin's.
    let filters = [
        (
            "the client's connection, kt's end",
            format!("sport = :{}", gw.addr.port()),
        ),
        (
            "kt's connection to the origin",
            format!("dport = :{}", origin.addr.port()),
        ),
    ];
    let default = host_default();
    for (what, filter) in filters {
        let Some(seen) = congestion_of(&filter) else {
            eprintln!(
                "NOTICE: `ss` (iproute2) is not installed; kt's congestion control went unchecked"
            );
            return;
        };
        assert!(!seen.is_empty(), "{what}: ss shows no socket for {filter}");
        for cc in seen {
            if default.starts_with("bbr") {
                assert!(!cc.starts_with("bbr"), "{what} still paces with {cc}");
            } else {
                assert_eq!(cc, default, "{what} lost the host's {default}");
            }
        }
    }
    drop(http);
}
