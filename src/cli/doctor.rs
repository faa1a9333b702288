//! `kt doctor [--json]`: run the diagnostic checklist and exit 1 when any
//! check fails.

use super::HomeArgs;
use crate::doctor::{self, gateway, proxy_env, wire};
use crate::upstream::connect_to::{ConnectTo, ConnectToRules};
use anyhow::Context;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// Print the checks as a JSON array of {name, status, detail, fix}.
    #[arg(long)]
    pub json: bool,
    /// The gateway to check.
    #[arg(
        long,
        value_name = "URL",
        env = "KEEPTRUSTS_GATEWAY",
        default_value = "http://127.0.0.1:41002"
    )]
    pub gateway: String,
    /// The HTTPS URL requested through the proxy (a host kt intercepts).
    #[arg(
        long,
        value_name = "URL",
        default_value = "https://api.githubcopilot.com/_ping"
    )]
    pub probe_url: String,
    /// Dial ADDR:PORT whenever the doctor connects to HOST:PORT (like curl).
    #[arg(long, value_name = "HOST:PORT:ADDR:PORT")]
    pub connect_to: Vec<String>,
    /// Check this CA bundle file instead of the OS's.
    #[arg(long, value_name = "FILE")]
    pub ca_bundle: Option<PathBuf>,
    /// The policy config to validate.
    #[arg(long, value_name = "FILE")]
    pub policy_config: Option<PathBuf>,
    /// The access key to check (default: $KEEPTRUSTS_ACCESS_KEY).
    #[arg(
        long,
        value_name = "KEY",
        env = "KEEPTRUSTS_ACCESS_KEY",
        hide_env_values = true
    )]
    pub key: Option<String>,
    /// Skip the Node.js checks.
    #[arg(long)]
    pub no_node: bool,
}

pub fn run(home: &HomeArgs, args: DoctorArgs) -> anyhow::Result<ExitCode> {
    crate::install_crypto_provider();
    let rules = args
        .connect_to
        .iter()
        .map(|r| ConnectTo::parse(r))
        .collect::<Result<Vec<_>, _>>()?;
    let inputs = doctor::Inputs {
        gateway: gateway::GatewayTarget::parse(&args.gateway).map_err(anyhow::Error::msg)?,
        probe: gateway::ProbeTarget::parse(&args.probe_url).map_err(anyhow::Error::msg)?,
        dialer: wire::Dialer {
            connect_to: Arc::new(ConnectToRules::new(rules)),
        },
        ca_cert: crate::tls::CaPaths::in_dir(home.ca_dir()?).cert,
        ca_bundle: args.ca_bundle,
        access_key: args.key.filter(|k| !k.trim().is_empty()),
        events_dir: home.home()?.join("events"),
        policy_config: args.policy_config,
        user_home: std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from),
        proxy_env: proxy_env::ProxyEnv::from_process(),
        proc_dir: PathBuf::from("/proc"),
        node: !args.no_node,
        jdk: crate::tls::trust::local_jdk(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let checks = runtime.block_on(doctor::run(&inputs));
    let text = if args.json {
        let mut j = serde_json::to_string_pretty(&checks)?;
        j.push('\n');
        j
    } else {
        doctor::render(&inputs.gateway.url, &checks)
    };
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
        _ => {}
    }
    Ok(if doctor::any_failed(&checks) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
