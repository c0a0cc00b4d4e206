//! The Redis broker: cluster mode. Any number of nodes pointed at one Redis (standalone,
//! behind Sentinel, or a Redis Cluster) form one cluster; Redis is the only shared state.
//!
//! - History: one Redis Stream per channel, trimmed by length and age in the publish
//!   script; ids are the stream's entry ids.
//! - Where commands go ([`exec`]): the primary, a fixed address or found through Sentinel
//!   and followed through failovers (see [`primary`] for which connections are trusted);
//!   or a Redis Cluster, routed by slot ([`cluster`]).
//! - Publishing: one atomic Lua script per request (see [`scripts`]), per slot on a Redis
//!   Cluster ([`publish`]), then `WAIT` for `SSEGATE_PUBLISH_MIN_REPLICAS`.
//! - Live: a pub/sub connection per node (see [`pubsub`]; on a Redis Cluster one per
//!   primary with `SSUBSCRIBE`, see [`cluster::sharded`]) subscribes to the channels that
//!   have local subscribers (reference-counted by the [`Hub`]), decodes each message once
//!   and hands the one `Arc` to every local stream.
//! - Catch-up and replay: the read script, in pages.
//!
//! Every reply is treated as untrusted input; every command has a timeout. An unreachable
//! Redis makes publishes fail (503) while streams stay open and catch up when it returns.
//!
//! # Layout
//!
//! - `mod.rs`: the configuration and the [`Broker`] implementation.
//! - [`exec`]: one primary or a cluster, and what a failed command means.
//! - [`publish`]: the publish script's call, per slot, and its answer.
//! - [`cluster`]: slot routing, the slot map, sharded pub/sub.
//! - [`primary`], [`pubsub`]: the primary and its pub/sub connection (standalone, Sentinel).
//! - [`pooled`]: the pool of command connections to the primary, checked without a round
//!   trip; [`plain`]: such a connection, driven by its user's task.
//! - [`keys`], [`scripts`], [`codec`]: the key layout, the Lua scripts, reply decoding;
//!   [`resp`]: framing and decoding RESP2 replies.

mod cluster;
mod codec;
mod exec;
mod keys;
mod plain;
mod pooled;
pub use pooled::PING_IDLE_AFTER;
mod primary;
mod publish;
mod pubsub;
mod resp;
mod scripts;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool::managed::Timeouts;
use redis::{IntoConnectionInfo, Value};
use ssegate_core::{ChannelName, Epoch, NewEvent};

use crate::clock::SystemClock;
use crate::error::BrokerOp;
use crate::hub::Hub;
use crate::lock;
use crate::memory::StoreLimits;
use crate::{Broker, BrokerError, LiveSubscription, Published, ReadFrom, ReadPage};

use cluster::{Call, Resend};
use codec::BadReply;
use exec::Backend;
use keys::Keys;
use scripts::Scripts;

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`: the primary, or with `sentinels` or
    /// `cluster` only the data nodes' credentials, db and TLS. `None`:
    /// `redis://127.0.0.1:6379`.
    pub url: Option<String>,
    /// Sentinels (`host`, `port`) that name the primary; empty: `url` is the primary.
    pub sentinels: Vec<(String, u16)>,
    /// Seed nodes of a Redis Cluster (`host`, `port`); empty: not a cluster.
    pub cluster: Vec<(String, u16)>,
    /// The primary's name at the sentinels.
    pub master_name: String,
    /// Username at the sentinels.
    pub sentinel_username: Option<String>,
    /// Password at the sentinels.
    pub sentinel_password: Option<String>,
    /// Whether the sentinels are reached over TLS (checked against the same roots as the
    /// data nodes: the system's, or `SSL_CERT_FILE`).
    pub sentinel_tls: bool,
    /// Replicas that must confirm a publish (`WAIT`) before it is acknowledged.
    pub min_replicas: u32,
    /// How long `WAIT` waits for them.
    pub replica_timeout: Duration,
    /// Connections for commands (publishes, history reads); pub/sub has its own.
    pub pool_size: usize,
    /// Prefix of every key, so several deployments can share one Redis.
    pub key_prefix: String,
    /// Upper bound for one command, and for getting a connection.
    pub timeout: Duration,
}

impl RedisConfig {
    /// The most descriptors for Redis connections this configuration holds at once, for
    /// the node's file budget. One primary (fixed or named by sentinels): the command
    /// pool, one each (see `pooled`). A cluster: a command and a pub/sub connection for each of up to
    /// [`CLUSTER_PRIMARIES_BUDGETED`] primaries (a map with more is logged, see
    /// `cluster::Router`), and the publishes' own connections when they `WAIT`. What
    /// either adds briefly (a pub/sub or sentinel connection, a reconnect that overlaps
    /// the connection being closed) is the caller's margin.
    pub fn connections(&self) -> usize {
        if self.cluster.is_empty() {
            return self.pool_size;
        }
        let own = if self.min_replicas > 0 {
            self.pool_size
        } else {
            0
        };
        2 * CLUSTER_PRIMARIES_BUDGETED + own
    }
}

/// Primaries of a Redis Cluster that a node's file budget keeps descriptors for.
pub const CLUSTER_PRIMARIES_BUDGETED: usize = 32;

/// How long a node trusts the epoch it read on a Redis Cluster, where the scripts cannot
/// read it (it is in another slot than the channel's keys).
const EPOCH_RECHECK: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Inner {
    backend: Backend,
    keys: Keys,
    scripts: Scripts,
    history: StoreLimits,
    config: RedisConfig,
    hub: Hub,
    /// The epoch last seen, and when it was read; refreshed from every script reply (one
    /// primary) or every [`EPOCH_RECHECK`] (a cluster).
    epoch: Mutex<Option<(Epoch, Instant)>>,
    clock: SystemClock,
    /// The pub/sub task until [`Broker::background`] hands it out.
    pubsub: crate::BackgroundSlot,
}

/// The Redis broker. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RedisBroker {
    inner: Arc<Inner>,
}

/// How long a channel's keys outlive their newest event: one more max age, so that the
/// ids they keep tell a returning cursor whether it missed anything.
fn stream_ttl_ms(history: &StoreLimits) -> u64 {
    ms(history.max_age).saturating_mul(2).max(1)
}

/// Timeouts a resolution through `n` sentinels may take: two per sentinel, and the
/// connection itself.
fn sentinel_rounds(n: usize) -> u32 {
    u32::try_from(n.min(16)).unwrap_or(16) * 2 + 1
}

fn bad(e: BadReply) -> BrokerError {
    BrokerError::Internal(e.to_string())
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl RedisBroker {
    /// Builds the connections' managers and starts nothing yet (the pub/sub task is
    /// handed out by [`Broker::background`]). Does not wait for Redis: a node may start
    /// before Redis does (it is not ready until Redis answers).
    pub fn connect(config: RedisConfig, history: StoreLimits) -> Result<Self, BrokerError> {
        let keys = Keys::new(&config.key_prefix);
        let changes = Arc::new(pubsub::Changes::default());
        let hub = Hub::new(
            history.live_backlog,
            history.live_backlog_bytes,
            Some(Arc::new(pubsub::Observer::new(changes.clone()))),
        );
        let (backend, task) = if config.cluster.is_empty() {
            let primary = Arc::new(primary::Primary::new(&config)?);
            let pool = pooled::Pool::builder(pooled::Manager(primary.clone()))
                .max_size(config.pool_size)
                .timeouts(Timeouts {
                    wait: Some(config.timeout),
                    // Through Sentinel a new connection may first ask each sentinel (its
                    // address, then the primary's ROLE, each within the timeout).
                    create: Some(config.timeout * sentinel_rounds(config.sentinels.len())),
                    recycle: Some(config.timeout),
                })
                .runtime(deadpool::Runtime::Tokio1)
                .build()
                .map_err(|e| BrokerError::Internal(format!("cannot build the Redis pool: {e}")))?;
            let task = pubsub::task(
                primary.clone(),
                hub.clone(),
                keys.clone(),
                changes,
                config.timeout,
                stream_ttl_ms(&history),
                config.min_replicas,
            );
            (Backend::Single { pool, primary }, task)
        } else {
            // rustls needs a process-wide crypto provider for rediss:// (see `primary`).
            let _ = rustls::crypto::ring::default_provider().install_default();
            let url = config.url.as_deref().unwrap_or("redis://127.0.0.1:6379");
            let template = url
                .into_connection_info()
                .map_err(|e| BrokerError::Internal(format!("invalid Redis URL: {e}")))?;
            let router = Arc::new(cluster::Router::new(
                &config.cluster,
                template,
                config.timeout,
                (config.min_replicas > 0).then_some(config.pool_size),
            ));
            let task = cluster::sharded::task(
                router.clone(),
                hub.clone(),
                keys.clone(),
                changes,
                stream_ttl_ms(&history),
            );
            (Backend::Cluster(router), task)
        };
        Ok(Self {
            inner: Arc::new(Inner {
                backend,
                keys,
                scripts: Scripts::new(),
                history,
                config,
                hub,
                epoch: Mutex::new(None),
                clock: SystemClock,
                pubsub: crate::BackgroundSlot::new(task),
            }),
        })
    }

    /// This node's fan-out hub, which the pub/sub task feeds.
    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    fn remember_epoch(&self, epoch: Epoch) {
        let mut cached = lock(&self.inner.epoch);
        if cached.is_some_and(|(e, _)| e != epoch) {
            tracing::warn!(%epoch, "the Redis history epoch changed: Redis lost its data");
        }
        *cached = Some((epoch, Instant::now()));
    }

    /// The scripts' first key and argument: the epoch key and a fresh candidate (one
    /// primary), or a key of the call's slot and `=<epoch>` (a cluster).
    async fn epoch_head(&self, call: &mut Call, slot_key: String) -> Result<(), BrokerError> {
        if self.inner.backend.is_cluster() {
            let epoch = self.epoch().await?;
            call.key(slot_key).arg(format!("={epoch}"));
        } else {
            call.key(self.inner.keys.epoch())
                .arg(Epoch::random().to_string());
        }
        Ok(())
    }

    /// On a Redis Cluster: reads the epoch every [`EPOCH_RECHECK`], traffic or not, so
    /// that a flushed epoch key is put back before a node that starts afterwards would
    /// create a new epoch.
    async fn keep_epoch(self) {
        // At once first: a node that has never read it cannot serve while its shard is
        // down.
        loop {
            if let Err(e) = self.reread_epoch().await {
                tracing::debug!(error = %e, "reading the epoch failed; trying again");
            }
            tokio::time::sleep(EPOCH_RECHECK).await;
        }
    }

    /// Reads the epoch from Redis (on a cluster putting back the known one if its key is
    /// gone).
    async fn reread_epoch(&self) -> Result<Epoch, BrokerError> {
        let cached = *lock(&self.inner.epoch);
        // On a cluster, a node that knows the epoch puts it back when its key is gone
        // (its shard was flushed): that shard's channels signal their own losses (see
        // docs/operations.md), and the others lost nothing.
        let key = self.inner.keys.epoch();
        let candidate = cached.map_or_else(Epoch::random, |(e, _)| e).to_string();
        let reread = async {
            let set = redis::cmd("SET")
                .arg(&key)
                .arg(&candidate)
                .arg("NX")
                .to_owned();
            let _: Value = self.command(BrokerOp::Epoch, &key, &set).await?;
            let get = redis::cmd("GET").arg(&key).to_owned();
            let got: Option<String> = self.command(BrokerOp::Epoch, &key, &get).await?;
            codec::epoch(got.as_deref().unwrap_or_default()).map_err(bad)
        };
        match (reread.await, cached) {
            (Ok(epoch), _) => {
                self.remember_epoch(epoch);
                Ok(epoch)
            }
            // A re-check (cluster only) that fails keeps the epoch known: while the epoch
            // key's shard fails over, channels on the other shards must go on. Only a
            // successful read can change the epoch; the next re-check is in
            // EPOCH_RECHECK, so a down shard costs one timeout per node per interval.
            (Err(e), Some((known, _))) => {
                tracing::warn!(error = %e, "cannot re-check the epoch; keeping the known one");
                self.remember_epoch(known);
                Ok(known)
            }
            (Err(e), None) => Err(e),
        }
    }

    async fn command<T: redis::FromRedisValue>(
        &self,
        op: BrokerOp,
        slot_key: &str,
        cmd: &redis::Cmd,
    ) -> Result<T, BrokerError> {
        self.inner
            .backend
            .command(op, self.inner.config.timeout, slot_key, cmd)
            .await
    }
}

#[async_trait::async_trait]
impl Broker for RedisBroker {
    fn kind(&self) -> &'static str {
        "redis"
    }

    /// The node's pub/sub connection(s); on a Redis Cluster also the epoch's keeper.
    fn background(&self) -> Option<crate::Background> {
        let task = self.inner.pubsub.take()?;
        if !self.inner.backend.is_cluster() {
            return Some(task);
        }
        let me = self.clone();
        Some(Box::pin(async move {
            futures_util::future::join(task, me.keep_epoch()).await;
        }))
    }

    async fn epoch(&self) -> Result<Epoch, BrokerError> {
        let cached = *lock(&self.inner.epoch);
        // On a cluster the keeper re-reads it every EPOCH_RECHECK: a request reads it
        // itself only when the keeper has not (succeeded or failed) for two of those, so
        // that requests do not wait for a down epoch shard.
        if let Some((e, at)) = cached
            && (!self.inner.backend.is_cluster() || at.elapsed() < EPOCH_RECHECK * 2)
        {
            return Ok(e);
        }
        self.reread_epoch().await
    }
    async fn publish(
        &self,
        events: Vec<NewEvent>,
        idempotency_key: Option<&str>,
    ) -> Result<Published, BrokerError> {
        publish::publish(self, events, idempotency_key).await
    }

    fn subscribe(&self, channel: &ChannelName) -> LiveSubscription {
        self.inner.hub.subscribe(channel)
    }

    async fn read(
        &self,
        channel: &ChannelName,
        from: ReadFrom,
        limit: usize,
    ) -> Result<ReadPage, BrokerError> {
        let keys = &self.inner.keys;
        let mut call = Call::default();
        self.epoch_head(&mut call, keys.meta(channel)).await?;
        call.key(keys.stream(channel)).key(keys.meta(channel));
        match from {
            ReadFrom::Oldest => call.arg("oldest").arg("0-0"),
            ReadFrom::After(id) => call.arg("after").arg(id.to_string()),
            ReadFrom::AfterShown(id) => call.arg("shown").arg(id.to_string()),
        };
        // The evidence of a loss is the newest id any stream here saw on the channel, not
        // only this one's cursor: a region recorded up to the cursor alone would grow when
        // the guard or another stream adds a later lost event, and this stream, already
        // told, would be told again.
        // From the oldest (where a fresh stream learns its start), the node's newest is
        // the evidence too: a store that lacks it lost it in a failover no guard has
        // reported yet, and the start must be after the loss, not before it.
        let newest = self.inner.hub.newest(channel);
        let seen = match from {
            ReadFrom::AfterShown(id) => newest.map_or(id, |n| n.max(id)),
            ReadFrom::Oldest => newest.unwrap_or(ssegate_core::EntryId::ZERO),
            ReadFrom::After(_) => ssegate_core::EntryId::ZERO,
        };
        call.arg(limit)
            .arg(stream_ttl_ms(&self.inner.history))
            .arg(scripts::MAX_LOST_REGIONS)
            .arg(seen.to_string());
        let (reply, _) = self
            .inner
            .backend
            .script(
                BrokerOp::Read,
                self.inner.config.timeout,
                &keys.stream(channel),
                &self.inner.scripts.read,
                &call,
                Resend::Safe,
            )
            .await
            .map_err(exec::Failed::unavailable)?;
        let parts = codec::array(&reply).map_err(bad)?;
        let [epoch, last, start, gap, entries] = parts else {
            return Err(bad(BadReply("read reply")));
        };
        let epoch = codec::epoch(codec::text(epoch).map_err(bad)?).map_err(bad)?;
        if !self.inner.backend.is_cluster() {
            self.remember_epoch(epoch);
        }
        let last = codec::entry_id(codec::text(last).map_err(bad)?).map_err(bad)?;
        let start = codec::entry_id(codec::text(start).map_err(bad)?).map_err(bad)?;
        let gap = codec::int(gap).map_err(bad)? != 0;
        let mut prev = start;
        let mut events = Vec::new();
        for entry in codec::array(entries).map_err(bad)? {
            let ev = codec::stream_entry(epoch, channel, prev, entry).map_err(bad)?;
            prev = ev.id;
            events.push(Arc::new(ev));
        }
        if let Some(newest) = events.last() {
            // A failover that loses these must not hand their ids to other events.
            self.inner.hub.saw(channel, newest.id);
        }
        Ok(ReadPage {
            epoch,
            events,
            gap,
            start,
            last,
        })
    }

    fn local_channels(&self) -> usize {
        self.inner.hub.channel_count()
    }

    async fn announce_node(&self, id: &str, info: &str, ttl: Duration) -> Result<(), BrokerError> {
        let key = self.inner.keys.node(id);
        let cmd = redis::cmd("SET")
            .arg(&key)
            .arg(info)
            .arg("PX")
            .arg(ms(ttl).max(1))
            .to_owned();
        let _: Value = self.command(BrokerOp::Announce, &key, &cmd).await?;
        Ok(())
    }

    async fn retire_node(&self, id: &str) -> Result<(), BrokerError> {
        let key = self.inner.keys.node(id);
        let cmd = redis::cmd("DEL").arg(&key).to_owned();
        let _: Value = self.command(BrokerOp::Announce, &key, &cmd).await?;
        Ok(())
    }

    async fn cluster_nodes(&self) -> Result<Option<Vec<String>>, BrokerError> {
        // Every entry is in one slot: on a cluster, the SCAN goes to its primary.
        let pattern = self.inner.keys.node_pattern();
        let mut keys: Vec<String> = Vec::new();
        let mut cursor = 0u64;
        // SCAN in bounded rounds: node entries are few, the keyspace may be large.
        for _ in 0..1000 {
            let cmd = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .to_owned();
            let (next, batch): (u64, Vec<String>) =
                self.command(BrokerOp::Announce, &pattern, &cmd).await?;
            keys.extend(batch);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        if keys.is_empty() {
            return Ok(Some(Vec::new()));
        }
        let cmd = redis::cmd("MGET").arg(&keys).to_owned();
        let values: Vec<Option<String>> = self.command(BrokerOp::Announce, &pattern, &cmd).await?;
        Ok(Some(values.into_iter().flatten().collect()))
    }

    async fn ready(&self) -> Result<(), BrokerError> {
        if let Backend::Cluster(router) = &self.inner.backend {
            return router.ready().await.map_err(BrokerError::Unavailable);
        }
        let key = self.inner.keys.epoch();
        let _: String = self
            .command(BrokerOp::Ping, &key, &redis::cmd("PING"))
            .await?;
        Ok(())
    }
}
