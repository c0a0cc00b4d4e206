//! Connections of its own for a publish that is followed by `WAIT`.
//!
//! # Bounding rule
//!
//! `WAIT` blocks the connection it is sent on until the replicas confirm or the replica
//! timeout passes, and on a multiplexed connection every command behind it waits too: one
//! slow replica would queue every publish to its primary behind one `WAIT` after another.
//! So with `SSEGATE_PUBLISH_MIN_REPLICAS` ≥ 1, each publish's script and its `WAIT` go
//! over a connection that nothing else uses meanwhile. At most `SSEGATE_REDIS_POOL_SIZE`
//! of them are in use at once per node (a publish waits for one within its deadline, then
//! is answered "busy"), and in use and idle together they stay within that number too (an
//! idle one to another primary is closed to make room). One whose command failed or timed
//! out is closed, not reused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use redis::aio::MultiplexedConnection;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::lock;

/// The exclusive connections of one node.
#[derive(Debug)]
pub(crate) struct Leases {
    permits: Arc<Semaphore>,
    idle: Mutex<HashMap<String, Vec<MultiplexedConnection>>>,
    max: usize,
}

/// One exclusive connection, in use.
#[derive(Debug)]
pub(crate) struct Lease {
    pub(crate) addr: String,
    pub(crate) conn: MultiplexedConnection,
    /// Held while in use: it is what bounds the connections in use.
    pub(crate) _permit: OwnedSemaphorePermit,
}

impl Leases {
    /// At most `max` in use, and `max` idle per primary.
    pub(crate) fn new(max: usize) -> Self {
        let max = max.max(1);
        Self {
            permits: Arc::new(Semaphore::new(max)),
            idle: Mutex::new(HashMap::new()),
            max,
        }
    }

    /// The right to use one (waits while `max` are in use).
    pub(crate) async fn permit(&self) -> OwnedSemaphorePermit {
        // The semaphore is never closed, so acquiring only waits.
        loop {
            if let Ok(p) = self.permits.clone().acquire_owned().await {
                return p;
            }
        }
    }

    /// An idle connection to `addr`, if one is kept; else, when a new one would exceed
    /// the bound, closes an idle one to another primary. Called with a permit held.
    pub(crate) fn take(&self, addr: &str) -> Option<MultiplexedConnection> {
        let mut idle = lock(&self.idle);
        if let Some(c) = idle.get_mut(addr).and_then(Vec::pop) {
            return Some(c);
        }
        let kept: usize = idle.values().map(Vec::len).sum();
        if kept + self.in_use() > self.max
            && let Some(list) = idle.values_mut().find(|l| !l.is_empty())
        {
            list.pop();
        }
        None
    }

    /// Keeps a healthy connection for the next publish to `addr`, within the bound.
    /// Called with its permit still held.
    pub(crate) fn put(&self, addr: &str, conn: MultiplexedConnection) {
        let mut idle = lock(&self.idle);
        let kept: usize = idle.values().map(Vec::len).sum();
        if kept + self.in_use() <= self.max {
            idle.entry(addr.to_owned()).or_default().push(conn);
        }
    }

    fn in_use(&self) -> usize {
        self.max.saturating_sub(self.permits.available_permits())
    }

    /// Gives a lease back after its `WAIT` answered (the permit goes with it).
    pub(crate) fn give_back(&self, lease: Lease) {
        self.put(&lease.addr, lease.conn);
    }

    /// Drops the idle connections to nodes that are no longer primaries.
    pub(crate) fn retain(&self, primaries: &[String]) {
        lock(&self.idle).retain(|addr, _| primaries.contains(addr));
    }

    #[cfg(test)]
    fn idle(&self, addr: &str) -> usize {
        lock(&self.idle).get(addr).map_or(0, Vec::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn at_most_max_are_in_use() {
        let leases = Leases::new(2);
        let a = leases.permit().await;
        let _b = leases.permit().await;
        let third = tokio::time::timeout(std::time::Duration::from_millis(20), leases.permit());
        assert!(third.await.is_err(), "a third permit while two are in use");
        drop(a);
        let _c = leases.permit().await;
    }

    #[test]
    fn nothing_idle_is_kept_for_a_node_that_left() {
        let leases = Leases::new(1);
        assert!(leases.take("a:1").is_none());
        leases.retain(&["a:1".to_owned()]);
        assert_eq!(leases.idle("a:1"), 0);
    }
}
