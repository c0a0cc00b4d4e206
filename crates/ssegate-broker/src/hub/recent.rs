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
//! A fresh stream is safe at any position at or before its channel's newest (its live
//! subscription, taken first, brings what follows, or shows by a `prev` that history
//! must be read; see the server's `stream::heads`). Its start read, though, also carries
//! the node's evidence of a failover's loss that no guard has reported (see
//! `ReadFrom::Oldest` in the Redis broker): the store records it and moves the channel's
//! ids past it, so that the new primary cannot hand a lost id to a new event. So the
//! channel's [`ChannelHead`] is a start read's answer, kept only while it stands for
//! everything this node knows:
//!
//! - it was issued under the current [`Generation`]: a resync (a subscription made or
//!   made again, an undecodable live message) or a lost upstream subscription bumps it,
//!   and a read issued before may have gone to a store that has failed over since;
//! - no local stream has seen an id past it (live or from history): then the node holds
//!   evidence the answer did not carry, and the next fresh stream reads again;
//! - it is of the store's epoch as the node knows it now (a `FLUSHALL` without a pub/sub
//!   reconnect changes the epoch under a quiet channel);
//! - it is at most [`HEAD_MAX_AGE`] old. A fresh stream served from a head read `δ` ago
//!   is in the position of a stream that opened `δ` earlier, and the age bounds what that
//!   costs when the store changes under a quiet channel without a resync: its keys expire
//!   (the head then names an event the store no longer has, and the stream would be told
//!   of a gap before its own head), or a failover the pub/sub connection has not noticed
//!   yet (a fixed address behind a proxy) lost the head's event.
//!
//! A quiet channel that streams open on one after another pays one read for the first,
//! not one per stream; a busy one pays at most one per event (measured in
//! docs/benchmarks/notes.md).
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
use std::time::Duration;
use tokio::time::Instant;

use crate::event::StoredEvent;

/// Events kept per channel.
pub const RECENT_EVENTS: usize = 64;
/// Frame bytes kept per channel.
pub const RECENT_BYTES: usize = 64 * 1024;
/// Frame bytes kept over every channel of a node.
pub const NODE_RECENT_BYTES: usize = 32 * 1024 * 1024;
/// How long a start read's answer serves fresh streams (see "Where a fresh stream
/// starts"): short beside what changes a quiet store without a resync (a key's expiry,
/// an unnoticed failover), long beside the moments between clients of a page that opens.
pub const HEAD_MAX_AGE: Duration = Duration::from_secs(1);

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
        /// A start read's answer.
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
    /// A start read's answer, and when it came.
    head: Option<(Epoch, EntryId, Instant)>,
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

    /// Where the channel stands in `epoch` (see the module docs), given the newest id a
    /// local stream has seen on it.
    pub(crate) fn head(&self, seen: Option<EntryId>, epoch: Epoch, now: Instant) -> ChannelHead {
        match self.head {
            Some((e, last, at))
                if e == epoch
                    && seen.is_none_or(|n| n <= last)
                    && now.saturating_duration_since(at) <= HEAD_MAX_AGE =>
            {
                ChannelHead::Known { epoch, last }
            }
            _ => ChannelHead::Unknown(self.generation),
        }
    }

    /// Takes a start read's answer as the head, when the read was issued under the
    /// current generation.
    pub(crate) fn seed(
        &mut self,
        generation: Generation,
        epoch: Epoch,
        last: EntryId,
        now: Instant,
    ) {
        if generation == self.generation {
            self.head = Some((epoch, last, now));
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

    #[test]
    fn the_head_is_a_recent_read_of_the_current_generation_and_epoch_past_everything_seen() {
        let e = Epoch::random();
        let budget = Arc::new(Budget::new(usize::MAX));
        let mut r = Recent::new(budget.clone());
        let t = Instant::now();
        let id = |n| EntryId::new(n, 0);
        let known = |n| ChannelHead::Known {
            epoch: e,
            last: id(n),
        };
        let unknown = |r: &Recent, seen| match r.head(seen, e, t) {
            ChannelHead::Unknown(g) => g,
            known => panic!("expected an unknown head: {known:?}"),
        };

        // A read issued now seeds the head.
        let g = unknown(&r, None);
        r.seed(g, e, id(5), t);
        assert_eq!(r.head(None, e, t), known(5));
        assert_eq!(r.head(Some(id(5)), e, t), known(5));

        // Once a stream here saw a later id (live or from history), the node holds
        // evidence the read did not carry: read again.
        r.push(&ev(e, 5, 6, 0));
        assert_eq!(
            unknown(&r, Some(id(6))),
            g,
            "same generation: a new read may seed"
        );
        r.seed(g, e, id(6), t);
        assert_eq!(r.head(Some(id(6)), e, t), known(6));

        // Of another epoch than the store's now: read again.
        assert!(matches!(
            r.head(None, Epoch::random(), t),
            ChannelHead::Unknown(_)
        ));
        // Older than its age: read again.
        assert_eq!(r.head(None, e, t + HEAD_MAX_AGE), known(6));
        let late = t + HEAD_MAX_AGE + Duration::from_millis(1);
        assert!(matches!(r.head(None, e, late), ChannelHead::Unknown(_)));

        // A resync forgets it, and a read issued before the resync cannot bring it back.
        r.clear();
        let after = unknown(&r, Some(id(6)));
        assert_ne!(after, g);
        r.seed(g, e, id(7), t);
        assert_eq!(r.head(Some(id(6)), e, t), ChannelHead::Unknown(after));
        r.seed(after, e, id(7), t);
        assert_eq!(r.head(Some(id(6)), e, t), known(7));

        // Another channel's chain (or this one's, made again) has its own generation.
        let other = Recent::new(budget);
        assert_ne!(unknown(&other, None), after);
        assert_ne!(unknown(&other, None), g);
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
