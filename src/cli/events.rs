//! `kt events tail` and `kt events verify`: read, follow and check the
//! audit log under `<home>/events`, or the shared table of a hosted
//! gateway.

use super::store::{Store, StoreArgs};
use super::HomeArgs;
use crate::events::chain::is_hash;
use crate::events::{
    format_line, read_last, verify_with, Checkpoints, Filters, Follower, VerifyError,
};
use anyhow::Context as _;
use clap::Subcommand;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Print the audit log's events, one line each, and follow new ones.
    Tail {
        /// Read the live feed of a running gateway (`http://host:41002`)
        /// instead of the local log.
        #[arg(long, value_name = "URL")]
        gateway: Option<String>,
        /// Access key for `--gateway` (default: $KEEPTRUSTS_ACCESS_KEY).
        #[arg(
            long,
            value_name = "KEY",
            env = "KEEPTRUSTS_ACCESS_KEY",
            hide_env_values = true
        )]
        key: Option<String>,
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
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Check the audit log's hash chain; exit 1 naming the first bad line.
    ///
    /// Prints the hash of the last event: kept somewhere else and given
    /// back with `--expect`, it proves later that the log was not cut back
    /// or rewritten after it, which the chain alone cannot show.
    Verify {
        /// An event hash the log must still hold, e.g. the last hash an
        /// earlier verify printed (repeatable).
        #[arg(long = "expect", value_name = "HASH", value_parser = parse_event_hash)]
        expect: Vec<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
}

pub fn run(home: &HomeArgs, cmd: EventsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        EventsCommand::Verify { expect, store } => {
            let checkpoints = Checkpoints::new(expect);
            match store.resolve(home)? {
                Store::Files(dir) => verify_cmd(dir.join("events"), checkpoints),
                Store::Postgres(url) => shared::verify(&url, checkpoints),
            }
        }
        EventsCommand::Tail {
            gateway,
            key,
            filters,
            json,
            n,
            no_follow,
            store,
        } => {
            let filters = Filters::parse(&filters)?;
            if let Some(url) = gateway {
                return remote::tail(&url, key.as_deref(), filters, json, n, !no_follow);
            }
            match store.resolve(home)? {
                Store::Files(dir) => tail(dir.join("events"), filters, json, n, !no_follow),
                Store::Postgres(url) => shared::tail(&url, filters, json, n, !no_follow),
            }
        }
    }
}

/// An event hash as `--expect` takes it: 64 hex digits, any case.
fn parse_event_hash(s: &str) -> Result<String, String> {
    let hash = s.trim().to_ascii_lowercase();
    if is_hash(&hash) {
        Ok(hash)
    } else {
        Err("expected an event hash: 64 hex digits, as `kt events verify` prints it".into())
    }
}

/// Reports the checkpoints the log no longer holds; true when there are none.
fn checkpoints_held(checkpoints: &Checkpoints, retained: bool) -> bool {
    let missing = checkpoints.missing();
    for hash in &missing {
        eprintln!(
            "kt: audit log check FAILED: event {hash} is not in the log: the log was cut back or rewritten after it{}",
            if retained {
                " (or retention removed the segment that held it)"
            } else {
                ""
            }
        );
    }
    missing.is_empty()
}

fn verify_cmd(dir: PathBuf, mut checkpoints: Checkpoints) -> anyhow::Result<ExitCode> {
    match super::progress::Progress::during("verifying the audit log", || {
        verify_with(&dir, &mut checkpoints)
    }) {
        Ok(report) => {
            println!(
                "{}: ok: {} events in {} segments{}{}",
                dir.display(),
                report.events,
                report.segments,
                start_note(&report),
                if report.incomplete_tail {
                    " (the last line is still being written)"
                } else {
                    ""
                }
            );
            if report.unanchored_segments > 0 {
                eprintln!(
                    "kt: note: {} segment(s) before the recorded start are left from a prune that was cut short; the next prune removes them",
                    report.unanchored_segments
                );
            }
            if let Some(hash) = &report.last_hash {
                println!("last event: {hash}");
            }
            if !checkpoints_held(&checkpoints, !report.from_genesis()) {
                return Ok(ExitCode::FAILURE);
            }
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

/// Where the chain checked starts, when not at the log's first event.
fn start_note(report: &crate::events::VerifyReport) -> &'static str {
    if report.events == 0 || report.from_genesis() {
        ""
    } else if report.adopted {
        " from an adopted anchor (the log was pruned by an older kt, which recorded no start: events missing before it cannot be ruled out)"
    } else {
        " from a retained anchor"
    }
}

/// Prints one event as the contract's text line, or its JSON.
fn print(
    out: &mut std::io::StdoutLock<'_>,
    e: &crate::events::Event,
    json: bool,
    colour: bool,
) -> std::io::Result<()> {
    if json {
        let line = serde_json::to_string(e).map_err(std::io::Error::other)?;
        writeln!(out, "{line}")?;
    } else {
        writeln!(out, "{}", format_line(e, colour))?;
    }
    out.flush()
}

fn tail(
    dir: PathBuf,
    filters: Filters,
    json: bool,
    n: usize,
    follow: bool,
) -> anyhow::Result<ExitCode> {
    let colour = crate::cli::stdout_colours();
    let (history, position) = read_last(&dir, n, &filters)
        .with_context(|| format!("cannot read the audit log in {}", dir.display()))?;
    if history.is_empty() && crate::events::segment::list(&dir).is_ok_and(|s| s.is_empty()) {
        // An empty answer would look like a broken tail.
        eprintln!(
            "kt: note: no events recorded in {} yet; exchanges are recorded by an `audit-logger` in the policy chain (the built-in chain has one; `kt policy check FILE` shows a config's)",
            dir.display()
        );
    }
    let mut out = std::io::stdout().lock();
    let print =
        |out: &mut std::io::StdoutLock<'_>, e: &crate::events::Event| print(out, e, json, colour);
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

/// `--gateway URL`: the gateway's `/_kt/events` feed over HTTP.
mod remote {
    use super::{broken_pipe_is_success, print};
    use crate::events::{Event, Filters};
    use crate::llm::sse::SseDecoder;
    use anyhow::{bail, Context as _};
    use http_body_util::BodyExt;
    use std::collections::HashSet;
    use std::process::ExitCode;

    pub fn tail(
        url: &str,
        key: Option<&str>,
        filters: Filters,
        json: bool,
        n: usize,
        follow: bool,
    ) -> anyhow::Result<ExitCode> {
        let gateway = crate::cli::admin::GatewayUrl::parse(url)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        runtime.block_on(async move {
            let resp = gateway
                .ask(
                    http::Method::GET,
                    &feed_path(n, &filters),
                    key,
                    Some("text/event-stream"),
                    std::time::Duration::from_secs(10),
                )
                .await?;
            if !resp.status().is_success() {
                bail!("the gateway answered {} for /_kt/events", resp.status());
            }
            let colour = crate::cli::stdout_colours();
            let mut body = resp.into_body();
            let mut decoder = SseDecoder::new();
            let mut out = std::io::stdout().lock();
            let mut repeats = Repeats::default();
            let mut in_history = true;
            while let Some(frame) = body.frame().await {
                let frame = frame.context("the gateway's feed broke off")?;
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                decoder.feed(&data);
                while let Some(ev) = decoder.next_event() {
                    let ev = ev.context("the gateway's feed is not valid SSE")?;
                    if ev.raw().as_ref() == crate::proxy::feed::HISTORY_END {
                        if !follow {
                            return Ok(ExitCode::SUCCESS);
                        }
                        in_history = false;
                    }
                    let Some(json_text) = ev.data() else { continue };
                    let event: Event = serde_json::from_str(json_text)
                        .context("the gateway's feed carried an event kt cannot read")?;
                    // A gateway older than server-side filters sends them all.
                    if filters.matches(&event) && repeats.is_new(&event.id, in_history) {
                        if let Err(err) = print(&mut out, &event, json, colour) {
                            return broken_pipe_is_success(err);
                        }
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        })
    }

    /// The feed's path: the last `n` events matching `filters`, selected by
    /// the gateway.
    pub(super) fn feed_path(n: usize, filters: &Filters) -> String {
        let mut path = format!("/_kt/events?n={n}");
        for f in &filters.0 {
            path.push_str("&filter=");
            path.extend(percent_encoding::utf8_percent_encode(
                &f.to_string(),
                percent_encoding::NON_ALPHANUMERIC,
            ));
        }
        path
    }

    /// The feed subscribes to live events before it reads the history, so
    /// an event written in between comes in both; this remembers the
    /// history's ids to print such an event once.
    #[derive(Default)]
    pub(super) struct Repeats {
        history: HashSet<String>,
    }

    impl Repeats {
        /// Whether the event `id` is to be printed: always in the history,
        /// afterwards unless the history had it (each repeats at most once).
        pub(super) fn is_new(&mut self, id: &str, in_history: bool) -> bool {
            if in_history {
                self.history.insert(id.to_string());
                true
            } else {
                !self.history.remove(id)
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn an_event_in_the_history_and_the_live_feed_prints_once() {
            let mut repeats = Repeats::default();
            assert!(repeats.is_new("a", true));
            assert!(repeats.is_new("b", true));
            assert!(!repeats.is_new("b", false), "b came in both");
            assert!(repeats.is_new("c", false));
            assert!(repeats.is_new("b", false), "a repeat is skipped once only");
        }

        #[test]
        fn filters_travel_percent_encoded() {
            let filters = Filters::parse(["user=dev 1&x", "action=block"]).unwrap();
            assert_eq!(
                feed_path(5, &filters),
                "/_kt/events?n=5&filter=user%3Ddev%201%26x&filter=action%3Dblock"
            );
        }
    }
}

/// `--storage postgres://…`: the shared table of a hosted gateway.
mod shared {
    use super::{broken_pipe_is_success, checkpoints_held, print};
    use crate::cli::store::{runtime, Store};
    use crate::events::{Checkpoints, Filters};
    use crate::storage::{audit, feed::TeamFeed};
    use anyhow::Context as _;
    use std::process::ExitCode;

    pub fn tail(
        url: &str,
        filters: Filters,
        json: bool,
        n: usize,
        follow: bool,
    ) -> anyhow::Result<ExitCode> {
        runtime()?.block_on(async move {
            let db = Store::db(url).await?;
            let (history, mut feed) = TeamFeed::start(&db, n, filters)
                .await
                .context("cannot read the shared audit trail")?;
            let colour = crate::cli::stdout_colours();
            let mut out = std::io::stdout().lock();
            for e in &history {
                if let Err(err) = print(&mut out, e, json, colour) {
                    return broken_pipe_is_success(err);
                }
            }
            if !follow {
                return Ok(ExitCode::SUCCESS);
            }
            loop {
                tokio::select! {
                    e = feed.next() => {
                        if let Err(err) = print(&mut out, &e, json, colour) {
                            return broken_pipe_is_success(err);
                        }
                    }
                    _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
                }
            }
        })
    }

    pub fn verify(url: &str, mut checkpoints: Checkpoints) -> anyhow::Result<ExitCode> {
        runtime()?.block_on(async move {
            let db = Store::db(url).await?;
            let report = audit::verify(&db, &mut checkpoints)
                .await
                .context("cannot check the shared audit trail")?;
            for c in &report.chains {
                println!(
                    "replica {}: ok: {} events (seq {}..{}){}, last event {}",
                    c.replica,
                    c.events,
                    c.first_seq,
                    c.last_seq,
                    // Every chain in the table starts at seq 1 (a gap
                    // there is a break): one that does not start at the
                    // first event continues an earlier one.
                    if c.from_genesis {
                        ""
                    } else {
                        " continuing an earlier chain (a renamed replica's, or one shipped to another database)"
                    },
                    c.last_hash
                );
            }
            for b in &report.broken {
                eprintln!("kt: audit trail check FAILED: {b}");
            }
            let retained = report.chains.iter().any(|c| !c.from_genesis);
            if !checkpoints_held(&checkpoints, retained) || !report.broken.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
            let total: u64 = report.chains.iter().map(|c| c.events).sum();
            println!(
                "{}: ok: {total} events in {} replica chains",
                db.shown(),
                report.chains.len()
            );
            Ok(ExitCode::SUCCESS)
        })
    }
}
