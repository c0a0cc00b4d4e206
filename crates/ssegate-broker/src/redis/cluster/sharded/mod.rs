//! Sharded pub/sub on Redis Cluster: `SSUBSCRIBE` on the primary that owns each channel's
//! slot, with the node's own registry of what it wants.
//!
//! # Bounding rule
//!
//! **One pub/sub connection per primary in the slot map, one registry entry per channel
//! with local subscribers, and at most [`link::QUEUE_BYTES`] of received messages waiting**
//! ([`link`]). A channel is subscribed with its own `SSUBSCRIBE` (one channel per command,
//! so two slots never meet in one command: `CROSSSLOT` would refuse both), pipelined on
//! the primary's connection, at most [`IN_FLIGHT`] at once. Subscription changes are
//! coalesced per channel exactly as in `pubsub` ([`Changes`]). A connection that carries
//! nothing to a node that is no longer a primary is closed at the next reconcile, and so
//! is the backoff record of such a node: after any number of failovers the task holds
//! what the current map names, no more.
//!
//! # Recovery rule
//!
//! Nothing that Redis or redis-rs does to a subscription is trusted to be put right by
//! itself. Redis sends `sunsubscribe` when a slot moves (a failover, a migration);
//! redis-rs neither restores that nor a subscription on a primary that died. So:
//!
//! - a `sunsubscribe` the node did not ask for forgets that channel's subscription;
//! - a connection that breaks, fails a `PING` (every [`RECONCILE_EVERY`]), or answers a
//!   command with anything but its own confirmation is dropped with every subscription on
//!   it (redis-rs matches a pushed `sunsubscribe` to the oldest command in flight, so a
//!   reply that is not ours means the connection is out of step);
//! - every [`RECONCILE_EVERY`], after the slot map changes, and after any of the above,
//!   every wanted channel is compared with where it is subscribed and the slot map's
//!   owner, and moved; before a channel is subscribed (again) the guard runs for it (an
//!   event this node delivered that the new primary lacks is recorded lost, its id never
//!   reused), and after the subscription is confirmed its streams re-read history from
//!   their cursors.
//!
//! A reconcile that cannot finish (a primary unreachable, the guard refused) is retried
//! after a backoff ([`Retry`], 100 ms doubling to 5 s), not at every wake-up of the
//! task: a message rate of thousands per second must not become as many walks over every
//! channel and script calls to a failing primary. A new slot map ends the wait at once,
//! because it is new information (where the channels live now).
//!
//! Between a lost subscription and its replacement, live delivery's `prev` self-check and
//! the re-read cover what was published.
//!
//! # Layout
//!
//! - `mod.rs`: the task: pushes, changes, the reconcile and its backoff, subscribing.
//! - [`link`]: one primary's connection, the push queue, [`Retry`] (the wait after
//!   failures, of a primary that is down and of the reconcile), and the commands that
//!   count only on their own confirmation.

mod link;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{PushInfo, PushKind};
use ssegate_core::ChannelName;

use super::{Call, Lua, Request, Resend, Router, by_slot, slots};
use crate::error::BrokerOp;
use crate::hub::Hub;
use crate::redis::keys::Keys;
use crate::redis::pubsub::{Changes, broker_error, deliver};
use link::{Queue, Refused, Retry, Shard, bytes_of};

/// How often subscriptions are reconciled with the slot map, and connections pinged.
pub(crate) const RECONCILE_EVERY: Duration = Duration::from_secs(1);

/// Commands in flight at once on one connection while (un)subscribing.
const IN_FLIGHT: usize = 64;

/// `send` for every channel, at most [`IN_FLIGHT`] at once; the replies in their order.
async fn pipelined<R, F: Future<Output = R>>(
    chans: &[ChannelName],
    send: impl Fn(&ChannelName) -> F,
) -> Vec<R> {
    let mut replies = Vec::with_capacity(chans.len());
    for chunk in chans.chunks(IN_FLIGHT) {
        replies.extend(futures_util::future::join_all(chunk.iter().map(&send)).await);
    }
    replies
}

struct Task {
    router: Arc<Router>,
    hub: Hub,
    keys: Keys,
    changes: Arc<Changes>,
    stream_ttl_ms: u64,
    guard: Lua,
    shards: HashMap<String, Shard>,
    /// Where each subscribed channel is subscribed (a primary's address).
    at: HashMap<ChannelName, String>,
    /// Primaries that could not be reached, and when to try each again.
    down: HashMap<String, Retry>,
    queue: Queue,
    next_id: u64,
    /// Some subscription was lost, or is not yet where it belongs.
    dirty: bool,
    /// No reconcile while this waits (after one that could not finish).
    retry: Retry,
}

/// The sharded pub/sub task, for the node's lifecycle to run.
pub(crate) fn task(
    router: Arc<Router>,
    hub: Hub,
    keys: Keys,
    changes: Arc<Changes>,
    stream_ttl_ms: u64,
) -> crate::Background {
    let (queue, rx) = Queue::new();
    let task = Task {
        router,
        hub,
        keys,
        changes,
        stream_ttl_ms,
        guard: Lua::new(crate::redis::scripts::GUARD),
        shards: HashMap::new(),
        at: HashMap::new(),
        down: HashMap::new(),
        queue,
        next_id: 0,
        dirty: true,
        retry: Retry::new(),
    };
    Box::pin(task.run(rx))
}

impl Task {
    async fn run(mut self, mut rx: tokio::sync::mpsc::UnboundedReceiver<(u64, PushInfo)>) {
        let mut map_changed = self.router.watch();
        let mut tick = tokio::time::interval(RECONCILE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                push = rx.recv() => {
                    let Some((id, info)) = push else { return };
                    self.queue.took(&info);
                    self.on_push(id, info);
                }
                () = self.changes.wake.notified() => self.apply_changes().await,
                _ = map_changed.changed() => {
                    // Where the channels live now: no reason to wait out a backoff.
                    self.dirty = true;
                    self.retry.cut();
                }
                () = tokio::time::sleep_until(self.retry.until()), if self.dirty => {}
                _ = tick.tick() => {
                    if let Err(e) = self.router.refresh().await {
                        tracing::warn!(error = %e, "cannot read the Redis Cluster slot map");
                    }
                    self.ping().await;
                    self.dirty = true;
                }
            }
            self.drop_overflowed();
            if self.dirty && !self.retry.waiting() {
                self.dirty = false;
                self.reconcile().await;
                if self.dirty {
                    self.retry.fail();
                } else {
                    self.retry = Retry::new();
                }
            }
        }
    }

    fn on_push(&mut self, id: u64, info: PushInfo) {
        let Some(addr) = self
            .shards
            .iter()
            .find(|(_, s)| s.id == id)
            .map(|(a, _)| a.clone())
        else {
            return; // a connection already dropped
        };
        match info.kind {
            PushKind::SMessage => {
                if let (Some(name), Some(payload)) =
                    (bytes_of(info.data.first()), bytes_of(info.data.get(1)))
                    && let Ok(name) = std::str::from_utf8(name)
                {
                    deliver(&self.hub, &self.keys, name, payload);
                }
            }
            PushKind::SUnsubscribe => {
                let Some(ch) = bytes_of(info.data.first())
                    .and_then(|n| std::str::from_utf8(n).ok())
                    .and_then(|n| self.keys.channel_of_live(n))
                else {
                    return;
                };
                // Ours are forgotten before they are sent: this one is Redis's (the slot
                // moved), and the channel is placed again.
                if self.at.get(&ch) == Some(&addr) {
                    tracing::info!(channel = %ch, primary = %addr, "Redis ended a sharded subscription (the slot moved)");
                    self.hub.forget_recent(&ch);
                    self.at.remove(&ch);
                    if let Some(s) = self.shards.get_mut(&addr) {
                        s.subscribed.remove(&ch);
                    }
                    self.dirty = true;
                }
            }
            PushKind::Disconnection => self.lose(&addr, "connection closed"),
            _ => {}
        }
    }

    /// Drops the connection to `addr` and forgets its subscriptions.
    fn lose(&mut self, addr: &str, why: &str) {
        let Some(shard) = self.shards.remove(addr) else {
            return;
        };
        broker_error(BrokerOp::Pubsub);
        tracing::warn!(primary = %addr, reason = why, channels = shard.subscribed.len(), "sharded pub/sub connection given up; its channels are subscribed again");
        for ch in &shard.subscribed {
            // Until its resync, live delivery misses events: no resume from before.
            self.hub.forget_recent(ch);
            self.at.remove(ch);
        }
        self.dirty = true;
        // A healthy primary's channels must not wait out a backoff that another (down)
        // primary built up: this loss is new, so the reconcile runs at once.
        self.retry.cut();
    }

    fn drop_overflowed(&mut self) {
        let full: Vec<String> = self
            .shards
            .iter()
            .filter(|(_, s)| s.overflow.load(Ordering::Relaxed))
            .map(|(a, _)| a.clone())
            .collect();
        for addr in full {
            self.lose(&addr, "too many messages waiting");
        }
    }

    /// A `PING` on every connection; one that fails is dropped.
    async fn ping(&mut self) {
        let timeout = self.router.timeout();
        let pings = self.shards.iter().map(|(addr, s)| {
            let ping = link::ping(s.conn.clone(), timeout);
            async move { (addr.clone(), ping.await) }
        });
        for (addr, ok) in futures_util::future::join_all(pings).await {
            if !ok {
                self.lose(&addr, "PING failed");
            }
        }
    }

    /// Subscriptions for the channels marked changed: new ones placed, released ones ended.
    async fn apply_changes(&mut self) {
        let mut add = Vec::new();
        let mut remove: HashMap<String, Vec<ChannelName>> = HashMap::new();
        for ch in self.changes.take() {
            let want = self.hub.has_subscribers(&ch);
            match (want, self.at.get(&ch).cloned()) {
                (true, None) => add.push(ch),
                (false, Some(addr)) => {
                    self.at.remove(&ch);
                    if let Some(s) = self.shards.get_mut(&addr) {
                        s.subscribed.remove(&ch);
                    }
                    remove.entry(addr).or_default().push(ch);
                }
                _ => {}
            }
        }
        for (addr, chans) in remove {
            self.unsubscribe(&addr, &chans).await;
        }
        if !add.is_empty() {
            self.place(add).await;
        }
    }

    /// Every wanted channel where the slot map says it belongs.
    async fn reconcile(&mut self) {
        let Some(map) = self.router.map() else {
            if self.router.refresh().await.is_err() {
                return;
            }
            self.dirty = true;
            return;
        };
        let mut misplaced = Vec::new();
        let mut stale: HashMap<String, Vec<ChannelName>> = HashMap::new();
        for ch in self.hub.channels() {
            let owner = map.owner(slots::slot(&self.keys.live(&ch)));
            match (self.at.get(&ch), owner) {
                (Some(a), Some(o)) if a == o => {}
                (Some(a), _) => {
                    let a = a.clone();
                    self.at.remove(&ch);
                    if let Some(s) = self.shards.get_mut(&a) {
                        s.subscribed.remove(&ch);
                    }
                    stale.entry(a).or_default().push(ch.clone());
                    misplaced.push(ch);
                }
                (None, _) => misplaced.push(ch),
            }
        }
        // Subscribed channels nobody here wants any more (a change not yet applied).
        let unwanted: Vec<ChannelName> = self
            .at
            .keys()
            .filter(|c| !self.hub.has_subscribers(c))
            .cloned()
            .collect();
        for ch in unwanted {
            if let Some(a) = self.at.remove(&ch) {
                if let Some(s) = self.shards.get_mut(&a) {
                    s.subscribed.remove(&ch);
                }
                stale.entry(a).or_default().push(ch);
            }
        }
        for (addr, chans) in stale {
            self.unsubscribe(&addr, &chans).await;
        }
        self.prune(&map);
        if !misplaced.is_empty() {
            self.place(misplaced).await;
        }
    }

    /// Closes connections that carry nothing to nodes that are no longer primaries, and
    /// forgets the backoff of such nodes (see the bounding rule).
    fn prune(&mut self, map: &slots::SlotMap) {
        let primary = |addr: &String| map.primaries().contains(addr);
        self.shards
            .retain(|addr, s| primary(addr) || !s.subscribed.is_empty());
        // A record still waiting is kept whatever the map says: a partial map in a
        // failover may leave the down primary out, and forgetting its backoff there would
        // have the next map send the task to connect to it at once, again and again.
        self.down.retain(|addr, d| primary(addr) || d.waiting());
    }

    /// Subscribes `chans` on their slots' primaries.
    async fn place(&mut self, chans: Vec<ChannelName>) {
        let Some(map) = self.router.map() else {
            self.dirty = true;
            return;
        };
        let mut per: HashMap<String, Vec<ChannelName>> = HashMap::new();
        for ch in chans {
            match map.owner(slots::slot(&self.keys.live(&ch))) {
                Some(o) => per.entry(o.to_owned()).or_default().push(ch),
                None => self.dirty = true,
            }
        }
        for (addr, chans) in per {
            self.subscribe(&addr, chans).await;
        }
    }

    /// The connection to `addr`, opened when needed (not while it backs off).
    async fn shard(&mut self, addr: &str) -> Option<MultiplexedConnection> {
        if let Some(s) = self.shards.get(addr) {
            return Some(s.conn.clone());
        }
        if self.down.get(addr).is_some_and(Retry::waiting) {
            self.dirty = true;
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        match link::connect(&self.router, addr, id, &self.queue).await {
            Ok(shard) => {
                if self.down.remove(addr).is_some() {
                    metrics::counter!(ssegate_core::metric_names::PUBSUB_RECONNECTS).increment(1);
                }
                let conn = shard.conn.clone();
                self.shards.insert(addr.to_owned(), shard);
                Some(conn)
            }
            Err(e) => {
                broker_error(BrokerOp::Pubsub);
                let down = self.down.entry(addr.to_owned()).or_insert_with(Retry::new);
                down.fail();
                tracing::warn!(primary = %addr, error = %e, retry_in = ?down.next(), "cannot open a sharded pub/sub connection");
                self.dirty = true;
                None
            }
        }
    }

    /// Guard, then `SSUBSCRIBE`, then catch the channels' streams up.
    async fn subscribe(&mut self, addr: &str, chans: Vec<ChannelName>) {
        let Some(conn) = self.shard(addr).await else {
            return;
        };
        if let Err(e) = self.guard_ids(&chans).await {
            tracing::warn!(error = %e, "guarding stream ids failed; subscribing again later");
            self.dirty = true;
            return;
        }
        let timeout = self.router.timeout();
        let replies = pipelined(&chans, |ch| {
            link::ssubscribe(conn.clone(), self.keys.live(ch), timeout)
        })
        .await;
        let mut broken = None;
        for (ch, r) in chans.into_iter().zip(replies) {
            match r {
                Ok(()) => {
                    if let Some(s) = self.shards.get_mut(addr) {
                        s.subscribed.insert(ch.clone());
                        self.at.insert(ch.clone(), addr.to_owned());
                    }
                    // Whatever was published before the subscription was active.
                    self.hub.resync(&ch);
                }
                Err(Refused::Moved) => {
                    let _ = self.router.refresh().await;
                    self.dirty = true;
                }
                Err(Refused::Broken(e)) => broken = Some(e),
            }
        }
        if let Some(e) = broken {
            self.lose(addr, &format!("SSUBSCRIBE failed: {e}"));
        }
    }

    async fn unsubscribe(&mut self, addr: &str, chans: &[ChannelName]) {
        let Some(s) = self.shards.get(addr) else {
            return;
        };
        let conn = s.conn.clone();
        let timeout = self.router.timeout();
        let ok = pipelined(chans, |ch| {
            link::sunsubscribe(conn.clone(), self.keys.live(ch), timeout)
        })
        .await;
        if ok.contains(&false) {
            // A subscription we no longer want may linger: start that connection over.
            self.lose(addr, "SUNSUBSCRIBE failed");
        }
    }

    /// The guard (see `scripts::GUARD`) for the channels this node delivered events on,
    /// one script per slot.
    async fn guard_ids(&self, chans: &[ChannelName]) -> Result<(), String> {
        let newest: Vec<_> = chans
            .iter()
            .filter_map(|c| self.hub.newest(c).map(|id| (c.clone(), id)))
            .collect();
        if newest.is_empty() {
            return Ok(());
        }
        let calls: Vec<(u16, Call)> = by_slot(newest, |(c, _)| self.keys.stream(c))
            .into_iter()
            .map(|(slot, group)| {
                let mut call = Call::default();
                call.arg(self.stream_ttl_ms)
                    .arg(crate::redis::scripts::MAX_LOST_REGIONS);
                for (ch, id) in &group {
                    call.key(self.keys.stream(ch))
                        .key(self.keys.meta(ch))
                        .arg(id.to_string());
                }
                (slot, call)
            })
            .collect();
        let mut raised = 0;
        for chunk in calls.chunks(IN_FLIGHT) {
            let runs = chunk.iter().map(|(slot, call)| {
                self.router
                    .run(*slot, Request::Script(&self.guard, call), Resend::Safe)
            });
            for r in futures_util::future::join_all(runs).await {
                let (v, _) = r.map_err(|e| e.to_string())?;
                raised += crate::redis::codec::int(&v).unwrap_or(0);
            }
        }
        if raised > 0 {
            tracing::warn!(
                streams = raised,
                "streams lacked events this node delivered (a failover lost them): a cursor before or at them is answered sync-required, their ids are not reused"
            );
        }
        Ok(())
    }
}
