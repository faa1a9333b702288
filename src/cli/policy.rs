//! `kt policy check FILE`: validate a policy config and print what it
//! resolves to — providers, settings and the policy chain per endpoint.

use crate::config::{Config, ConfigError, Endpoint, PolicySpec};
use clap::Subcommand;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy config and print its resolved chain per endpoint.
    ///
    /// On a bad config, print every problem found, one per line as
    /// FILE:LINE:COLUMN: key.path: message, and exit 1.
    Check {
        /// The policy config file (YAML).
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

pub fn run(cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    let PolicyCommand::Check { file } = cmd;
    match Config::load(&file) {
        Ok(config) => {
            for w in &config.warnings {
                eprintln!("{}", w.display_warning_in(&file));
            }
            // What the gateway would fail to start on (or refuse on a
            // reload), checked here too: the CA files, and compiling the
            // chain (a pattern that matches nothing but the empty string,
            // more policies than a chain holds).
            let refused =
                match crate::upstream::tls::UpstreamTls::new(&config.upstream.ca_files, false) {
                    Err(e) => Some(format!("upstream.ca_files: {e}")),
                    Ok(_) => crate::policy::chain::Chain::build(&config)
                        .err()
                        .map(|e| e.to_string()),
                };
            if let Some(why) = refused {
                eprintln!("{}: {why}", file.display());
                eprintln!(
                    "kt: error: {} is not a valid policy config (1 problem)",
                    file.display()
                );
                return Ok(ExitCode::FAILURE);
            }
            print_stdout(&summary(&file, &config))?;
            Ok(ExitCode::SUCCESS)
        }
        Err(ConfigError::Invalid { path, problems }) => {
            for p in &problems {
                eprintln!("{}", p.display_in(&path));
            }
            let n = problems.len();
            eprintln!(
                "kt: error: {} is not a valid policy config ({n} problem{})",
                path.display(),
                if n == 1 { "" } else { "s" }
            );
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e.into()),
    }
}

/// Writes to stdout; a closed pipe (`kt policy check f | head`) is not an
/// error.
fn print_stdout(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// The report printed for a valid config.
pub fn summary(file: &Path, c: &Config) -> String {
    let mut s = String::new();
    // `write!` to a String cannot fail; the results are ignored throughout.
    let _ = writeln!(s, "{}: ok", file.display());
    match &c.pack {
        Some(p) => {
            let version = p
                .version
                .as_deref()
                .map(|v| format!(" {v}"))
                .unwrap_or_default();
            let state = if p.enabled {
                ""
            } else {
                " (disabled: no policy runs)"
            };
            let _ = writeln!(s, "pack:      {}{version}{state}", p.name);
        }
        None => {
            let _ = writeln!(s, "pack:      (none)");
        }
    }
    if c.providers.is_empty() {
        let _ = writeln!(s, "providers: (none)");
    } else {
        let _ = writeln!(s, "providers:");
        let url = |t: &crate::config::ProviderTarget| {
            t.base_url.clone().unwrap_or_else(|| "(no base_url)".into())
        };
        let id_w = c.providers.iter().map(|t| t.id.len()).max().unwrap_or(0);
        let kind_w = c
            .providers
            .iter()
            .map(|t| t.kind.as_str().len())
            .max()
            .unwrap_or(0);
        let url_w = c.providers.iter().map(|t| url(t).len()).max().unwrap_or(0);
        for t in &c.providers {
            let mut line = format!(
                "  {:id_w$}  {:kind_w$}  {:url_w$}",
                t.id,
                t.kind.as_str(),
                url(t)
            );
            if let Some(k) = &t.api_key_env {
                let _ = write!(line, "  key ${k}");
            }
            if !t.models.is_empty() {
                let _ = write!(line, "  models {}", t.models.join(", "));
            }
            let _ = writeln!(s, "{}", line.trim_end());
        }
    }
    let mut intercept = String::from("built-in LLM hosts");
    for h in &c.intercept.hosts {
        let _ = write!(intercept, " + {h}");
    }
    let _ = writeln!(s, "intercept: {intercept}");
    let u = &c.upstream;
    for r in &u.connect_to {
        let _ = writeln!(s, "connect-to: {r}");
    }
    for f in &u.ca_files {
        let _ = writeln!(s, "upstream CA: {}", f.display());
    }
    if let Some(p) = &u.proxy {
        let _ = writeln!(s, "upstream proxy: {}", crate::config::redact_userinfo(p));
    }
    let auth = match c.auth.required {
        Some(true) => "required",
        Some(false) => "not required",
        None => "default (required unless listening on loopback)",
    };
    let _ = writeln!(s, "auth:      {auth}");
    match &c.storage {
        Some(st) => {
            let _ = writeln!(s, "storage:   {st}");
        }
        None => {
            let _ = writeln!(s, "storage:   files under the home folder");
        }
    }

    let name_w = c.policies.iter().map(|p| p.name.len()).max().unwrap_or(0);
    let kind_w = c
        .policies
        .iter()
        .map(|p| p.kind.as_str().len())
        .max()
        .unwrap_or(0);
    let _ = writeln!(s, "\npolicies (chain order):");
    if c.policies.is_empty() {
        let _ = writeln!(s, "  (none)");
    }
    for p in &c.policies {
        let mut line = format!(
            "  {:name_w$}  {:kind_w$}  {:11}",
            p.name,
            p.kind.as_str(),
            p.on_error.to_string()
        );
        let opts = p.options.summary();
        if !opts.is_empty() {
            let _ = write!(line, "  {opts}");
        }
        if !p.enabled {
            line.push_str("  (disabled)");
        }
        let _ = writeln!(s, "{}", line.trim_end());
    }

    let _ = writeln!(s, "\nchain per endpoint:");
    for e in Endpoint::ALL {
        let _ = writeln!(s, "  {e}");
        let chain: Vec<&PolicySpec> = c.chain_for(e).collect();
        if chain.is_empty() {
            let _ = writeln!(s, "    (no policies)");
        }
        for (i, p) in chain.iter().enumerate() {
            let mut line = format!("    {}. {:name_w$}  {}", i + 1, p.name, p.phases);
            let when = p.when.describe_conditions();
            if !when.is_empty() {
                let _ = write!(line, "  when {when}");
            }
            let _ = writeln!(s, "{line}");
        }
    }
    s
}
