//! IO adapters shared by the listener and the upstream side: replaying bytes
//! already read (after peeking or after a proxy's CONNECT reply), and
//! tracking activity for idle timeouts.

use bytes::{Buf, Bytes};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// An IO that first yields `prefix`, then reads from `inner`.
#[derive(Debug)]
pub struct Prefixed<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Prefixed<T> {
    pub fn new(prefix: Bytes, inner: T) -> Self {
        Prefixed { prefix, inner }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// The bytes not yet replayed.
    pub fn prefix(&self) -> &Bytes {
        &self.prefix
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Whether any wrapped IO moved bytes lately, shared by both halves of a
/// connection so an idle watchdog can tell a quiet connection from a busy
/// one. Recording is one relaxed atomic store (no clock read on the IO
/// path); the watchdog samples the flag a few times per idle limit.
#[derive(Debug, Clone, Default)]
pub struct Activity {
    moved: Arc<AtomicBool>,
}

/// Samples per idle limit: a connection is closed after between `limit`
/// and `limit * (1 + 1/SAMPLES)` without traffic.
const SAMPLES: u32 = 4;

impl Activity {
    pub fn new() -> Self {
        Self::default()
    }

    fn touch(&self) {
        self.moved.store(true, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `limit`. Wakes `SAMPLES` times
    /// per `limit`, so it costs nothing on busy connections.
    pub async fn idle_timeout(&self, limit: Duration) {
        quiet_for(limit, || self.moved.swap(false, Ordering::Relaxed)).await;
    }
}

/// Resolves once `busy` (asked `SAMPLES` times per `limit`, and meant to
/// say whether anything happened since it was last asked) has said no for
/// `limit`.
async fn quiet_for(limit: Duration, mut busy: impl FnMut() -> bool) {
    let tick = (limit / SAMPLES).max(Duration::from_millis(1));
    let mut quiet = Duration::ZERO;
    loop {
        tokio::time::sleep(tick).await;
        if busy() {
            quiet = Duration::ZERO;
        } else {
            quiet += tick;
            if quiet >= limit {
                return;
            }
        }
    }
}

/// The requests of one connection, for its idle limit: bytes alone cannot
/// tell. On HTTP/2, hyper PINGs every client (and the client answers)
/// while no request is open, so a connection nobody uses still moves
/// bytes; on HTTP/1.1, a request waiting for a slow answer moves none.
#[derive(Debug, Clone, Default)]
pub struct Requests {
    inner: Arc<RequestsInner>,
}

#[derive(Debug, Default)]
struct RequestsInner {
    open: AtomicUsize,
    started: AtomicBool,
}

/// One open request of [`Requests`]: it ends when this is dropped (with the
/// response body, or with the request's future when the client resets it).
#[derive(Debug)]
pub struct OpenRequest(Requests);

impl Drop for OpenRequest {
    fn drop(&mut self) {
        self.0.inner.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Requests {
    /// Counts a request open until the returned guard is dropped.
    pub fn start(&self) -> OpenRequest {
        self.inner.open.fetch_add(1, Ordering::Relaxed);
        self.inner.started.store(true, Ordering::Relaxed);
        OpenRequest(self.clone())
    }

    /// Resolves once no request has been open or started for `limit`.
    pub async fn idle_timeout(&self, limit: Duration) {
        quiet_for(limit, || self.busy()).await;
    }

    /// Resolves once, for `limit`, no request has been open or started and
    /// no byte has moved (an HTTP/1.1 connection: a request waiting for
    /// its answer moves none).
    pub async fn idle_timeout_with(&self, activity: &Activity, limit: Duration) {
        quiet_for(limit, || {
            // Both asked every time: each clears what it saw.
            let moved = activity.moved.swap(false, Ordering::Relaxed);
            self.busy() || moved
        })
        .await;
    }

    fn busy(&self) -> bool {
        let started = self.inner.started.swap(false, Ordering::Relaxed);
        started || self.inner.open.load(Ordering::Relaxed) > 0
    }
}

/// An IO that records activity on every successful read or write.
#[derive(Debug)]
pub struct Tracked<T> {
    inner: T,
    activity: Activity,
}

impl<T> Tracked<T> {
    pub fn new(inner: T, activity: Activity) -> Self {
        Tracked { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A TLS stream whose peer may close TCP without a `close_notify` alert:
/// that close reads as the end of the stream, as it does for curl and
/// browsers. HTTP/1.1 still catches a cut message whose length it knows
/// (`content-length`, chunked); only a body that runs until the close is
/// taken as whole, which is what the many servers that skip the alert mean.
#[derive(Debug)]
pub struct CloseIsEnd<T>(pub T);

impl<T: AsyncRead + Unpin> AsyncRead for CloseIsEnd<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.0).poll_read(cx, buf) {
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Poll::Ready(Ok(())),
            other => other,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CloseIsEnd<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
