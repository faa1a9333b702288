//! Forwarding one request upstream and its response back: hop-by-hop
//! headers removed (RFC 9110 §7.6.1), bodies streamed both ways, and
//! protocol upgrades (WebSocket) bridged after the 101.

use super::{ConnCtx, ProxyError};
use crate::body::{self, Body};
use crate::upstream::pool::Origin;
use crate::upstream::UpstreamError;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::{Request, Response, StatusCode};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;

/// Headers that describe one hop, never forwarded. The last two are not
/// standard names, but hop-by-hop in practice (RFC 9110 §7.6.1).
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
];

/// Sends `req` to `origin` and returns the response to give the client.
pub(super) async fn forward(
    ctx: &ConnCtx,
    origin: &Origin,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, ProxyError> {
    crate::idle_poll::activity();
    if req.method() == http::Method::CONNECT {
        // A tunnel inside a tunnel: nothing upstream would understand it.
        return Err(ProxyError::MethodNotAllowed);
    }
    drop_kt_keys(req.headers_mut());
    if let Some(exchange) = ctx.gw.engine().begin(
        &origin.host,
        req.method(),
        req.uri(),
        req.headers(),
        &ctx.identity,
    ) {
        if exchange.info.websocket {
            return Box::pin(untouched(ctx, origin, req, Some(exchange))).await;
        }
        // Boxed: the inspected exchange's future is kilobytes (the record,
        // the policy chain's state, the upstream send), and hyper moves the
        // per-request future several times; a pointer moves for free.
        return Box::pin(super::inspected::forward(ctx, origin, req, exchange)).await;
    }
    untouched(ctx, origin, req, None).await
}

/// Forwards `req` with its body streamed as is, bridging a protocol
/// upgrade after the `101`. `exchange`: a WebSocket to an LLM endpoint,
/// refused when a rate limit or budget refuses it or a policy that cannot
/// read its frames fails closed, else recorded: the request's event once
/// the upgrade is answered, the answer's when the session ends.
async fn untouched(
    ctx: &ConnCtx,
    origin: &Origin,
    mut req: Request<Incoming>,
    mut exchange: Option<Box<crate::policy::exchange::Exchange>>,
) -> Result<Response<Body>, ProxyError> {
    if let Some(mut ex) = exchange.take() {
        if ex.unrecordable() {
            return Ok(super::inspected::refuse_unrecorded(
                ex,
                "the audit log is not accepting events and the audit-logger is immutable",
            ));
        }
        // A session is one request to the limits, checked before the
        // upgrade as any request is. Its frames are never read, so no
        // tokens or dollars are known to charge when it ends.
        if ex.is_limited() {
            if let Some(resp) = Box::pin(ex.admit(&[])).await {
                ex.complete(Some(resp.status().as_u16()));
                return Ok(resp);
            }
        }
        if let Some(resp) = ex.websocket() {
            ex.complete(Some(resp.status().as_u16()));
            return Ok(resp);
        }
        exchange = Some(ex);
    }
    let upgrade = wants_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, incoming) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers, upgrade);
    if upgrade {
        restore_upgrade_headers(&mut parts.headers);
    }
    let body = match super::inspected::expect_grace(&parts) {
        Some(grace) if !http_body::Body::is_end_stream(&incoming) => {
            Primed::read(incoming, grace).await?
        }
        _ => body::boxed(incoming),
    };
    let up_req = Request::from_parts(parts, body);
    let mut resp = match ctx.gw.upstream.send(origin, up_req).await {
        Ok(resp) => resp,
        Err(e) => {
            let e = match e.client_body_failure() {
                Some(cause) => ProxyError::ClientBody(cause),
                None => e.into(),
            };
            if let Some(mut ex) = exchange {
                ex.record.error = Some(format!("{}: {e}", e.kind()));
                ex.complete(Some(e.status().as_u16()));
            }
            return Err(e);
        }
    };

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return Err(UpstreamError::unasked_upgrade(origin).into());
        };
        if let Some(ex) = exchange.as_mut() {
            ex.record.status = Some(101);
            ex.record_input();
        }
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let activity = ctx.activity.clone();
        let idle = ctx.gw.limits.idle;
        let admission = ctx.admission.clone();
        let ends = super::tunnel::ends(ctx);
        ctx.shutdown.spawn(async move {
            let _admission = admission;
            match tokio::try_join!(client_upgrade, upstream_upgrade) {
                Ok((client, upstream)) => {
                    super::tunnel::run(
                        TokioIo::new(client),
                        TokioIo::new(upstream),
                        activity,
                        idle,
                        ends,
                    )
                    .await;
                }
                Err(e) => tracing::debug!(error = %e, "upgrade bridge failed"),
            }
            if let Some(mut ex) = exchange {
                ex.complete(Some(101));
            }
        });
        let (parts, _) = resp.into_parts();
        return Ok(Response::from_parts(parts, body::empty()));
    }
    if let Some(mut ex) = exchange {
        ex.complete(Some(resp.status().as_u16()));
    }

    let (mut parts, incoming) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    Ok(Response::from_parts(parts, body::boxed(incoming)))
}

/// An HTTP/1.1 upgrade request (`Connection: upgrade` + `Upgrade`).
fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes a kt access key a client put where a provider's key goes (a
/// client set up for the direct API, then pointed at the proxy): it means
/// nothing to the provider, and a kt key never leaves the gateway.
fn drop_kt_keys(headers: &mut HeaderMap) {
    use crate::keys::gate::is_access_key;
    // Constant names: no header name parsed per request.
    for name in &super::direct::CLIENT_CREDENTIALS {
        // Every value, not only the first: a client may send two.
        if !headers.get_all(name).iter().any(is_access_key) {
            continue;
        }
        let others: Vec<_> = headers
            .get_all(name)
            .iter()
            .filter(|v| !is_access_key(v))
            .cloned()
            .collect();
        headers.remove(name);
        for value in others {
            headers.append(name.clone(), value);
        }
    }
}

/// Removes hop-by-hop headers and every header the Connection header names.
/// With `keep_upgrade`, `Upgrade` survives (the caller restores Connection).
/// `TE: trailers` is passed on as such: kt relays trailers, and gRPC
/// servers refuse a call without it (RFC 9113 §8.2.2 allows it on h2).
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none: one pass over the names (cheap enum
    // compares for standard headers) saves a hashed removal per name. A
    // header named by `Connection` needs a `Connection` header, one of them.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    let trailers = headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            // A transfer coding may carry a weight: `trailers` carries none.
            t.trim().eq_ignore_ascii_case("trailers")
        });
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            if !(keep_upgrade && name == header::UPGRADE) {
                headers.remove(&name);
            }
        }
    }
    // A message framed by Transfer-Encoding that also names a length (RFC
    // 9112 §6.3): the body arrives decoded, so the length describes nothing
    // kt sends, and framing by it would cut the body or break the stream.
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
    }
    for name in &HOP_BY_HOP {
        if !(keep_upgrade && *name == header::UPGRADE) {
            headers.remove(name);
        }
    }
    if trailers {
        headers.insert(header::TE, http::HeaderValue::from_static("trailers"));
    }
}

fn restore_upgrade_headers(headers: &mut HeaderMap) {
    headers.insert(
        header::CONNECTION,
        http::HeaderValue::from_static("upgrade"),
    );
}

/// The body of an HTTP/2 request that asked for a `100` kt cannot send
/// (see `inspected::expect_grace`): its first frame, awaited before
/// anything goes upstream, then the rest as it comes.
struct Primed {
    first: Option<Frame<Bytes>>,
    rest: Incoming,
}

impl Primed {
    /// Waits at most `grace` for the body's first frame.
    async fn read(mut rest: Incoming, grace: std::time::Duration) -> Result<Body, ProxyError> {
        match super::inspected::first_frame_within(&mut rest, grace).await? {
            None => Ok(body::empty()),
            Some(Err(e)) => Err(ProxyError::ClientBody(e.to_string())),
            Some(Ok(frame)) => Ok(body::boxed(Primed {
                first: Some(frame),
                rest,
            })),
        }
    }
}

impl http_body::Body for Primed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if let Some(frame) = self.first.take() {
            return std::task::Poll::Ready(Some(Ok(frame)));
        }
        std::pin::Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        // Both bounds move together: adding to one bound, then the other,
        // fails SizeHint's order check when the length is declared.
        let held = self
            .first
            .as_ref()
            .and_then(Frame::data_ref)
            .map_or(0, |d| d.len() as u64);
        self.rest.size_hint() + http_body::SizeHint::with_exact(held)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn kt_keys_are_dropped_in_any_scheme_case_and_any_value() {
        let mut h = HeaderMap::new();
        h.append(header::AUTHORIZATION, "BEARER kt_abc".parse().unwrap());
        h.append(header::AUTHORIZATION, "Bearer sk-prov".parse().unwrap());
        h.append("x-api-key", "sk-ant".parse().unwrap());
        h.append("x-api-key", "kt_abc".parse().unwrap());
        h.append("api-key", "bearer kt_abc".parse().unwrap());
        drop_kt_keys(&mut h);
        let values = |name| h.get_all(name).iter().cloned().collect::<Vec<_>>();
        assert_eq!(values("authorization"), ["Bearer sk-prov"]);
        assert_eq!(values("x-api-key"), ["sk-ant"]);
        assert!(!h.contains_key("api-key"));
        // A kt key inside Basic credentials (base64 of `kt_abc`) goes too.
        let mut h = HeaderMap::new();
        h.append(header::AUTHORIZATION, "Basic a3RfYWJj".parse().unwrap());
        drop_kt_keys(&mut h);
        assert!(!h.contains_key(header::AUTHORIZATION));
        // Other credentials pass untouched (base64 of `user:hunter2`).
        let mut h = HeaderMap::new();
        h.append(
            header::AUTHORIZATION,
            "Basic dXNlcjpodW50ZXIy".parse().unwrap(),
        );
        drop_kt_keys(&mut h);
        assert_eq!(h[header::AUTHORIZATION], "Basic dXNlcjpodW50ZXIy");
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            "keep-alive, x-secret-hop".parse().unwrap(),
        );
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("proxy-connection", "keep-alive".parse().unwrap());
        h.insert(header::PROXY_AUTHORIZATION, "Basic x".parse().unwrap());
        h.insert(header::TE, "gzip;q=0.5".parse().unwrap());
        h.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key(header::CONTENT_TYPE));
    }

    #[test]
    fn te_trailers_is_passed_on_alone() {
        for (connection, te) in [
            (None, "trailers"),
            (Some("TE"), "gzip, Trailers"),
            (Some("keep-alive, te"), "deflate;q=0.3 , trailers"),
        ] {
            let mut h = HeaderMap::new();
            if let Some(c) = connection {
                h.insert(header::CONNECTION, c.parse().unwrap());
            }
            h.insert(header::TE, te.parse().unwrap());
            strip_hop_by_hop(&mut h, false);
            assert_eq!(h.len(), 1, "{te}: {h:?}");
            assert_eq!(h[header::TE], "trailers", "{te}");
        }
    }

    #[test]
    fn each_hop_by_hop_header_alone_is_removed_and_others_are_left() {
        for name in [
            "keep-alive",
            "proxy-connection",
            "te",
            "transfer-encoding",
            "upgrade",
        ] {
            let mut h = HeaderMap::new();
            h.insert(name, "x".parse().unwrap());
            h.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
            strip_hop_by_hop(&mut h, false);
            assert!(!h.contains_key(name), "{name} survived");
            assert!(h.contains_key(header::CONTENT_TYPE));
        }
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer k".parse().unwrap());
        h.insert("x-custom", "1".parse().unwrap());
        let before = h.clone();
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h, before);
    }

    /// A message framed by chunks that also names a length goes on without
    /// the length: kt frames the decoded body itself.
    #[test]
    fn a_length_beside_transfer_encoding_is_dropped() {
        let mut h = HeaderMap::new();
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert(header::CONTENT_LENGTH, "3".parse().unwrap());
        h.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        assert!(!h.contains_key(header::CONTENT_LENGTH), "{h:?}");
        assert!(!h.contains_key(header::TRANSFER_ENCODING), "{h:?}");
        // A length alone is the message's framing and stays.
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, "3".parse().unwrap());
        h.insert(header::CONNECTION, "keep-alive".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h[header::CONTENT_LENGTH], "3");
    }

    #[test]
    fn upgrade_detection() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        assert!(!wants_upgrade(&h));
        h.insert(header::CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        assert!(wants_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert!(h.contains_key(header::UPGRADE));
    }
}
