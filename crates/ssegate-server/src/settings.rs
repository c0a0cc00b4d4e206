//! Runtime settings of a node, already parsed and validated (the binary builds them from
//! flags, environment and file). [`Settings::default`] has the documented defaults,
//! except for the three the binary works out at start: a random node id (here empty),
//! and `max_connections` and `max_request_connections`, which it derives from the
//! open-files limit (here fixed numbers).

use std::net::SocketAddr;
use std::time::Duration;

use ssegate_broker::{HistoryConfig, RedisConfig};

use crate::auth::AuthSettings;
use crate::cors::Cors;
use crate::limits::Cidr;

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
    pub history: HistoryConfig,
    /// How often this node refreshes its cluster-view entry (which expires after three
    /// of these), and how often the dashboard updates.
    pub cluster_announce_interval: Duration,
    /// Cluster mode: the Redis broker. `None`: the embedded in-memory broker.
    pub redis: Option<RedisConfig>,
    /// Subscriber and publisher authentication; off by default.
    pub auth: AuthSettings,
    /// Origins allowed to call the API from a browser; none by default (same-origin).
    pub cors: Cors,
    /// Streams one subject (token `sub`, else client IP) may hold; 0: no limit.
    pub max_connections_per_subject: usize,
    /// New streams per second on this node; 0: no limit.
    pub max_new_connections_per_second: u32,
    /// Publish requests per second on this node; 0: no limit.
    pub max_publishes_per_second: u32,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<Cidr>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            admin_listen: Some(SocketAddr::from(([0, 0, 0, 0], 9090))),
            node_id: String::new(),
            heartbeat_interval: Duration::from_secs(15),
            retry: Duration::from_secs(3),
            retry_jitter: Duration::from_secs(2),
            drain_window: Duration::from_secs(10),
            max_connections: 10_000,
            max_channels_per_connection: 64,
            max_event_size: 64 * 1024,
            max_body_size: 1024 * 1024,
            body_read_timeout: Duration::from_secs(10),
            max_body_bytes_in_flight: 64 * 1024 * 1024,
            max_request_connections: 1024,
            max_admin_connections: 64,
            open_files_limit: None,
            replay_page_size: 256,
            header_read_timeout: Duration::from_secs(10),
            history: HistoryConfig::default(),
            cluster_announce_interval: Duration::from_secs(2),
            redis: None,
            auth: AuthSettings::default(),
            cors: Cors::default(),
            max_connections_per_subject: 0,
            max_new_connections_per_second: 0,
            max_publishes_per_second: 0,
            trusted_proxies: Vec::new(),
        }
    }
}

impl Settings {
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
