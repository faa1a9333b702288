//! The listener: one port for the forward proxy (CONNECT and absolute-form
//! requests), the direct API and the admin routes. Accepts
//! connections under a connection limit and drains them on shutdown.

pub mod authority;
pub mod budget;
mod by_ip;
mod cached;
pub mod client_tls;
mod dashboard;
mod direct;
pub mod error;
pub mod feed;
mod forward;
mod inspected;
mod intercept;
mod metrics;
mod outer;
pub mod per_client;
mod sightings;
mod tunnel;
mod web_pages;

use crate::llm::hosts::HostSet;
use crate::policy::Engine;
use crate::shutdown::Shutdown;
use crate::tls::CertCache;
use crate::upstream::Upstream;
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub use error::{AuthRoute, ProxyError};

/// Which CONNECT targets are decrypted (`--intercept`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InterceptMode {
    /// The built-in LLM hosts plus `intercept.hosts` (the default).
    #[default]
    Llm,
    /// Every host.
    All,
    /// No host: every CONNECT is a blind tunnel.
    None,
}

/// The interception rules applied to each CONNECT.
#[derive(Debug, Clone)]
pub struct InterceptRules {
    mode: InterceptMode,
    hosts: HostSet,
}

impl InterceptRules {
    /// `extra` are the config's `intercept.hosts`, added to the built-in list.
    pub fn new(mode: InterceptMode, extra: &[String]) -> Self {
        let mut hosts = HostSet::builtin_llm();
        for h in extra {
            hosts.insert(h);
        }
        InterceptRules { mode, hosts }
    }

    pub fn mode(&self) -> InterceptMode {
        self.mode
    }

    pub fn should_intercept(&self, host: &str) -> bool {
        match self.mode {
            InterceptMode::All => true,
            InterceptMode::None => false,
            InterceptMode::Llm => self.hosts.matches(host),
        }
    }
}

/// Limits and timeouts on everything a client controls.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Time to receive a complete request head (also the keep-alive idle
    /// time between requests on the listener).
    pub header_read: Duration,
    /// Largest request head; bigger gets `431`.
    pub max_header_bytes: usize,
    /// Time for the client's TLS handshake after CONNECT.
    pub client_tls_handshake: Duration,
    /// A connection or tunnel with no bytes moving for this long is closed.
    pub idle: Duration,
    /// Concurrent client connections (tunnels included); more wait in the
    /// kernel's accept backlog.
    pub max_connections: usize,
    /// Concurrent connections from one client address (0: no limit); more
    /// are answered `429` and closed. `auth.trusted_proxies` are exempt.
    pub max_connections_per_client: usize,
    /// Largest request (or response) body read whole for the policies of
    /// an LLM exchange; bigger requests get `413`.
    pub max_inspected_body: usize,
    /// Time to receive such a body.
    pub body_read: Duration,
    /// All the bodies being read whole at once, in bytes; past it a body
    /// still arriving gets `503`.
    pub max_buffered_bodies: usize,
    /// Ports a CONNECT may name when [`Limits::restrict_connect_ports`]
    /// holds (443 plus `upstream.allowed_connect_ports`): on a shared
    /// gateway a CONNECT to port 22 or 25 is a way through its network,
    /// not an IDE.
    pub allowed_connect_ports: Vec<u16>,
    /// Whether CONNECT is held to [`Limits::allowed_connect_ports`].
    /// `None`: when the gateway listens beyond loopback, or the config
    /// lists ports. A gateway on a laptop's loopback tunnels any port, as
    /// the developer could connect there without it: refusing a registry
    /// or a self-hosted Sourcegraph on :8443 would break their tools.
    pub restrict_connect_ports: Option<bool>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
            client_tls_handshake: Duration::from_secs(10),
            idle: Duration::from_secs(600),
            max_connections: 16 * 1024,
            max_connections_per_client: 4096,
            max_inspected_body: 32 * 1024 * 1024,
            body_read: Duration::from_secs(120),
            max_buffered_bodies: 512 << 20,
            allowed_connect_ports: vec![443],
            restrict_connect_ports: None,
        }
    }
}

/// The running gateway's shared state.
pub struct Gateway {
    certs: CertCache,
    upstream: Arc<Upstream>,
    rules: InterceptRules,
    limits: Limits,
    ca_pem: Bytes,
    stats: Stats,
    engine: Arc<Engine>,
    events_feed: Option<feed::EventsFeed>,
    /// Access keys and whether they are required.
    auth: crate::keys::AuthGate,
    /// Open connections per client address.
    per_client: Arc<per_client::PerClient>,
    /// Hosts CONNECTed to so far (their first CONNECT is logged).
    sightings: sightings::Sightings,
    /// Providers' own model lists, for `GET /v1/models`.
    model_lists: direct::ModelLists,
    /// The memory for bodies read whole.
    bodies: budget::BodyBudget,
}

/// The listener's counters, for `/metrics` and tests.
#[derive(Debug, Default)]
pub struct Stats {
    pub connections: AtomicUsize,
    pub tunnels: AtomicUsize,
    pub intercepted: AtomicUsize,
    /// Intercepted connections whose client refused or dropped kt's TLS.
    pub client_tls: client_tls::ClientTlsStats,
}

impl Gateway {
    pub fn new(
        certs: CertCache,
        upstream: Arc<Upstream>,
        rules: InterceptRules,
        limits: Limits,
        engine: Arc<Engine>,
        events_feed: Option<feed::EventsFeed>,
        auth: crate::keys::AuthGate,
    ) -> Arc<Self> {
        let ca_pem = Bytes::copy_from_slice(certs.minter().ca().cert_pem().as_bytes());
        let per_client =
            per_client::PerClient::new(limits.max_connections_per_client, auth.trusted_proxies());
        Arc::new(Gateway {
            certs,
            upstream,
            rules,
            ca_pem,
            stats: Stats::default(),
            engine,
            events_feed,
            auth,
            per_client,
            sightings: sightings::Sightings::default(),
            model_lists: direct::ModelLists::new(),
            bodies: budget::BodyBudget::new(limits.max_buffered_bodies),
            limits,
        })
    }

    /// The memory budget of bodies read whole.
    pub fn bodies(&self) -> &budget::BodyBudget {
        &self.bodies
    }

    /// Open connections per client address.
    pub fn per_client(&self) -> &per_client::PerClient {
        &self.per_client
    }

    /// The access key check.
    pub fn auth(&self) -> &crate::keys::AuthGate {
        &self.auth
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn certs(&self) -> &CertCache {
        &self.certs
    }

    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }

    /// The audit log's live feed, when the gateway writes one.
    pub fn events_feed(&self) -> Option<&feed::EventsFeed> {
        self.events_feed.as_ref()
    }

    /// The policy engine (reload it to swap the chain).
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Serves `listener` until `shutdown` starts draining. Connection tasks
    /// are tracked by `shutdown`, so the caller's drain waits for them.
    pub fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: Shutdown,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.serve_all(vec![listener], shutdown)
    }

    /// [`serve`](Self::serve) for several listeners at once (the loopback
    /// address of each IP family), under one connection limit.
    ///
    /// A loopback listener bound elsewhere than by
    /// [`crate::loopback_tcp::bind`] is made unpaced here, before the
    /// returned future first runs, for the same reason (a no-op for one
    /// that already is).
    pub fn serve_all(
        self: Arc<Self>,
        listeners: Vec<TcpListener>,
        shutdown: Shutdown,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        for listener in &listeners {
            if let Ok(local) = listener.local_addr() {
                crate::loopback_tcp::unpace(listener, local.ip());
            }
        }
        async move {
            let permits = Arc::new(Semaphore::new(self.limits.max_connections));
            let loops = listeners.into_iter().map(|l| {
                self.clone()
                    .accept_loop(l, permits.clone(), shutdown.clone())
            });
            futures_util::future::join_all(loops).await;
        }
    }

    async fn accept_loop(
        self: Arc<Self>,
        listener: TcpListener,
        permits: Arc<Semaphore>,
        shutdown: Shutdown,
    ) {
        let bound = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "listener has no local address");
                return;
            }
        };
        let mut backoff = Duration::from_millis(5);
        loop {
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
                _ = shutdown.draining() => return,
            };
            let accepted = tokio::select! {
                r = listener.accept() => r,
                _ = shutdown.draining() => return,
            };
            let (stream, peer) = match accepted {
                Ok(x) => {
                    backoff = Duration::from_millis(5);
                    x
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            let Some(slot) = self.per_client.admit(peer.ip()) else {
                drop(permit);
                tracing::debug!(client = %peer.ip(), limit = self.per_client.limit(), "connection refused: too many from this client");
                tokio::spawn(refuse_busy_client(stream, self.per_client.limit()));
                continue;
            };
            // A listener on 0.0.0.0 is reached at a real address: the
            // connection's own is the one `ctx.local` means. A listener on
            // one address is reached there (no syscall per connection).
            let local = if bound.ip().is_unspecified() {
                stream.local_addr().unwrap_or(bound)
            } else {
                bound
            };
            let _ = stream.set_nodelay(true);
            let gw = self.clone();
            let sd = shutdown.clone();
            let admission = Arc::new(Admission {
                _permit: permit,
                _slot: slot,
            });
            shutdown.spawn(async move {
                gw.stats.connections.fetch_add(1, Ordering::Relaxed);
                outer::serve(gw.clone(), stream, peer, local, sd, admission).await;
                gw.stats.connections.fetch_sub(1, Ordering::Relaxed);
            });
        }
    }
}

/// A client over its connection limit gets a plain `429` (it has sent
/// nothing yet, so this is all HTTP it can be told) and the close.
async fn refuse_busy_client(mut stream: tokio::net::TcpStream, limit: usize) {
    use tokio::io::AsyncWriteExt;
    let body = format!(
        "{{\"error\":{{\"type\":\"rate_limit_exceeded\",\"code\":\"too_many_connections\",\"message\":\"more than {limit} open connections from this address\"}}}}"
    );
    let reply = format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nretry-after: 1\r\nx-kt-error: too_many_connections\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let write = async {
        let _ = stream.write_all(reply.as_bytes()).await;
        let _ = stream.shutdown().await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), write).await;
}

/// A client connection's places under the gateway's connection limit and
/// its address's, given back when the last task serving it ends: a CONNECT
/// tunnel or intercepted session outlives the HTTP connection it came on,
/// and counts against both limits for as long as it lasts.
pub(crate) struct Admission {
    _permit: tokio::sync::OwnedSemaphorePermit,
    _slot: per_client::Slot,
}

/// Per-connection facts handed to request handlers and spawned tasks.
#[derive(Clone)]
pub(crate) struct ConnCtx {
    pub gw: Arc<Gateway>,
    /// The address the client connected to (never `0.0.0.0`).
    pub local: SocketAddr,
    /// The TCP peer of the client connection.
    pub peer: SocketAddr,
    pub shutdown: Shutdown,
    pub activity: crate::netio::Activity,
    /// Held by every task serving this client connection.
    pub admission: Arc<Admission>,
    /// The caller, from the access key of the request (for an intercepted
    /// session, of its CONNECT).
    pub identity: crate::identity::Identity,
    /// The valid key an intercepted session's CONNECT presented: looked up
    /// again for each request of the session, so revoking a key ends its
    /// open sessions too, not only new connections.
    pub session_key: Option<Arc<str>>,
}
