//! Graceful drain: one signal that tells every connection task to finish
//! what it is doing and stop taking new work, plus a tracker to wait for them;
//! and, once the drain's grace is over, a second one that cuts what is still
//! open, so each exchange records how it ended before the audit log closes.

use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;

/// Cloneable handle held by the accept loop and every connection task.
#[derive(Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
    /// Set when the grace is over: what is still open is cut.
    cut: watch::Receiver<bool>,
    tracker: TaskTracker,
    /// The queue of [`Deferrer`], shared by every clone.
    deferred: Arc<OnceLock<mpsc::UnboundedSender<Deferred>>>,
}

/// Owner side: triggers the drain and waits for tasks.
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
    cut: watch::Sender<bool>,
    tracker: TaskTracker,
}

/// Creates a linked trigger and handle.
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    let (cut_tx, cut) = watch::channel(false);
    let tracker = TaskTracker::new();
    (
        ShutdownTrigger {
            tx,
            cut: cut_tx,
            tracker: tracker.clone(),
        },
        Shutdown {
            rx,
            cut,
            tracker,
            deferred: Arc::default(),
        },
    )
}

impl Shutdown {
    /// True once a drain has started.
    pub fn is_draining(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves when a drain starts (immediately if it already has).
    pub async fn draining(&self) {
        let mut rx = self.rx.clone();
        // An error means the trigger is gone, which also means "stop".
        let _ = rx.wait_for(|v| *v).await;
    }

    /// Resolves when the drain's grace is over and whatever is still open
    /// must end now (never, while the trigger lives and has not said so).
    pub async fn cut(&self) {
        let mut cut = self.cut.clone();
        let _ = cut.wait_for(|v| *v).await;
    }

    /// Spawns a task that the drain waits for.
    pub fn spawn<F>(&self, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(fut);
    }

    /// A handle that runs work after the current task yields, in a task
    /// the drain waits for (see [`Deferrer`]).
    pub fn deferrer(&self) -> Deferrer {
        Deferrer {
            tracker: self.tracker.clone(),
            queue: self.deferred.clone(),
        }
    }

    /// The executor for server connections whose tasks the drain must
    /// wait for (see [`TrackedExecutor`]).
    pub fn executor(&self) -> TrackedExecutor {
        TrackedExecutor {
            tracker: self.tracker.clone(),
        }
    }
}

/// An executor for hyper's HTTP/2 server that spawns each stream's task on
/// the drain's tracker. hyper runs an h2 stream (and the response body it
/// drives) in a task of its own, which can outlive the connection's task:
/// untracked, a stream finishing during the drain could close its exchange
/// (and queue its audit events) after the gateway had closed the audit log.
#[derive(Clone)]
pub struct TrackedExecutor {
    tracker: TaskTracker,
}

impl<F> hyper::rt::Executor<F> for TrackedExecutor
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        self.tracker.spawn(fut);
    }
}

/// Runs bookkeeping off the path of the bytes a peer waits for: a response
/// body's end is seen before hyper writes its last bytes, so what closes
/// the exchange there would delay them. The work goes to one long-lived
/// task (started on first use), which the scheduler polls once the
/// connection's task has written and yielded; each piece of work holds a
/// token of the drain's tracker until it has run, so the drain waits for
/// it like for a connection. One queue rather than a task per piece: a
/// spawn per exchange (a task allocated, registered, polled, released)
/// was a measurable share of an exchange's cost.
#[derive(Clone)]
pub struct Deferrer {
    tracker: TaskTracker,
    queue: Arc<OnceLock<mpsc::UnboundedSender<Deferred>>>,
}

impl Deferrer {
    /// Runs `work` soon, after the current task yields. Outside a runtime's
    /// task, or once the runtime that runs the queue has shut down, the
    /// work runs then and there: it is never lost.
    pub fn run<F: FnOnce() + Send + 'static>(&self, work: F) {
        let deferred = Deferred {
            work: Some(Box::new(work)),
            _token: self.tracker.token(),
        };
        // Inside a task there is a runtime to spawn on (and no handle to
        // clone to find out).
        if tokio::task::try_id().is_none() {
            return drop(deferred);
        }
        let queue = self.queue.get_or_init(|| {
            let (tx, mut rx) = mpsc::unbounded_channel::<Deferred>();
            // Not tracked: it lives as long as the runtime, and the drain
            // waits for the tokens of the work queued instead.
            tokio::spawn(async move {
                while let Some(deferred) = rx.recv().await {
                    // One piece of work that panics must not end the queue
                    // (its task would take the rest with it), as it ended
                    // only its own task when each had one.
                    let run = std::panic::AssertUnwindSafe(move || drop(deferred));
                    if std::panic::catch_unwind(run).is_err() {
                        tracing::error!("deferred work panicked; the queue goes on");
                    }
                }
            });
            tx
        });
        // A queue whose task is gone hands the work back: it runs here.
        if let Err(mpsc::error::SendError(deferred)) = queue.send(deferred) {
            drop(deferred);
        }
    }
}

/// Deferred work, done when dropped (run, or dropped unrun by a runtime
/// shutting down); the drain's token is released after it.
struct Deferred {
    work: Option<Box<dyn FnOnce() + Send>>,
    _token: TaskTrackerToken,
}

impl Drop for Deferred {
    fn drop(&mut self) {
        if let Some(work) = self.work.take() {
            work();
        }
    }
}

/// How long tasks told to stop at the end of the grace get to end (and
/// record how their exchanges ended).
const CUT_GRACE: Duration = Duration::from_secs(2);

impl ShutdownTrigger {
    /// Starts the drain, then waits up to `grace` for tracked tasks to end.
    /// Returns false when the grace period ran out with tasks still running:
    /// those are then told to stop at once, and given a moment to.
    pub async fn drain(self, grace: Duration) -> bool {
        let _ = self.tx.send(true);
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
        {
            return true;
        }
        // Cut, not left to the runtime's end: an exchange dropped then
        // would find the audit log closed, and its record would be lost.
        let _ = self.cut.send(true);
        let _ = tokio::time::timeout(CUT_GRACE, self.tracker.wait()).await;
        false
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use hyper::rt::Executor;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// Past the grace, what is still open is told to stop, and the drain
    /// waits a moment for it: the task's last act (an exchange's record)
    /// happens before the drain returns.
    #[tokio::test]
    async fn tasks_still_open_after_the_grace_are_cut_and_waited_for() {
        let (trigger, shutdown) = channel();
        let recorded = Arc::new(AtomicBool::new(false));
        let flag = recorded.clone();
        let sd = shutdown.clone();
        shutdown.spawn(async move {
            // A stream that ignores the drain and never ends on its own.
            tokio::select! {
                _ = std::future::pending::<()>() => {}
                _ = sd.cut() => {}
            }
            flag.store(true, Ordering::SeqCst);
        });
        assert!(!trigger.drain(Duration::from_millis(50)).await);
        assert!(
            recorded.load(Ordering::SeqCst),
            "the cut task had not ended"
        );
    }

    #[tokio::test]
    async fn the_drain_waits_for_tasks_of_the_tracked_executor() {
        let (trigger, shutdown) = channel();
        let finished = Arc::new(AtomicBool::new(false));
        let flag = finished.clone();
        // Handed to hyper, this is an h2 stream still closing its exchange.
        shutdown.executor().execute(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            flag.store(true, Ordering::SeqCst);
        });
        assert!(trigger.drain(Duration::from_secs(10)).await);
        assert!(
            finished.load(Ordering::SeqCst),
            "the drain ended before the executor's task"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn deferred_work_runs_once_the_task_yields_and_the_drain_waits_for_it() {
        let (trigger, shutdown) = channel();
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let deferrer = shutdown.deferrer();
        let tracker = shutdown.tracker.clone();
        // A connection's task, as the exchanges close in.
        tokio::spawn(async move {
            deferrer.run(move || flag.store(true, Ordering::SeqCst));
            assert_eq!(tracker.len(), 1, "the drain would not wait for the work");
            assert!(
                !done.load(Ordering::SeqCst),
                "the work ran inside the caller's poll"
            );
            tokio::task::yield_now().await;
            assert!(
                done.load(Ordering::SeqCst),
                "the work did not run after a yield"
            );
        })
        .await
        .unwrap();

        let late = Arc::new(AtomicBool::new(false));
        let flag = late.clone();
        let deferrer = shutdown.deferrer();
        // A tracked connection task, closing an exchange as it ends.
        shutdown.spawn(async move { deferrer.run(move || flag.store(true, Ordering::SeqCst)) });
        assert!(trigger.drain(Duration::from_secs(10)).await);
        assert!(
            late.load(Ordering::SeqCst),
            "the drain ended before the work"
        );
    }

    #[tokio::test]
    async fn deferred_work_that_panics_leaves_the_queue_running() {
        let (_trigger, shutdown) = channel();
        let deferrer = shutdown.deferrer();
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let seen = done.clone();
        tokio::spawn(async move {
            deferrer.run(|| panic!("a close that panics"));
            tokio::task::yield_now().await;
            deferrer.run(move || flag.store(true, Ordering::SeqCst));
            // Still deferred: a queue that died would run it right here.
            assert!(!seen.load(Ordering::SeqCst), "the work ran inline");
            tokio::task::yield_now().await;
        })
        .await
        .unwrap();
        assert!(
            done.load(Ordering::SeqCst),
            "the work after a panic never ran"
        );
        assert_eq!(shutdown.tracker.len(), 0, "a token was kept");
    }

    #[test]
    fn deferred_work_is_never_lost_without_a_runtime_or_with_a_dropped_one() {
        let (_trigger, shutdown) = channel();
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = runs.clone();
        shutdown.deferrer().run(move || {
            count.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(
            runs.load(Ordering::SeqCst),
            1,
            "outside a task it runs at once"
        );

        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let count = runs.clone();
        let deferrer = shutdown.deferrer();
        // The deferred task is never polled: block_on returns first.
        rt.block_on(async move {
            tokio::spawn(async move {
                deferrer.run(move || {
                    count.fetch_add(1, Ordering::SeqCst);
                })
            })
            .await
            .unwrap()
        });
        drop(rt);
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "a dropped task still does its work, once"
        );

        // A connection still open when the runtime shuts down: its task is
        // dropped, and the body it held defers its closing from that drop.
        struct ClosesOnDrop(Deferrer, Arc<std::sync::atomic::AtomicUsize>);
        impl Drop for ClosesOnDrop {
            fn drop(&mut self) {
                let count = self.1.clone();
                self.0.run(move || {
                    count.fetch_add(1, Ordering::SeqCst);
                });
            }
        }
        let runtimes = [
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap(),
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .build()
                .unwrap(),
        ];
        for (i, rt) in runtimes.into_iter().enumerate() {
            let open = ClosesOnDrop(shutdown.deferrer(), runs.clone());
            rt.block_on(async move {
                tokio::spawn(async move {
                    let _open = open;
                    std::future::pending::<()>().await;
                });
                // The connection's task gets to run before the shutdown.
                tokio::task::yield_now().await;
            });
            drop(rt);
            assert_eq!(
                runs.load(Ordering::SeqCst),
                3 + i,
                "work deferred while the runtime shuts down is lost"
            );
        }
    }
}
