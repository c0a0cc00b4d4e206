//! Admission limits beyond the node's stream cap (which is the `Semaphore` in
//! [`crate::state`]): streams per subject, new streams per second, publishes per second,
//! the connections a listener holds ([`ConnectionSlots`], shared out of the open-files
//! limit by [`FileBudget`]) and the bytes of request bodies in flight ([`BodyBudget`]).
//!
//! A subject is the token's `sub` when auth is on, else the client's IP address: the
//! socket's peer, or the right-most `X-Forwarded-For` hop that is not a trusted proxy when
//! the peer is one (`SSEGATE_TRUSTED_PROXIES`); an untrusted peer cannot choose its IP.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use governor::clock::Clock;
use http::HeaderMap;
use ipnet::IpNet;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// Not an address range.
#[derive(Debug, thiserror::Error)]
pub enum CidrError {
    /// The address part is not an IP address.
    #[error("not an IP address: {0:?}")]
    Address(String),
    /// The prefix is not a number of bits the address has.
    #[error("bad prefix in {0:?}")]
    Prefix(String),
}

/// An address range, `10.0.0.0/8` or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(IpNet);

impl Cidr {
    /// `addr/prefix` or `addr` (a single address); blanks around either part are
    /// ignored, and host bits after the prefix are allowed (`10.1.2.3/8` is `10.0.0.0/8`).
    pub fn parse(s: &str) -> Result<Self, CidrError> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = ip
            .trim()
            .parse()
            .map_err(|_| CidrError::Address(ip.to_owned()))?;
        let net = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .and_then(|p| IpNet::new(addr, p).ok())
                .ok_or_else(|| CidrError::Prefix(s.to_owned()))?,
            None => IpNet::from(addr),
        };
        Ok(Self(net))
    }

    /// Whether `ip` is in the range; an IPv4-mapped IPv6 address counts as its IPv4 one.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.0.contains(&ip)
    }
}

/// The client address a limit applies to.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    if !trusted.iter().any(|c| c.contains(peer)) {
        return peer;
    }
    let hops: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|h| h.trim().parse().ok())
        .collect();
    hops.iter()
        .rev()
        .find(|ip| !trusted.iter().any(|c| c.contains(**ip)))
        .copied()
        .unwrap_or(peer)
}

/// A token bucket: `rate` per second, bursts up to one second's worth (GCRA, which is
/// the same thing, kept in one atomic).
#[derive(Debug)]
pub struct RateLimiter(
    governor::RateLimiter<
        governor::state::NotKeyed,
        governor::state::InMemoryState,
        governor::clock::MonotonicClock,
    >,
);

impl RateLimiter {
    /// `per_second` tokens a second, as many at once after a quiet second; 0 counts as 1
    /// (a node with no limit has no limiter at all).
    pub fn new(per_second: u32) -> Self {
        let rate = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
        Self(governor::RateLimiter::direct_with_clock(
            governor::Quota::per_second(rate),
            governor::clock::MonotonicClock,
        ))
    }

    /// Takes one token, or says how many seconds until one is there.
    pub fn take(&self) -> Result<(), u64> {
        self.0.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(self.0.clock().now());
            wait.as_secs_f64().ceil().max(1.0) as u64
        })
    }
}

/// Streams per subject.
#[derive(Debug, Default)]
pub struct SubjectCounts {
    max: usize,
    open: Mutex<HashMap<String, usize>>,
}

impl SubjectCounts {
    /// At most `max` streams per subject; 0: no limit (and nothing is counted).
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for `subject`, or `None` at its limit (0 = no limit).
    pub fn enter(self: &Arc<Self>, subject: String) -> Option<SubjectGuard> {
        if self.max == 0 {
            return Some(SubjectGuard {
                counts: None,
                subject,
            });
        }
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(subject.clone()).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(SubjectGuard {
            counts: Some(self.clone()),
            subject,
        })
    }
}

/// Holds a subject's slot while its stream is open.
#[derive(Debug)]
pub struct SubjectGuard {
    counts: Option<Arc<SubjectCounts>>,
    subject: String,
}

impl Drop for SubjectGuard {
    fn drop(&mut self) {
        let Some(counts) = &self.counts else { return };
        let mut open = counts.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.subject) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.subject);
            }
        }
    }
}

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

/// The bytes of request bodies a node holds at once, node-wide: a body takes its share
/// before it is read (its `Content-Length`, or chunk by chunk when it has none) and gives
/// it back when the request has been answered.
#[derive(Debug)]
pub struct BodyBudget {
    bytes: Arc<Semaphore>,
}

impl BodyBudget {
    /// A budget of `max` bytes (capped at tokio's semaphore limit, `usize::MAX >> 3`).
    pub fn new(max: usize) -> Self {
        Self {
            bytes: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
        }
    }

    /// `n` bytes of the budget, or `None` when they are not free now.
    pub fn try_take(&self, n: usize) -> Option<BodyBytes> {
        let n = u32::try_from(n).ok()?;
        let permit = self.bytes.clone().try_acquire_many_owned(n).ok()?;
        Some(BodyBytes(permit))
    }

    /// Bytes free now.
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }
}

/// A body's share of the [`BodyBudget`], given back on drop.
#[derive(Debug)]
pub struct BodyBytes(OwnedSemaphorePermit);

impl BodyBytes {
    /// Takes `n` more bytes, or says `false` when they are not free now.
    pub fn grow(&mut self, budget: &BodyBudget, n: usize) -> bool {
        match budget.try_take(n) {
            Some(more) => {
                self.0.merge(more.0);
                true
            }
            None => false,
        }
    }

    /// How many bytes this share is.
    pub fn len(&self) -> usize {
        self.0.num_permits()
    }

    /// Whether this share is zero bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains(ip("10.1.200.3")));
        assert!(!c.contains(ip("10.2.0.1")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(
            Cidr::parse("127.0.0.1")
                .unwrap()
                .contains(ip("::ffff:127.0.0.1"))
        );
        assert!(Cidr::parse("fd00::/8").unwrap().contains(ip("fd12::1")));
        assert!(!Cidr::parse("fd00::/8").unwrap().contains(ip("fe80::1")));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nope").is_err());
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "1.2.3.4, 10.0.0.7".parse().unwrap());
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("1.2.3.4"));
        assert_eq!(client_ip(ip("5.6.7.8"), &h, &trusted), ip("5.6.7.8"));
        h.insert("x-forwarded-for", "9.9.9.9, 1.2.3.4".parse().unwrap());
        assert_eq!(
            client_ip(ip("10.0.0.1"), &h, &trusted),
            ip("1.2.3.4"),
            "right-most untrusted hop"
        );
    }

    #[test]
    fn subject_slots_are_counted_and_released() {
        let counts = SubjectCounts::new(2);
        let a = counts.enter("a".into()).unwrap();
        let _b = counts.enter("a".into()).unwrap();
        assert!(counts.enter("a".into()).is_none());
        assert!(counts.enter("other".into()).is_some());
        drop(a);
        assert!(counts.enter("a".into()).is_some());
    }

    #[test]
    fn the_bucket_allows_a_second_of_burst_then_refuses() {
        let r = RateLimiter::new(5);
        for _ in 0..5 {
            assert!(r.take().is_ok());
        }
        assert_eq!(r.take(), Err(1));
    }

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

    #[test]
    fn body_bytes_are_taken_and_given_back() {
        let budget = BodyBudget::new(100);
        let mut a = budget.try_take(60).unwrap();
        assert!(budget.try_take(41).is_none(), "past the budget");
        assert!(a.grow(&budget, 40));
        assert_eq!((a.len(), budget.available()), (100, 0));
        assert!(!a.grow(&budget, 1));
        drop(a);
        assert_eq!(budget.available(), 100);
        assert!(budget.try_take(0).is_some_and(|b| b.is_empty()));
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
