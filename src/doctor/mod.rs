//! `kt doctor`: the diagnostic checklist. Each check says `ok`, `warn` or
//! `FAIL`, what it found, and the exact command or setting that fixes it.
//!
//! - [`gateway`]: reachability, what holds the port, the listen address,
//!   the end-to-end probe through the proxy, the access key, events, and
//!   the policy config.
//! - [`ca`]: the CA file and whether the OS and NSS trust it.
//! - [`node`]: what Node.js sees, with and without `NODE_EXTRA_CA_CERTS`.
//! - [`proxy_env`]: the shell's `HTTPS_PROXY`/`NO_PROXY` variables.
//! - [`sockets`]: listening sockets and their processes (Linux `/proc`).
//! - [`wire`]: the doctor's own small HTTP client.

pub mod ca;
pub mod gateway;
pub mod node;
pub mod proxy_env;
pub mod sockets;
pub mod wire;

use serde::Serialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Worth knowing, but not what breaks the set-up.
    Warn,
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        }
    }
}

/// One line of the checklist.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Stable snake_case name, e.g. `ca_os_trust`.
    pub name: String,
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// The command or setting that fixes it (for `warn` and `FAIL`).
    pub fix: Option<String>,
}

impl Check {
    pub fn new(name: &str, status: Status, detail: String, fix: Option<String>) -> Check {
        Check {
            name: name.to_string(),
            status,
            detail,
            fix,
        }
    }
}

/// True when any check failed.
pub fn any_failed(checks: &[Check]) -> bool {
    checks.iter().any(|c| c.status == Status::Fail)
}

/// The checklist as text: one line per check, its fix indented below.
pub fn render(gateway: &str, checks: &[Check]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "kt doctor: gateway {gateway}");
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    for c in checks {
        let _ = writeln!(
            s,
            "{:<4}  {:<width$}  {}",
            c.status.label(),
            c.name,
            c.detail
        );
        if let Some(fix) = c.fix.as_deref().filter(|_| c.status != Status::Ok) {
            let _ = writeln!(s, "{:<4}  {:<width$}  fix: {fix}", "", "");
        }
    }
    let count = |st| checks.iter().filter(|c| c.status == st).count();
    let _ = writeln!(
        s,
        "{} checks: {} ok, {} warn, {} FAIL",
        checks.len(),
        count(Status::Ok),
        count(Status::Warn),
        count(Status::Fail)
    );
    s
}

/// Everything the checks look at, resolved from flags and environment.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub gateway: gateway::GatewayTarget,
    pub probe: gateway::ProbeTarget,
    pub dialer: wire::Dialer,
    /// The kt CA certificate clients are told to trust.
    pub ca_cert: PathBuf,
    /// A CA bundle to check instead of the OS's.
    pub ca_bundle: Option<PathBuf>,
    pub access_key: Option<String>,
    /// `<home>/events`.
    pub events_dir: PathBuf,
    pub policy_config: Option<PathBuf>,
    /// The user's home folder (for `~/.pki/nssdb`).
    pub user_home: Option<PathBuf>,
    pub proxy_env: proxy_env::ProxyEnv,
    /// `/proc`, or a stand-in.
    pub proc_dir: PathBuf,
    /// Run the Node.js checks when `node` is installed.
    pub node: bool,
    /// The JDK whose `cacerts` is checked for the CA.
    pub jdk: Option<crate::tls::trust::Jdk>,
}

/// Runs every check, in the order a person would fix things.
pub async fn run(inputs: &Inputs) -> Vec<Check> {
    let gw = &inputs.gateway;
    let mut checks = Vec::new();
    let (reach, reached) = gateway::reach_check(gw, &inputs.dialer, &inputs.proc_dir).await;
    checks.push(reach);
    if reached.is_some() {
        checks.extend(gateway::listen_check(gw, &inputs.proc_dir));
    }
    // Before the probes below: the Node one adds to these counters.
    let refusals = match &reached {
        Some(_) => gateway::refusals_check(gw, &inputs.dialer).await,
        None => None,
    };
    let (ca_file, ca) = ca::file_check(&inputs.ca_cert);
    checks.push(ca_file);
    if let (Some(ca), Some(r)) = (&ca, &reached) {
        checks.push(gateway::same_ca_check(
            r.ca.as_ref(),
            &ca.der,
            gw,
            &inputs.ca_cert,
        ));
    }
    if let Some(ca) = &ca {
        checks.push(ca::os_trust_check(ca, inputs.ca_bundle.as_deref()));
    }
    checks.extend(ca::nss_check(inputs.user_home.as_deref(), ca.as_ref()));
    checks.extend(ca::jdk_check(inputs.jdk.as_ref(), ca.as_ref()).await);
    checks.extend(refusals);
    checks.extend(proxy_env::checks(
        &inputs.proxy_env,
        &proxy_env::GatewayAddr {
            host: gw.host.clone(),
            port: gw.port,
        },
    ));
    let key = inputs.access_key.as_deref();
    match (&ca, &reached) {
        (Some(ca), Some(_)) => {
            checks
                .push(gateway::probe_check(gw, &inputs.dialer, &inputs.probe, &ca.der, key).await);
            if inputs.node {
                let auth = gateway::proxy_auth(key);
                let (proxy_host, proxy_port) = inputs.dialer.connect_to.resolve(&gw.host, gw.port);
                checks.extend(
                    node::checks(node::NodeProbe {
                        proxy_host,
                        proxy_port,
                        host: &inputs.probe.host,
                        port: inputs.probe.port,
                        path: &inputs.probe.path,
                        proxy_auth: auth.as_deref(),
                        ca_cert: &inputs.ca_cert,
                    })
                    .await,
                );
            }
        }
        _ => checks.push(Check::new(
            "probe",
            Status::Warn,
            format!(
                "skipped: needs the gateway and the CA ({} through the proxy)",
                inputs.probe.url()
            ),
            Some("fix the checks above first".into()),
        )),
    }
    if reached.is_some() {
        checks.push(gateway::key_check(gw, &inputs.dialer, key).await);
    }
    checks.push(
        gateway::events_check(
            &inputs.events_dir,
            gw,
            &inputs.dialer,
            reached.is_some(),
            key,
        )
        .await,
    );
    let (policy, config) = gateway::policy_check(inputs.policy_config.as_deref());
    checks.push(policy);
    if let (Some(config), Some(file)) = (&config, inputs.policy_config.as_deref()) {
        checks.extend(gateway::redis_checks(config, file).await);
    }
    checks
}

/// The full path of `program` on `PATH`, if it is there.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| is_executable(p))
}

#[cfg(unix)]
fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(p: &Path) -> bool {
    p.is_file() || p.with_extension("exe").is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_status_detail_and_fix_aligned() {
        let checks = vec![
            Check::new("gateway", Status::Ok, "answers".into(), None),
            Check::new(
                "no_proxy",
                Status::Fail,
                "lacks localhost".into(),
                Some("export NO_PROXY=localhost".into()),
            ),
        ];
        let text = render("http://127.0.0.1:41002", &checks);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "kt doctor: gateway http://127.0.0.1:41002",
                "ok    gateway   answers",
                "FAIL  no_proxy  lacks localhost",
                "                fix: export NO_PROXY=localhost",
                "2 checks: 1 ok, 0 warn, 1 FAIL",
            ]
        );
        assert!(any_failed(&checks));
        let json = serde_json::to_value(&checks).unwrap();
        assert_eq!(json[1]["status"], "fail");
        assert_eq!(json[1]["fix"], "export NO_PROXY=localhost");
        assert_eq!(json[0]["fix"], serde_json::Value::Null);
    }
}
