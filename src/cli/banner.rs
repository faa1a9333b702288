//! The start-up banner of `kt gateway run`: where it listens, which CA
//! clients must trust, the lines to paste into a shell, and the policy
//! chain in force.

use crate::gateway::{Built, GatewaySettings};
use crate::proxy::InterceptMode;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Hosts that must reach the gateway directly rather than through it:
/// the direct API on localhost would otherwise be sent to the proxy.
pub const NO_PROXY_LOCAL: &str = "localhost,127.0.0.1,::1";

/// What the banner says, gathered from the running gateway.
#[derive(Debug, Clone)]
pub struct BannerInfo {
    pub listen: SocketAddr,
    /// The other loopback address, when the gateway answers there too.
    pub also: Option<SocketAddr>,
    pub ca_cert: PathBuf,
    pub intercept: InterceptMode,
    /// The config's `intercept.hosts`, added to the built-in LLM hosts.
    pub intercept_hosts: Vec<String>,
    pub auth_required: bool,
    pub active_keys: usize,
    pub upstream_proxy: Option<String>,
    /// Hosted mode: the shared store (password hidden) and this replica's
    /// chain name.
    pub shared_store: Option<(String, String)>,
    /// `name (type)` of each policy, in chain order.
    pub chain: Vec<String>,
    /// The `--policy-config` file; `None`: the built-in chain runs.
    pub config: Option<PathBuf>,
}

impl BannerInfo {
    /// The facts of a gateway just built and bound to `listen`.
    pub fn of(
        listen: SocketAddr,
        also: Option<SocketAddr>,
        built: &Built,
        settings: &GatewaySettings,
        config: Option<&Path>,
    ) -> BannerInfo {
        let auth = built.gateway.auth();
        let chain = built
            .gateway
            .engine()
            .chain()
            .policies()
            .iter()
            .map(|p| {
                if *p.name == *p.kind.as_str() {
                    p.name.to_string()
                } else {
                    format!("{} ({})", p.name, p.kind)
                }
            })
            .collect();
        BannerInfo {
            listen,
            also,
            ca_cert: built.ca.cert.clone(),
            intercept: settings.intercept,
            intercept_hosts: settings.intercept_hosts.clone(),
            auth_required: auth.required(),
            active_keys: auth.store().map_or(0, |s| s.active_keys()),
            upstream_proxy: built.upstream_proxy.clone(),
            shared_store: built
                .hosted
                .as_ref()
                .map(|h| (h.db().shown().to_string(), h.replica().to_string())),
            chain,
            config: config.map(Path::to_path_buf),
        }
    }
}

/// The banner for the gateway in `built`, listening on `listen`.
pub fn for_gateway(
    listen: SocketAddr,
    also: Option<SocketAddr>,
    built: &Built,
    settings: &GatewaySettings,
    config: Option<&Path>,
) -> String {
    render(&BannerInfo::of(listen, also, built, settings, config))
}

/// The address clients on this machine use for `listen`: a wildcard bind
/// is reached on loopback.
pub fn client_address(listen: SocketAddr) -> SocketAddr {
    match listen {
        SocketAddr::V4(a) if a.ip().is_unspecified() => {
            SocketAddr::from(([127, 0, 0, 1], a.port()))
        }
        SocketAddr::V6(a) if a.ip().is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, a.port()))
        }
        other => other,
    }
}

/// The banner text (several lines, each ending in a newline).
pub fn render(info: &BannerInfo) -> String {
    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(s, "kt gateway listening on {}", info.listen);
    if let Some(also) = info.also {
        let _ = writeln!(
            s,
            "  also on        : {also} (localhost over IPv{})",
            if also.is_ipv6() { 6 } else { 4 }
        );
    }
    let _ = writeln!(s, "  CA certificate : {}", info.ca_cert.display());
    let mode = match info.intercept {
        InterceptMode::Llm => "LLM hosts",
        InterceptMode::All => "all hosts",
        InterceptMode::None => "none (blind tunnels only)",
    };
    let extra = info.intercept_hosts.join(", ");
    let _ = match info.intercept {
        _ if extra.is_empty() => writeln!(s, "  intercepting   : {mode}"),
        InterceptMode::Llm => {
            writeln!(s, "  intercepting   : {mode} and {extra} (intercept.hosts)")
        }
        // The mode decides alone: say the listed hosts are not what it seems.
        _ => writeln!(
            s,
            "  intercepting   : {mode}; intercept.hosts ({extra}) adds nothing to it"
        ),
    };
    let keys = info.active_keys;
    let need = if info.auth_required {
        "required"
    } else {
        "optional"
    };
    let _ = writeln!(s, "  access keys    : {need} ({keys} active)");
    if let Some(p) = &info.upstream_proxy {
        let _ = writeln!(s, "  upstream proxy : {p}");
    }
    if let Some((db, replica)) = &info.shared_store {
        let _ = writeln!(s, "  shared store   : {db} (replica {replica})");
    }
    let mut chain = if info.chain.is_empty() {
        "(none: no policy runs, nothing is audited)".to_string()
    } else {
        info.chain.join(" -> ")
    };
    // A config mounted where kt is never told to look (a container whose
    // command lost its flag) would otherwise pass unnoticed.
    match &info.config {
        Some(path) => {
            let _ = writeln!(s, "  policy config  : {}", path.display());
        }
        None => chain.push_str(" (built in: no --policy-config given)"),
    }
    let _ = writeln!(s, "  policy chain   : {chain}");
    if info.listen.ip().is_unspecified() {
        let _ = writeln!(
            s,
            "  reachable from other machines and containers on port {}; they use this host's address",
            info.listen.port()
        );
    }
    let client = client_address(info.listen);
    let proxy = if info.auth_required {
        format!("http://USER:KEY@{client}")
    } else {
        format!("http://{client}")
    };
    let _ = writeln!(
        s,
        "  point clients at it (`kt setup shell` prints these too):"
    );
    let _ = writeln!(s, "    export HTTPS_PROXY={proxy} HTTP_PROXY={proxy}");
    let _ = writeln!(s, "    export NO_PROXY={NO_PROXY_LOCAL}");
    let _ = writeln!(
        s,
        "    export NODE_EXTRA_CA_CERTS={}",
        info.ca_cert.display()
    );
    let _ = writeln!(s, "  direct API     : http://{client}/v1");
    let _ = writeln!(s, "  dashboard      : http://{client}/_kt/");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> BannerInfo {
        BannerInfo {
            listen: "127.0.0.1:41002".parse().unwrap(),
            also: Some("[::1]:41002".parse().unwrap()),
            ca_cert: PathBuf::from("/home/u/.keeptrusts/certs/kt-ca.pem"),
            intercept: InterceptMode::Llm,
            intercept_hosts: Vec::new(),
            auth_required: false,
            active_keys: 0,
            upstream_proxy: None,
            shared_store: None,
            chain: vec!["audit-logger".into(), "no-secrets (redact)".into()],
            config: Some(PathBuf::from("/etc/kt/policy.yaml")),
        }
    }

    #[test]
    fn names_address_ca_env_lines_and_chain() {
        let text = render(&info());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "kt gateway listening on 127.0.0.1:41002");
        assert_eq!(
            lines[1],
            "  also on        : [::1]:41002 (localhost over IPv6)"
        );
        assert!(text.contains("  CA certificate : /home/u/.keeptrusts/certs/kt-ca.pem\n"));
        assert!(text.contains(
            "    export HTTPS_PROXY=http://127.0.0.1:41002 HTTP_PROXY=http://127.0.0.1:41002\n"
        ));
        assert!(text.contains("    export NO_PROXY=localhost,127.0.0.1,::1\n"));
        assert!(
            text.contains("    export NODE_EXTRA_CA_CERTS=/home/u/.keeptrusts/certs/kt-ca.pem\n")
        );
        assert!(text.contains("  policy config  : /etc/kt/policy.yaml\n"));
        assert!(text.contains("  policy chain   : audit-logger -> no-secrets (redact)\n"));
        assert!(!text.contains("upstream proxy"));
        assert!(!text.contains("other machines"));
    }

    #[test]
    fn a_wildcard_listener_is_pasted_as_loopback_and_keys_go_in_the_url() {
        let mut i = info();
        i.listen = "0.0.0.0:41002".parse().unwrap();
        i.also = None;
        i.auth_required = true;
        i.active_keys = 2;
        i.chain.clear();
        i.upstream_proxy = Some("http://corp:3128".into());
        let text = render(&i);
        assert!(text.contains("HTTPS_PROXY=http://USER:KEY@127.0.0.1:41002"));
        assert!(text.contains("access keys    : required (2 active)"));
        assert!(text.contains("upstream proxy : http://corp:3128"));
        assert!(text.contains("policy chain   : (none"));
        assert!(text.contains("other machines"));
        assert!(!text.contains("also on"));
        assert_eq!(
            client_address("[::]:9".parse().unwrap()),
            "[::1]:9".parse().unwrap()
        );
    }

    #[test]
    fn hosts_the_config_adds_are_named_with_the_mode() {
        let mut i = info();
        assert!(render(&i).contains("  intercepting   : LLM hosts\n"));
        i.intercept_hosts = vec!["llm.corp.example".into(), "sourcegraph.example.com".into()];
        assert!(render(&i).contains(
            "  intercepting   : LLM hosts and llm.corp.example, sourcegraph.example.com (intercept.hosts)\n"
        ));
        i.intercept = InterceptMode::None;
        assert!(render(&i).contains(
            "  intercepting   : none (blind tunnels only); intercept.hosts (llm.corp.example, sourcegraph.example.com) adds nothing to it\n"
        ));
    }

    #[test]
    fn without_a_config_the_chain_line_says_it_is_built_in() {
        let mut i = info();
        i.config = None;
        i.chain = vec!["audit-logger".into()];
        let text = render(&i);
        assert!(!text.contains("policy config"));
        assert!(
            text.contains("  policy chain   : audit-logger (built in: no --policy-config given)\n")
        );
    }
}
