//! Turning raw tallies into figures, and figures into the markdown summary
//! (direct vs kt) and a JSON document with the same content.

use serde_json::{json, Value};

use crate::client::{percentile_ms, Tally};
use crate::conns::{Handshakes, IdleResult};
use crate::kt::CpuUse;

/// Latency percentiles, milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pcts {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

impl Pcts {
    fn of(mut samples: Vec<u64>) -> Pcts {
        samples.sort_unstable();
        Pcts {
            p50: percentile_ms(&samples, 0.50),
            p90: percentile_ms(&samples, 0.90),
            p99: percentile_ms(&samples, 0.99),
            max: percentile_ms(&samples, 1.0),
        }
    }

    fn json(&self) -> Value {
        json!({"p50": self.p50, "p90": self.p90, "p99": self.p99, "max": self.max})
    }
}

/// Foreign CPU load (cores) above which a run is flagged as noisy.
const NOISY_CORES: f64 = 0.2;

/// Figures of one load run.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub ok: u64,
    pub ok_all: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub rps: f64,
    pub mb_per_s: f64,
    pub latency: Pcts,
    pub ttfb: Pcts,
    pub connect: Pcts,
    /// Cores busy with work that was neither the bench nor kt, on average.
    pub foreign_cores: Option<f64>,
    /// CPU of the load client and the origin (this process) per successful
    /// request incl. warm-up. Pinned to their own core, this is what caps
    /// a run when that core is saturated, whatever the proxy costs.
    pub bench_cpu_us_per_req: Option<f64>,
    /// Cores the load client and the origin kept busy, on average.
    pub bench_cores: Option<f64>,
}

impl Stats {
    pub fn from_tally(t: Tally) -> Stats {
        Stats {
            ok: t.ok,
            ok_all: t.ok_all,
            errors: t.errors_total(),
            first_error: t.first_error.clone(),
            rps: t.ok as f64 / t.window_s,
            mb_per_s: t.bytes as f64 / t.window_s / 1e6,
            latency: Pcts::of(t.latency),
            ttfb: Pcts::of(t.ttfb),
            connect: Pcts::of(t.connect),
            foreign_cores: None,
            bench_cpu_us_per_req: None,
            bench_cores: None,
        }
    }

    /// Records what a [`CpuWatch`](crate::kt::CpuWatch) saw over this run.
    pub fn set_cpu(&mut self, cpu: &CpuUse) {
        self.foreign_cores = Some(cpu.foreign_cores);
        self.bench_cores = Some(cpu.bench_cores);
        self.bench_cpu_us_per_req =
            (self.ok_all > 0).then(|| cpu.bench.as_secs_f64() * 1e6 / self.ok_all as f64);
    }

    fn json(&self) -> Value {
        json!({
            "requests_ok": self.ok, "requests_ok_incl_warmup": self.ok_all, "errors": self.errors,
            "first_error": self.first_error, "rps": self.rps, "mbytes_per_s": self.mb_per_s,
            "latency_ms": self.latency.json(), "ttfb_ms": self.ttfb.json(), "connect_ms": self.connect.json(),
            "foreign_cpu_cores": self.foreign_cores,
            "bench_cpu_us_per_req": self.bench_cpu_us_per_req, "bench_cpu_cores": self.bench_cores,
        })
    }
}

/// One load scenario, both ways.
pub struct ScenarioResult {
    pub name: &'static str,
    pub what: String,
    pub direct: Option<Stats>,
    pub kt: Option<Stats>,
    /// kt CPU (utime + stime) over the whole run / successful requests incl. warm-up.
    pub kt_cpu_us_per_req: Option<f64>,
}

/// Handshake timings summarised.
#[derive(Debug, Clone, Default)]
pub struct HsStats {
    pub n: usize,
    pub failed: usize,
    pub first_error: Option<String>,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub mean: Option<f64>,
}

impl HsStats {
    pub fn from(h: Handshakes) -> HsStats {
        let n = h.samples.len();
        let mean =
            (n > 0).then(|| h.samples.iter().map(|&s| s as f64).sum::<f64>() / n as f64 / 1e6);
        let mut s = h.samples;
        s.sort_unstable();
        HsStats {
            n,
            failed: h.failed,
            first_error: h.first_error,
            p50: percentile_ms(&s, 0.5),
            p99: percentile_ms(&s, 0.99),
            mean,
        }
    }

    fn json(&self) -> Value {
        json!({"ok": self.n, "failed": self.failed, "first_error": self.first_error,
               "p50_ms": self.p50, "p99_ms": self.p99, "mean_ms": self.mean})
    }
}

/// Direct and kt figures of one handshake kind.
#[derive(Default)]
pub struct HsPair {
    pub direct: Option<HsStats>,
    pub kt: Option<HsStats>,
}

/// Everything one bench run found.
#[derive(Default)]
pub struct Report {
    /// `key: value` lines describing the run.
    pub setup: Vec<(String, String)>,
    pub scenarios: Vec<ScenarioResult>,
    pub hs_cached: HsPair,
    pub hs_fresh: HsPair,
    pub idle_blind: Option<IdleResult>,
    pub idle_intercepted: Option<IdleResult>,
    pub kt_idle_rss_kib: Option<u64>,
    pub kt_peak_rss_kib: Option<u64>,
    /// Problems worth reading next to the table.
    pub notes: Vec<String>,
}

/// A number with a precision that suits its size.
pub fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 10_000.0 {
        let s = format!("{:.0}", a);
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        if v < 0.0 {
            format!("-{out}")
        } else {
            out
        }
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), num)
}

/// How kt compares with direct: a factor for rates, a difference for times.
enum Cmp {
    Ratio,
    Delta(&'static str),
    None,
}

fn compare(direct: Option<f64>, kt: Option<f64>, how: &Cmp) -> String {
    match (how, direct, kt) {
        (Cmp::Ratio, Some(d), Some(k)) if d > 0.0 => format!("{:.2}×", k / d),
        (Cmp::Delta(unit), Some(d), Some(k)) => {
            let pct = if d > 0.0 {
                format!(" ({:.2}×)", k / d)
            } else {
                String::new()
            };
            format!(
                "{}{} {unit}{pct}",
                if k >= d { "+" } else { "−" },
                num((k - d).abs())
            )
        }
        _ => "–".into(),
    }
}

impl Report {
    fn scenario(&self, name: &str) -> Option<&ScenarioResult> {
        self.scenarios.iter().find(|s| s.name == name)
    }

    /// The main table rows: (label, direct, kt, comparison).
    fn rows(&self) -> Vec<[String; 4]> {
        let mut rows = Vec::new();
        let mut add = |label: String, d: Option<f64>, k: Option<f64>, how: Cmp| {
            if d.is_some() || k.is_some() {
                let c = compare(d, k, &how);
                rows.push([label, opt(d), opt(k), c]);
            }
        };
        type Pick = fn(&Stats) -> Option<f64>;
        let lines: [(&str, &str, Pick, Cmp); 9] = [
            (
                "ka_c1",
                "latency p50 (ms)",
                |s| s.latency.p50,
                Cmp::Delta("ms"),
            ),
            (
                "ka_c1",
                "latency p99 (ms)",
                |s| s.latency.p99,
                Cmp::Delta("ms"),
            ),
            ("ka_c32", "throughput (req/s)", |s| Some(s.rps), Cmp::Ratio),
            (
                "ka_c32",
                "latency p99 (ms)",
                |s| s.latency.p99,
                Cmp::Delta("ms"),
            ),
            (
                "newconn_c8",
                "throughput (req/s)",
                |s| Some(s.rps),
                Cmp::Ratio,
            ),
            (
                "newconn_c8",
                "latency p50 (ms)",
                |s| s.latency.p50,
                Cmp::Delta("ms"),
            ),
            (
                "sse_c8",
                "time to first byte p50 (ms)",
                |s| s.ttfb.p50,
                Cmp::Delta("ms"),
            ),
            (
                "sse_c8",
                "total p50 (ms)",
                |s| s.latency.p50,
                Cmp::Delta("ms"),
            ),
            (
                "large_c4",
                "throughput (MB/s)",
                |s| Some(s.mb_per_s),
                Cmp::Ratio,
            ),
        ];
        for (name, what, pick, how) in lines {
            if let Some(s) = self.scenario(name) {
                add(
                    format!("{name} {what}"),
                    s.direct.as_ref().and_then(pick),
                    s.kt.as_ref().and_then(pick),
                    how,
                );
            }
        }
        for s in &self.scenarios {
            if s.kt.is_some() {
                add(
                    format!("{} kt CPU per request (µs)", s.name),
                    None,
                    s.kt_cpu_us_per_req,
                    Cmp::None,
                );
            }
        }
        // The other side of the bill: through a proxy, the client and the
        // origin pay for wake-ups across cores that direct never has.
        for s in &self.scenarios {
            let bench = |st: &Option<Stats>| st.as_ref().and_then(|st| st.bench_cpu_us_per_req);
            add(
                format!("{} load client + origin CPU per request (µs)", s.name),
                bench(&s.direct),
                bench(&s.kt),
                Cmp::Ratio,
            );
        }
        if self.hs_cached.direct.is_some() || self.hs_cached.kt.is_some() {
            let p = |h: &Option<HsStats>| h.as_ref().and_then(|h| h.p50);
            add(
                "handshake, cached name p50 (ms)".into(),
                p(&self.hs_cached.direct),
                p(&self.hs_cached.kt),
                Cmp::Delta("ms"),
            );
            add(
                "handshake, new name p50 (ms)".into(),
                p(&self.hs_fresh.direct),
                p(&self.hs_fresh.kt),
                Cmp::Delta("ms"),
            );
            let mint = p(&self.hs_fresh.kt)
                .zip(p(&self.hs_cached.kt))
                .map(|(f, c)| f - c);
            add(
                "certificate mint (new − cached name, p50 ms)".into(),
                None,
                mint,
                Cmp::None,
            );
        }
        let idle = |r: &Option<IdleResult>| r.as_ref().and_then(IdleResult::kib_per_conn);
        if let Some(r) = &self.idle_blind {
            add(
                format!("idle blind tunnel, kt memory (KiB/conn, n={})", r.opened),
                None,
                idle(&self.idle_blind),
                Cmp::None,
            );
        }
        if let Some(r) = &self.idle_intercepted {
            add(
                format!(
                    "idle intercepted conn, kt memory (KiB/conn, n={})",
                    r.opened
                ),
                None,
                idle(&self.idle_intercepted),
                Cmp::None,
            );
        }
        let mib = |k: Option<u64>| k.map(|k| k as f64 / 1024.0);
        if self.kt_idle_rss_kib.is_some() {
            add(
                "kt RSS after start-up + smoke test (MiB)".into(),
                None,
                mib(self.kt_idle_rss_kib),
                Cmp::None,
            );
            add(
                "kt peak RSS (VmHWM) over load + handshake runs (MiB)".into(),
                None,
                mib(self.kt_peak_rss_kib),
                Cmp::None,
            );
        }
        rows
    }

    /// The whole markdown document.
    pub fn markdown(&self) -> String {
        let mut md = String::from("## kt load bench\n\n");
        for (k, v) in &self.setup {
            md.push_str(&format!("- {k}: {v}\n"));
        }
        md.push_str("\n| scenario | direct | kt | kt vs direct |\n|---|---:|---:|---:|\n");
        for [a, b, c, d] in self.rows() {
            md.push_str(&format!("| {a} | {b} | {c} | {d} |\n"));
        }
        md.push_str("\n### Per run\n\n");
        md.push_str(
            "| scenario | via | req/s | MB/s | p50 ms | p90 ms | p99 ms | max ms | TTFB p50 ms | TTFB p99 ms | \
             kt CPU µs/req | client + origin CPU µs/req (cores) | errors | foreign CPU (cores) |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for s in &self.scenarios {
            for (via, st) in [("direct", &s.direct), ("kt", &s.kt)] {
                let Some(st) = st else { continue };
                let cpu = if via == "kt" {
                    opt(s.kt_cpu_us_per_req)
                } else {
                    "–".into()
                };
                md.push_str(&format!(
                    "| {} | {via} | {} | {} | {} | {} | {} | {} | {} | {} | {cpu} | {} | {} | {} |\n",
                    s.name,
                    num(st.rps),
                    num(st.mb_per_s),
                    opt(st.latency.p50),
                    opt(st.latency.p90),
                    opt(st.latency.p99),
                    opt(st.latency.max),
                    opt(st.ttfb.p50),
                    opt(st.ttfb.p99),
                    match (st.bench_cpu_us_per_req, st.bench_cores) {
                        (Some(us), Some(cores)) => format!("{} ({cores:.2})", num(us)),
                        _ => "–".into(),
                    },
                    st.errors,
                    st.foreign_cores
                        .map_or_else(|| "–".into(), |c| format!("{c:.2}")),
                ));
            }
        }
        md.push_str("\nScenarios:\n");
        for s in &self.scenarios {
            md.push_str(&format!("- `{}`: {}\n", s.name, s.what));
        }
        let mut notes = self.all_notes();
        notes.extend(self.noise_note());
        if !notes.is_empty() {
            md.push_str("\nNotes and errors:\n");
            for n in notes {
                md.push_str(&format!("- {n}\n"));
            }
        }
        md
    }

    /// A warning when other work on the machine took noticeable CPU during
    /// some run (those figures are less trustworthy).
    fn noise_note(&self) -> Option<String> {
        let noisy: Vec<String> = self
            .scenarios
            .iter()
            .flat_map(|s| [("direct", &s.direct), ("kt", &s.kt)].map(|(via, st)| (s.name, via, st)))
            .filter_map(|(name, via, st)| {
                let c = st.as_ref()?.foreign_cores?;
                (c > NOISY_CORES).then(|| format!("{name}/{via} {c:.2}"))
            })
            .collect();
        (!noisy.is_empty()).then(|| {
            format!(
                "other work used CPU during some runs (foreign cores: {}); figures from those runs are noisy, re-run on a quiet machine",
                noisy.join(", ")
            )
        })
    }

    /// True when any run had errors or anything else was noted.
    pub fn has_problems(&self) -> bool {
        !self.all_notes().is_empty()
    }

    /// Explicit notes plus the first error of every run that had errors.
    fn all_notes(&self) -> Vec<String> {
        let mut out = self.notes.clone();
        for s in &self.scenarios {
            for (via, st) in [("direct", &s.direct), ("kt", &s.kt)] {
                if let Some(st) = st.as_ref().filter(|st| st.errors > 0) {
                    out.push(format!(
                        "{} via {via}: {} errors, first: {}",
                        s.name,
                        st.errors,
                        st.first_error.as_deref().unwrap_or("?")
                    ));
                }
            }
        }
        for (what, pair) in [
            ("cached-name handshakes", &self.hs_cached),
            ("new-name handshakes", &self.hs_fresh),
        ] {
            for (via, h) in [("direct", &pair.direct), ("kt", &pair.kt)] {
                if let Some(h) = h.as_ref().filter(|h| h.failed > 0) {
                    out.push(format!(
                        "{what} via {via}: {} failed, first: {}",
                        h.failed,
                        h.first_error.as_deref().unwrap_or("?")
                    ));
                }
            }
        }
        for (what, r) in [
            ("idle blind tunnels", &self.idle_blind),
            ("idle intercepted", &self.idle_intercepted),
        ] {
            if let Some(r) = r.as_ref().filter(|r| r.failed > 0) {
                out.push(format!(
                    "{what}: {} failed to open, first: {}",
                    r.failed,
                    r.first_error.as_deref().unwrap_or("?")
                ));
            }
        }
        out
    }

    /// Every figure as JSON.
    pub fn json(&self) -> Value {
        let idle = |r: &Option<IdleResult>| {
            r.as_ref().map(|r| {
                json!({"opened": r.opened, "failed": r.failed, "first_error": r.first_error,
                       "rss_before_kib": r.rss_before_kib, "rss_after_kib": r.rss_after_kib,
                       "kib_per_conn": r.kib_per_conn()})
            })
        };
        let hs = |p: &HsPair| json!({"direct": p.direct.as_ref().map(HsStats::json), "kt": p.kt.as_ref().map(HsStats::json)});
        json!({
            "setup": self.setup.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect::<serde_json::Map<_, _>>(),
            "scenarios": self.scenarios.iter().map(|s| json!({
                "name": s.name, "what": s.what,
                "direct": s.direct.as_ref().map(Stats::json),
                "kt": s.kt.as_ref().map(Stats::json),
                "kt_cpu_us_per_req": s.kt_cpu_us_per_req,
            })).collect::<Vec<_>>(),
            "handshake_cached_name": hs(&self.hs_cached),
            "handshake_new_name": hs(&self.hs_fresh),
            "idle_blind": idle(&self.idle_blind),
            "idle_intercepted": idle(&self.idle_intercepted),
            "kt_start_rss_kib": self.kt_idle_rss_kib,
            "kt_peak_rss_kib": self.kt_peak_rss_kib,
            "notes": self.all_notes().into_iter().chain(self.noise_note()).collect::<Vec<_>>(),
        })
    }
}
