//! Blind tunnels: bytes copied both ways untouched, half-close honoured,
//! closed when idle.
//!
//! The copy holds a buffer only while bytes are moving: idle tunnels are the
//! common case (IDEs keep many open), and two fixed 8 KiB buffers each would
//! dominate their memory.

use super::ConnCtx;
use super::Gateway;
use crate::netio::{Activity, Tracked};
use crate::shutdown::Shutdown;
use crate::upstream::Dialed;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Per-direction copy buffer while the direction is busy.
const BUF: usize = 16 * 1024;

/// A client's blind tunnel to `upstream`, counted in `kt_tunnels` while it
/// lasts.
pub(super) async fn blind<C>(ctx: &ConnCtx, client: C, upstream: Dialed)
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let stats = ctx.gw.stats();
    stats
        .tunnels
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    run(
        client,
        upstream,
        ctx.activity.clone(),
        ctx.gw.limits.idle,
        ends(ctx),
    )
    .await;
    stats
        .tunnels
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
}

/// Copies until both sides close, or nothing moves for `idle`.
/// `client` must already record into `activity`.
pub async fn run<C, U>(
    mut client: C,
    upstream: U,
    activity: Activity,
    idle: Duration,
    stop: impl std::future::Future<Output = ()>,
) where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut upstream = Tracked::new(upstream, activity.clone());
    tokio::select! {
        res = copy_both(&mut client, &mut upstream) => {
            match res {
                Ok((up, down)) => tracing::debug!(up, down, "tunnel closed"),
                Err(e) => tracing::debug!(error = %e, "tunnel ended"),
            }
        }
        _ = activity.idle_timeout(idle) => {
            tracing::debug!(idle_secs = idle.as_secs(), "tunnel idle, closing");
        }
        _ = stop => tracing::debug!("tunnel closed: drain period over or its key revoked"),
    }
}

/// How often a tunnel asks whether the key that opened it is still valid.
const KEY_RECHECK: Duration = Duration::from_secs(1);

/// Resolves when a tunnel opened for `ctx` must end before its peers say
/// so: the drain's grace is over, or the access key that opened it was
/// revoked (a leaked key must not keep a connection past that).
pub(super) fn ends(ctx: &ConnCtx) -> impl std::future::Future<Output = ()> + Send + 'static {
    stops(
        ctx.shutdown.clone(),
        ctx.gw.clone(),
        ctx.session_key.clone(),
    )
}

async fn stops(shutdown: Shutdown, gw: Arc<Gateway>, key: Option<Arc<str>>) {
    let revoked = async {
        let Some(key) = key else {
            return std::future::pending::<()>().await;
        };
        let mut tick = tokio::time::interval(KEY_RECHECK);
        loop {
            tick.tick().await;
            if !gw.auth.still_valid(&key) {
                tracing::info!("access key revoked: its tunnel is closed");
                return;
            }
        }
    };
    tokio::select! {
        _ = shutdown.cut() => {}
        _ = revoked => {}
    }
}

/// Copies `a → b` and `b → a` until both directions reached EOF (each EOF
/// is passed on as a write shutdown). Returns the bytes moved each way.
pub async fn copy_both<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut a_to_b = Direction::default();
    let mut b_to_a = Direction::default();
    poll_fn(|cx| {
        let ab = a_to_b.poll(cx, Pin::new(&mut *a), Pin::new(&mut *b))?;
        let ba = b_to_a.poll(cx, Pin::new(&mut *b), Pin::new(&mut *a))?;
        match (ab, ba) {
            (Poll::Ready(up), Poll::Ready(down)) => Poll::Ready(Ok((up, down))),
            _ => Poll::Pending,
        }
    })
    .await
}

/// One direction of a tunnel.
#[derive(Default)]
struct Direction {
    /// Allocated on the first readable event, freed when the source has
    /// nothing more for now and everything read has been written.
    buf: Option<Box<[u8]>>,
    /// `buf[start..end]` is read but not yet written.
    start: usize,
    end: usize,
    read_eof: bool,
    shut_down: bool,
    /// Written bytes may still sit in the writer (rustls keeps records it
    /// could not send): a flush is owed before this direction sleeps.
    need_flush: bool,
    total: u64,
}

impl Direction {
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.shut_down {
                return Poll::Ready(Ok(self.total));
            }
            if self.start < self.end {
                let Some(buf) = self.buf.as_deref() else {
                    return Poll::Ready(Err(io::Error::other("tunnel buffer lost")));
                };
                let n = ready!(writer.as_mut().poll_write(cx, &buf[self.start..self.end]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.start += n;
                self.total += n as u64;
                if self.start == self.end {
                    self.start = 0;
                    self.end = 0;
                    // Flush per burst so interactive protocols stay snappy;
                    // a flush that cannot finish now is retried before the
                    // direction waits for more to read.
                    self.need_flush = true;
                    if let Poll::Ready(flushed) = writer.as_mut().poll_flush(cx) {
                        flushed?;
                        self.need_flush = false;
                    }
                }
                continue;
            }
            if self.read_eof {
                ready!(writer.as_mut().poll_shutdown(cx))?;
                self.shut_down = true;
                self.buf = None;
                continue;
            }
            let buf = self
                .buf
                .get_or_insert_with(|| vec![0u8; BUF].into_boxed_slice());
            let mut read_buf = ReadBuf::new(buf);
            match reader.as_mut().poll_read(cx, &mut read_buf) {
                Poll::Ready(Ok(())) => {
                    let n = read_buf.filled().len();
                    if n == 0 {
                        self.read_eof = true;
                    } else {
                        self.end = n;
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // Nothing buffered: give the memory back while idle.
                    self.buf = None;
                    if self.need_flush {
                        ready!(writer.as_mut().poll_flush(cx))?;
                        self.need_flush = false;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn copies_both_ways_and_passes_half_close_on() {
        let (mut client, mut a) = tokio::io::duplex(64);
        let (mut b, mut server) = tokio::io::duplex(64);
        let copy = tokio::spawn(async move { copy_both(&mut a, &mut b).await });

        let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, payload, "client → server bytes differ");
        // The server still answers after the client's half-close.
        server.write_all(b"reply").await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"reply");
        let (up, down) = copy.await.unwrap().unwrap();
        assert_eq!((up, down), (100_000, 5));
    }

    #[tokio::test]
    async fn idle_direction_holds_no_buffer() {
        let (_client, mut a) = tokio::io::duplex(64);
        let (mut b, _server) = tokio::io::duplex(64);
        let mut dir = Direction::default();
        let waker = futures_noop_waker();
        let mut cx = Context::from_waker(&waker);
        let res = dir.poll(&mut cx, Pin::new(&mut a), Pin::new(&mut b));
        assert!(res.is_pending());
        assert!(dir.buf.is_none());
    }

    /// A writer that, like rustls, keeps what it is given until flushed,
    /// and whose first flush cannot finish at once.
    #[derive(Default)]
    struct SlowFlush {
        kept: Vec<u8>,
        flushed: Vec<u8>,
        flushes: usize,
    }

    impl AsyncWrite for SlowFlush {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.kept.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushes += 1;
            if self.flushes == 1 {
                // The socket is full for now; it is writable again at once.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let kept = std::mem::take(&mut self.kept);
            self.flushed.extend_from_slice(&kept);
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.poll_flush(cx)
        }
    }

    #[tokio::test]
    async fn a_flush_that_could_not_finish_is_retried_before_waiting_to_read() {
        let (mut client, mut a) = tokio::io::duplex(64);
        let mut writer = SlowFlush::default();
        client.write_all(b"last words").await.unwrap();
        // The client stays open and sends nothing more: only the owed flush
        // can get the bytes out.
        let mut dir = Direction::default();
        let moved = tokio::time::timeout(
            Duration::from_secs(10),
            poll_fn(|cx| {
                let _ = dir.poll(cx, Pin::new(&mut a), Pin::new(&mut writer));
                match writer.flushed.is_empty() {
                    true => Poll::Pending,
                    false => Poll::Ready(()),
                }
            }),
        )
        .await;
        assert!(moved.is_ok(), "the written bytes were never flushed");
        assert_eq!(writer.flushed, b"last words");
        assert!(!dir.need_flush);
        drop(client);
    }

    fn futures_noop_waker() -> std::task::Waker {
        std::task::Waker::noop().clone()
    }
}
