//! The gateway's metrics: lock-free histograms and counters updated once per
//! exchange, small labelled tables (low-cardinality labels only: no user),
//! and their rendering in the Prometheus text exposition format.

use rustc_hash::{FxHashMap, FxHashSet};
use std::fmt::Write as _;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// Bucket bounds, in seconds, for whole-request and upstream latency.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Bucket bounds, in seconds, for kt's own overhead and certificate mints.
const FINE_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
];

/// At most this many distinct models get their own label; the rest are
/// counted as `other` (the model name comes from clients).
const MAX_MODELS: usize = 200;

/// Longer model names are cut to this many characters in labels.
const MAX_MODEL_CHARS: usize = 100;

/// A histogram with fixed buckets, observed in microseconds.
#[derive(Debug)]
pub struct Histogram {
    bounds_us: Vec<u64>,
    bounds: &'static [f64],
    /// Non-cumulative counts per bucket, plus one for +Inf.
    counts: Vec<AtomicU64>,
    sum_us: AtomicU64,
}

impl Histogram {
    /// Buckets from 50 µs to 100 ms: for work kt does itself.
    pub fn fine() -> Self {
        Self::new(FINE_BUCKETS)
    }

    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds_us: bounds.iter().map(|b| (b * 1e6).round() as u64).collect(),
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
        }
    }

    /// Records one observation of `us` microseconds.
    pub fn observe_us(&self, us: u64) {
        let i = self.bounds_us.partition_point(|&b| b < us);
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(1, Relaxed);
        }
        self.sum_us.fetch_add(us, Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// Appends this histogram in the text format.
    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, "histogram", help);
        let mut cumulative = 0;
        for (bound, c) in self.bounds.iter().zip(&self.counts) {
            cumulative += c.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let total = self.count();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {total}");
        let sum = self.sum_us.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {total}");
    }
}

/// A counter per label set, for tables a handful of keys long.
#[derive(Debug)]
struct Table<K, V> {
    cells: Mutex<FxHashMap<K, V>>,
}

impl<K, V> Default for Table<K, V> {
    fn default() -> Self {
        Table {
            cells: Mutex::new(FxHashMap::default()),
        }
    }
}

impl<K: Hash + Eq + Clone> Table<K, u64> {
    /// Saturating: token counts come from upstreams, and a counter stuck
    /// at its top is better than a panic or a wrap to zero.
    fn add(&self, key: K, v: u64) {
        let mut cells = self.cells.lock().unwrap_or_else(|p| p.into_inner());
        let cell = cells.entry(key).or_default();
        *cell = cell.saturating_add(v);
    }

    fn sorted(&self) -> Vec<(K, u64)>
    where
        K: Ord,
    {
        let cells = self.cells.lock().unwrap_or_else(|p| p.into_inner());
        let mut rows: Vec<(K, u64)> = cells.iter().map(|(k, v)| (k.clone(), *v)).collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows
    }
}

/// One finished LLM exchange, as the metrics see it.
#[derive(Debug, Clone, Copy)]
pub struct ExchangeSample<'a> {
    pub provider: &'static str,
    pub endpoint: &'static str,
    /// `pass`, `redact`, `block`, `cache_hit` or `error`.
    pub action: &'static str,
    /// Status sent to the client; `None` when the client went away.
    pub status: Option<u16>,
    pub model: Option<&'a str>,
    pub latency_us: u64,
    pub upstream_us: Option<u64>,
    pub overhead_us: Option<u64>,
    /// Streams only: time to the first byte sent to the client.
    pub first_byte_us: Option<u64>,
    pub tokens_in: Option<u64>,
    pub tokens_out: Option<u64>,
    pub cost_usd: Option<f64>,
    /// Cache hits: the cost the replayed answer saved.
    pub cost_saved_usd: Option<f64>,
    /// `provider`, `estimated` or `cached`.
    pub usage_source: Option<&'static str>,
}

/// Every metric the gateway keeps beside the connection gauges.
#[derive(Debug)]
pub struct Metrics {
    exchanges: Table<(&'static str, &'static str, &'static str, u16), u64>,
    latency: Histogram,
    upstream: Histogram,
    overhead: Histogram,
    first_byte: Histogram,
    policy_actions: Table<(String, &'static str), u64>,
    tokens: Table<(&'static str, Arc<str>, &'static str, &'static str), u64>,
    /// Micro-dollars, so the table stays integral.
    cost_micro_usd: Table<(&'static str, Arc<str>), u64>,
    saved_micro_usd: Table<(&'static str, Arc<str>), u64>,
    /// Model names that have a label of their own.
    models: Mutex<FxHashSet<Arc<str>>>,
    /// Microseconds spent in policies, summed over exchanges.
    pub policy_us: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            exchanges: Table::default(),
            latency: Histogram::new(LATENCY_BUCKETS),
            upstream: Histogram::new(LATENCY_BUCKETS),
            overhead: Histogram::new(FINE_BUCKETS),
            first_byte: Histogram::new(LATENCY_BUCKETS),
            policy_actions: Table::default(),
            tokens: Table::default(),
            cost_micro_usd: Table::default(),
            saved_micro_usd: Table::default(),
            models: Mutex::default(),
            policy_us: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// Records a finished exchange.
    pub fn exchange(&self, s: &ExchangeSample<'_>, policy_us: u64) {
        self.policy_us.fetch_add(policy_us, Relaxed);
        self.exchanges
            .add((s.provider, s.endpoint, s.action, s.status.unwrap_or(0)), 1);
        self.latency.observe_us(s.latency_us);
        if let Some(us) = s.upstream_us {
            self.upstream.observe_us(us);
        }
        if let Some(us) = s.overhead_us {
            self.overhead.observe_us(us);
        }
        if let Some(us) = s.first_byte_us {
            self.first_byte.observe_us(us);
        }
        let source = s.usage_source.unwrap_or("provider");
        if s.tokens_in.is_some() || s.tokens_out.is_some() || s.cost_usd.is_some() {
            let model = self.model_label(s.model);
            if let Some(n) = s.tokens_in {
                self.tokens
                    .add((s.provider, model.clone(), "in", source), n);
            }
            if let Some(n) = s.tokens_out {
                self.tokens
                    .add((s.provider, model.clone(), "out", source), n);
            }
            let micro = |c: f64| (c * 1e6).round().max(0.0) as u64;
            if let Some(c) = s.cost_saved_usd {
                self.saved_micro_usd
                    .add((s.provider, model.clone()), micro(c));
            }
            if let Some(c) = s.cost_usd {
                self.cost_micro_usd.add((s.provider, model), micro(c));
            }
        }
    }

    /// Exchanges by action (`pass`, `redact`, `block`, `cache_hit`,
    /// `error`), summed over providers, endpoints and statuses.
    pub fn by_action(&self) -> [(&'static str, u64); 5] {
        let mut out = [
            ("pass", 0),
            ("redact", 0),
            ("block", 0),
            ("cache_hit", 0),
            ("error", 0),
        ];
        for ((_, _, action, _), n) in self.exchanges.sorted() {
            if let Some(slot) = out.iter_mut().find(|(a, _)| *a == action) {
                slot.1 += n;
            }
        }
        out
    }

    /// Records that `policy` redacted, blocked or logged.
    pub fn policy_action(&self, policy: &str, action: &'static str) {
        self.policy_actions.add((policy.to_string(), action), 1);
    }

    /// The model's label, shared by every row that names it.
    fn model_label(&self, model: Option<&str>) -> Arc<str> {
        let Some(model) = model else {
            return Arc::from("unknown");
        };
        let model = match model.char_indices().nth(MAX_MODEL_CHARS) {
            Some((cut, _)) => &model[..cut],
            None => model,
        };
        // The model comes from the client: a bounded label set keeps a
        // scraper's memory bounded too.
        let mut models = self.models.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(known) = models.get(model) {
            return known.clone();
        }
        if models.len() < MAX_MODELS {
            let label: Arc<str> = Arc::from(model);
            models.insert(label.clone());
            return label;
        }
        Arc::from("other")
    }

    /// Appends the exchange metrics in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        header(
            out,
            "kt_requests_total",
            "counter",
            "LLM exchanges by provider, endpoint, action and status (0: client went away).",
        );
        for ((provider, endpoint, action, status), n) in self.exchanges.sorted() {
            let _ = writeln!(
                out,
                "kt_requests_total{{provider=\"{provider}\",endpoint=\"{endpoint}\",action=\"{action}\",status=\"{status}\"}} {n}"
            );
        }
        self.latency.render(
            out,
            "kt_request_duration_seconds",
            "Whole LLM exchange as the client saw it (streams: to the last byte).",
        );
        self.upstream.render(
            out,
            "kt_upstream_duration_seconds",
            "From sending the request upstream to its response head.",
        );
        self.overhead.render(
            out,
            "kt_gateway_overhead_seconds",
            "kt's own share of the time to the response head.",
        );
        self.first_byte.render(
            out,
            "kt_time_to_first_byte_seconds",
            "From the request to the first response byte sent to the client.",
        );
        header(
            out,
            "kt_policy_actions_total",
            "counter",
            "Redactions, blocks and logged matches, by policy.",
        );
        for ((policy, action), n) in self.policy_actions.sorted() {
            let policy = escape(&policy);
            let _ = writeln!(
                out,
                "kt_policy_actions_total{{policy=\"{policy}\",action=\"{action}\"}} {n}"
            );
        }
        header(
            out,
            "kt_tokens_total",
            "counter",
            "Tokens by provider, model, direction and source (provider or estimated).",
        );
        for ((provider, model, direction, source), n) in self.tokens.sorted() {
            let model = escape(&model);
            let _ = writeln!(
                out,
                "kt_tokens_total{{provider=\"{provider}\",model=\"{model}\",direction=\"{direction}\",source=\"{source}\"}} {n}"
            );
        }
        header(
            out,
            "kt_cost_usd_total",
            "counter",
            "Cost at list prices, by provider and model.",
        );
        for ((provider, model), micro) in self.cost_micro_usd.sorted() {
            let model = escape(&model);
            let usd = micro as f64 / 1e6;
            let _ = writeln!(
                out,
                "kt_cost_usd_total{{provider=\"{provider}\",model=\"{model}\"}} {usd}"
            );
        }
        header(
            out,
            "kt_cost_saved_usd_total",
            "counter",
            "List-price cost of answers replayed from the engineering cache.",
        );
        for ((provider, model), micro) in self.saved_micro_usd.sorted() {
            let model = escape(&model);
            let usd = micro as f64 / 1e6;
            let _ = writeln!(
                out,
                "kt_cost_saved_usd_total{{provider=\"{provider}\",model=\"{model}\"}} {usd}"
            );
        }
    }
}

/// `# HELP` and `# TYPE` lines.
pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value as the text format wants it.
fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample(model: &str) -> ExchangeSample<'_> {
        ExchangeSample {
            provider: "openai",
            endpoint: "chat/completions",
            action: "pass",
            status: Some(200),
            model: Some(model),
            latency_us: 1500,
            upstream_us: Some(1200),
            overhead_us: Some(300),
            first_byte_us: None,
            tokens_in: Some(10),
            tokens_out: Some(5),
            cost_usd: Some(0.000075),
            cost_saved_usd: None,
            usage_source: Some("provider"),
        }
    }

    #[test]
    fn histogram_buckets_are_cumulative_in_seconds() {
        let h = Histogram::new(FINE_BUCKETS);
        for us in [40, 50, 60, 2_000_000] {
            h.observe_us(us);
        }
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.00005\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.0001\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.1\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("x_count 4\n"), "{out}");
        assert!(out.contains("x_sum 2.00015\n"), "{out}");
    }

    #[test]
    fn exchanges_fill_the_tables() {
        let m = Metrics::default();
        m.exchange(&sample("gpt-4o"), 1);
        m.exchange(&sample("gpt-4o"), 1);
        m.exchange(&sample("we\"ird"), 1);
        m.policy_action("secret-redaction", "redact");
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("kt_requests_total{provider=\"openai\",endpoint=\"chat/completions\",action=\"pass\",status=\"200\"} 3\n"), "{out}");
        assert!(out.contains("kt_tokens_total{provider=\"openai\",model=\"gpt-4o\",direction=\"in\",source=\"provider\"} 20\n"), "{out}");
        assert!(
            out.contains("kt_cost_usd_total{provider=\"openai\",model=\"gpt-4o\"} 0.00015\n"),
            "{out}"
        );
        assert!(out.contains("model=\"we\\\"ird\""), "{out}");
        assert!(out.contains(
            "kt_policy_actions_total{policy=\"secret-redaction\",action=\"redact\"} 1\n"
        ));
        assert!(out.contains("kt_gateway_overhead_seconds_count 3\n"));
        assert_eq!(m.by_action()[0], ("pass", 3));
        assert_eq!(m.policy_us.load(Relaxed), 3);
    }

    /// Counts beyond any exchange's (a hostile upstream's) stick at the
    /// top instead of panicking or wrapping to a small number.
    #[test]
    fn token_sums_saturate() {
        let m = Metrics::default();
        let huge = ExchangeSample {
            tokens_in: Some(u64::MAX),
            ..sample("gpt-4o")
        };
        m.exchange(&huge, 0);
        m.exchange(&huge, 0);
        let mut out = String::new();
        m.render(&mut out);
        let max = u64::MAX;
        assert!(out.contains(&format!("kt_tokens_total{{provider=\"openai\",model=\"gpt-4o\",direction=\"in\",source=\"provider\"}} {max}\n")), "{out}");
    }

    #[test]
    fn model_labels_are_bounded() {
        let m = Metrics::default();
        for i in 0..(MAX_MODELS * 3) {
            m.exchange(&sample(&format!("model-{i}")), 0);
        }
        let mut out = String::new();
        m.render(&mut out);
        let models = out
            .lines()
            .filter(|l| l.starts_with("kt_cost_usd_total{"))
            .count();
        assert_eq!(models, MAX_MODELS + 1, "each kept model and `other`");
        assert!(out.contains("model=\"other\""));
    }
}
