//! What every request handler shares.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use ssegate_broker::Broker;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::auth::Auth;
use crate::lifecycle::{Lifecycle, StreamCount};
use crate::limits::{
    BodyBudget, ConnectionSlots, FileBudget, RateLimiter, SubjectCounts, SubjectGuard,
};
use crate::metrics::Metrics;
use crate::settings::Settings;

/// The node's shared state: one per [`crate::App`], behind an `Arc` that every
/// connection, stream and background task holds.
#[derive(Debug)]
pub struct AppState {
    /// The node's settings, fixed at start.
    pub settings: Settings,
    /// The history store and live fan-out (in-memory or Redis).
    pub broker: Arc<dyn Broker>,
    /// Shutdown: the drain and stop signals, every task, and the open-stream count.
    pub lifecycle: Lifecycle,
    /// One permit per open stream: the node's connection cap.
    pub stream_permits: Arc<Semaphore>,
    /// Source of stream ids for logs.
    pub next_stream_id: AtomicU64,
    /// Deliveries per second over the last announce interval (`f64` bits), for the
    /// cluster view.
    pub delivery_rate_bits: AtomicU64,
    /// The Prometheus handles.
    pub metrics: Metrics,
    /// The bound public address (known once listening), for the cluster view.
    pub public_addr: std::sync::OnceLock<std::net::SocketAddr>,
    /// When the node started (Unix ms), for the cluster view.
    pub started_at_ms: u64,
    /// Token and publisher-key checks, built from the settings.
    pub auth: Arc<Auth>,
    /// Streams per subject, against `max_connections_per_subject`.
    pub subjects: Arc<SubjectCounts>,
    /// New streams per second; `None`: no limit.
    pub new_streams: Option<RateLimiter>,
    /// Publish requests per second; `None`: no limit.
    pub publishes: Option<RateLimiter>,
    /// One permit per publish request being worked on.
    pub publishes_in_flight: Arc<Semaphore>,
    /// Connections of the public listener: streams and request connections.
    pub public_connections: Arc<ConnectionSlots>,
    /// Connections of the admin listener.
    pub admin_connections: Arc<ConnectionSlots>,
    /// Bytes of request bodies held at once.
    pub body_budget: BodyBudget,
    /// Reads of a channel's newest id shared by the fresh streams opening on it at once.
    pub(crate) heads: crate::stream::Heads,
}

/// The client's socket address, attached to every request by the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct RemoteAddr(pub std::net::SocketAddr);

impl AppState {
    /// The state of a node with these settings and this broker.
    pub fn new(settings: Settings, broker: Arc<dyn Broker>) -> Arc<Self> {
        let permits = Arc::new(Semaphore::new(settings.max_connections));
        let auth = settings.auth.clone();
        let rate = |n: u32| (n > 0).then(|| RateLimiter::new(n));
        let public_connections = ConnectionSlots::new(
            public_connection_cap(&settings),
            settings.max_request_connections,
        );
        Arc::new(Self {
            public_connections,
            admin_connections: ConnectionSlots::new(
                settings.max_admin_connections,
                settings.max_admin_connections,
            ),
            body_budget: BodyBudget::new(settings.max_body_bytes_in_flight),
            heads: crate::stream::Heads::default(),
            auth,
            subjects: SubjectCounts::new(settings.max_connections_per_subject),
            new_streams: rate(settings.max_new_connections_per_second),
            publishes: rate(settings.max_publishes_per_second),
            publishes_in_flight: Arc::new(Semaphore::new(settings.max_publishes_in_flight)),
            settings,
            broker,
            lifecycle: Lifecycle::new(),
            stream_permits: permits,
            next_stream_id: AtomicU64::new(0),
            delivery_rate_bits: AtomicU64::new(0),
            metrics: Metrics::new(),
            public_addr: std::sync::OnceLock::new(),
            started_at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0)),
        })
    }

    /// Whether shutdown has begun: new subscribers get a retry-only stream, `/readyz`
    /// answers 503.
    pub fn is_draining(&self) -> bool {
        self.lifecycle.is_draining()
    }

    /// A slot for a new stream, or `None` at the connection cap.
    pub fn admit_stream(&self) -> Option<StreamGuard> {
        let permit = self.stream_permits.clone().try_acquire_owned().ok()?;
        let guard = StreamGuard {
            _count: self.lifecycle.streams.enter(),
            _permit: permit,
            subject: None,
        };
        // Its connection no longer counts as a request connection.
        self.public_connections.stream_started();
        Some(guard)
    }
}

/// All the connections the public listener may hold: streams plus request connections,
/// and never more than the open-files limit leaves after the reserve (a warning says so
/// when the configured caps would not fit).
fn public_connection_cap(settings: &Settings) -> usize {
    let wanted = settings
        .max_connections
        .saturating_add(settings.max_request_connections);
    let Some(files) = FileBudget::of(settings) else {
        return wanted;
    };
    if wanted > files.public {
        tracing::warn!(
            max_connections = settings.max_connections,
            max_request_connections = settings.max_request_connections,
            open_files_limit = files.limit,
            reserved = files.reserve,
            public_connections = files.public,
            "streams and request connections together exceed the open-files limit less its \
             reserve: the public listener holds at most {} connections",
            files.public
        );
        return files.public;
    }
    wanted
}

/// Held by a stream for its lifetime: its connection permit and its place in the count.
#[derive(Debug)]
pub struct StreamGuard {
    _count: StreamCount,
    _permit: OwnedSemaphorePermit,
    /// The subject's slot, when per-subject limits apply.
    pub(crate) subject: Option<SubjectGuard>,
}
