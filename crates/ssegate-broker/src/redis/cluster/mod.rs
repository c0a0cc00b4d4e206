//! Redis Cluster: commands routed by slot ([`route`]: the routing rule), and sharded
//! pub/sub ([`sharded`]).
//!
//! # Bounds
//!
//! One command connection per primary in the slot map, opened by one connect however many
//! commands want it ([`conns`]; connections to nodes that left the map are dropped at each
//! refresh), and one pub/sub connection per primary
//! ([`sharded`]); with `SSEGATE_PUBLISH_MIN_REPLICAS` ≥ 1 also the publishes' own
//! connections ([`lease`]). The map is refreshed at most every [`REFRESH_MIN`], by one
//! task at a time.
//!
//! # Layout
//!
//! - `mod.rs`: the [`Router`] (slot map, connections, readiness).
//! - [`route`]: the routing rule: where a command goes, and when it goes again.
//! - [`conns`]: one connection per node, opened once however many callers want it.
//! - [`call`]: what it carries (scripts, calls, [`Resend`], [`RouteError`]), [`by_slot`].
//! - [`lease`]: the publishes' own connections. [`slots`]: key slots and the slot map.
//! - [`sharded`]: sharded pub/sub and the registry of wanted subscriptions.

mod call;
mod conns;
pub(crate) mod lease;
mod route;
pub(crate) mod sharded;
pub(crate) mod slots;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Value};
use tokio::sync::watch;
use tokio::time::Instant;

use super::exec;
use crate::lock;
pub(crate) use call::{Call, Lua, Request, Resend, RouteError, by_slot};
use conns::Conns;
use lease::{Lease, Leases};
use slots::SlotMap;

/// The shortest time between two refreshes of the slot map.
pub(crate) const REFRESH_MIN: Duration = Duration::from_millis(100);

/// The cluster's slot map and one connection per primary.
#[derive(Debug)]
pub(crate) struct Router {
    seeds: Vec<String>,
    /// Credentials, TLS and protocol of every connection; the address is set per node.
    template: ConnectionInfo,
    timeout: Duration,
    map: Mutex<Option<Arc<SlotMap>>>,
    /// Each primary's shared connection, or the one connect in flight that every caller
    /// waits for (single-flight: a burst of requests to a new or restarted primary opens
    /// one connection, not one per request).
    conns: Conns<MultiplexedConnection>,
    /// Held while refreshing (async: it is held across the reply).
    refreshing: tokio::sync::Mutex<Option<Instant>>,
    /// Bumped whenever a refresh finds a map different from the last one.
    changed: watch::Sender<u64>,
    /// Connections of their own for publishes followed by `WAIT` (`None`: no `WAIT`).
    leases: Option<Leases>,
}

/// The connection a command ran on.
#[derive(Debug)]
pub(crate) enum Routed {
    /// The primary's shared connection.
    Shared(MultiplexedConnection),
    /// A connection of its own, to give back with [`Router::give_back`] once the `WAIT`
    /// on it answered.
    Own(Lease),
}

impl Routed {
    pub(crate) fn conn(&mut self) -> &mut MultiplexedConnection {
        match self {
            Self::Shared(c) => c,
            Self::Own(l) => &mut l.conn,
        }
    }
}

impl Router {
    /// Reads the configuration; connects to nothing yet. `template` carries credentials
    /// and TLS (its address is replaced per node). `own_publish_conns`: publishes are
    /// followed by `WAIT`, over at most this many connections of their own.
    pub(crate) fn new(
        seeds: &[(String, u16)],
        template: ConnectionInfo,
        timeout: Duration,
        own_publish_conns: Option<usize>,
    ) -> Self {
        Self {
            seeds: seeds.iter().map(|(h, p)| format!("{h}:{p}")).collect(),
            template,
            timeout,
            map: Mutex::new(None),
            conns: Conns::new(),
            refreshing: tokio::sync::Mutex::new(None),
            changed: watch::Sender::new(0),
            leases: own_publish_conns.map(Leases::new),
        }
    }

    /// Notified when the slot map changes.
    pub(crate) fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The slot map now, if one was read.
    pub(crate) fn map(&self) -> Option<Arc<SlotMap>> {
        lock(&self.map).clone()
    }

    fn settings(&self) -> AsyncConnectionConfig {
        AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(None)
    }

    /// Connection info for `addr` (`host:port`), with the template's credentials and TLS.
    pub(crate) fn info(&self, addr: &str) -> Result<ConnectionInfo, String> {
        let (host, port) = addr
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
            .ok_or_else(|| format!("bad node address {addr:?}"))?;
        let a = match self.template.addr() {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host,
                port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => ConnectionAddr::Tcp(host, port),
        };
        let info = a.into_connection_info().map_err(|e| e.to_string())?;
        Ok(info.set_redis_settings(self.template.redis_settings().clone()))
    }

    /// The connection to `addr`, opened when there is none.
    /// With its generation, for [`Router::forget`].
    async fn conn(&self, addr: &str) -> Result<(MultiplexedConnection, u64), String> {
        self.conns.get(addr, || self.open(addr)).await
    }

    /// A new connection to `addr` (owning what it needs, so that callers can share it).
    fn open(
        &self,
        addr: &str,
    ) -> impl Future<Output = Result<MultiplexedConnection, String>> + 'static {
        let info = self.info(addr);
        let (settings, timeout, addr) = (self.settings(), self.timeout, addr.to_owned());
        async move {
            let client = redis::Client::open(info?).map_err(|e| e.to_string())?;
            tokio::time::timeout(
                timeout,
                client.get_multiplexed_async_connection_with_config(&settings),
            )
            .await
            .map_err(|_| format!("connecting to {addr} timed out"))?
            .map_err(|e| format!("connecting to {addr}: {e}"))
        }
    }

    /// Keeps a publish's own connection for the next one, after its `WAIT` answered.
    pub(crate) fn give_back(&self, lease: Lease) {
        if let Some(leases) = &self.leases {
            leases.give_back(lease);
        }
    }

    /// Drops the shared connection of `generation` to `addr` (not a newer one).
    fn forget(&self, addr: &str, generation: u64) {
        self.conns.forget(addr, generation);
    }

    /// Reads the slot map again (from a known primary, else a seed), unless it was read
    /// less than [`REFRESH_MIN`] ago.
    pub(crate) async fn refresh(&self) -> Result<(), String> {
        let mut last = self.refreshing.lock().await;
        if last.is_some_and(|t| t.elapsed() < REFRESH_MIN) {
            return Ok(());
        }
        *last = Some(Instant::now());
        let mut candidates: Vec<String> = self
            .map()
            .map(|m| m.primaries().to_vec())
            .unwrap_or_default();
        candidates.extend(self.seeds.iter().cloned());
        let mut why = String::from("no seed node");
        // A node that has not heard of a failover yet may answer with holes: another's
        // complete map is preferred.
        let mut partial = None;
        for addr in candidates {
            match self.slots_of(&addr).await {
                Ok(map) if map.complete() => {
                    self.install(map);
                    return Ok(());
                }
                Ok(map) => partial = partial.or(Some(map)),
                Err(e) => why = e,
            }
        }
        match partial {
            Some(map) => {
                self.install(map);
                Ok(())
            }
            None => Err(format!(
                "no Redis Cluster node answered CLUSTER SLOTS: {why}"
            )),
        }
    }

    async fn slots_of(&self, addr: &str) -> Result<SlotMap, String> {
        let (mut conn, generation) = self.conn(addr).await?;
        let reply = tokio::time::timeout(
            self.timeout,
            redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async::<Value>(&mut conn),
        )
        .await;
        let reply = match reply {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                self.forget(addr, generation);
                return Err(format!("{addr}: {e}"));
            }
            Err(_) => {
                self.forget(addr, generation);
                return Err(format!("{addr}: CLUSTER SLOTS timed out"));
            }
        };
        let map = SlotMap::from_reply(&reply, addr).map_err(|e| format!("{addr}: {e}"))?;
        if map.primaries().is_empty() {
            return Err(format!("{addr} serves no slots"));
        }
        Ok(map)
    }

    fn install(&self, map: SlotMap) {
        let mut current = lock(&self.map);
        // Even when the map is the same: a connection opened meanwhile to a seed or a
        // former primary is not kept.
        self.conns
            .retain(|addr| map.primaries().iter().any(|p| p == addr));
        if current.as_deref() == Some(&map) {
            return;
        }
        let primaries = map.primaries().len();
        if primaries > crate::redis::CLUSTER_PRIMARIES_BUDGETED {
            tracing::warn!(
                primaries,
                budgeted = crate::redis::CLUSTER_PRIMARIES_BUDGETED,
                "the Redis Cluster has more primaries than the node's file budget keeps descriptors for (two each): lower SSEGATE_MAX_CONNECTIONS by two per extra primary"
            );
        }
        if let Some(leases) = &self.leases {
            leases.retain(map.primaries());
        }
        *current = Some(Arc::new(map));
        drop(current);
        self.changed.send_modify(|n| *n += 1);
    }

    fn moved(&self, slot: u16, addr: &str) {
        let mut current = lock(&self.map);
        if let Some(map) = current.as_mut() {
            Arc::make_mut(map).moved(slot, addr);
        }
    }

    /// The primary that owns `slot`, reading the map when there is none or it has no owner.
    pub(crate) async fn owner(&self, slot: u16) -> Result<String, String> {
        if let Some(addr) = self.map().and_then(|m| m.owner(slot).map(str::to_owned)) {
            return Ok(addr);
        }
        self.refresh().await?;
        self.map()
            .and_then(|m| m.owner(slot).map(str::to_owned))
            .ok_or_else(|| format!("no Redis Cluster primary serves slot {slot}"))
    }

    /// Ready when the slot map covers every slot and a primary answers `PING`. Not only
    /// the epoch's primary: one shard down leaves the others' channels serving, and
    /// taking every gateway node out of the load balancer for it would stop them too.
    pub(crate) async fn ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + self.timeout;
        if !self.map().is_some_and(|m| m.complete()) {
            within(deadline, self.refresh()).await??;
        }
        let map = self.map().ok_or("no slot map yet")?;
        if !map.complete() {
            return Err("the Redis Cluster does not serve every slot".into());
        }
        if map.primaries().is_empty() {
            return Err("the slot map names no primary".into());
        }
        // All at once: a stopped primary must not use up the time the others need.
        let pings = map.primaries().iter().map(|addr| {
            Box::pin(async move {
                let ping = async {
                    let (mut conn, _) = self.conn(addr).await?;
                    redis::cmd("PING")
                        .query_async::<Value>(&mut conn)
                        .await
                        .map_err(|e| format!("{addr}: {e}"))
                };
                within(deadline, ping).await.and_then(|r| r)
            })
        });
        match futures_util::future::select_ok(pings).await {
            Ok(_) => Ok(()),
            Err(why) => Err(format!("no Redis Cluster primary answers PING: {why}")),
        }
    }

    /// The connection settings a pub/sub connection to `addr` uses (RESP3, for pushes).
    pub(crate) fn pubsub_info(&self, addr: &str) -> Result<ConnectionInfo, String> {
        let info = self.info(addr)?;
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP3);
        Ok(info.set_redis_settings(settings))
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// `fut`, unless `deadline` passes first.
async fn within<F: std::future::Future>(deadline: Instant, fut: F) -> Result<F::Output, String> {
    tokio::time::timeout_at(deadline, fut)
        .await
        .map_err(|_| "the Redis Cluster command's deadline passed".to_owned())
}
