//! `kt ca init|path|install|uninstall`.

use super::HomeArgs;
use crate::tls::{trust, CaPaths, CertificateAuthority};
use anyhow::Context;
use clap::Subcommand;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create the CA if absent (idempotent) and print its certificate path.
    Init,
    /// Print the CA certificate path (where it will be, if not created yet).
    Path,
    /// Trust the CA in the OS store (and NSS databases found).
    Install {
        /// Print the exact commands instead of running them.
        #[arg(long)]
        dry_run: bool,
    },
    /// Remove the CA from the stores `install` added it to.
    Uninstall {
        /// Print the exact commands instead of running them.
        #[arg(long)]
        dry_run: bool,
    },
}

pub fn run(home: &HomeArgs, cmd: CaCommand) -> anyhow::Result<ExitCode> {
    let paths = CaPaths::in_dir(home.ca_dir()?);
    match cmd {
        CaCommand::Init => {
            let (_, created) = CertificateAuthority::load_or_create(&paths)?;
            if created {
                eprintln!("created a new CA in {}", paths.dir.display());
            }
            println!("{}", paths.cert.display());
        }
        CaCommand::Path => {
            // Where the certificate is, or will be: scripts can use the
            // path before the CA exists (and `kt ca init` prints the same).
            if !paths.cert.is_file() {
                eprintln!(
                    "kt: note: no CA at {} yet; run `kt ca init` (or start the gateway) to create it",
                    paths.dir.display()
                );
            }
            println!("{}", paths.cert.display());
        }
        CaCommand::Install { dry_run } => {
            // The real run creates a missing CA first, so the dry run
            // shows that and the steps for the CA it would create (it
            // failed with "run `kt ca init` first" before).
            let plan = if !dry_run {
                CertificateAuthority::load_or_create(&paths)?;
                trust::install_plan(&paths)?
            } else if paths.cert.is_file() {
                trust::install_plan(&paths)?
            } else {
                println!("# would create a new CA in {} first", paths.dir.display());
                trust::install_plan_for_new_ca(&paths)?
            };
            execute(plan, dry_run, "installed")?;
        }
        CaCommand::Uninstall { dry_run } => {
            let plan = trust::uninstall_plan(&paths)?;
            execute(plan, dry_run, "removed")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn execute(plan: trust::TrustPlan, dry_run: bool, done: &str) -> anyhow::Result<()> {
    if dry_run {
        print!("{}", plan.render());
        return Ok(());
    }
    trust::run(&plan).context("trust store update failed")?;
    for step in &plan.steps {
        eprintln!("{done}: {}", step.what);
    }
    for note in &plan.notes {
        println!("{note}");
    }
    Ok(())
}
