//! Load benchmark of the `kt` gateway (`cargo bench --bench load -- --help`).
//!
//! In one run, against an in-process HTTPS origin on loopback posing as
//! `api.openai.com`, it measures each scenario directly and through kt:
//!
//! - `ka_c1` / `ka_c32`: keep-alive `POST /v1/chat/completions` (~1 KB JSON
//!   reply) with 1 and 32 connections (latency, throughput);
//! - `newconn_c8`: a new connection (TCP + CONNECT + full TLS handshake, no
//!   resumption) per request, 8 workers;
//! - `sse_c8`: streamed reply (20 `data:` events 5 ms apart + `[DONE]`),
//!   time to first byte and total, 8 connections;
//! - `large_c4`: `GET /v1/large` (1 MiB), 4 keep-alive connections;
//! - `handshake`: sequential handshakes to a name kt has already minted a
//!   certificate for vs fresh names (`mN.bench.test`), i.e. the mint cost;
//! - `idle`: kt's memory per idle blind tunnel and per idle intercepted
//!   connection, each on a freshly started kt.
//!
//! kt's CPU per request (utime + stime over a run / successful requests) and
//! its peak RSS are read from `/proc`, and so is this process's own CPU per
//! request (the load client and the origin), which bounds any proxy's
//! figures once their core is saturated. The results are printed as markdown and
//! written to `target/bench/results.md` (+ `results.json`).
//!
//! Meant to be started by `scripts/bench.sh`, which builds kt and pins this
//! process (client + origin) to CPU 0 while kt runs on CPU 1. It measures
//! only when given `--bench` (as `cargo bench` does), so that
//! `cargo test --all-targets`, which runs bench targets without arguments,
//! only starts and exits. Everything stays on loopback, and every run is
//! bounded in time and in request count.

#![allow(clippy::print_stdout, clippy::print_stderr)]

#[path = "load/client.rs"]
mod client;
#[path = "load/conns.rs"]
mod conns;
#[path = "load/kt.rs"]
mod kt;
#[path = "load/origin.rs"]
mod origin;
#[path = "load/report.rs"]
mod report;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use bytes::Bytes;
use clap::Parser;
use http::Method;

use client::{Job, LoadSpec, Route};
use conns::IdleKind;
use kt::{CpuWatch, Gateway, GatewayOpts};
use origin::{Origin, OriginConfig, BENCH_DOMAIN, ORIGIN_HOST};
use report::{HsStats, Report, ScenarioResult, Stats};

/// All scenario names, in run order.
const ALL_SCENARIOS: [&str; 7] = [
    "ka_c1",
    "ka_c32",
    "newconn_c8",
    "sse_c8",
    "large_c4",
    "handshake",
    "idle",
];
/// Host kt does not intercept in its default mode (blind-tunnel test).
const BLIND_HOST: &str = "blind.bench.test";

#[derive(Parser, Debug)]
#[command(
    name = "load",
    about = "Load benchmark: direct vs through kt, on loopback"
)]
struct Args {
    /// kt binary to benchmark [default: <crate>/target/release/kt].
    #[arg(long, env = "KT_BIN")]
    kt_bin: Option<PathBuf>,
    /// Measure only the direct baseline (no kt needed).
    #[arg(long)]
    direct_only: bool,
    /// Warm-up seconds per run (not recorded).
    #[arg(long, env = "BENCH_WARMUP", default_value_t = 1.0)]
    warmup: f64,
    /// Measured seconds per run.
    #[arg(long, env = "BENCH_DURATION", default_value_t = 5.0)]
    duration: f64,
    /// Hard cap on requests started per run (warm-up included).
    #[arg(long, default_value_t = 2_000_000)]
    max_requests: u64,
    /// Timeout per request or connection, seconds.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Comma-separated subset of: ka_c1,ka_c32,newconn_c8,sse_c8,large_c4,handshake,idle.
    #[arg(long, env = "BENCH_SCENARIOS", value_delimiter = ',')]
    scenarios: Vec<String>,
    /// Idle connections held per kind in the `idle` scenario.
    #[arg(long, env = "BENCH_IDLE_CONNS", default_value_t = 500)]
    idle_conns: usize,
    /// Sequential handshakes per kind in the `handshake` scenario (= fresh names).
    #[arg(long, env = "BENCH_MINT_NAMES", default_value_t = 200)]
    mint_names: usize,
    /// CPU list for kt (`taskset -c`); `none` to leave it unpinned.
    #[arg(long, env = "BENCH_KT_CPUS", default_value = "1")]
    kt_cpus: String,
    /// Extra argument for `kt gateway run` (repeatable; use `--kt-arg=--flag`).
    #[arg(long = "kt-arg", allow_hyphen_values = true)]
    kt_args: Vec<String>,
    /// Tokio worker threads of the load client.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Tokio worker threads of the origin.
    #[arg(long, default_value_t = 1)]
    origin_threads: usize,
    /// SSE events before `[DONE]`.
    #[arg(long, default_value_t = 20)]
    sse_events: usize,
    /// Milliseconds between SSE events.
    #[arg(long, default_value_t = 5)]
    sse_gap_ms: u64,
    /// Body size of `GET /v1/large`, bytes.
    #[arg(long, default_value_t = 1 << 20)]
    large_bytes: usize,
    /// Where results.md / results.json go [default: <crate>/target/bench].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Keep the work directory (CAs, kt data dirs and logs).
    #[arg(long)]
    keep_work: bool,
    /// Actually run (`cargo bench` passes this). Without it the binary only
    /// checks its arguments and exits, so `cargo test --all-targets`, which
    /// runs bench targets with no arguments, does not start a benchmark.
    #[arg(long)]
    bench: bool,
}

impl Args {
    fn validate(&mut self) -> Result<()> {
        if !(0.0..=60.0).contains(&self.warmup) {
            bail!("--warmup must be within 0..=60 s");
        }
        if !(0.1..=600.0).contains(&self.duration) {
            bail!("--duration must be within 0.1..=600 s");
        }
        if !(0.1..=120.0).contains(&self.timeout) {
            bail!("--timeout must be within 0.1..=120 s");
        }
        self.max_requests = self.max_requests.clamp(1, 50_000_000);
        self.mint_names = self.mint_names.clamp(1, 2_000);
        self.idle_conns = self.idle_conns.clamp(1, 10_000);
        self.client_threads = self.client_threads.clamp(1, 64);
        self.origin_threads = self.origin_threads.clamp(1, 64);
        self.sse_events = self.sse_events.min(10_000);
        self.sse_gap_ms = self.sse_gap_ms.min(1_000);
        self.large_bytes = self.large_bytes.min(1 << 30);
        for s in &self.scenarios {
            if !ALL_SCENARIOS.contains(&s.as_str()) {
                bail!("unknown scenario {s:?}; known: {}", ALL_SCENARIOS.join(","));
            }
        }
        // The idle test holds a client socket and an origin socket (plus kt's
        // own, in kt) per connection: stay well inside our descriptor limit.
        if let Some(limit) = kt::open_files_limit() {
            let fit = usize::try_from(limit.saturating_sub(256) / 2).unwrap_or(usize::MAX);
            if self.idle_conns > fit {
                eprintln!("load: open-files limit {limit}: lowering --idle-conns to {fit} (raise `ulimit -n`)");
                self.idle_conns = fit.max(1);
            }
        }
        Ok(())
    }

    fn wants(&self, scenario: &str) -> bool {
        self.scenarios.is_empty() || self.scenarios.iter().any(|s| s == scenario)
    }

    fn spec(&self, workers: usize, new_conn: bool) -> LoadSpec {
        LoadSpec {
            workers,
            new_conn,
            warmup: Duration::from_secs_f64(self.warmup),
            duration: Duration::from_secs_f64(self.duration),
            max_requests: self.max_requests,
            timeout: self.timeout(),
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout)
    }

    fn kt_cpus(&self) -> Option<&str> {
        let v = self.kt_cpus.trim();
        (!v.is_empty() && v != "none").then_some(v)
    }
}

/// One load scenario.
struct Scenario {
    name: &'static str,
    what: String,
    spec: LoadSpec,
    job: Job,
}

fn scenarios(args: &Args, origin: &Origin) -> Vec<Scenario> {
    let chat = Job {
        method: Method::POST,
        path: "/v1/chat/completions",
        body: client::chat_request_body(false),
        expect_len: origin.sizes.chat,
    };
    let sse = Job {
        body: client::chat_request_body(true),
        expect_len: origin.sizes.sse,
        ..chat.clone()
    };
    let large = Job {
        method: Method::GET,
        path: "/v1/large",
        body: Bytes::new(),
        expect_len: origin.sizes.large,
    };
    let all = [
        ("ka_c1", "keep-alive POST /v1/chat/completions (~1 KB JSON reply), 1 connection".to_string(), 1, false, &chat),
        ("ka_c32", "the same with 32 keep-alive connections".into(), 32, false, &chat),
        (
            "newconn_c8",
            "new connection per request (TCP + CONNECT + full TLS handshake, no resumption) + POST, 8 workers".into(),
            8,
            true,
            &chat,
        ),
        (
            "sse_c8",
            format!(
                "POST with \"stream\":true: {} SSE events {} ms apart + [DONE], 8 connections",
                args.sse_events, args.sse_gap_ms
            ),
            8,
            false,
            &sse,
        ),
        ("large_c4", format!("GET /v1/large ({} bytes), 4 keep-alive connections", args.large_bytes), 4, false, &large),
    ];
    all.into_iter()
        .filter(|(name, ..)| args.wants(name))
        .map(|(name, what, workers, new_conn, job)| Scenario {
            name,
            what,
            spec: args.spec(workers, new_conn),
            job: job.clone(),
        })
        .collect()
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    if let Err(e) = args.validate() {
        eprintln!("load: {e:#}");
        return ExitCode::from(2);
    }
    if !args.bench {
        eprintln!("load: not started by `cargo bench` (no --bench): nothing measured; see scripts/bench.sh");
        return ExitCode::SUCCESS;
    }
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("load: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Sets up work dir, runtimes and origin, runs the bench, writes the results.
/// Returns whether everything measured without errors.
fn run(args: &Args) -> Result<bool> {
    let kt_bin = args
        .kt_bin
        .clone()
        .unwrap_or_else(|| crate_dir().join("target/release/kt"));
    if !args.direct_only && !kt_bin.is_file() {
        bail!("kt binary {} not found: build it (cargo build --release), set KT_BIN, or pass --direct-only", kt_bin.display());
    }
    let out_dir = args
        .out
        .clone()
        .unwrap_or_else(|| crate_dir().join("target/bench"));
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let work_dir = WorkDir::create(args.keep_work)?;
    let work = work_dir.0.clone();

    let origin_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.origin_threads)
        .thread_name("origin")
        .enable_all()
        .build()?;
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads)
        .thread_name("client")
        .enable_all()
        .build()?;
    let origin = origin::start(
        &origin_rt,
        &work,
        &OriginConfig {
            sse_events: args.sse_events,
            sse_gap: Duration::from_millis(args.sse_gap_ms),
            large_bytes: args.large_bytes,
        },
    )?;

    let mut report = Report::default();
    let outcome = client_rt.block_on(async {
        tokio::select! {
            r = bench(args, &kt_bin, &origin, &work, &mut report) => r,
            r = interrupted() => r,
        }
    });
    client_rt.shutdown_timeout(Duration::from_secs(2));
    origin_rt.shutdown_background();
    if let Err(e) = &outcome {
        report.notes.push(format!("bench aborted: {e:#}"));
    }

    let md = report.markdown();
    println!("\n{md}");
    std::fs::write(out_dir.join("results.md"), &md)?;
    std::fs::write(
        out_dir.join("results.json"),
        serde_json::to_string_pretty(&report.json())?,
    )?;
    eprintln!(
        "load: wrote {}/results.md and results.json",
        out_dir.display()
    );
    outcome.map(|()| !report.has_problems())
}

/// Scratch directory for CAs, kt data dirs and logs; removed on drop unless kept.
struct WorkDir(PathBuf, bool);

impl WorkDir {
    fn create(keep: bool) -> Result<WorkDir> {
        let path = std::env::temp_dir().join(format!("kt-load-bench-{}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(WorkDir(path, keep))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.1 {
            eprintln!("load: work directory kept: {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM (dropping the bench, which stops kt).
async fn interrupted() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    bail!("interrupted")
}

fn log(msg: &str) {
    eprintln!("[load] {msg}");
}

async fn bench(
    args: &Args,
    kt_bin: &Path,
    origin: &Origin,
    work: &Path,
    report: &mut Report,
) -> Result<()> {
    let kt_cpus = args.kt_cpus().filter(|_| !args.direct_only);
    let kt_desc = if args.direct_only {
        "not run (--direct-only)".to_string()
    } else {
        match kt::version(kt_bin) {
            Some(v) => format!("{} ({v})", kt_bin.display()),
            None => kt_bin.display().to_string(),
        }
    };
    report.setup = vec![
        ("kt".into(), kt_desc),
        (
            "per run".into(),
            format!(
                "{} s warm-up + {} s measured, at most {} requests",
                args.warmup, args.duration, args.max_requests
            ),
        ),
        (
            "CPUs".into(),
            format!(
                "bench (client {} + origin {} threads) on [{}], kt on [{}]",
                args.client_threads,
                args.origin_threads,
                kt::own_cpus(),
                if args.direct_only {
                    "not run"
                } else {
                    kt_cpus.unwrap_or("unpinned")
                }
            ),
        ),
        (
            "TLS".into(),
            "client: HTTP/1.1, X25519/P-256, no resumption; origin: ECDSA P-256 test CA".into(),
        ),
    ];
    log(&format!(
        "origin on {} (test CA {})",
        origin.addr,
        origin.ca_pem.display()
    ));
    let direct = Route::new(origin.addr, false, client::tls_connector(&origin.ca_pem)?)?;
    let scenarios = scenarios(args, origin);
    let fresh_names: Vec<String> = (0..args.mint_names)
        .map(|i| format!("m{i}.{BENCH_DOMAIN}"))
        .collect();
    let want_hs = args.wants("handshake");

    // The main kt instance: intercept everything (as in the shared harness).
    let mut gw = None;
    let mut kt_route = None;
    if !args.direct_only && (!scenarios.is_empty() || want_hs) {
        let data = work.join("kt-main");
        let kt_ca = kt::init_ca(kt_bin, &data)?;
        let mut mappings = vec![connect_to(ORIGIN_HOST, origin)];
        if want_hs {
            mappings.extend(fresh_names.iter().map(|n| connect_to(n, origin)));
        }
        let g = Gateway::start(GatewayOpts {
            bin: kt_bin,
            data_dir: &data,
            upstream_ca: &origin.ca_pem,
            connect_to: mappings,
            intercept: Some("all"),
            extra_args: &args.kt_args,
            cpus: kt_cpus,
            log: work.join("kt-main.log"),
        })
        .await?;
        log(&format!("kt (pid {}) ready on {}", g.pid(), g.addr));
        let route = Route::new(g.addr, true, client::tls_connector(&kt_ca)?)?;
        smoke_test(&route, &scenarios, args.timeout())
            .await
            .map_err(|e| anyhow::anyhow!("{e:#}\nkt log tail:\n{}", g.log_tail(20)))?;
        report.kt_idle_rss_kib = Some(g.memory()?.rss_kib);
        gw = Some(g);
        kt_route = Some(route);
    }

    for sc in &scenarios {
        log(&format!("{}: direct", sc.name));
        let watch = CpuWatch::start(None)?;
        let mut d =
            Stats::from_tally(client::run_load(&direct, ORIGIN_HOST, &sc.job, &sc.spec).await);
        d.set_cpu(&watch.finish()?);
        log(&summary_line(&d));
        let mut result = ScenarioResult {
            name: sc.name,
            what: sc.what.clone(),
            direct: Some(d),
            kt: None,
            kt_cpu_us_per_req: None,
        };
        if let (Some(g), Some(route)) = (gw.as_mut(), kt_route.as_ref()) {
            if !g.alive() {
                bail!("kt exited; log tail:\n{}", g.log_tail(20));
            }
            log(&format!("{}: through kt", sc.name));
            let watch = CpuWatch::start(Some(g.pid()))?;
            let mut k =
                Stats::from_tally(client::run_load(route, ORIGIN_HOST, &sc.job, &sc.spec).await);
            let cpu = watch.finish()?;
            k.set_cpu(&cpu);
            result.kt_cpu_us_per_req = cpu
                .kt
                .filter(|_| k.ok_all > 0)
                .map(|t| t.as_secs_f64() * 1e6 / k.ok_all as f64);
            log(&summary_line(&k));
            result.kt = Some(k);
        }
        report.scenarios.push(result);
    }

    if want_hs {
        let cached: Vec<String> = vec![ORIGIN_HOST.to_string(); args.mint_names];
        log(&format!(
            "handshake: {} cached-name and {} new-name handshakes each way",
            cached.len(),
            fresh_names.len()
        ));
        report.hs_cached.direct = Some(HsStats::from(
            conns::handshakes(&direct, &cached, args.timeout()).await,
        ));
        report.hs_fresh.direct = Some(HsStats::from(
            conns::handshakes(&direct, &fresh_names, args.timeout()).await,
        ));
        if let Some(route) = &kt_route {
            report.hs_cached.kt = Some(HsStats::from(
                conns::handshakes(route, &cached, args.timeout()).await,
            ));
            report.hs_fresh.kt = Some(HsStats::from(
                conns::handshakes(route, &fresh_names, args.timeout()).await,
            ));
        }
    }
    if let Some(mut g) = gw.take() {
        report.kt_peak_rss_kib = Some(g.memory()?.hwm_kib);
        g.stop();
    }

    if !args.direct_only && args.wants("idle") {
        for kind in [IdleKind::Blind, IdleKind::Intercepted] {
            let r = idle_run(args, kt_bin, origin, work, kind, kt_cpus).await?;
            log(&format!(
                "idle {kind:?}: {} open, RSS {} -> {} KiB",
                r.opened, r.rss_before_kib, r.rss_after_kib
            ));
            match kind {
                IdleKind::Blind => report.idle_blind = Some(r),
                IdleKind::Intercepted => report.idle_intercepted = Some(r),
            }
        }
    }
    Ok(())
}

fn connect_to(host: &str, origin: &Origin) -> String {
    format!("{host}:443:{}:{}", origin.addr.ip(), origin.addr.port())
}

fn summary_line(s: &Stats) -> String {
    let f = |v: Option<f64>| v.map_or_else(|| "–".into(), report::num);
    format!(
        "  {} req/s, {} MB/s, p50 {} ms, p99 {} ms, ttfb p50 {} ms, {} errors, foreign CPU {:.2} cores",
        report::num(s.rps),
        report::num(s.mb_per_s),
        f(s.latency.p50),
        f(s.latency.p99),
        f(s.ttfb.p50),
        s.errors,
        s.foreign_cores.unwrap_or(0.0)
    )
}

/// One request of each distinct job through kt, before measuring anything.
async fn smoke_test(route: &Route, scenarios: &[Scenario], timeout: Duration) -> Result<()> {
    let mut seen: Vec<(&str, &Bytes)> = Vec::new();
    for sc in scenarios {
        if seen.contains(&(sc.job.path, &sc.job.body)) {
            continue;
        }
        seen.push((sc.job.path, &sc.job.body));
        let attempt = tokio::time::timeout(timeout, async {
            let mut s = route.http(ORIGIN_HOST).await?;
            client::exchange(&mut s, ORIGIN_HOST, &sc.job).await
        })
        .await;
        match attempt {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!("smoke test through kt ({}) failed: {e}", sc.name),
            Err(_) => bail!("smoke test through kt ({}) timed out", sc.name),
        }
    }
    Ok(())
}

/// Starts a fresh kt in its default interception mode and measures one kind
/// of idle connection on it.
async fn idle_run(
    args: &Args,
    kt_bin: &Path,
    origin: &Origin,
    work: &Path,
    kind: IdleKind,
    kt_cpus: Option<&str>,
) -> Result<conns::IdleResult> {
    let tag = format!("{kind:?}").to_lowercase();
    let data = work.join(format!("kt-idle-{tag}"));
    let kt_ca = kt::init_ca(kt_bin, &data)?;
    let gw = Gateway::start(GatewayOpts {
        bin: kt_bin,
        data_dir: &data,
        upstream_ca: &origin.ca_pem,
        connect_to: vec![
            connect_to(ORIGIN_HOST, origin),
            connect_to(BLIND_HOST, origin),
        ],
        intercept: None,
        extra_args: &args.kt_args,
        cpus: kt_cpus,
        log: work.join(format!("kt-idle-{tag}.log")),
    })
    .await?;
    let chat = Job {
        method: Method::POST,
        path: "/v1/chat/completions",
        body: client::chat_request_body(false),
        expect_len: origin.sizes.chat,
    };
    // A blind tunnel ends at the origin itself, so the client must trust the
    // origin's CA there (which also proves kt did not intercept it).
    let (route, host) = match kind {
        IdleKind::Blind => (
            Route::new(gw.addr, true, client::tls_connector(&origin.ca_pem)?)?,
            BLIND_HOST,
        ),
        IdleKind::Intercepted => (
            Route::new(gw.addr, true, client::tls_connector(&kt_ca)?)?,
            ORIGIN_HOST,
        ),
    };
    log(&format!(
        "idle {kind:?}: opening {} connections to {host} on a fresh kt (pid {})",
        args.idle_conns,
        gw.pid()
    ));
    conns::idle_memory(
        &gw,
        kind,
        &route,
        host,
        &chat,
        args.idle_conns,
        args.timeout(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}\nkt log tail:\n{}", gw.log_tail(20)))
}
