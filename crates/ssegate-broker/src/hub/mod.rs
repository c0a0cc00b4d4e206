//! Node-local fan-out of live events to this node's connections.
//!
//! # Backpressure rule
//!
//! **A slow subscriber never makes this node buffer more for it.** Each channel with local
//! subscribers has one bounded ring of the events that some local subscriber has not read
//! yet, each an `Arc` of the one encoded event, shared by every subscriber. Publishing never
//! waits for a reader: once a subscriber is more than `capacity` events, or more than
//! `max_bytes` of frames, behind, the oldest entries are dropped and that subscriber's next
//! receive says [`LiveRecv::Lagged`]. The connection then catches up from the history store
//! (from its own last delivered id) and rejoins live, skipping what it already sent; if its
//! position has left the retained history it is told `sync-required`. So per channel the
//! node holds at most `capacity` references (and `max_bytes` of frames, or one event when a
//! single one is larger), shared by all subscribers, whatever they do; per connection it
//! holds a cursor.
//!
//! # Sized by use
//!
//! The ring is created on a channel's first local subscription and dropped with its last.
//! It starts empty, without an allocation; it holds an entry only until every subscriber
//! has taken it (each entry counts the subscribers that still have to read it), so it grows
//! toward its limits only while someone is behind, and it gives its memory back when it
//! empties. An idle channel costs its entry in the hub's map, the ring's header and, per
//! subscriber, a slot of a few bytes and a parked waker: a few hundred bytes (see
//! docs/security.md, "Memory bounds"). Beside the ring, a channel keeps the chain of its
//! last few live events ([`recent`]: at most [`RECENT_EVENTS`] and [`RECENT_BYTES`] per
//! channel, [`NODE_RECENT_BYTES`] per node), references to the same `Arc`s, so that a
//! resume from one of them needs no history read, and its head ([`ChannelHead`]), where a
//! fresh stream starts without a read.
//!
//! # Wake-ups
//!
//! A subscriber that finds nothing to read parks its waker in the ring (once: a later poll
//! only replaces it when it would wake another task), with its [`Direct`] when it has one.
//! A send takes the whole list of parked subscribers under the lock, swapping in an
//! emptied list kept from the previous send, and after releasing it offers the event to
//! each one's `Direct` and wakes those that decline ([`direct`]), so fan-out to thousands
//! of subscribers allocates nothing per subscriber and never wakes or writes under the
//! lock (a send to many hands its offers to one task of their own). A receive is one short critical
//! section: check the position, clone one `Arc`. Nothing is held across an `.await`.

mod direct;
mod recent;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use ssegate_core::{ChannelName, EntryId, Epoch};

use crate::event::StoredEvent;
use crate::lock;

pub use direct::{Direct, Offer};
use recent::{Budget, Recent};
pub use recent::{
    ChannelHead, Generation, HEAD_MAX_AGE, NODE_RECENT_BYTES, RECENT_BYTES, RECENT_EVENTS,
};

/// Told when a channel gains its first or loses its last local subscriber, so that a
/// cluster broker can SUBSCRIBE / UNSUBSCRIBE upstream.
pub trait HubObserver: Send + Sync + std::fmt::Debug + 'static {
    /// `channel` got its first local subscriber: start receiving it upstream. Called on
    /// the subscribing task once the hub's locks are released; must return quickly.
    fn first_subscriber(&self, channel: &ChannelName);
    /// `channel` lost its last local subscriber: stop receiving it upstream. Called
    /// where the last subscription is dropped, once the hub's locks are released.
    fn last_unsubscribed(&self, channel: &ChannelName);
}

/// An emptied ring keeps its buffer only up to this many entries; a larger one (left by
/// a burst or a slow reader) is freed.
const KEEP_EMPTY_CAPACITY: usize = 8;

/// What travels through a channel's ring.
#[derive(Debug, Clone)]
enum HubMsg {
    Event(Arc<StoredEvent>),
    /// Live delivery may have missed events (the upstream subscription just became active,
    /// or was re-established): every subscriber re-reads history from its cursor.
    Resync,
}

impl HubMsg {
    /// The bytes this entry keeps alive (what the ring's byte limit counts).
    fn bytes(&self) -> usize {
        match self {
            Self::Event(ev) => ev.encoded.frame().len(),
            Self::Resync => 0,
        }
    }
}

#[derive(Debug)]
struct Entry {
    msg: HubMsg,
    /// Subscribers that have not read this entry yet; at zero it is released.
    unread: usize,
}

/// `Sub::parked` when the subscriber has no waker in `RingState::parked`.
const NOT_PARKED: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Sub {
    /// Where this subscriber's waker is in `RingState::parked`.
    parked: u32,
    /// Changes when the slot's subscriber leaves, so that a send that wrote to a
    /// subscriber directly (outside the lock) does not credit the slot's next occupant.
    generation: u32,
    /// The sequence number of the next entry this subscriber reads.
    next: u64,
}

/// A subscriber waiting for the next entry: its waker, and where the entry may be written
/// directly instead of waking it (see `direct`).
#[derive(Debug)]
struct Parked {
    id: u32,
    generation: u32,
    waker: Waker,
    direct: Option<Arc<dyn Direct>>,
    /// What the last send's direct offer did (set outside the lock, by that send only).
    offer: Offer,
}

#[derive(Debug)]
struct RingState {
    /// Entries some subscriber has not read yet, oldest first.
    entries: VecDeque<Entry>,
    /// The sequence number of `entries[0]` (of the next entry when it is empty).
    head: u64,
    /// Frame bytes held by `entries`.
    bytes: usize,
    /// One slot per subscriber id; ids of departed subscribers are in `free`.
    subs: Vec<Sub>,
    free: Vec<u32>,
    /// The subscribers waiting for the next entry.
    parked: Vec<Parked>,
    /// The list the last send woke, emptied, kept so that the next send allocates nothing.
    spare: Vec<Parked>,
    /// The newest event id this ring carried, so that a failover cannot hand it to
    /// another event (see `Hub::newest_ids`).
    newest: Option<ssegate_core::EntryId>,
    /// The chain of recent live events (see `recent`).
    recent: Recent,
}

impl RingState {
    fn new(budget: Arc<Budget>) -> Self {
        Self {
            entries: VecDeque::new(),
            head: 0,
            bytes: 0,
            subs: Vec::new(),
            free: Vec::new(),
            parked: Vec::new(),
            spare: Vec::new(),
            newest: None,
            recent: Recent::new(budget),
        }
    }

    fn tail(&self) -> u64 {
        self.head + self.entries.len() as u64
    }

    /// Subscribers joined to this ring.
    fn subscribers(&self) -> usize {
        self.subs.len() - self.free.len()
    }

    fn pop_front(&mut self) {
        if let Some(entry) = self.entries.pop_front() {
            self.bytes -= entry.msg.bytes();
            self.head += 1;
        }
    }

    /// Drops the entries every subscriber has read. Those are always a prefix: a
    /// subscriber that has not read an entry has not read any later one either, and was
    /// joined when the later ones were sent.
    fn release_read(&mut self) {
        while self.entries.front().is_some_and(|e| e.unread == 0) {
            self.pop_front();
        }
        self.shrink_if_empty();
    }

    fn shrink_if_empty(&mut self) {
        if self.entries.is_empty() && self.entries.capacity() > KEEP_EMPTY_CAPACITY {
            self.entries = VecDeque::new();
        }
    }

    /// A new subscriber, reading from the next entry on.
    fn join(&mut self) -> u32 {
        let next = self.tail();
        match self.free.pop() {
            Some(id) => {
                let sub = &mut self.subs[id as usize];
                sub.parked = NOT_PARKED;
                sub.next = next;
                id
            }
            None => {
                self.subs.push(Sub {
                    parked: NOT_PARKED,
                    generation: 0,
                    next,
                });
                u32::try_from(self.subs.len() - 1).unwrap_or(u32::MAX)
            }
        }
    }

    /// Marks every entry from sequence number `next` on as read by one more subscriber
    /// and drops what no one needs now; returns the sequence number after the last.
    fn skip_from(&mut self, next: u64) -> u64 {
        let from = next.max(self.head) - self.head;
        for entry in self
            .entries
            .range_mut(usize::try_from(from).unwrap_or(usize::MAX)..)
        {
            entry.unread -= 1;
        }
        let end = self.head + self.entries.len() as u64;
        self.release_read();
        end
    }

    /// `id` reached a local subscriber (live or from history): see [`Hub::newest_ids`].
    fn saw(&mut self, id: ssegate_core::EntryId) {
        self.newest = Some(self.newest.map_or(id, |n| n.max(id)));
    }

    fn leave(&mut self, id: u32) {
        self.skip_from(self.subs[id as usize].next);
        self.unpark(id);
        let sub = &mut self.subs[id as usize];
        sub.generation = sub.generation.wrapping_add(1);
        self.free.push(id);
    }

    fn park(&mut self, id: u32, waker: &Waker, direct: Option<&Arc<dyn Direct>>) {
        let at = self.subs[id as usize].parked;
        if at == NOT_PARKED {
            if self.parked.capacity() == 0 {
                // Most channels have one subscriber: room for one, not the default four.
                self.parked.reserve_exact(1);
            }
            let generation = self.subs[id as usize].generation;
            self.put_parked(Parked {
                id,
                generation,
                waker: waker.clone(),
                direct: direct.cloned(),
                offer: Offer::Declined,
            });
        } else {
            let parked = &mut self.parked[at as usize];
            if !parked.waker.will_wake(waker) {
                parked.waker.clone_from(waker);
            }
            if parked.direct.is_none() {
                parked.direct = direct.cloned();
            }
        }
    }

    /// Keeps an emptied list a send took as the next send's, when it is the larger.
    fn recycle(&mut self, list: Vec<Parked>) {
        if self.spare.capacity() < list.capacity() {
            self.spare = list;
        }
    }

    /// Adds `p` to the parked list (its subscriber is not in it).
    fn put_parked(&mut self, p: Parked) {
        self.subs[p.id as usize].parked = u32::try_from(self.parked.len()).unwrap_or(u32::MAX);
        self.parked.push(p);
    }

    fn unpark(&mut self, id: u32) {
        let at = std::mem::replace(&mut self.subs[id as usize].parked, NOT_PARKED);
        if at == NOT_PARKED {
            return;
        }
        self.parked.swap_remove(at as usize);
        if let Some(moved) = self.parked.get(at as usize) {
            self.subs[moved.id as usize].parked = at;
        }
    }
}

/// One channel's ring, shared by the hub's map and every subscription of the channel.
#[derive(Debug)]
struct Ring {
    channel: ChannelName,
    state: Mutex<RingState>,
}

impl Ring {
    /// Appends an entry for every joined subscriber and hands it to those that wait
    /// (written directly, or woken).
    fn push(self: &Arc<Self>, msg: HubMsg, limits: Limits) {
        let mut st = lock(&self.state);
        match &msg {
            HubMsg::Event(ev) => {
                st.saw(ev.id);
                st.recent.push(ev);
            }
            HubMsg::Resync => st.recent.clear(),
        }
        let unread = st.subscribers();
        if unread == 0 {
            return;
        }
        st.bytes += msg.bytes();
        st.entries.push_back(Entry { msg, unread });
        let seq = st.tail() - 1;
        while st.entries.len() > limits.events || (st.bytes > limits.bytes && st.entries.len() > 1)
        {
            // The oldest entry's readers are now too far behind: they will see `Lagged`.
            st.pop_front();
        }
        if st.parked.is_empty() {
            return;
        }
        // The entry just pushed is the newest (the loop above keeps at least one).
        let direct = match st.entries.back().map(|e| &e.msg) {
            Some(HubMsg::Event(ev)) => Some(ev.clone()),
            _ => None,
        };
        let spare = std::mem::take(&mut st.spare);
        let mut woken = std::mem::replace(&mut st.parked, spare);
        for p in &woken {
            st.subs[p.id as usize].parked = NOT_PARKED;
        }
        drop(st);
        match direct {
            Some(ev) => self.deliver_direct(ev, seq, woken),
            None => {
                for p in woken.drain(..) {
                    p.waker.wake();
                }
                lock(&self.state).recycle(woken);
            }
        }
    }
}

/// How much a ring may hold: entries and frame bytes.
#[derive(Debug, Clone, Copy)]
struct Limits {
    events: usize,
    bytes: usize,
}

#[derive(Debug)]
struct Channel {
    ring: Arc<Ring>,
    subscribers: usize,
}

#[derive(Debug)]
struct Shared {
    channels: Mutex<HashMap<ChannelName, Channel>>,
    limits: Limits,
    observer: Option<Arc<dyn HubObserver>>,
    /// What every channel's recent events may hold together.
    recent: Arc<Budget>,
}

/// The fan-out hub of one node. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

impl Hub {
    /// `capacity` and `max_bytes` bound each channel's ring: how far (in events, and in
    /// bytes of frames) a subscriber may fall behind live before it is caught up from
    /// history instead.
    pub fn new(capacity: usize, max_bytes: usize, observer: Option<Arc<dyn HubObserver>>) -> Self {
        Self {
            shared: Arc::new(Shared {
                channels: Mutex::new(HashMap::new()),
                limits: Limits {
                    events: capacity.max(1),
                    bytes: max_bytes.max(1),
                },
                observer,
                recent: Arc::new(Budget::new(NODE_RECENT_BYTES)),
            }),
        }
    }

    /// Subscribes to a channel's live events from now on.
    pub fn subscribe(&self, channel: &ChannelName) -> LiveSubscription {
        let mut channels = lock(&self.shared.channels);
        let first;
        let ring = match channels.get_mut(channel) {
            Some(entry) => {
                entry.subscribers += 1;
                first = false;
                entry.ring.clone()
            }
            None => {
                let ring = Arc::new(Ring {
                    channel: channel.clone(),
                    state: Mutex::new(RingState::new(self.shared.recent.clone())),
                });
                channels.insert(
                    channel.clone(),
                    Channel {
                        ring: ring.clone(),
                        subscribers: 1,
                    },
                );
                first = true;
                metrics::gauge!(ssegate_core::metric_names::SUBSCRIBED_CHANNELS).increment(1.0);
                ring
            }
        };
        // The map's count keeps the ring in the map, so it can be joined after the map
        // lock is released.
        drop(channels);
        let id = lock(&ring.state).join();
        if first {
            if let Some(obs) = &self.shared.observer {
                obs.first_subscriber(channel);
            }
        }
        LiveSubscription {
            ring,
            hub: self.clone(),
            id,
        }
    }

    fn ring(&self, channel: &ChannelName) -> Option<Arc<Ring>> {
        lock(&self.shared.channels)
            .get(channel)
            .map(|c| c.ring.clone())
    }

    /// Hands an event to every local subscriber of its channel. Never blocks.
    pub fn send(&self, event: Arc<StoredEvent>) {
        if let Some(ring) = self.ring(&event.channel) {
            ring.push(HubMsg::Event(event), self.shared.limits);
        }
    }

    /// Tells every local subscriber of `channel` to catch up from history.
    pub fn resync(&self, channel: &ChannelName) {
        if let Some(ring) = self.ring(channel) {
            ring.push(HubMsg::Resync, self.shared.limits);
        }
    }

    /// Tells every local subscriber of every channel to catch up from history.
    pub fn resync_all(&self) {
        let rings: Vec<Arc<Ring>> = lock(&self.shared.channels)
            .values()
            .map(|c| c.ring.clone())
            .collect();
        for ring in rings {
            ring.push(HubMsg::Resync, self.shared.limits);
        }
    }

    /// Forgets `channel`'s recent events: its upstream subscription was lost, so live
    /// delivery misses events until the resync that follows the re-subscribe, and a
    /// resume must read history until then (see `recent`).
    pub fn forget_recent(&self, channel: &ChannelName) {
        if let Some(ring) = self.ring(channel) {
            lock(&ring.state).recent.clear();
        }
    }

    /// [`Hub::forget_recent`] for every channel (the one pub/sub connection was lost).
    pub fn forget_recent_all(&self) {
        let rings: Vec<Arc<Ring>> = lock(&self.shared.channels)
            .values()
            .map(|c| c.ring.clone())
            .collect();
        for ring in rings {
            lock(&ring.state).recent.clear();
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

    /// Notes that `id` was read from `channel`'s history for a local subscriber: like a
    /// live event, an id some local client may now hold (a stream opened just before a
    /// publish gets it from history while its SUBSCRIBE is on the way).
    pub fn saw(&self, channel: &ChannelName, id: ssegate_core::EntryId) {
        if let Some(ring) = self.ring(channel) {
            lock(&ring.state).saw(id);
        }
    }

    /// The newest id of `channel` that [`Hub::saw`] recorded (live or read from history),
    /// while the channel has local subscribers.
    pub fn newest(&self, channel: &ChannelName) -> Option<ssegate_core::EntryId> {
        self.ring(channel).and_then(|r| lock(&r.state).newest)
    }

    /// For each channel with local subscribers that carried a live event or had one read
    /// from history ([`Hub::saw`]), the newest such id: an id some local client may hold
    /// as its cursor.
    pub fn newest_ids(&self) -> Vec<(ChannelName, ssegate_core::EntryId)> {
        let rings: Vec<Arc<Ring>> = lock(&self.shared.channels)
            .values()
            .map(|c| c.ring.clone())
            .collect();
        rings
            .iter()
            .filter_map(|r| Some((r.channel.clone(), lock(&r.state).newest?)))
            .collect()
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

    /// Entries held and entries allocated by `channel`'s ring (tests of the sizing).
    #[cfg(test)]
    fn ring_size(&self, channel: &ChannelName) -> Option<(usize, usize)> {
        self.ring(channel).map(|r| {
            let st = lock(&r.state);
            (st.entries.len(), st.entries.capacity())
        })
    }
}

/// What a live subscription yields.
#[derive(Debug)]
pub enum LiveRecv {
    /// The channel's next event, in publish order.
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
    ring: Arc<Ring>,
    hub: Hub,
    /// This subscriber's slot in the ring (which keeps its position).
    id: u32,
}

impl std::fmt::Debug for LiveSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveSubscription")
            .field("channel", &self.ring.channel)
            .finish_non_exhaustive()
    }
}

impl LiveSubscription {
    /// The channel subscribed to.
    pub fn channel(&self) -> &ChannelName {
        &self.ring.channel
    }

    /// Polls for the next live event.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<LiveRecv> {
        self.poll_recv_or_direct(cx, None)
    }

    /// Polls for the next live event; while it waits, the next event may instead be
    /// offered to `direct` (see [`Direct`]): one it takes is never yielded here.
    pub fn poll_recv_or_direct(
        &mut self,
        cx: &mut Context<'_>,
        direct: Option<&Arc<dyn Direct>>,
    ) -> Poll<LiveRecv> {
        let mut st = lock(&self.ring.state);
        let id = self.id as usize;
        let next = st.subs[id].next;
        if next < st.head {
            // Entries this subscriber had not read were dropped: it is too far behind.
            st.subs[id].next = st.head;
            return Poll::Ready(LiveRecv::Lagged);
        }
        let at = usize::try_from(next - st.head).unwrap_or(usize::MAX);
        let Some(entry) = st.entries.get_mut(at) else {
            st.park(self.id, cx.waker(), direct);
            return Poll::Pending;
        };
        entry.unread -= 1;
        let msg = entry.msg.clone();
        st.subs[id].next = next + 1;
        if at == 0 {
            // This may have been the oldest entry's last reader.
            st.release_read();
        }
        Poll::Ready(match msg {
            HubMsg::Event(ev) => LiveRecv::Event(ev),
            HubMsg::Resync => LiveRecv::Resync,
        })
    }

    /// Drops every entry queued for this subscriber. For a stream whose cursor moved back
    /// (a gap that continues below what it was shown: events the store lost): a queued
    /// live copy of a lost event would follow the new cursor and be shown twice. History
    /// covers whatever else was queued (the next live event shows the hole by its `prev`).
    pub fn skip_queued(&mut self) {
        let mut st = lock(&self.ring.state);
        let id = self.id as usize;
        let next = st.subs[id].next;
        st.subs[id].next = st.skip_from(next);
    }

    /// The events of this channel after `cursor` (of `epoch`) that this node received
    /// live, when `cursor` is one of them: empty when it is the newest, `None` when
    /// history must be read. Ask only after subscribing (see the `recent` module).
    pub fn recent_after(&self, epoch: Epoch, cursor: EntryId) -> Option<Vec<Arc<StoredEvent>>> {
        lock(&self.ring.state).recent.after(epoch, cursor)
    }

    /// Where this node knows the channel to stand in `epoch` (the store's, as the broker
    /// knows it): a fresh stream's start without a read (see the `recent` module). Ask
    /// only after subscribing.
    pub fn head(&self, epoch: Epoch) -> ChannelHead {
        let st = lock(&self.ring.state);
        st.recent
            .head(st.newest, epoch, tokio::time::Instant::now())
    }

    /// Gives the channel's head a start read's answer; `generation` is the one
    /// [`LiveSubscription::head`] reported when the read was issued.
    pub fn seed_head(&self, generation: Generation, epoch: Epoch, last: EntryId) {
        lock(&self.ring.state)
            .recent
            .seed(generation, epoch, last, tokio::time::Instant::now());
    }

    /// Waits for the next live event.
    pub async fn recv(&mut self) -> LiveRecv {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }
}

impl Drop for LiveSubscription {
    fn drop(&mut self) {
        lock(&self.ring.state).leave(self.id);
        self.hub.release(&self.ring.channel);
    }
}

#[cfg(test)]
mod tests;
