//! A client connection on the listener: HTTP/1.1 requests told apart by
//! their request line — CONNECT, absolute-form (forward proxy), or
//! origin-form (the direct API under `/v1/`, and the admin routes).

use super::{
    authority, by_ip, direct, forward, intercept, tunnel, web_pages, AuthRoute, ConnCtx, Gateway,
    InterceptMode, ProxyError,
};
use crate::body::{self, Body};
use crate::netio::{Activity, Requests, Tracked};
use crate::shutdown::Shutdown;
use crate::upstream::pool::Origin;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;

pub(super) async fn serve(
    gw: Arc<Gateway>,
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    shutdown: Shutdown,
    admission: Arc<super::Admission>,
) {
    let activity = Activity::new();
    let io = TokioIo::new(Tracked::new(stream, activity.clone()));
    let ctx = ConnCtx {
        gw: gw.clone(),
        local,
        peer,
        shutdown: shutdown.clone(),
        activity: activity.clone(),
        admission,
        identity: crate::identity::Identity::anonymous(),
        session_key: None,
    };
    // A request waiting for its answer (a direct-API call whose provider
    // thinks for minutes) moves no byte: counted open until its head, so
    // the idle limit does not cut it; the response timeout bounds it.
    let requests = Requests::default();
    let svc_requests = requests.clone();
    let svc = service_fn(move |req| {
        let ctx = ctx.clone();
        let open = svc_requests.start();
        async move {
            let resp = route(ctx, req).await;
            drop(open);
            Ok::<_, Infallible>(resp)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(gw.limits.header_read)
        .max_header_size(gw.limits.max_header_bytes)
        .serve_connection(io, svc)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => log_conn_end(res),
        _ = shutdown.draining() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                res = conn.as_mut() => log_conn_end(res),
                _ = shutdown.cut() => {}
            }
        }
        _ = requests.idle_timeout_with(&activity, gw.limits.idle) => {}
    }
}

fn log_conn_end(res: Result<(), hyper::Error>) {
    if let Err(e) = res {
        tracing::debug!(error = %e, "client connection ended with an error");
    }
}

async fn route(ctx: ConnCtx, req: Request<Incoming>) -> Response<Body> {
    let result = if req.method() == Method::CONNECT {
        // A refused CONNECT leaves the client nothing to do on this
        // connection: close it rather than wait for a keep-alive timeout.
        connect(ctx, req).await.map_err(|e| (e, true))
    } else if req.uri().scheme().is_some() {
        absolute_form(ctx, req).await.map_err(|e| (e, false))
    } else if let Err(e) = web_pages::check(&ctx, &req) {
        Err((e, false))
    } else if direct::owns(req.uri().path()) {
        return direct::serve(ctx, req).await;
    } else {
        admin(&ctx, &req).map_err(|e| (e, false))
    };
    result.unwrap_or_else(|(err, close)| {
        let mut resp = err.into_response();
        if close {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    })
}

/// True when `host:port` is this gateway's own listener.
fn is_self(ctx: &ConnCtx, host: &str, port: u16) -> bool {
    if port != ctx.local.port() {
        return false;
    }
    // `::ffff:127.0.0.1` is the IPv4 loopback too.
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| {
            let ip = ip.to_canonical();
            ip == ctx.local.ip().to_canonical() || ip.is_loopback() || ip.is_unspecified()
        })
}

/// The caller of a forward-proxy request, from its `Proxy-Authorization`
/// (refused with `407` when keys are required and it has no valid one).
fn proxy_identity(ctx: &mut ConnCtx, req: &Request<Incoming>) -> Result<(), ProxyError> {
    (ctx.identity, ctx.session_key) =
        ctx.gw
            .auth
            .proxy(req.headers())
            .map_err(|denied| ProxyError::Auth {
                route: AuthRoute::Proxy,
                denied,
            })?;
    ctx.identity.client = Some(ctx.gw.auth.client_ip(ctx.peer.ip(), req.headers()).into());
    Ok(())
}

async fn connect(mut ctx: ConnCtx, req: Request<Incoming>) -> Result<Response<Body>, ProxyError> {
    // Checked first: a client without a key learns nothing about targets.
    // The identity then holds for every request of an intercepted session.
    proxy_identity(&mut ctx, &req)?;
    let raw = req
        .uri()
        .authority()
        .map(|a| a.as_str())
        .ok_or_else(|| ProxyError::BadRequest("CONNECT needs host:port".into()))?;
    let target = authority::parse(raw)?;
    if is_self(&ctx, &target.host, target.port) {
        return Err(ProxyError::Loop);
    }
    let allowed = &ctx.gw.limits.allowed_connect_ports;
    if ctx.gw.limits.restrict_connect_ports != Some(false) && !allowed.contains(&target.port) {
        return Err(ProxyError::PortNotAllowed {
            port: target.port,
            allowed: allowed
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let gw = ctx.gw.clone();
    if gw.rules.should_intercept(&target.host) {
        if gw.sightings.first(&target.host) {
            tracing::info!(%target, "first CONNECT to this host: intercepted (decrypted, policies apply)");
        }
        let origin = Origin::new(true, &target.host, target.port);
        let predialed = gw.upstream.predial(&origin).await?;
        let sd = ctx.shutdown.clone();
        sd.spawn(async move {
            match hyper::upgrade::on(req).await {
                Ok(upgraded) => {
                    let io = TokioIo::new(upgraded);
                    intercept::serve(ctx, io, target, origin, predialed).await;
                }
                Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
            }
        });
    } else {
        let upstream = gw.upstream.dial(&target.host, target.port, true).await?;
        // An address names no service: the ClientHello may (see `by_ip`),
        // which records the tunnel once it is one. With `--intercept all`
        // addresses are intercepted already, with `none` never.
        let by_address = target.is_ip() && gw.rules.mode() == InterceptMode::Llm;
        if !by_address {
            gw.engine()
                .record_tunnel(&target.to_string(), ctx.identity.client.as_ref());
            if gw.sightings.first(&target.host) {
                tracing::info!(%target, "first CONNECT to this host: tunnelled untouched (not an intercepted host)");
            }
        }
        let sd = ctx.shutdown.clone();
        sd.spawn(async move {
            match hyper::upgrade::on(req).await {
                Ok(upgraded) => {
                    let client = TokioIo::new(upgraded);
                    if by_address {
                        by_ip::serve(ctx, client, target, upstream).await;
                    } else {
                        tunnel::blind(&ctx, client, upstream).await;
                    }
                }
                Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
            }
        });
    }
    Ok(Response::new(body::empty()))
}

/// `GET http://host/path` sent to the proxy: forwarded as is (plain HTTP),
/// or answered here when it names this gateway.
async fn absolute_form(
    mut ctx: ConnCtx,
    req: Request<Incoming>,
) -> Result<Response<Body>, ProxyError> {
    let uri = req.uri();
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(ProxyError::BadRequest("unsupported URI scheme".into())),
    };
    let auth = uri
        .authority()
        .ok_or_else(|| ProxyError::BadRequest("absolute URI without a host".into()))?;
    let default_port = if tls { 443 } else { 80 };
    // The same strict check as a CONNECT target: a host like `a%0d%0ab`
    // or a port like 99999 would otherwise go to DNS (or port 80) and into
    // the audit trail.
    let authority::Target { host, port } =
        authority::parse_or_default_port(auth.as_str(), default_port)?;
    let to_direct = direct::owns(uri.path());
    if is_self(&ctx, &host, port) {
        web_pages::check(&ctx, &req)?;
        if to_direct {
            return Ok(direct::serve(ctx, req).await);
        }
        return admin(&ctx, &req);
    }
    proxy_identity(&mut ctx, &req)?;
    let origin = Origin::new(tls, &host, port);
    forward::forward(&ctx, &origin, req).await
}

/// Origin-form requests to the gateway itself.
fn admin(ctx: &ConnCtx, req: &Request<Incoming>) -> Result<Response<Body>, ProxyError> {
    let path = req.uri().path();
    // `/_kt/` and everything under it but the CA certificate (the events
    // feed, the dashboard) need an admin key when keys are required; the
    // probes and `/metrics` (counters only, no user labels) stay open for
    // load balancers and Prometheus.
    if (path == "/_kt" || path.starts_with("/_kt/")) && path != "/_kt/ca.pem" {
        if let Some(login) = super::dashboard::key_login(ctx, req) {
            return login;
        }
        ctx.gw
            .auth
            .admin(&super::dashboard::admin_credentials(req.headers()))
            .map_err(|denied| ProxyError::Auth {
                route: AuthRoute::Admin,
                denied,
            })?;
    }
    let read_only = matches!(*req.method(), Method::GET | Method::HEAD);
    let text = |status: StatusCode, text: &'static str| {
        let mut r = body::typed_response("text/plain; charset=utf-8", text);
        *r.status_mut() = status;
        r
    };
    match path {
        "/healthz" | "/readyz" | "/_kt/ca.pem" if !read_only => Err(ProxyError::MethodNotAllowed),
        "/healthz" => Ok(text(StatusCode::OK, "ok\n")),
        "/metrics" if read_only => Ok(body::typed_response(
            "text/plain; version=0.0.4; charset=utf-8",
            super::metrics::render(&ctx.gw),
        )),
        "/_kt" | "/_kt/" if read_only => Ok(super::dashboard::page()),
        "/_kt/cache" | "/_kt/cache/purge" => super::cached::admin(ctx, req),
        "/_kt/events" if *req.method() == Method::GET => {
            // Asked again while the feed is open: a key revoked meanwhile
            // stops it (keys are looked up, not remembered).
            let mut creds = http::HeaderMap::new();
            let presented = super::dashboard::admin_credentials(req.headers());
            if let Some(v) = presented.get(http::header::AUTHORIZATION) {
                creds.insert(http::header::AUTHORIZATION, v.clone());
            }
            let gw = ctx.gw.clone();
            let allowed = std::sync::Arc::new(move || gw.auth.admin(&creds).is_ok());
            Ok(super::feed::serve(ctx, req.uri().query(), allowed))
        }
        "/readyz" if ctx.shutdown.is_draining() => {
            Ok(text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"))
        }
        "/readyz" => Ok(text(StatusCode::OK, "ready\n")),
        "/_kt/ca.pem" => Ok(body::typed_response(
            "application/x-pem-file",
            ctx.gw.ca_pem.clone(),
        )),
        _ => Err(ProxyError::NotFound(path.to_string())),
    }
}
