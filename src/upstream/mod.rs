//! Everything outbound: dialing (with `--connect-to` and upstream proxy
//! chaining), verified TLS, and HTTP requests over pooled connections.

pub mod chain;
pub mod connect_to;
pub mod guard;
pub mod link;
pub mod pool;
pub mod race;
pub mod tls;

use crate::body::Body;
use crate::netio::Prefixed;
use bytes::Bytes;
use chain::{ChainError, ProxyRules, ProxyUrl};
use connect_to::ConnectToRules;
use http::{header, HeaderMap, HeaderValue, Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use link::Link;
use pool::{Origin, Pool, Prefer, Sender};
use rustls_pki_types::ServerName;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

pub use tls::UpstreamTls;

/// A connection to the upstream (or through the upstream proxy), with any
/// bytes already received.
pub type Dialed = Prefixed<Link>;

/// Why an upstream exchange failed. The proxy maps these to 502/504.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to {target}: {source}")]
    Connect {
        target: String,
        source: std::io::Error,
    },
    #[error("timed out connecting to {target}")]
    ConnectTimeout { target: String },
    #[error("upstream proxy {proxy} failed for {target}: {source}")]
    Chain {
        proxy: String,
        target: String,
        source: ChainError,
    },
    #[error("TLS handshake with {host} failed: {reason}")]
    Tls { host: String, reason: String },
    #[error("timed out in the TLS handshake with {host}")]
    TlsTimeout { host: String },
    #[error("HTTP error talking to {origin}: {source}")]
    Http {
        origin: String,
        source: hyper::Error,
    },
    #[error("{origin} did not answer within {secs} s")]
    ResponseTimeout { origin: String, secs: u64 },
    #[error("invalid upstream host name {0:?}")]
    BadName(String),
    #[error("{origin} broke HTTP: {reason}")]
    Protocol {
        origin: String,
        reason: &'static str,
    },
    #[error("kt already holds {limit} upstream connections (half its open-file limit) and none came free within {secs} s for {origin}")]
    Busy {
        origin: String,
        limit: usize,
        secs: u64,
    },
    #[error(
        "{target} resolves to {addr}, a link-local or cloud metadata address kt never connects to"
    )]
    Forbidden {
        target: String,
        addr: std::net::IpAddr,
    },
}

impl UpstreamError {
    /// Stable snake_case label for events and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Connect { .. } => "upstream_connect",
            UpstreamError::ConnectTimeout { .. } => "upstream_connect_timeout",
            UpstreamError::Chain { .. } => "upstream_proxy",
            UpstreamError::Tls { .. } => "upstream_tls",
            UpstreamError::TlsTimeout { .. } => "upstream_tls_timeout",
            UpstreamError::Http { .. } => "upstream_http",
            UpstreamError::ResponseTimeout { .. } => "upstream_timeout",
            UpstreamError::BadName(_) => "upstream_bad_name",
            UpstreamError::Protocol { .. } => "upstream_protocol",
            UpstreamError::Forbidden { .. } => "forbidden_address",
            UpstreamError::Busy { .. } => "upstream_connections_exhausted",
        }
    }

    /// The client's part of a failed exchange: the request body kt was
    /// relaying broke on the client's side (bad chunking, a client gone
    /// mid-body). `None` when the upstream is to blame.
    pub fn client_body_failure(&self) -> Option<String> {
        match self {
            UpstreamError::Http { source, .. } if source.is_user() => {
                std::error::Error::source(source).map(|cause| cause.to_string())
            }
            _ => None,
        }
    }

    /// Names the host the client asked for when `--connect-to` sent the
    /// dial elsewhere: an error naming only `127.0.0.1:8443` leaves the user
    /// guessing which of their hosts failed.
    fn dialed_for(self, host: &str, port: u16) -> Self {
        let asked = HostPort(host, port).to_string();
        match self {
            UpstreamError::Connect { target, source } => UpstreamError::Connect {
                target: format!("{asked} (via {target})"),
                source,
            },
            UpstreamError::ConnectTimeout { target } => UpstreamError::ConnectTimeout {
                target: format!("{asked} (via {target})"),
            },
            UpstreamError::Forbidden { target, addr } if target != asked => {
                UpstreamError::Forbidden {
                    target: format!("{asked} (via {target})"),
                    addr,
                }
            }
            other => other,
        }
    }

    /// True for failures that mean "took too long" (HTTP 504).
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            UpstreamError::ConnectTimeout { .. }
                | UpstreamError::TlsTimeout { .. }
                | UpstreamError::ResponseTimeout { .. }
        )
    }
}

impl UpstreamError {
    /// A copy of a TLS handshake timeout, the failure a new dial would most
    /// likely wait for as long again. (A refused handshake answers fast, so
    /// a new dial says how the upstream is now.)
    fn timed_out_copy(&self) -> Option<Self> {
        match self {
            UpstreamError::TlsTimeout { host } => {
                Some(UpstreamError::TlsTimeout { host: host.clone() })
            }
            _ => None,
        }
    }

    /// An upstream's `101 Switching Protocols` to a request that asked for
    /// no upgrade: nothing can be relayed after it.
    pub fn unasked_upgrade(origin: &Origin) -> Self {
        UpstreamError::Protocol {
            origin: origin.to_string(),
            reason: "it switched protocols without being asked",
        }
    }
}

/// Limits on the outbound side.
#[derive(Debug, Clone)]
pub struct UpstreamTimeouts {
    pub connect: Duration,
    pub tls_handshake: Duration,
    /// From sending the request to receiving the response head. LLM calls
    /// without streaming can think for minutes: the OpenAI and Anthropic
    /// SDKs wait 10 (and retry a 504), so kt waits as long.
    pub response_head: Duration,
    pub pool_idle: Duration,
    /// Upstream HTTP connections open at once; more wait up to `connect`
    /// for one to close. `None`: half the open-file limit.
    pub max_connections: Option<usize>,
}

impl Default for UpstreamTimeouts {
    fn default() -> Self {
        UpstreamTimeouts {
            connect: Duration::from_secs(10),
            tls_handshake: Duration::from_secs(10),
            response_head: Duration::from_secs(600),
            pool_idle: Duration::from_secs(90),
            max_connections: None,
        }
    }
}

/// The outbound client shared by every connection.
pub struct Upstream {
    connect_to: ConnectToRules,
    proxies: ProxyRules,
    tls: UpstreamTls,
    pool: Arc<Pool>,
    timeouts: UpstreamTimeouts,
    /// Open HTTP connections to upstreams, each holding a permit while it
    /// lives: h2 streams from clients each need an HTTP/1.1 connection to
    /// an h1 upstream, so clients could otherwise spend every descriptor.
    conns: Arc<tokio::sync::Semaphore>,
    conns_limit: usize,
    /// A handshake that failed at CONNECT (in [`Self::attach`]), kept for
    /// the request that waited for it: dialing again would make it wait
    /// a second timeout for the same answer.
    attach_failures: std::sync::Mutex<Vec<(Origin, std::time::Instant, UpstreamError)>>,
}

/// How long an [`Upstream::attach`] failure answers the next request.
const ATTACH_FAILURE_KEPT: Duration = Duration::from_secs(2);

/// A live upstream connection's share of [`Upstream::conns`].
type ConnPermit = tokio::sync::OwnedSemaphorePermit;

/// Upstream HTTP connections allowed at once: half the open-file limit
/// (the other half is for clients and tunnels), within sane bounds.
fn upstream_connection_limit() -> usize {
    #[cfg(unix)]
    let files = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map(|(soft, _)| usize::try_from(soft).unwrap_or(usize::MAX))
        .unwrap_or(1024);
    #[cfg(not(unix))]
    let files = 8192usize;
    (files.saturating_sub(64) / 2).clamp(64, 65_536)
}

impl Upstream {
    pub fn new(
        connect_to: ConnectToRules,
        proxies: ProxyRules,
        tls: UpstreamTls,
        timeouts: UpstreamTimeouts,
    ) -> Arc<Self> {
        let conns_limit = timeouts
            .max_connections
            .unwrap_or_else(upstream_connection_limit)
            .max(1);
        let upstream = Arc::new(Upstream {
            connect_to,
            proxies,
            tls,
            pool: Arc::new(Pool::new(64, timeouts.pool_idle)),
            timeouts,
            conns: Arc::new(tokio::sync::Semaphore::new(conns_limit)),
            conns_limit,
            attach_failures: std::sync::Mutex::new(Vec::new()),
        });
        // Sweep expired idle connections so they do not hold sockets forever.
        let weak = Arc::downgrade(&upstream);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(15));
                loop {
                    tick.tick().await;
                    match weak.upgrade() {
                        Some(u) => u.pool.sweep(),
                        None => return,
                    }
                }
            });
        }
        upstream
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Opens a TCP path to `host:port` for a blind tunnel or a TLS
    /// connection: through `--connect-to` and the upstream proxy if any.
    pub async fn dial(&self, host: &str, port: u16, tls: bool) -> Result<Dialed, UpstreamError> {
        refuse_forbidden_literal(host, port)?;
        let (addr, addr_port) = self.connect_to.resolve(host, port);
        let proxy = if tls {
            self.proxies.for_tunnel(host)
        } else {
            self.proxies.for_plain(host)
        };
        match proxy {
            None => {
                let rewritten = addr != host || addr_port != port;
                let stream = self.tcp(addr, addr_port).await.map_err(|e| {
                    if rewritten {
                        e.dialed_for(host, port)
                    } else {
                        e
                    }
                })?;
                Ok(Prefixed::new(Bytes::new(), Link::Tcp(stream)))
            }
            Some(proxy) => {
                let mut stream = self
                    .to_proxy(proxy, &HostPort(host, port).to_string())
                    .await?;
                let handshake = proxy.connect_through(&mut stream, addr, addr_port);
                let leftover = tokio::time::timeout(self.timeouts.connect, handshake)
                    .await
                    .map_err(|_| UpstreamError::ConnectTimeout {
                        target: format!("{} via {proxy}", HostPort(host, port)),
                    })?
                    .map_err(|source| UpstreamError::Chain {
                        proxy: proxy.to_string(),
                        target: HostPort(host, port).to_string(),
                        source,
                    })?;
                Ok(Prefixed::new(leftover, stream))
            }
        }
    }

    /// A connection to `proxy` for `target`'s traffic: TCP, then TLS for an
    /// `https://` proxy, verified against the same roots as any upstream.
    async fn to_proxy(&self, proxy: &ProxyUrl, target: &str) -> Result<Link, UpstreamError> {
        let (addr, port) = self.connect_to.resolve(&proxy.host, proxy.port);
        let tcp = self.tcp(addr, port).await?;
        if !proxy.tls {
            return Ok(Link::Tcp(tcp));
        }
        let name = ServerName::try_from(proxy.host.clone())
            .map_err(|_| UpstreamError::BadName(proxy.host.clone()))?;
        // CONNECT and absolute-form requests are HTTP/1.1.
        let handshake = TlsConnector::from(self.tls.h1_only.clone()).connect(name, tcp);
        match tokio::time::timeout(self.timeouts.tls_handshake, handshake).await {
            Err(_) => Err(UpstreamError::TlsTimeout {
                host: format!("{} (the upstream proxy)", proxy.host),
            }),
            Ok(Err(e)) => Err(UpstreamError::Chain {
                proxy: proxy.to_string(),
                target: target.to_string(),
                source: ChainError::Tls(tls_reason(&e)),
            }),
            Ok(Ok(tls)) => Ok(Link::ProxyTls(Box::new(tls))),
        }
    }

    /// The proxy that forwards a plain `http://` origin's requests, if any.
    fn forwarding_proxy(&self, origin: &Origin) -> Option<&ProxyUrl> {
        if origin.tls {
            return None;
        }
        self.proxies.for_plain(&origin.host)
    }

    /// A new connection for `origin`'s requests: to the origin (tunnelled
    /// through an upstream proxy for TLS), or to the proxy that forwards a
    /// plain origin's requests.
    async fn dial_for_requests(&self, origin: &Origin) -> Result<Dialed, UpstreamError> {
        match self.forwarding_proxy(origin) {
            Some(proxy) => {
                refuse_forbidden_literal(&origin.host, origin.port)?;
                let stream = self.to_proxy(proxy, &origin.to_string()).await?;
                Ok(Prefixed::new(Bytes::new(), stream))
            }
            None => self.dial(&origin.host, origin.port, origin.tls).await,
        }
    }

    async fn tcp(&self, addr: &str, port: u16) -> Result<TcpStream, UpstreamError> {
        let target = || HostPort(addr, port).to_string();
        let connect = async {
            // Resolved here rather than by `TcpStream::connect` so that every
            // address is checked before it is dialed.
            let resolved = tokio::net::lookup_host((addr, port))
                .await
                .map_err(|source| UpstreamError::Connect {
                    target: target(),
                    source,
                })?;
            let (allowed, forbidden): (Vec<_>, Vec<_>) =
                resolved.partition(|sa| !guard::is_forbidden(sa.ip()));
            if let (true, Some(sa)) = (allowed.is_empty(), forbidden.first()) {
                return Err(UpstreamError::Forbidden {
                    target: target(),
                    addr: sa.ip(),
                });
            }
            race::first_connected(allowed, connect)
                .await
                .map_err(|source| UpstreamError::Connect {
                    target: target(),
                    source,
                })
        };
        let stream = tokio::time::timeout(self.timeouts.connect, connect)
            .await
            .map_err(|_| UpstreamError::ConnectTimeout { target: target() })??;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// The failure of an attach to `origin` moments ago, once.
    fn take_attach_failure(&self, origin: &Origin) -> Option<UpstreamError> {
        let mut failures = self.attach_failures();
        let i = failures.iter().position(|(o, _, _)| o == origin)?;
        Some(failures.swap_remove(i).2)
    }

    /// The kept attach failures, the expired ones gone.
    fn attach_failures(
        &self,
    ) -> std::sync::MutexGuard<'_, Vec<(Origin, std::time::Instant, UpstreamError)>> {
        let mut failures = self
            .attach_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        failures.retain(|(_, at, _)| at.elapsed() < ATTACH_FAILURE_KEPT);
        failures
    }

    /// Opens the TCP path for an intercepted CONNECT unless a pooled
    /// connection to `origin` is already live. Dialing before the client's
    /// `200` makes an unreachable upstream a 502 on the CONNECT itself; the
    /// TLS handshake waits for the client's ALPN offer (see [`Self::attach`]).
    pub async fn predial(&self, origin: &Origin) -> Result<Option<Dialed>, UpstreamError> {
        if self.pool.has_live(origin) {
            return Ok(None);
        }
        self.dial(&origin.host, origin.port, origin.tls)
            .await
            .map(Some)
    }

    /// Finishes a [`Self::predial`]ed connection with the HTTP version the
    /// client prefers and pools it.
    pub async fn attach(
        &self,
        origin: &Origin,
        dialed: Dialed,
        prefer: Prefer,
    ) -> Result<(), UpstreamError> {
        let offer = self.offer_for(origin, prefer);
        let permit = self.conn_permit(origin).await?;
        let sender = match self.handshake(origin, dialed, offer, permit).await {
            Err(Handshake::NoCommonAlpn) => {
                self.pool.mark_h2_only(origin);
                Box::pin(self.open(origin, prefer)).await?
            }
            Err(Handshake::Failed(e)) => {
                if let Some(kept) = e.timed_out_copy() {
                    self.attach_failures()
                        .push((origin.clone(), std::time::Instant::now(), kept));
                }
                return Err(e);
            }
            other => other?,
        };
        match sender {
            Sender::H1(s) => self.pool.put_h1(origin, s),
            Sender::H2(s) => self.pool.put_h2(origin, s),
        }
        Ok(())
    }

    fn offer_for(&self, origin: &Origin, prefer: Prefer) -> Offer {
        if prefer == Prefer::H1 && !self.pool.is_h2_only(origin) {
            Offer::H1
        } else {
            Offer::Any
        }
    }

    /// Opens a new HTTP connection to `origin` in the preferred version when
    /// the origin speaks it. An origin that refuses an HTTP/1.1-only offer
    /// is remembered as h2-only and redialed offering h2.
    async fn open(&self, origin: &Origin, prefer: Prefer) -> Result<Sender, UpstreamError> {
        if let Some(failed) = self.take_attach_failure(origin) {
            return Err(failed);
        }
        let offer = self.offer_for(origin, prefer);
        let permit = self.conn_permit(origin).await?;
        let dialed = self.dial_for_requests(origin).await?;
        match self.handshake(origin, dialed, offer, permit).await {
            Err(Handshake::NoCommonAlpn) => {
                tracing::debug!(%origin, "upstream refuses HTTP/1.1, using h2");
                self.pool.mark_h2_only(origin);
                let permit = self.conn_permit(origin).await?;
                let dialed = self.dial(&origin.host, origin.port, origin.tls).await?;
                Ok(self.handshake(origin, dialed, Offer::Any, permit).await?)
            }
            other => Ok(other?),
        }
    }

    /// A place among the open upstream connections, waiting at most the
    /// connect timeout for one to close.
    async fn conn_permit(&self, origin: &Origin) -> Result<ConnPermit, UpstreamError> {
        if let Ok(p) = self.conns.clone().try_acquire_owned() {
            return Ok(p);
        }
        let wait = self.conns.clone().acquire_owned();
        match tokio::time::timeout(self.timeouts.connect, wait).await {
            Ok(Ok(p)) => Ok(p),
            _ => Err(UpstreamError::Busy {
                origin: origin.to_string(),
                limit: self.conns_limit,
                secs: self.timeouts.connect.as_secs(),
            }),
        }
    }

    /// TLS (for https origins) and the HTTP handshake on a dialed path.
    async fn handshake(
        &self,
        origin: &Origin,
        dialed: Dialed,
        offer: Offer,
        permit: ConnPermit,
    ) -> Result<Sender, Handshake> {
        if !origin.tls {
            return Ok(self.handshake_h1(origin, dialed, permit).await?);
        }
        let name = ServerName::try_from(origin.host.to_string())
            .map_err(|_| UpstreamError::BadName(origin.host.to_string()))?;
        let config = match offer {
            Offer::H1 => self.tls.h1_only.clone(),
            Offer::Any => self.tls.any.clone(),
        };
        let handshake = TlsConnector::from(config).connect(name, dialed);
        let stream = match tokio::time::timeout(self.timeouts.tls_handshake, handshake).await {
            Err(_) => {
                return Err(UpstreamError::TlsTimeout {
                    host: origin.host.to_string(),
                }
                .into())
            }
            Ok(Err(e)) if offer == Offer::H1 && is_no_common_alpn(&e) => {
                return Err(Handshake::NoCommonAlpn)
            }
            Ok(Err(e)) => {
                return Err(UpstreamError::Tls {
                    host: origin.host.to_string(),
                    reason: tls_reason(&e),
                }
                .into())
            }
            Ok(Ok(stream)) => stream,
        };
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        if h2 {
            let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(Duration::from_secs(30))
                .keep_alive_timeout(Duration::from_secs(20))
                .keep_alive_while_idle(true)
                .max_header_list_size(64 * 1024)
                .handshake(TokioIo::new(stream))
                .await
                .map_err(|source| UpstreamError::Http {
                    origin: origin.to_string(),
                    source,
                })?;
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream h2 connection ended");
                }
            });
            Ok(Sender::H2(sender))
        } else {
            if offer == Offer::Any {
                self.pool.mark_h1_only(origin);
            }
            Ok(self
                .handshake_h1(origin, crate::netio::CloseIsEnd(stream), permit)
                .await?)
        }
    }

    async fn handshake_h1<T>(
        &self,
        origin: &Origin,
        io: T,
        permit: ConnPermit,
    ) -> Result<Sender, UpstreamError>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .max_buf_size(256 * 1024)
            .handshake(TokioIo::new(io))
            .await
            .map_err(|source| UpstreamError::Http {
                origin: origin.to_string(),
                source,
            })?;
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream h1 connection ended");
            }
        });
        Ok(Sender::H1(sender))
    }

    /// Sends `req` to `origin` and returns the response head with a
    /// streaming body. The request's URI and Host are adjusted to the
    /// upstream connection's protocol; hop-by-hop headers must already be
    /// gone. Upgrade requests (WebSocket) get a dedicated HTTP/1.1 connection.
    pub async fn send(
        &self,
        origin: &Origin,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let secs = self.timeouts.response_head.as_secs();
        let prefer = if req.version() == Version::HTTP_2 {
            Prefer::H2
        } else {
            Prefer::H1
        };
        let fut = self.send_inner(origin, req, prefer);
        let mut resp = tokio::time::timeout(self.timeouts.response_head, fut)
            .await
            .map_err(|_| UpstreamError::ResponseTimeout {
                origin: origin.to_string(),
                secs,
            })??;
        // A proxy answers in its own HTTP version (RFC 9110 §6.2): hyper
        // would echo an HTTP/1.0 origin's status line to an HTTP/1.1 client
        // and close its kept-alive connection after the answer.
        if resp.version() < Version::HTTP_11 {
            *resp.version_mut() = Version::HTTP_11;
        }
        Ok(resp)
    }

    async fn send_inner(
        &self,
        origin: &Origin,
        mut req: Request<Body>,
        prefer: Prefer,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let http_err = |source| UpstreamError::Http {
            origin: origin.to_string(),
            source,
        };
        if is_upgrade(&req) {
            // Boxed like `open` below: upgrades are rare.
            let permit = self.conn_permit(origin).await?;
            let dialed = Box::pin(self.dial(&origin.host, origin.port, origin.tls)).await?;
            let Sender::H1(mut sender) =
                Box::pin(self.handshake(origin, dialed, Offer::H1, permit))
                    .await
                    .map_err(|e| match e {
                        Handshake::NoCommonAlpn => UpstreamError::Tls {
                            host: origin.host.to_string(),
                            reason: "upstream refuses HTTP/1.1, which an upgrade needs".into(),
                        },
                        Handshake::Failed(e) => e,
                    })?
            else {
                return Err(UpstreamError::Tls {
                    host: origin.host.to_string(),
                    reason: "upstream insisted on HTTP/2 for an upgrade".into(),
                });
            };
            to_h1(&mut req, origin);
            return sender.send_request(req).await.map_err(http_err);
        }
        // One retry: a pooled HTTP/1.1 connection may have been closed by the
        // server just as we picked it; hyper hands the unsent request back.
        for attempt in 0..2 {
            let (sender, reused) = match self.pool.checkout(origin, prefer) {
                Some(s) => (s, true),
                // Boxed: connection setup is rare, and inlining its state
                // would make every request's future (moved per request) large.
                None => (Box::pin(self.open(origin, prefer)).await?, false),
            };
            match sender {
                Sender::H2(mut s) => {
                    if !reused {
                        self.pool.put_h2(origin, s.clone());
                    }
                    to_h2(&mut req, origin);
                    return s.send_request(req).await.map_err(http_err);
                }
                Sender::H1(mut s) => {
                    // At once for a pooled connection; a fresh one is ready
                    // when its task has run.
                    if let Err(e) = s.ready().await {
                        if reused && attempt == 0 {
                            continue;
                        }
                        return Err(http_err(e));
                    }
                    to_h1(&mut req, origin);
                    if let Some(proxy) = self.forwarding_proxy(origin) {
                        let (addr, port) = self.connect_to.resolve(&origin.host, origin.port);
                        proxy.to_absolute_form(&mut req, &authority_of(addr, port, 80));
                    }
                    match s.try_send_request(req).await {
                        Ok(resp) => {
                            self.return_when_idle(origin, s);
                            return Ok(resp);
                        }
                        Err(mut e) => match e.take_message() {
                            Some(unsent) if reused && attempt == 0 => req = unsent,
                            _ => return Err(http_err(e.into_error())),
                        },
                    }
                }
            }
        }
        Err(UpstreamError::Tls {
            host: origin.host.to_string(),
            reason: "no usable connection".into(),
        })
    }

    /// Puts an HTTP/1.1 connection back in the pool once its response body
    /// has been fully read (hyper reports it ready again).
    fn return_when_idle(
        &self,
        origin: &Origin,
        mut sender: hyper::client::conn::http1::SendRequest<Body>,
    ) {
        let pool = self.pool.clone();
        let origin = origin.clone();
        tokio::spawn(async move {
            if sender.ready().await.is_ok() {
                pool.put_h1(&origin, sender);
            }
        });
    }
}

/// Opens a TCP connection to `sa`, unpaced when it stays on this machine
/// (see [`crate::loopback_tcp`]).
async fn connect(sa: std::net::SocketAddr) -> std::io::Result<TcpStream> {
    let socket = if sa.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    crate::loopback_tcp::unpace(&socket, sa.ip());
    socket.connect(sa).await
}

/// Which ALPN protocols a new upstream connection offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Offer {
    /// `http/1.1` only: servers choose h2 whenever it is offered.
    H1,
    /// `h2` and `http/1.1`.
    Any,
}

/// A handshake outcome worth retrying differently.
enum Handshake {
    /// The server accepts no protocol of an HTTP/1.1-only offer.
    NoCommonAlpn,
    Failed(UpstreamError),
}

impl From<UpstreamError> for Handshake {
    fn from(e: UpstreamError) -> Self {
        Handshake::Failed(e)
    }
}

impl From<Handshake> for UpstreamError {
    fn from(h: Handshake) -> Self {
        match h {
            Handshake::Failed(e) => e,
            Handshake::NoCommonAlpn => UpstreamError::Tls {
                host: String::new(),
                reason: "no common application protocol".into(),
            },
        }
    }
}

/// The server answered our ALPN offer with `no_application_protocol`.
fn is_no_common_alpn(err: &std::io::Error) -> bool {
    err.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| {
            matches!(
                e,
                rustls::Error::AlertReceived(rustls::AlertDescription::NoApplicationProtocol)
            )
        })
}

fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.headers().contains_key(header::UPGRADE)
}

/// Authority the client asked for: the URI's (absolute form, HTTP/2
/// `:authority`), else the Host header, else the origin.
fn request_authority<B>(req: &Request<B>, origin: &Origin) -> String {
    if let Some(authority) = target_authority(req) {
        return authority;
    }
    if let Some(host) = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
    {
        return host.to_string();
    }
    origin.authority()
}

/// The authority of an absolute-form request target (or HTTP/2
/// `:authority`), userinfo left out. It wins over a `Host` header that
/// says otherwise (RFC 9112 §3.2.2: a proxy replaces `Host` with it;
/// RFC 9113 §8.3.1): the request goes where its target names, and the
/// upstream must hear the same name.
fn target_authority<B>(req: &Request<B>) -> Option<String> {
    let a = req.uri().authority()?;
    Some(match a.port() {
        Some(port) => format!("{}:{}", a.host(), port.as_str()),
        None => a.host().to_string(),
    })
}

/// Refuses an address literal kt must not reach, even when an upstream
/// proxy would be the one to dial it.
fn refuse_forbidden_literal(host: &str, port: u16) -> Result<(), UpstreamError> {
    let bare = host.trim_matches(['[', ']']);
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) if guard::is_forbidden(ip) => Err(UpstreamError::Forbidden {
            target: HostPort(bare, port).to_string(),
            addr: ip,
        }),
        _ => Ok(()),
    }
}

/// `host:port` as written in a URI authority or a message: an IPv6 literal
/// in brackets. Formats without allocating.
#[derive(Debug, Clone, Copy)]
pub struct HostPort<'a>(pub &'a str, pub u16);

impl std::fmt::Display for HostPort<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let HostPort(host, port) = *self;
        if host.contains(':') {
            write!(f, "[{host}]:{port}")
        } else {
            write!(f, "{host}:{port}")
        }
    }
}

/// `host[:port]` as a URI authority, the port left out when it is `default`.
pub(crate) fn authority_of(host: &str, port: u16, default: u16) -> String {
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    if port == default {
        host
    } else {
        format!("{host}:{port}")
    }
}

/// HTTP/1.1 upstream: origin-form URI and a Host header.
fn to_h1<B>(req: &mut Request<B>, origin: &Origin) {
    if req.uri().authority().is_some() || !req.headers().contains_key(header::HOST) {
        let authority = request_authority(req, origin);
        if let Ok(v) = HeaderValue::from_str(&authority) {
            req.headers_mut().insert(header::HOST, v);
        }
    }
    let pq = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    if let Ok(uri) = pq.parse::<Uri>() {
        *req.uri_mut() = uri;
    }
    // On HTTP/1.1, TE is hop-by-hop and must be named by Connection (RFC
    // 9110 §10.1.4); hop-by-hop headers are gone by now, `TE: trailers` kept.
    if req.headers().contains_key(header::TE) {
        req.headers_mut()
            .append(header::CONNECTION, HeaderValue::from_static("te"));
    }
    if req.version() == Version::HTTP_2 {
        join_cookies(req.headers_mut());
    }
    *req.version_mut() = Version::HTTP_11;
}

/// An HTTP/2 client may send each cookie as a field of its own (it
/// compresses better); an HTTP/1.1 server reads one `Cookie` line, so they
/// are joined with "; " on the way (RFC 9113 §8.2.3). Some servers read
/// only the first line, or join lines with ",", which is not a cookie
/// separator.
fn join_cookies(headers: &mut HeaderMap) {
    let joined = {
        let mut values = headers.get_all(header::COOKIE).iter();
        let Some(first) = values.next() else { return };
        let mut rest = values.peekable();
        if rest.peek().is_none() {
            return;
        }
        let mut joined = first.as_bytes().to_vec();
        for v in rest {
            joined.extend_from_slice(b"; ");
            joined.extend_from_slice(v.as_bytes());
        }
        joined
    };
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// HTTP/2 upstream: absolute URI carrying :authority, no Host header.
fn to_h2<B>(req: &mut Request<B>, origin: &Origin) {
    let authority = request_authority(req, origin);
    req.headers_mut().remove(header::HOST);
    let scheme = if origin.tls { "https" } else { "http" };
    let pq = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    if let Ok(uri) = format!("{scheme}://{authority}{pq}").parse::<Uri>() {
        *req.uri_mut() = uri;
    }
    *req.version_mut() = Version::HTTP_2;
}

/// Human-readable reason from a TLS handshake error (certificate problems
/// are spelled out: they are what users need to fix).
fn tls_reason(err: &std::io::Error) -> String {
    if let Some(inner) = err.get_ref() {
        if let Some(rustls_err) = inner.downcast_ref::<rustls::Error>() {
            return match rustls_err {
                rustls::Error::InvalidCertificate(c) => {
                    format!("upstream certificate rejected: {}", certificate_problem(c))
                }
                other => other.to_string(),
            };
        }
    }
    err.to_string()
}

/// Names shown of a certificate that is for other hosts; a CDN's can list
/// hundreds.
const NAMES_SHOWN: usize = 5;

/// A certificate problem in words a user can act on. rustls's own text
/// holds debug forms (`DnsName("…")`, `Other(OtherError(…))`).
fn certificate_problem(c: &rustls::CertificateError) -> String {
    use rustls::CertificateError as E;
    match c {
        E::NotValidForNameContext { expected, presented } => {
            let names: Vec<String> = presented.iter().map(|n| bare_name(n)).collect();
            let shown = names.len().min(NAMES_SHOWN);
            let more = match names.len() - shown {
                0 => String::new(),
                n => format!(" and {n} more"),
            };
            match shown {
                0 => format!(
                    "it is not valid for {} (it names no host)",
                    expected.to_str()
                ),
                _ => format!(
                    "it is not valid for {} but for {}{more}",
                    expected.to_str(),
                    names[..shown].join(", ")
                ),
            }
        }
        E::UnknownIssuer => "it was issued by a CA kt does not trust (a company CA goes in --upstream-ca or upstream.ca_files)".into(),
        E::Expired => "it has expired".into(),
        E::ExpiredContext { not_after, .. } => {
            format!("it expired at {}", unix_time(not_after.as_secs()))
        }
        E::NotValidYet => "it is not valid yet (is this machine's clock right?)".into(),
        E::NotValidYetContext { not_before, .. } => format!(
            "it is not valid before {} (is this machine's clock right?)",
            unix_time(not_before.as_secs())
        ),
        E::Other(other) if format!("{other:?}").contains("CaUsedAsEndEntity") => {
            "the server presented a CA certificate as its own".into()
        }
        E::Other(other) => other.to_string(),
        other => other.to_string(),
    }
}

/// A certificate's time, as events and logs write times.
fn unix_time(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .map_or_else(|| format!("{secs} (Unix time)"), crate::events::format_ts)
}

/// `api.openai.com` from `DnsName("api.openai.com")`, `127.0.0.1` from
/// `IpAddress(127.0.0.1)`; other text as it is.
fn bare_name(s: &str) -> String {
    if let (Some(a), Some(b)) = (s.find('"'), s.rfind('"')) {
        if a < b {
            return s[a + 1..b].to_string();
        }
    }
    s.split_once('(')
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .unwrap_or(s)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dial_errors_name_the_host_asked_for() {
        let refused = UpstreamError::Connect {
            target: "127.0.0.1:9".into(),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        };
        let named = refused.dialed_for("api.openai.com", 443).to_string();
        assert!(
            named.starts_with("cannot connect to api.openai.com:443 (via 127.0.0.1:9)"),
            "{named}"
        );
        let timeout = UpstreamError::ConnectTimeout {
            target: "[::1]:9".into(),
        };
        assert_eq!(
            timeout.dialed_for("::1", 443).to_string(),
            "timed out connecting to [::1]:443 (via [::1]:9)"
        );
    }

    /// An HTTP/2 client's cookie fields reach an HTTP/1.1 upstream as one
    /// line; an HTTP/1.1 request's headers are left as they came.
    #[test]
    fn cookie_fields_from_http2_are_joined_for_http1() {
        let origin = Origin::new(true, "api.example.test", 443);
        let request = |version| {
            let mut req = Request::builder()
                .version(version)
                .uri("https://api.example.test/v1/models")
                .header(header::COOKIE, "a=1")
                .header(header::COOKIE, "b=2")
                .header(header::COOKIE, "c=3")
                .body(())
                .unwrap();
            to_h1(&mut req, &origin);
            req.headers()
                .get_all(header::COOKIE)
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(request(Version::HTTP_2), ["a=1; b=2; c=3"]);
        assert_eq!(request(Version::HTTP_11), ["a=1", "b=2", "c=3"]);
    }

    #[test]
    fn a_refused_ipv6_literal_is_named_in_brackets() {
        for host in ["fd00:ec2::254", "[fd00:ec2::254]"] {
            let err = refuse_forbidden_literal(host, 80).map(|()| "allowed");
            let Err(UpstreamError::Forbidden { target, .. }) = err else {
                panic!("{host} was not refused: {err:?}");
            };
            assert_eq!(target, "[fd00:ec2::254]:80");
        }
        assert!(refuse_forbidden_literal("::1", 80).is_ok());
    }
}
