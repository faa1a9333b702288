//! Running the `kt` binary under test and reading its resource use.
//!
//! Only the documented command-line contract is used: `kt ca init`,
//! `kt ca path` (last stdout line), `kt gateway run ...`, readiness through
//! `GET /healthz`, and SIGTERM to stop. CPU time comes from
//! `/proc/PID/stat` (utime + stime), memory from `/proc/PID/status`
//! (`VmRSS`, `VmHWM`).

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long kt may take to answer `/healthz`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Grace period between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Limit for the short `kt` commands (`ca init`, `ca path`, `--version`).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs a short command to completion with piped output, killing it after `limit`.
fn run_bounded(mut cmd: Command, limit: Duration) -> Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + limit;
    while child.try_wait()?.is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("still running after {limit:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(child.wait_with_output()?)
}

/// First line of `kt --version`, if it has one.
pub fn version(bin: &Path) -> Option<String> {
    let mut cmd = Command::new(bin);
    cmd.arg("--version");
    let out = run_bounded(cmd, COMMAND_TIMEOUT)
        .ok()
        .filter(|o| o.status.success())?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
}

/// Creates kt's MITM CA in `data_dir` and returns the CA certificate path.
pub fn init_ca(bin: &Path, data_dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(data_dir)?;
    let mut cmd = Command::new(bin);
    cmd.args(["ca", "init", "--data-dir"]).arg(data_dir);
    let init = run_bounded(cmd, COMMAND_TIMEOUT)
        .with_context(|| format!("running {} ca init", bin.display()))?;
    if !init.status.success() {
        bail!(
            "kt ca init failed ({}): {}",
            init.status,
            String::from_utf8_lossy(&init.stderr).trim()
        );
    }
    let mut cmd = Command::new(bin);
    cmd.args(["ca", "path", "--data-dir"]).arg(data_dir);
    let path = run_bounded(cmd, COMMAND_TIMEOUT)
        .with_context(|| format!("running {} ca path", bin.display()))?;
    if !path.status.success() {
        bail!(
            "kt ca path failed ({}): {}",
            path.status,
            String::from_utf8_lossy(&path.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&path.stdout);
    let last = stdout
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or_default();
    let pem = PathBuf::from(last);
    if !pem.is_file() {
        bail!("`kt ca path` printed {last:?}, which is not a file");
    }
    Ok(pem)
}

/// How to start one gateway.
pub struct GatewayOpts<'a> {
    pub bin: &'a Path,
    pub data_dir: &'a Path,
    pub upstream_ca: &'a Path,
    /// `HOST:PORT:ADDR:PORT` entries.
    pub connect_to: Vec<String>,
    /// `--intercept` value; `None` keeps kt's default.
    pub intercept: Option<&'a str>,
    /// Extra arguments appended verbatim.
    pub extra_args: &'a [String],
    /// `taskset -c` CPU list for kt, if pinning.
    pub cpus: Option<&'a str>,
    pub log: PathBuf,
}

/// A running gateway; terminated on drop.
pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

/// A free loopback port (bound, then released).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(l.local_addr()?.port())
}

impl Gateway {
    /// Starts kt and waits until `/healthz` answers 200.
    pub async fn start(opts: GatewayOpts<'_>) -> Result<Gateway> {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let mut cmd = match opts.cpus {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.args(["-c", cpus]).arg(opts.bin);
                c
            }
            None => Command::new(opts.bin),
        };
        cmd.args([
            "gateway",
            "run",
            "--listen",
            &addr.to_string(),
            "--data-dir",
        ])
        .arg(opts.data_dir)
        .arg("--upstream-ca")
        .arg(opts.upstream_ca);
        for c in &opts.connect_to {
            cmd.args(["--connect-to", c]);
        }
        if let Some(mode) = opts.intercept {
            cmd.args(["--intercept", mode]);
        }
        cmd.args(opts.extra_args);
        let log =
            File::create(&opts.log).with_context(|| format!("creating {}", opts.log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", opts.bin.display()))?;
        let mut gw = Gateway {
            child,
            addr,
            log: opts.log,
        };
        gw.wait_ready().await?;
        Ok(gw)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "kt exited during start-up ({status}); log tail:\n{}",
                    self.log_tail(20)
                );
            }
            if let Ok(Ok(200)) =
                tokio::time::timeout(Duration::from_secs(1), health(self.addr)).await
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "kt did not answer /healthz on {} within {READY_TIMEOUT:?}; log tail:\n{}",
                    self.addr,
                    self.log_tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// True while the process is running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Memory figures now.
    pub fn memory(&self) -> Result<Memory> {
        memory(self.pid())
    }

    /// The last `n` lines of kt's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// SIGTERM, wait for exit (SIGKILL after a grace period).
    pub fn stop(&mut self) {
        if !self.alive() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if !self.alive() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "kt (pid {}) ignored SIGTERM for {STOP_GRACE:?}; killing it",
            self.pid()
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One `GET /healthz`; returns the status code.
async fn health(addr: SocketAddr) -> Result<u16> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    while !buf.contains(&b'\n') && buf.len() < 4096 {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("no HTTP status line from /healthz"))
}

/// Clock ticks per second for `/proc/PID/stat` times.
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

/// utime + stime of process `pid` (all its threads).
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may contain spaces: fields are counted after its ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("odd /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 14 (utime) and 15 (stime) of proc(5); `rest` starts at field 3.
    let tick = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .ok_or_else(|| anyhow!("short /proc/{pid}/stat"))?
            .parse()
            .context("parsing /proc stat")
    };
    let ticks = tick(11)? + tick(12)?;
    Ok(Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64))
}

/// Resident set figures of a process, KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    pub rss_kib: u64,
    /// Peak RSS (never below the current RSS).
    pub hwm_kib: u64,
}

pub fn memory(pid: u32) -> Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim_start_matches(':').split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let rss = field("VmRSS");
    Ok(Memory {
        rss_kib: rss,
        hwm_kib: field("VmHWM").max(rss),
    })
}

/// The CPU list this process may run on (`Cpus_allowed_list`).
pub fn own_cpus() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_else(|| "?".into())
}

/// Soft limit on open files for this process (`/proc/self/limits`).
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Busy CPU time of the whole machine so far (`/proc/stat`: user + nice +
/// system + irq + softirq, all CPUs).
fn machine_busy() -> Result<Duration> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or_else(|| anyhow!("no cpu line in /proc/stat"))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let ticks: u64 = [0, 1, 2, 5, 6]
        .iter()
        .map(|&i| f.get(i).copied().unwrap_or(0))
        .sum();
    Ok(Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64))
}

/// CPU accounting over one run: kt's own CPU time, and the CPU the machine
/// spent on anything that is neither this process nor kt ("foreign" load,
/// i.e. noise from other work on the host).
pub struct CpuWatch {
    started: Instant,
    busy: Duration,
    own: Duration,
    kt: Option<(u32, Duration)>,
}

/// What a [`CpuWatch`] saw.
pub struct CpuUse {
    pub kt: Option<Duration>,
    /// CPU time of this process: the load client and the origin.
    pub bench: Duration,
    /// Average number of cores the load client and the origin kept busy.
    pub bench_cores: f64,
    /// Average number of cores busy with foreign work.
    pub foreign_cores: f64,
}

impl CpuWatch {
    pub fn start(kt_pid: Option<u32>) -> Result<CpuWatch> {
        Ok(CpuWatch {
            started: Instant::now(),
            busy: machine_busy()?,
            own: cpu_time(std::process::id())?,
            kt: kt_pid.map(|p| cpu_time(p).map(|t| (p, t))).transpose()?,
        })
    }

    pub fn finish(self) -> Result<CpuUse> {
        let wall = self.started.elapsed().as_secs_f64().max(1e-3);
        let busy = machine_busy()?.saturating_sub(self.busy);
        let own = cpu_time(std::process::id())?.saturating_sub(self.own);
        let kt = self
            .kt
            .map(|(p, t0)| cpu_time(p).map(|t| t.saturating_sub(t0)))
            .transpose()?;
        let foreign = busy
            .saturating_sub(own)
            .saturating_sub(kt.unwrap_or_default());
        Ok(CpuUse {
            kt,
            bench: own,
            bench_cores: own.as_secs_f64() / wall,
            foreign_cores: foreign.as_secs_f64() / wall,
        })
    }
}
