//! A progress line on stderr for long commands, shown only when stderr is a
//! terminal, so pipes, logs and tests never see it.
//!
//! ```no_run
//! # fn work() {}
//! let progress = keeptrusts::cli::progress::Progress::start("verifying the audit log");
//! progress.set(10, Some(200)); // optional: callers that can count say so
//! work();
//! drop(progress); // clears the line
//! ```

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A quick command finishes before this, and then shows nothing at all.
const FIRST_SHOWN_AFTER: Duration = Duration::from_millis(300);
const REDRAW_EVERY: Duration = Duration::from_millis(100);
/// `total` when the caller gave none.
const NO_TOTAL: u64 = u64::MAX;

/// A running progress line; dropping it stops the redraws and clears it.
pub struct Progress {
    shared: Option<Arc<Shared>>,
    painter: Option<JoinHandle<()>>,
}

struct Shared {
    label: String,
    done: AtomicU64,
    total: AtomicU64,
    stop: AtomicBool,
}

impl Progress {
    /// Starts a progress line labelled `label` — when stderr is a terminal;
    /// otherwise the returned value does nothing.
    pub fn start(label: &str) -> Progress {
        Progress::start_if(label, std::io::stderr().is_terminal())
    }

    fn start_if(label: &str, shown: bool) -> Progress {
        if !shown {
            return Progress::silent();
        }
        let shared = Arc::new(Shared {
            label: label.to_string(),
            done: AtomicU64::new(0),
            total: AtomicU64::new(NO_TOTAL),
            stop: AtomicBool::new(false),
        });
        let painter = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("kt-progress".into())
                .spawn(move || paint(&shared))
                .ok()
        };
        Progress {
            shared: Some(shared),
            painter,
        }
    }

    /// A progress line that never shows (for callers that decide themselves).
    pub fn silent() -> Progress {
        Progress {
            shared: None,
            painter: None,
        }
    }

    /// Reports `done` items out of `total` (if known).
    pub fn set(&self, done: u64, total: Option<u64>) {
        if let Some(s) = &self.shared {
            s.done.store(done, Ordering::Relaxed);
            s.total.store(total.unwrap_or(NO_TOTAL), Ordering::Relaxed);
        }
    }

    /// Runs `work` under a progress line labelled `label`.
    pub fn during<T>(label: &str, work: impl FnOnce() -> T) -> T {
        let _progress = Progress::start(label);
        work()
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(s) = &self.shared {
            s.stop.store(true, Ordering::Relaxed);
        }
        if let Some(p) = self.painter.take() {
            p.thread().unpark();
            let _ = p.join();
        }
    }
}

fn paint(shared: &Shared) {
    let started = Instant::now();
    let mut shown = false;
    let mut spinner = ['|', '/', '-', '\\'].iter().cycle();
    while !shared.stop.load(Ordering::Relaxed) {
        let elapsed = started.elapsed();
        if elapsed >= FIRST_SHOWN_AFTER {
            let spin = spinner.next().copied().unwrap_or('|');
            let line = render(
                &shared.label,
                shared.done.load(Ordering::Relaxed),
                shared.total.load(Ordering::Relaxed),
                elapsed,
            );
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K{spin} {line}");
            let _ = err.flush();
            shown = true;
        }
        std::thread::park_timeout(REDRAW_EVERY);
    }
    if shown {
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K");
        let _ = err.flush();
    }
}

/// The text of the line (without the spinner).
fn render(label: &str, done: u64, total: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f32();
    match (done, total) {
        (0, NO_TOTAL) => format!("{label}… {secs:.1}s"),
        (d, NO_TOTAL) => format!("{label}… {d} {secs:.1}s"),
        (d, t) => {
            let pct = d.min(t).saturating_mul(100).checked_div(t).unwrap_or(100);
            format!("{label}… {d}/{t} ({pct}%) {secs:.1}s")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shown_line_stops_when_dropped() {
        let p = Progress::start_if("x", true);
        assert!(p.painter.is_some());
        p.set(1, Some(2));
        drop(p); // joins the painter: a hang here fails the test run
    }

    #[test]
    fn the_line_shows_counts_and_percent_when_known() {
        let t = Duration::from_millis(1500);
        assert_eq!(render("verifying", 0, NO_TOTAL, t), "verifying… 1.5s");
        assert_eq!(render("verifying", 7, NO_TOTAL, t), "verifying… 7 1.5s");
        assert_eq!(render("reading", 50, 200, t), "reading… 50/200 (25%) 1.5s");
        assert_eq!(render("reading", 3, 0, t), "reading… 3/0 (100%) 1.5s");
    }

    #[test]
    fn without_a_terminal_nothing_runs() {
        let p = Progress::start_if("x", false);
        assert!(p.shared.is_none() && p.painter.is_none());
        p.set(1, Some(2));
        assert_eq!(Progress::during("x", || 41 + 1), 42);
    }
}
