//! Graceful drain: one signal that tells every connection task to finish
//! what it is doing and stop taking new work, plus a tracker to wait for them.

use std::time::Duration;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

/// Cloneable handle held by the accept loop and every connection task.
#[derive(Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
    tracker: TaskTracker,
}

/// Owner side: triggers the drain and waits for tasks.
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
    tracker: TaskTracker,
}

/// Creates a linked trigger and handle.
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    let tracker = TaskTracker::new();
    (
        ShutdownTrigger {
            tx,
            tracker: tracker.clone(),
        },
        Shutdown { rx, tracker },
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

    /// Spawns a task that the drain waits for.
    pub fn spawn<F>(&self, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(fut);
    }
}

impl ShutdownTrigger {
    /// Starts the drain, then waits up to `grace` for tracked tasks to end.
    /// Returns false when the grace period ran out with tasks still running.
    pub async fn drain(self, grace: Duration) -> bool {
        let _ = self.tx.send(true);
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
    }
}
