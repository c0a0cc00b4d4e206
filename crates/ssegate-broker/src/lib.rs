//! ssegate's broker layer: where events are stored, numbered and fanned out.
//!
//! One trait, [`Broker`], stands between the HTTP layer and the history store. The HTTP
//! layer never knows which broker it talks to: the same streams, ids and gap signals come
//! out of the embedded in-memory broker and (in cluster mode) the Redis broker.
//!
//! Live delivery is split from history on purpose. History (replay, catch-up, gap
//! detection) is read through [`Broker::read`]; live events reach a node's connections
//! through the node-local [`hub::Hub`], which every broker feeds. A connection joins
//! without loss by subscribing to the hub first, reading history second, and skipping live
//! events that are not after what it replayed.
//!
//! # Layout
//!
//! - [`error`]: [`BrokerError`], tagged client / broker / internal.
//! - [`event`]: [`StoredEvent`], an event as stored and pre-encoded for the wire.
//! - [`hub`]: node-local fan-out, one bounded ring per channel (the backpressure rule),
//!   the chain of recent live events that serves resumes without a history read, and
//!   direct writes to waiting subscribers ([`Direct`]).
//! - [`memory`]: the embedded in-memory broker (the default with no Redis).
//! - [`redis`]: the Redis broker (cluster mode): Streams for history, pub/sub for live.
//! - [`trace`]: hooks that link deliveries to the publish's trace.
//! - [`clock`]: the wall clock, injectable so id and expiry rules can be tested.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod clock;
pub mod error;
pub mod event;
mod fingerprint;
pub mod hub;
pub mod memory;
pub mod redis;
pub mod trace;

use std::sync::Arc;
use std::time::Duration;

use ssegate_core::{ChannelName, EntryId, Epoch, NewEvent};

pub use error::{BrokerError, BrokerOp, ErrorClass, KnownIds};
pub use event::{StoredData, StoredEvent};
pub use hub::{ChannelHead, Direct, Generation, LiveRecv, LiveSubscription, Offer};
pub use memory::{MemoryBroker, StoreLimits};
pub use redis::{CLUSTER_PRIMARIES_BUDGETED, PING_IDLE_AFTER, RedisBroker, RedisConfig};

/// Where a history read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// From the oldest retained event.
    Oldest,
    /// After this entry (a client's cursor).
    After(EntryId),
    /// After an event that this node's stream wrote, as [`ReadFrom::After`]. The store
    /// takes the id as evidence: if it lacks that event although nothing trimmed it (a
    /// failover lost it), it records the loss before reading, as the node's guard does
    /// after a reconnect, so the gap is found once whichever of the two runs first.
    AfterShown(EntryId),
}

impl ReadFrom {
    /// The cursor the read continues after; `None` from the oldest retained event.
    pub fn cursor(self) -> Option<EntryId> {
        match self {
            Self::Oldest => None,
            Self::After(id) | Self::AfterShown(id) => Some(id),
        }
    }
}

/// One page of a channel's history.
#[derive(Debug, Clone)]
pub struct ReadPage {
    /// The epoch of the store when the page was read.
    pub epoch: Epoch,
    /// Events after [`ReadPage::start`], oldest first, at most the requested limit.
    pub events: Vec<Arc<StoredEvent>>,
    /// True when events after the requested cursor are gone (trimmed, expired, or lost in
    /// a failover), or the cursor is ahead of everything the store has: the reader must be
    /// told.
    pub gap: bool,
    /// The position the page continues from: the requested cursor, or after a gap the
    /// newest deleted entry (so resuming from it yields the oldest retained event), or the
    /// end of the lost region the read passed (Redis, after a failover).
    pub start: EntryId,
    /// The channel's newest entry id (`0-0` when it has none).
    pub last: EntryId,
}

impl ReadPage {
    /// Whether more events follow this page.
    pub fn has_more(&self) -> bool {
        let end = self.events.last().map_or(self.start, |e| e.id);
        end < self.last
    }
}

/// The result of a publish: the epoch and one id per event, in request order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The store's epoch at the publish: with an id, it makes the event's cursor.
    pub epoch: Epoch,
    /// The new entries' ids, one per event of the request.
    pub ids: Vec<EntryId>,
}

/// A broker's background work: runs until the node stops it.
pub type Background = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Background work kept until [`Broker::background`] hands it out.
pub(crate) struct BackgroundSlot(std::sync::Mutex<Option<Background>>);

impl BackgroundSlot {
    pub(crate) fn new(work: Background) -> Self {
        Self(std::sync::Mutex::new(Some(work)))
    }

    pub(crate) fn take(&self) -> Option<Background> {
        lock(&self.0).take()
    }
}

impl std::fmt::Debug for BackgroundSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BackgroundSlot")
    }
}

/// A history store with live fan-out.
#[async_trait::async_trait]
pub trait Broker: Send + Sync + 'static {
    /// A short name for logs and `/readyz` (`memory`, `redis`).
    fn kind(&self) -> &'static str;

    /// The work this broker needs running beside it (the Redis pub/sub connection, the
    /// in-memory expiry sweep), handed out once: the node spawns it in its lifecycle, so
    /// that shutdown ends it like every other task. `None` after the first call.
    fn background(&self) -> Option<Background> {
        None
    }

    /// The current epoch of the history store.
    async fn epoch(&self) -> Result<Epoch, BrokerError>;

    /// Publishes a batch atomically: every event is stored (and fanned out) or none is.
    /// With an idempotency key, a retry within the key's lifetime returns the original
    /// ids and publishes nothing.
    async fn publish(
        &self,
        events: Vec<NewEvent>,
        idempotency_key: Option<&str>,
    ) -> Result<Published, BrokerError>;

    /// Registers a live subscription on this node. Subscribe before reading history.
    fn subscribe(&self, channel: &ChannelName) -> LiveSubscription;

    /// Reads up to `limit` events of a channel's history.
    async fn read(
        &self,
        channel: &ChannelName,
        from: ReadFrom,
        limit: usize,
    ) -> Result<ReadPage, BrokerError>;

    /// Whether the broker can serve requests now (for `/readyz`).
    async fn ready(&self) -> Result<(), BrokerError>;

    /// Channels with at least one subscriber on this node.
    fn local_channels(&self) -> usize;

    /// Puts this node in the cluster view for `ttl` (the caller refreshes it); `info` is
    /// a JSON object. Without a shared store there is no cluster view to join.
    async fn announce_node(
        &self,
        _id: &str,
        _info: &str,
        _ttl: Duration,
    ) -> Result<(), BrokerError> {
        Ok(())
    }

    /// Takes this node out of the cluster view (on shutdown).
    async fn retire_node(&self, _id: &str) -> Result<(), BrokerError> {
        Ok(())
    }

    /// The `info` of every node in the cluster view. `None`: this broker has no shared
    /// view (the caller shows just itself).
    async fn cluster_nodes(&self) -> Result<Option<Vec<String>>, BrokerError> {
        Ok(None)
    }
}

/// Locks a mutex, also after a panic elsewhere poisoned it: every structure guarded here
/// stays consistent between statements, so its data is still good.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl std::fmt::Debug for dyn Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Broker({})", self.kind())
    }
}
