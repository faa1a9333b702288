//! Certificate minting cost (`cargo bench --bench mint`): a leaf for a host
//! never seen before, signed by the local CA, as a ready rustls server
//! config; once directly and once through the gateway's certificate cache
//! (single-flight, minted off the runtime threads), plus the cost of a
//! cache hit. Bounded: a fixed number of names per measurement.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use keeptrusts::tls::ca::{CaPaths, CertificateAuthority};
use keeptrusts::tls::mint::{CertCache, LeafMinter, CLIENT_ALPN};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NAMES: usize = 400;

fn main() {
    // `cargo test --all-targets` runs bench targets without `--bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    keeptrusts::install_crypto_provider();
    let dir = tempfile::tempdir().expect("temp dir");
    let (ca, _) = CertificateAuthority::load_or_create(&CaPaths::in_dir(dir.path())).expect("CA");
    let minter = Arc::new(LeafMinter::new(Arc::new(ca)).expect("minter"));

    let mut direct = Vec::with_capacity(NAMES);
    for i in 0..NAMES {
        let name = format!("m{i}.direct.bench.test");
        let t = Instant::now();
        let cfg = minter.server_config(&name, CLIENT_ALPN).expect("mint");
        direct.push(t.elapsed());
        std::hint::black_box(cfg);
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let cache = CertCache::new(minter, 10_000, Duration::from_secs(3600));
    let (cached_miss, cached_hit) = rt.block_on(async {
        let mut miss = Vec::with_capacity(NAMES);
        let mut hit = Vec::with_capacity(NAMES);
        for i in 0..NAMES {
            let name = format!("m{i}.cache.bench.test");
            let t = Instant::now();
            std::hint::black_box(cache.server_config(&name).await.expect("mint"));
            miss.push(t.elapsed());
            let t = Instant::now();
            std::hint::black_box(cache.server_config(&name).await.expect("hit"));
            hit.push(t.elapsed());
        }
        (miss, hit)
    });

    println!("| measurement | mean µs | p50 µs | p99 µs |");
    println!("|---|---:|---:|---:|");
    for (label, samples) in [
        ("mint a new host (LeafMinter::server_config)", direct),
        ("new host through the cert cache", cached_miss),
        ("cached host", cached_hit),
    ] {
        let (mean, p50, p99) = summary(samples);
        println!("| {label} | {mean:.1} | {p50:.1} | {p99:.1} |");
    }
}

fn summary(mut samples: Vec<Duration>) -> (f64, f64, f64) {
    samples.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let mean = samples.iter().map(|d| us(*d)).sum::<f64>() / samples.len() as f64;
    let at = |q: f64| us(samples[((samples.len() - 1) as f64 * q) as usize]);
    (mean, at(0.5), at(0.99))
}
