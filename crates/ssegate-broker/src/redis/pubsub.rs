//! The node's one pub/sub connection.
//!
//! # Bounding rule
//!
//! **What the node holds for subscription changes is bounded by its channels, not by how
//! often they change.** The hub tells this task when a channel gains its first local
//! subscriber or loses its last one ([`Observer`]); that only marks the channel in a set
//! of *changed* channels and wakes the task. The task then compares each marked channel
//! with the hub (does it have subscribers now?) and with what it is subscribed to, and
//! sends one `SUBSCRIBE` and one `UNSUBSCRIBE` for the whole difference (in batches of
//! [`BATCH`] names). A channel subscribed and released before the task looks costs
//! nothing upstream; a client churning streams over fresh channels makes the set no
//! larger than the distinct channels it touched during one round trip, and new channels
//! keep getting their subscriptions within one round trip of the churn.
//!
//! Every message is decoded once and its `Arc` handed to the hub.
//!
//! Nothing here has to be perfectly timed, because live delivery checks itself (each event
//! carries its channel's previous id, and a stream that sees a hole reads history): after
//! a SUBSCRIBE is confirmed the channel's streams are told to re-read history from their
//! cursors (anything published before the subscription was active comes from there), and
//! after a reconnect every stream on the node is. Any failure (a lost connection after a
//! Redis restart or `CLIENT KILL TYPE pubsub`, a refused or timed-out (UN)SUBSCRIBE) drops
//! the connection and reconnects after a jittered exponential backoff; a subscription is
//! never assumed that Redis did not confirm.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::PubSubSink;
use ssegate_core::ChannelName;
use tokio::sync::Notify;

use super::codec;
use super::keys::Keys;
use super::primary::Primary;
use crate::error::BrokerOp;
use crate::hub::{Hub, HubObserver};
use crate::lock;

/// Channel names per (UN)SUBSCRIBE command: a re-subscribe after a reconnect over many
/// channels goes out in commands of this size.
const BATCH: usize = 512;

/// Channels whose local subscription changed since the task last looked.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    changed: Mutex<HashSet<ChannelName>>,
    pub(crate) wake: Notify,
}

impl Changes {
    fn mark(&self, channel: &ChannelName) {
        let inserted = lock(&self.changed).insert(channel.clone());
        if inserted {
            // A permit is stored when the task is busy, so no change goes unseen.
            self.wake.notify_one();
        }
    }

    pub(crate) fn take(&self) -> HashSet<ChannelName> {
        std::mem::take(&mut *lock(&self.changed))
    }

    /// How many channels wait to be looked at (for tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        lock(&self.changed).len()
    }
}

/// Feeds hub subscription changes to the pub/sub task.
#[derive(Debug)]
pub(crate) struct Observer {
    changes: Arc<Changes>,
}

impl Observer {
    pub(crate) fn new(changes: Arc<Changes>) -> Self {
        Self { changes }
    }
}

impl HubObserver for Observer {
    fn first_subscriber(&self, channel: &ChannelName) {
        self.changes.mark(channel);
    }

    fn last_unsubscribed(&self, channel: &ChannelName) {
        self.changes.mark(channel);
    }
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The pub/sub task, for the node's lifecycle to run (see `Broker::background`).
pub(crate) fn task(
    primary: Arc<Primary>,
    hub: Hub,
    keys: Keys,
    changes: Arc<Changes>,
    timeout: Duration,
    stream_ttl_ms: u64,
    min_replicas: u32,
) -> crate::Background {
    let task = Task {
        primary,
        hub,
        keys,
        changes,
        timeout,
        stream_ttl_ms,
        min_replicas,
        guard: redis::Script::new(super::scripts::GUARD),
        subscribed: HashSet::new(),
    };
    let follow = task.primary.clone();
    Box::pin(async move {
        // The sentinel watcher (nothing for a fixed address) beside the pub/sub task.
        futures_util::future::join(task.run(), follow.watch_sentinels()).await;
    })
}

fn jittered(d: Duration) -> Duration {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
    Duration::from_millis(ms / 2 + fastrand::u64(0..=ms / 2))
}

/// The retry rule of every pub/sub connection and subscription attempt (one primary's
/// connection here; the cluster's per primary and its reconcile): from [`BACKOFF_MIN`],
/// doubling per failure up to [`BACKOFF_MAX`], each wait jittered into its upper half so
/// that nodes which lost Redis together do not come back together.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(crate) const fn new() -> Self {
        Self { next: BACKOFF_MIN }
    }

    /// The wait before the next attempt; the one after it is twice as long.
    pub(crate) fn fail(&mut self) -> Duration {
        let wait = jittered(self.next);
        self.next = (self.next * 2).min(BACKOFF_MAX);
        wait
    }

    /// The (unjittered) wait the next failure gets, for log lines.
    pub(crate) const fn next(&self) -> Duration {
        self.next
    }

    /// After a success: the next failure waits the least again.
    pub(crate) const fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

/// Why a connection was given up (for the log line).
#[derive(Debug)]
enum Lost {
    Connect(String),
    Command(&'static str, String),
    Closed,
    /// The primary's generation ended (a failover, or another connection's failure).
    Moved,
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "connecting failed: {e}"),
            Self::Command(op, e) => write!(f, "{op} failed: {e}"),
            Self::Closed => f.write_str("connection closed"),
            Self::Moved => f.write_str("the Redis primary moved or was lost"),
        }
    }
}

struct Task {
    /// Where to connect; the connection follows its generation (see `primary`).
    primary: Arc<Primary>,
    hub: Hub,
    keys: Keys,
    changes: Arc<Changes>,
    timeout: Duration,
    /// The streams' expiry (for a stream the guard has to create).
    stream_ttl_ms: u64,
    /// `SSEGATE_PUBLISH_MIN_REPLICAS`, checked against the primary at every connect.
    min_replicas: u32,
    /// `scripts::GUARD`, run after every reconnect.
    guard: redis::Script,
    /// Channels Redis confirmed on the current connection.
    subscribed: HashSet<ChannelName>,
}

impl Task {
    async fn run(mut self) {
        let mut backoff = Backoff::new();
        let mut connected_before = false;
        // Subscribed once, so that a switch announced before the connection was lost
        // still ends the backoff below (at worst an old one skips one backoff).
        let mut switched = self.primary.switched();
        loop {
            let lost = self.connection(&mut backoff, &mut connected_before).await;
            self.subscribed.clear();
            if matches!(lost, Lost::Moved) {
                // Follow the primary at once; a failure to reach it backs off below.
                tracing::info!(reason = %lost, "pub/sub connection follows the primary");
                tokio::time::sleep(jittered(BACKOFF_MIN)).await;
                continue;
            }
            broker_error(BrokerOp::Pubsub);
            tracing::warn!(reason = %lost, retry_in = ?backoff.next(), "pub/sub connection given up; reconnecting");
            // A new primary (a sentinel announced it) ends the wait: follow it at once.
            tokio::select! {
                () = tokio::time::sleep(backoff.fail()) => {}
                _ = switched.changed() => {}
            }
            switched.borrow_and_update();
        }
    }

    /// One connection, from connecting until it is lost. `backoff` is reset once the
    /// connection carries every wanted subscription.
    async fn connection(&mut self, backoff: &mut Backoff, connected_before: &mut bool) -> Lost {
        let mut moved = self.primary.watch();
        let (client, generation) = match self.primary.client().await {
            Ok(found) => found,
            Err(e) => return Lost::Connect(e.to_string()),
        };
        // A generation that ended while we resolved: start over with the next one.
        if *moved.borrow_and_update() != generation {
            return Lost::Moved;
        }
        let conn = match tokio::time::timeout(self.timeout, client.get_async_pubsub()).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                self.primary.unreachable(generation, &e);
                return Lost::Connect(e.to_string());
            }
            Err(_) => {
                self.primary
                    .unreachable(generation, &"pub/sub connect timed out");
                return Lost::Connect("timed out".into());
            }
        };
        if let Err(lost) = self.on_connect(&client, *connected_before).await {
            return lost;
        }
        let lost = self
            .serve(conn, backoff, connected_before, &mut moved)
            .await;
        // Until the next connection's resync, live delivery misses events: no resume is
        // served from what came live before.
        self.hub.forget_recent_all();
        if !matches!(lost, Lost::Moved) {
            // A lost pub/sub connection is as good a sign as any that the primary moved.
            self.primary.lost(generation, &lost);
        }
        lost
    }

    async fn serve(
        &mut self,
        conn: redis::aio::PubSub,
        backoff: &mut Backoff,
        connected_before: &mut bool,
        moved: &mut tokio::sync::watch::Receiver<u64>,
    ) -> Lost {
        let (mut sink, mut stream) = conn.split();
        // Everything wanted now, from the hub itself: the changes marked so far are
        // covered by it.
        self.changes.take();
        let wanted = self.hub.channels();
        if let Err(lost) = self.send(&mut sink, Op::Subscribe, &wanted).await {
            return lost;
        }
        self.subscribed.extend(wanted.iter().cloned());
        if *connected_before {
            metrics::counter!(ssegate_core::metric_names::PUBSUB_RECONNECTS).increment(1);
            tracing::info!(
                channels = wanted.len(),
                "pub/sub reconnected; catching streams up"
            );
        }
        // Whatever was published while we were not subscribed is in the streams.
        self.hub.resync_all();
        *connected_before = true;
        backoff.reset();

        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else { return Lost::Closed };
                    deliver(&self.hub, &self.keys, msg.get_channel_name(), msg.get_payload_bytes());
                }
                () = self.changes.wake.notified() => {
                    if let Err(lost) = self.apply_changes(&mut sink).await {
                        return lost;
                    }
                }
                _ = moved.changed() => return Lost::Moved,
            }
        }
    }

    /// At a (re)connect, on one command connection: after a reconnect, guard the stream
    /// ids; every time, check the primary's replicas. The guard must succeed before the
    /// connection serves (else a lost event's id could be handed to a new event that its
    /// holders would skip): a failure gives the connection up, and the next one guards
    /// again. The replica check is advice, logged.
    async fn on_connect(&self, client: &redis::Client, reconnect: bool) -> Result<(), Lost> {
        let newest = if reconnect {
            self.hub.newest_ids()
        } else {
            Vec::new()
        };
        if newest.is_empty() && self.min_replicas == 0 {
            return Ok(());
        }
        let config = self.primary.connection_config();
        let conn = client.get_multiplexed_async_connection_with_config(&config);
        let mut conn = match tokio::time::timeout(self.timeout, conn).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(Lost::Connect(e.to_string())),
            Err(_) => return Err(Lost::Connect("timed out".into())),
        };
        if !newest.is_empty() {
            self.raise_ids(&mut conn, &newest).await?;
        }
        if self.min_replicas > 0 {
            self.check_replicas(&mut conn).await;
        }
        Ok(())
    }

    /// Warns when the primary has fewer replicas than publishes wait for: every publish
    /// would be answered 504 until more connect.
    async fn check_replicas(&self, conn: &mut redis::aio::MultiplexedConnection) {
        let mut cmd = redis::cmd("INFO");
        cmd.arg("replication");
        if let Ok(Ok(text)) =
            tokio::time::timeout(self.timeout, cmd.query_async::<String>(conn)).await
        {
            let replicas = text
                .lines()
                .find_map(|l| l.strip_prefix("connected_slaves:"))
                .and_then(|n| n.trim().parse::<u32>().ok())
                .unwrap_or(0);
            if replicas < self.min_replicas {
                tracing::warn!(
                    replicas,
                    min_replicas = self.min_replicas,
                    "the Redis primary has fewer replicas than SSEGATE_PUBLISH_MIN_REPLICAS: publishes are answered 504 until enough confirm"
                );
            }
        }
    }

    /// After a reconnect: an event this node delivered that the store lost is marked lost
    /// (a cursor before it, or at it, is a gap) and its id is never reused (see
    /// `scripts::GUARD`). In batches of [`BATCH`] channels.
    async fn raise_ids(
        &self,
        conn: &mut redis::aio::MultiplexedConnection,
        newest: &[(ChannelName, ssegate_core::EntryId)],
    ) -> Result<(), Lost> {
        let run = async {
            let mut raised = 0i64;
            for batch in newest.chunks(BATCH) {
                let mut inv = self.guard.prepare_invoke();
                inv.arg(self.stream_ttl_ms)
                    .arg(super::scripts::MAX_LOST_REGIONS);
                for (ch, id) in batch {
                    inv.key(self.keys.stream(ch))
                        .key(self.keys.meta(ch))
                        .arg(id.to_string());
                }
                raised += inv.invoke_async::<i64>(&mut *conn).await?;
            }
            Ok::<_, redis::RedisError>(raised)
        };
        match tokio::time::timeout(self.timeout * 4, run).await {
            Ok(Ok(0)) => Ok(()),
            Ok(Ok(raised)) => {
                tracing::warn!(
                    streams = raised,
                    "streams lacked events this node delivered (a failover lost them): a cursor before or at them is answered sync-required, their ids are not reused"
                );
                Ok(())
            }
            Ok(Err(e)) => Err(Lost::Command("guarding stream ids", e.to_string())),
            Err(_) => Err(Lost::Command("guarding stream ids", "timed out".into())),
        }
    }

    /// Brings the subscriptions in line with the hub for every channel marked changed.
    async fn apply_changes(&mut self, sink: &mut PubSubSink) -> Result<(), Lost> {
        let mut add = Vec::new();
        let mut remove = Vec::new();
        for ch in self.changes.take() {
            match (self.hub.has_subscribers(&ch), self.subscribed.contains(&ch)) {
                (true, false) => add.push(ch),
                (false, true) => remove.push(ch),
                _ => {}
            }
        }
        self.send(sink, Op::Subscribe, &add).await?;
        for ch in add {
            // Events published before the subscription was active.
            self.hub.resync(&ch);
            self.subscribed.insert(ch);
        }
        self.send(sink, Op::Unsubscribe, &remove).await?;
        for ch in &remove {
            self.subscribed.remove(ch);
        }
        Ok(())
    }

    /// Sends one (UN)SUBSCRIBE per [`BATCH`] channels and waits for Redis to confirm each.
    async fn send(
        &self,
        sink: &mut PubSubSink,
        op: Op,
        channels: &[ChannelName],
    ) -> Result<(), Lost> {
        for batch in channels.chunks(BATCH) {
            let names: Vec<String> = batch.iter().map(|c| self.keys.live(c)).collect();
            let res = match op {
                Op::Subscribe => tokio::time::timeout(self.timeout, sink.subscribe(&names)).await,
                Op::Unsubscribe => {
                    tokio::time::timeout(self.timeout, sink.unsubscribe(&names)).await
                }
            };
            match res {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(Lost::Command(op.name(), e.to_string())),
                Err(_) => return Err(Lost::Command(op.name(), "timed out".into())),
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Subscribe,
    Unsubscribe,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Self::Subscribe => "SUBSCRIBE",
            Self::Unsubscribe => "UNSUBSCRIBE",
        }
    }
}

pub(crate) fn broker_error(op: BrokerOp) {
    use ssegate_core::metric_names::{BROKER_ERRORS, LabelValue};
    metrics::counter!(BROKER_ERRORS, BrokerOp::LABEL => op.as_str()).increment(1);
}

pub(crate) fn deliver(hub: &Hub, keys: &Keys, live: &str, payload: &[u8]) {
    let Some(channel) = keys.channel_of_live(live) else {
        return;
    };
    match codec::live_message(channel.clone(), payload) {
        Ok(event) => {
            crate::trace::delivered(&event, hub.subscriber_count(&event.channel));
            hub.send(std::sync::Arc::new(event));
        }
        Err(e) => {
            // Never guess: the streams read this channel's history instead.
            tracing::warn!(error = %e, %channel, "undecodable live message");
            hub.resync(&channel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_bound_with_jitter_and_resets() {
        let mut b = Backoff::new();
        let mut expected = BACKOFF_MIN;
        for _ in 0..20 {
            assert_eq!(b.next(), expected);
            let wait = b.fail();
            assert!(
                wait >= expected / 2 && wait <= expected,
                "{wait:?} of {expected:?}"
            );
            expected = (expected * 2).min(BACKOFF_MAX);
        }
        assert_eq!(b.next(), BACKOFF_MAX);
        b.reset();
        assert_eq!(b.next(), BACKOFF_MIN);
    }

    #[test]
    fn changes_coalesce_per_channel() {
        let changes = Arc::new(Changes::default());
        let obs = Observer::new(changes.clone());
        let a = ChannelName::new("a").unwrap();
        for _ in 0..1000 {
            obs.first_subscriber(&a);
            obs.last_unsubscribed(&a);
        }
        assert_eq!(changes.len(), 1);
        assert_eq!(changes.take().len(), 1);
        assert_eq!(changes.len(), 0);
    }
}
