//! Connection-level measurements: memory held per idle connection and the
//! cost of a TLS handshake for a host name kt has (or has not yet) minted a
//! certificate for.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use tokio::sync::Semaphore;

use crate::client::{exchange, nanos, Fail, FailKind, Job, Route, Sender};
use crate::kt::Gateway;

/// Connections opened at the same time while filling the idle set.
const OPEN_PARALLELISM: usize = 8;
/// Longest time spent opening one set of idle connections.
const FILL_BUDGET: Duration = Duration::from_secs(60);
/// Longest time spent on one series of handshakes.
const HANDSHAKE_BUDGET: Duration = Duration::from_secs(60);
/// Pause before reading RSS, so kt finishes the work the last opens caused.
const SETTLE: Duration = Duration::from_millis(500);

/// Which kind of idle connection to hold.
#[derive(Clone, Copy, Debug)]
pub enum IdleKind {
    /// `CONNECT` to a host kt does not intercept, then silence.
    Blind,
    /// `CONNECT` + TLS handshake with kt + one request, then idle keep-alive.
    Intercepted,
}

/// What holding the idle connections cost.
pub struct IdleResult {
    pub opened: usize,
    pub failed: usize,
    pub first_error: Option<String>,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
}

impl IdleResult {
    /// (RSS after − RSS before) / opened connections, KiB.
    pub fn kib_per_conn(&self) -> Option<f64> {
        (self.opened > 0)
            .then(|| (self.rss_after_kib as f64 - self.rss_before_kib as f64) / self.opened as f64)
    }
}

/// A connection held open only to be counted; closed when dropped.
#[allow(dead_code)] // the fields are never read, only owned
enum Held {
    Tunnel(tokio::net::TcpStream),
    Http(Sender),
}

/// Opens `n` idle connections of `kind` to `host` through `gw` and reports
/// the change in kt's RSS. `warm` is used once beforehand (and closed) so
/// kt's lazily built state for this path is not counted.
pub async fn idle_memory(
    gw: &Gateway,
    kind: IdleKind,
    route: &Route,
    host: &str,
    job: &Job,
    n: usize,
    timeout: Duration,
) -> Result<IdleResult> {
    // Warm the path: one full exchange over the same kind of tunnel.
    let warm = tokio::time::timeout(timeout, async {
        let mut s = route.http(host).await?;
        exchange(&mut s, host, job).await
    })
    .await;
    match warm {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => bail!("warm-up exchange ({kind:?}) failed: {e}"),
        Err(_) => bail!("warm-up exchange ({kind:?}) timed out"),
    }
    tokio::time::sleep(SETTLE).await;
    let before = gw.memory()?;

    let gate = Arc::new(Semaphore::new(OPEN_PARALLELISM));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let gate = gate.clone();
            let route = route.clone();
            let host = host.to_owned();
            let job = job.clone();
            tokio::spawn(async move {
                let _permit = gate.acquire_owned().await;
                let open = async {
                    match kind {
                        IdleKind::Blind => route.tcp(&host).await.map(Held::Tunnel),
                        IdleKind::Intercepted => {
                            let mut s = route.http(&host).await?;
                            exchange(&mut s, &host, &job).await?;
                            Ok(Held::Http(s))
                        }
                    }
                };
                tokio::time::timeout(timeout, open)
                    .await
                    .unwrap_or_else(|_| {
                        Err(Fail {
                            kind: FailKind::Timeout,
                            msg: "opening an idle connection".into(),
                        })
                    })
            })
        })
        .collect();
    // Bound the whole fill phase, not just each connection.
    let deadline = tokio::time::Instant::now() + FILL_BUDGET.max(timeout * 2);
    let mut held = Vec::with_capacity(n);
    let mut failed = 0;
    let mut first_error = None;
    for t in tasks {
        let abort = t.abort_handle();
        let err = match tokio::time::timeout_at(deadline, t).await {
            Ok(Ok(Ok(h))) => {
                held.push(h);
                continue;
            }
            Ok(Ok(Err(e))) => e.to_string(),
            Ok(Err(e)) => e.to_string(),
            Err(_) => {
                abort.abort();
                "time budget for opening the idle connections used up".to_string()
            }
        };
        failed += 1;
        first_error.get_or_insert(err);
    }
    tokio::time::sleep(SETTLE).await;
    let after = gw.memory()?;
    let opened = held.len();
    drop(held);
    Ok(IdleResult {
        opened,
        failed,
        first_error,
        rss_before_kib: before.rss_kib,
        rss_after_kib: after.rss_kib,
    })
}

/// Durations of sequential handshakes, one per name.
#[derive(Default)]
pub struct Handshakes {
    /// Nanoseconds per successful handshake.
    pub samples: Vec<u64>,
    pub failed: usize,
    pub first_error: Option<String>,
}

/// TCP (+ CONNECT) + full TLS handshake for each of `names`, one after the
/// other; the connection is closed right after the handshake. The series
/// stops early (the rest counted as failed) when its time budget runs out.
pub async fn handshakes(route: &Route, names: &[String], timeout: Duration) -> Handshakes {
    let mut out = Handshakes::default();
    let deadline = Instant::now() + HANDSHAKE_BUDGET.max(timeout * 2);
    for (i, name) in names.iter().enumerate() {
        let t0 = Instant::now();
        if t0 >= deadline {
            out.failed += names.len() - i;
            out.first_error
                .get_or_insert_with(|| format!("time budget {HANDSHAKE_BUDGET:?} used up"));
            break;
        }
        let res = tokio::time::timeout(timeout, route.tls(name)).await;
        let took = t0.elapsed();
        match res {
            Ok(Ok(tls)) => {
                out.samples.push(nanos(took));
                drop(tls);
            }
            Ok(Err(e)) => {
                out.failed += 1;
                out.first_error.get_or_insert_with(|| e.to_string());
            }
            Err(_) => {
                out.failed += 1;
                out.first_error
                    .get_or_insert_with(|| format!("timeout: handshake with {name}"));
            }
        }
    }
    out
}
