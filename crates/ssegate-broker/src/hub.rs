//! Node-local fan-out of live events to this node's connections.
//!
//! # Backpressure rule
//!
//! **A slow subscriber never makes this node buffer more for it.** Each channel with local
//! subscribers has one bounded ring (a `tokio::sync::broadcast` channel of `capacity`
//! events, each an `Arc` of the one encoded event). Publishing never waits for a reader:
//! once a subscriber is more than `capacity` events behind, the oldest entries are
//! overwritten and that subscriber's next receive says [`LiveRecv::Lagged`]. The connection
//! then catches up from the history store (from its own last delivered id) and rejoins
//! live, skipping what it already sent; if its position has left the retained history it
//! is told `sync-required`. So per channel the node holds at most `capacity` references,
//! shared by all subscribers, whatever they do; per connection it holds a cursor.
//!
//! The ring is created on a channel's first local subscription and dropped with its last.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::Stream;
use ssegate_core::ChannelName;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use crate::event::StoredEvent;
use crate::lock;

/// Told when a channel gains its first or loses its last local subscriber, so that a
/// cluster broker can SUBSCRIBE / UNSUBSCRIBE upstream.
pub trait HubObserver: Send + Sync + std::fmt::Debug + 'static {
    fn first_subscriber(&self, channel: &ChannelName);
    fn last_unsubscribed(&self, channel: &ChannelName);
}

/// What travels through a channel's ring.
#[derive(Debug, Clone)]
enum HubMsg {
    Event(Arc<StoredEvent>),
    /// Live delivery may have missed events (the upstream subscription just became active,
    /// or was re-established): every subscriber re-reads history from its cursor.
    Resync,
}

#[derive(Debug)]
struct Entry {
    tx: broadcast::Sender<HubMsg>,
    subscribers: usize,
}

#[derive(Debug)]
struct Shared {
    channels: Mutex<HashMap<ChannelName, Entry>>,
    capacity: usize,
    observer: Option<Arc<dyn HubObserver>>,
}

/// The fan-out hub of one node. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

impl Hub {
    /// `capacity` is the per-channel ring size: how far (in events) a subscriber may fall
    /// behind live before it is caught up from history instead.
    pub fn new(capacity: usize, observer: Option<Arc<dyn HubObserver>>) -> Self {
        Self {
            shared: Arc::new(Shared {
                channels: Mutex::new(HashMap::new()),
                capacity: capacity.max(1),
                observer,
            }),
        }
    }

    /// Subscribes to a channel's live events from now on.
    pub fn subscribe(&self, channel: &ChannelName) -> LiveSubscription {
        let mut channels = lock(&self.shared.channels);
        let first;
        let rx = match channels.get_mut(channel) {
            Some(entry) => {
                entry.subscribers += 1;
                first = false;
                entry.tx.subscribe()
            }
            None => {
                let (tx, rx) = broadcast::channel(self.shared.capacity);
                channels.insert(channel.clone(), Entry { tx, subscribers: 1 });
                first = true;
                metrics::gauge!(ssegate_core::metric_names::SUBSCRIBED_CHANNELS).increment(1.0);
                rx
            }
        };
        drop(channels);
        if first {
            if let Some(obs) = &self.shared.observer {
                obs.first_subscriber(channel);
            }
        }
        LiveSubscription {
            stream: BroadcastStream::new(rx),
            channel: channel.clone(),
            hub: self.clone(),
        }
    }

    /// Hands an event to every local subscriber of its channel. Never blocks.
    pub fn send(&self, event: Arc<StoredEvent>) {
        let channels = lock(&self.shared.channels);
        if let Some(entry) = channels.get(&event.channel) {
            // An error only means no receiver is left, which the guard is about to fix.
            let _ = entry.tx.send(HubMsg::Event(event));
        }
    }

    /// Tells every local subscriber of `channel` to catch up from history.
    pub fn resync(&self, channel: &ChannelName) {
        let channels = lock(&self.shared.channels);
        if let Some(entry) = channels.get(channel) {
            let _ = entry.tx.send(HubMsg::Resync);
        }
    }

    /// Tells every local subscriber of every channel to catch up from history.
    pub fn resync_all(&self) {
        let channels = lock(&self.shared.channels);
        for entry in channels.values() {
            let _ = entry.tx.send(HubMsg::Resync);
        }
    }

    /// How many local connections listen to `channel`.
    pub fn subscriber_count(&self, channel: &ChannelName) -> usize {
        lock(&self.shared.channels)
            .get(channel)
            .map_or(0, |e| e.subscribers)
    }

    /// Whether any local connection listens to `channel`.
    pub fn has_subscribers(&self, channel: &ChannelName) -> bool {
        lock(&self.shared.channels).contains_key(channel)
    }

    /// How many channels have local subscribers.
    pub fn channel_count(&self) -> usize {
        lock(&self.shared.channels).len()
    }

    /// The channels with local subscribers.
    pub fn channels(&self) -> Vec<ChannelName> {
        lock(&self.shared.channels).keys().cloned().collect()
    }

    fn release(&self, channel: &ChannelName) {
        let mut channels = lock(&self.shared.channels);
        let last = match channels.get_mut(channel) {
            Some(entry) if entry.subscribers > 1 => {
                entry.subscribers -= 1;
                false
            }
            Some(_) => {
                channels.remove(channel);
                metrics::gauge!(ssegate_core::metric_names::SUBSCRIBED_CHANNELS).decrement(1.0);
                true
            }
            None => false,
        };
        drop(channels);
        if last {
            if let Some(obs) = &self.shared.observer {
                obs.last_unsubscribed(channel);
            }
        }
    }
}

/// What a live subscription yields.
#[derive(Debug)]
pub enum LiveRecv {
    Event(Arc<StoredEvent>),
    /// This subscriber fell behind the ring (a slow consumer): catch up from history.
    Lagged,
    /// Upstream delivery may have missed events (the node's subscription just became
    /// active, or was re-established): catch up from history. Not the subscriber's fault,
    /// so it is counted apart from [`LiveRecv::Lagged`].
    Resync,
    /// The hub is gone (node shutting down).
    Closed,
}

/// One connection's live subscription to one channel. Dropping it unsubscribes.
pub struct LiveSubscription {
    stream: BroadcastStream<HubMsg>,
    channel: ChannelName,
    hub: Hub,
}

impl std::fmt::Debug for LiveSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveSubscription")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl LiveSubscription {
    pub fn channel(&self) -> &ChannelName {
        &self.channel
    }

    /// Polls for the next live event.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<LiveRecv> {
        match Pin::new(&mut self.stream).poll_next(cx) {
            Poll::Ready(Some(Ok(HubMsg::Event(ev)))) => Poll::Ready(LiveRecv::Event(ev)),
            Poll::Ready(Some(Ok(HubMsg::Resync))) => Poll::Ready(LiveRecv::Resync),
            Poll::Ready(Some(Err(BroadcastStreamRecvError::Lagged(_)))) => {
                Poll::Ready(LiveRecv::Lagged)
            }
            Poll::Ready(None) => Poll::Ready(LiveRecv::Closed),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Waits for the next live event.
    pub async fn recv(&mut self) -> LiveRecv {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }
}

impl Drop for LiveSubscription {
    fn drop(&mut self) {
        self.hub.release(&self.channel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssegate_core::{Data, EntryId, Epoch};

    fn ev(ch: &ChannelName, n: u64) -> Arc<StoredEvent> {
        Arc::new(StoredEvent::new(
            Epoch::random(),
            ch.clone(),
            EntryId::new(n, 0),
            EntryId::new(n - 1, 0),
            None,
            Data::text(n.to_string()),
            n,
        ))
    }

    #[derive(Debug, Default)]
    struct Log(Mutex<Vec<String>>);
    impl HubObserver for Log {
        fn first_subscriber(&self, c: &ChannelName) {
            self.0.lock().unwrap().push(format!("+{c}"));
        }
        fn last_unsubscribed(&self, c: &ChannelName) {
            self.0.lock().unwrap().push(format!("-{c}"));
        }
    }

    #[tokio::test]
    async fn subscriptions_are_reference_counted() {
        let log = Arc::new(Log::default());
        let hub = Hub::new(4, Some(log.clone()));
        let ch = ChannelName::new("a").unwrap();
        let s1 = hub.subscribe(&ch);
        let s2 = hub.subscribe(&ch);
        drop(s1);
        assert!(hub.has_subscribers(&ch));
        drop(s2);
        assert!(!hub.has_subscribers(&ch));
        assert_eq!(*log.0.lock().unwrap(), vec!["+a", "-a"]);
    }

    #[tokio::test]
    async fn a_slow_subscriber_lags_instead_of_buffering() {
        let hub = Hub::new(4, None);
        let ch = ChannelName::new("a").unwrap();
        let mut fast = hub.subscribe(&ch);
        let mut slow = hub.subscribe(&ch);
        for n in 1..=10 {
            hub.send(ev(&ch, n));
            match fast.recv().await {
                LiveRecv::Event(e) => assert_eq!(e.id.ms, n),
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(slow.recv().await, LiveRecv::Lagged));
        // After the lag it continues with what the ring still holds, in order.
        match slow.recv().await {
            LiveRecv::Event(e) => assert_eq!(e.id.ms, 7),
            other => panic!("{other:?}"),
        }
    }
}
