//! The embedded in-memory broker: one node, no Redis, same API and semantics.
//!
//! Each channel keeps a bounded log (by length and by age) of [`StoredEvent`]s, each
//! encoded once. Ids are `<ms>-<seq>` like Redis Stream ids and strictly increasing per
//! channel even if the wall clock steps back. The epoch is drawn at start-up, so a
//! restart invalidates every old cursor (clients get `sync-required`, never a silent gap).
//!
//! Memory is bounded by the history limits: per channel at most `max_len` events, none
//! older than `max_age`; node-wide at most `max_bytes` of retained events, past which the
//! oldest events of any channel are evicted. Every removal (trim, expiry, eviction) is
//! recorded as the channel's newest deleted id, so a cursor before it gets
//! `sync-required` like after a Redis trim. A channel whose log is empty, that has no local
//! subscriber and has been idle for twice `max_age` is forgotten by the sweeper. Live
//! fan-out goes through the [`Hub`], whose backpressure rule bounds what slow subscribers
//! can hold. Idempotency keys are bounded by count and by bytes, oldest forgotten first.
//!
//! Lock order: the channel map, a channel's log, the hub (publish), the budget. The budget
//! is only ever taken last and briefly; eviction takes a channel's log with no other lock
//! held. Nothing awaits under a lock.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use ssegate_core::{ChannelName, EntryId, Epoch, NewEvent};

use crate::clock::{Clock, SystemClock};
use crate::event::StoredEvent;
use crate::fingerprint::fingerprint;
use crate::hub::Hub;
use crate::{Broker, BrokerError, LiveSubscription, Published, ReadFrom, ReadPage, lock};

/// What a broker keeps and for how long: history retention, the live ring (fan-out
/// backlog) and idempotency records. (Named for all three: it was `HistoryConfig`.)
#[derive(Debug, Clone)]
pub struct StoreLimits {
    /// Events kept per channel; older ones are trimmed on publish.
    pub max_len: usize,
    /// Events older than this expire.
    pub max_age: Duration,
    /// In-memory broker only: bytes of retained events on this node, all channels
    /// together (see [`MemoryBroker::history_bytes`] for what an event counts); past it
    /// the oldest events are evicted.
    pub max_bytes: usize,
    /// Per-channel live ring: how far a subscriber may fall behind before it is caught up
    /// from history instead (see the hub's backpressure rule).
    pub live_backlog: usize,
    /// The same in bytes of frames held by a channel's live ring.
    pub live_backlog_bytes: usize,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_ttl: Duration,
    /// In-memory broker only: at most this many idempotency keys are remembered (oldest
    /// forgotten first).
    pub idempotency_max_keys: usize,
    /// In-memory broker only: at most this many bytes of idempotency records (a batch's
    /// record holds every id of the batch) are remembered (oldest forgotten first).
    pub idempotency_max_bytes: usize,
}

/// What a retained event costs besides [`StoredEvent::heap_bytes`]: the struct, its
/// `Arc`, its place in the log and the allocator's rounding of its frame.
/// What an idempotency record costs besides its key, fingerprint and ids.
const IDEM_OVERHEAD: usize = std::mem::size_of::<IdemEntry>() + 96;

#[derive(Debug)]
struct Retained {
    event: Arc<StoredEvent>,
    /// Node-wide publish order: the budget evicts the lowest first.
    seq: u64,
}

fn cost(event: &StoredEvent) -> usize {
    event.held_bytes()
}

/// The node-wide history budget: what every log retains, and which channel holds the
/// oldest event.
#[derive(Debug, Default)]
struct BudgetState {
    bytes: usize,
    next_seq: u64,
    /// Every channel with retained events, by the `seq` of its oldest one.
    oldest: BTreeMap<u64, ChannelName>,
}

#[derive(Debug, Default)]
struct ChannelLog {
    events: VecDeque<Retained>,
    /// Newest id ever assigned in this channel.
    last: EntryId,
    /// Newest id that was trimmed, expired or evicted: a cursor below it has a gap.
    max_deleted: EntryId,
    last_activity_ms: u64,
}

impl ChannelLog {
    fn push(&mut self, name: &ChannelName, event: Arc<StoredEvent>, budget: &Mutex<BudgetState>) {
        let mut b = lock(budget);
        let seq = b.next_seq;
        b.next_seq += 1;
        b.bytes += cost(&event);
        if self.events.is_empty() {
            b.oldest.insert(seq, name.clone());
        }
        drop(b);
        self.events.push_back(Retained { event, seq });
    }

    /// Removes the oldest event (recording it as deleted) while `remove` says so.
    fn pop_while(
        &mut self,
        name: &ChannelName,
        budget: &Mutex<BudgetState>,
        mut remove: impl FnMut(&Self, &StoredEvent) -> bool,
    ) {
        let Some(first) = self.events.front().map(|r| r.seq) else {
            return;
        };
        let mut freed = 0;
        while let Some(front) = self.events.front() {
            if !remove(self, &front.event) {
                break;
            }
            freed += cost(&front.event);
            self.max_deleted = front.event.id;
            self.events.pop_front();
        }
        if freed == 0 {
            return;
        }
        let mut b = lock(budget);
        b.bytes -= freed;
        b.oldest.remove(&first);
        if let Some(front) = self.events.front() {
            b.oldest.insert(front.seq, name.clone());
        }
        drop(b);
        // A log mostly emptied (evicted, expired) gives its buffer back: a tombstone of a
        // once-busy channel must not keep room for `max_len` events.
        let len = self.events.len();
        if self.events.capacity() > 4 * len.max(8) {
            self.events.shrink_to(2 * len);
        }
    }

    fn trim(
        &mut self,
        name: &ChannelName,
        budget: &Mutex<BudgetState>,
        max_len: usize,
        oldest_ms: u64,
    ) {
        self.pop_while(name, budget, |log, front| {
            log.events.len() > max_len || front.published_at_ms < oldest_ms
        });
    }

    /// Index of the first event after `id`.
    fn index_after(&self, id: EntryId) -> usize {
        self.events.partition_point(|e| e.event.id <= id)
    }
}

#[derive(Debug)]
struct IdemEntry {
    fingerprint: String,
    result: Published,
    expires_ms: u64,
}

impl IdemEntry {
    /// What the record costs, its key counted twice (the map and the expiry order).
    fn cost(&self, key_len: usize) -> usize {
        2 * key_len
            + self.fingerprint.len()
            + self.result.ids.len() * std::mem::size_of::<EntryId>()
            + IDEM_OVERHEAD
    }
}

#[derive(Debug, Default)]
struct IdemCache {
    map: HashMap<String, IdemEntry>,
    /// Keys by expiry (that is, by age); a key replaced after it expired is in here
    /// twice, and only the entry with its current expiry counts.
    order: VecDeque<(u64, String)>,
    bytes: usize,
}

impl IdemCache {
    /// Forgets the oldest record; false when there is none.
    fn forget_oldest(&mut self) -> bool {
        let Some((exp, key)) = self.order.pop_front() else {
            return false;
        };
        self.forget_if(&key, |e| e.expires_ms == exp);
        true
    }

    fn forget_if(&mut self, key: &str, pred: impl FnOnce(&IdemEntry) -> bool) {
        if self.map.get(key).is_some_and(pred) {
            if let Some(entry) = self.map.remove(key) {
                self.bytes -= entry.cost(key.len());
            }
        }
    }

    fn insert(&mut self, key: String, entry: IdemEntry) {
        let key_len = key.len();
        self.bytes += entry.cost(key_len);
        self.order.push_back((entry.expires_ms, key.clone()));
        if let Some(old) = self.map.insert(key, entry) {
            // An expired record, replaced: its place in `order` no longer counts.
            self.bytes -= old.cost(key_len);
        }
    }
}

#[derive(Debug)]
struct Inner {
    epoch: Epoch,
    config: StoreLimits,
    clock: Arc<dyn Clock>,
    channels: Mutex<HashMap<ChannelName, Arc<Mutex<ChannelLog>>>>,
    budget: Mutex<BudgetState>,
    idempotency: Mutex<IdemCache>,
    hub: Hub,
    /// Whether [`Broker::background`] handed out the sweeper.
    sweeping: std::sync::atomic::AtomicBool,
}

/// The in-memory broker. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MemoryBroker {
    inner: Arc<Inner>,
}

impl MemoryBroker {
    /// A broker on the system clock, with a fresh random epoch (so cursors from before a
    /// restart are answered with `epoch_changed`).
    pub fn new(config: StoreLimits) -> Self {
        Self::with_clock(config, Arc::new(SystemClock))
    }

    /// A broker whose ids and expiry follow `clock` (tests step it, backwards too).
    pub fn with_clock(config: StoreLimits, clock: Arc<dyn Clock>) -> Self {
        let hub = Hub::new(config.live_backlog, config.live_backlog_bytes, None);
        Self {
            inner: Arc::new(Inner {
                epoch: Epoch::random(),
                config,
                clock,
                channels: Mutex::new(HashMap::new()),
                budget: Mutex::new(BudgetState::default()),
                sweeping: std::sync::atomic::AtomicBool::new(false),
                idempotency: Mutex::new(IdemCache::default()),
                hub,
            }),
        }
    }

    /// The broker's epoch, without the `async` of [`Broker::epoch`]: it never changes.
    pub fn epoch_now(&self) -> Epoch {
        self.inner.epoch
    }

    /// The broker's fan-out hub, which every publish feeds directly.
    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    /// What the retained history counts against `max_bytes`: per event its frame, its
    /// data where the frame does not hold it verbatim, its trace context and a fixed
    /// overhead for its bookkeeping.
    pub fn history_bytes(&self) -> usize {
        lock(&self.inner.budget).bytes
    }

    /// What the idempotency records count against `idempotency_max_bytes`.
    pub fn idempotency_bytes(&self) -> usize {
        lock(&self.inner.idempotency).bytes
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

    fn trim(&self, name: &ChannelName, log: &mut ChannelLog, now: u64) {
        let max_len = self.inner.config.max_len;
        log.trim(
            name,
            &self.inner.budget,
            max_len,
            self.oldest_allowed_ms(now),
        );
    }

    /// Evicts the node's oldest events, whatever their channel, until the history fits
    /// its byte budget. Each eviction is a trim of its channel (its newest deleted id
    /// moves), so a cursor before it is told `sync-required`. Called with no lock held.
    fn enforce_budget(&self) {
        loop {
            let (seq, name) = {
                let b = lock(&self.inner.budget);
                if b.bytes <= self.inner.config.max_bytes {
                    return;
                }
                match b.oldest.first_key_value() {
                    Some((seq, name)) => (*seq, name.clone()),
                    None => return,
                }
            };
            let Some(log) = self.log(&name) else {
                // Unreachable (a channel with events is never forgotten); don't spin.
                lock(&self.inner.budget).oldest.remove(&seq);
                continue;
            };
            // The front may have moved since (trimmed, or evicted by another publish):
            // then this removes nothing and the next round looks again. (Sequence
            // numbers are unique, so this removes one event at most.)
            lock(&log).pop_while(&name, &self.inner.budget, |log, _| {
                log.events.front().is_some_and(|r| r.seq == seq)
            });
        }
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
            self.trim(&name, &mut log, now);
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
                idem.forget_if(&key, |e| e.expires_ms <= now);
            }
        }
        drop(idem);
        lock(&self.inner.channels).len()
    }

    /// Runs [`MemoryBroker::sweep`] every `every` until the broker is dropped.
    pub fn sweeper(&self, every: Duration) -> impl Future<Output = ()> + Send + 'static {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                MemoryBroker { inner }.sweep();
            }
        }
    }

    fn publish_now(&self, events: Vec<NewEvent>) -> Published {
        let epoch = self.inner.epoch;
        let mut ids = Vec::with_capacity(events.len());
        for ev in events {
            let name = ev.channel.clone();
            let log = self.log_or_create(&name);
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
            log.push(&name, stored.clone(), &self.inner.budget);
            self.trim(&name, &mut log, now);
            // Still under the log lock: live order equals history order.
            crate::trace::delivered(&stored, self.inner.hub.subscriber_count(&stored.channel));
            self.inner.hub.send(stored);
            drop(log);
            self.enforce_budget();
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

    /// The expiry sweep, at a tenth of the retention (100 ms to 10 s).
    fn background(&self) -> Option<crate::Background> {
        if self
            .inner
            .sweeping
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            return None;
        }
        let every = (self.inner.config.max_age / 10)
            .clamp(Duration::from_millis(100), Duration::from_secs(10));
        Some(Box::pin(self.sweeper(every)))
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
        let fingerprint = fingerprint(&events);
        // Held across the publish so that two concurrent retries publish once.
        let mut idem = lock(&self.inner.idempotency);
        let now = self.inner.clock.now_ms();
        if let Some(entry) = idem.map.get(&key) {
            if entry.expires_ms > now {
                if entry.fingerprint != fingerprint {
                    return Err(BrokerError::IdempotencyConflict);
                }
                return Ok(entry.result.clone());
            }
        }
        let result = self.publish_now(events);
        let ttl = u64::try_from(self.inner.config.idempotency_ttl.as_millis()).unwrap_or(u64::MAX);
        let entry = IdemEntry {
            fingerprint,
            result: result.clone(),
            expires_ms: now.saturating_add(ttl),
        };
        idem.insert(key, entry);
        let config = &self.inner.config;
        while idem.map.len() > config.idempotency_max_keys
            || idem.bytes > config.idempotency_max_bytes
        {
            if !idem.forget_oldest() {
                break;
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
        // This store never loses an event it acknowledged: a shown id is a cursor.
        let after = from.cursor();
        let epoch = self.inner.epoch;
        let Some(log) = self.log(channel) else {
            // Unknown channel: nothing retained. A cursor past 0-0 refers to history this
            // node no longer has (expired and forgotten), which is a gap.
            let gap = after.is_some_and(|id| id > EntryId::ZERO);
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
        self.trim(channel, &mut log, now);
        let (start, gap) = match after {
            None => (log.max_deleted, false),
            Some(id) if id > log.last => (log.last, true),
            Some(id) if id < log.max_deleted => (log.max_deleted, true),
            Some(id) => (id, false),
        };
        let from_index = log.index_after(start);
        let events = log
            .events
            .range(from_index..)
            .take(limit)
            .map(|r| r.event.clone())
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

    /// Limits for these tests (the declared defaults live in the server's settings).
    fn limits() -> StoreLimits {
        StoreLimits {
            max_len: 10_000,
            max_age: Duration::from_secs(3600),
            max_bytes: 256 << 20,
            live_backlog: 512,
            live_backlog_bytes: 1 << 20,
            idempotency_ttl: Duration::from_secs(24 * 3600),
            idempotency_max_keys: 100_000,
            idempotency_max_bytes: 32 << 20,
        }
    }
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
            StoreLimits {
                max_len,
                max_age: Duration::from_secs(60),
                ..limits()
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
        let b = MemoryBroker::new(limits());
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
        let b = MemoryBroker::new(limits());
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

    fn budget_broker(max_bytes: usize, clock: Arc<ManualClock>) -> MemoryBroker {
        MemoryBroker::with_clock(
            StoreLimits {
                max_len: 1000,
                max_age: Duration::from_secs(60),
                max_bytes,
                ..limits()
            },
            clock,
        )
    }

    /// What one event of `len` bytes of data counts against the budget.
    async fn event_cost(len: usize) -> usize {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let b = MemoryBroker::with_clock(limits(), clock);
        b.publish(vec![new_event("a", &"x".repeat(len))], None)
            .await
            .unwrap();
        b.history_bytes()
    }

    async fn publish_one(b: &MemoryBroker, channel: &str, data: &str) -> EntryId {
        b.publish(vec![new_event(channel, data)], None)
            .await
            .unwrap()
            .ids[0]
    }

    fn datas(page: &ReadPage) -> Vec<String> {
        page.events
            .iter()
            .map(|e| e.data.as_str().into_owned())
            .collect()
    }

    #[tokio::test]
    async fn the_byte_budget_evicts_the_oldest_events_of_any_channel() {
        let pad = "x".repeat(1000);
        let cost = event_cost(1004).await;
        // Room for ten events.
        let clock = Arc::new(ManualClock::new(1_000_000));
        let b = budget_broker(10 * cost + cost / 2, clock.clone());
        let mut ids = HashMap::<&str, Vec<EntryId>>::new();
        for n in 0..30 {
            clock.advance(1);
            // Channel a gets twice as many events as b, c gets one early event.
            let channel = match n {
                3 => "c",
                _ if n % 3 == 2 => "b",
                _ => "a",
            };
            let id = publish_one(&b, channel, &format!("{n:04}{pad}")).await;
            ids.entry(channel).or_default().push(id);
            assert!(
                b.history_bytes() <= 10 * cost + cost / 2,
                "within budget at {n}"
            );
        }
        assert_eq!(b.history_bytes(), 10 * cost, "the ten newest are kept");
        // The ten newest events overall: 20..30, whatever their channel.
        let mut kept = Vec::new();
        for channel in ["a", "b", "c"] {
            let page = b.read(&ch(channel), ReadFrom::Oldest, 100).await.unwrap();
            kept.extend(datas(&page).iter().map(|d| d[..4].parse::<u32>().unwrap()));
        }
        kept.sort_unstable();
        assert_eq!(kept, (20..30).collect::<Vec<_>>());
        // Channel c's only event was evicted: its log is empty, and it says so.
        let page = b
            .read(&ch("c"), ReadFrom::After(EntryId::ZERO), 10)
            .await
            .unwrap();
        assert!(page.gap && page.events.is_empty());
        assert_eq!(page.start, ids["c"][0]);
        // Live delivery is not affected by what history evicts.
        let mut live = b.subscribe(&ch("a"));
        let id = publish_one(&b, "a", "live").await;
        match live.recv().await {
            LiveRecv::Event(e) => assert_eq!(e.id, id),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_resume_from_before_an_eviction_reports_a_gap() {
        let cost = event_cost(100).await;
        let clock = Arc::new(ManualClock::new(1_000_000));
        let b = budget_broker(3 * cost, clock.clone());
        let mut ids = Vec::new();
        for n in 0..6 {
            clock.advance(1);
            ids.push(publish_one(&b, "a", &format!("{n:0100}")).await);
        }
        // ids[0..3] were evicted; ids[3..] are kept.
        let page = b.read(&ch("a"), ReadFrom::After(ids[1]), 10).await.unwrap();
        assert!(page.gap, "ids[2] was lost after this cursor");
        assert_eq!(page.start, ids[2], "continues from the newest evicted id");
        assert_eq!(page.events.len(), 3);
        assert_eq!(page.events[0].id, ids[3]);
        // A cursor at the newest evicted event lost nothing.
        let page = b.read(&ch("a"), ReadFrom::After(ids[2]), 10).await.unwrap();
        assert!(!page.gap);
        assert_eq!(page.events.len(), 3);
    }

    #[tokio::test]
    async fn trimming_and_expiry_give_their_bytes_back_to_the_budget() {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let b = MemoryBroker::with_clock(
            StoreLimits {
                max_len: 2,
                max_age: Duration::from_secs(60),
                ..limits()
            },
            clock.clone(),
        );
        let cost = event_cost(10).await;
        for channel in ["a", "b"] {
            for n in 0..5 {
                publish_one(&b, channel, &format!("{n:010}")).await;
            }
        }
        assert_eq!(b.history_bytes(), 4 * cost, "two per channel");
        clock.advance(61_000);
        b.sweep();
        assert_eq!(b.history_bytes(), 0);
    }

    #[tokio::test]
    async fn data_with_a_cr_counts_twice_and_reads_back_exactly() {
        let b = MemoryBroker::new(limits());
        let text = format!("a\r\n{}", "x".repeat(1000));
        publish_one(&b, "a", &text).await;
        assert!(b.history_bytes() > 2000, "the frame and the text apart");
        let page = b.read(&ch("a"), ReadFrom::Oldest, 1).await.unwrap();
        assert_eq!(datas(&page), [text]);
    }

    #[tokio::test]
    async fn idempotency_records_are_bounded_by_bytes() {
        let batch = |k: usize| -> Vec<NewEvent> {
            (0..100)
                .map(|i| new_event("a", &format!("{k}-{i}")))
                .collect()
        };
        // A 100-event batch's record holds 100 ids: room for about three of them.
        let b = MemoryBroker::new(StoreLimits {
            idempotency_max_bytes: 3 * 100 * 16 + 1000,
            ..limits()
        });
        let mut first = Vec::new();
        for k in 0..10 {
            let key = format!("key-{k}");
            first.push(b.publish(batch(k), Some(&key)).await.unwrap());
            assert!(b.idempotency_bytes() <= 3 * 100 * 16 + 1000);
        }
        // The newest keys are remembered, the oldest forgotten (a retry publishes again).
        let again = b.publish(batch(9), Some("key-9")).await.unwrap();
        assert_eq!(again, first[9]);
        let again = b.publish(batch(0), Some("key-0")).await.unwrap();
        assert_ne!(again, first[0]);
        // The count cap still applies too.
        let b = MemoryBroker::new(StoreLimits {
            idempotency_max_keys: 2,
            ..limits()
        });
        for k in 0..5 {
            b.publish(vec![new_event("a", "x")], Some(&format!("k{k}")))
                .await
                .unwrap();
        }
        let remembered = lock(&b.inner.idempotency).map.len();
        assert_eq!(remembered, 2);
    }

    #[tokio::test]
    async fn an_expired_key_used_again_is_not_forgotten_in_place_of_an_older_one() {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let b = MemoryBroker::with_clock(
            StoreLimits {
                idempotency_ttl: Duration::from_secs(10),
                idempotency_max_keys: 2,
                ..limits()
            },
            clock.clone(),
        );
        let publish = |key: &'static str, data: &'static str| {
            let b = b.clone();
            async move {
                b.publish(vec![new_event("a", data)], Some(key))
                    .await
                    .unwrap()
            }
        };
        publish("k", "1").await;
        clock.advance(5_000);
        let x = publish("x", "2").await;
        clock.advance(6_000);
        // k expired and is used again: now it is the newest key, x the oldest.
        let k = publish("k", "3").await;
        clock.advance(1_000);
        publish("y", "4").await;
        assert_eq!(publish("k", "3").await, k, "k is remembered");
        assert_ne!(publish("x", "2").await, x, "x, the oldest, was forgotten");
        assert!(b.idempotency_bytes() > 0);
    }
}
