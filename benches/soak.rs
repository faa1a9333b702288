//! Capacity and soak run of the `kt` gateway (`scripts/soak.sh`).
//!
//! Against the same in-process HTTPS origin as the load benchmark, on
//! loopback, with a release `kt` in its own process:
//!
//! 1. `tunnels`: N (default 10,000) blind tunnels opened and held at once;
//!    every one must open, and a request on a fresh connection must still
//!    be answered while they are held.
//! 2. `clients`: C (default 1,000) intercepted keep-alive clients sending
//!    chat requests in a closed loop for a while: zero errors expected.
//! 3. `soak`: M minutes (default 10) of mixed traffic (keep-alive chat,
//!    SSE streams, a new connection per request), with kt's RSS and open
//!    descriptors sampled every interval; after the load stops both must be
//!    back near where they were after the first interval (no growth).
//!
//! The results are printed as markdown tables and written to
//! `target/bench/soak.md`. Like the load bench, it measures only when given
//! `--bench`, so `cargo test --all-targets` merely starts and exits it.

#![allow(clippy::print_stdout, clippy::print_stderr)]

#[allow(dead_code)]
#[path = "load/client.rs"]
mod client;
#[allow(dead_code)]
#[path = "load/conns.rs"]
mod conns;
#[allow(dead_code)]
#[path = "load/kt.rs"]
mod kt;
#[allow(dead_code)]
#[path = "load/origin.rs"]
mod origin;

use anyhow::{bail, Context as _, Result};
use clap::Parser;
use client::{Job, LoadSpec, Route};
use conns::IdleKind;
use http::Method;
use kt::{Gateway, GatewayOpts};
use origin::{OriginConfig, ORIGIN_HOST};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const BLIND_HOST: &str = "tunnel.bench.test";

#[derive(Debug, Parser)]
#[command(about = "kt capacity and soak run")]
struct Args {
    /// Set by `cargo bench`; without it the binary only starts and exits.
    #[arg(long, hide = true)]
    bench: bool,
    /// The kt binary.
    #[arg(long, env = "KT_BIN", default_value = "target/release/kt")]
    kt_bin: PathBuf,
    /// Idle blind tunnels held at once.
    #[arg(long, env = "TUNNELS", default_value_t = 10_000)]
    tunnels: usize,
    /// Concurrent intercepted keep-alive clients.
    #[arg(long, env = "CLIENTS", default_value_t = 1_000)]
    clients: usize,
    /// Seconds the clients send requests.
    #[arg(long, env = "CLIENT_SECONDS", default_value_t = 20)]
    client_seconds: u64,
    /// Minutes of soak.
    #[arg(long, env = "SOAK_MINUTES", default_value_t = 10.0)]
    soak_minutes: f64,
    /// Seconds between soak samples.
    #[arg(long, env = "SAMPLE_SECONDS", default_value_t = 30)]
    sample_seconds: u64,
    /// Where the markdown report goes.
    #[arg(long, default_value = "target/bench/soak.md")]
    out: PathBuf,
    /// Cargo passes these to every bench target.
    #[arg(hide = true, trailing_var_arg = true, allow_hyphen_values = true)]
    rest: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !args.bench {
        return ExitCode::SUCCESS;
    }
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("soak: FAILED (see the report)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("soak: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn log(msg: &str) {
    eprintln!("[soak] {msg}");
}

/// One row of the soak table.
struct Sample {
    at: Duration,
    requests: u64,
    errors: u64,
    rss_kib: u64,
    fds: usize,
}

fn open_fds(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

fn run(args: &Args) -> Result<bool> {
    // Each tunnel costs the bench two descriptors (client and origin side).
    let want = (args.tunnels as u64) * 2 + 512;
    let got = rlimit::increase_nofile_limit(want).unwrap_or(0);
    if got < want {
        bail!(
            "open-file limit {got} < {want} needed for {} tunnels: raise it (ulimit -n) or lower TUNNELS",
            args.tunnels
        );
    }
    let work = std::env::temp_dir().join(format!("kt-soak-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let origin_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("origin")
        .enable_all()
        .build()?;
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("client")
        .enable_all()
        .build()?;
    let origin = origin::start(
        &origin_rt,
        &work,
        &OriginConfig {
            sse_events: 20,
            sse_gap: Duration::from_millis(5),
            large_bytes: 64 * 1024,
        },
    )?;
    let result = client_rt.block_on(phases(args, &origin, &work));
    client_rt.shutdown_timeout(Duration::from_secs(2));
    origin_rt.shutdown_background();
    let _ = std::fs::remove_dir_all(&work);
    let (report, ok) = result?;
    println!("\n{report}");
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, &report)
        .with_context(|| format!("writing {}", args.out.display()))?;
    log(&format!("wrote {}", args.out.display()));
    Ok(ok)
}

fn connect_to(host: &str, origin: &origin::Origin) -> String {
    format!("{host}:443:{}:{}", origin.addr.ip(), origin.addr.port())
}

async fn start_kt(
    args: &Args,
    origin: &origin::Origin,
    work: &Path,
    tag: &str,
) -> Result<(Gateway, PathBuf)> {
    let data = work.join(format!("kt-{tag}"));
    let ca = kt::init_ca(&args.kt_bin, &data)?;
    let gw = Gateway::start(GatewayOpts {
        bin: &args.kt_bin,
        data_dir: &data,
        upstream_ca: &origin.ca_pem,
        connect_to: vec![
            connect_to(ORIGIN_HOST, origin),
            connect_to(BLIND_HOST, origin),
        ],
        intercept: None,
        extra_args: &[],
        cpus: None,
        log: work.join(format!("kt-{tag}.log")),
    })
    .await?;
    log(&format!("kt (pid {}) on {} for {tag}", gw.pid(), gw.addr));
    Ok((gw, ca))
}

async fn phases(args: &Args, origin: &origin::Origin, work: &Path) -> Result<(String, bool)> {
    let timeout = Duration::from_secs(30);
    let chat = Job {
        method: Method::POST,
        path: "/v1/chat/completions",
        body: client::chat_request_body(false),
        expect_len: origin.sizes.chat,
    };
    let sse = Job {
        method: Method::POST,
        path: "/v1/chat/completions",
        body: client::chat_request_body(true),
        expect_len: origin.sizes.sse,
    };
    let mut md = String::from("## kt capacity and soak\n\n");
    let mut ok = true;

    // 1. Idle blind tunnels held at once.
    let (gw, kt_ca) = start_kt(args, origin, work, "tunnels").await?;
    let blind = Route::new(gw.addr, true, client::tls_connector(&origin.ca_pem)?)?;
    log(&format!("tunnels: opening {}", args.tunnels));
    let t0 = Instant::now();
    let held = conns::idle_memory(
        &gw,
        IdleKind::Blind,
        &blind,
        BLIND_HOST,
        &chat,
        args.tunnels,
        timeout,
    )
    .await?;
    let fill = t0.elapsed();
    let tunnels_ok = held.opened == args.tunnels && held.failed == 0;
    ok &= tunnels_ok;
    let _ = writeln!(
        md,
        "| phase | load | result | errors | kt memory |\n| --- | --- | --- | --- | --- |\n| tunnels | {} idle blind tunnels at once | {} open after {:.1} s | {}{} | {:.1} KiB per tunnel (RSS {} → {} MiB) |",
        args.tunnels,
        held.opened,
        fill.as_secs_f64(),
        held.failed,
        held.first_error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default(),
        held.kib_per_conn().unwrap_or(0.0),
        held.rss_before_kib / 1024,
        held.rss_after_kib / 1024,
    );
    drop(gw);

    // 2. Many intercepted keep-alive clients at once.
    let (mut gw, kt_ca2) = start_kt(args, origin, work, "clients").await?;
    let _ = kt_ca;
    let route = Route::new(gw.addr, true, client::tls_connector(&kt_ca2)?)?;
    log(&format!(
        "clients: {} keep-alive clients for {} s",
        args.clients, args.client_seconds
    ));
    let spec = LoadSpec {
        workers: args.clients,
        new_conn: false,
        warmup: Duration::from_secs(2),
        duration: Duration::from_secs(args.client_seconds),
        max_requests: 5_000_000,
        timeout,
    };
    let tally = client::run_load(&route, ORIGIN_HOST, &chat, &spec).await;
    let mem = gw.memory()?;
    let clients_ok = tally.errors_total() == 0 && tally.ok > 0 && gw.alive();
    ok &= clients_ok;
    let _ = writeln!(
        md,
        "| clients | {} intercepted keep-alive clients, {} s closed loop | {} requests ({:.0}/s) | {}{} | peak RSS {} MiB |",
        args.clients,
        args.client_seconds,
        tally.ok,
        tally.ok as f64 / tally.window_s.max(0.001),
        tally.errors_total(),
        tally.first_error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default(),
        mem.hwm_kib / 1024,
    );
    gw.stop();

    // 3. The soak.
    let (mut gw, kt_ca3) = start_kt(args, origin, work, "soak").await?;
    let route = Route::new(gw.addr, true, client::tls_connector(&kt_ca3)?)?;
    let pid = gw.pid();
    let total = Duration::from_secs_f64(args.soak_minutes * 60.0);
    let step =
        Duration::from_secs(args.sample_seconds.max(1)).min(total.max(Duration::from_secs(1)));
    log(&format!(
        "soak: {:.1} min, a sample every {} s",
        args.soak_minutes,
        step.as_secs()
    ));
    let started = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    let baseline_fds = open_fds(pid)?;
    while started.elapsed() < total {
        let window = step.min(total - started.elapsed());
        let spec = |workers, new_conn| LoadSpec {
            workers,
            new_conn,
            warmup: Duration::ZERO,
            duration: window,
            max_requests: 10_000_000,
            timeout,
        };
        let (ka, streams, fresh) = (spec(16, false), spec(4, false), spec(2, true));
        let (a, b, c) = tokio::join!(
            client::run_load(&route, ORIGIN_HOST, &chat, &ka),
            client::run_load(&route, ORIGIN_HOST, &sse, &streams),
            client::run_load(&route, ORIGIN_HOST, &chat, &fresh),
        );
        if !gw.alive() {
            bail!("kt exited during the soak; log tail:\n{}", gw.log_tail(20));
        }
        samples.push(Sample {
            at: started.elapsed(),
            requests: a.ok + b.ok + c.ok,
            errors: a.errors_total() + b.errors_total() + c.errors_total(),
            rss_kib: gw.memory()?.rss_kib,
            fds: open_fds(pid)?,
        });
        if let Some(s) = samples.last() {
            log(&format!(
                "  {:>5.0} s: {} requests, {} errors, RSS {} MiB, {} fds",
                s.at.as_secs_f64(),
                s.requests,
                s.errors,
                s.rss_kib / 1024,
                s.fds
            ));
        }
    }
    // Idle again: pooled upstream connections may stay, client ones go.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let end_rss = gw.memory()?.rss_kib;
    let end_fds = open_fds(pid)?;
    gw.stop();
    let errors: u64 = samples.iter().map(|s| s.errors).sum();
    let requests: u64 = samples.iter().map(|s| s.requests).sum();
    let first_rss = samples.first().map_or(end_rss, |s| s.rss_kib);
    let max_rss = samples.iter().map(|s| s.rss_kib).max().unwrap_or(end_rss);
    // Flat: no more than 16 MiB or 25% above the first sample.
    let rss_flat = max_rss <= first_rss + (first_rss / 4).max(16 * 1024);
    let fds_flat = end_fds <= baseline_fds + 64;
    ok &= errors == 0 && rss_flat && fds_flat;
    let _ = writeln!(
        md,
        "| soak | {:.1} min of 16 keep-alive chat + 4 SSE + 2 new-connection workers | {} requests | {} | RSS {} MiB after the first sample, at most {} MiB, {} MiB at the end ({}); fds {} idle before, {} idle after ({}) |",
        args.soak_minutes,
        requests,
        errors,
        first_rss / 1024,
        max_rss / 1024,
        end_rss / 1024,
        if rss_flat { "flat" } else { "GROWING" },
        baseline_fds,
        end_fds,
        if fds_flat { "flat" } else { "LEAKING" },
    );
    let _ = writeln!(md, "\n### soak samples\n\n| time | requests | errors | RSS MiB | open fds |\n| --- | --- | --- | --- | --- |");
    for s in &samples {
        let _ = writeln!(
            md,
            "| {:.0} s | {} | {} | {:.1} | {} |",
            s.at.as_secs_f64(),
            s.requests,
            s.errors,
            s.rss_kib as f64 / 1024.0,
            s.fds
        );
    }
    let _ = writeln!(
        md,
        "\nverdict: {}",
        if ok {
            "pass (zero errors, memory and descriptors flat)"
        } else {
            "FAIL"
        }
    );
    Ok((md, ok))
}
