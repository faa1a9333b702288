//! A CONNECT to an IP address: the address says nothing of the service
//! behind it, so the client's first bytes decide. A TLS ClientHello whose
//! SNI names an intercepted host is intercepted as a CONNECT to that name
//! would be (a client that resolved the name itself is still governed);
//! anything else is tunnelled untouched, and a server that speaks first is
//! never kept waiting.

use super::authority::Target;
use super::intercept::{self, TLS_HANDSHAKE};
use super::{tunnel, ConnCtx};
use crate::netio::Prefixed;
use crate::upstream::pool::Origin;
use crate::upstream::Dialed;
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

/// A TLS record header, then at most 2^14 bytes of payload.
const MAX_RECORD: usize = 5 + (1 << 14);

/// Serves the tunnel the client asked for to `target` (an IP address),
/// already dialed as `upstream`.
pub(super) async fn serve<IO>(ctx: ConnCtx, mut client: IO, target: Target, upstream: Dialed)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let gw = ctx.gw.clone();
    let mut first = BytesMut::with_capacity(2048);
    // Bytes the upstream already sent (through an upstream proxy) or that
    // arrive before the client says anything: not a TLS client; tunnel.
    if upstream.prefix().is_empty() {
        tokio::select! {
            _ = read_record(&mut client, &mut first) => {}
            _ = upstream.get_ref().readable() => {}
            _ = tokio::time::sleep(gw.limits.client_tls_handshake) => {}
        }
    }
    let name = sni_of(&first).filter(|name| {
        name.parse::<std::net::IpAddr>().is_err() && gw.rules.should_intercept(name)
    });
    let client = Prefixed::new(first.freeze(), client);
    match name {
        Some(name) => {
            tracing::debug!(connect = %target, sni = %name, "CONNECT to an address whose ClientHello names an intercepted host: intercepted");
            let origin = Origin::new(true, &name, target.port);
            let named = Target {
                host: name,
                port: target.port,
            };
            intercept::serve(ctx, client, named, origin, Some(upstream)).await;
        }
        None => {
            gw.engine()
                .record_tunnel(&target.to_string(), ctx.identity.client.as_ref());
            tunnel::blind(&ctx, client, upstream).await;
        }
    }
}

/// Reads into `buf` until it holds one whole TLS record, or what it holds
/// cannot start one, or the client stops (EOF, error). Cancel-safe: what
/// was read stays in `buf`.
async fn read_record<IO: AsyncRead + Unpin>(io: &mut IO, buf: &mut BytesMut) {
    loop {
        if buf.first().is_some_and(|&b| b != TLS_HANDSHAKE) {
            return;
        }
        if let Some(len) = buf
            .get(3..5)
            .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
        {
            if buf.len() >= 5 + len || 5 + len > MAX_RECORD {
                return;
            }
        }
        match io.read_buf(buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// The server name of the ClientHello in `bytes`, read by rustls; `None`
/// when the bytes are not a whole ClientHello or it names no server.
fn sni_of(bytes: &[u8]) -> Option<String> {
    if bytes.first() != Some(&TLS_HANDSHAKE) {
        return None;
    }
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rest = bytes;
    while !rest.is_empty() {
        if acceptor.read_tls(&mut rest).ok()? == 0 {
            break;
        }
    }
    let accepted = acceptor.accept().ok()??;
    accepted.client_hello().server_name().map(str::to_owned)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A real ClientHello from rustls's client, for `name`.
    fn client_hello(name: &str) -> Vec<u8> {
        crate::install_crypto_provider();
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let mut conn = rustls::ClientConnection::new(
            std::sync::Arc::new(config),
            rustls_pki_types::ServerName::try_from(name.to_string()).unwrap(),
        )
        .unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn the_server_name_of_a_whole_client_hello_is_read() {
        let hello = client_hello("api.openai.com");
        assert_eq!(sni_of(&hello).as_deref(), Some("api.openai.com"));
        // Cut short, not TLS, or no name: nothing.
        assert_eq!(sni_of(&hello[..hello.len() - 1]), None);
        assert_eq!(sni_of(b"SSH-2.0-OpenSSH_9.6\r\n"), None);
        assert_eq!(sni_of(&client_hello("127.0.0.1")), None);
        assert_eq!(sni_of(b""), None);
    }

    #[tokio::test]
    async fn reading_stops_at_the_end_of_the_record_or_at_other_bytes() {
        let hello = client_hello("api.openai.com");
        let mut sent = hello.clone();
        sent.extend_from_slice(b"after the record");
        let mut buf = BytesMut::new();
        // A reader that hands over a few bytes at a time.
        let mut io = trickle(&sent, 7);
        read_record(&mut io, &mut buf).await;
        assert!(buf.len() >= hello.len() && buf.starts_with(&hello));
        assert!(buf.len() < hello.len() + 7, "read past the record");

        let mut buf = BytesMut::new();
        read_record(&mut &b"GET / HTTP/1.1\r\n"[..], &mut buf).await;
        assert_eq!(&buf[..], b"GET / HTTP/1.1\r\n");
    }

    /// An `AsyncRead` over `data` that returns at most `chunk` bytes a read.
    fn trickle(data: &[u8], chunk: usize) -> Trickle {
        Trickle {
            data: data.to_vec(),
            at: 0,
            chunk,
        }
    }

    struct Trickle {
        data: Vec<u8>,
        at: usize,
        chunk: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let end = self
                .data
                .len()
                .min(self.at + self.chunk.min(buf.remaining()));
            let at = self.at;
            buf.put_slice(&self.data[at..end]);
            self.at = end;
            std::task::Poll::Ready(Ok(()))
        }
    }
}
