//! Where the forwarding path meets the cache: after the input policies and
//! before the upstream, answer from the cache or take a ticket whose
//! response is teed into it. The exchange's record learns whether the cache
//! answered.

use crate::body::Body;
use crate::cache::serve::{self, CacheRequest, Hit, Lookup, Ticket};
use crate::policy::exchange::Exchange;
use crate::upstream::pool::Origin;
use bytes::Bytes;
use http::Response;

/// What the forwarding path does next.
pub(super) enum Step {
    /// Answer from the cache with [`answer`]; the upstream is not
    /// contacted.
    Answer(Hit),
    /// Go upstream, then pass the response to [`Pending::finish`].
    Forward(Pending),
}

/// A request going upstream with the cache in the loop.
pub(super) struct Pending {
    ticket: Option<Ticket>,
    bypass: Option<&'static str>,
}

impl Pending {
    /// Marks (and, on a miss, captures) the upstream's response.
    pub(super) fn finish(self, resp: Response<Body>) -> Response<Body> {
        let mut resp = match self.ticket {
            Some(t) => t.capture(resp),
            None => resp,
        };
        if let Some(reason) = self.bypass {
            serve::mark_bypass(&mut resp, reason);
        }
        resp
    }
}

/// Looks the request up when a cache policy applies to `exchange`; `None`
/// when none does (nothing to do).
pub(super) async fn lookup(
    ctx: &super::ConnCtx,
    origin: &Origin,
    exchange: &mut Exchange,
    parts: &http::request::Parts,
    body: &Bytes,
) -> Option<Step> {
    let options = exchange.cache_options()?;
    let store = match ctx.gw.engine().caches().store(options) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(kind = e.kind(), error = %e, "cache unavailable; forwarding");
            exchange.record.cache_hit = Some(false);
            let stats = ctx.gw.engine().caches().stats();
            stats
                .bypasses
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Some(Step::Forward(Pending {
                ticket: None,
                bypass: Some("unavailable"),
            }));
        }
    };
    let output_policies: Vec<&str> = exchange.output_policy_names().collect();
    let info = &exchange.info;
    let req = CacheRequest {
        provider: info.provider.as_str(),
        tls: origin.tls,
        host: &origin.host,
        port: origin.port,
        method: &parts.method,
        path_and_query: parts.uri.path_and_query().map_or("/", |pq| pq.as_str()),
        headers: &parts.headers,
        body,
        stream: info.stream.unwrap_or(false),
        family: info.family,
        user: info.user.as_deref(),
        team: info.team.as_deref(),
        output_policies: &output_policies,
    };
    let found = serve::lookup(&store, options, &req).await;
    let hit = matches!(found, Lookup::Hit(_));
    exchange.record.cache_hit = Some(hit);
    Some(match found {
        Lookup::Hit(h) => Step::Answer(h),
        Lookup::Miss(t) => Step::Forward(Pending {
            ticket: Some(t),
            bypass: None,
        }),
        Lookup::Bypass(reason, t) => Step::Forward(Pending {
            ticket: t,
            bypass: Some(reason),
        }),
    })
}

/// The cached response; the exchange closes when it has been sent.
pub(super) fn answer(hit: Hit, exchange: Box<Exchange>) -> Response<Body> {
    let mut exchange = exchange;
    // What the provider would have billed again: recorded as saved.
    if let Some(family) = exchange.info.family {
        exchange.record.tap = hit.stored_usage(family);
    }
    hit.respond(Box::new(move |status| exchange.complete(status)))
}

/// `GET /_kt/cache`: the counters and in-process usage as JSON.
/// `POST /_kt/cache/purge[?scope=SCOPE]`: drops in-process entries (of one
/// scope id: `team:NAME`, `user:NAME`, `anonymous`, `global`). The Redis
/// tier is purged by `kt cache purge`, which talks to Redis itself.
pub(super) fn admin(
    ctx: &super::ConnCtx,
    req: &http::Request<hyper::body::Incoming>,
) -> Result<Response<Body>, super::ProxyError> {
    let caches = ctx.gw.engine().caches();
    let json =
        |v: serde_json::Value| crate::body::typed_response("application/json", v.to_string());
    match (req.uri().path(), req.method()) {
        ("/_kt/cache", &http::Method::GET) => Ok(json(caches.snapshot())),
        ("/_kt/cache/purge", &http::Method::POST) => {
            let scope = req.uri().query().and_then(|q| {
                q.split('&')
                    .find_map(|p| p.strip_prefix("scope="))
                    .map(percent_decode)
            });
            let purged = caches.purge_memory(scope.as_deref());
            tracing::info!(
                scope = scope.as_deref().unwrap_or("all"),
                purged,
                "cache purged"
            );
            Ok(json(serde_json::json!({ "purged": purged })))
        }
        _ => Err(super::ProxyError::MethodNotAllowed),
    }
}

/// `%XX` escapes decoded (scope ids are user and team names).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn scopes_in_queries_are_decoded() {
        assert_eq!(super::percent_decode("team%3Acore"), "team:core");
        assert_eq!(super::percent_decode("user:a+b%zz"), "user:a b%zz");
    }
}
