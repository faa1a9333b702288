//! The byte path kt dials: a TCP connection, or TLS to an `https://`
//! upstream proxy, inside which CONNECT tunnels and forwarded requests run.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A connection to an upstream, or to the upstream proxy in front of it.
#[derive(Debug)]
pub enum Link {
    Tcp(TcpStream),
    /// TLS to an `https://` proxy. Boxed: the TLS state is large, and
    /// most links are plain TCP.
    ProxyTls(Box<TlsStream<TcpStream>>),
}

impl Link {
    /// Waits until the peer has sent something (or closed). Through a TLS
    /// proxy this watches the socket: a record that arrives makes it ready,
    /// while plaintext rustls already decrypted and holds (which only a
    /// read can have left there) does not.
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            Link::Tcp(s) => s.readable().await,
            Link::ProxyTls(s) => s.get_ref().0.readable().await,
        }
    }

    /// Resolves once the peer has sent bytes (without taking them); never
    /// when it only closes or fails: a server that hangs up at once is no
    /// server that speaks first, and the request path reports it.
    pub async fn sends_data(&self) {
        let tcp = match self {
            Link::Tcp(s) => s,
            Link::ProxyTls(s) => s.get_ref().0,
        };
        let mut byte = [0u8; 1];
        match tcp.peek(&mut byte).await {
            Ok(n) if n > 0 => {}
            _ => std::future::pending::<()>().await,
        }
    }
}

impl AsyncRead for Link {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Link::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Link::ProxyTls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Link {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Link::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Link::ProxyTls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Link::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Link::ProxyTls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Link::Tcp(s) => s.is_write_vectored(),
            Link::ProxyTls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Link::Tcp(s) => Pin::new(s).poll_flush(cx),
            Link::ProxyTls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Link::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Link::ProxyTls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
