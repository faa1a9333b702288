//! `kt setup CLIENT [--write] [--file PATH]`: print the settings that point
//! a client at the gateway, or merge them into its settings file.

use super::HomeArgs;
use crate::setup::{plan, Client, SetupContext};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct SetupArgs {
    /// The client to configure.
    #[arg(value_enum)]
    pub client: Client,
    /// Merge the settings into the client's file (a backup is made first).
    #[arg(long)]
    pub write: bool,
    /// The settings file to print for or write to (default: the client's own).
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// The gateway as clients reach it.
    #[arg(
        long,
        value_name = "URL",
        env = "KEEPTRUSTS_GATEWAY",
        default_value = "http://127.0.0.1:41002"
    )]
    pub gateway: String,
    /// The model OpenAI-compatible clients (Continue, gptel) ask for.
    #[arg(long, value_name = "MODEL", default_value = "gpt-4o")]
    pub model: String,
}

pub fn run(home: &HomeArgs, args: SetupArgs) -> anyhow::Result<ExitCode> {
    let ctx = SetupContext {
        gateway: args.gateway.trim_end_matches('/').to_string(),
        ca_cert: crate::tls::CaPaths::in_dir(home.ca_dir()?).cert,
        model: args.model,
        home: super::user_home(),
        xdg_config_home: std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from),
    };
    let plan = plan(args.client, &ctx);
    if !ctx.ca_cert.is_file() {
        eprintln!(
            "kt: note: no CA at {} yet; run `kt ca init` (or start the gateway) first",
            ctx.ca_cert.display()
        );
    }
    if !args.write {
        print!("{}", plan.render(args.file.as_deref()));
        return Ok(ExitCode::SUCCESS);
    }
    let written = match plan.write(args.file.as_deref()) {
        Ok(written) => written,
        Err(e) => {
            // The error stays one line; what to add by hand follows it, on
            // stdout, where it can be redirected into a file.
            eprintln!("kt: error: {e}");
            if let Some(entry) = e.manual_entry() {
                print!("{entry}");
                if !entry.ends_with('\n') {
                    println!();
                }
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    if written.changes.is_empty() {
        println!("{}: already up to date", written.file.display());
    } else {
        match &written.backup {
            Some(b) => println!(
                "updated {} (backup: {})",
                written.file.display(),
                b.display()
            ),
            None => println!("created {}", written.file.display()),
        }
        for c in &written.changes {
            println!("  {c}");
        }
    }
    for n in &plan.notes {
        println!("note: {n}");
    }
    Ok(ExitCode::SUCCESS)
}
