//! One read of a channel's newest id for every fresh stream opening on it at once.
//!
//! A fresh stream must know where its channel stands before its head is written (see
//! `session`). When a thousand clients open the same channel in the same moment (a page
//! that went live, a reconnect wave after a deploy) they need one answer, not a thousand
//! round trips: a stream that opens while a read of its channel is in flight joins it.
//!
//! Joining a read that began before this stream subscribed is safe: the answer is then a
//! position at or before the channel's newest at the stream's head, never after it. The
//! stream took its live subscription first, so an event between that position and the
//! head either comes live (its `prev` follows the cursor) or shows, by its `prev`, that
//! the stream must read it from history; nothing is skipped. The client may get an event
//! published a moment before it opened, never lose one published after.
//!
//! A read is needed only while the hub does not know where the channel stands (its
//! `ChannelHead`, see the broker's `hub::recent`): the answer seeds that head, under the
//! generation its first stream saw when it issued the read, so that the streams opening
//! after it start without a read.
//!
//! # Bounds
//!
//! One entry per channel with a read in flight, so at most one per opening stream. The
//! map holds the read weakly: when every stream waiting on it has gone (its clients left
//! before the answer) the read is dropped and its entry with it, so an abandoned read
//! leaves nothing behind.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared, WeakShared};
use ssegate_broker::{Broker, BrokerError, Generation, ReadFrom};
use ssegate_core::{ChannelName, EntryId, Epoch};

/// Where a channel stands: the store's epoch and the channel's newest id.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Head {
    pub(crate) epoch: Epoch,
    pub(crate) last: EntryId,
    /// The channel's generation when the read was issued (see
    /// `LiveSubscription::seed_head`); `None` for a head the hub knew (no read).
    pub(crate) generation: Option<Generation>,
}

impl Head {
    /// Where the hub knew the channel to stand.
    pub(crate) fn known(epoch: Epoch, last: EntryId) -> Self {
        Self {
            epoch,
            last,
            generation: None,
        }
    }
}

type ReadResult = Result<Head, Arc<BrokerError>>;
type Read = Shared<BoxFuture<'static, ReadResult>>;
type InFlight = Mutex<HashMap<ChannelName, (u64, WeakShared<BoxFuture<'static, ReadResult>>)>>;

/// The reads in flight, by channel.
#[derive(Debug, Default)]
pub(crate) struct Heads {
    in_flight: Arc<InFlight>,
    next: std::sync::atomic::AtomicU64,
}

/// Takes a read's entry out of the map when the read ends or is dropped, unless a newer
/// read took the entry over.
struct Leave {
    in_flight: Arc<InFlight>,
    channel: ChannelName,
    generation: u64,
}

impl Drop for Leave {
    fn drop(&mut self) {
        let mut map = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if map
            .get(&self.channel)
            .is_some_and(|(g, _)| *g == self.generation)
        {
            map.remove(&self.channel);
        }
    }
}

impl Heads {
    /// The channel's head: the read in flight for it, or a new one issued under
    /// `issued_under` (the channel's generation, as the hub reported it to this stream).
    pub(crate) fn newest(
        &self,
        broker: &Arc<dyn Broker>,
        channel: &ChannelName,
        issued_under: Generation,
    ) -> Read {
        let mut map = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(read) = map.get(channel).and_then(|(_, weak)| weak.upgrade()) {
            return read;
        }
        let generation = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let leave = Leave {
            in_flight: self.in_flight.clone(),
            channel: channel.clone(),
            generation,
        };
        let broker = broker.clone();
        let name = channel.clone();
        let read: BoxFuture<'static, ReadResult> = async move {
            let _leave = leave;
            let page = broker.read(&name, ReadFrom::Oldest, 0).await;
            page.map(|p| Head {
                epoch: p.epoch,
                last: p.last,
                generation: Some(issued_under),
            })
            .map_err(Arc::new)
        }
        .boxed();
        let read = read.shared();
        if let Some(weak) = read.downgrade() {
            map.insert(channel.clone(), (generation, weak));
        }
        read
    }

    /// Channels with a read in flight (tests of the bound).
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use ssegate_broker::{LiveSubscription, MemoryBroker, Published, ReadPage};
    use ssegate_core::NewEvent;
    use tokio::sync::Semaphore;

    use super::*;

    /// The embedded broker, with its reads counted and held until the test lets them go.
    struct Gated {
        inner: MemoryBroker,
        reads: AtomicUsize,
        gate: Semaphore,
    }

    #[async_trait::async_trait]
    impl Broker for Gated {
        fn kind(&self) -> &'static str {
            "gated"
        }
        async fn epoch(&self) -> Result<Epoch, BrokerError> {
            self.inner.epoch().await
        }
        async fn publish(
            &self,
            events: Vec<NewEvent>,
            key: Option<&str>,
        ) -> Result<Published, BrokerError> {
            self.inner.publish(events, key).await
        }
        fn subscribe(&self, channel: &ChannelName) -> LiveSubscription {
            self.inner.subscribe(channel)
        }
        async fn read(
            &self,
            channel: &ChannelName,
            from: ReadFrom,
            limit: usize,
        ) -> Result<ReadPage, BrokerError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            let _pass = self.gate.acquire().await;
            self.inner.read(channel, from, limit).await
        }
        async fn ready(&self) -> Result<(), BrokerError> {
            Ok(())
        }
        fn local_channels(&self) -> usize {
            0
        }
    }

    fn gated() -> (Arc<Gated>, Arc<dyn Broker>) {
        let g = Arc::new(Gated {
            inner: MemoryBroker::new(crate::settings::Settings::default().history),
            reads: AtomicUsize::new(0),
            gate: Semaphore::new(0),
        });
        (g.clone(), g)
    }

    /// A generation to issue reads under (these tests do not seed a head).
    fn generation(broker: &Arc<dyn Broker>, ch: &ChannelName) -> Generation {
        match broker.subscribe(ch).head(Epoch::random()) {
            ssegate_broker::ChannelHead::Unknown(g) => g,
            known => panic!("a new channel's head is unknown: {known:?}"),
        }
    }

    #[tokio::test]
    async fn streams_opening_together_share_one_read_and_later_ones_read_again() {
        let (g, broker) = gated();
        let heads = Heads::default();
        let ch = ChannelName::new("c").unwrap();
        let g0 = generation(&broker, &ch);
        let waiting: Vec<_> = (0..50).map(|_| heads.newest(&broker, &ch, g0)).collect();
        let all = tokio::spawn(futures_util::future::join_all(waiting));
        tokio::task::yield_now().await;
        assert_eq!(heads.in_flight(), 1);
        g.gate.add_permits(1000);
        for head in all.await.unwrap() {
            assert_eq!(head.unwrap().last, EntryId::ZERO);
        }
        assert_eq!(
            g.reads.load(Ordering::SeqCst),
            1,
            "one read for fifty streams"
        );
        assert_eq!(heads.in_flight(), 0, "a finished read leaves the map");
        heads.newest(&broker, &ch, g0).await.unwrap();
        assert_eq!(
            g.reads.load(Ordering::SeqCst),
            2,
            "a later stream reads again"
        );
    }

    #[tokio::test]
    async fn a_read_every_stream_gave_up_on_leaves_nothing_behind() {
        let (g, broker) = gated();
        let heads = Heads::default();
        for i in 0..100 {
            let ch = ChannelName::new(&format!("c{i}")).unwrap();
            let mut read = heads.newest(&broker, &ch, generation(&broker, &ch));
            // Polled once (the read is sent), then its only stream goes away.
            assert!(futures_util::poll!(&mut read).is_pending());
            drop(read);
        }
        assert_eq!(heads.in_flight(), 0);
        assert_eq!(g.reads.load(Ordering::SeqCst), 100);
    }
}
