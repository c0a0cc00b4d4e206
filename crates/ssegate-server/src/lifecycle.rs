//! The node's lifecycle: one token tree and one task tracker that own every task.
//!
//! - **drain** is cancelled when shutdown begins: `/readyz` turns 503, new subscribers get
//!   a retry-only stream, open streams close spread over the drain window, and public
//!   connections close once their current response is done (hyper's graceful shutdown,
//!   or the lean front after the response it is writing).
//! - **stop** is cancelled once the drain and the connections' grace are over: every task
//!   still running ends at its next poll. `drain` is a child of `stop`, so stopping
//!   without a drain drains too.
//! - **tasks** tracks every task the node spawns: background tasks (the accept loops, the
//!   broker's background work, the announcer) by [`Lifecycle::spawn`],
//!   which ends them at `stop`, and connections by [`Lifecycle::spawn_connection`].
//!   Nothing is aborted by hand; [`Lifecycle::stop`] returns once the tracker is empty
//!   (or, for a connection still stuck writing to a client that does not read, after
//!   [`STOP_GRACE`]).
//!
//! A connection is not wrapped in a stop future: it ends by the phases above (its stream
//! closes in the drain, it closes after its response once draining, an idle keep-alive
//! connection closes at `close`), at points where it waits anyway. A wrapper would be
//! polled at every wake-up of every connection (a lock of the token's tree each time),
//! and an async block around the connection's future would hold a second copy of its
//! state (measured: 4.3 KiB per idle stream).
//! - **streams** counts open streams. A stream is not a task of its own (it runs inside
//!   its connection's task), so it is counted, not tracked: the drain ends as soon as the
//!   last one closes, and `/readyz` and the stats report the count.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// How long [`Lifecycle::stop`] waits for tasks after cancelling them.
pub const STOP_GRACE: Duration = Duration::from_secs(1);

/// See the module docs.
#[derive(Debug)]
pub struct Lifecycle {
    stop: CancellationToken,
    close: CancellationToken,
    drain: CancellationToken,
    tasks: TaskTracker,
    /// Open streams.
    pub streams: StreamTracker,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

impl Lifecycle {
    /// A node that is running.
    pub fn new() -> Self {
        let stop = CancellationToken::new();
        let close = stop.child_token();
        Self {
            drain: close.child_token(),
            close,
            stop,
            tasks: TaskTracker::new(),
            streams: StreamTracker::default(),
        }
    }

    /// Runs `task` until it ends or the node stops, in the current span.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stop = self.stop.clone();
        self.tasks.spawn(
            async move {
                tokio::select! {
                    () = task => {}
                    () = stop.cancelled() => {}
                }
            }
            .in_current_span(),
        );
    }

    /// Runs a connection's task; it ends by itself (see the module docs).
    pub fn spawn_connection<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task.in_current_span());
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.drain.is_cancelled()
    }

    /// Resolves when shutdown begins (owned, so that a stream can keep it across waits).
    pub fn draining(&self) -> WaitForCancellationFutureOwned {
        self.drain.clone().cancelled_owned()
    }

    /// Begins the drain.
    pub fn begin_drain(&self) {
        self.drain.cancel();
    }

    /// Resolves when the drain is over and connections are asked to close.
    pub fn closing(&self) -> WaitForCancellationFutureOwned {
        self.close.clone().cancelled_owned()
    }

    /// Whether connections are asked to close.
    pub fn is_closing(&self) -> bool {
        self.close.is_cancelled()
    }

    /// Asks connections to close (the drain is over).
    pub fn begin_close(&self) {
        self.close.cancel();
    }

    /// Ends every background task, and resolves once every task is gone (or after
    /// [`STOP_GRACE`], leaving stuck connections to the end of the runtime).
    pub async fn stop(&self) {
        self.tasks.close();
        self.stop.cancel();
        if tokio::time::timeout(STOP_GRACE, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(tasks = self.tasks.len(), "tasks still running at stop");
        }
    }
}

/// Counts open streams, so that shutdown ends as soon as the last one is drained.
#[derive(Debug, Clone, Default)]
pub struct StreamTracker {
    inner: Arc<Counted>,
}

#[derive(Debug, Default)]
struct Counted {
    open: AtomicUsize,
    idle: Notify,
}

impl StreamTracker {
    /// Counts one more stream until the returned guard is dropped.
    pub fn enter(&self) -> StreamCount {
        self.inner.open.fetch_add(1, Ordering::SeqCst);
        StreamCount(self.inner.clone())
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        self.inner.open.load(Ordering::SeqCst)
    }

    /// Resolves once no stream is open.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One stream's place in the count.
#[derive(Debug)]
pub struct StreamCount(Arc<Counted>);

impl Drop for StreamCount {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_ends_every_task_and_waits_for_them() {
        let life = Lifecycle::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        life.spawn(async move {
            let _tx = tx;
            std::future::pending::<()>().await;
        });
        assert!(!life.is_draining());
        life.stop().await;
        assert!(life.is_draining(), "a stop drains too");
        assert!(rx.await.is_err(), "the task ended and dropped what it held");
    }

    #[tokio::test]
    async fn the_stream_count_wakes_the_drain_at_zero() {
        let streams = StreamTracker::default();
        let a = streams.enter();
        let b = streams.enter();
        assert_eq!(streams.open(), 2);
        drop(a);
        let waiter = tokio::spawn({
            let streams = streams.clone();
            async move { streams.wait_idle().await }
        });
        drop(b);
        waiter.await.unwrap();
        assert_eq!(streams.open(), 0);
    }
}
