//! The bench's HTTPS origin: a throw-away test PKI and an in-process server
//! that plays `api.openai.com` on a loopback port.
//!
//! The test CA is generated per run with `rcgen` and written as PEM (kt gets
//! it as `--upstream-ca`, the direct client trusts it). The origin's leaf
//! certificate covers `api.openai.com` and `*.bench.test`, so every synthetic
//! host name the bench sends through kt (blind tunnels, fresh names for the
//! minting test) verifies upstream as well.
//!
//! Routes (HTTP/1.1 and h2 via ALPN):
//! - `POST /v1/chat/completions`: a ~1 KB `chat.completion` JSON document, or,
//!   when the request body asks for `"stream":true`, an SSE stream of
//!   `events` `data:` chunks `gap` apart followed by `data: [DONE]`, each chunk
//!   its own body frame (so hyper flushes it on its own);
//! - `GET /v1/large`: `large_bytes` of payload;
//! - `GET /healthz`: `ok`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;

/// The host name the origin poses as.
pub const ORIGIN_HOST: &str = "api.openai.com";
/// Wildcard suffix also covered by the origin certificate.
pub const BENCH_DOMAIN: &str = "bench.test";
/// Size the canned chat reply is padded to (bytes, newline included).
const CHAT_REPLY_BYTES: usize = 1083;

/// What the origin serves; the client checks reply sizes against it.
#[derive(Debug, Clone)]
pub struct OriginConfig {
    pub sse_events: usize,
    pub sse_gap: Duration,
    pub large_bytes: usize,
}

/// Exact body sizes of each route, used to validate every reply.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub chat: u64,
    pub sse: u64,
    pub large: u64,
}

/// A running origin.
pub struct Origin {
    pub addr: SocketAddr,
    /// PEM of the test CA that signed the origin certificate.
    pub ca_pem: PathBuf,
    pub sizes: Sizes,
}

struct Content {
    chat: Bytes,
    sse: Arc<[Bytes]>,
    gap: Duration,
    large: Bytes,
}

type ReplyBody = BoxBody<Bytes, Infallible>;

/// Generates the test PKI under `dir` and starts serving on a free loopback
/// port, with the accept loop spawned on `rt`.
pub fn start(rt: &Runtime, dir: &Path, cfg: &OriginConfig) -> Result<Origin> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let (ca_pem, chain, key) = test_pki(dir)?;
    let mut tls = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("origin TLS config")?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(tls));

    let content = Arc::new(Content {
        chat: chat_reply(),
        sse: sse_events(cfg.sse_events).into(),
        gap: cfg.sse_gap,
        large: Bytes::from(
            (0..cfg.large_bytes)
                .map(|i| b"0123456789abcdef"[i % 16])
                .collect::<Vec<u8>>(),
        ),
    });
    let sizes = Sizes {
        chat: content.chat.len() as u64,
        sse: content.sse.iter().map(|b| b.len() as u64).sum(),
        large: content.large.len() as u64,
    };

    let std_listener = std::net::TcpListener::bind(("127.0.0.1", 0)).context("origin bind")?;
    let addr = std_listener.local_addr()?;
    if !addr.ip().is_loopback() {
        bail!("origin must listen on loopback, got {addr}");
    }
    std_listener.set_nonblocking(true)?;
    let listener = {
        let _guard = rt.enter();
        TcpListener::from_std(std_listener)?
    };
    rt.spawn(accept_loop(listener, acceptor, content));
    Ok(Origin {
        addr,
        ca_pem,
        sizes,
    })
}

/// Test CA + leaf for the origin; returns (CA PEM path, leaf chain, leaf key).
fn test_pki(
    dir: &Path,
) -> Result<(
    PathBuf,
    Vec<CertificateDer<'static>>,
    PrivateKeyDer<'static>,
)> {
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut ca_params = CertificateParams::default();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "kt load bench upstream test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut leaf_params =
        CertificateParams::new(vec![ORIGIN_HOST.to_string(), format!("*.{BENCH_DOMAIN}")])?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, ORIGIN_HOST);
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_cert = leaf_params.signed_by(&leaf_key, &issuer)?;

    let ca_pem = dir.join("upstream-ca.pem");
    std::fs::write(&ca_pem, ca_cert.pem())
        .with_context(|| format!("writing {}", ca_pem.display()))?;
    let chain = vec![leaf_cert.der().clone(), ca_cert.der().clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    Ok((ca_pem, chain, key))
}

async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, content: Arc<Content>) {
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Typically EMFILE under the idle-connection test: back off, keep serving.
                eprintln!("origin: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let content = content.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(move |req| route(req, content.clone()));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

async fn route(
    req: Request<Incoming>,
    content: Arc<Content>,
) -> Result<Response<ReplyBody>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    // Read the whole request body first (the chat route looks at it).
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let reply = match (method, path.as_str()) {
        (Method::POST, "/v1/chat/completions") if wants_stream(&body) => {
            let mut r = Response::new(
                SseBody {
                    events: content.sse.clone(),
                    next: 0,
                    gap: content.gap,
                    timer: None,
                }
                .boxed(),
            );
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
            r.headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            r
        }
        (Method::POST, "/v1/chat/completions") => reply(content.chat.clone(), "application/json"),
        (Method::GET, "/v1/large") => reply(content.large.clone(), "application/octet-stream"),
        (Method::GET, "/healthz") => reply(Bytes::from_static(b"ok\n"), "text/plain"),
        _ => {
            let mut r = reply(Bytes::from_static(b"no such route\n"), "text/plain");
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    };
    Ok(reply)
}

fn reply(body: Bytes, content_type: &'static str) -> Response<ReplyBody> {
    let mut r = Response::new(Full::new(body).boxed());
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// True when a JSON request body has `"stream": true` at its top level.
fn wants_stream(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("stream").and_then(serde_json::Value::as_bool))
        .unwrap_or(false)
}

/// A `chat.completion` document padded to `CHAT_REPLY_BYTES`.
fn chat_reply() -> Bytes {
    let doc = |answer: &str| {
        serde_json::json!({
            "id": "chatcmpl-loadbench",
            "object": "chat.completion",
            "created": 1_700_000_000u64,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": answer, "refusal": null},
                "logprobs": null,
                "finish_reason": "stop"
            }],
            "usage": {"prompt_tokens": 31, "completion_tokens": 118, "total_tokens": 149},
            "system_fingerprint": "fp_loadbench"
        })
        .to_string()
            + "\n"
    };
    let bare = doc("").len();
    let filler = "The load bench origin answers every question the same way. ";
    let answer: String = filler
        .chars()
        .cycle()
        .take(CHAT_REPLY_BYTES.saturating_sub(bare))
        .collect();
    Bytes::from(doc(&answer))
}

/// `n` streaming chunks followed by the `[DONE]` marker.
fn sse_events(n: usize) -> Vec<Bytes> {
    let mut events: Vec<Bytes> = (0..n)
        .map(|i| {
            let chunk = serde_json::json!({
                "id": "chatcmpl-loadbench",
                "object": "chat.completion.chunk",
                "created": 1_700_000_000u64,
                "model": "gpt-4o-mini",
                "choices": [{"index": 0, "delta": {"content": format!("piece-{i:03} ")}, "finish_reason": null}]
            });
            Bytes::from(format!("data: {chunk}\n\n"))
        })
        .collect();
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    events
}

/// Response body yielding one SSE event per frame, `gap` apart.
struct SseBody {
    events: Arc<[Bytes]>,
    next: usize,
    gap: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

impl hyper::body::Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        let Some(event) = this.events.get(this.next).cloned() else {
            return Poll::Ready(None);
        };
        if this.next > 0 && !this.gap.is_zero() {
            let gap = this.gap;
            let timer = this
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(gap)));
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.timer = None;
        }
        this.next += 1;
        Poll::Ready(Some(Ok(Frame::data(event))))
    }

    fn is_end_stream(&self) -> bool {
        self.next >= self.events.len()
    }
}
