//! `kt report costs`: spend from the audit log, per user, team, model or
//! provider, as a table or JSON.

use super::store::{runtime, Store, StoreArgs};
use super::HomeArgs;
use crate::events::report::{costs, parse_since, GroupBy, Report, Row};
use clap::{Subcommand, ValueEnum};
use std::io::Write;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Tokens and cost (at list prices) from the audit log.
    Costs {
        /// Group rows by this event field.
        #[arg(long, value_enum, default_value_t = By::User)]
        by: By,
        /// Only events since then: a span (30m, 24h, 7d, 2w), a day
        /// (2026-11-01) or an RFC 3339 time. Default: the whole log.
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum By {
    User,
    Team,
    Model,
    Provider,
}

impl From<By> for GroupBy {
    fn from(b: By) -> GroupBy {
        match b {
            By::User => GroupBy::User,
            By::Team => GroupBy::Team,
            By::Model => GroupBy::Model,
            By::Provider => GroupBy::Provider,
        }
    }
}

pub fn run(home: &HomeArgs, cmd: ReportCommand) -> anyhow::Result<ExitCode> {
    let ReportCommand::Costs {
        by,
        since,
        json,
        store,
    } = cmd;
    let since = since
        .map(|s| parse_since(&s, time::OffsetDateTime::now_utc()))
        .transpose()
        .map_err(|e| anyhow::anyhow!("--since: {e}"))?;
    let by = GroupBy::from(by);
    let report = match store.resolve(home)? {
        Store::Files(dir) => super::progress::Progress::during("reading the audit log", || {
            costs(&dir.join("events"), by, since)
        })?,
        Store::Postgres(url) => runtime()?.block_on(async {
            let db = Store::db(&url).await?;
            anyhow::Ok(crate::storage::audit::costs(&db, by, since).await?)
        })?,
    };
    let text = if json {
        let mut s = serde_json::to_string_pretty(&report)?;
        s.push('\n');
        s
    } else {
        table(by, &report)
    };
    if let Err(e) = std::io::stdout().write_all(text.as_bytes()) {
        // `| head` closing the pipe is not a failure.
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(e.into());
        }
    }
    if report.unreadable > 0 {
        eprintln!(
            "kt: {} line(s) of the audit log could not be read and were skipped; run `kt events verify`",
            report.unreadable
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn table(by: GroupBy, report: &Report) -> String {
    let header = [
        by.as_str().to_uppercase(),
        "REQUESTS".into(),
        "TOKENS_IN".into(),
        "TOKENS_OUT".into(),
        "COST_USD".into(),
        "ESTIMATED".into(),
        "UNPRICED".into(),
        "CACHE_HITS".into(),
        "SAVED_USD".into(),
    ];
    let cells = |r: &Row| {
        [
            r.key.clone(),
            r.requests.to_string(),
            r.tokens_in.to_string(),
            r.tokens_out.to_string(),
            format!("{:.4}", r.cost_usd),
            r.estimated.to_string(),
            r.unpriced.to_string(),
            r.cache_hits.to_string(),
            format!("{:.4}", r.saved_usd),
        ]
    };
    let mut rows: Vec<[String; 9]> = vec![header];
    rows.extend(report.rows.iter().map(cells));
    rows.push(cells(&report.total));
    let mut widths = [0usize; 9];
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, (c, w)) in row.iter().zip(widths).enumerate() {
            if i == 0 {
                line.push_str(&format!("{c:<w$}"));
            } else {
                line.push_str(&format!("  {c:>w$}"));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if report.rows.is_empty() {
        out.push_str("(no LLM exchanges in the audit log for this period)\n");
    }
    out
}
