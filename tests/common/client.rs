//! A test client that goes through the proxy: raw CONNECT, TLS trusting a
//! given root only, and HTTP/1.1 or HTTP/2 as ALPN decides.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// The proxy's reply to CONNECT.
#[derive(Debug)]
pub struct ConnectReply {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// Sends `CONNECT target` and reads the reply head (and a body, if the
/// reply is an error with Content-Length). On 200 the stream is the tunnel.
pub async fn connect(proxy: SocketAddr, target: &str) -> (TcpStream, ConnectReply) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.set_nodelay(true).unwrap();
    let req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let reply = read_head(&mut s).await;
    (s, reply)
}

/// Writes `request` (raw bytes, e.g. an absolute-form request that asks
/// for `Connection: close`) to `proxy` and reads everything it answers.
pub async fn raw_exchange(proxy: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// The JSON body of a raw HTTP/1.1 answer read whole.
pub fn raw_json_body(answer: &str) -> serde_json::Value {
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    serde_json::from_str(body).unwrap()
}

/// Reads an HTTP/1.1 response head byte by byte (so nothing after it is
/// consumed), then its Content-Length body if any.
pub async fn read_head(s: &mut TcpStream) -> ConnectReply {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).await.unwrap();
        assert!(
            n == 1,
            "connection closed mid-head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.unwrap();
    ConnectReply {
        status,
        head,
        body: String::from_utf8_lossy(&body).into(),
    }
}

/// A root store holding only `roots`.
pub fn root_store(roots: &[CertificateDer<'static>]) -> rustls::RootCertStore {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    store
}

pub fn client_config(
    roots: &[CertificateDer<'static>],
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(root_store(roots))
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// TLS over `s` for `name`, trusting only `roots`.
pub async fn tls(
    s: TcpStream,
    name: &str,
    roots: &[CertificateDer<'static>],
    alpn: &[&[u8]],
) -> Result<TlsStream<TcpStream>, std::io::Error> {
    tls_with(s, name, client_config(roots, alpn)).await
}

/// TLS over `s` for `name` with a client config of the caller's making.
pub async fn tls_with(
    s: TcpStream,
    name: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> Result<TlsStream<TcpStream>, std::io::Error> {
    tokio_rustls::TlsConnector::from(cfg)
        .connect(ServerName::try_from(name.to_string()).unwrap(), s)
        .await
}

/// CONNECTs to `target` through `proxy` and attempts TLS for `name`
/// trusting only `roots`, expecting the handshake to fail (kt's certificate
/// is not among them); returns the client's error once kt has closed its
/// side of the connection.
pub async fn refused_tls(
    proxy: SocketAddr,
    target: &str,
    name: &str,
    roots: &[CertificateDer<'static>],
) -> std::io::Error {
    let (tcp, reply) = connect(proxy, target).await;
    assert_eq!(reply.status, 200, "{}", reply.head);
    let failed = tokio_rustls::TlsConnector::from(client_config(roots, &[]))
        .connect(ServerName::try_from(name.to_string()).unwrap(), tcp)
        .into_fallible()
        .await;
    let Err((e, mut tcp)) = failed else {
        panic!("a client without the kt CA completed the handshake")
    };
    // EOF or a reset: either way kt is done with it.
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tcp.read_to_end(&mut Vec::new()),
    )
    .await
    .expect("kt kept the refused connection open");
    e
}

/// An HTTP connection (either version).
pub enum Http {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Http {
    pub async fn over<IO>(io: IO, h2: bool) -> Http
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        if h2 {
            let (s, c) = http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                .await
                .unwrap();
            tokio::spawn(c);
            Http::H2(s)
        } else {
            let (s, c) = http1::handshake(TokioIo::new(io)).await.unwrap();
            tokio::spawn(c.with_upgrades());
            Http::H1(s)
        }
    }

    pub fn is_h2(&self) -> bool {
        matches!(self, Http::H2(_))
    }

    /// Sends a request built by the caller (origin-form URI for HTTP/1.1,
    /// absolute for h2).
    pub async fn request(&mut self, req: Request<Full<Bytes>>) -> Response<Incoming> {
        match self {
            Http::H1(s) => {
                s.ready().await.unwrap();
                s.send_request(req).await.unwrap()
            }
            Http::H2(s) => {
                s.ready().await.unwrap();
                s.send_request(req).await.unwrap()
            }
        }
    }

    /// Sends a request; `uri` is a path, `host` becomes Host / :authority.
    pub async fn send(
        &mut self,
        method: &str,
        host: &str,
        path: &str,
        body: Bytes,
    ) -> Response<Incoming> {
        let req = |abs: bool| {
            let uri = if abs {
                format!("https://{host}{path}")
            } else {
                path.to_string()
            };
            let mut b = Request::builder().method(method).uri(uri);
            if !abs {
                b = b.header("host", host);
            }
            b.header("content-type", "application/json")
                .body(Full::new(body.clone()))
                .unwrap()
        };
        match self {
            Http::H1(s) => {
                s.ready().await.unwrap();
                s.send_request(req(false)).await.unwrap()
            }
            Http::H2(s) => {
                s.ready().await.unwrap();
                s.send_request(req(true)).await.unwrap()
            }
        }
    }
}

/// CONNECT + TLS (trusting `roots`) + HTTP: the path every IDE request takes.
pub async fn through_proxy(
    proxy: SocketAddr,
    host: &str,
    roots: &[CertificateDer<'static>],
    alpn: &[&[u8]],
) -> (Http, TlsStreamInfo) {
    let (s, reply) = connect(proxy, &format!("{host}:443")).await;
    assert_eq!(reply.status, 200, "CONNECT failed: {reply:?}");
    let tls = tls(s, host, roots, alpn).await.unwrap();
    let info = TlsStreamInfo {
        alpn: tls.get_ref().1.alpn_protocol().map(|p| p.to_vec()),
        peer_chain: tls
            .get_ref()
            .1
            .peer_certificates()
            .unwrap_or_default()
            .to_vec(),
    };
    let h2 = info.alpn.as_deref() == Some(b"h2");
    (Http::over(tls, h2).await, info)
}

/// One intercepted h2 `POST /echo` to `api.openai.com` through `proxy`,
/// trusting `ca`: the smallest proof that interception works end to end.
pub async fn echo_through(proxy: SocketAddr, ca: CertificateDer<'static>) {
    let (mut http, _) = through_proxy(proxy, "api.openai.com", &[ca], &[b"h2"]).await;
    let json = body_json(
        http.send("POST", "api.openai.com", "/echo", Bytes::from_static(b"{}"))
            .await,
    )
    .await;
    assert_eq!(json["len"], 2);
}

/// What the client saw of the TLS session.
pub struct TlsStreamInfo {
    pub alpn: Option<Vec<u8>>,
    pub peer_chain: Vec<CertificateDer<'static>>,
}

pub async fn body_string(resp: Response<Incoming>) -> String {
    let b = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&b).into()
}

pub async fn body_json(resp: Response<Incoming>) -> serde_json::Value {
    serde_json::from_str(&body_string(resp).await).unwrap()
}

/// Opens a WebSocket to `path` on `host` through the proxy at `proxy`
/// (CONNECT, then TLS trusting `roots`, no ALPN as browsers send it): the
/// answer's head, and the stream to carry frames on after a `101`.
pub async fn websocket(
    proxy: SocketAddr,
    host: &str,
    path: &str,
    roots: &[CertificateDer<'static>],
) -> (String, tokio_rustls::client::TlsStream<TcpStream>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (s, reply) = connect(proxy, &format!("{host}:443")).await;
    assert_eq!(reply.status, 200);
    let mut tls = tls(s, host, roots, &[]).await.unwrap();
    tls.write_all(
        format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tls.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    (String::from_utf8(head).unwrap(), tls)
}
