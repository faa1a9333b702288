//! The load client: opens HTTP/1.1-over-TLS connections to the origin, either
//! directly or through a `CONNECT` tunnel to kt, and drives closed-loop load
//! with a fixed number of workers for a bounded time and request count.
//!
//! The TLS client offers only X25519 and P-256 key exchange, ALPN
//! `http/1.1`, and no session resumption, so every new connection costs a
//! full handshake. Every reply is checked for status 200 and its exact body
//! length; anything else counts as an error of a named kind.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::client::Resumption;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Keep-alive HTTP/1.1 request handle.
pub type Sender = SendRequest<Full<Bytes>>;

/// Longest CONNECT reply head we accept.
const MAX_CONNECT_REPLY: usize = 8 * 1024;
/// At most this many latency samples are kept per scenario (counts go on).
const MAX_SAMPLES: usize = 4_000_000;

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FailKind {
    Connect,
    ProxyConnect,
    Tls,
    Http,
    Status,
    BodyLen,
    Timeout,
}

impl FailKind {
    pub fn name(self) -> &'static str {
        match self {
            FailKind::Connect => "connect",
            FailKind::ProxyConnect => "proxy_connect",
            FailKind::Tls => "tls",
            FailKind::Http => "http",
            FailKind::Status => "status",
            FailKind::BodyLen => "body_len",
            FailKind::Timeout => "timeout",
        }
    }
}

/// A failed step, with its kind and a message.
#[derive(Debug, Clone)]
pub struct Fail {
    pub kind: FailKind,
    pub msg: String,
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.name(), self.msg)
    }
}

fn fail(kind: FailKind, e: impl fmt::Display) -> Fail {
    Fail {
        kind,
        msg: e.to_string(),
    }
}

/// Refuses any address that is not on loopback.
pub fn ensure_loopback(addr: SocketAddr) -> Result<SocketAddr> {
    if !addr.ip().is_loopback() {
        bail!("refusing to use non-loopback address {addr}");
    }
    Ok(addr)
}

/// A TLS connector trusting only the CA certificates in `ca_pem`.
pub fn tls_connector(ca_pem: &Path) -> Result<TlsConnector> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_pem)
        .with_context(|| format!("reading {}", ca_pem.display()))?
    {
        roots.add(cert.with_context(|| format!("parsing {}", ca_pem.display()))?)?;
    }
    if roots.is_empty() {
        bail!("no certificate in {}", ca_pem.display());
    }
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups = vec![
        rustls::crypto::aws_lc_rs::kx_group::X25519,
        rustls::crypto::aws_lc_rs::kx_group::SECP256R1,
    ];
    let mut cfg = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg.resumption = Resumption::disabled();
    Ok(TlsConnector::from(Arc::new(cfg)))
}

/// How to reach a TLS server: dial `dial`, optionally `CONNECT` through it.
#[derive(Clone)]
pub struct Route {
    pub dial: SocketAddr,
    /// `dial` is a proxy: send `CONNECT host:443` before TLS.
    pub via_proxy: bool,
    pub tls: TlsConnector,
}

impl Route {
    pub fn new(dial: SocketAddr, via_proxy: bool, tls: TlsConnector) -> Result<Self> {
        Ok(Route {
            dial: ensure_loopback(dial)?,
            via_proxy,
            tls,
        })
    }

    /// TCP connection, tunnelled to `host:443` when going through the proxy.
    pub async fn tcp(&self, host: &str) -> Result<TcpStream, Fail> {
        let mut tcp = TcpStream::connect(self.dial)
            .await
            .map_err(|e| fail(FailKind::Connect, e))?;
        let _ = tcp.set_nodelay(true);
        if self.via_proxy {
            connect_tunnel(&mut tcp, host).await?;
        }
        Ok(tcp)
    }

    /// TCP (+ CONNECT) + full TLS handshake with SNI `host`.
    pub async fn tls(&self, host: &str) -> Result<TlsStream<TcpStream>, Fail> {
        let tcp = self.tcp(host).await?;
        let name = ServerName::try_from(host.to_owned()).map_err(|e| fail(FailKind::Tls, e))?;
        self.tls
            .connect(name, tcp)
            .await
            .map_err(|e| fail(FailKind::Tls, e))
    }

    /// A ready HTTP/1.1 connection to `host`.
    pub async fn http(&self, host: &str) -> Result<Sender, Fail> {
        let tls = self.tls(host).await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| fail(FailKind::Http, e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }
}

/// Sends `CONNECT host:443` and reads the proxy's reply head; 2xx or fail.
async fn connect_tunnel(tcp: &mut TcpStream, host: &str) -> Result<(), Fail> {
    let pc = |e: &dyn fmt::Display| fail(FailKind::ProxyConnect, e);
    let head = format!("CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n");
    tcp.write_all(head.as_bytes()).await.map_err(|e| pc(&e))?;
    let mut buf = Vec::with_capacity(128);
    let mut chunk = [0u8; 1024];
    let end = loop {
        let n = tcp.read(&mut chunk).await.map_err(|e| pc(&e))?;
        if n == 0 {
            return Err(pc(&"proxy closed the connection before answering CONNECT"));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        if buf.len() > MAX_CONNECT_REPLY {
            return Err(pc(&"CONNECT reply head too long"));
        }
    };
    if end != buf.len() {
        // The server must not speak before the client's ClientHello.
        return Err(pc(&"proxy sent bytes after the CONNECT reply head"));
    }
    let status_line =
        String::from_utf8_lossy(buf.split(|&b| b == b'\r').next().unwrap_or_default());
    let code = status_line.split_whitespace().nth(1).unwrap_or_default();
    if !code.starts_with('2') || code.len() != 3 {
        return Err(pc(&format!("CONNECT refused: {status_line}")));
    }
    Ok(())
}

/// One request shape and the exact reply size it must produce.
#[derive(Clone)]
pub struct Job {
    pub method: Method,
    pub path: &'static str,
    pub body: Bytes,
    pub expect_len: u64,
}

/// Request body of the chat scenarios (`stream` selects SSE).
pub fn chat_request_body(stream: bool) -> Bytes {
    let mut doc = serde_json::json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "Write one paragraph about measuring proxy overhead."}
        ],
        "temperature": 0.2,
        "max_tokens": 256
    });
    if stream {
        doc["stream"] = serde_json::Value::Bool(true);
    }
    Bytes::from(doc.to_string())
}

/// Timing of one successful exchange.
pub struct Exchange {
    pub bytes: u64,
    /// First non-empty body chunk (or the response head, for empty bodies).
    pub first_byte: Instant,
}

/// Sends `job` on `sender` and reads the whole reply, checking status and size.
pub async fn exchange(sender: &mut Sender, host: &str, job: &Job) -> Result<Exchange, Fail> {
    let http = |e: &dyn fmt::Display| fail(FailKind::Http, e);
    let mut req = Request::builder().method(job.method.clone()).uri(job.path);
    if let Some(h) = req.headers_mut() {
        h.insert(HOST, HeaderValue::from_str(host).map_err(|e| http(&e))?);
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_static("Bearer sk-loadbench-not-a-real-key"),
        );
        if !job.body.is_empty() {
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
    }
    let req = req
        .body(Full::new(job.body.clone()))
        .map_err(|e| http(&e))?;
    sender.ready().await.map_err(|e| http(&e))?;
    let resp = sender.send_request(req).await.map_err(|e| http(&e))?;
    let head_at = Instant::now();
    let status = resp.status();
    let mut body = resp.into_body();
    let mut first = None;
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| http(&e))?;
        if let Some(data) = frame.data_ref() {
            if first.is_none() && !data.is_empty() {
                first = Some(Instant::now());
            }
            bytes += data.len() as u64;
        }
    }
    if status != http::StatusCode::OK {
        return Err(Fail {
            kind: FailKind::Status,
            msg: format!("status {status}"),
        });
    }
    if bytes != job.expect_len {
        return Err(Fail {
            kind: FailKind::BodyLen,
            msg: format!("{bytes} body bytes, expected {}", job.expect_len),
        });
    }
    Ok(Exchange {
        bytes,
        first_byte: first.unwrap_or(head_at),
    })
}

/// A closed-loop load run.
#[derive(Clone)]
pub struct LoadSpec {
    pub workers: usize,
    /// Open a new connection (TCP [+ CONNECT] + TLS) for every request.
    pub new_conn: bool,
    pub warmup: Duration,
    pub duration: Duration,
    /// Hard cap on requests started, warm-up included.
    pub max_requests: u64,
    pub timeout: Duration,
}

/// Samples (nanoseconds) and counters of a run.
#[derive(Default)]
pub struct Tally {
    pub ok: u64,
    /// Successful requests, warm-up included (for CPU per request).
    pub ok_all: u64,
    pub bytes: u64,
    pub errors: BTreeMap<&'static str, u64>,
    pub first_error: Option<String>,
    pub latency: Vec<u64>,
    pub ttfb: Vec<u64>,
    pub connect: Vec<u64>,
    /// Measured window, seconds.
    pub window_s: f64,
}

impl Tally {
    pub fn error(&mut self, f: &Fail) {
        *self.errors.entry(f.kind.name()).or_default() += 1;
        if self.first_error.is_none() {
            self.first_error = Some(f.to_string());
        }
    }

    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }

    fn absorb(&mut self, other: Tally) {
        self.ok += other.ok;
        self.ok_all += other.ok_all;
        self.bytes += other.bytes;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        for (dst, src) in [
            (&mut self.latency, other.latency),
            (&mut self.ttfb, other.ttfb),
            (&mut self.connect, other.connect),
        ] {
            let room = MAX_SAMPLES.saturating_sub(dst.len());
            dst.extend(src.into_iter().take(room));
        }
    }
}

pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn push_sample(v: &mut Vec<u64>, d: Duration) {
    if v.len() < MAX_SAMPLES {
        v.push(nanos(d));
    }
}

struct Clock {
    measure_from: Instant,
    stop_at: Instant,
    started: AtomicU64,
    max_requests: u64,
}

/// Runs `spec` with `job` over `route` to `host` and returns the merged tally.
pub async fn run_load(route: &Route, host: &str, job: &Job, spec: &LoadSpec) -> Tally {
    let start = Instant::now();
    let measure_from = start + spec.warmup;
    let clock = Arc::new(Clock {
        measure_from,
        stop_at: measure_from + spec.duration,
        started: AtomicU64::new(0),
        max_requests: spec.max_requests,
    });
    let shared = Arc::new((route.clone(), host.to_owned(), job.clone(), spec.clone()));
    let handles: Vec<_> = (0..spec.workers.max(1))
        .map(|_| {
            let shared = shared.clone();
            let clock = clock.clone();
            tokio::spawn(async move {
                let (route, host, job, spec) = &*shared;
                worker(route, host, job, spec, &clock).await
            })
        })
        .collect();
    let mut total = Tally::default();
    let mut last_end = measure_from;
    // Hard stop: the workers check the clock before each request and each
    // request has its own timeout, so this only guards against a hang.
    let hard_stop =
        tokio::time::sleep_until((clock.stop_at + spec.timeout + Duration::from_secs(5)).into());
    tokio::pin!(hard_stop);
    for h in handles {
        let abort = h.abort_handle();
        tokio::select! {
            joined = h => {
                if let Ok((t, end)) = joined {
                    total.absorb(t);
                    last_end = last_end.max(end);
                }
            }
            () = &mut hard_stop => {
                abort.abort();
                total.error(&Fail { kind: FailKind::Timeout, msg: "worker hit the hard stop".into() });
            }
        }
    }
    total.window_s = last_end
        .saturating_duration_since(measure_from)
        .as_secs_f64()
        .max(1e-6);
    total
}

async fn worker(
    route: &Route,
    host: &str,
    job: &Job,
    spec: &LoadSpec,
    clock: &Clock,
) -> (Tally, Instant) {
    let mut t = Tally::default();
    let mut conn: Option<Sender> = None;
    loop {
        let t0 = Instant::now();
        if t0 >= clock.stop_at
            || clock.started.fetch_add(1, Ordering::Relaxed) >= clock.max_requests
        {
            break;
        }
        let measuring = t0 >= clock.measure_from;
        let attempt = tokio::time::timeout(spec.timeout, async {
            let mut connect_took = None;
            let sender = match conn.as_mut() {
                Some(s) => s,
                None => {
                    let s = route.http(host).await?;
                    connect_took = Some(t0.elapsed());
                    conn.insert(s)
                }
            };
            // Latency of a new-connection request includes the connection setup.
            let from = if spec.new_conn { t0 } else { Instant::now() };
            let ex = exchange(sender, host, job).await?;
            Ok::<_, Fail>((ex, connect_took, from))
        })
        .await;
        let done = Instant::now();
        let outcome = attempt.unwrap_or_else(|_| {
            Err(Fail {
                kind: FailKind::Timeout,
                msg: format!("no complete reply within {:?}", spec.timeout),
            })
        });
        match outcome {
            Ok((ex, connect_took, from)) => {
                t.ok_all += 1;
                if measuring {
                    t.ok += 1;
                    t.bytes += ex.bytes;
                    push_sample(&mut t.latency, done - from);
                    push_sample(&mut t.ttfb, ex.first_byte - from);
                    if let Some(c) = connect_took {
                        push_sample(&mut t.connect, c);
                    }
                }
            }
            Err(f) => {
                if measuring {
                    t.error(&f);
                }
                conn = None;
                // A failing target must not turn into a hot loop.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        if spec.new_conn {
            conn = None;
        }
    }
    (t, Instant::now())
}

/// Percentile `q` (0..=1) of sorted nanosecond samples, in milliseconds.
pub fn percentile_ms(sorted: &[u64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted.get(rank - 1).map(|&ns| ns as f64 / 1e6)
}
