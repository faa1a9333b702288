//! `kt cache stats` and `kt cache purge`: report on and empty the cache.
//!
//! The in-process tier lives inside a running gateway, so the command asks
//! it over its admin routes (`--gateway`, default the default listen
//! address). Redis tiers named by `--policy-config` are read and purged
//! directly, so they can be managed with no gateway running.

use super::HomeArgs;
use crate::cache::redis::RedisTier;
use crate::cache::DEFAULT_KEY_PREFIX;
use crate::config::{CacheBackend, Config, PolicyOptions};
use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use http_body_util::BodyExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// The gateway asked when `--gateway` is not given.
const DEFAULT_GATEWAY: &str = "http://127.0.0.1:41002";

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Hits, misses and bypasses, and what each tier holds.
    Stats {
        #[command(flatten)]
        target: Target,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Drop cached responses: all of them, or one scope's.
    Purge {
        #[command(flatten)]
        target: Target,
        /// Only this scope: `team:NAME`, `user:NAME`, `anonymous` (user
        /// scope without an access key) or `global`.
        #[arg(long, value_name = "SCOPE")]
        scope: Option<String>,
    },
}

/// Where the cache is.
#[derive(Debug, Args)]
pub struct Target {
    /// Policy config whose `cache` policies name Redis backends (read and
    /// purged directly).
    #[arg(long, value_name = "FILE")]
    policy_config: Option<PathBuf>,
    /// Taken as by the other stored-state commands, but the cache is never
    /// in the store: its shared tier is a cache policy's Redis `backend`.
    #[arg(long, value_name = "URL")]
    storage: Option<String>,
    /// The running gateway holding the in-process tier
    /// [default: http://127.0.0.1:41002].
    #[arg(long, value_name = "URL")]
    gateway: Option<String>,
    /// Access key for the gateway's admin routes (default:
    /// $KEEPTRUSTS_ACCESS_KEY).
    #[arg(
        long,
        value_name = "KEY",
        env = "KEEPTRUSTS_ACCESS_KEY",
        hide_env_values = true
    )]
    key: Option<String>,
}

pub fn run(_home: &HomeArgs, cmd: CacheCommand) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let target = match &cmd {
        CacheCommand::Stats { target, .. } | CacheCommand::Purge { target, .. } => target,
    };
    if target.storage.is_some() {
        eprintln!(
            "kt: note: the cache is not kept in the store (--storage); its shared tier is the Redis `backend` of the cache policies, read through --policy-config"
        );
    }
    runtime.block_on(async move {
        match cmd {
            CacheCommand::Stats { target, json } => stats(target, json).await,
            CacheCommand::Purge { target, scope } => {
                if let Some(s) = &scope {
                    check_scope(s)?;
                }
                purge(target, scope.as_deref()).await
            }
        }
    })
}

fn check_scope(s: &str) -> anyhow::Result<()> {
    let named = |p: &str| s.strip_prefix(p).is_some_and(|n| !n.is_empty());
    if s == "global" || s == "anonymous" || named("team:") || named("user:") {
        Ok(())
    } else {
        bail!("--scope {s:?} is not a scope: use team:NAME, user:NAME, anonymous or global")
    }
}

/// The Redis tiers of the config's cache policies (one per URL and prefix).
fn redis_tiers(target: &Target) -> anyhow::Result<Vec<(RedisTier, String)>> {
    let Some(path) = &target.policy_config else {
        return Ok(Vec::new());
    };
    let config = Config::load(path)?;
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut tiers = Vec::new();
    for p in config.chain() {
        let PolicyOptions::Cache(o) = &p.options else {
            continue;
        };
        let CacheBackend::Redis(url) = &o.backend else {
            continue;
        };
        let prefix = o
            .key_prefix
            .as_deref()
            .unwrap_or(DEFAULT_KEY_PREFIX)
            .to_string();
        if seen.iter().any(|(u, pr)| u == url && *pr == prefix) {
            continue;
        }
        seen.push((url.clone(), prefix.clone()));
        let tier = RedisTier::new(url, &prefix, Arc::default())
            .with_context(|| format!("policy {}: bad Redis URL", p.name))?;
        tiers.push((tier, prefix));
    }
    Ok(tiers)
}

/// What the gateway part of a command found.
enum Remote {
    Answer(serde_json::Value),
    /// Not reachable, and it was only the default guess.
    Absent(String),
}

async fn ask_gateway(target: &Target, method: http::Method, path: &str) -> anyhow::Result<Remote> {
    let explicit = target.gateway.is_some();
    let url = target.gateway.as_deref().unwrap_or(DEFAULT_GATEWAY);
    match call(url, target.key.as_deref(), method, path).await {
        Ok(v) => Ok(Remote::Answer(v)),
        Err(e) if !explicit => Ok(Remote::Absent(super::error_line(&e))),
        Err(e) => Err(e),
    }
}

async fn call(
    url: &str,
    key: Option<&str>,
    method: http::Method,
    path: &str,
) -> anyhow::Result<serde_json::Value> {
    let resp = crate::cli::admin::GatewayUrl::parse(url)?
        .ask(method, path, key, None, std::time::Duration::from_secs(5))
        .await?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .context("the gateway's answer broke off")?
        .to_bytes();
    if !status.is_success() {
        bail!(
            "the gateway at {url} answered {status} for {path}: {}",
            String::from_utf8_lossy(&body).trim()
        );
    }
    serde_json::from_slice(&body)
        .with_context(|| format!("the gateway at {url} did not answer JSON"))
}

async fn stats(target: Target, json: bool) -> anyhow::Result<ExitCode> {
    let tiers = redis_tiers(&target)?;
    let gateway = ask_gateway(&target, http::Method::GET, "/_kt/cache").await?;
    let mut redis = Vec::new();
    for (tier, prefix) in &tiers {
        let (entries, bytes) = tier
            .usage()
            .await
            .with_context(|| format!("cannot read the Redis cache at {}", tier.shown()))?;
        redis.push(serde_json::json!({
            "url": tier.shown(), "prefix": prefix, "entries": entries, "bytes": bytes,
        }));
    }
    if let (Remote::Absent(why), true) = (&gateway, redis.is_empty()) {
        bail!("{why}; start the gateway, pass --gateway URL, or --policy-config FILE for a Redis cache");
    }
    let url = target.gateway.as_deref().unwrap_or(DEFAULT_GATEWAY);
    if json {
        let g = match &gateway {
            Remote::Answer(v) => v.clone(),
            Remote::Absent(_) => serde_json::Value::Null,
        };
        println!("{}", serde_json::json!({ "gateway": g, "redis": redis }));
        return Ok(ExitCode::SUCCESS);
    }
    match &gateway {
        Remote::Answer(v) => {
            let n = |k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
            let hits = n("hits");
            let looked = hits + n("misses");
            let rate = if looked > 0 {
                format!(" ({:.1}% of lookups)", 100.0 * hits as f64 / looked as f64)
            } else {
                String::new()
            };
            println!("gateway {url}");
            println!(
                "  hits {hits}{rate}: memory {}, redis {}, shared flight {}",
                hits.saturating_sub(n("redis_hits") + n("followed")),
                n("redis_hits"),
                n("followed")
            );
            println!("  misses {}  bypasses {}", n("misses"), n("bypasses"));
            println!(
                "  stored {}  not stored {}  redis errors {}",
                n("stores"),
                n("not_stored"),
                n("redis_errors")
            );
            println!(
                "  in-process tier: {} entries, {}",
                n("memory_entries"),
                human(n("memory_bytes"))
            );
        }
        Remote::Absent(why) => println!("gateway {url}: not reached ({why})"),
    }
    for r in &redis {
        println!(
            "redis {} (prefix {}): {} entries, {}",
            r["url"].as_str().unwrap_or(""),
            r["prefix"].as_str().unwrap_or(""),
            r["entries"],
            human(r["bytes"].as_u64().unwrap_or(0))
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn purge(target: Target, scope: Option<&str>) -> anyhow::Result<ExitCode> {
    let tiers = redis_tiers(&target)?;
    let what = scope.map_or_else(|| "all entries".to_string(), |s| format!("scope {s}"));
    let mut done = false;
    for (tier, _) in &tiers {
        let n = tier
            .purge(scope)
            .await
            .with_context(|| format!("cannot purge the Redis cache at {}", tier.shown()))?;
        println!("redis {}: purged {n} entries ({what})", tier.shown());
        done = true;
    }
    let path = match scope {
        Some(s) => format!("/_kt/cache/purge?scope={}", percent_encode(s)),
        None => "/_kt/cache/purge".to_string(),
    };
    let url = target.gateway.as_deref().unwrap_or(DEFAULT_GATEWAY);
    match ask_gateway(&target, http::Method::POST, &path).await? {
        Remote::Answer(v) => {
            let n = v.get("purged").and_then(|x| x.as_u64()).unwrap_or(0);
            println!("gateway {url}: purged {n} in-process entries ({what})");
        }
        Remote::Absent(why) if done => {
            println!(
                "gateway {url}: not reached ({why}); its in-process copies expire within a minute"
            )
        }
        Remote::Absent(why) => {
            bail!("{why}; start the gateway, pass --gateway URL, or --policy-config FILE for a Redis cache")
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_checked_and_encoded() {
        for ok in ["global", "anonymous", "team:core", "user:dev1"] {
            assert!(check_scope(ok).is_ok(), "{ok}");
        }
        for bad in ["", "team:", "everyone", "user"] {
            assert!(check_scope(bad).is_err(), "{bad}");
        }
        assert_eq!(percent_encode("team:a b"), "team%3Aa%20b");
    }
}
