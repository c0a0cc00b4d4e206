//! The node's open files: how its open-files limit is raised and shared out between the
//! listeners, Redis and the process ([`FileBudget`]), the listeners' connection caps
//! ([`ConnectionSlots`]), and the descriptor table sized before the runtime starts
//! ([`presize_descriptor_table`]).
//!
//! # Bounding rule
//!
//! **The public listener never holds more than its share of descriptors**, so a flood of
//! connections cannot take what the admin listener, Redis and the process itself need;
//! past its share, accepting waits for a slot (see [`ConnectionSlots`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Descriptors a node keeps for itself whatever the connection limits say: its two
/// listeners, stdio and log files, the runtime's own (epoll, eventfd, signal pipe), the
/// OTLP exporter's connections, files read at run time. An idle node holds about 15.
pub const RESERVED_FILES: usize = 64;
/// Descriptors kept for Redis on top of what its configuration holds at once
/// ([`ssegate_broker::RedisConfig::connections`]): the pub/sub or sentinel connection of
/// one primary, reconnects that overlap a connection being closed, a cluster's slot map
/// reads from a seed.
pub const REDIS_EXTRA_FILES: usize = 8;
/// No listener is ever capped below this many connections, however small the limit.
const MIN_CONNECTIONS: usize = 16;

/// How a node shares out its open-files limit:
///
/// ```text
/// streams + request connections  (the public listener, at most `public`)
///   + admin connections + Redis connections + RESERVED_FILES  (`reserve`)
///   <= the open-files limit
/// ```
///
/// The public listener never holds more than `public` connections, so it cannot take the
/// descriptors that the admin listener, Redis and the process itself need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileBudget {
    /// The open-files limit.
    pub limit: usize,
    /// What is kept back from the public listener.
    pub reserve: usize,
    /// What the public listener may hold: streams and request connections together.
    pub public: usize,
}

/// This process's open-files limit (the soft one, which is what `accept` runs into).
pub fn open_files_limit() -> usize {
    let soft = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
    usize::try_from(soft).unwrap_or(usize::MAX)
}

/// Raises this process's soft open-files limit to its hard limit (what a server wants:
/// the soft limit exists for programs that do not expect many descriptors).
pub fn raise_open_files_limit() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
}

/// The most descriptors [`presize_descriptor_table`] makes room for (a table of this many
/// takes 512 KiB of kernel memory; beyond it the table grows as it fills, a few more times
/// at most).
pub const PRESIZED_DESCRIPTORS: usize = 1 << 16;

/// Makes the kernel's descriptor table of this process large enough for its open-files
/// limit (up to [`PRESIZED_DESCRIPTORS`]) at once. Call it before any thread starts.
///
/// Why: the table starts small and doubles as descriptors are opened, and in a process
/// with more than one thread each growth waits for an RCU grace period (`expand_fdtable`),
/// which blocks the thread that is accepting a connection for milliseconds. The first
/// 1,000 streams a fresh node accepted went through three of those (256 to 2,048 slots):
/// their connect p99 was 9-19 ms, and 0.5-1.4 ms for the next 1,000 on the same node. With
/// one thread the growth does not wait, and a table never shrinks, so one descriptor opened
/// high now and closed again sizes it for the process's life.
pub fn presize_descriptor_table() {
    let (Ok(highest), Ok(null)) = (
        i32::try_from(highest_presized(open_files_limit())),
        std::fs::File::open("/dev/null"),
    ) else {
        return;
    };
    // Dropped at once: only the table's size was wanted.
    let _ = rustix::io::fcntl_dupfd_cloexec(&null, highest);
}

/// The descriptor [`presize_descriptor_table`] opens for a process with `limit` open files:
/// the last one the limit allows, within [`PRESIZED_DESCRIPTORS`].
fn highest_presized(limit: usize) -> usize {
    limit.min(PRESIZED_DESCRIPTORS).saturating_sub(1)
}

impl FileBudget {
    /// The budget of a node with `limit` open files, an admin listener of at most
    /// `admin_connections` (0 when it is off) and `redis_connections` to Redis.
    pub fn new(limit: usize, admin_connections: usize, redis_connections: usize) -> Self {
        let reserve = RESERVED_FILES + admin_connections + redis_connections;
        Self {
            limit,
            reserve,
            public: limit.saturating_sub(reserve).max(MIN_CONNECTIONS),
        }
    }

    /// The budget of a node with `limit` open files, its admin listener (if on) of at
    /// most `max_admin` connections, and its Redis (if any).
    pub fn for_node(
        limit: usize,
        admin_listen: Option<std::net::SocketAddr>,
        max_admin: usize,
        redis: Option<&ssegate_broker::RedisConfig>,
    ) -> Self {
        Self::new(
            limit,
            admin_listen.map_or(0, |_| max_admin),
            redis.map_or(0, |r| r.connections() + REDIS_EXTRA_FILES),
        )
    }

    /// Descriptors a node's settings keep back from the public listener.
    pub fn of(settings: &crate::Settings) -> Option<Self> {
        settings.open_files_limit.map(|limit| {
            Self::for_node(
                limit,
                settings.admin_listen,
                settings.max_admin_connections,
                settings.redis.as_ref(),
            )
        })
    }

    /// The default cap of request connections: a quarter of the public share, between
    /// 16 and 1024.
    pub fn default_request_connections(&self) -> usize {
        (self.public / 4).clamp(MIN_CONNECTIONS, 1024)
    }

    /// The default stream cap: the public share less the request connections.
    pub fn default_streams(&self, request_connections: usize) -> usize {
        self.public
            .saturating_sub(request_connections)
            .max(MIN_CONNECTIONS)
    }
}

/// The connections one listener holds, and the gate its accept loop waits at: a
/// connection is accepted only when it fits, so that at the cap new connections wait in
/// the kernel's listen backlog (which costs the process no descriptor) instead of
/// failing `accept` with `EMFILE` for every listener of the process.
///
/// On the public listener, connections that are streams and the others ("request
/// connections": a head or a body being read, a request being answered, an idle
/// keep-alive connection) are capped apart: at most `max_total` in all and at most
/// `max_requests` that are not streams, so a flood of slow requests cannot take the
/// room of the streams. Which a connection is becomes known only after its head, so the
/// check is made at accept: a new connection is a request connection until it streams.
#[derive(Debug)]
pub struct ConnectionSlots {
    max_total: usize,
    max_requests: usize,
    open: AtomicUsize,
    /// Wakes the (one) accept loop when a connection ends or becomes a stream.
    changed: Notify,
}

impl ConnectionSlots {
    /// A listener's gate: at most `max_total` connections, at most `max_requests` of them
    /// not streams (each at least 1).
    pub fn new(max_total: usize, max_requests: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total: max_total.max(1),
            max_requests: max_requests.max(1),
            open: AtomicUsize::new(0),
            changed: Notify::new(),
        })
    }

    /// Waits until one more connection fits: fewer than `max_total` open, and fewer than
    /// `max_requests` of them not streams, `streams()` being how many stream now. Only one
    /// task (the listener's accept loop) may wait at a time.
    pub async fn acquire(self: &Arc<Self>, streams: impl Fn() -> usize) -> ConnectionSlot {
        loop {
            let open = self.open.load(Ordering::SeqCst);
            let fits = open < self.max_total && open.saturating_sub(streams()) < self.max_requests;
            if fits {
                if self
                    .open
                    .compare_exchange(open, open + 1, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    return ConnectionSlot {
                        slots: self.clone(),
                    };
                }
                continue;
            }
            // A connection that ends or starts streaming in between leaves a permit in
            // the `Notify`, so this wait cannot miss it.
            self.changed.notified().await;
        }
    }

    /// A request connection became a stream: room for another request connection.
    pub fn stream_started(&self) {
        self.changed.notify_one();
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Resolves once no connection is open. For the end of shutdown, once the accept
    /// loop (the other task that waits here) is gone.
    pub async fn wait_empty(&self) {
        loop {
            let changed = self.changed.notified();
            if self.open() == 0 {
                return;
            }
            changed.await;
        }
    }

    /// The cap of all connections.
    pub fn max_total(&self) -> usize {
        self.max_total
    }

    /// The cap of connections that are not streams.
    pub fn max_requests(&self) -> usize {
        self.max_requests
    }
}

/// Held by a connection's task for the connection's lifetime.
#[derive(Debug)]
pub struct ConnectionSlot {
    slots: Arc<ConnectionSlots>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.slots.open.fetch_sub(1, Ordering::SeqCst);
        self.slots.changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_budget_keeps_the_reserve_from_the_public_listener() {
        let b = FileBudget::new(20_000, 64, 0);
        assert_eq!(b.reserve, 128);
        assert_eq!(b.public, 19_872);
        let requests = b.default_request_connections();
        assert_eq!(requests, 1024);
        let streams = b.default_streams(requests);
        assert_eq!(streams + requests + b.reserve, b.limit);
        // A small limit: a quarter of what is left serves requests.
        let b = FileBudget::new(256, 64, 0);
        assert_eq!((b.public, b.default_request_connections()), (128, 32));
        assert_eq!(b.default_streams(32), 96);
        // Redis connections are kept back too.
        assert_eq!(FileBudget::new(1024, 64, 24).reserve, 64 + 64 + 24);
        // Never nothing at all.
        assert_eq!(FileBudget::new(10, 64, 0).public, MIN_CONNECTIONS);
    }

    #[tokio::test]
    async fn a_listener_waits_for_a_free_slot() {
        let slots = ConnectionSlots::new(3, 2);
        let a = slots.acquire(|| 0).await;
        let _b = slots.acquire(|| 0).await;
        // Two request connections: a third waits.
        let waiting =
            tokio::time::timeout(std::time::Duration::from_millis(50), slots.acquire(|| 0));
        assert!(waiting.await.is_err(), "at the request cap, accept waits");
        // One of them becomes a stream: room for one more, up to the total.
        let streams = AtomicUsize::new(1);
        slots.stream_started();
        let c = slots.acquire(|| streams.load(Ordering::SeqCst)).await;
        assert_eq!(slots.open(), 3);
        let waiting =
            tokio::time::timeout(std::time::Duration::from_millis(50), slots.acquire(|| 1));
        assert!(waiting.await.is_err(), "at the total cap, accept waits");
        // A connection ends: the waiting accept goes on.
        let slots2 = slots.clone();
        let waiter = tokio::spawn(async move { slots2.acquire(|| 1).await });
        tokio::task::yield_now().await;
        drop(a);
        let d = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken when a slot frees")
            .unwrap();
        assert_eq!(slots.open(), 3);
        drop((c, d));
        assert_eq!(slots.open(), 1);
    }

    /// The table is sized for the open-files limit, and never past the kernel memory its
    /// bound states (65,536 slots), however large the limit (containers often allow
    /// 1,048,576).
    #[test]
    fn the_presized_table_follows_the_limit_up_to_its_bound() {
        assert_eq!(highest_presized(4096), 4095);
        assert_eq!(
            highest_presized(PRESIZED_DESCRIPTORS),
            PRESIZED_DESCRIPTORS - 1
        );
        assert_eq!(highest_presized(1 << 20), PRESIZED_DESCRIPTORS - 1);
        assert_eq!(highest_presized(0), 0);
    }
}
