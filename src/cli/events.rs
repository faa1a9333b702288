//! `kt events tail` and `kt events verify`: read, follow and check the
//! audit log under `<home>/events`.

use super::HomeArgs;
use crate::events::{format_line, read_last, verify, Filters, Follower, VerifyError};
use anyhow::Context as _;
use clap::Subcommand;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Print the audit log's events, one line each, and follow new ones.
    Tail {
        /// Read the live feed of a running gateway instead of the local log.
        #[arg(long, value_name = "URL")]
        gateway: Option<String>,
        /// Only events whose field KEY equals VALUE (repeatable, ANDed),
        /// e.g. `action=redact`, `user=dev1`.
        #[arg(long = "filter", value_name = "KEY=VALUE")]
        filters: Vec<String>,
        /// Print the raw JSON lines.
        #[arg(long)]
        json: bool,
        /// Events of history to print first.
        #[arg(short = 'n', value_name = "N", default_value_t = 10)]
        n: usize,
        /// Exit after the history instead of following.
        #[arg(long)]
        no_follow: bool,
    },
    /// Check the audit log's hash chain; exit 1 naming the first bad line.
    Verify,
}

pub fn run(home: &HomeArgs, cmd: EventsCommand) -> anyhow::Result<ExitCode> {
    let dir = home.home()?.join("events");
    match cmd {
        EventsCommand::Verify => verify_cmd(dir),
        EventsCommand::Tail {
            gateway,
            filters,
            json,
            n,
            no_follow,
        } => {
            if gateway.is_some() {
                anyhow::bail!(
                    "--gateway (the live feed of a remote gateway) is not available yet; run `kt events tail` where the gateway writes its log"
                );
            }
            let filters = Filters::parse(&filters)?;
            tail(dir, filters, json, n, !no_follow)
        }
    }
}

fn verify_cmd(dir: PathBuf) -> anyhow::Result<ExitCode> {
    match verify(&dir) {
        Ok(report) => {
            println!(
                "{}: ok: {} events in {} segments{}",
                dir.display(),
                report.events,
                report.segments,
                if report.incomplete_tail {
                    " (the last line is still being written)"
                } else {
                    ""
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(VerifyError::Tampered {
            file,
            line,
            problem,
        }) => {
            eprintln!(
                "kt: audit log check FAILED: {}:{line}: {problem}",
                file.display()
            );
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e).context("cannot check the audit log"),
    }
}

fn tail(
    dir: PathBuf,
    filters: Filters,
    json: bool,
    n: usize,
    follow: bool,
) -> anyhow::Result<ExitCode> {
    let colour = std::io::stdout().is_terminal();
    let (history, position) = read_last(&dir, n, &filters)
        .with_context(|| format!("cannot read the audit log in {}", dir.display()))?;
    let mut out = std::io::stdout().lock();
    let print =
        |out: &mut std::io::StdoutLock<'_>, e: &crate::events::Event| -> std::io::Result<()> {
            if json {
                let line = serde_json::to_string(e).map_err(std::io::Error::other)?;
                writeln!(out, "{line}")?;
            } else {
                writeln!(out, "{}", format_line(e, colour))?;
            }
            out.flush()
        };
    for e in &history {
        if let Err(err) = print(&mut out, e) {
            return broken_pipe_is_success(err);
        }
    }
    if !follow {
        return Ok(ExitCode::SUCCESS);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let mut follower = Follower::new(&dir, position, filters);
        loop {
            tokio::select! {
                next = follower.next() => {
                    let e = next.context("cannot follow the audit log")?;
                    if let Err(err) = print(&mut out, &e) {
                        return broken_pipe_is_success(err);
                    }
                }
                _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
            }
        }
    })
}

/// `kt events tail | head` ends with a broken pipe: that is success.
fn broken_pipe_is_success(err: std::io::Error) -> anyhow::Result<ExitCode> {
    if err.kind() == std::io::ErrorKind::BrokenPipe {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(err.into())
    }
}
