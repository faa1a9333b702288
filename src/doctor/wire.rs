//! The doctor's own small HTTP/1.1 client: a request to the gateway, and a
//! CONNECT through it followed by a TLS handshake that trusts only the kt
//! CA. Hand-written so each failure names the step that failed.

use crate::upstream::connect_to::ConnectToRules;
use rustls_pki_types::{CertificateDer, ServerName};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long each step (dial, handshake, response head) may take.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// A response head longer than this is not from a gateway.
const MAX_HEAD: usize = 64 * 1024;

/// Why a probe failed, by step.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection refused by {0}")]
    Refused(String),
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("{0} timed out")]
    Timeout(&'static str),
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("not an HTTP response: {0}")]
    NotHttp(String),
    #[error("TLS handshake with {host} failed: {source}")]
    Tls {
        host: String,
        source: std::io::Error,
    },
    #[error("bad TLS name {0}")]
    BadName(String),
}

impl WireError {
    /// The TLS failure was an untrusted certificate (as opposed to a
    /// broken connection).
    pub fn is_untrusted_certificate(&self) -> bool {
        match self {
            WireError::Tls { source, .. } => source
                .get_ref()
                .and_then(|e| e.downcast_ref::<rustls::Error>())
                .is_some_and(|e| matches!(e, rustls::Error::InvalidCertificate(_))),
            _ => false,
        }
    }
}

/// A response head: status code and the raw header lines.
#[derive(Debug, Clone)]
pub struct Head {
    pub status: u16,
    pub text: String,
}

impl Head {
    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.text.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then_some(v.trim())
        })
    }
}

/// Where the doctor's connections go: `host:port`, through `--connect-to`.
#[derive(Debug, Clone, Default)]
pub struct Dialer {
    pub connect_to: Arc<ConnectToRules>,
}

impl Dialer {
    pub async fn dial(&self, host: &str, port: u16) -> Result<TcpStream, WireError> {
        let (h, p) = self.connect_to.resolve(host, port);
        let addr = format!("{}:{p}", bracket(h));
        match tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(&addr)).await {
            Err(_) => Err(WireError::Timeout("connecting")),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                Err(WireError::Refused(addr))
            }
            Ok(Err(source)) => Err(WireError::Connect { addr, source }),
            Ok(Ok(s)) => Ok(s),
        }
    }

    /// `GET path` on `host:port` with extra header lines; returns the head
    /// and up to `max_body` bytes of the body (0 for streams like SSE).
    pub async fn get(
        &self,
        host: &str,
        port: u16,
        path: &str,
        headers: &[(&str, &str)],
        max_body: usize,
    ) -> Result<(Head, Vec<u8>), WireError> {
        let mut s = self.dial(host, port).await?;
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}:{port}\r\nUser-Agent: kt-doctor\r\nConnection: close\r\n",
            bracket(host)
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await?;
        let (head, mut body) = read_head(&mut s).await?;
        if max_body > 0 {
            let mut rest = Vec::new();
            let mut limited = (&mut s).take(max_body.saturating_sub(body.len()) as u64);
            let _ = tokio::time::timeout(STEP_TIMEOUT, limited.read_to_end(&mut rest)).await;
            body.extend_from_slice(&rest);
        }
        body.truncate(max_body);
        Ok((head, body))
    }

    /// Sends `CONNECT target` to the proxy at `proxy_host:proxy_port`;
    /// on `200` the stream is the tunnel.
    pub async fn connect(
        &self,
        proxy_host: &str,
        proxy_port: u16,
        target: &str,
        proxy_auth: Option<&str>,
    ) -> Result<(Head, TcpStream), WireError> {
        let mut s = self.dial(proxy_host, proxy_port).await?;
        let mut req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some(a) = proxy_auth {
            req.push_str(&format!("Proxy-Authorization: {a}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await?;
        let (head, _) = read_head(&mut s).await?;
        Ok((head, s))
    }
}

/// A TLS handshake over `io` for `host` trusting only `roots`, then
/// `GET path`; returns the response head.
pub async fn tls_get<S>(
    io: S,
    host: &str,
    roots: &[CertificateDer<'static>],
    path: &str,
) -> Result<Head, WireError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        let _ = store.add(r.clone());
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(crate::crypto_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| WireError::Tls {
            host: host.to_string(),
            source: std::io::Error::other(e),
        })?
        .with_root_certificates(store)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name =
        ServerName::try_from(host.to_string()).map_err(|_| WireError::BadName(host.into()))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let mut tls = match tokio::time::timeout(STEP_TIMEOUT, connector.connect(name, io)).await {
        Err(_) => return Err(WireError::Timeout("the TLS handshake")),
        Ok(Err(source)) => {
            return Err(WireError::Tls {
                host: host.to_string(),
                source,
            })
        }
        Ok(Ok(t)) => t,
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: kt-doctor\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(req.as_bytes()).await?;
    let (head, _) = read_head(&mut tls).await?;
    Ok(head)
}

/// Reads up to the end of the response head; returns it and any body
/// bytes that came with it.
async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> Result<(Head, Vec<u8>), WireError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = memchr::memmem::find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err(WireError::NotHttp("response head too long".into()));
        }
        let n = match tokio::time::timeout(STEP_TIMEOUT, s.read(&mut chunk)).await {
            Err(_) => return Err(WireError::Timeout("waiting for the response")),
            Ok(r) => r?,
        };
        if n == 0 {
            return Err(WireError::NotHttp(if buf.is_empty() {
                "the connection was closed without a response".into()
            } else {
                format!("{:?}", String::from_utf8_lossy(&buf))
            }));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let text = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status = parse_status(&text).ok_or_else(|| {
        WireError::NotHttp(
            text.lines()
                .next()
                .unwrap_or_default()
                .chars()
                .take(80)
                .collect(),
        )
    })?;
    Ok((Head { status, text }, buf[end..].to_vec()))
}

fn parse_status(head: &str) -> Option<u16> {
    let line = head.lines().next()?;
    let mut parts = line.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

fn bracket(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_a_head_split_across_reads_and_keeps_the_body_start() {
        let (mut client, mut server) = tokio::io::duplex(64);
        tokio::spawn(async move {
            for part in [&b"HTTP/1.1 200 OK\r\nX-A:"[..], b" 1\r\n\r\nbody"] {
                server.write_all(part).await.unwrap();
            }
        });
        let (head, body) = read_head(&mut client).await.unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(head.header("x-a"), Some("1"));
        assert_eq!(body, b"body");
    }

    #[tokio::test]
    async fn a_non_http_answer_is_named() {
        let (mut client, mut server) = tokio::io::duplex(64);
        tokio::spawn(async move {
            server
                .write_all(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
                .await
                .unwrap();
        });
        let err = read_head(&mut client).await.unwrap_err();
        assert!(
            matches!(err, WireError::NotHttp(ref m) if m.contains("SSH-2.0")),
            "{err}"
        );
        assert_eq!(parse_status("HTTP/1.0 407 Proxy\r\n"), Some(407));
        assert_eq!(bracket("::1"), "[::1]");
    }
}
