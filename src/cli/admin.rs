//! Asking a running gateway's own routes (`/_kt/events`, `/_kt/cache`) for
//! `--gateway URL`: `http://` to its listener, or `https://` to a gateway
//! behind a TLS load balancer or ingress, verified against the OS roots
//! (`SSL_CERT_FILE` names another bundle).

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::time::Duration;

/// What `--gateway` takes, as the errors say.
const SHAPE: &str =
    "--gateway takes the gateway's http:// or https:// URL, e.g. http://127.0.0.1:41002";

/// A gateway's address, checked.
#[derive(Debug, Clone)]
pub struct GatewayUrl {
    /// As the user wrote it, for messages.
    pub shown: String,
    host: String,
    port: u16,
    authority: String,
    tls: bool,
}

impl GatewayUrl {
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let uri: http::Uri = url
            .parse()
            .with_context(|| format!("--gateway {url:?} is not a URL; {SHAPE}"))?;
        let tls = match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
            Some("http") => false,
            Some("https") => true,
            _ => bail!("{SHAPE}"),
        };
        let authority = uri.authority().context("--gateway URL has no host")?;
        let host = authority.host().to_string();
        Ok(GatewayUrl {
            shown: url.to_string(),
            port: authority.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            authority: authority.as_str().to_string(),
            host,
            tls,
        })
    }

    /// Sends a bodiless request for `path` with `key` as the Bearer token
    /// and returns the answer, its body still to read. The connection and
    /// the TLS handshake must each finish within `connect`.
    pub async fn ask(
        &self,
        method: http::Method,
        path: &str,
        key: Option<&str>,
        accept: Option<&str>,
        connect: Duration,
    ) -> anyhow::Result<http::Response<Incoming>> {
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, &self.authority);
        if let Some(accept) = accept {
            req = req.header(http::header::ACCEPT, accept);
        }
        if let Some(key) = key {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {key}"));
        }
        let req = req.body(Empty::<Bytes>::new())?;
        let dial = tokio::net::TcpStream::connect((self.host.trim_matches(['[', ']']), self.port));
        let tcp = tokio::time::timeout(connect, dial)
            .await
            .map_err(|_| anyhow::anyhow!("timed out"))
            .and_then(|r| r.map_err(anyhow::Error::from))
            .with_context(|| format!("cannot connect to the gateway at {}", self.shown))?;
        if !self.tls {
            return exchange(TokioIo::new(tcp), req).await;
        }
        let trust = crate::upstream::UpstreamTls::new(&[], true)
            .context("cannot load the OS root certificates")?;
        let name = rustls::pki_types::ServerName::try_from(self.host.trim_matches(['[', ']']))
            .with_context(|| format!("{:?} is not a host name TLS can check", self.host))?
            .to_owned();
        let handshake = tokio_rustls::TlsConnector::from(trust.h1_only).connect(name, tcp);
        let stream = tokio::time::timeout(connect, handshake)
            .await
            .map_err(|_| anyhow::anyhow!("timed out"))
            .and_then(|r| r.map_err(anyhow::Error::from))
            .with_context(|| format!("TLS handshake with the gateway at {} failed", self.shown))?;
        exchange(TokioIo::new(stream), req).await
    }
}

async fn exchange<I>(
    io: I,
    req: http::Request<Empty<Bytes>>,
) -> anyhow::Result<http::Response<Incoming>>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .context("HTTP handshake with the gateway failed")?;
    tokio::spawn(conn);
    sender
        .send_request(req)
        .await
        .context("the gateway did not answer")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn urls_take_either_scheme_and_their_default_ports() {
        let plain = GatewayUrl::parse("http://127.0.0.1:41002").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((plain.port, plain.tls), (41002, false));
        let tls =
            GatewayUrl::parse("HTTPS://gateway.example.com").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (tls.port, tls.tls, tls.host.as_str()),
            (443, true, "gateway.example.com")
        );
        assert_eq!(
            GatewayUrl::parse("http://[::1]/").map(|u| u.port).ok(),
            Some(80)
        );
        for bad in ["ftp://x", "127.0.0.1:41002", "not a url"] {
            let err = GatewayUrl::parse(bad).map(|_| ()).unwrap_err().to_string();
            assert!(err.contains("http:// or https://"), "{bad}: {err}");
        }
    }
}
