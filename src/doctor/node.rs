//! What Node.js (and so VS Code extensions, Copilot and Cody agents) sees
//! through the proxy: the same HTTPS request once without and once with
//! `NODE_EXTRA_CA_CERTS` set to the kt CA.

use super::{Check, Status};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Node's part: CONNECT through the proxy, TLS with Node's own trust
/// (its bundled roots plus NODE_EXTRA_CA_CERTS), one GET; prints one line.
const SCRIPT: &str = r#"
const http = require('http'), tls = require('tls');
const [proxyHost, proxyPort, host, port, path, auth] = process.argv.slice(1);
const done = (line, code) => { console.log(line); process.exit(code); };
setTimeout(() => done('TIMEOUT', 5), 8000).unref();
const headers = auth ? { 'proxy-authorization': auth } : {};
const req = http.request({ host: proxyHost, port: +proxyPort, method: 'CONNECT', path: host + ':' + port, headers });
req.on('connect', (res, socket) => {
  if (res.statusCode !== 200) return done('CONNECT ' + res.statusCode, 3);
  const t = tls.connect({ socket, servername: host }, () => {
    t.write('GET ' + path + ' HTTP/1.1\r\nHost: ' + host + '\r\nConnection: close\r\n\r\n');
  });
  t.once('data', (d) => done('HTTP ' + d.toString().split(' ')[1], 0));
  t.on('error', (e) => done('TLS ' + (e.code || e.message), 2));
});
req.on('error', (e) => done('PROXY ' + (e.code || e.message), 4));
req.end();
"#;

/// Where the probe goes.
pub struct NodeProbe<'a> {
    pub proxy_host: &'a str,
    pub proxy_port: u16,
    pub host: &'a str,
    pub port: u16,
    pub path: &'a str,
    pub proxy_auth: Option<&'a str>,
    pub ca_cert: &'a Path,
}

/// The two Node checks, or one `warn` when `node` is not installed.
pub async fn checks(probe: NodeProbe<'_>) -> Vec<Check> {
    let Some(node) = super::which("node") else {
        return vec![Check::new(
            "node",
            Status::Warn,
            "node is not installed: Node-based clients not checked".into(),
            None,
        )];
    };
    let run = |extra_ca: bool| {
        let mut cmd = Command::new(&node);
        cmd.arg("-e")
            .arg(SCRIPT)
            .arg(probe.proxy_host)
            .arg(probe.proxy_port.to_string())
            .arg(probe.host)
            .arg(probe.port.to_string())
            .arg(probe.path)
            .arg(probe.proxy_auth.unwrap_or(""))
            // Node must not apply the shell's proxy settings on its own.
            .env_remove("NODE_USE_ENV_PROXY")
            .env_remove("NODE_OPTIONS");
        if extra_ca {
            cmd.env("NODE_EXTRA_CA_CERTS", probe.ca_cert);
        } else {
            cmd.env_remove("NODE_EXTRA_CA_CERTS");
        }
        async move {
            let out = tokio::time::timeout(
                Duration::from_secs(15),
                tokio::task::spawn_blocking(move || cmd.output()),
            )
            .await;
            match out {
                Ok(Ok(Ok(o))) => String::from_utf8_lossy(&o.stdout).trim().to_string(),
                Ok(Ok(Err(e))) => format!("cannot run node: {e}"),
                _ => "TIMEOUT".to_string(),
            }
        }
    };
    let target = format!("https://{}:{}{}", probe.host, probe.port, probe.path);
    let ca = probe.ca_cert.display();
    let without = run(false).await;
    let with = run(true).await;
    let shell_has_it =
        std::env::var_os("NODE_EXTRA_CA_CERTS").is_some_and(|v| Path::new(&v) == probe.ca_cert);
    let plain = if without.starts_with("HTTP ") {
        Check::new(
            "node",
            Status::Ok,
            format!("Node trusts the gateway without NODE_EXTRA_CA_CERTS ({target}: {without})"),
            None,
        )
    } else if shell_has_it {
        Check::new(
            "node",
            Status::Ok,
            format!("Node alone rejects the kt CA ({without}), and this shell sets NODE_EXTRA_CA_CERTS={ca}"),
            None,
        )
    } else {
        Check::new(
            "node",
            Status::Warn,
            format!("Node without NODE_EXTRA_CA_CERTS cannot reach {target} through the proxy ({without}); editors started from this shell inherit that"),
            Some(format!("export NODE_EXTRA_CA_CERTS={ca} (then restart the editor from that shell)")),
        )
    };
    let extra = if with.starts_with("HTTP ") {
        Check::new(
            "node_extra_ca",
            Status::Ok,
            format!("Node with NODE_EXTRA_CA_CERTS={ca} reaches {target} ({with})"),
            None,
        )
    } else {
        Check::new(
            "node_extra_ca",
            Status::Fail,
            format!("Node with NODE_EXTRA_CA_CERTS={ca} cannot reach {target} through the proxy ({with})"),
            Some(node_fix(&with)),
        )
    };
    vec![plain, extra]
}

fn node_fix(result: &str) -> String {
    if result.starts_with("TLS ") {
        "the certificate Node saw is not from this CA: is the gateway using another home folder (--data-dir / KEEPTRUSTS_HOME)?".into()
    } else if result.starts_with("CONNECT 407") {
        "the gateway requires an access key: export KEEPTRUSTS_ACCESS_KEY=kt_...".into()
    } else {
        "see the `probe` check above".into()
    }
}
