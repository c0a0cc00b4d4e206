//! A channel's recent events, as this node's live subscribers received them: what lets a
//! stream resume without a history read.
//!
//! # Why it may stand in for history
//!
//! A stream takes its live subscription *before* it asks this cache. So whatever live
//! delivery misses afterwards reaches that stream as [`super::LiveRecv::Resync`] (the
//! upstream subscription was (re)established) or shows in a live event's `prev`, exactly
//! as for a stream that was live through the cached events: a stream served from here is
//! in the position of one that stayed live on this node. The cache only holds a verified
//! chain: each event's `prev` is the event before it (an event that does not follow the
//! newest starts a new chain), one epoch throughout, and a resync empties it. A resume is
//! served only when the client's cursor is an event of the chain; anything else reads
//! history as before.
//!
//! # Where a fresh stream starts
//!
//! The same reasoning gives a fresh stream its start without a read. A fresh stream is
//! safe at any position at or before the channel's newest (its live subscription, taken
//! first, brings what follows, or shows by a `prev` that history must be read; see the
//! server's `stream::heads`). The channel's [`ChannelHead`] is such a position: the newest live
//! event's id, or, before any came, the answer of a start read that began while no resync
//! came between (a resync bumps the [`Generation`], and a read issued under an older one
//! is not kept). Ids only grow in a store that loses nothing; a store that lost events (a
//! failover) lost the pub/sub connection too, and the resync that follows forgets the
//! head, so the first fresh stream after it reads the store again and that read carries
//! the node's evidence of the loss (see `ReadFrom::Oldest` in the Redis broker). With a
//! known head, streams that open on a busy or idle channel one after another need no
//! round trip each (measured in docs/benchmarks/notes.md).
//!
//! # Bounds
//!
//! Per channel with local subscribers: at most [`RECENT_EVENTS`] events and
//! [`RECENT_BYTES`] (an event larger than that is not kept). Per node: at most
//! [`NODE_RECENT_BYTES`] over every channel; a channel that would pass it drops its own
//! oldest first, and keeps nothing when that is not enough. An event counts as the
//! history budget counts it ([`StoredEvent::held_bytes`]: its frame, its own data and
//! trace, its fixed size and allocation overhead), as if the cache alone kept it alive,
//! although it shares the `Arc`s of the live ring and history. It goes with the
//! channel's ring when the channel's last local subscriber leaves, and with a lost
//! upstream subscription ([`super::Hub::forget_recent`]): until the resync that follows
//! the re-subscribe, live delivery is known to miss events.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use ssegate_core::{EntryId, Epoch};

use crate::event::StoredEvent;

/// Events kept per channel.
pub const RECENT_EVENTS: usize = 64;
/// Frame bytes kept per channel.
pub const RECENT_BYTES: usize = 64 * 1024;
/// Frame bytes kept over every channel of a node.
pub const NODE_RECENT_BYTES: usize = 32 * 1024 * 1024;

/// The node-wide count of cached bytes, shared by every channel's [`Recent`].
#[derive(Debug, Default)]
pub(crate) struct Budget {
    used: AtomicUsize,
    limit: usize,
    /// The next [`Generation`], unique over every channel's chain (a ring dropped and
    /// made again must not take a read issued for the one before it).
    generations: AtomicU64,
}

impl Budget {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            used: AtomicUsize::new(0),
            limit,
            generations: AtomicU64::new(0),
        }
    }

    fn next_generation(&self) -> Generation {
        Generation(self.generations.fetch_add(1, Ordering::Relaxed))
    }

    /// Takes `n` bytes if they fit.
    fn take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                (u + n <= self.limit).then_some(u + n)
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::Relaxed);
    }

    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// A channel's chain since its last resync: a read issued under one may seed its head
/// only while it is still current ([`Recent::seed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generation(u64);

/// Where this node knows a channel to stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelHead {
    /// A position at or before the channel's newest: a fresh stream may start there.
    Known {
        /// The store's epoch of `last`.
        epoch: Epoch,
        /// The newest live event's id, or a start read's answer.
        last: EntryId,
    },
    /// Not known: read the store, and seed the head with the answer under this generation.
    Unknown(Generation),
}

/// One channel's chain of recent events, oldest first, and its head.
#[derive(Debug)]
pub(crate) struct Recent {
    events: VecDeque<Arc<StoredEvent>>,
    bytes: usize,
    budget: Arc<Budget>,
    head: Option<(Epoch, EntryId)>,
    generation: Generation,
}

fn size(ev: &StoredEvent) -> usize {
    ev.held_bytes()
}

impl Recent {
    pub(crate) fn new(budget: Arc<Budget>) -> Self {
        Self {
            events: VecDeque::new(),
            bytes: 0,
            generation: budget.next_generation(),
            budget,
            head: None,
        }
    }

    fn pop_front(&mut self) -> bool {
        let Some(ev) = self.events.pop_front() else {
            return false;
        };
        let n = size(&ev);
        self.bytes -= n;
        self.budget.give(n);
        true
    }

    /// Forgets every event and the head (a resync: live delivery may have missed some).
    pub(crate) fn clear(&mut self) {
        self.drop_events();
        self.head = None;
        self.generation = self.budget.next_generation();
    }

    fn drop_events(&mut self) {
        while self.pop_front() {}
        self.events = VecDeque::new();
    }

    /// Appends a live event, starting a new chain when it does not follow the newest.
    pub(crate) fn push(&mut self, ev: &Arc<StoredEvent>) {
        // Whether or not it is kept, the newest live event is where the channel stands.
        self.head = Some((ev.epoch, ev.id));
        let follows = self
            .events
            .back()
            .is_none_or(|last| last.id == ev.prev && last.epoch == ev.epoch);
        if !follows {
            self.drop_events();
        }
        let n = size(ev);
        if n > RECENT_BYTES {
            return self.drop_events();
        }
        while self.events.len() >= RECENT_EVENTS || self.bytes + n > RECENT_BYTES {
            self.pop_front();
        }
        while !self.budget.take(n) {
            if !self.pop_front() {
                // The node's budget is spent by other channels: this one keeps nothing,
                // so that what it keeps is still a chain ending at the newest.
                return self.drop_events();
            }
        }
        self.bytes += n;
        self.events.push_back(ev.clone());
    }

    /// Where the channel stands (see the module docs).
    pub(crate) fn head(&self) -> ChannelHead {
        match self.head {
            Some((epoch, last)) => ChannelHead::Known { epoch, last },
            None => ChannelHead::Unknown(self.generation),
        }
    }

    /// Takes a start read's answer as the head, when the read was issued under the
    /// current generation (no resync since) and no live event has set it meanwhile.
    pub(crate) fn seed(&mut self, generation: Generation, epoch: Epoch, last: EntryId) {
        if generation == self.generation && self.head.is_none() {
            self.head = Some((epoch, last));
        }
    }

    /// The events after `cursor`, when `cursor` is an event of the chain: empty when it
    /// is the newest; `None` when it is not in the chain (history must be read). Only an
    /// event this node received is a place to serve from: the `prev` of the chain's
    /// oldest is not, as the chain may have started over there after events the store
    /// then lost (a failover), which a client at that `prev` must be told of.
    pub(crate) fn after(&self, epoch: Epoch, cursor: EntryId) -> Option<Vec<Arc<StoredEvent>>> {
        let last = self.events.back()?;
        if last.epoch != epoch {
            return None;
        }
        if last.id == cursor {
            return Some(Vec::new());
        }
        let at = self.events.iter().position(|e| e.id == cursor)?;
        Some(self.events.range(at + 1..).cloned().collect())
    }
}

impl Drop for Recent {
    fn drop(&mut self) {
        self.budget.give(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssegate_core::{ChannelName, Data};

    fn ev(epoch: Epoch, prev: u64, id: u64, pad: usize) -> Arc<StoredEvent> {
        Arc::new(StoredEvent::new(
            epoch,
            ChannelName::new("c").unwrap(),
            EntryId::new(id, 0),
            EntryId::new(prev, 0),
            None,
            Data::text("x".repeat(pad)),
            id,
        ))
    }

    fn ids(evs: &[Arc<StoredEvent>]) -> Vec<u64> {
        evs.iter().map(|e| e.id.ms).collect()
    }

    #[test]
    fn a_cursor_in_the_chain_gets_what_follows_it() {
        let e = Epoch::random();
        let mut r = Recent::new(Arc::new(Budget::new(usize::MAX)));
        assert!(r.after(e, EntryId::ZERO).is_none(), "empty: read history");
        for (prev, id) in [(0, 1), (1, 2), (2, 3)] {
            r.push(&ev(e, prev, id, 0));
        }
        let after = |r: &Recent, e, n| r.after(e, EntryId::new(n, 0)).map(|v| ids(&v));
        assert_eq!(after(&r, e, 0), None, "the oldest's prev: read history");
        assert_eq!(after(&r, e, 1), Some(vec![2, 3]));
        assert_eq!(after(&r, e, 2), Some(vec![3]));
        assert_eq!(after(&r, e, 3), Some(vec![]));
        assert_eq!(after(&r, e, 7), None, "not in the chain");
        assert_eq!(after(&r, Epoch::random(), 2), None);
    }

    #[test]
    fn an_event_that_does_not_follow_starts_a_new_chain() {
        let e = Epoch::random();
        let mut r = Recent::new(Arc::new(Budget::new(usize::MAX)));
        let after = |r: &Recent, e, n| r.after(e, EntryId::new(n, 0)).map(|v| ids(&v));
        r.push(&ev(e, 0, 1, 0));
        r.push(&ev(e, 1, 2, 0));
        // 3 never came live: 4 follows it, so 2 must not look followed by 4.
        r.push(&ev(e, 3, 4, 0));
        assert_eq!(after(&r, e, 2), None);
        assert_eq!(after(&r, e, 1), None);
        // Nor is 3 (4's prev) a place to serve from: a failover may have lost events the
        // node had delivered after it (2 here), and a client at 3 must be told.
        assert_eq!(after(&r, e, 3), None);
        r.push(&ev(e, 4, 5, 0));
        assert_eq!(after(&r, e, 4), Some(vec![5]));
        // Another epoch starts over too.
        let f = Epoch::random();
        r.push(&ev(f, 5, 6, 0));
        assert_eq!(after(&r, f, 5), None);
        assert_eq!(after(&r, e, 6), None);
        assert_eq!(after(&r, f, 6), Some(vec![]));
    }

    #[test]
    fn a_resync_forgets_everything() {
        let e = Epoch::random();
        let budget = Arc::new(Budget::new(usize::MAX));
        let mut r = Recent::new(budget.clone());
        r.push(&ev(e, 0, 1, 0));
        r.push(&ev(e, 1, 2, 0));
        r.clear();
        assert!(r.after(e, EntryId::new(1, 0)).is_none());
        assert!(r.after(e, EntryId::new(2, 0)).is_none());
        assert_eq!(budget.used(), 0);
    }

    fn unknown(r: &Recent) -> Generation {
        match r.head() {
            ChannelHead::Unknown(g) => g,
            known => panic!("expected an unknown head: {known:?}"),
        }
    }

    #[test]
    fn the_head_is_the_newest_live_event_or_a_read_of_the_current_generation() {
        let e = Epoch::random();
        let budget = Arc::new(Budget::new(usize::MAX));
        let mut r = Recent::new(budget.clone());
        let known = |epoch, n| ChannelHead::Known {
            epoch,
            last: EntryId::new(n, 0),
        };

        // A read issued now seeds the head; a later one does not move it.
        let g = unknown(&r);
        r.seed(g, e, EntryId::new(5, 0));
        assert_eq!(r.head(), known(e, 5));
        r.seed(g, e, EntryId::new(4, 0));
        assert_eq!(r.head(), known(e, 5));

        // Live events move it, kept or not, following or not.
        r.push(&ev(e, 5, 6, 0));
        assert_eq!(r.head(), known(e, 6));
        r.push(&ev(e, 8, 9, 0));
        assert_eq!(r.head(), known(e, 9), "after a hole");
        r.push(&ev(e, 9, 10, RECENT_BYTES + 1));
        assert!(r.events.is_empty());
        assert_eq!(r.head(), known(e, 10), "too large to keep");

        // A resync forgets it, and a read issued before the resync cannot bring it back.
        r.clear();
        let after = unknown(&r);
        assert_ne!(after, g);
        r.seed(g, e, EntryId::new(10, 0));
        assert_eq!(r.head(), ChannelHead::Unknown(after));

        // A live event that comes while a read is out wins over the read's answer.
        r.push(&ev(e, 10, 11, 0));
        r.seed(after, e, EntryId::new(10, 0));
        assert_eq!(r.head(), known(e, 11));

        // Another channel's chain (or this one's, made again) has its own generation.
        let other = Recent::new(budget);
        assert_ne!(unknown(&other), after);
        assert_ne!(unknown(&other), g);
    }

    #[test]
    fn the_chain_is_bounded_per_channel_and_per_node() {
        let e = Epoch::random();
        let budget = Arc::new(Budget::new(usize::MAX));
        let mut r = Recent::new(budget.clone());
        for id in 1..=(RECENT_EVENTS as u64 * 2) {
            r.push(&ev(e, id - 1, id, 0));
        }
        assert_eq!(r.events.len(), RECENT_EVENTS);
        let oldest = RECENT_EVENTS as u64 + 1;
        assert!(r.after(e, EntryId::new(oldest - 1, 0)).is_none(), "dropped");
        assert!(r.after(e, EntryId::new(oldest, 0)).is_some());

        // Bytes per channel: large events keep fewer; one past the bound keeps none.
        let mut r = Recent::new(budget.clone());
        for id in 1..=10 {
            r.push(&ev(e, id - 1, id, RECENT_BYTES / 4));
        }
        assert!(
            r.bytes <= RECENT_BYTES && r.events.len() == 3,
            "{}",
            r.events.len()
        );
        r.push(&ev(e, 10, 11, RECENT_BYTES));
        assert!(r.events.is_empty());
        drop(r);

        // The node's budget: a second channel takes what is left, then keeps nothing.
        let budget = Arc::new(Budget::new(3 * (RECENT_BYTES / 4) + RECENT_BYTES / 8));
        let mut a = Recent::new(budget.clone());
        let mut b = Recent::new(budget.clone());
        for id in 1..=2 {
            a.push(&ev(e, id - 1, id, RECENT_BYTES / 4));
        }
        b.push(&ev(e, 0, 1, RECENT_BYTES / 4));
        b.push(&ev(e, 1, 2, RECENT_BYTES / 4));
        assert_eq!(b.events.len(), 1, "b dropped its own oldest to fit");
        assert!(budget.used() <= budget.limit);
        drop(a);
        drop(b);
        assert_eq!(budget.used(), 0, "every byte given back");
    }
}
