//! User-space halt polling: after a proxied request, the single-threaded
//! runtime keeps polling for I/O for a short, adaptive window before it
//! lets its thread sleep.
//!
//! On a VM whose idle CPUs halt without polling, every sleep of the proxy's
//! thread is a VM exit, and waking it again costs tens of microseconds of
//! latency (and CPU: the profile charges it to the process). A request to a
//! nearby origin or a cache hit comes back well within that, so a proxy that
//! sleeps between the request and its answer pays the wake-up twice per
//! exchange. Polling through the gap avoids it, the way the kernel's
//! `cpuidle-haltpoll` does for the whole guest.
//!
//! The window adapts like haltpoll's: it grows while requests come closer
//! together than the longest window, and shrinks to nothing when they do
//! not (an IDE talking to a remote provider: seconds apart), so a gateway
//! whose traffic would not benefit does not spin at all.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// The process's poller, when the gateway runs on the single-threaded
/// runtime with polling on.
static POLLER: OnceLock<Arc<IdlePoll>> = OnceLock::new();

/// Notes a request: the poller (if any) polls through the next gap. One
/// atomic load when polling is off.
pub fn activity() {
    if let Some(p) = POLLER.get() {
        p.activity();
    }
}

/// Makes `poller` the one [`activity`] wakes. `false` if one was already
/// installed (a process runs one gateway).
pub fn install(poller: Arc<IdlePoll>) -> bool {
    POLLER.set(poller).is_ok()
}

/// Polls for I/O through the gaps between requests, up to a window.
#[derive(Debug)]
pub struct IdlePoll {
    notify: Notify,
    max: Duration,
    spinning: AtomicBool,
    /// The current window, in microseconds.
    window_us: AtomicU64,
}

impl IdlePoll {
    /// A poller whose window grows up to `max`.
    pub fn new(max: Duration) -> IdlePoll {
        IdlePoll {
            notify: Notify::new(),
            max,
            spinning: AtomicBool::new(false),
            window_us: AtomicU64::new(0),
        }
    }

    /// Notes a request.
    pub fn activity(&self) {
        self.notify.notify_one();
    }

    /// True while polling through a gap.
    pub fn is_spinning(&self) -> bool {
        self.spinning.load(Ordering::Relaxed)
    }

    /// The window the last request was given.
    pub fn window(&self) -> Duration {
        Duration::from_micros(self.window_us.load(Ordering::Relaxed))
    }

    /// The polling task: after each request, yields to the runtime for the
    /// current window. A yielding task keeps the scheduler from sleeping:
    /// with nothing else to run it polls the I/O driver without blocking,
    /// so a reply that arrives meanwhile is handled at once. Other tasks
    /// run between the yields as usual.
    pub async fn run(&self) {
        let mut window = Window::new(self.max);
        loop {
            self.notify.notified().await;
            let now = Instant::now();
            let span = window.after_activity(now);
            self.window_us
                .store(span.as_micros() as u64, Ordering::Relaxed);
            let until = now + span;
            self.spinning.store(true, Ordering::Relaxed);
            while Instant::now() < until {
                tokio::task::yield_now().await;
            }
            self.spinning.store(false, Ordering::Relaxed);
        }
    }
}

/// The adaptive window: doubled (from [`Window::START`]) when a request
/// follows the previous one within the longest window, halved (to zero
/// below the start) when it does not.
#[derive(Debug)]
struct Window {
    current: Duration,
    max: Duration,
    last: Option<Instant>,
}

impl Window {
    /// The smallest window worth polling.
    const START: Duration = Duration::from_micros(25);

    fn new(max: Duration) -> Window {
        Window {
            current: Duration::ZERO,
            max,
            last: None,
        }
    }

    /// The window to poll after a request seen at `now`.
    fn after_activity(&mut self, now: Instant) -> Duration {
        let close = self
            .last
            .is_some_and(|last| now.saturating_duration_since(last) <= self.max);
        self.last = Some(now);
        self.current = if close {
            (self.current * 2).max(Self::START).min(self.max)
        } else {
            let half = self.current / 2;
            if half < Self::START {
                Duration::ZERO
            } else {
                half
            }
        };
        self.current
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_micros(200);

    #[test]
    fn the_window_grows_with_close_requests_and_vanishes_with_sparse_ones() {
        let t0 = Instant::now();
        let mut w = Window::new(MAX);
        let at = |us: u64| t0 + Duration::from_micros(us);
        // The first request has nothing to compare with: no polling.
        assert_eq!(w.after_activity(at(0)), Duration::ZERO);
        // Requests 100 µs apart: 25, 50, 100, 200, then capped.
        let grown: Vec<u64> = (1..=6)
            .map(|i| w.after_activity(at(i * 100)).as_micros() as u64)
            .collect();
        assert_eq!(grown, [25, 50, 100, 200, 200, 200]);
        // Seconds apart (an IDE and a remote provider): halved to nothing.
        let shrunk: Vec<u64> = (1..=5)
            .map(|i| w.after_activity(at(600 + i * 1_000_000)).as_micros() as u64)
            .collect();
        assert_eq!(shrunk, [100, 50, 25, 0, 0]);
        // Never beyond the longest window.
        let mut w = Window::new(Duration::from_micros(30));
        for i in 0..10 {
            assert!(w.after_activity(at(i * 10)) <= Duration::from_micros(30));
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn polling_grows_with_traffic_lets_other_tasks_run_and_ends_on_its_own() {
        // A long window, so the test can watch it; real ones are ≤ 10 ms.
        let max = Duration::from_millis(100);
        let poller = Arc::new(IdlePoll::new(max));
        tokio::spawn({
            let poller = poller.clone();
            async move { poller.run().await }
        });
        let bound = Duration::from_secs(10);
        let started = Instant::now();
        // Back-to-back requests: the window doubles up to the longest.
        while poller.window() < max {
            assert!(started.elapsed() < bound, "stuck at {:?}", poller.window());
            poller.activity();
            tokio::task::yield_now().await;
        }
        while !poller.is_spinning() {
            assert!(started.elapsed() < bound, "never polled");
            tokio::task::yield_now().await;
        }
        // Other tasks (here a timer, i.e. the driver) run while it polls.
        tokio::time::timeout(bound, tokio::time::sleep(Duration::from_millis(1)))
            .await
            .unwrap();
        assert!(poller.is_spinning(), "a 100 ms window ended within 1 ms");
        // With no more requests it stops, and stays stopped.
        while poller.is_spinning() {
            assert!(started.elapsed() < bound, "polling never ended");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!poller.is_spinning());
    }
}
