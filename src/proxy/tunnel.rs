//! Blind tunnels: bytes copied both ways untouched, half-close honoured,
//! closed when idle.

use crate::netio::{Activity, Tracked};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// Per-direction copy buffer. Small on purpose: idle tunnels are the common
/// case and each holds two.
const BUF: usize = 8 * 1024;

/// Copies until both sides close, or nothing moves for `idle`.
/// `client` must already record into `activity`.
pub async fn run<C, U>(mut client: C, upstream: U, activity: Activity, idle: Duration)
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut upstream = Tracked::new(upstream, activity.clone());
    tokio::select! {
        res = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, BUF, BUF) => {
            match res {
                Ok((up, down)) => tracing::debug!(up, down, "tunnel closed"),
                Err(e) => tracing::debug!(error = %e, "tunnel ended"),
            }
        }
        _ = activity.idle_timeout(idle) => {
            tracing::debug!(idle_secs = idle.as_secs(), "tunnel idle, closing");
        }
    }
}
