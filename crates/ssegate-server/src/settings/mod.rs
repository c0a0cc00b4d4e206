//! Runtime settings of a node, parsed and validated.
//!
//! # Layout
//!
//! - [`options`]: [`Options`], the one declaration of every setting (name, default, help,
//!   the rule for one value).
//! - here: [`Settings`], built from [`Options`] by [`Settings::from_options`], which checks
//!   the rules across settings and works out what is derived at start (the node id, the
//!   connection caps from the open-files limit). [`Settings::default`] is
//!   `from_options(Options::defaults())`: what the binary runs with when nothing is set.

pub mod options;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ssegate_broker::{RedisConfig, StoreLimits};

use crate::auth::{Auth, AuthConfigError, AuthSettings, PublishKey};
use crate::cors::Cors;
use crate::limits::{Cidr, FileBudget};

pub use options::Options;

/// In-memory broker only: idempotency keys remembered at most (besides the byte budget).
const IDEMPOTENCY_MAX_KEYS: usize = 100_000;
/// Clock skew allowed on a token's `exp` and `nbf`.
const TOKEN_LEEWAY: Duration = Duration::from_secs(5);
/// Events per history read when replaying or catching up.
const REPLAY_PAGE_SIZE: usize = 256;

/// A rule across settings that the given ones break, or a file a setting names that
/// cannot be used. `setting` is the setting's name (`max_body_bytes_in_flight`).
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A value that breaks a rule involving other settings.
    #[error("{reason}")]
    Invalid {
        /// The setting to change.
        setting: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// A file a setting names cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    File {
        /// The setting that names the file.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it cannot be read.
        #[source]
        source: std::io::Error,
    },
    /// A publisher key that is not one (the value is not echoed).
    #[error("{0}")]
    PublishKey(&'static str),
    /// Keys or secrets that the authenticator cannot use.
    #[error(transparent)]
    Auth(#[from] AuthConfigError),
}

impl SettingsError {
    /// The setting to change.
    pub fn setting(&self) -> &'static str {
        match self {
            Self::Invalid { setting, .. } | Self::File { setting, .. } => setting,
            Self::PublishKey(_) => "publish_keys",
            Self::Auth(e) => e.setting(),
        }
    }
}

/// Everything a node is configured with; [`crate::App::build`] takes it whole.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Public listener: the v1 API, the demo page, `/healthz` and `/readyz`.
    pub listen: SocketAddr,
    /// Admin listener (`/healthz`, `/readyz`, `/metrics`, `/v1/stats`, `/v1/cluster` and
    /// its stream, `/dashboard`); `None` turns it off.
    pub admin_listen: Option<SocketAddr>,
    /// Shown in logs and `/readyz`, so an operator can tell nodes apart.
    pub node_id: String,
    /// Idle streams get a comment this often, so proxies and NATs keep them open.
    pub heartbeat_interval: Duration,
    /// The base of the `retry:` sent to clients.
    pub retry: Duration,
    /// Random extra on top of `retry`, so that a mass reconnect spreads out.
    pub retry_jitter: Duration,
    /// On shutdown, streams are closed spread over this window.
    pub drain_window: Duration,
    /// Concurrent streams on this node; past it, new subscribers are told to retry.
    pub max_connections: usize,
    /// Channels one multi-channel stream may name.
    pub max_channels_per_connection: usize,
    /// Largest event data, in bytes (413 past it).
    pub max_event_size: usize,
    /// Largest request body, in bytes (413 past it); separate from the event limit
    /// because a batch carries many events.
    pub max_body_size: usize,
    /// A request body must have arrived completely this long after its head, else
    /// `408 body_timeout` and the connection is closed.
    pub body_read_timeout: Duration,
    /// Bytes of request bodies this node holds at once (being read, parsed or
    /// published); a body that does not fit is refused with `503 overloaded` before it
    /// is read.
    pub max_body_bytes_in_flight: usize,
    /// Public connections that are not streams (a head or body being read, a request
    /// being answered, an idle keep-alive connection); at this many the public listener
    /// stops accepting until one ends.
    pub max_request_connections: usize,
    /// Connections on the admin listener; at this many it stops accepting until one ends.
    pub max_admin_connections: usize,
    /// The process's open-files limit, when known: the public listener never holds
    /// more connections than it leaves after the reserve (see [`crate::limits::FileBudget`]).
    pub open_files_limit: Option<usize>,
    /// Events per history read when replaying or catching up.
    pub replay_page_size: usize,
    /// A client must send its request headers within this time (slowloris).
    pub header_read_timeout: Duration,
    /// History retention and live-ring limits, handed to the broker.
    pub history: StoreLimits,
    /// How often this node refreshes its cluster-view entry (which expires after three
    /// of these), and how often the dashboard updates.
    pub cluster_announce_interval: Duration,
    /// Cluster mode: the Redis broker. `None`: the embedded in-memory broker.
    pub redis: Option<RedisConfig>,
    /// Subscriber and publisher authentication, built once from its settings; off by
    /// default.
    pub auth: Arc<Auth>,
    /// Origins allowed to call the API from a browser; none by default (same-origin).
    pub cors: Cors,
    /// Streams one subject (token `sub`, else client IP) may hold; 0: no limit.
    pub max_connections_per_subject: usize,
    /// New streams per second on this node; 0: no limit.
    pub max_new_connections_per_second: u32,
    /// Publish requests per second on this node; 0: no limit.
    pub max_publishes_per_second: u32,
    /// Publish requests this node works on at once; past it, `503 overloaded` before
    /// the body is read.
    pub max_publishes_in_flight: usize,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<Cidr>,
}

impl Default for Settings {
    /// What the binary runs with when nothing is set, on this process's open-files limit.
    fn default() -> Self {
        Self::from_options(Options::defaults(), crate::limits::open_files_limit())
            .unwrap_or_else(|e| unreachable!("the declared defaults break a rule: {e}"))
    }
}

fn read(setting: &'static str, path: Option<&Path>) -> Result<Option<String>, SettingsError> {
    path.map(|p| {
        std::fs::read_to_string(p).map_err(|source| SettingsError::File {
            setting,
            path: p.to_owned(),
            source,
        })
    })
    .transpose()
}

impl Settings {
    /// Checks the rules across settings and works out what is derived: a random node id
    /// when none is set, and, from `open_files` (the process's open-files limit), the
    /// stream and request-connection caps that are not set.
    pub fn from_options(o: Options, open_files: usize) -> Result<Self, SettingsError> {
        if o.max_body_bytes_in_flight < o.max_body_size.max(64 * 1024) {
            return Err(SettingsError::Invalid {
                setting: "max_body_bytes_in_flight",
                reason: "must be at least max-body-size (and 64KiB), or no such body could be taken",
            });
        }
        let publish_keys = o
            .publish_keys
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(PublishKey::parse)
            .collect::<Result<Vec<_>, _>>()
            .map_err(SettingsError::PublishKey)?;
        let auth = Auth::build(AuthSettings {
            jwt_secret: o.auth_jwt_secret,
            jwt_public_key_pem: read("auth_jwt_public_key", o.auth_jwt_public_key.as_deref())?,
            jwks_json: read("auth_jwks_file", o.auth_jwks_file.as_deref())?,
            audience: o.auth_audience,
            issuer: o.auth_issuer,
            cookie_name: o.auth_cookie_name,
            publish_keys,
            mint_max_ttl: o.auth_token_max_ttl,
            leeway: TOKEN_LEEWAY,
        })?;
        if let Some(url) = &o.redis_url
            && !["redis://", "rediss://", "unix://"]
                .iter()
                .any(|s| url.starts_with(s))
        {
            // Not echoed: a URL carries a password.
            return Err(SettingsError::Invalid {
                setting: "redis_url",
                reason: "expected redis://[user:password@]host:port[/db], rediss://... (TLS) or unix:///path",
            });
        }
        if o.redis_cluster.is_some() && o.redis_sentinels.is_some() {
            return Err(SettingsError::Invalid {
                setting: "redis_cluster",
                reason: "a Redis Cluster has no sentinels: set redis_cluster or redis_sentinels, not both",
            });
        }
        let redis =
            (o.redis_url.is_some() || o.redis_sentinels.is_some() || o.redis_cluster.is_some())
                .then(|| RedisConfig {
                    url: o.redis_url,
                    sentinels: o.redis_sentinels.map(|s| s.0).unwrap_or_default(),
                    cluster: o.redis_cluster.map(|s| s.0).unwrap_or_default(),
                    master_name: o.redis_master_name,
                    sentinel_username: o.redis_sentinel_username,
                    sentinel_password: o.redis_sentinel_password,
                    sentinel_tls: o.redis_sentinel_tls,
                    pool_size: o.redis_pool_size,
                    key_prefix: o.redis_key_prefix,
                    timeout: o.redis_timeout,
                    min_replicas: o.publish_min_replicas,
                    replica_timeout: o.publish_replica_timeout,
                });
        if redis.is_none() && o.publish_min_replicas > 0 {
            return Err(SettingsError::Invalid {
                setting: "publish_min_replicas",
                reason: "needs Redis (--redis-url, --redis-sentinels or --redis-cluster): the embedded broker has no replicas",
            });
        }
        let admin_listen = o.admin_listen.0;
        // The open-files limit is shared out: streams + request connections + admin
        // connections + Redis + a reserve (see `FileBudget`).
        let files = FileBudget::for_node(
            open_files,
            admin_listen,
            o.max_admin_connections,
            redis.as_ref(),
        );
        let max_request_connections = o
            .max_request_connections
            .unwrap_or_else(|| files.default_request_connections());
        let max_connections = o
            .max_connections
            .unwrap_or_else(|| files.default_streams(max_request_connections));
        Ok(Self {
            listen: o.listen,
            admin_listen,
            node_id: o.node_id.unwrap_or_else(random_node_id),
            heartbeat_interval: o.heartbeat_interval,
            retry: o.retry,
            retry_jitter: o.retry_jitter,
            drain_window: o.drain_window,
            max_connections,
            max_channels_per_connection: o.max_channels_per_connection,
            max_event_size: o.max_event_size,
            max_body_size: o.max_body_size,
            body_read_timeout: o.body_read_timeout,
            max_body_bytes_in_flight: o.max_body_bytes_in_flight,
            max_request_connections,
            max_admin_connections: o.max_admin_connections,
            open_files_limit: Some(open_files),
            replay_page_size: REPLAY_PAGE_SIZE,
            header_read_timeout: o.header_read_timeout,
            history: StoreLimits {
                max_len: o.history_max_len,
                max_age: o.history_max_age,
                max_bytes: o.memory_history_max_bytes,
                live_backlog: o.live_backlog,
                live_backlog_bytes: o.live_backlog_bytes,
                idempotency_ttl: o.idempotency_ttl,
                idempotency_max_keys: IDEMPOTENCY_MAX_KEYS,
                idempotency_max_bytes: o.memory_idempotency_max_bytes,
            },
            cluster_announce_interval: o.cluster_announce_interval,
            redis,
            auth: Arc::new(auth),
            cors: o.cors_origins.unwrap_or_default(),
            max_connections_per_subject: o.max_connections_per_subject,
            max_new_connections_per_second: o.max_new_connections_per_second,
            max_publishes_per_second: o.max_publishes_per_second,
            max_publishes_in_flight: o.max_publishes_in_flight,
            trusted_proxies: o.trusted_proxies.unwrap_or_default().0,
        })
    }

    /// How many events surely fit in `bytes`: as many as would at the largest allowed
    /// event size, at least one. Sizes a broker read before any event's size is known.
    pub fn events_fitting(&self, bytes: usize) -> usize {
        (bytes / self.max_event_size.max(1)).max(1)
    }

    /// A jittered `retry:` value in milliseconds.
    pub fn jittered_retry_ms(&self) -> u64 {
        let base = u64::try_from(self.retry.as_millis()).unwrap_or(u64::MAX);
        let jitter = u64::try_from(self.retry_jitter.as_millis()).unwrap_or(0);
        base.saturating_add(if jitter == 0 {
            0
        } else {
            fastrand::u64(0..jitter)
        })
    }
}

/// A random node id, for logs and `/readyz`, when none is set.
fn random_node_id() -> String {
    uuid::Uuid::new_v4().to_string()
}
