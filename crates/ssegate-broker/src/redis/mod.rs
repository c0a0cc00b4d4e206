//! The Redis broker: cluster mode. Any number of nodes pointed at one Redis form one
//! cluster; Redis is the only shared state.
//!
//! - History: one Redis Stream per channel, trimmed by length and age in the publish
//!   script; ids are the stream's entry ids.
//! - The primary: a fixed address or found through Sentinel, and followed through
//!   failovers (see [`primary`] for which connections are trusted).
//! - Publishing: one atomic Lua script per request (see [`scripts`]), over a pool of
//!   connections to the primary, then `WAIT` for `SSEGATE_PUBLISH_MIN_REPLICAS`.
//! - Live: a dedicated pub/sub connection per node (see [`pubsub`]) SUBSCRIBEs to the
//!   channels that have local subscribers (reference-counted by the [`Hub`]), decodes
//!   each message once and hands the one `Arc` to every local stream.
//! - Catch-up and replay: the read script, in pages.
//!
//! Every reply is treated as untrusted input; every command has a timeout. An unreachable
//! Redis makes publishes fail (503) while streams stay open and catch up when it returns.

mod codec;
mod keys;
mod primary;
mod pubsub;
mod scripts;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool::managed::{Object, Timeouts};
use redis::Value;
use ssegate_core::{ChannelName, Epoch, NewEvent};

use crate::clock::{Clock, SystemClock};
use crate::error::BrokerOp;
use crate::fingerprint::fingerprint;
use crate::hub::Hub;
use crate::lock;
use crate::memory::StoreLimits;
use crate::{Broker, BrokerError, LiveSubscription, Published, ReadFrom, ReadPage};

use codec::BadReply;
use keys::Keys;
use scripts::Scripts;

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`: the primary, or with `sentinels` only
    /// the data nodes' credentials and db. `None`: `redis://127.0.0.1:6379`.
    pub url: Option<String>,
    /// Sentinels (`host`, `port`) that name the primary; empty: `url` is the primary.
    pub sentinels: Vec<(String, u16)>,
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

#[derive(Debug)]
struct Inner {
    pool: primary::Pool,
    primary: Arc<primary::Primary>,
    keys: Keys,
    scripts: Scripts,
    history: StoreLimits,
    config: RedisConfig,
    hub: Hub,
    /// The epoch last seen; refreshed from every script reply.
    epoch: Mutex<Option<Epoch>>,
    clock: SystemClock,
    /// The pub/sub task until [`Broker::background`] hands it out.
    pubsub: crate::BackgroundSlot,
}

/// The Redis broker. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RedisBroker {
    inner: Arc<Inner>,
}

fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
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

fn unknown(published: Option<Published>, why: impl std::fmt::Display) -> BrokerError {
    BrokerError::OutcomeUnknown {
        published,
        reason: why.to_string(),
    }
}

fn bad(e: BadReply) -> BrokerError {
    BrokerError::Internal(e.to_string())
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl RedisBroker {
    /// Builds the pool and starts the pub/sub task. Does not wait for Redis: a node may
    /// start before Redis does (it is not ready until Redis answers).
    pub fn connect(config: RedisConfig, history: StoreLimits) -> Result<Self, BrokerError> {
        let primary = Arc::new(primary::Primary::new(&config)?);
        let pool = primary::Pool::builder(primary::Manager(primary.clone()))
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
        let keys = Keys::new(&config.key_prefix);
        let changes = Arc::new(pubsub::Changes::default());
        let hub = Hub::new(
            history.live_backlog,
            history.live_backlog_bytes,
            Some(Arc::new(pubsub::Observer::new(changes.clone()))),
        );
        let pubsub = pubsub::task(
            primary.clone(),
            hub.clone(),
            keys.clone(),
            changes,
            config.timeout,
            stream_ttl_ms(&history),
            config.min_replicas,
        );
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                primary,
                keys,
                scripts: Scripts::new(),
                history,
                config,
                hub,
                epoch: Mutex::new(None),
                clock: SystemClock,
                pubsub: crate::BackgroundSlot::new(pubsub),
            }),
        })
    }

    /// This node's fan-out hub, which the pub/sub task feeds.
    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    async fn conn(&self) -> Result<Object<primary::Manager>, BrokerError> {
        self.inner.pool.get().await.map_err(|e| match e {
            deadpool::managed::PoolError::Backend(e) => e,
            // Every connection in use for the whole wait: overload, not an outage.
            deadpool::managed::PoolError::Timeout(deadpool::managed::TimeoutType::Wait) => {
                BrokerError::Busy(e.to_string())
            }
            other => unavailable(other),
        })
    }

    /// Runs a command future with the configured timeout; failures are counted by `op`,
    /// and end the connection's `generation` when they suggest the primary moved.
    async fn timed<T>(
        &self,
        op: BrokerOp,
        generation: u64,
        f: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, BrokerError> {
        let result = match tokio::time::timeout(self.inner.config.timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                self.inner.primary.check(generation, &e);
                Err(unavailable(e))
            }
            // A slow reply is no sign that the primary moved: ending the generation on
            // it would make every stream on the node re-read history at a bad moment.
            Err(_) => Err(unavailable("Redis command timed out")),
        };
        if result.is_err() {
            pubsub::broker_error(op);
        }
        result
    }

    async fn conn_for(&self, op: BrokerOp) -> Result<Object<primary::Manager>, BrokerError> {
        let conn = self.conn().await;
        if matches!(
            conn,
            Err(BrokerError::Unavailable(_) | BrokerError::Internal(_))
        ) {
            pubsub::broker_error(op);
        }
        conn
    }

    /// The ids from the publish script's reply.
    fn published(&self, reply: &Value, fp: &str) -> Result<Published, BrokerError> {
        let parts = codec::array(reply).map_err(bad)?;
        let [status, epoch, rest] = parts else {
            return Err(bad(BadReply("publish reply")));
        };
        let epoch = codec::epoch(codec::text(epoch).map_err(bad)?).map_err(bad)?;
        self.remember_epoch(epoch);
        let mut words = codec::text(rest).map_err(bad)?.split(' ');
        if codec::text(status).map_err(bad)? == "dup" && words.next() != Some(fp) {
            return Err(BrokerError::IdempotencyConflict);
        }
        let ids = words
            .map(|w| codec::entry_id(w).map_err(bad))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Published { epoch, ids })
    }

    /// `WAIT` on the publishing connection for `min_replicas`; fewer in time is an
    /// unknown outcome (the primary has the events, a failover may lose them).
    async fn wait_replicas(
        &self,
        conn: &mut Object<primary::Manager>,
        published: Published,
    ) -> Result<Published, BrokerError> {
        let config = &self.inner.config;
        let want = config.min_replicas;
        if want == 0 {
            return Ok(published);
        }
        let wait = redis::cmd("WAIT")
            .arg(want)
            .arg(ms(config.replica_timeout).max(1))
            .to_owned();
        let generation = conn.generation;
        let acked = tokio::time::timeout(
            config.replica_timeout + config.timeout,
            wait.query_async::<i64>(&mut conn.conn),
        )
        .await;
        let why = match acked {
            Ok(Ok(n)) if n >= i64::from(want) => return Ok(published),
            Ok(Ok(n)) => format!(
                "{n} of {want} replicas confirmed within {:?}",
                config.replica_timeout
            ),
            Ok(Err(e)) => {
                self.inner.primary.check(generation, &e);
                format!("WAIT failed: {e}")
            }
            Err(_) => "WAIT timed out".to_owned(),
        };
        metrics::counter!(ssegate_core::metric_names::PUBLISH_REPLICA_TIMEOUTS).increment(1);
        Err(unknown(Some(published), why))
    }

    fn remember_epoch(&self, epoch: Epoch) {
        let mut cached = lock(&self.inner.epoch);
        if cached.is_some_and(|e| e != epoch) {
            tracing::warn!(%epoch, "the Redis history epoch changed: Redis lost its data");
        }
        *cached = Some(epoch);
    }
}

#[async_trait::async_trait]
impl Broker for RedisBroker {
    fn kind(&self) -> &'static str {
        "redis"
    }

    /// The node's pub/sub connection.
    fn background(&self) -> Option<crate::Background> {
        self.inner.pubsub.take()
    }

    async fn epoch(&self) -> Result<Epoch, BrokerError> {
        if let Some(e) = *lock(&self.inner.epoch) {
            return Ok(e);
        }
        let key = self.inner.keys.epoch();
        let mut conn = self.conn_for(BrokerOp::Epoch).await?;
        let candidate = Epoch::random().to_string();
        let set = redis::cmd("SET")
            .arg(&key)
            .arg(&candidate)
            .arg("NX")
            .to_owned();
        let _: Value = self
            .timed(
                BrokerOp::Epoch,
                conn.generation,
                set.query_async(&mut conn.conn),
            )
            .await?;
        let got: Option<String> = self
            .timed(
                BrokerOp::Epoch,
                conn.generation,
                redis::cmd("GET").arg(&key).query_async(&mut conn.conn),
            )
            .await?;
        let epoch = codec::epoch(got.as_deref().unwrap_or_default()).map_err(bad)?;
        self.remember_epoch(epoch);
        Ok(epoch)
    }

    async fn publish(
        &self,
        events: Vec<NewEvent>,
        idempotency_key: Option<&str>,
    ) -> Result<Published, BrokerError> {
        let Some(first) = events.first() else {
            return Ok(Published {
                epoch: self.epoch().await?,
                ids: Vec::new(),
            });
        };
        let keys = &self.inner.keys;
        let history = &self.inner.history;
        let fp = idempotency_key
            .map(|_| fingerprint(&events))
            .unwrap_or_default();
        let mut inv = self.inner.scripts.publish.prepare_invoke();
        inv.key(keys.epoch());
        match idempotency_key {
            Some(k) => inv.key(keys.idempotency(&first.channel, k)),
            None => inv.key(keys.epoch()),
        };
        // Keys outlive their events by one more max age: the ids they keep tell a
        // returning cursor whether it missed anything.
        let expire = stream_ttl_ms(history);
        inv.arg(Epoch::random().to_string())
            .arg(history.max_len)
            .arg(ms(history.max_age))
            .arg(expire)
            .arg(ms(history.idempotency_ttl).max(1))
            .arg(&fp)
            .arg(events.len());
        let now = self.inner.clock.now_ms();
        for e in &events {
            inv.key(keys.stream(&e.channel)).key(keys.meta(&e.channel));
            inv.arg(keys.live(&e.channel))
                .arg(e.event_type.as_ref().map_or("", |t| t.as_str()))
                .arg(e.data.kind().tag())
                .arg(e.data.as_str())
                .arg(now)
                .arg(e.trace.as_deref().unwrap_or(""));
        }
        // Until the script is sent, a failure means "not published" (503); from then
        // on, one that leaves the outcome open is said so (504, see `OutcomeUnknown`).
        let mut conn = self.conn_for(BrokerOp::Publish).await?;
        let generation = conn.generation;
        let sent = tokio::time::timeout(
            self.inner.config.timeout,
            inv.invoke_async::<Value>(&mut conn.conn),
        )
        .await;
        let reply = match sent {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => {
                pubsub::broker_error(BrokerOp::Publish);
                self.inner.primary.check(generation, &e);
                // These replies mean the script did not run (Redis refused it as a whole);
                // any other failure (a broken connection, a lost reply, an error raised
                // by the script after a write: scripts are not rolled back) leaves the
                // outcome open.
                let refused = matches!(
                    e.code(),
                    Some(
                        "READONLY"
                            | "OOM"
                            | "LOADING"
                            | "NOPERM"
                            | "NOAUTH"
                            | "BUSY"
                            | "MASTERDOWN"
                            | "NOREPLICAS"
                    )
                );
                return Err(if refused {
                    unavailable(e)
                } else {
                    unknown(None, e)
                });
            }
            Err(_) => {
                pubsub::broker_error(BrokerOp::Publish);
                return Err(unknown(None, "no reply to the publish script in time"));
            }
        };
        let published = self.published(&reply, &fp).map_err(|e| match e {
            BrokerError::IdempotencyConflict => e,
            other => unknown(None, other),
        })?;
        self.wait_replicas(&mut conn, published).await
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
        let mut inv = self.inner.scripts.read.prepare_invoke();
        inv.key(keys.epoch())
            .key(keys.stream(channel))
            .key(keys.meta(channel))
            .arg(Epoch::random().to_string());
        match from {
            ReadFrom::Oldest => inv.arg("oldest").arg("0-0"),
            ReadFrom::After(id) => inv.arg("after").arg(id.to_string()),
            ReadFrom::AfterShown(id) => inv.arg("shown").arg(id.to_string()),
        };
        // The evidence of a loss is the newest id any stream here saw on the channel, not
        // only this one's cursor: a region recorded up to the cursor alone would grow when
        // the guard or another stream adds a later lost event, and this stream, already
        // told, would be told again.
        let seen = match from {
            ReadFrom::AfterShown(id) => self.inner.hub.newest(channel).map_or(id, |n| n.max(id)),
            _ => ssegate_core::EntryId::ZERO,
        };
        inv.arg(limit)
            .arg(stream_ttl_ms(&self.inner.history))
            .arg(scripts::MAX_LOST_REGIONS)
            .arg(seen.to_string());
        let mut conn = self.conn_for(BrokerOp::Read).await?;
        let reply: Value = self
            .timed(
                BrokerOp::Read,
                conn.generation,
                inv.invoke_async(&mut conn.conn),
            )
            .await?;
        let parts = codec::array(&reply).map_err(bad)?;
        let [epoch, last, start, gap, entries] = parts else {
            return Err(bad(BadReply("read reply")));
        };
        let epoch = codec::epoch(codec::text(epoch).map_err(bad)?).map_err(bad)?;
        self.remember_epoch(epoch);
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
        let mut conn = self.conn_for(BrokerOp::Announce).await?;
        let cmd = redis::cmd("SET")
            .arg(self.inner.keys.node(id))
            .arg(info)
            .arg("PX")
            .arg(ms(ttl).max(1))
            .to_owned();
        let _: Value = self
            .timed(
                BrokerOp::Announce,
                conn.generation,
                cmd.query_async(&mut conn.conn),
            )
            .await?;
        Ok(())
    }

    async fn retire_node(&self, id: &str) -> Result<(), BrokerError> {
        let mut conn = self.conn_for(BrokerOp::Announce).await?;
        let cmd = redis::cmd("DEL").arg(self.inner.keys.node(id)).to_owned();
        let _: Value = self
            .timed(
                BrokerOp::Announce,
                conn.generation,
                cmd.query_async(&mut conn.conn),
            )
            .await?;
        Ok(())
    }

    async fn cluster_nodes(&self) -> Result<Option<Vec<String>>, BrokerError> {
        let mut conn = self.conn_for(BrokerOp::Announce).await?;
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
            let (next, batch): (u64, Vec<String>) = self
                .timed(
                    BrokerOp::Announce,
                    conn.generation,
                    cmd.query_async(&mut conn.conn),
                )
                .await?;
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
        let values: Vec<Option<String>> = self
            .timed(
                BrokerOp::Announce,
                conn.generation,
                cmd.query_async(&mut conn.conn),
            )
            .await?;
        Ok(Some(values.into_iter().flatten().collect()))
    }

    async fn ready(&self) -> Result<(), BrokerError> {
        let mut conn = self.conn_for(BrokerOp::Ping).await?;
        let _: String = self
            .timed(
                BrokerOp::Ping,
                conn.generation,
                redis::cmd("PING").query_async(&mut conn.conn),
            )
            .await?;
        Ok(())
    }
}
