//! Headless Chromium (Debian's package) as a test client, bounded in time.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The command for headless Chromium on `url` with `args` in `profile`;
/// with `home`, that is the user's home (so the NSS database Chromium
/// trusts certificates from).
fn command(args: &[String], url: &str, home: Option<PathBuf>, profile: &TempDir) -> Command {
    let mut command = Command::new("chromium");
    command
        .args([
            "--headless=new",
            "--disable-gpu",
            "--no-sandbox",
            "--no-first-run",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(home) = home {
        command.env("HOME", home);
    }
    command
}

/// Runs headless Chromium on `url` with `args` in a fresh profile until it
/// exits (as it does after `--dump-dom` or `--screenshot`) and returns what
/// it printed.
pub async fn run(args: Vec<String>, url: String, home: Option<PathBuf>) -> String {
    tokio::task::spawn_blocking(move || {
        let profile = tempfile::tempdir().unwrap();
        let mut child = command(&args, &url, home, &profile).spawn().unwrap();
        let started = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > Duration::from_secs(90) {
                let _ = child.kill();
                panic!("chromium did not finish within 90 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
    .await
    .unwrap()
}

/// Headless Chromium showing a page until dropped, for pages that report
/// what they saw to a server rather than in their DOM (a WebSocket: the
/// virtual time `--dump-dom` waits by does not wait for one).
pub struct Open {
    child: Child,
    _profile: TempDir,
}

/// Opens `url` in headless Chromium with `args` in a fresh profile.
pub fn open(args: Vec<String>, url: String, home: Option<PathBuf>) -> Open {
    let profile = tempfile::tempdir().unwrap();
    let child = command(&args, &url, home, &profile).spawn().unwrap();
    Open {
        child,
        _profile: profile,
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
