//! Probes for the hostile-input and fault tests: raw bytes on a socket with
//! a bounded wait, the gateway's health, and this process's memory, open
//! file descriptors and live tokio tasks (the gateway runs in-process).

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long any single probe waits before it counts as a hang.
pub const BOUND: Duration = Duration::from_secs(10);

/// What came back for raw bytes.
#[derive(Debug)]
pub struct RawReply {
    pub bytes: Vec<u8>,
    /// True when the gateway closed the connection within [`BOUND`].
    pub closed: bool,
}

impl RawReply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// The status of the first response, if one came.
    pub fn status(&self) -> Option<u16> {
        let text = self.text();
        let rest = text.strip_prefix("HTTP/1.1 ")?;
        rest.get(..3)?.parse().ok()
    }

    /// How many response status lines came back.
    pub fn responses(&self) -> usize {
        self.text().matches("HTTP/1.1 ").count()
    }
}

/// Writes `bytes` (then, with `half_close`, shuts the write side so the
/// gateway sees EOF) and reads until the gateway closes or [`BOUND`].
pub async fn raw(addr: SocketAddr, bytes: &[u8], half_close: bool) -> RawReply {
    let mut s = TcpStream::connect(addr).await.unwrap();
    // The gateway may close before taking everything: not our concern.
    let _ = s.write_all(bytes).await;
    if half_close {
        let _ = s.shutdown().await;
    }
    let mut out = Vec::new();
    let closed = matches!(
        tokio::time::timeout(BOUND, read_all(&mut s, &mut out)).await,
        Ok(())
    );
    RawReply { bytes: out, closed }
}

/// Reads to EOF, treating a reset as the end.
async fn read_all(s: &mut TcpStream, out: &mut Vec<u8>) {
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// `GET /healthz` answers 200 within [`BOUND`].
pub async fn assert_healthy(addr: SocketAddr) {
    let reply = raw(
        addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        false,
    )
    .await;
    assert_eq!(reply.status(), Some(200), "gateway unhealthy: {reply:?}");
}

/// Polls `cond` every 10 ms until it holds or `bound` passes; returns
/// whether it held.
pub async fn wait_until<F, Fut>(bound: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = Instant::now() + bound;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// This process's resident set, in KiB (Linux).
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Open file descriptors of this process (Linux).
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Live tasks on the current tokio runtime (the test's own runtime, which
/// also runs its in-process gateway and origins).
pub fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// A small deterministic generator (xorshift64*) for reproducible noise.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Where `program` is on PATH, if it is.
pub fn program_path(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// True when `program` is on PATH.
pub fn has_program(program: &str) -> bool {
    program_path(program).is_some()
}

/// True when every one of `programs` (the real clients a test drives) is
/// on PATH; otherwise prints the notice CI fails on, naming the first
/// missing one.
pub fn programs_present(programs: &[&str]) -> bool {
    match programs.iter().find(|p| !has_program(p)) {
        None => true,
        Some(missing) => {
            println!("KT-TEST-SKIPPED: {missing} is not installed; scripts/test.sh installs it");
            false
        }
    }
}
