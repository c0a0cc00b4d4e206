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
//! A fresh stream does not start from here: its start read also carries the node's
//! evidence of a failover's loss to the store (see `ReadFrom::Oldest` in the Redis
//! broker), which records it and moves the channel's ids past it.
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
use std::sync::atomic::{AtomicUsize, Ordering};

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
}

impl Budget {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            used: AtomicUsize::new(0),
            limit,
        }
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

/// One channel's chain of recent events, oldest first.
#[derive(Debug)]
pub(crate) struct Recent {
    events: VecDeque<Arc<StoredEvent>>,
    bytes: usize,
    budget: Arc<Budget>,
}

fn size(ev: &StoredEvent) -> usize {
    ev.held_bytes()
}

impl Recent {
    pub(crate) fn new(budget: Arc<Budget>) -> Self {
        Self {
            events: VecDeque::new(),
            bytes: 0,
            budget,
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

    /// Forgets every event (a resync: live delivery may have missed some).
    pub(crate) fn clear(&mut self) {
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
            self.clear();
        }
        let n = size(ev);
        if n > RECENT_BYTES {
            return self.clear();
        }
        while self.events.len() >= RECENT_EVENTS || self.bytes + n > RECENT_BYTES {
            self.pop_front();
        }
        while !self.budget.take(n) {
            if !self.pop_front() {
                // The node's budget is spent by other channels: this one keeps nothing,
                // so that what it keeps is still a chain ending at the newest.
                return self.clear();
            }
        }
        self.bytes += n;
        self.events.push_back(ev.clone());
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
