//! Cache benchmark (`scripts/bench.sh --cache`, which builds kt and pins
//! it apart from this process, or `cargo bench --bench cache` with a
//! release kt built): what a cache hit costs end to end through the `kt` binary,
//! against an upstream round trip, on loopback.
//!
//! Scenarios, all HTTP/1.1 keep-alive through CONNECT + TLS to kt, with the
//! in-process HTTPS origin of the load bench posing as `api.openai.com`:
//!
//! - `direct`: the origin without kt (the floor of any round trip);
//! - `miss`: through kt with a cache policy, each request different (an
//!   upstream round trip plus lookup, capture and store);
//! - `hit`: the same JSON request again (in-process tier);
//! - `hit_sse`: the same streamed request again (21 SSE frames replayed);
//! - `hit_c32`: 32 connections asking for the same entry (throughput);
//! - `redis_hit`: a second kt sharing a Redis with the first reads entries
//!   the first stored, each once (Redis tier; needs `KT_BENCH_REDIS_URL` or
//!   `KT_TEST_REDIS_URL`).
//!
//! Prints a markdown table. Measures only when given `--bench`, so
//! `cargo test --all-targets` just starts and exits it.

#![allow(clippy::print_stdout, clippy::print_stderr)]

#[allow(dead_code)]
#[path = "load/client.rs"]
mod client;
#[allow(dead_code)]
#[path = "load/kt.rs"]
mod kt;
#[allow(dead_code)]
#[path = "load/origin.rs"]
mod origin;

use anyhow::{bail, Context as _, Result};
use bytes::Bytes;
use client::{Route, Sender};
use http_body_util::{BodyExt, Full};
use kt::{Gateway, GatewayOpts};
use origin::{OriginConfig, ORIGIN_HOST};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Sequential requests per latency scenario.
const ITERATIONS: usize = 2000;
/// Length of the throughput run.
const THROUGHPUT_RUN: Duration = Duration::from_secs(3);
const WORKERS: usize = 32;

fn main() -> ExitCode {
    if !std::env::args().any(|a| a == "--bench") {
        return ExitCode::SUCCESS;
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cache bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn kt_bin() -> PathBuf {
    if let Some(b) = std::env::var_os("KT_BIN") {
        return b.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("release/kt")
}

fn run() -> Result<()> {
    let bin = kt_bin();
    if !bin.is_file() {
        bail!(
            "{} not found: build it with `cargo build --release` (or set KT_BIN)",
            bin.display()
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;
    let cfg = OriginConfig {
        sse_events: 20,
        sse_gap: Duration::ZERO,
        large_bytes: 1024,
    };
    let origin = origin::start(&rt, dir.path(), &cfg)?;
    let redis = std::env::var("KT_BENCH_REDIS_URL")
        .or_else(|_| std::env::var("KT_TEST_REDIS_URL"))
        .ok()
        .filter(|u| !u.is_empty());
    rt.block_on(async move {
        let mut rows: Vec<Row> = Vec::new();
        let direct = Route::new(origin.addr, false, client::tls_connector(&origin.ca_pem)?)?;
        rows.push(
            latency(
                "direct (no kt), distinct requests",
                &direct,
                Body::Distinct,
                None,
            )
            .await?,
        );

        let prefix = format!("kt-bench:{}:", std::process::id());
        let memory = start_kt(&bin, dir.path(), "a", &origin, None, &prefix).await?;
        let via = memory.route()?;
        rows.push(
            latency(
                "kt miss (upstream round trip + store)",
                &via,
                Body::Distinct,
                Some("miss"),
            )
            .await?,
        );
        rows.push(
            latency(
                "kt hit, JSON (in-process)",
                &via,
                Body::Same(false),
                Some("hit"),
            )
            .await?,
        );
        rows.push(
            latency(
                "kt hit, SSE 21 frames (in-process)",
                &via,
                Body::Same(true),
                Some("hit"),
            )
            .await?,
        );
        rows.push(throughput(&via).await?);

        if let Some(url) = &redis {
            let writer = start_kt(&bin, dir.path(), "w", &origin, Some(url), &prefix).await?;
            let reader = start_kt(&bin, dir.path(), "r", &origin, Some(url), &prefix).await?;
            // The writer stores ITERATIONS distinct entries...
            let w = writer.route()?;
            latency("(fill)", &w, Body::Distinct, Some("miss")).await?;
            wait_for_redis(url, &prefix, ITERATIONS as u64).await?;
            // ...which the reader, with an empty in-process tier, reads once
            // each from Redis.
            let r = reader.route()?;
            rows.push(
                latency(
                    "kt hit from Redis (other replica)",
                    &r,
                    Body::Distinct,
                    Some("hit"),
                )
                .await?,
            );
            let tier = keeptrusts::cache::redis::RedisTier::new(url, &prefix, Default::default())?;
            tier.purge(None).await?;
        } else {
            eprintln!(
                "cache bench: no KT_BENCH_REDIS_URL / KT_TEST_REDIS_URL: Redis scenario skipped"
            );
        }
        print_table(&rows);
        anyhow::Ok(())
    })
}

/// One kt process with a cache policy.
struct Kt {
    gw: Gateway,
    ca_pem: PathBuf,
}

impl Kt {
    fn route(&self) -> Result<Route> {
        Route::new(self.gw.addr, true, client::tls_connector(&self.ca_pem)?)
    }
}

async fn start_kt(
    bin: &Path,
    dir: &Path,
    name: &str,
    origin: &origin::Origin,
    redis: Option<&str>,
    prefix: &str,
) -> Result<Kt> {
    let data = dir.join(format!("kt-{name}"));
    std::fs::create_dir_all(&data)?;
    let ca_pem = kt::init_ca(bin, &data)?;
    let mut yaml = String::from(
        "policies:\n  chain: [ide-cache]\npolicy:\n  ide-cache:\n    type: cache\n    ttl_seconds: 600\n    allow_nondeterministic: true\n",
    );
    if let Some(url) = redis {
        yaml.push_str(&format!("    backend: {url}\n    key_prefix: '{prefix}'\n"));
    }
    let policy = data.join("policy.yaml");
    std::fs::write(&policy, yaml)?;
    let extra = vec!["--policy-config".to_string(), policy.display().to_string()];
    let cpus = std::env::var("KT_CPUS").ok();
    let gw = Gateway::start(GatewayOpts {
        bin,
        data_dir: &data,
        upstream_ca: &origin.ca_pem,
        connect_to: vec![format!("{ORIGIN_HOST}:443:{}", origin.addr)],
        intercept: None,
        extra_args: &extra,
        // `scripts/bench.sh --cache` pins kt apart from this process.
        cpus: cpus.as_deref(),
        log: data.join("kt.log"),
    })
    .await?;
    Ok(Kt { gw, ca_pem })
}

#[derive(Clone, Copy)]
enum Body {
    /// A different request each time (`i` in the prompt).
    Distinct,
    /// The same request each time (streamed or not).
    Same(bool),
}

fn body(kind: Body, i: usize) -> Bytes {
    let (content, stream) = match kind {
        Body::Distinct => (format!("question number {i}: what does kt cache?"), false),
        Body::Same(s) => ("the one question every teammate asks".to_string(), s),
    };
    Bytes::from(
        serde_json::json!({
            "model": "gpt-4o-mini",
            "stream": stream,
            "temperature": 0,
            "messages": [
                {"role": "system", "content": "You are a terse assistant."},
                {"role": "user", "content": content}
            ],
        })
        .to_string(),
    )
}

/// Sends one request; returns its `x-kt-cache` value and body length.
async fn send(sender: &mut Sender, body: Bytes) -> Result<(String, usize)> {
    let req = http::Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header(http::header::HOST, ORIGIN_HOST)
        .header(http::header::CONTENT_TYPE, "application/json")
        // The cache answers only requests that carry a provider credential.
        .header(http::header::AUTHORIZATION, "Bearer sk-bench")
        .body(Full::new(body))?;
    sender.ready().await?;
    let resp = sender.send_request(req).await?;
    if resp.status() != http::StatusCode::OK {
        bail!("status {}", resp.status());
    }
    let verdict = resp
        .headers()
        .get("x-kt-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok((verdict, bytes.len()))
}

struct Row {
    name: String,
    requests: usize,
    p50_us: f64,
    p99_us: f64,
    rps: Option<f64>,
}

fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

/// Sequential requests on one keep-alive connection (after one warm-up
/// request that primes `Same` entries).
async fn latency(name: &str, route: &Route, kind: Body, expect: Option<&str>) -> Result<Row> {
    let mut sender = route
        .http(ORIGIN_HOST)
        .await
        .map_err(|f| anyhow::anyhow!("{f:?}"))
        .context("connecting")?;
    if let Body::Same(_) = kind {
        send(&mut sender, body(kind, 0)).await?;
    }
    let mut nanos = Vec::with_capacity(ITERATIONS);
    for i in 0..ITERATIONS {
        let b = body(kind, i);
        let t = Instant::now();
        let (verdict, len) = send(&mut sender, b).await?;
        nanos.push(t.elapsed().as_nanos() as u64);
        if let Some(want) = expect {
            if verdict != want {
                bail!("{name}: request {i} was {verdict:?}, expected {want:?}");
            }
        }
        if len == 0 {
            bail!("{name}: empty body");
        }
    }
    nanos.sort_unstable();
    Ok(Row {
        name: name.to_string(),
        requests: ITERATIONS,
        p50_us: percentile(&nanos, 0.5),
        p99_us: percentile(&nanos, 0.99),
        rps: None,
    })
}

/// `WORKERS` connections requesting one cached entry for `THROUGHPUT_RUN`.
async fn throughput(route: &Route) -> Result<Row> {
    let the_body = body(Body::Same(false), 0);
    let mut tasks = Vec::new();
    let start = Instant::now();
    for _ in 0..WORKERS {
        let route = route.clone();
        let b = the_body.clone();
        tasks.push(tokio::spawn(async move {
            let mut sender = route
                .http(ORIGIN_HOST)
                .await
                .map_err(|f| anyhow::anyhow!("{f:?}"))?;
            let mut nanos = Vec::new();
            while start.elapsed() < THROUGHPUT_RUN {
                let t = Instant::now();
                let (verdict, _) = send(&mut sender, b.clone()).await?;
                nanos.push(t.elapsed().as_nanos() as u64);
                if verdict != "hit" {
                    bail!("throughput request was {verdict:?}");
                }
            }
            anyhow::Ok(nanos)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort_unstable();
    Ok(Row {
        name: format!("kt hit, JSON, {WORKERS} connections"),
        requests: all.len(),
        p50_us: percentile(&all, 0.5),
        p99_us: percentile(&all, 0.99),
        rps: Some(all.len() as f64 / secs),
    })
}

async fn wait_for_redis(url: &str, prefix: &str, want: u64) -> Result<()> {
    let tier = keeptrusts::cache::redis::RedisTier::new(url, prefix, Default::default())?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (n, _) = tier.usage().await?;
        if n >= want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("Redis holds {n} entries, expected {want}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn print_table(rows: &[Row]) {
    println!("| scenario | requests | p50 | p99 | throughput |");
    println!("|---|---:|---:|---:|---:|");
    for r in rows {
        let rps = r
            .rps
            .map_or_else(|| "".to_string(), |v| format!("{v:.0} req/s"));
        println!(
            "| {} | {} | {:.0} µs | {:.0} µs | {} |",
            r.name, r.requests, r.p50_us, r.p99_us, rps
        );
    }
}
