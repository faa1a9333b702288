//! The proxy variables of the shell `kt doctor` runs in: are they set, do
//! they name the gateway, and does `NO_PROXY` keep the gateway's own
//! address direct without letting LLM traffic skip it.

use super::{Check, Status};
use crate::setup::NO_PROXY_HOSTS;

/// LLM hosts that must go through the proxy; a `NO_PROXY` entry that
/// matches one of them lets that traffic skip kt.
const MUST_BE_PROXIED: &[&str] = &[
    "api.openai.com",
    "api.anthropic.com",
    "api.githubcopilot.com",
    "copilot-proxy.githubusercontent.com",
    "sourcegraph.com",
    "cody-gateway.sourcegraph.com",
    "generativelanguage.googleapis.com",
    "api.mistral.ai",
    "codestral.mistral.ai",
];

/// The proxy variables, as `(name, value)` of the ones set.
#[derive(Debug, Clone, Default)]
pub struct ProxyEnv {
    pub vars: Vec<(String, String)>,
}

impl ProxyEnv {
    /// The variables of this process.
    pub fn from_process() -> ProxyEnv {
        let names = [
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "NO_PROXY",
            "no_proxy",
        ];
        ProxyEnv {
            vars: names
                .iter()
                .filter_map(|n| {
                    let v = std::env::var(n).ok()?;
                    (!v.trim().is_empty()).then(|| (n.to_string(), v))
                })
                .collect(),
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The gateway as this shell should reach it.
#[derive(Debug, Clone)]
pub struct GatewayAddr {
    pub host: String,
    pub port: u16,
}

impl GatewayAddr {
    fn url(&self) -> String {
        format!("http://{}:{}", self.host, self.port)
    }

    /// True when the proxy URL `value` names this gateway.
    fn is_named_by(&self, value: &str) -> bool {
        let Some((host, port)) = host_port_of(value) else {
            return false;
        };
        port == self.port
            && (host.eq_ignore_ascii_case(&self.host) || (is_local(&host) && is_local(&self.host)))
    }
}

/// `host` and `port` of a proxy URL (`http://user:pass@host:port/`,
/// scheme optional, default port 80 as curl assumes for proxies... but
/// kt users always give one, so a missing port counts as 80).
fn host_port_of(value: &str) -> Option<(String, u16)> {
    let rest = value
        .trim()
        .split_once("://")
        .map_or(value.trim(), |(_, r)| r);
    let rest = rest.split('/').next()?;
    let rest = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = after
            .strip_prefix(':')
            .map_or(Some(80), |p| p.parse().ok())?;
        return Some((host.to_string(), port));
    }
    match rest.rsplit_once(':') {
        Some((h, p)) => Some((h.to_string(), p.parse().ok()?)),
        None => Some((rest.to_string(), 80)),
    }
}

fn is_local(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified())
}

/// True when a `NO_PROXY` list sends `host` direct (curl's rules: `*`,
/// exact names, and domain suffixes with or without a leading dot).
pub fn bypasses(no_proxy: &str, host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    no_proxy
        .split(',')
        .map(|e| e.trim().to_ascii_lowercase())
        .filter(|e| !e.is_empty())
        .any(|e| {
            if e == "*" {
                return true;
            }
            let e = e.trim_start_matches("*.").trim_start_matches('.');
            let e = e.split(':').next().unwrap_or(e);
            host == e || host.ends_with(&format!(".{e}"))
        })
}

/// The checks on the proxy variables.
pub fn checks(env: &ProxyEnv, gw: &GatewayAddr) -> Vec<Check> {
    let mut out = Vec::new();
    let gw_url = gw.url();
    let export_fix = format!(
        "export HTTPS_PROXY={gw_url} HTTP_PROXY={gw_url} https_proxy={gw_url} http_proxy={gw_url} (or add them to your profile: kt setup shell --write --file ~/.bashrc)"
    );
    let https = [
        ("HTTPS_PROXY", env.get("HTTPS_PROXY")),
        ("https_proxy", env.get("https_proxy")),
    ];
    let set: Vec<(&str, &str)> = https
        .iter()
        .chain(&[
            ("HTTP_PROXY", env.get("HTTP_PROXY")),
            ("http_proxy", env.get("http_proxy")),
        ])
        .filter_map(|(n, v)| v.map(|v| (*n, v)))
        .collect();
    let elsewhere: Vec<String> = set
        .iter()
        .filter(|(_, v)| !gw.is_named_by(v))
        .map(|(n, v)| format!("{n}={v}"))
        .collect();
    let any_https = https.iter().any(|(_, v)| v.is_some());
    out.push(if !elsewhere.is_empty() {
        Check::new(
            "proxy_env",
            Status::Fail,
            format!(
                "{} does not point at the gateway ({}): traffic from this shell bypasses kt",
                elsewhere.join(", "),
                gw_url
            ),
            Some(export_fix.clone()),
        )
    } else if !any_https {
        Check::new(
            "proxy_env",
            Status::Warn,
            "HTTPS_PROXY is not set in this shell: command-line tools and Node apps started from it go direct (IDEs with their own proxy setting are not affected)".to_string(),
            Some(export_fix.clone()),
        )
    } else {
        let names: Vec<&str> = set.iter().map(|(n, _)| *n).collect();
        Check::new(
            "proxy_env",
            Status::Ok,
            format!(
                "{} {} at the gateway",
                names.join(", "),
                if names.len() == 1 { "points" } else { "point" }
            ),
            None,
        )
    });

    let no_proxy = env.get("NO_PROXY").or_else(|| env.get("no_proxy"));
    let proxied = !set.is_empty();
    let wanted = NO_PROXY_HOSTS.join(",");
    let no_proxy_fix = format!("export NO_PROXY={wanted} no_proxy={wanted}");
    let check = match no_proxy {
        _ if !proxied => Check::new(
            "no_proxy",
            Status::Ok,
            "no proxy variables set: nothing to exclude".to_string(),
            None,
        ),
        Some(list) if bypasses(list, "*") => Check::new(
            "no_proxy",
            Status::Fail,
            format!("NO_PROXY={list} sends every request direct: nothing reaches kt"),
            Some(no_proxy_fix),
        ),
        Some(list) if MUST_BE_PROXIED.iter().any(|h| bypasses(list, h)) => {
            let skipped: Vec<&str> = MUST_BE_PROXIED
                .iter()
                .copied()
                .filter(|h| bypasses(list, h))
                .collect();
            Check::new(
                "no_proxy",
                Status::Fail,
                format!(
                    "NO_PROXY={list} sends LLM traffic direct ({}): it skips kt's policies and audit log",
                    skipped.join(", ")
                ),
                Some(no_proxy_fix),
            )
        }
        Some(list) if bypasses(list, "localhost") && bypasses(list, "127.0.0.1") => {
            let upper_lower_differ = matches!(
                (env.get("NO_PROXY"), env.get("no_proxy")),
                (Some(a), Some(b)) if a != b
            );
            if upper_lower_differ {
                Check::new(
                    "no_proxy",
                    Status::Warn,
                    "NO_PROXY and no_proxy differ; tools read one or the other".to_string(),
                    Some(no_proxy_fix),
                )
            } else {
                Check::new(
                    "no_proxy",
                    Status::Ok,
                    "NO_PROXY keeps localhost and 127.0.0.1 direct".to_string(),
                    None,
                )
            }
        }
        other => {
            let missing: Vec<&str> = ["localhost", "127.0.0.1"]
                .into_iter()
                .filter(|h| !other.is_some_and(|l| bypasses(l, h)))
                .collect();
            Check::new(
                "no_proxy",
                Status::Fail,
                format!(
                    "NO_PROXY {} {}: requests to the direct API (http://localhost:{}/v1) and other local services are sent to the proxy",
                    if other.is_some() { "lacks" } else { "is not set, so it lacks" },
                    missing.join(" and "),
                    gw.port
                ),
                Some(no_proxy_fix),
            )
        }
    };
    out.push(check);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> ProxyEnv {
        ProxyEnv {
            vars: vars
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn gw() -> GatewayAddr {
        GatewayAddr {
            host: "127.0.0.1".into(),
            port: 41002,
        }
    }

    fn statuses(e: &ProxyEnv) -> (Status, Status, Vec<Check>) {
        let c = checks(e, &gw());
        (c[0].status, c[1].status, c)
    }

    #[test]
    fn a_correct_shell_passes() {
        let e = env(&[
            ("HTTPS_PROXY", "http://localhost:41002"),
            ("http_proxy", "http://dev:kt_abc@127.0.0.1:41002/"),
            ("NO_PROXY", "localhost,127.0.0.1,::1,pypi.org"),
        ]);
        let (a, b, c) = statuses(&e);
        assert_eq!((a, b), (Status::Ok, Status::Ok), "{c:?}");
    }

    #[test]
    fn no_proxy_without_localhost_fails_with_the_exact_fix() {
        let (a, b, c) = statuses(&env(&[
            ("HTTPS_PROXY", "http://127.0.0.1:41002"),
            ("NO_PROXY", "github.com,*.npmjs.org"),
        ]));
        assert_eq!((a, b), (Status::Ok, Status::Fail));
        assert!(
            c[1].detail.contains("lacks localhost and 127.0.0.1"),
            "{}",
            c[1].detail
        );
        assert!(c[1]
            .fix
            .as_deref()
            .unwrap()
            .starts_with("export NO_PROXY=localhost,127.0.0.1,::1,"));
        let (_, b, c) = statuses(&env(&[("HTTPS_PROXY", "http://127.0.0.1:41002")]));
        assert_eq!(b, Status::Fail);
        assert!(c[1].detail.contains("is not set"));
    }

    #[test]
    fn a_proxy_elsewhere_or_llm_hosts_excluded_fail() {
        let (a, _, c) = statuses(&env(&[("HTTPS_PROXY", "http://corp-proxy:3128")]));
        assert_eq!(a, Status::Fail);
        assert!(c[0].detail.contains("HTTPS_PROXY=http://corp-proxy:3128"));
        let (a, _, _) = statuses(&env(&[("HTTPS_PROXY", "http://127.0.0.1:41003")]));
        assert_eq!(a, Status::Fail, "another port is another program");
        let (_, b, c) = statuses(&env(&[
            ("HTTPS_PROXY", "http://127.0.0.1:41002"),
            ("NO_PROXY", "localhost,127.0.0.1,.openai.com"),
        ]));
        assert_eq!(b, Status::Fail);
        assert!(c[1].detail.contains("api.openai.com"));
        let (_, b, _) = statuses(&env(&[
            ("HTTPS_PROXY", "http://127.0.0.1:41002"),
            ("NO_PROXY", "*"),
        ]));
        assert_eq!(b, Status::Fail);
    }

    #[test]
    fn nothing_set_is_a_warning_not_a_failure() {
        let (a, b, _) = statuses(&env(&[]));
        assert_eq!((a, b), (Status::Warn, Status::Ok));
    }

    #[test]
    fn no_proxy_matching_follows_curl() {
        assert!(bypasses("example.com", "www.example.com"));
        assert!(bypasses(".example.com", "example.com"));
        assert!(bypasses("*.example.com", "a.example.com"));
        assert!(!bypasses("example.com", "notexample.com"));
        assert!(bypasses(" LOCALHOST , x", "localhost"));
        assert!(bypasses("localhost:41002", "localhost"));
        assert_eq!(
            host_port_of("http://[::1]:41002"),
            Some(("::1".into(), 41002))
        );
        assert_eq!(host_port_of("proxy.corp"), Some(("proxy.corp".into(), 80)));
    }
}
