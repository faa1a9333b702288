//! `GET /metrics`: the gateway's counters in the Prometheus text format.

use super::Gateway;
use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

pub(super) fn render(gw: &Gateway) -> String {
    let mut out = String::with_capacity(2048);
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let stats = gw.stats();
    metric(
        "kt_client_connections",
        "gauge",
        "Client connections open (tunnels and intercepted sessions included).",
        &[("", stats.connections.load(Relaxed) as u64)],
    );
    metric(
        "kt_tunnels",
        "gauge",
        "Blind tunnels open.",
        &[("", stats.tunnels.load(Relaxed) as u64)],
    );
    metric(
        "kt_intercepted_connections",
        "gauge",
        "Intercepted (decrypted) client connections open.",
        &[("", stats.intercepted.load(Relaxed) as u64)],
    );
    let c = gw.engine().counters();
    metric(
        "kt_exchanges_total",
        "counter",
        "LLM exchanges that ran the policy chain, by outcome.",
        &[
            ("{action=\"pass\"}", c.pass.load(Relaxed)),
            ("{action=\"redact\"}", c.redact.load(Relaxed)),
            ("{action=\"block\"}", c.block.load(Relaxed)),
            ("{action=\"error\"}", c.error.load(Relaxed)),
            ("{action=\"cache_hit\"}", c.cache_hit.load(Relaxed)),
        ],
    );
    metric(
        "kt_policy_microseconds_total",
        "counter",
        "Time spent in policies, summed over exchanges.",
        &[("", c.policy_us.load(Relaxed))],
    );
    let caches = gw.engine().caches();
    let k = caches.stats();
    metric(
        "kt_cache_requests_total",
        "counter",
        "Requests a cache policy applied to, by result.",
        &[
            ("{result=\"hit\"}", k.hits.load(Relaxed)),
            ("{result=\"miss\"}", k.misses.load(Relaxed)),
            ("{result=\"bypass\"}", k.bypasses.load(Relaxed)),
        ],
    );
    metric(
        "kt_cache_hits_total",
        "counter",
        "Cache hits by where the answer came from.",
        &[
            (
                "{source=\"memory\"}",
                k.hits
                    .load(Relaxed)
                    .saturating_sub(k.redis_hits.load(Relaxed) + k.followed.load(Relaxed)),
            ),
            ("{source=\"redis\"}", k.redis_hits.load(Relaxed)),
            ("{source=\"flight\"}", k.followed.load(Relaxed)),
        ],
    );
    metric(
        "kt_cache_stores_total",
        "counter",
        "Responses after a miss, by whether they were stored.",
        &[
            ("{stored=\"true\"}", k.stores.load(Relaxed)),
            ("{stored=\"false\"}", k.not_stored.load(Relaxed)),
        ],
    );
    metric(
        "kt_cache_redis_errors_total",
        "counter",
        "Failed or timed-out Redis calls (each served as a miss).",
        &[("", k.redis_errors.load(Relaxed))],
    );
    let (entries, bytes) = caches.memory_usage();
    metric(
        "kt_cache_memory_entries",
        "gauge",
        "Entries in the in-process cache tier.",
        &[("", entries)],
    );
    metric(
        "kt_cache_memory_bytes",
        "gauge",
        "Bytes in the in-process cache tier.",
        &[("", bytes)],
    );
    if let Some(feed) = gw.events_feed() {
        let s = feed.sink.stats();
        metric(
            "kt_events_written_total",
            "counter",
            "Audit events written to the log.",
            &[("", s.written())],
        );
        metric(
            "kt_events_queue_full_waits_total",
            "counter",
            "Times a request waited because the audit log queue was full.",
            &[("", s.full_waits())],
        );
        metric(
            "kt_events_write_errors_total",
            "counter",
            "Failed audit log writes (retried until they succeed).",
            &[("", s.write_errors())],
        );
    }
    out
}
