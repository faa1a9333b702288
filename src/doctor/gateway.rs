//! Checks that ask the running gateway: is it there (and is it kt), where
//! does it listen, does a request through it reach a recognised host with
//! a certificate from the kt CA, is the access key accepted, are events
//! written, and is the policy config valid.

use super::sockets::{self, Listener};
use super::wire::{self, Dialer, WireError};
use super::{Check, Status};
use base64::Engine as _;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// The gateway as given by `--gateway`.
#[derive(Debug, Clone)]
pub struct GatewayTarget {
    pub url: String,
    pub host: String,
    pub port: u16,
}

impl GatewayTarget {
    /// Parses `http://host:port` (the only form a forward proxy has).
    pub fn parse(url: &str) -> Result<GatewayTarget, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("bad gateway URL {url}: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!(
                "bad gateway URL {url}: kt listens for plain http:// (TLS is inside CONNECT)"
            ));
        }
        let host = uri
            .host()
            .ok_or_else(|| format!("bad gateway URL {url}: no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        Ok(GatewayTarget {
            url: url.trim_end_matches('/').to_string(),
            port: uri.port_u16().unwrap_or(80),
            host,
        })
    }

    fn is_local(&self) -> bool {
        self.host.eq_ignore_ascii_case("localhost")
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified())
    }
}

/// What the reachability check learnt, for the checks after it.
#[derive(Debug, Clone)]
pub struct Reached {
    /// The CA certificate the gateway serves on `/_kt/ca.pem`.
    pub ca: Option<CertificateDer<'static>>,
}

/// Is kt answering at the gateway address? Names whatever holds the port
/// otherwise.
pub async fn reach_check(
    gw: &GatewayTarget,
    dialer: &Dialer,
    proc: &Path,
) -> (Check, Option<Reached>) {
    let listen_ip = if gw.is_local() {
        "127.0.0.1"
    } else {
        "0.0.0.0"
    };
    let start = format!("kt gateway run --listen {listen_ip}:{}", gw.port);
    // Another program holds the port: the fix names a whole other address
    // (appending a digit to this one gave `:410021`, no port at all).
    let elsewhere = {
        let port = other_port(gw.port);
        format!(
            "stop that program, or run kt on another port (kt gateway run --listen {listen_ip}:{port}) and pass --gateway http://{}:{port}",
            if gw.host.contains(':') {
                format!("[{}]", gw.host)
            } else {
                gw.host.clone()
            }
        )
    };
    let owners = || {
        if gw.is_local() {
            sockets::listeners(proc, gw.port)
        } else {
            Vec::new()
        }
    };
    let health = dialer.get(&gw.host, gw.port, "/healthz", &[], 64).await;
    let detail_owner = |ls: &[Listener]| {
        let named: Vec<String> = ls
            .iter()
            .map(|l| match &l.owner {
                Some(o) => format!("{} by {o}", l.addr),
                None => format!("{} by a process this user cannot see", l.addr),
            })
            .collect();
        named.join(", ")
    };
    match health {
        Err(WireError::Refused(_)) => {
            let held = owners();
            let detail = if held.is_empty() {
                format!(
                    "nothing listens on {}:{}: the gateway is not running",
                    gw.host, gw.port
                )
            } else {
                format!(
                    "connection to {}:{} refused, though the port is held ({})",
                    gw.host,
                    gw.port,
                    detail_owner(&held)
                )
            };
            (
                Check::new(
                    "gateway",
                    Status::Fail,
                    detail,
                    Some(format!("start it: {start} [--policy-config FILE]")),
                ),
                None,
            )
        }
        Err(e) => {
            let held = owners();
            let who = if held.is_empty() {
                String::new()
            } else {
                format!(" (port held by {})", detail_owner(&held))
            };
            (
                Check::new(
                    "gateway",
                    Status::Fail,
                    format!("{} does not answer like kt: {e}{who}", gw.url),
                    Some(elsewhere),
                ),
                None,
            )
        }
        Ok((head, body)) => {
            let ca = match dialer
                .get(&gw.host, gw.port, "/_kt/ca.pem", &[], 16 * 1024)
                .await
            {
                Ok((h, pem)) if h.status == 200 => CertificateDer::pem_slice_iter(&pem)
                    .next()
                    .and_then(Result::ok),
                _ => None,
            };
            if head.status != 200 || !body.starts_with(b"ok") || ca.is_none() {
                let held = owners();
                let who = if held.is_empty() {
                    "another program".to_string()
                } else {
                    detail_owner(&held)
                };
                return (
                    Check::new(
                        "gateway",
                        Status::Fail,
                        format!(
                            "{} answers HTTP {} on /healthz but is not kt: the port is held by {who}",
                            gw.url, head.status
                        ),
                        Some(elsewhere),
                    ),
                    None,
                );
            }
            (
                Check::new(
                    "gateway",
                    Status::Ok,
                    format!("kt answers on {}", gw.url),
                    None,
                ),
                Some(Reached { ca }),
            )
        }
    }
}

/// The port to suggest when `port` is taken: the next one up (down from
/// the last one, which has none above it).
fn other_port(port: u16) -> u16 {
    port.checked_add(1).unwrap_or(port - 1)
}

/// Where a local gateway listens, and whether that suits this machine:
/// confined IDEs (snap, flatpak), containers and WSL-side Windows IDEs do
/// not share this machine's loopback.
pub fn listen_check(gw: &GatewayTarget, proc: &Path) -> Option<Check> {
    if !gw.is_local() {
        return None;
    }
    let ls = sockets::listeners(proc, gw.port);
    if ls.is_empty() {
        return None;
    }
    let addrs: Vec<String> = ls.iter().map(|l| l.addr.to_string()).collect();
    let addrs = addrs.join(", ");
    let remote = format!(
        "kt gateway run --listen 0.0.0.0:{} (access keys are then required: kt keys create --user NAME)",
        gw.port
    );
    Some(if sockets::loopback_only(&ls) {
        match confinement() {
            Some(why) => Check::new(
                "listen_address",
                Status::Warn,
                format!("listening on {addrs} only (loopback), and {why}: an IDE there cannot reach this machine's loopback"),
                Some(format!("{remote}; then point the IDE at this machine's address")),
            ),
            None => Check::new(
                "listen_address",
                Status::Ok,
                format!("listening on {addrs} (loopback: this machine only; for containers, snap/flatpak IDEs or WSL run {remote})"),
                None,
            ),
        }
    } else {
        Check::new(
            "listen_address",
            Status::Ok,
            format!("listening on {addrs}: reachable from other machines and containers (access keys required unless auth.required: false)"),
            None,
        )
    })
}

/// Why this machine's IDEs may live behind another loopback, if they may.
fn confinement() -> Option<&'static str> {
    if std::env::var_os("SNAP").is_some() {
        return Some("this shell runs inside a snap");
    }
    if std::env::var_os("FLATPAK_ID").is_some() || Path::new("/.flatpak-info").exists() {
        return Some("this shell runs inside a flatpak");
    }
    if Path::new("/.dockerenv").exists() || Path::new("/run/.containerenv").exists() {
        return Some("this is a container");
    }
    let version = std::fs::read_to_string("/proc/version").unwrap_or_default();
    if version.to_ascii_lowercase().contains("microsoft") {
        return Some("this is WSL (Windows-side IDEs reach it by the WSL address, not localhost)");
    }
    None
}

/// Does the gateway serve the same CA as the file clients are told to trust?
pub fn same_ca_check(
    served: Option<&CertificateDer<'static>>,
    local: &CertificateDer<'_>,
    gw: &GatewayTarget,
    cert: &Path,
) -> Check {
    match served {
        Some(s) if s.as_ref() == local.as_ref() => Check::new(
            "gateway_ca",
            Status::Ok,
            format!("{} signs with {}", gw.url, cert.display()),
            None,
        ),
        Some(_) => Check::new(
            "gateway_ca",
            Status::Fail,
            format!(
                "{} signs with a different CA than {}: it runs with another home or CA folder",
                gw.url,
                cert.display()
            ),
            Some(format!(
                "run kt doctor with the gateway's --data-dir/--ca-dir (or KEEPTRUSTS_HOME), or install its CA: curl -o kt-ca.pem {}/_kt/ca.pem",
                gw.url
            )),
        ),
        None => Check::new(
            "gateway_ca",
            Status::Warn,
            format!("{} did not serve its CA on /_kt/ca.pem", gw.url),
            None,
        ),
    }
}

/// The request a client makes: where it goes through the proxy.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl ProbeTarget {
    /// Parses `https://host[:port]/path`.
    pub fn parse(url: &str) -> Result<ProbeTarget, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("bad probe URL {url}: {e}"))?;
        if uri.scheme_str() != Some("https") {
            return Err(format!("bad probe URL {url}: it must be https://"));
        }
        Ok(ProbeTarget {
            host: uri
                .host()
                .ok_or_else(|| format!("bad probe URL {url}: no host"))?
                .to_string(),
            port: uri.port_u16().unwrap_or(443),
            path: uri.path_and_query().map_or("/", |p| p.as_str()).to_string(),
        })
    }

    pub fn url(&self) -> String {
        if self.port == 443 {
            format!("https://{}{}", self.host, self.path)
        } else {
            format!("https://{}:{}{}", self.host, self.port, self.path)
        }
    }
}

/// `Proxy-Authorization` for an access key.
pub fn proxy_auth(key: Option<&str>) -> Option<String> {
    key.map(|k| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("kt:{k}"))
        )
    })
}

/// CONNECT through the gateway and a TLS handshake trusting only the kt
/// CA: passes when the certificate chains to it and the origin answers.
pub async fn probe_check(
    gw: &GatewayTarget,
    dialer: &Dialer,
    target: &ProbeTarget,
    ca: &CertificateDer<'static>,
    key: Option<&str>,
) -> Check {
    let authority = format!("{}:{}", target.host, target.port);
    let auth = proxy_auth(key);
    let url = target.url();
    let (head, tunnel) = match dialer
        .connect(&gw.host, gw.port, &authority, auth.as_deref())
        .await
    {
        Ok(r) => r,
        Err(e) => {
            return Check::new(
                "probe",
                Status::Fail,
                format!("CONNECT {authority} through {} failed: {e}", gw.url),
                None,
            )
        }
    };
    match head.status {
        200 => {}
        407 => {
            return Check::new(
                "probe",
                Status::Fail,
                format!("the gateway wants an access key for CONNECT {authority} (407)"),
                Some("kt keys create --user NAME, then export KEEPTRUSTS_ACCESS_KEY=kt_... (clients send it as http://USER:KEY@host:port)".into()),
            )
        }
        s => {
            return Check::new(
                "probe",
                Status::Fail,
                format!(
                    "the gateway answered {s} to CONNECT {authority}{}: it cannot reach the upstream",
                    head.header("x-kt-error").map(|k| format!(" ({k})")).unwrap_or_default()
                ),
                Some("check this machine's network, DNS and firewall; behind a corporate proxy start kt with --upstream-proxy URL".into()),
            )
        }
    }
    match wire::tls_get(tunnel, &target.host, std::slice::from_ref(ca), &target.path).await {
        Ok(h) => Check::new(
            "probe",
            Status::Ok,
            format!("{url} answered {} through the proxy; its certificate chains to the kt CA", h.status),
            None,
        ),
        Err(e) if e.is_untrusted_certificate() => Check::new(
            "probe",
            Status::Fail,
            format!("{url}: the certificate seen through the proxy is not from the kt CA ({e}): kt did not intercept it"),
            Some(format!(
                "kt intercepts the built-in LLM hosts by default: check --intercept, or add {} under intercept.hosts in the policy config",
                target.host
            )),
        ),
        Err(e) => Check::new(
            "probe",
            Status::Fail,
            format!("{url} through the proxy: {e}"),
            Some("see the gateway's log (KT_LOG=debug) for the upstream error".into()),
        ),
    }
}

/// Is `KEEPTRUSTS_ACCESS_KEY` accepted? (The direct API checks keys;
/// `/_kt/events` tells whether the key is an admin's.)
pub async fn key_check(gw: &GatewayTarget, dialer: &Dialer, key: Option<&str>) -> Check {
    let create = "kt keys create --user NAME (add --admin for the dashboard), then export KEEPTRUSTS_ACCESS_KEY=kt_...";
    let anonymous = dialer.get(&gw.host, gw.port, "/v1/models", &[], 0).await;
    let required = matches!(&anonymous, Ok((h, _)) if h.status == 401);
    let Some(key) = key else {
        return if required {
            Check::new(
                "access_key",
                Status::Fail,
                "the gateway requires access keys and KEEPTRUSTS_ACCESS_KEY is not set".into(),
                Some(create.into()),
            )
        } else {
            Check::new(
                "access_key",
                Status::Ok,
                "KEEPTRUSTS_ACCESS_KEY not set; the gateway does not require keys".into(),
                None,
            )
        };
    };
    if !(key.starts_with("kt_")
        && key.len() == 43
        && key[3..].bytes().all(|b| b.is_ascii_alphanumeric()))
    {
        return Check::new(
            "access_key",
            Status::Fail,
            "KEEPTRUSTS_ACCESS_KEY is not a kt access key (kt_ followed by 40 letters and digits)"
                .into(),
            Some(create.into()),
        );
    }
    let bearer = format!("Bearer {key}");
    let with = dialer
        .get(
            &gw.host,
            gw.port,
            "/v1/models",
            &[("Authorization", &bearer)],
            0,
        )
        .await;
    match with {
        Ok((h, _)) if h.status == 401 => Check::new(
            "access_key",
            Status::Fail,
            "the gateway rejects KEEPTRUSTS_ACCESS_KEY: unknown, revoked or from another gateway's key file".into(),
            Some(format!("kt keys list (on the gateway's machine); {create}")),
        ),
        Ok(_) if !required => Check::new(
            "access_key",
            Status::Ok,
            "KEEPTRUSTS_ACCESS_KEY is set; the gateway does not require keys, so it names your events if valid but is not enforced".into(),
            None,
        ),
        Ok(_) => {
            let admin = dialer
                .get(&gw.host, gw.port, "/_kt/events", &[("Authorization", &bearer)], 0)
                .await;
            let rights = match admin {
                Ok((h, _)) if h.status == 403 => " (not an admin key: the dashboard and events feed need one)",
                Ok((h, _)) if h.status == 200 => " (admin)",
                _ => "",
            };
            Check::new(
                "access_key",
                Status::Ok,
                format!("the gateway accepts KEEPTRUSTS_ACCESS_KEY{rights}"),
                None,
            )
        }
        Err(e) => Check::new(
            "access_key",
            Status::Warn,
            format!("could not ask the gateway: {e}"),
            None,
        ),
    }
}

/// How old the newest event segment may be before the log looks idle.
const EVENTS_STALE: Duration = Duration::from_secs(24 * 3600);

/// What the gateway's counters say of clients that refused its certificate
/// since it started. Read before the doctor's own probes: its Node check
/// without `NODE_EXTRA_CA_CERTS` is such a client (it hangs up, counted as
/// `closed`), so only the alerts, which Node never sends, make a warning.
/// `None` when the gateway does not publish the counter.
pub async fn refusals_check(gw: &GatewayTarget, dialer: &Dialer) -> Option<Check> {
    let (head, body) = dialer
        .get(&gw.host, gw.port, "/metrics", &[], 1 << 20)
        .await
        .ok()?;
    if head.status != 200 {
        return None;
    }
    let text = String::from_utf8_lossy(&body);
    let counts: Vec<(&str, u64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("kt_client_tls_failures_total{reason=\""))
        .filter_map(|rest| {
            let (reason, value) = rest.split_once("\"} ")?;
            Some((reason, value.trim().parse().ok()?))
        })
        .collect();
    if counts.is_empty() {
        return None;
    }
    let count = |reason: &str| {
        counts
            .iter()
            .filter(|(r, _)| *r == reason)
            .map(|(_, n)| n)
            .sum::<u64>()
    };
    let (untrusted, rejected, closed) = (
        count("untrusted_ca"),
        count("certificate_rejected"),
        count("closed"),
    );
    let hung_up = if closed > 0 {
        format!("; {closed} hung up mid-handshake (Node.js and the JDK without the kt CA do that)")
    } else {
        String::new()
    };
    Some(if untrusted + rejected == 0 {
        Check::new(
            "client_tls",
            Status::Ok,
            format!("no client has refused kt's certificate since the gateway started{hung_up}"),
            None,
        )
    } else {
        Check::new(
            "client_tls",
            Status::Warn,
            format!(
                "since it started, the gateway saw {} refused by clients that do not trust the kt CA (untrusted_ca {untrusted}, certificate_rejected {rejected}){hung_up}",
                match untrusted + rejected {
                    1 => "1 handshake".to_string(),
                    n => format!("{n} handshakes"),
                }
            ),
            Some("trust the CA where those clients run: sudo kt ca install (and NODE_EXTRA_CA_CERTS for Node/VS Code); to see which hosts, set log_all_access on the audit-logger, then: kt events tail --filter action=error".into()),
        )
    })
}

/// Are events being written: the newest file under `dir`, or the
/// gateway's `/_kt/events` feed when the log is elsewhere.
pub async fn events_check(
    dir: &Path,
    gw: &GatewayTarget,
    dialer: &Dialer,
    reachable: bool,
    key: Option<&str>,
) -> Check {
    let newest = std::fs::read_dir(dir).ok().and_then(|entries| {
        entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".jsonl"))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .max()
    });
    if let Some((modified, path)) = newest {
        let age = SystemTime::now()
            .duration_since(modified)
            .unwrap_or_default();
        let ago = human(age);
        return if age <= EVENTS_STALE {
            Check::new(
                "events",
                Status::Ok,
                format!("audit log {} last written {ago} ago", path.display()),
                None,
            )
        } else {
            Check::new(
                "events",
                Status::Warn,
                format!("no event written for {ago} ({}): is traffic reaching the gateway?", path.display()),
                Some("point clients at the gateway (kt setup vscode|shell|...), then watch: kt events tail".into()),
            )
        };
    }
    if reachable {
        let bearer = key.map(|k| format!("Bearer {k}"));
        let headers: Vec<(&str, &str)> = bearer
            .as_deref()
            .map(|b| vec![("Authorization", b)])
            .unwrap_or_default();
        if let Ok((h, _)) = dialer
            .get(&gw.host, gw.port, "/_kt/events", &headers, 0)
            .await
        {
            match h.status {
                200 => {
                    return Check::new(
                        "events",
                        Status::Ok,
                        format!(
                            "no log under {} yet, but the gateway publishes its audit feed (kt events tail --gateway {})",
                            dir.display(),
                            gw.url
                        ),
                        None,
                    )
                }
                401 | 403 => {
                    return Check::new(
                        "events",
                        Status::Warn,
                        format!("no log under {}, and the gateway's feed needs an admin key", dir.display()),
                        Some("export KEEPTRUSTS_ACCESS_KEY=<an admin key> (kt keys create --user NAME --admin)".into()),
                    )
                }
                _ => {}
            }
        }
    }
    Check::new(
        "events",
        Status::Fail,
        format!("no audit log under {}", dir.display()),
        Some(format!(
            "start the gateway with this home folder (kt --data-dir {} gateway run), or pass the gateway's --data-dir to kt doctor",
            dir.parent().unwrap_or(dir).display()
        )),
    )
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// Is the policy config valid? Uses the gateway's own loader, and hands
/// back what it loaded for the checks that read it.
pub fn policy_check(file: Option<&Path>) -> (Check, Option<crate::config::Config>) {
    let Some(file) = file else {
        let check = Check::new(
            "policy_config",
            Status::Ok,
            "no --policy-config given to kt doctor: a gateway started without one runs the built-in chain (audit-logger); pass the gateway's to check it".into(),
            None,
        );
        return (check, None);
    };
    let config = match crate::config::Config::load(file) {
        Ok(c) => c,
        Err(e) => {
            let detail = e.to_string().replace('\n', "; ");
            let check = Check::new(
                "policy_config",
                Status::Fail,
                detail,
                Some(format!(
                    "fix the lines named, then: kt policy check {}",
                    file.display()
                )),
            );
            return (check, None);
        }
    };
    let check = match crate::policy::chain::Chain::build(&config) {
        Ok(chain) => {
            let names: Vec<&str> = chain.policies().iter().map(|p| &*p.name).collect();
            Check::new(
                "policy_config",
                Status::Ok,
                format!(
                    "{} is valid; chain: {}",
                    file.display(),
                    if names.is_empty() {
                        "(empty)".to_string()
                    } else {
                        names.join(" -> ")
                    }
                ),
                None,
            )
        }
        Err(e) => Check::new(
            "policy_config",
            Status::Fail,
            format!("{}: {e}", file.display()),
            Some(format!("kt policy check {}", file.display())),
        ),
    };
    (check, Some(config))
}

/// The Redis servers the policy config names (the cache's shared tier,
/// shared rate limits and budgets), each with the policies using it.
fn redis_backends(config: &crate::config::Config) -> Vec<(String, Vec<String>)> {
    use crate::config::PolicyOptions;
    let mut backends: Vec<(String, Vec<String>)> = Vec::new();
    for p in &config.policies {
        let url = match &p.options {
            PolicyOptions::Cache(o) => o.backend.redis_url(),
            PolicyOptions::RateLimit(o) => o.backend.redis_url(),
            PolicyOptions::Budget(o) => o.backend.redis_url(),
            _ => None,
        };
        let Some(url) = url else { continue };
        match backends.iter_mut().find(|(u, _)| u == url) {
            Some((_, users)) => users.push(p.name.to_string()),
            None => backends.push((url.to_string(), vec![p.name.to_string()])),
        }
    }
    backends
}

/// One `redis` check per Redis server `config` (loaded from `file`) names:
/// it must answer `PING`. A warning, not a failure: the gateway serves
/// without it (cache misses, limits counted per replica).
pub async fn redis_checks(config: &crate::config::Config, file: &Path) -> Vec<Check> {
    let mut checks = Vec::new();
    for (url, users) in redis_backends(config) {
        let link = match crate::redis_link::RedisLink::new(&url, "doctor") {
            Ok(link) => link,
            Err(e) => {
                checks.push(Check::new(
                    "redis",
                    Status::Fail,
                    format!(
                        "{}: not a usable Redis URL ({e})",
                        crate::config::redact_userinfo(&url)
                    ),
                    Some(format!("fix the backend of {}", users.join(", "))),
                ));
                continue;
            }
        };
        let answer = link.run::<String>(&redis::cmd("PING")).await;
        checks.push(match answer {
            Ok(_) => Check::new(
                "redis",
                Status::Ok,
                format!("{} answers (used by {})", link.shown(), users.join(", ")),
                None,
            ),
            Err(e) => Check::new(
                "redis",
                Status::Warn,
                format!(
                    "{} does not answer ({}: {e}): {} run without it (the cache misses, limits count per replica)",
                    link.shown(),
                    e.kind(),
                    users.join(", ")
                ),
                Some(format!(
                    "start Redis there, or fix the backend URL in {}",
                    file.display()
                )),
            ),
        });
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_gateway_and_probe_urls() {
        let g = GatewayTarget::parse("http://127.0.0.1:41002/").unwrap();
        assert_eq!(
            (g.host.as_str(), g.port, g.url.as_str()),
            ("127.0.0.1", 41002, "http://127.0.0.1:41002")
        );
        assert!(GatewayTarget::parse("https://x:1").is_err());
        assert_eq!(GatewayTarget::parse("http://[::1]:9").unwrap().host, "::1");
        let p = ProbeTarget::parse("https://api.githubcopilot.com/_ping").unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.path.as_str()),
            ("api.githubcopilot.com", 443, "/_ping")
        );
        assert!(ProbeTarget::parse("http://a/").is_err());
        assert_eq!(human(Duration::from_secs(3 * 3600)), "3h");
    }

    /// The `--listen` and `--gateway` of a fix, parsed as kt would.
    fn suggested(fix: &str) -> (std::net::SocketAddr, GatewayTarget) {
        let after = |flag: &str| {
            let at = fix
                .find(flag)
                .unwrap_or_else(|| panic!("no {flag} in {fix}"));
            fix[at + flag.len()..]
                .split([' ', ')'])
                .next()
                .unwrap_or_default()
                .to_string()
        };
        let listen = after("--listen ");
        let listen = listen
            .parse()
            .unwrap_or_else(|e| panic!("--listen {listen}: {e} ({fix})"));
        let gateway = after("--gateway ");
        let gateway = GatewayTarget::parse(&gateway).unwrap();
        (listen, gateway)
    }

    /// A port held by something that is not kt: before, the fix read
    /// `--listen 127.0.0.1:410021`, no port at all.
    #[tokio::test]
    async fn a_port_held_by_another_program_gets_a_fix_with_a_valid_address() {
        use tokio::io::AsyncWriteExt;
        let proc = tempfile::tempdir().unwrap();
        for answer in [
            // Answers HTTP, not as kt.
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"[..],
            // Does not answer HTTP at all.
            &b"SSH-2.0-OpenSSH_9.6\r\n"[..],
        ] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            tokio::spawn(async move {
                while let Ok((mut s, _)) = listener.accept().await {
                    let _ = s.write_all(answer).await;
                }
            });
            let gw = GatewayTarget::parse(&format!("http://127.0.0.1:{port}")).unwrap();
            let (c, reached) = reach_check(&gw, &Dialer::default(), proc.path()).await;
            assert_eq!(c.status, Status::Fail, "{c:?}");
            assert!(reached.is_none());
            let fix = c.fix.unwrap();
            let (listen, gateway) = suggested(&fix);
            assert_eq!(
                listen.to_string(),
                format!("127.0.0.1:{}", other_port(port))
            );
            assert_eq!(
                (gateway.host.as_str(), gateway.port),
                ("127.0.0.1", listen.port())
            );
        }
        assert_eq!(other_port(41002), 41003);
        assert_eq!(other_port(u16::MAX), u16::MAX - 1);
    }

    #[test]
    fn an_invalid_policy_config_fails_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.yaml");
        std::fs::write(&f, "policies:\n  chain: [audit-logger]\nbogus: 1\n").unwrap();
        let (c, _) = policy_check(Some(&f));
        assert_eq!(c.status, Status::Fail);
        assert!(c.detail.contains(":3:"), "{}", c.detail);
        std::fs::write(&f, "policies:\n  chain: [audit-logger]\n").unwrap();
        let (c, _) = policy_check(Some(&f));
        assert_eq!(c.status, Status::Ok, "{c:?}");
        assert!(c.detail.contains("audit-logger"));
    }

    /// The `redis` checks of the config in `f`, loaded as the doctor does.
    async fn redis_checks_of(f: &Path) -> Vec<Check> {
        let (_, config) = policy_check(Some(f));
        redis_checks(&config.unwrap(), f).await
    }

    #[tokio::test]
    async fn every_redis_backend_is_pinged_once_with_the_policies_using_it() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.yaml");
        // Nothing listens on port 1.
        std::fs::write(
            &f,
            "policies:\n  chain: [c, rl]\npolicy:\n  c: {type: cache, backend: 'redis://u:pw@127.0.0.1:1/0'}\n  rl: {type: rate-limit, requests_per_minute: 5, backend: 'redis://u:pw@127.0.0.1:1/0'}\n",
        )
        .unwrap();
        let checks = redis_checks_of(&f).await;
        assert_eq!(checks.len(), 1, "one server: {checks:?}");
        let c = &checks[0];
        assert_eq!(
            (c.name.as_str(), c.status),
            ("redis", Status::Warn),
            "{c:?}"
        );
        assert!(
            c.detail.contains("c, rl") && !c.detail.contains("pw"),
            "{c:?}"
        );
        assert!(c.fix.as_deref().unwrap().contains("p.yaml"), "{c:?}");
        // A policy config without Redis: no check.
        std::fs::write(&f, "policies:\n  chain: [audit-logger]\n").unwrap();
        assert!(redis_checks_of(&f).await.is_empty());
        let Ok(url) = std::env::var("KT_TEST_REDIS_URL") else {
            println!("KT-TEST-SKIPPED doctor_redis_answers: KT_TEST_REDIS_URL is not set");
            return;
        };
        std::fs::write(
            &f,
            format!("policies:\n  chain: [b]\npolicy:\n  b: {{type: budget, usd_per_day: 1, backend: '{url}'}}\n"),
        )
        .unwrap();
        let checks = redis_checks_of(&f).await;
        assert_eq!(checks.len(), 1);
        assert_eq!(checks[0].status, Status::Ok, "{:?}", checks[0]);
        assert!(
            checks[0].detail.contains("answers (used by b)"),
            "{:?}",
            checks[0]
        );
    }
}
