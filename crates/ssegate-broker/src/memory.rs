//! The embedded in-memory broker: one node, no Redis, same API and semantics.
//!
//! Each channel keeps a bounded log (by length and by age) of [`StoredEvent`]s, each
//! encoded once. Ids are `<ms>-<seq>` like Redis Stream ids and strictly increasing per
//! channel even if the wall clock steps back. The epoch is drawn at start-up, so a
//! restart invalidates every old cursor (clients get `sync-required`, never a silent gap).
//!
//! Memory is bounded by the history limits: per channel at most `max_len` events, none
//! older than `max_age`; a channel whose log is empty, that has no local subscriber and
//! has been idle for twice `max_age` is forgotten by the sweeper. Live fan-out goes through the
//! [`Hub`], whose backpressure rule bounds what slow subscribers can hold.
//!
//! Lock order: a channel's log, then the hub (publish). Nothing awaits under a lock.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use ssegate_core::{ChannelName, EntryId, Epoch, NewEvent};

use crate::clock::{Clock, SystemClock};
use crate::event::StoredEvent;
use crate::fingerprint::fingerprint;
use crate::hub::Hub;
use crate::{Broker, BrokerError, LiveSubscription, Published, ReadFrom, ReadPage, lock};

/// History and fan-out limits.
#[derive(Debug, Clone)]
pub struct HistoryConfig {
    /// Events kept per channel; older ones are trimmed on publish.
    pub max_len: usize,
    /// Events older than this expire.
    pub max_age: Duration,
    /// Per-channel live ring: how far a subscriber may fall behind before it is caught up
    /// from history instead (see the hub's backpressure rule).
    pub live_backlog: usize,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_ttl: Duration,
    /// At most this many idempotency keys are remembered (oldest forgotten first).
    pub idempotency_max_keys: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            max_len: 10_000,
            max_age: Duration::from_secs(3600),
            live_backlog: 512,
            idempotency_ttl: Duration::from_secs(24 * 3600),
            idempotency_max_keys: 100_000,
        }
    }
}

#[derive(Debug, Default)]
struct ChannelLog {
    events: VecDeque<Arc<StoredEvent>>,
    /// Newest id ever assigned in this channel.
    last: EntryId,
    /// Newest id that was trimmed or expired: a cursor below it has a gap.
    max_deleted: EntryId,
    last_activity_ms: u64,
}

impl ChannelLog {
    fn trim(&mut self, max_len: usize, oldest_ms: u64) {
        while let Some(front) = self.events.front() {
            if self.events.len() > max_len || front.published_at_ms < oldest_ms {
                self.max_deleted = front.id;
                self.events.pop_front();
            } else {
                break;
            }
        }
    }

    /// Index of the first event after `id`.
    fn index_after(&self, id: EntryId) -> usize {
        self.events.partition_point(|e| e.id <= id)
    }
}

#[derive(Debug)]
struct IdemEntry {
    fingerprint: String,
    result: Published,
    expires_ms: u64,
}

#[derive(Debug, Default)]
struct IdemCache {
    map: HashMap<String, IdemEntry>,
    order: VecDeque<(u64, String)>,
}

#[derive(Debug)]
struct Inner {
    epoch: Epoch,
    config: HistoryConfig,
    clock: Arc<dyn Clock>,
    channels: Mutex<HashMap<ChannelName, Arc<Mutex<ChannelLog>>>>,
    idempotency: Mutex<IdemCache>,
    hub: Hub,
}

/// The in-memory broker. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MemoryBroker {
    inner: Arc<Inner>,
}

impl MemoryBroker {
    pub fn new(config: HistoryConfig) -> Self {
        Self::with_clock(config, Arc::new(SystemClock))
    }

    pub fn with_clock(config: HistoryConfig, clock: Arc<dyn Clock>) -> Self {
        let hub = Hub::new(config.live_backlog, None);
        Self {
            inner: Arc::new(Inner {
                epoch: Epoch::random(),
                config,
                clock,
                channels: Mutex::new(HashMap::new()),
                idempotency: Mutex::new(IdemCache::default()),
                hub,
            }),
        }
    }

    pub fn epoch_now(&self) -> Epoch {
        self.inner.epoch
    }

    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    fn oldest_allowed_ms(&self, now: u64) -> u64 {
        let age = u64::try_from(self.inner.config.max_age.as_millis()).unwrap_or(u64::MAX);
        now.saturating_sub(age)
    }

    fn log(&self, channel: &ChannelName) -> Option<Arc<Mutex<ChannelLog>>> {
        lock(&self.inner.channels).get(channel).cloned()
    }

    fn log_or_create(&self, channel: &ChannelName) -> Arc<Mutex<ChannelLog>> {
        lock(&self.inner.channels)
            .entry(channel.clone())
            .or_default()
            .clone()
    }

    /// Expires old events and forgets idle empty channels. Returns how many channels
    /// are left.
    pub fn sweep(&self) -> usize {
        let now = self.inner.clock.now_ms();
        let oldest = self.oldest_allowed_ms(now);
        let logs: Vec<(ChannelName, Arc<Mutex<ChannelLog>>)> = lock(&self.inner.channels)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // An empty log is kept as a tombstone (its newest and newest deleted ids tell a
        // returning cursor whether it missed anything) for one more `max_age`.
        let age = now.saturating_sub(oldest);
        let mut idle = Vec::new();
        for (name, log) in logs {
            let mut log = lock(&log);
            log.trim(self.inner.config.max_len, oldest);
            if log.events.is_empty()
                && log.last_activity_ms < oldest.saturating_sub(age)
                && !self.inner.hub.has_subscribers(&name)
            {
                idle.push(name);
            }
        }
        let mut channels = lock(&self.inner.channels);
        for name in idle {
            // Re-check under the map lock: a publish may have revived it meanwhile.
            let forget = channels
                .get(&name)
                .is_some_and(|l| lock(l).events.is_empty() && Arc::strong_count(l) == 1);
            if forget {
                channels.remove(&name);
            }
        }
        drop(channels);
        let mut idem = lock(&self.inner.idempotency);
        while let Some((exp, _)) = idem.order.front() {
            if *exp > now {
                break;
            }
            if let Some((_, key)) = idem.order.pop_front() {
                if idem.map.get(&key).is_some_and(|e| e.expires_ms <= now) {
                    idem.map.remove(&key);
                }
            }
        }
        lock(&self.inner.channels).len()
    }

    /// Runs [`MemoryBroker::sweep`] every `every` until the broker is dropped.
    pub fn spawn_sweeper(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                MemoryBroker { inner }.sweep();
            }
        })
    }

    fn publish_now(&self, events: Vec<NewEvent>) -> Published {
        let epoch = self.inner.epoch;
        let mut ids = Vec::with_capacity(events.len());
        for ev in events {
            let log = self.log_or_create(&ev.channel);
            let mut log = lock(&log);
            let now = self.inner.clock.now_ms();
            let prev = log.last;
            let id = prev.next_after(now);
            let stored = Arc::new(
                StoredEvent::new(epoch, ev.channel, id, prev, ev.event_type, ev.data, now)
                    .with_trace(ev.trace.as_deref()),
            );
            log.last = id;
            log.last_activity_ms = now;
            log.events.push_back(stored.clone());
            log.trim(self.inner.config.max_len, self.oldest_allowed_ms(now));
            // Still under the log lock: live order equals history order.
            crate::trace::delivered(&stored, self.inner.hub.subscriber_count(&stored.channel));
            self.inner.hub.send(stored);
            ids.push(id);
        }
        Published { epoch, ids }
    }
}

#[async_trait::async_trait]
impl Broker for MemoryBroker {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn epoch(&self) -> Result<Epoch, BrokerError> {
        Ok(self.inner.epoch)
    }

    async fn publish(
        &self,
        events: Vec<NewEvent>,
        idempotency_key: Option<&str>,
    ) -> Result<Published, BrokerError> {
        let (Some(key), Some(first)) = (idempotency_key, events.first()) else {
            return Ok(self.publish_now(events));
        };
        // Keys are scoped to the (first) channel, as in Redis where they share its slot.
        let key = format!("{}\n{key}", first.channel);
        let key = key.as_str();
        let fingerprint = fingerprint(&events);
        // Held across the publish so that two concurrent retries publish once.
        let mut idem = lock(&self.inner.idempotency);
        let now = self.inner.clock.now_ms();
        if let Some(entry) = idem.map.get(key) {
            if entry.expires_ms > now {
                if entry.fingerprint != fingerprint {
                    return Err(BrokerError::IdempotencyConflict);
                }
                return Ok(entry.result.clone());
            }
        }
        let result = self.publish_now(events);
        let ttl = u64::try_from(self.inner.config.idempotency_ttl.as_millis()).unwrap_or(u64::MAX);
        let expires_ms = now.saturating_add(ttl);
        idem.map.insert(
            key.to_owned(),
            IdemEntry {
                fingerprint,
                result: result.clone(),
                expires_ms,
            },
        );
        idem.order.push_back((expires_ms, key.to_owned()));
        while idem.map.len() > self.inner.config.idempotency_max_keys {
            match idem.order.pop_front() {
                Some((_, old)) => {
                    idem.map.remove(&old);
                }
                None => break,
            }
        }
        Ok(result)
    }

    fn subscribe(&self, channel: &ChannelName) -> LiveSubscription {
        self.inner.hub.subscribe(channel)
    }

    async fn read(
        &self,
        channel: &ChannelName,
        from: ReadFrom,
        limit: usize,
    ) -> Result<ReadPage, BrokerError> {
        let epoch = self.inner.epoch;
        let Some(log) = self.log(channel) else {
            // Unknown channel: nothing retained. A cursor past 0-0 refers to history this
            // node no longer has (expired and forgotten), which is a gap.
            let gap = matches!(from, ReadFrom::After(id) if id > EntryId::ZERO);
            return Ok(ReadPage {
                epoch,
                events: Vec::new(),
                gap,
                start: EntryId::ZERO,
                last: EntryId::ZERO,
            });
        };
        let mut log = lock(&log);
        let now = self.inner.clock.now_ms();
        log.trim(self.inner.config.max_len, self.oldest_allowed_ms(now));
        let (start, gap) = match from {
            ReadFrom::Oldest => (log.max_deleted, false),
            ReadFrom::After(id) if id > log.last => (log.last, true),
            ReadFrom::After(id) if id < log.max_deleted => (log.max_deleted, true),
            ReadFrom::After(id) => (id, false),
        };
        let from_index = log.index_after(start);
        let events = log
            .events
            .range(from_index..)
            .take(limit)
            .cloned()
            .collect();
        Ok(ReadPage {
            epoch,
            events,
            gap,
            start,
            last: log.last,
        })
    }

    async fn ready(&self) -> Result<(), BrokerError> {
        Ok(())
    }

    fn local_channels(&self) -> usize {
        self.inner.hub.channel_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LiveRecv;
    use crate::clock::ManualClock;
    use ssegate_core::Data;

    fn ch(s: &str) -> ChannelName {
        ChannelName::new(s).unwrap()
    }

    fn new_event(c: &str, data: &str) -> NewEvent {
        NewEvent {
            channel: ch(c),
            event_type: None,
            data: Data::text(data.into()),
            trace: None,
        }
    }

    fn broker(max_len: usize, clock: Arc<ManualClock>) -> MemoryBroker {
        MemoryBroker::with_clock(
            HistoryConfig {
                max_len,
                max_age: Duration::from_secs(60),
                ..HistoryConfig::default()
            },
            clock,
        )
    }

    #[tokio::test]
    async fn ids_increase_even_when_the_clock_steps_back() {
        let clock = Arc::new(ManualClock::new(10_000));
        let b = broker(100, clock.clone());
        let mut ids = Vec::new();
        for t in [10_000, 10_000, 9_000, 10_001, 5] {
            clock.set(t);
            ids.extend(
                b.publish(vec![new_event("a", "x")], None)
                    .await
                    .unwrap()
                    .ids,
            );
        }
        let want: Vec<EntryId> = [
            (10_000, 0),
            (10_000, 1),
            (10_000, 2),
            (10_001, 0),
            (10_001, 1),
        ]
        .into_iter()
        .map(|(m, s)| EntryId::new(m, s))
        .collect();
        assert_eq!(ids, want);
    }

    #[tokio::test]
    async fn trimming_by_length_is_a_gap_only_past_the_cursor() {
        let clock = Arc::new(ManualClock::new(1_000));
        let b = broker(3, clock.clone());
        let mut ids = Vec::new();
        for n in 0..5 {
            clock.advance(1);
            ids.extend(
                b.publish(vec![new_event("a", &n.to_string())], None)
                    .await
                    .unwrap()
                    .ids,
            );
        }
        // ids[0], ids[1] trimmed. A cursor at ids[1] lost nothing.
        let page = b.read(&ch("a"), ReadFrom::After(ids[1]), 10).await.unwrap();
        assert!(!page.gap);
        assert_eq!(page.events.len(), 3);
        // A cursor at ids[0] lost ids[1].
        let page = b.read(&ch("a"), ReadFrom::After(ids[0]), 10).await.unwrap();
        assert!(page.gap);
        assert_eq!(page.start, ids[1]);
        assert_eq!(page.events.first().unwrap().id, ids[2]);
        // Oldest: no gap signal, from the first retained.
        let page = b.read(&ch("a"), ReadFrom::Oldest, 2).await.unwrap();
        assert!(!page.gap && page.has_more());
        assert_eq!(page.events.len(), 2);
        // A cursor ahead of the history is a gap too.
        let ahead = EntryId::new(ids[4].ms + 100, 0);
        let page = b.read(&ch("a"), ReadFrom::After(ahead), 10).await.unwrap();
        assert!(page.gap && page.events.is_empty());
        assert_eq!(page.start, ids[4]);
    }

    #[tokio::test]
    async fn events_expire_by_age_and_idle_channels_are_forgotten() {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let b = broker(100, clock.clone());
        let id = b
            .publish(vec![new_event("a", "x")], None)
            .await
            .unwrap()
            .ids[0];
        clock.advance(61_000);
        assert_eq!(
            b.sweep(),
            1,
            "kept for its tombstone until idle for max_age"
        );
        let page = b
            .read(&ch("a"), ReadFrom::After(EntryId::ZERO), 10)
            .await
            .unwrap();
        assert!(page.gap && page.events.is_empty());
        assert_eq!(page.start, id);
        clock.advance(61_000);
        assert_eq!(b.sweep(), 0);
        let page = b.read(&ch("a"), ReadFrom::After(id), 10).await.unwrap();
        assert!(page.gap, "an unknown channel cannot prove there was no gap");
    }

    #[tokio::test]
    async fn live_order_equals_history_order() {
        let b = MemoryBroker::new(HistoryConfig::default());
        let mut live = b.subscribe(&ch("a"));
        let ids = b
            .publish(
                vec![
                    new_event("a", "1"),
                    new_event("b", "x"),
                    new_event("a", "2"),
                ],
                None,
            )
            .await
            .unwrap()
            .ids;
        for want in [ids[0], ids[2]] {
            match live.recv().await {
                LiveRecv::Event(e) => assert_eq!(e.id, want),
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn idempotency_keys_return_the_first_result() {
        let b = MemoryBroker::new(HistoryConfig::default());
        let first = b
            .publish(vec![new_event("a", "1")], Some("k"))
            .await
            .unwrap();
        let again = b
            .publish(vec![new_event("a", "1")], Some("k"))
            .await
            .unwrap();
        assert_eq!(first, again);
        let page = b.read(&ch("a"), ReadFrom::Oldest, 10).await.unwrap();
        assert_eq!(page.events.len(), 1);
        assert!(matches!(
            b.publish(vec![new_event("a", "2")], Some("k")).await,
            Err(BrokerError::IdempotencyConflict)
        ));
    }
}
