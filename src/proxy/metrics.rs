//! `GET /metrics`: the gateway's counters in the Prometheus text format.

use super::Gateway;
use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

pub(super) fn render(gw: &Gateway) -> String {
    let mut out = String::with_capacity(2048);
    let metric = |out: &mut String, name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
        crate::metrics::header(out, name, kind, help);
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let stats = gw.stats();
    metric(
        &mut out,
        "kt_client_connections",
        "gauge",
        "Client connections open (tunnels and intercepted sessions included).",
        &[("", stats.connections.load(Relaxed) as u64)],
    );
    metric(
        &mut out,
        "kt_tunnels",
        "gauge",
        "Blind tunnels open.",
        &[("", stats.tunnels.load(Relaxed) as u64)],
    );
    metric(
        &mut out,
        "kt_intercepted_connections",
        "gauge",
        "Intercepted (decrypted) client connections open.",
        &[("", stats.intercepted.load(Relaxed) as u64)],
    );
    metric(
        &mut out,
        "kt_buffered_body_bytes",
        "gauge",
        "Bytes held by bodies being read whole for the policies (bounded by --max-buffered-body-mib).",
        &[("", gw.bodies().held() as u64)],
    );
    let failures: Vec<(String, u64)> = stats
        .client_tls
        .failures()
        .map(|(f, n)| (format!("{{reason=\"{}\"}}", f.as_str()), n))
        .collect();
    let failures: Vec<(&str, u64)> = failures.iter().map(|(l, n)| (l.as_str(), *n)).collect();
    metric(
        &mut out,
        "kt_client_tls_failures_total",
        "counter",
        "Intercepted connections whose client TLS handshake failed, by reason (untrusted_ca, certificate_rejected, and closed for Node.js and JDK clients: the client does not trust the kt CA).",
        &failures,
    );
    metric(
        &mut out,
        "kt_intercepted_unused_total",
        "counter",
        "Intercepted connections closed after a good TLS handshake without a request (Node.js refusing kt's certificate over TLS 1.2; unused pre-connections).",
        &[("", stats.client_tls.unused())],
    );
    let metrics = gw.engine().metrics();
    let by_action = metrics
        .by_action()
        .map(|(a, n)| (format!("{{action=\"{a}\"}}"), n));
    let by_action: Vec<(&str, u64)> = by_action.iter().map(|(l, n)| (l.as_str(), *n)).collect();
    metric(
        &mut out,
        "kt_exchanges_total",
        "counter",
        "LLM exchanges that ran the policy chain, by outcome.",
        &by_action,
    );
    metric(
        &mut out,
        "kt_policy_microseconds_total",
        "counter",
        "Time spent in policies, summed over exchanges.",
        &[("", metrics.policy_us.load(Relaxed))],
    );
    metric(
        &mut out,
        "kt_cert_cache_hosts",
        "gauge",
        "Hosts with a minted leaf certificate in the cache.",
        &[("", gw.certs().cached_hosts_now())],
    );
    metrics.render(&mut out);
    cache_tiers(&mut out, gw, metric);
    gw.certs().mint_seconds.render(
        &mut out,
        "kt_cert_mint_duration_seconds",
        "Leaf certificate mints (certificate cache misses).",
    );
    if let Some(feed) = gw.events_feed() {
        let s = feed.sink.stats();
        metric(
            &mut out,
            "kt_events_written_total",
            "counter",
            "Audit events written to the log.",
            &[("", s.written())],
        );
        metric(
            &mut out,
            "kt_events_queued",
            "gauge",
            "Audit events in the queue, not yet taken by the log writer.",
            &[("", feed.sink.queued() as u64)],
        );
        metric(
            &mut out,
            "kt_events_queue_full_waits_total",
            "counter",
            "Times a request waited because the audit log queue was full.",
            &[("", s.full_waits())],
        );
        metric(
            &mut out,
            "kt_events_write_errors_total",
            "counter",
            "Failed audit log writes and fsyncs (retried until they succeed).",
            &[("", s.write_errors())],
        );
        metric(
            &mut out,
            "kt_events_fsyncs_total",
            "counter",
            "fsyncs of the audit log (fsync: batch shares one per sync interval).",
            &[("", s.syncs())],
        );
        if let Some(ship) = &feed.shipping {
            metric(
                &mut out,
                "kt_events_shipped_total",
                "counter",
                "Audit events this replica stored in the shared store (hosted mode).",
                &[("", ship.shipped())],
            );
            metric(
                &mut out,
                "kt_events_ship_failures_total",
                "counter",
                "Failed attempts to ship audit events to the shared store, each retried: a database down, or a wrong storage URL (role, database) that never recovers.",
                &[("", ship.failures())],
            );
        }
    }
    out
}

/// The engineering cache: lookups by result, where hits came from, what
/// was stored, Redis failures, memory held.
fn cache_tiers(
    out: &mut String,
    gw: &Gateway,
    metric: impl Fn(&mut String, &str, &str, &str, &[(&str, u64)]),
) {
    let caches = gw.engine().caches();
    let k = caches.stats();
    let (hits, memory, redis, followed) = (
        k.hits.load(Relaxed),
        k.memory_hits.load(Relaxed),
        k.redis_hits.load(Relaxed),
        k.followed.load(Relaxed),
    );
    metric(
        out,
        "kt_cache_requests_total",
        "counter",
        "Engineering cache lookups by result.",
        &[
            ("{result=\"hit\"}", hits),
            ("{result=\"miss\"}", k.misses.load(Relaxed)),
            ("{result=\"bypass\"}", k.bypasses.load(Relaxed)),
        ],
    );
    metric(
        out,
        "kt_cache_hits_total",
        "counter",
        "Cache hits by where the answer came from (flight: a concurrent identical request).",
        &[
            ("{source=\"memory\"}", memory),
            ("{source=\"redis\"}", redis),
            ("{source=\"flight\"}", followed),
        ],
    );
    metric(
        out,
        "kt_cache_stores_total",
        "counter",
        "Responses after a miss, by whether they were stored.",
        &[
            ("{stored=\"true\"}", k.stores.load(Relaxed)),
            ("{stored=\"false\"}", k.not_stored.load(Relaxed)),
        ],
    );
    metric(
        out,
        "kt_cache_redis_errors_total",
        "counter",
        "Failed or timed-out Redis calls (each served as a miss).",
        &[("", k.redis_errors.load(Relaxed))],
    );
    metric(
        out,
        "kt_limits_redis_errors_total",
        "counter",
        "Failed or timed-out Redis calls of shared rate limits and budgets (each counted in process instead).",
        &[("", crate::policy::limits::redis_errors())],
    );
    let (entries, bytes) = caches.memory_usage();
    metric(
        out,
        "kt_cache_memory_entries",
        "gauge",
        "Entries in the in-process cache tier.",
        &[("", entries)],
    );
    metric(
        out,
        "kt_cache_memory_bytes",
        "gauge",
        "Bytes in the in-process cache tier.",
        &[("", bytes)],
    );
}
