//! Idle upstream connections shared by all client connections: HTTP/2
//! connections are shared while open, HTTP/1.1 connections are handed out
//! one request at a time and come back when their response is done.

use crate::body::Body;
use hyper::client::conn::{http1, http2};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where a pooled connection goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    pub tls: bool,
    /// Lower-case host, no IPv6 brackets. Shared: every request clones
    /// its origin (to return its connection to the pool), and a count
    /// costs less than a copy.
    pub host: Arc<str>,
    pub port: u16,
}

impl Origin {
    pub fn new(tls: bool, host: &str, port: u16) -> Self {
        Origin {
            tls,
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_ascii_lowercase()
                .into(),
            port,
        }
    }

    /// `host:port` with IPv6 brackets, for URIs and Host headers.
    pub fn authority(&self) -> String {
        let default = if self.tls { 443 } else { 80 };
        super::authority_of(&self.host, self.port, default)
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}", super::HostPort(&self.host, self.port))
    }
}

/// Which HTTP version a request would rather use upstream: the one its
/// client spoke, so that no translation (and no extra framing work) is
/// needed when the upstream supports both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefer {
    H1,
    H2,
}

/// A connection ready to carry one request (h1) or many (h2).
pub enum Sender {
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

struct Idle {
    sender: http1::SendRequest<Body>,
    since: Instant,
}

impl Idle {
    /// Within the idle timeout at `now` and not closed by the upstream.
    fn alive(&self, now: Instant, timeout: Duration) -> bool {
        now.saturating_duration_since(self.since) < timeout && !self.sender.is_closed()
    }
}

/// How long an origin's ALPN choice is remembered once it has no
/// connection left.
const ALPN_MEMORY: Duration = Duration::from_secs(600);

#[derive(Default)]
struct HostConns {
    h2: Option<http2::SendRequest<Body>>,
    h1: Vec<Idle>,
    /// The origin refused an HTTP/1.1-only ALPN offer: always use h2.
    h2_only: bool,
    /// The origin chose HTTP/1.1 when offered h2: h2 clients share its
    /// HTTP/1.1 connections.
    h1_only: bool,
    /// When one of the flags above was last learned.
    learned: Option<Instant>,
}

impl HostConns {
    /// A clone of the shared h2 connection if it can take a stream.
    fn take_h2(&mut self) -> Option<http2::SendRequest<Body>> {
        let h2 = self.h2.as_ref()?;
        if h2.is_ready() {
            return Some(h2.clone());
        }
        if h2.is_closed() {
            self.h2 = None;
        }
        None
    }
}

/// The pool. Cheap to lock: every operation is a few pointer moves.
pub struct Pool {
    hosts: Mutex<HashMap<Origin, HostConns>>,
    max_idle_per_host: usize,
    idle_timeout: Duration,
}

impl Pool {
    pub fn new(max_idle_per_host: usize, idle_timeout: Duration) -> Self {
        Pool {
            hosts: Mutex::new(HashMap::new()),
            max_idle_per_host,
            idle_timeout,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Origin, HostConns>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.hosts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A live connection to `origin`, if one is idle (or shareable) in the
    /// preferred version. Each version is used for the other only when the
    /// origin is known to speak just one.
    pub fn checkout(&self, origin: &Origin, prefer: Prefer) -> Option<Sender> {
        let mut hosts = self.lock();
        let conns = hosts.get_mut(origin)?;
        let h2_ok = prefer == Prefer::H2 || conns.h2_only;
        if h2_ok {
            if let Some(h2) = conns.take_h2() {
                return Some(Sender::H2(h2));
            }
        }
        let h1_ok = prefer == Prefer::H1 || conns.h1_only;
        if !h1_ok {
            return None;
        }
        while let Some(idle) = conns.h1.pop() {
            // Not `is_ready`: a connection just made (pooled when its
            // handshake ended, the one dialed at CONNECT) is not ready until
            // its task first runs, and dropping it would mean dialing again.
            if idle.since.elapsed() < self.idle_timeout && !idle.sender.is_closed() {
                return Some(Sender::H1(idle.sender));
            }
        }
        None
    }

    /// Remembers that `origin` only speaks h2.
    pub fn mark_h2_only(&self, origin: &Origin) {
        let mut hosts = self.lock();
        let conns = hosts.entry(origin.clone()).or_default();
        conns.h2_only = true;
        conns.learned = Some(Instant::now());
    }

    /// Remembers that `origin` chose HTTP/1.1 over h2.
    pub fn mark_h1_only(&self, origin: &Origin) {
        let mut hosts = self.lock();
        let conns = hosts.entry(origin.clone()).or_default();
        conns.h1_only = true;
        conns.learned = Some(Instant::now());
    }

    /// True when `origin` is known to refuse HTTP/1.1.
    pub fn is_h2_only(&self, origin: &Origin) -> bool {
        self.lock().get(origin).is_some_and(|c| c.h2_only)
    }

    /// True when a request to `origin` would not need a new connection.
    pub fn has_live(&self, origin: &Origin) -> bool {
        let hosts = self.lock();
        let now = Instant::now();
        hosts.get(origin).is_some_and(|c| {
            c.h2.as_ref().is_some_and(|h| !h.is_closed())
                || c.h1.iter().any(|i| i.alive(now, self.idle_timeout))
        })
    }

    /// Offers an HTTP/2 connection for sharing.
    pub fn put_h2(&self, origin: &Origin, sender: http2::SendRequest<Body>) {
        let mut hosts = self.lock();
        let conns = hosts.entry(origin.clone()).or_default();
        if conns.h2.as_ref().is_none_or(|h| h.is_closed()) {
            conns.h2 = Some(sender);
        }
    }

    /// Returns an idle HTTP/1.1 connection.
    pub fn put_h1(&self, origin: &Origin, sender: http1::SendRequest<Body>) {
        // Closed, not "not ready": see `checkout`.
        if sender.is_closed() {
            return;
        }
        let mut hosts = self.lock();
        // Found first, inserted only when new: `entry` takes an owned key,
        // a copy of the origin per returned connection.
        if let Some(conns) = hosts.get_mut(origin) {
            self.keep_h1(conns, sender);
        } else {
            let mut conns = HostConns::default();
            self.keep_h1(&mut conns, sender);
            hosts.insert(origin.clone(), conns);
        }
    }

    fn keep_h1(&self, conns: &mut HostConns, sender: http1::SendRequest<Body>) {
        let now = Instant::now();
        // Expired and closed connections go when the pool is full (and at
        // each sweep): checking them on every return costs a clock read
        // per idle connection per request.
        if conns.h1.len() >= self.max_idle_per_host {
            conns.h1.retain(|i| i.alive(now, self.idle_timeout));
        }
        if conns.h1.len() < self.max_idle_per_host {
            conns.h1.push(Idle { sender, since: now });
        }
    }

    /// Drops expired and closed connections; called periodically.
    pub fn sweep(&self) {
        self.sweep_at(Instant::now());
    }

    /// [`sweep`](Self::sweep) as of `now`. What an origin's ALPN choice
    /// taught is kept for [`ALPN_MEMORY`] after its last connection: an
    /// entry per origin ever seen would grow without bound (`--intercept
    /// all` across many hosts), and learning it again costs one handshake.
    fn sweep_at(&self, now: Instant) {
        let mut hosts = self.lock();
        hosts.retain(|_, c| {
            if c.h2.as_ref().is_some_and(|h| h.is_closed()) {
                c.h2 = None;
            }
            c.h1.retain(|i| i.alive(now, self.idle_timeout));
            if c.h2.is_some() || !c.h1.is_empty() {
                // In use: its lesson counts from its last connection.
                if c.learned.is_some() {
                    c.learned = Some(now);
                }
                return true;
            }
            c.learned
                .is_some_and(|at| now.saturating_duration_since(at) < ALPN_MEMORY)
        });
    }

    /// Idle connections held (h2 counted once), for metrics and tests.
    pub fn idle_count(&self) -> usize {
        self.lock()
            .values()
            .map(|c| c.h1.len() + usize::from(c.h2.is_some()))
            .sum()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use hyper_util::rt::TokioIo;

    /// A ready HTTP/1.1 sender over a real loopback connection to a server
    /// that holds the connection open.
    async fn sender(listener: &tokio::net::TcpListener) -> http1::SendRequest<Body> {
        let addr = listener.local_addr().unwrap();
        let (client, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let (server, _) = accepted.unwrap();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(hyper::Response::new(crate::body::empty()))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(server), svc)
                .await;
        });
        let (mut sender, conn) = http1::handshake(TokioIo::new(client.unwrap()))
            .await
            .unwrap();
        tokio::spawn(conn);
        sender.ready().await.unwrap();
        sender
    }

    #[tokio::test]
    async fn returned_connections_are_reused_last_in_first_out_up_to_the_cap() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = Origin::new(true, "API.example.test", 443);
        let pool = Pool::new(2, Duration::from_secs(60));
        for _ in 0..3 {
            pool.put_h1(&origin, sender(&listener).await);
        }
        assert_eq!(pool.idle_count(), 2, "the third is over the cap");
        let same = Origin::new(true, "api.example.test", 443);
        assert!(matches!(
            pool.checkout(&same, Prefer::H1),
            Some(Sender::H1(_))
        ));
        assert!(matches!(
            pool.checkout(&same, Prefer::H1),
            Some(Sender::H1(_))
        ));
        assert!(pool.checkout(&same, Prefer::H1).is_none());
    }

    #[tokio::test]
    async fn expired_connections_make_room_when_the_host_is_full_and_are_never_handed_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = Origin::new(true, "api.example.test", 443);
        // Every connection is expired as soon as it is returned.
        let pool = Pool::new(2, Duration::ZERO);
        pool.put_h1(&origin, sender(&listener).await);
        pool.put_h1(&origin, sender(&listener).await);
        assert_eq!(pool.idle_count(), 2, "below the cap nothing is checked");
        pool.put_h1(&origin, sender(&listener).await);
        assert_eq!(pool.idle_count(), 1, "a full host drops its expired ones");
        assert!(pool.checkout(&origin, Prefer::H1).is_none());
        assert_eq!(pool.idle_count(), 0);
        pool.put_h1(&origin, sender(&listener).await);
        pool.sweep();
        assert_eq!(pool.idle_count(), 0, "the sweep drops them too");
    }

    /// What an origin's ALPN choice taught outlives its connections only
    /// for a while: one entry per origin ever seen would grow for good.
    #[test]
    fn an_origins_alpn_lesson_is_forgotten_once_unused() {
        let pool = Pool::new(2, Duration::from_secs(60));
        let h1 = Origin::new(true, "h1.example.test", 443);
        let h2 = Origin::new(true, "h2.example.test", 443);
        pool.mark_h1_only(&h1);
        pool.mark_h2_only(&h2);
        pool.sweep();
        assert!(pool.is_h2_only(&h2), "kept while recent");
        assert_eq!(pool.lock().len(), 2);
        pool.sweep_at(Instant::now() + ALPN_MEMORY + Duration::from_secs(1));
        assert!(!pool.is_h2_only(&h2));
        assert!(pool.lock().is_empty(), "entries of origins not used since");
    }
}
