//! Where the Redis primary is, and which connections may still be trusted to reach it.
//!
//! # Trust rule
//!
//! **A connection is used only while the resolution it was opened under is current.** A
//! resolution is a generation: the address given (standalone), or the address a sentinel
//! named and that answered `ROLE` as `master` (Sentinel). Every pooled connection and the
//! pub/sub connection carry the generation they were opened under. Whatever suggests the
//! primary moved ends the generation at once: a broken connection (an I/O error; a slow
//! reply alone is not one), a `READONLY`, `LOADING` or `MASTERDOWN` reply, a `+switch-master` from a sentinel, or the sentinels
//! naming another address when asked (every [`WATCH_EVERY`]). Then pooled connections of
//! older generations are dropped instead of being handed out, the pub/sub connection
//! reconnects (and every stream catches up from its cursor), and the next connection
//! resolves the primary again. A connection is never trusted because it once reached the
//! primary: a demoted primary stays writable for a moment during a failover, and only a
//! new resolution (or `WAIT`, see `SSEGATE_PUBLISH_MIN_REPLICAS`) tells.

use std::sync::Mutex;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo};
use tokio::sync::watch;

use crate::lock;
use crate::{BrokerError, RedisConfig};

/// How often the sentinels are asked where the primary is, besides listening for
/// `+switch-master` (which a sentinel only sends while the watcher is connected to it).
pub(crate) const WATCH_EVERY: Duration = Duration::from_millis(500);

/// How the primary is found.
#[derive(Debug)]
enum Find {
    /// A fixed address (standalone Redis, or a managed service's endpoint).
    Fixed(ConnectionInfo),
    /// Asked of any reachable sentinel; `data` has the credentials and db.
    Sentinel {
        sentinels: Vec<ConnectionInfo>,
        master: String,
        data: ConnectionInfo,
    },
}

#[derive(Debug, Default)]
struct Current {
    /// The resolved primary and its address, while its generation lasts.
    client: Option<(redis::Client, String)>,
    /// The address of the last resolution, to tell a change from a reconnect.
    last_addr: Option<String>,
    /// The sentinel that answered last: asked first next time.
    sentinel: usize,
}

/// The primary: resolved on demand, re-resolved when its generation ends.
#[derive(Debug)]
pub(crate) struct Primary {
    find: Find,
    current: Mutex<Current>,
    generation: watch::Sender<u64>,
    /// Bumped when the sentinels announce or name a new primary (not on mere errors),
    /// so that a reconnect waiting out its backoff can follow at once.
    switched: watch::Sender<u64>,
    /// Held while resolving (an async mutex: it is held across the sentinels' replies).
    resolving: tokio::sync::Mutex<()>,
    pub(crate) timeout: Duration,
}

pub(crate) fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

fn address(info: &ConnectionInfo) -> String {
    match info.addr() {
        ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
            format!("{host}:{port}")
        }
        ConnectionAddr::Unix(path) => path.display().to_string(),
        other => format!("{other:?}"),
    }
}

impl Primary {
    /// Reads the configuration; connects to nothing yet.
    pub(crate) fn new(config: &RedisConfig) -> Result<Self, BrokerError> {
        // rustls needs a process-wide crypto provider for rediss:// (redis-rs builds it
        // without one). Installing fails only when one is installed already: fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let url = config.url.as_deref().unwrap_or("redis://127.0.0.1:6379");
        let data = url
            .into_connection_info()
            .map_err(|e| BrokerError::Internal(format!("invalid Redis URL: {e}")))?;
        let find = if config.sentinels.is_empty() {
            Find::Fixed(data)
        } else {
            let mut settings = redis::RedisConnectionInfo::default();
            if let Some(u) = &config.sentinel_username {
                settings = settings.set_username(u);
            }
            if let Some(p) = &config.sentinel_password {
                settings = settings.set_password(p);
            }
            let sentinels = config
                .sentinels
                .iter()
                .map(|(host, port)| {
                    let (host, port) = (host.clone(), *port);
                    let addr = if config.sentinel_tls {
                        ConnectionAddr::TcpTls {
                            host,
                            port,
                            insecure: false,
                            tls_params: None,
                        }
                    } else {
                        ConnectionAddr::Tcp(host, port)
                    };
                    addr.into_connection_info()
                        .map(|i| i.set_redis_settings(settings.clone()))
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| BrokerError::Internal(format!("invalid sentinel address: {e}")))?;
            Find::Sentinel {
                sentinels,
                master: config.master_name.clone(),
                data,
            }
        };
        Ok(Self {
            find,
            current: Mutex::new(Current::default()),
            generation: watch::Sender::new(0),
            switched: watch::Sender::new(0),
            resolving: tokio::sync::Mutex::new(()),
            timeout: config.timeout,
        })
    }

    /// The generation now.
    pub(crate) fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    /// Notified whenever a generation ends.
    pub(crate) fn watch(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Notified when the sentinels announce or name a new primary.
    pub(crate) fn switched(&self) -> watch::Receiver<u64> {
        self.switched.subscribe()
    }

    /// Connection settings for every connection to the primary: our own timeouts, not
    /// redis-rs's default 500 ms response timeout (a `WAIT` may take longer).
    pub(crate) fn connection_config(&self) -> AsyncConnectionConfig {
        AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(None)
    }

    /// A client for the primary of the current generation, resolving it when needed.
    pub(crate) async fn client(&self) -> Result<(redis::Client, u64), BrokerError> {
        if let Some(found) = self.cached() {
            return Ok(found);
        }
        // One resolution at a time (a failover would otherwise send every pooled
        // connection being opened to the sentinels at once); the others take its result.
        let _one = self.resolving.lock().await;
        if let Some(found) = self.cached() {
            return Ok(found);
        }
        let generation = {
            let _current = lock(&self.current);
            self.generation()
        };
        let (client, addr) = self.resolve().await?;
        let mut current = lock(&self.current);
        if self.generation() == generation {
            if current.last_addr.as_ref().is_some_and(|a| *a != addr) {
                metrics::counter!(ssegate_core::metric_names::REDIS_PRIMARY_CHANGES).increment(1);
                tracing::warn!(primary = %addr, previous = ?current.last_addr, "the Redis primary changed");
            } else if current.last_addr.is_none() {
                tracing::info!(primary = %addr, "Redis primary found");
            }
            current.last_addr = Some(addr.clone());
            current.client = Some((client.clone(), addr));
        }
        Ok((client, generation))
    }

    /// The client of the current generation, if it is resolved. The generation is read
    /// under the same lock as `lost` ends it under, so the pair is consistent.
    fn cached(&self) -> Option<(redis::Client, u64)> {
        let current = lock(&self.current);
        let client = current.client.as_ref()?.0.clone();
        Some((client, self.generation()))
    }

    /// Ends `generation` (if it is still current): something suggests the primary moved.
    pub(crate) fn lost(&self, generation: u64, why: &dyn std::fmt::Display) {
        // Under the lock, so that a resolution that read the old generation cannot cache
        // its client into the new one (`client` compares under the same lock).
        let mut current = lock(&self.current);
        if self.generation() != generation {
            return;
        }
        current.client = None;
        self.generation.send_modify(|g| *g += 1);
        drop(current);
        tracing::debug!(%why, "Redis primary connection lost; resolving it again");
    }

    /// The sentinels name a new primary: end the generation, and wake a reconnect that
    /// waits out its backoff.
    fn switch(&self, why: &dyn std::fmt::Display) {
        self.lost(self.generation(), why);
        self.switched.send_modify(|n| *n += 1);
    }

    /// Whether the primary is found through sentinels.
    fn follows_sentinels(&self) -> bool {
        matches!(self.find, Find::Sentinel { .. })
    }

    /// A connection to the primary could not be opened: through Sentinel, resolve again
    /// (it may have died, a replica may be promoted); a fixed address stays what it is.
    pub(crate) fn unreachable(&self, generation: u64, why: &dyn std::fmt::Display) {
        if self.follows_sentinels() {
            self.lost(generation, why);
        }
    }

    /// Ends the generation when `e` says the server is no longer the primary. A broken
    /// connection alone does not: Redis's idle `timeout` or a proxy closes idle pooled
    /// connections routinely, and the pool replaces those by itself; a dead primary
    /// shows when a new connection cannot be opened ([`Primary::unreachable`]), when
    /// the pub/sub connection drops, and at the sentinels.
    pub(crate) fn check(&self, generation: u64, e: &redis::RedisError) {
        use redis::{ErrorKind, ServerErrorKind};
        let moved = matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::ReadOnly
                    | ServerErrorKind::BusyLoading
                    | ServerErrorKind::MasterDown
            )
        );
        if moved {
            self.lost(generation, e);
        }
    }

    async fn resolve(&self) -> Result<(redis::Client, String), BrokerError> {
        match &self.find {
            Find::Fixed(info) => {
                let client = redis::Client::open(info.clone()).map_err(unavailable)?;
                Ok((client, address(info)))
            }
            Find::Sentinel {
                sentinels,
                master,
                data,
            } => {
                let first = lock(&self.current).sentinel;
                let mut last_error = String::from("no sentinel configured");
                for k in 0..sentinels.len() {
                    let i = (first + k) % sentinels.len();
                    match self.ask(&sentinels[i], master, data).await {
                        Ok(found) => {
                            lock(&self.current).sentinel = i;
                            return Ok(found);
                        }
                        Err(e) => {
                            tracing::debug!(sentinel = %address(&sentinels[i]), error = %e, "sentinel gave no usable primary");
                            last_error = e;
                        }
                    }
                }
                Err(unavailable(format!(
                    "no sentinel named a reachable primary for {master:?}: {last_error}"
                )))
            }
        }
    }

    /// Asks one sentinel for the primary, then checks that it is one.
    async fn ask(
        &self,
        sentinel: &ConnectionInfo,
        master: &str,
        data: &ConnectionInfo,
    ) -> Result<(redis::Client, String), String> {
        let (host, port) = self.named(sentinel, master).await?;
        self.primary_at(data, host, port).await
    }

    /// A client for `host:port` (with the data nodes' credentials), if it answers `ROLE`
    /// as a primary.
    async fn primary_at(
        &self,
        data: &ConnectionInfo,
        host: String,
        port: u16,
    ) -> Result<(redis::Client, String), String> {
        // TLS to the data nodes when SSEGATE_REDIS_URL says rediss:// (DESIGN.md: with
        // sentinels, that URL carries credentials, db and TLS).
        let addr = match data.addr() {
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
        let info = data.clone().set_addr(addr);
        let client = redis::Client::open(info.clone()).map_err(|e| e.to_string())?;
        if self.role_is_master(&client).await? {
            Ok((client, address(&info)))
        } else {
            Err(format!("{} is not a primary (yet)", address(&info)))
        }
    }

    async fn role_is_master(&self, client: &redis::Client) -> Result<bool, String> {
        let role = async {
            let mut conn = client
                .get_multiplexed_async_connection_with_config(&self.connection_config())
                .await?;
            redis::cmd("ROLE")
                .query_async::<redis::Value>(&mut conn)
                .await
        };
        let role = tokio::time::timeout(self.timeout, role)
            .await
            .map_err(|_| "ROLE timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        Ok(matches!(role, redis::Value::Array(parts)
        if parts.first().is_some_and(|p| {
            matches!(p, redis::Value::BulkString(b) if b == b"master")
                || matches!(p, redis::Value::SimpleString(s) if s == "master")
        })))
    }

    /// `SENTINEL get-master-addr-by-name`.
    async fn named(
        &self,
        sentinel: &ConnectionInfo,
        master: &str,
    ) -> Result<(String, u16), String> {
        let ask = async {
            let client = redis::Client::open(sentinel.clone())?;
            let mut conn = client
                .get_multiplexed_async_connection_with_config(&self.connection_config())
                .await?;
            Self::master_addr(&mut conn, master).await
        };
        Self::named_reply(master, tokio::time::timeout(self.timeout, ask).await)
    }

    async fn master_addr(
        conn: &mut MultiplexedConnection,
        master: &str,
    ) -> redis::RedisResult<Option<(String, u16)>> {
        redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(master)
            .query_async::<Option<(String, u16)>>(conn)
            .await
    }

    fn named_reply(
        master: &str,
        reply: Result<redis::RedisResult<Option<(String, u16)>>, tokio::time::error::Elapsed>,
    ) -> Result<(String, u16), String> {
        match reply {
            Err(_) => Err("timed out".into()),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(None)) => Err(format!("the sentinel does not know {master:?}")),
            Ok(Ok(Some(addr))) => Ok(addr),
        }
    }

    /// Follows the sentinels: ends the generation on a `+switch-master` for our primary,
    /// or when a sentinel names another address than the current one. Runs until the
    /// node stops; does nothing for a fixed address.
    pub(crate) async fn watch_sentinels(&self) {
        let Find::Sentinel {
            sentinels,
            master,
            data,
        } = &self.find
        else {
            return;
        };
        let mut i = 0;
        loop {
            let sentinel = &sentinels[i % sentinels.len()];
            if let Err(e) = self.follow(sentinel, master, data).await {
                tracing::debug!(sentinel = %address(sentinel), error = %e, "sentinel connection lost");
            }
            i += 1;
            tokio::time::sleep(WATCH_EVERY).await;
        }
    }

    /// One sentinel, until its connection fails.
    async fn follow(
        &self,
        sentinel: &ConnectionInfo,
        master: &str,
        data: &ConnectionInfo,
    ) -> Result<(), String> {
        let client = redis::Client::open(sentinel.clone()).map_err(|e| e.to_string())?;
        let mut pubsub = tokio::time::timeout(self.timeout, client.get_async_pubsub())
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        tokio::time::timeout(self.timeout, pubsub.subscribe("+switch-master"))
            .await
            .map_err(|_| "SUBSCRIBE timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        let mut messages = pubsub.on_message();
        // One connection for the periodic question, kept while the sentinel answers.
        let mut asking = tokio::time::timeout(
            self.timeout,
            client.get_multiplexed_async_connection_with_config(&self.connection_config()),
        )
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
        let mut tick = tokio::time::interval(WATCH_EVERY);
        loop {
            tokio::select! {
                msg = messages.next() => {
                    let msg = msg.ok_or("closed")?;
                    // `<name> <old-ip> <old-port> <new-ip> <new-port>`
                    let payload: String = msg.get_payload().unwrap_or_default();
                    if payload.split(' ').next() == Some(master) {
                        tracing::info!(%payload, "sentinel announced a failover");
                        self.switch(&"+switch-master");
                    }
                }
                _ = tick.tick() => {
                    let reply = tokio::time::timeout(self.timeout, Self::master_addr(&mut asking, master)).await;
                    let (host, port) = Self::named_reply(master, reply)?;
                    let named = format!("{host}:{port}");
                    let current = lock(&self.current).client.as_ref().map(|(_, a)| a.clone());
                    // Only a named address that says it is the primary counts: a stale
                    // sentinel in a minority must not end the generation every tick.
                    if current.is_some_and(|a| a != named)
                        && self.primary_at(data, host, port).await.is_ok()
                    {
                        self.switch(&"the sentinel names another primary");
                    }
                }
            }
        }
    }
}
