//! An intercepted CONNECT: peek at the first bytes; TLS is terminated with a
//! leaf minted for the SNI (falling back to the CONNECT host) and the
//! decrypted requests are served over HTTP/2 or HTTP/1.1 as ALPN chose;
//! anything that is not TLS is tunnelled untouched.

use super::authority::Target;
use super::client_tls::ClientTlsFailure;
use super::{forward, tunnel, ConnCtx};
use crate::body::Body;
use crate::netio::{OpenRequest, Prefixed, Requests};
use crate::upstream::pool::{Origin, Prefer};
use crate::upstream::Dialed;
use bytes::BytesMut;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

/// Concurrent requests on one intercepted HTTP/2 connection (hyper's own
/// default is 200); IDEs use a handful.
const MAX_H2_STREAMS: u32 = 100;

/// How often an intercepted h2 connection is PINGed (to find clients gone
/// without a FIN): a minute, or more often under a short idle limit.
fn keep_alive_interval(idle: Duration) -> Duration {
    (idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(60))
}

/// First byte of a TLS handshake record.
pub(super) const TLS_HANDSHAKE: u8 = 0x16;

/// The answer inside a session whose key was revoked: `403`, and on
/// HTTP/1.1 the connection closes after it (the client reconnects, and its
/// CONNECT is checked like any other).
fn revoked() -> hyper::Response<Body> {
    let mut resp = super::ProxyError::KeyRevoked.into_response();
    resp.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    resp
}

/// Serves one intercepted CONNECT, counted in `kt_intercepted_connections`
/// while it lasts. `predialed` is the upstream TCP path opened before the
/// client got its `200` (none when a pooled connection was live); its TLS
/// handshake offers the ALPN the client offered us.
pub(super) async fn serve<IO>(
    ctx: ConnCtx,
    io: IO,
    target: Target,
    origin: Origin,
    predialed: Option<Dialed>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let gw = ctx.gw.clone();
    gw.stats.intercepted.fetch_add(1, Ordering::Relaxed);
    serve_session(ctx, io, target, origin, predialed).await;
    gw.stats.intercepted.fetch_sub(1, Ordering::Relaxed);
}

async fn serve_session<IO>(
    ctx: ConnCtx,
    mut io: IO,
    target: Target,
    origin: Origin,
    predialed: Option<Dialed>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = &ctx.gw.limits;
    let mut first = BytesMut::with_capacity(512);
    let client_hello = tokio::time::timeout(limits.client_tls_handshake, io.read_buf(&mut first));
    // A server that speaks first (SMTP, SSH, ... after a CONNECT that
    // `--intercept all` selects) is no TLS server: its bytes, here or
    // already come through an upstream proxy, make the session a tunnel.
    let server_first = match &predialed {
        Some(up) if !up.prefix().is_empty() => true,
        Some(up) => tokio::select! {
            read = client_hello => match read {
                Ok(Ok(n)) if n > 0 => false,
                _ => return,
            },
            _ = up.get_ref().sends_data() => true,
        },
        None => match client_hello.await {
            Ok(Ok(n)) if n > 0 => false,
            _ => return,
        },
    };
    let io = Prefixed::new(first.freeze(), io);
    let is_tls = !server_first && io.prefix().first() == Some(&TLS_HANDSHAKE);
    if !is_tls {
        // Plain bytes after CONNECT (e.g. ws:// through the proxy): tunnel.
        let dialed = match predialed {
            Some(d) => Ok(d),
            None => ctx.gw.upstream.dial(&target.host, target.port, true).await,
        };
        match dialed {
            Ok(upstream) => {
                tunnel::run(
                    io,
                    upstream,
                    ctx.activity.clone(),
                    limits.idle,
                    tunnel::ends(&ctx),
                )
                .await;
            }
            Err(e) => tracing::warn!(target = %target, error = %e, "tunnel dial failed"),
        }
        return;
    }

    let Some((tls, attached, origin)) = accept_tls(&ctx, io, &target, &origin, predialed).await
    else {
        return;
    };
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let svc_ctx = ctx.clone();
    let served = Arc::new(AtomicBool::new(false));
    let svc_served = served.clone();
    let requests = Requests::default();
    let svc_requests = requests.clone();
    let svc = service_fn(move |req| {
        svc_served.store(true, Ordering::Relaxed);
        let ctx = svc_ctx.clone();
        let origin = origin.clone();
        let mut attached = attached.clone();
        // Open while the request waits for its answer: on HTTP/1.1 no byte
        // moves then (an upstream thinking for longer than the idle limit
        // is bounded by the response timeout, not the idle one).
        let open = svc_requests.start();
        async move {
            if let Some(attached) = attached.as_mut() {
                // Ends at once when the upstream handshake is over (whatever
                // its outcome) or its task is gone.
                let _ = attached.wait_for(|done| *done).await;
            }
            let resp = match &ctx.session_key {
                Some(key) if !ctx.gw.auth.still_valid(key) => revoked(),
                _ => forward::forward(&ctx, &origin, req)
                    .await
                    .unwrap_or_else(super::ProxyError::into_response),
            };
            Ok::<_, Infallible>(match h2 {
                // Open until its body has gone (or the client reset it).
                true => resp.map(|body| {
                    crate::body::boxed(Holding {
                        body,
                        _open: open,
                        stall: ctx.gw.limits.idle,
                        stalled: None,
                        moved: true,
                    })
                }),
                // On HTTP/1.1 the body's bytes tell from here on.
                false => {
                    drop(open);
                    resp
                }
            })
        }
    });
    let io = TokioIo::new(tls);
    if h2 {
        let conn = hyper::server::conn::http2::Builder::new(ctx.shutdown.executor())
            .timer(TokioTimer::new())
            .max_header_list_size(64 * 1024)
            // Each stream to an HTTP/1.1 upstream takes a connection there.
            .max_concurrent_streams(MAX_H2_STREAMS)
            .keep_alive_interval(keep_alive_interval(limits.idle))
            .keep_alive_timeout(Duration::from_secs(20))
            .serve_connection(io, svc);
        // Idle when no request has been open for the limit (hyper's PINGs
        // move bytes on an unused connection), or when nothing moved at all.
        let idle = async {
            tokio::select! {
                _ = requests.idle_timeout(limits.idle) => {}
                _ = ctx.activity.idle_timeout(limits.idle) => {}
            }
        };
        drive(&ctx, conn, |c| c.graceful_shutdown(), idle).await;
    } else {
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read * 2)
            .max_header_size(limits.max_header_bytes)
            .serve_connection(io, svc)
            .with_upgrades();
        let idle = requests.idle_timeout_with(&ctx.activity, limits.idle);
        drive(&ctx, conn, |c| c.graceful_shutdown(), idle).await;
    }
    if !served.load(Ordering::Relaxed) && !ctx.shutdown.is_draining() {
        ctx.gw.stats().client_tls.count_unused();
        tracing::debug!(target = %target, "intercepted connection closed without a request (Node.js over TLS 1.2 does this when it refuses kt's certificate)");
    }
}

/// A client handshake that failed: why, and the client's socket, kept open
/// until the failure is counted.
struct Refused<IO> {
    cause: ClientTlsFailure,
    detail: String,
    _io: Option<IO>,
}

impl<IO> Refused<IO> {
    fn new(cause: ClientTlsFailure, error: &dyn std::fmt::Display, io: Option<IO>) -> Self {
        Refused {
            cause,
            detail: error.to_string(),
            _io: io,
        }
    }

    /// Counts the failure, logs it with what to do, and records a `connect`
    /// event when the audit logger logs all access; then closes the socket.
    fn report(self, ctx: &ConnCtx, target: &Target) {
        let cause = self.cause;
        let log = ctx.gw.stats().client_tls.count(cause);
        // A stalled client is its own business; the others need a fix, said
        // once a minute per cause (the counter and events have each one).
        if log && cause != ClientTlsFailure::Timeout {
            tracing::info!(target = %target, reason = cause.as_str(), error = %self.detail, "client TLS handshake failed: {} (repeats are logged at debug for a minute; kt_client_tls_failures_total counts them)", cause.hint());
        } else {
            tracing::debug!(target = %target, reason = cause.as_str(), error = %self.detail, "client TLS handshake failed");
        }
        ctx.gw.engine().record_connect(
            &target.to_string(),
            ctx.identity.client.as_ref(),
            crate::events::Action::Error,
            Some(format!(
                "client_tls_{}: {} ({})",
                cause.as_str(),
                cause.hint(),
                self.detail
            )),
        );
    }
}

/// The client's TLS handshake, with a leaf minted for its SNI, while the
/// upstream's runs beside it (the receiver says when that one is over).
/// `None` when the client's failed: counted, logged and recorded.
async fn accept_tls<IO>(
    ctx: &ConnCtx,
    io: Prefixed<IO>,
    target: &Target,
    origin: &Origin,
    predialed: Option<Dialed>,
) -> Option<(
    tokio_rustls::server::TlsStream<Prefixed<IO>>,
    Option<tokio::sync::watch::Receiver<bool>>,
    Origin,
)>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = &ctx.gw.limits;
    let mut acceptor =
        tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io);
    let handshake = async {
        let start = match (&mut acceptor).await {
            Ok(start) => start,
            Err(e) => {
                return Err(Refused::new(
                    ClientTlsFailure::of(&e),
                    &e,
                    acceptor.take_io(),
                ))
            }
        };
        let hello = start.client_hello();
        let prefer = match hello.alpn().and_then(|mut offers| offers.next()) {
            Some(b"h2") => Prefer::H2,
            _ => Prefer::H1,
        };
        let sni = hello.server_name().map(str::to_owned);
        let name = sni.as_deref().unwrap_or(&target.host);
        if sni
            .as_deref()
            .is_some_and(|s| !s.eq_ignore_ascii_case(&target.host))
        {
            tracing::debug!(connect = %target, sni = ?sni, "SNI differs from the CONNECT host");
        }
        // A CONNECT to an address whose ClientHello names the service
        // (`--intercept all`): the upstream's certificate is for that name,
        // not the address, and is verified against it.
        let origin = match &sni {
            Some(name) if target.is_ip() && name.parse::<std::net::IpAddr>().is_err() => {
                Origin::new(true, name, target.port)
            }
            _ => origin.clone(),
        };
        // The upstream handshake runs beside the client's: the first
        // request waits for it (see `attached`) instead of the handshake.
        let attached = predialed.map(|dialed| {
            let (done, attached) = tokio::sync::watch::channel(false);
            let upstream = ctx.gw.upstream.clone();
            let origin = origin.clone();
            tokio::spawn(async move {
                if let Err(e) = upstream.attach(&origin, dialed, prefer).await {
                    // The client still gets its session, and a readable 502
                    // naming the cause on each request.
                    tracing::info!(%origin, error = %e, "upstream connection failed");
                }
                let _ = done.send(true);
            });
            attached
        });
        let config = match ctx.gw.certs.server_config(name).await {
            Ok(config) => config,
            Err(e) => return Err(Refused::new(ClientTlsFailure::NoCertificate, &e, None)),
        };
        match start.into_stream(config).into_fallible().await {
            Ok(tls) => Ok((tls, attached, origin)),
            Err((e, io)) => Err(Refused::new(ClientTlsFailure::of(&e), &e, Some(io))),
        }
    };
    // Pinned here so that on a timeout the client's socket stays open until
    // the failure is counted (a client reading its EOF then sees the count).
    let mut handshake = std::pin::pin!(handshake);
    match tokio::time::timeout(limits.client_tls_handshake, handshake.as_mut()).await {
        Ok(Ok(done)) => Some(done),
        Ok(Err(refused)) => {
            refused.report(ctx, target);
            None
        }
        Err(_) => {
            let e = format!("no handshake within {:?}", limits.client_tls_handshake);
            Refused::<()>::new(ClientTlsFailure::Timeout, &e, None).report(ctx, target);
            None
        }
    }
}

/// Runs a server connection until it ends, the gateway drains (graceful:
/// in-flight requests and streams finish), or it sits idle too long.
async fn drive<C, E, G>(ctx: &ConnCtx, conn: C, graceful: G, idle: impl Future<Output = ()>)
where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
    G: FnOnce(Pin<&mut C>),
{
    let mut conn = std::pin::pin!(conn);
    let res = tokio::select! {
        res = conn.as_mut() => res,
        _ = ctx.shutdown.draining() => {
            graceful(conn.as_mut());
            tokio::select! {
                res = conn.as_mut() => res,
                // Dropped: its exchanges record how they ended.
                _ = ctx.shutdown.cut() => Ok(()),
            }
        }
        _ = idle => Ok(()),
    };
    if let Err(e) = res {
        tracing::debug!(error = %e, "intercepted connection ended with an error");
    }
}

/// A response body on an HTTP/2 connection, keeping its request counted as
/// open (for the connection's idle limit) until the body is gone, and cut
/// when its upstream sends nothing for the idle limit: PINGs keep an h2
/// connection's bytes moving, so the connection's own watchdog cannot see
/// one stalled stream.
struct Holding {
    body: Body,
    _open: OpenRequest,
    stall: Duration,
    /// Armed while the body waits; made once, reset after each frame.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
    /// A frame came since the timer was last armed.
    moved: bool,
}

impl http_body::Body for Holding {
    type Data = bytes::Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if polled.is_ready() {
            this.moved = true;
            return polled;
        }
        let stall = this.stall;
        let timer = match &mut this.stalled {
            Some(t) => {
                if std::mem::take(&mut this.moved) {
                    t.as_mut().reset(tokio::time::Instant::now() + stall);
                }
                t
            }
            None => {
                this.moved = false;
                this.stalled.insert(Box::pin(tokio::time::sleep(stall)))
            }
        };
        match timer.as_mut().poll(cx) {
            std::task::Poll::Ready(()) => {
                let secs = stall.as_secs_f32();
                std::task::Poll::Ready(Some(Err(format!(
                    "the upstream sent nothing for {secs} s (the idle limit)"
                )
                .into())))
            }
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
