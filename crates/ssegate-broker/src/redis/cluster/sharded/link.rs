//! One primary's sharded pub/sub connection: opening it with its pushes counted against
//! the task's queue, backing off from a primary that cannot be reached, and the commands
//! that only count as done on their own confirmation.
//!
//! # Bounding rule
//!
//! **Received messages wait in one queue, at most [`QUEUE_BYTES`] over all connections.**
//! A push that would take the queue past it is refused and marks its connection
//! overflowed; the task drops that connection and catches its channels up from their
//! streams, so a slow task costs catch-up reads, never memory.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{PushInfo, PushKind, Value};
use ssegate_core::ChannelName;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Router;
use crate::redis::pubsub::Backoff;

/// Received message bytes that may wait for the task, over all connections.
pub(crate) const QUEUE_BYTES: usize = 64 << 20;

/// One primary's pub/sub connection.
pub(super) struct Shard {
    /// Tells this connection's pushes from an older one's.
    pub(super) id: u64,
    pub(super) conn: MultiplexedConnection,
    /// The channels Redis confirmed on this connection.
    pub(super) subscribed: HashSet<ChannelName>,
    /// Set by the push sender when the queue was full: the connection is dropped.
    pub(super) overflow: Arc<AtomicBool>,
}

/// A wait after failures: until when, and the backoff that set it. Kept per primary that
/// could not be reached, and for the task's reconcile.
#[derive(Debug)]
pub(super) struct Retry {
    until: Instant,
    backoff: Backoff,
}

impl Retry {
    /// No failure yet: nothing to wait for.
    pub(super) fn new() -> Self {
        Self {
            until: Instant::now(),
            backoff: Backoff::new(),
        }
    }

    /// After a failure: wait, longer than after the one before.
    pub(super) fn fail(&mut self) {
        self.until = Instant::now() + self.backoff.fail();
    }

    /// New information (a new slot map, a connection lost): no waiting for it, while the
    /// backoff stays where the failures put it.
    pub(super) fn cut(&mut self) {
        self.until = Instant::now();
    }

    pub(super) fn waiting(&self) -> bool {
        Instant::now() < self.until
    }

    pub(super) const fn until(&self) -> Instant {
        self.until
    }

    /// For the log line: the wait after another failure.
    pub(super) const fn next(&self) -> Duration {
        self.backoff.next()
    }
}

/// The queue every connection's pushes go to, tagged with the connection's id.
pub(super) struct Queue {
    tx: mpsc::UnboundedSender<(u64, PushInfo)>,
    queued: Arc<AtomicUsize>,
}

impl Queue {
    pub(super) fn new() -> (Self, mpsc::UnboundedReceiver<(u64, PushInfo)>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        (Self { tx, queued }, rx)
    }

    /// A push taken off the queue.
    pub(super) fn took(&self, info: &PushInfo) {
        self.queued.fetch_sub(payload_size(info), Ordering::Relaxed);
    }
}

/// Opens `addr`'s pub/sub connection, its pushes going to `queue` tagged with `id`.
pub(super) async fn connect(
    router: &Router,
    addr: &str,
    id: u64,
    queue: &Queue,
) -> Result<Shard, String> {
    let overflow = Arc::new(AtomicBool::new(false));
    let (tx, queued, full) = (queue.tx.clone(), queue.queued.clone(), overflow.clone());
    let sender = move |info: PushInfo| -> Result<(), ()> {
        let size = payload_size(&info);
        if queued.fetch_add(size, Ordering::Relaxed) + size > QUEUE_BYTES {
            queued.fetch_sub(size, Ordering::Relaxed);
            full.store(true, Ordering::Relaxed);
            return Err(());
        }
        tx.send((id, info)).map_err(|_| ())
    };
    let timeout = router.timeout();
    let client = redis::Client::open(router.pubsub_info(addr)?).map_err(|e| e.to_string())?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(None)
        .set_push_sender(sender);
    let conn = tokio::time::timeout(
        timeout,
        client.get_multiplexed_async_connection_with_config(&config),
    )
    .await
    .map_err(|_| "timed out".to_owned())?
    .map_err(|e| e.to_string())?;
    Ok(Shard {
        id,
        conn,
        subscribed: HashSet::new(),
        overflow,
    })
}

/// What a push costs the queue (its strings, plus the frame around them).
fn payload_size(info: &PushInfo) -> usize {
    info.data
        .iter()
        .map(|v| match v {
            Value::BulkString(b) => b.len(),
            _ => 16,
        })
        .sum::<usize>()
        + 64
}

pub(super) fn bytes_of(v: Option<&Value>) -> Option<&[u8]> {
    match v? {
        Value::BulkString(b) => Some(b),
        _ => None,
    }
}

/// `PING`; `true` only for its `PONG` within `timeout`.
pub(super) async fn ping(mut conn: MultiplexedConnection, timeout: Duration) -> bool {
    let pong =
        tokio::time::timeout(timeout, redis::cmd("PING").query_async::<Value>(&mut conn)).await;
    matches!(pong, Ok(Ok(Value::SimpleString(ref s))) if s == "PONG")
}

/// Why an `SSUBSCRIBE` did not confirm.
#[derive(Debug)]
pub(super) enum Refused {
    /// The slot is served elsewhere (`MOVED`/`ASK`): read the map again.
    Moved,
    /// Anything else: the connection is out of step or broken.
    Broken(String),
}

/// `SSUBSCRIBE` one channel; `Ok` only for its own confirmation.
pub(super) async fn ssubscribe(
    mut conn: MultiplexedConnection,
    name: String,
    timeout: Duration,
) -> Result<(), Refused> {
    let cmd = redis::cmd("SSUBSCRIBE").arg(&name).to_owned();
    match tokio::time::timeout(timeout, cmd.query_async::<Value>(&mut conn)).await {
        Ok(Ok(Value::Push {
            kind: PushKind::SSubscribe,
            data,
        })) if bytes_of(data.first()) == Some(name.as_bytes()) => Ok(()),
        Ok(Ok(other)) => Err(Refused::Broken(format!("not our confirmation: {other:?}"))),
        Ok(Err(e)) if e.redirect_node().is_some() => Err(Refused::Moved),
        Ok(Err(e)) => Err(Refused::Broken(e.to_string())),
        Err(_) => Err(Refused::Broken("SSUBSCRIBE timed out".to_owned())),
    }
}

/// `SUNSUBSCRIBE` one channel; `true` only for its own confirmation.
pub(super) async fn sunsubscribe(
    mut conn: MultiplexedConnection,
    name: String,
    timeout: Duration,
) -> bool {
    let cmd = redis::cmd("SUNSUBSCRIBE").arg(&name).to_owned();
    matches!(
        tokio::time::timeout(timeout, cmd.query_async::<Value>(&mut conn)).await,
        Ok(Ok(Value::Push { kind: PushKind::SUnsubscribe, ref data }))
            if bytes_of(data.first()) == Some(name.as_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_retry_waits_longer_after_each_failure_up_to_the_bound() {
        let mut retry = Retry::new();
        assert!(!retry.waiting(), "nothing to wait for before a failure");
        let mut waits = Vec::new();
        for _ in 0..12 {
            let before = retry.next();
            retry.fail();
            assert!(retry.waiting());
            tokio::time::advance(before).await;
            assert!(!retry.waiting(), "a wait is at most its backoff");
            waits.push(retry.next());
        }
        assert!(waits.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(waits.last(), Some(&Duration::from_secs(5)));
        retry.fail();
        retry.cut();
        assert!(!retry.waiting(), "cut ends the wait");
        assert_eq!(
            retry.next(),
            Duration::from_secs(5),
            "and keeps the backoff"
        );
    }

    #[test]
    fn a_push_costs_its_strings_and_a_frame() {
        let info = PushInfo {
            kind: PushKind::SMessage,
            data: vec![
                Value::BulkString(b"live".to_vec()),
                Value::BulkString(vec![0; 1000]),
            ],
        };
        assert_eq!(payload_size(&info), 1004 + 64);
    }
}
