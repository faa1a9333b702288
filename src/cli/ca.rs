//! `kt ca init|path|install|uninstall`.

use super::{CaTarget, HomeArgs};
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
    let target = home.ca_target()?;
    let paths = CaPaths::in_dir(&target.dir);
    let user = trust::NssUser {
        home: target.user_home.clone(),
        sudo_user: target.sudo_user.clone(),
    };
    match cmd {
        CaCommand::Init => {
            refuse_to_create_for_another_user(&target, &paths)?;
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
            refuse_to_create_for_another_user(&target, &paths)?;
            // The real run refuses a lone certificate or key before any
            // step; the dry run says so too, not a plan it will not run.
            paths.check_not_lone()?;
            // The real run creates a missing CA first, so the dry run
            // shows that and the steps for the CA it would create (it
            // failed with "run `kt ca init` first" before).
            let plan = if !dry_run {
                CertificateAuthority::load_or_create(&paths)?;
                trust::install_plan(&paths, &user)?
            } else if paths.cert.is_file() {
                trust::install_plan(&paths, &user)?
            } else {
                println!("# would create a new CA in {} first", paths.dir.display());
                trust::install_plan_for_new_ca(&paths, &user)?
            };
            execute(plan, dry_run, "installed")?;
        }
        CaCommand::Uninstall { dry_run } => {
            let plan = trust::uninstall_plan(&paths, &user)?;
            execute(plan, dry_run, "removed")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Root (through sudo) creating the CA in the user's home would leave
/// root's files there, which the user's gateway cannot read: the user
/// creates it, as themselves, first. The dry run says the same.
fn refuse_to_create_for_another_user(target: &CaTarget, paths: &CaPaths) -> anyhow::Result<()> {
    match &target.sudo_user {
        Some(user) if target.in_sudo_users_home && !paths.exists() => anyhow::bail!(
            "no CA in {} and kt runs as root through sudo, so it does not create one in {user}'s home (the files would be root's); run `kt ca init` as {user} (without sudo) first, then `sudo kt ca install`",
            paths.dir.display()
        ),
        _ => Ok(()),
    }
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn target(dir: &std::path::Path, sudo_user: Option<&str>, in_home: bool) -> CaTarget {
        CaTarget {
            dir: dir.to_path_buf(),
            sudo_user: sudo_user.map(String::from),
            user_home: None,
            in_sudo_users_home: in_home,
        }
    }

    #[test]
    fn root_through_sudo_does_not_create_a_ca_in_the_users_home() {
        let dir = tempfile::tempdir().unwrap();
        let paths = CaPaths::in_dir(dir.path());
        let err =
            refuse_to_create_for_another_user(&target(dir.path(), Some("alice"), true), &paths)
                .unwrap_err()
                .to_string();
        assert!(
            err.contains("run `kt ca init` as alice (without sudo) first"),
            "{err}"
        );
        // A folder chosen by flag or KEEPTRUSTS_HOME, or no sudo: created.
        refuse_to_create_for_another_user(&target(dir.path(), Some("alice"), false), &paths)
            .unwrap();
        refuse_to_create_for_another_user(&target(dir.path(), None, false), &paths).unwrap();
        // The user's own CA, once there, is used.
        CertificateAuthority::load_or_create(&paths).unwrap();
        refuse_to_create_for_another_user(&target(dir.path(), Some("alice"), true), &paths)
            .unwrap();
    }
}
