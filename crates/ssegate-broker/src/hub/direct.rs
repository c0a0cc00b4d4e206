//! Direct delivery: a send writes an event to a waiting subscriber's connection itself,
//! instead of waking the subscriber's task to do it.
//!
//! Fan-out of one event to thousands of idle streams was one task wake-up, one poll and
//! one ring lock per stream on top of the write the kernel needs (issue 16 part 4: about
//! twice the CPU of a loop that only writes). A subscriber that waits with nothing else
//! to do can hand the hub a [`Direct`]: the send then offers it the event, outside the
//! ring's lock, and a taken event counts as read by that subscriber, whose task stays
//! asleep.
//!
//! # Rule
//!
//! **The hub never decides what a stream shows; it only asks.** [`Direct::offer`] must
//! take an event only when its subscriber's own task would have written exactly that
//! event next, and must not block (it runs on the sending task, once per waiting
//! subscriber). Anything else is [`Offer::Declined`] and the subscriber is woken as
//! before, so a declined offer costs what a send cost without this module.
//!
//! # Where the offers run
//!
//! A send to at most [`INLINE_OFFERS`] waiting subscribers makes its offers itself (a few
//! non-blocking writes). A larger one hands them to a task of its own, which yields every
//! [`OFFERS_PER_YIELD`] offers: a send may be made under a broker's lock (the embedded
//! broker's channel log) or on the Redis pub/sub reader, and thousands of writes (about
//! 4 µs each on loopback) must hold neither. Order is kept without more: a subscriber is
//! in one send's list at a time, and is parked again only once it has read up to the
//! ring's tail. That task ends when its offers are settled; it is the one task this
//! crate spawns that belongs to no connection (CONTRIBUTING.md, "a task").
//!
//! A taken event moves the subscriber's position past it (unless its task read it in
//! the meantime: positions only move forward, and each entry's unread count drops once
//! per subscriber). The subscriber goes back to waiting, or is woken when more entries
//! arrived while the offers ran (they were not offered to it: it was not parked), when
//! the offer asked for it, or when its slot changed hands.

use std::sync::Arc;

use crate::event::StoredEvent;
use crate::lock;

use super::{NOT_PARKED, Parked, Ring};

/// Where a waiting subscriber's next event may be written without waking it.
pub trait Direct: Send + Sync + std::fmt::Debug + 'static {
    /// Offered `event`, the next entry for this subscriber: take it (written, so the
    /// subscriber's task must not write it again) or decline it. Must not block.
    fn offer(&self, event: &StoredEvent) -> Offer;
}

/// What [`Direct::offer`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Not taken: the subscriber's task is woken and reads it from the ring.
    Declined,
    /// Taken; the subscriber keeps waiting.
    Taken,
    /// Taken, and the subscriber's task must run (it has something left to finish).
    TakenWake,
}

/// A send with at most this many waiting subscribers makes its offers itself; one with
/// more hands them to a task of its own (see the module docs).
pub(super) const INLINE_OFFERS: usize = 64;
/// Offers that task makes between yields to the runtime.
const OFFERS_PER_YIELD: usize = 256;

impl Ring {
    /// Offers entry `seq` (`event`) to each subscriber in `woken` (taken out of the
    /// parked list, the lock released), wakes those that decline, and credits and parks
    /// again those that took it; then recycles `woken` as the ring's spare list.
    pub(super) fn deliver_direct(
        self: &Arc<Self>,
        event: Arc<StoredEvent>,
        seq: u64,
        mut woken: Vec<Parked>,
    ) {
        if woken.len() > INLINE_OFFERS {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let ring = self.clone();
                rt.spawn(async move {
                    for part in woken.chunks_mut(OFFERS_PER_YIELD) {
                        offer_all(&event, part);
                        tokio::task::yield_now().await;
                    }
                    ring.settle(seq, woken);
                });
                return;
            }
        }
        offer_all(&event, &mut woken);
        self.settle(seq, woken);
    }

    /// Credits entry `seq` to the subscribers in `woken` that took it and parks them
    /// again (or wakes them, when more arrived meanwhile or the offer asked for it).
    fn settle(&self, seq: u64, mut woken: Vec<Parked>) {
        let mut st = lock(&self.state);
        // Woken after the lock is released; allocated only when some subscriber must run.
        let mut wake = Vec::new();
        let tail = st.tail();
        for p in woken.drain(..) {
            if p.offer == Offer::Declined {
                continue;
            }
            let sub = st.subs[p.id as usize];
            if sub.generation != p.generation {
                // It left (its leaving counted what it had not read): nothing to credit.
                continue;
            }
            if sub.next == seq {
                st.subs[p.id as usize].next = seq + 1;
                if let Some(at) = seq.checked_sub(st.head) {
                    if let Some(entry) = st.entries.get_mut(at as usize) {
                        entry.unread -= 1;
                    }
                }
            }
            if sub.parked != NOT_PARKED {
                // Its task ran meanwhile and is waiting again, with its own waker.
                continue;
            }
            if p.offer == Offer::TakenWake || st.subs[p.id as usize].next < tail {
                wake.push(p.waker);
            } else {
                st.put_parked(p);
            }
        }
        st.release_read();
        st.recycle(woken);
        drop(st);
        for w in wake {
            w.wake();
        }
    }
}

/// Offers `event` to each of `woken` and wakes those that decline.
fn offer_all(event: &StoredEvent, woken: &mut [Parked]) {
    for p in woken {
        p.offer = p
            .direct
            .as_ref()
            .map_or(Offer::Declined, |d| d.offer(event));
        if p.offer == Offer::Declined {
            p.waker.wake_by_ref();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll, Wake, Waker};

    use ssegate_core::ChannelName;

    use super::*;
    use crate::hub::tests::ev;
    use crate::hub::{Hub, LiveRecv, LiveSubscription};

    #[derive(Default)]
    struct Wakes(AtomicUsize);
    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A `Direct` that answers `answer` and, while it answers, runs `during`.
    type During = Box<dyn Fn(&StoredEvent) + Send + Sync>;
    struct Sink {
        answer: Offer,
        taken: Mutex<Vec<u64>>,
        during: Mutex<Option<During>>,
    }
    impl std::fmt::Debug for Sink {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Sink")
        }
    }
    impl Direct for Sink {
        fn offer(&self, event: &StoredEvent) -> Offer {
            if let Some(during) = self.during.lock().unwrap().take() {
                during(event);
            }
            if self.answer != Offer::Declined {
                self.taken.lock().unwrap().push(event.id.ms);
            }
            self.answer
        }
    }
    fn sink(answer: Offer) -> Arc<Sink> {
        Arc::new(Sink {
            answer,
            taken: Mutex::default(),
            during: Mutex::default(),
        })
    }

    fn poll(sub: &mut LiveSubscription, wakes: &Arc<Wakes>, d: &Arc<Sink>) -> Option<u64> {
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let d: Arc<dyn Direct> = d.clone();
        match sub.poll_recv_or_direct(&mut cx, Some(&d)) {
            Poll::Ready(LiveRecv::Event(e)) => Some(e.id.ms),
            Poll::Ready(other) => panic!("{other:?}"),
            Poll::Pending => None,
        }
    }

    fn held(hub: &Hub, ch: &ChannelName) -> usize {
        hub.ring_size(ch).map_or(0, |(n, _)| n)
    }

    #[test]
    fn a_taken_event_is_not_read_again_and_its_subscriber_sleeps_on() {
        let hub = Hub::new(8, usize::MAX, None);
        let ch = ChannelName::new("d").unwrap();
        let mut sub = hub.subscribe(&ch);
        let (wakes, d) = (Arc::new(Wakes::default()), sink(Offer::Taken));
        assert_eq!(poll(&mut sub, &wakes, &d), None);
        for n in 1..=3 {
            hub.send(ev(&ch, n));
        }
        assert_eq!(
            *d.taken.lock().unwrap(),
            vec![1, 2, 3],
            "each offered, in order"
        );
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0, "never woken");
        assert_eq!(held(&hub, &ch), 0, "every entry released");
        assert_eq!(poll(&mut sub, &wakes, &d), None, "nothing to read twice");
    }

    #[test]
    fn a_declined_event_wakes_its_subscriber_and_is_read() {
        let hub = Hub::new(8, usize::MAX, None);
        let ch = ChannelName::new("d").unwrap();
        let mut sub = hub.subscribe(&ch);
        let (wakes, d) = (Arc::new(Wakes::default()), sink(Offer::Declined));
        assert_eq!(poll(&mut sub, &wakes, &d), None);
        hub.send(ev(&ch, 1));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert_eq!(poll(&mut sub, &wakes, &d), Some(1));
        assert_eq!(held(&hub, &ch), 0);
    }

    #[test]
    fn a_subscriber_that_must_finish_something_is_woken_without_the_event() {
        let hub = Hub::new(8, usize::MAX, None);
        let ch = ChannelName::new("d").unwrap();
        let mut sub = hub.subscribe(&ch);
        let (wakes, d) = (Arc::new(Wakes::default()), sink(Offer::TakenWake));
        assert_eq!(poll(&mut sub, &wakes, &d), None);
        hub.send(ev(&ch, 1));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert_eq!(poll(&mut sub, &wakes, &d), None, "1 was taken");
    }

    /// An event sent while another is being offered is not offered (the subscriber was
    /// not parked): it is woken for it, and reads exactly it.
    #[test]
    fn an_event_sent_during_an_offer_wakes_the_subscriber_for_it() {
        let hub = Hub::new(8, usize::MAX, None);
        let ch = ChannelName::new("d").unwrap();
        let mut sub = hub.subscribe(&ch);
        let (wakes, d) = (Arc::new(Wakes::default()), sink(Offer::Taken));
        let (h, c) = (hub.clone(), ch.clone());
        *d.during.lock().unwrap() = Some(Box::new(move |_| h.send(ev(&c, 2))));
        assert_eq!(poll(&mut sub, &wakes, &d), None);
        hub.send(ev(&ch, 1));
        assert_eq!(*d.taken.lock().unwrap(), vec![1]);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert_eq!(poll(&mut sub, &wakes, &d), Some(2));
        assert_eq!(poll(&mut sub, &wakes, &d), None);
        assert_eq!(held(&hub, &ch), 0);
    }

    /// A subscriber that reads the entry itself while it is offered (its task ran) is
    /// not credited twice, and one that leaves meanwhile is not credited at all: the
    /// other subscriber's reads still release every entry.
    #[test]
    fn reads_and_departures_during_an_offer_count_once() {
        for leave in [false, true] {
            let hub = Hub::new(8, usize::MAX, None);
            let ch = ChannelName::new("d").unwrap();
            let sub = Arc::new(Mutex::new(Some(hub.subscribe(&ch))));
            let mut other = hub.subscribe(&ch);
            let (wakes, d) = (Arc::new(Wakes::default()), sink(Offer::Taken));
            let s = sub.clone();
            let w = wakes.clone();
            let d2 = d.clone();
            *d.during.lock().unwrap() = Some(Box::new(move |_| {
                let mut s = s.lock().unwrap();
                if leave {
                    *s = None;
                } else {
                    let got = poll(s.as_mut().unwrap(), &w, &d2);
                    assert_eq!(got, Some(1));
                }
            }));
            assert_eq!(
                poll(sub.lock().unwrap().as_mut().unwrap(), &wakes, &d),
                None
            );
            hub.send(ev(&ch, 1));
            let mut cx = Context::from_waker(Waker::noop());
            assert!(matches!(
                other.poll_recv(&mut cx),
                Poll::Ready(LiveRecv::Event(_))
            ));
            assert_eq!(held(&hub, &ch), 0, "leave={leave}");
            hub.send(ev(&ch, 2));
            if !leave {
                assert_eq!(
                    poll(sub.lock().unwrap().as_mut().unwrap(), &wakes, &d),
                    None
                );
                assert_eq!(*d.taken.lock().unwrap(), vec![1, 2]);
            }
            assert!(matches!(
                other.poll_recv(&mut cx),
                Poll::Ready(LiveRecv::Event(_))
            ));
            assert_eq!(held(&hub, &ch), 0, "leave={leave}");
        }
    }

    /// A subscriber whose task reads the offered entry and waits again during the offer
    /// is in the parked list once, and the next event is offered to it once.
    #[test]
    fn a_subscriber_that_waits_again_during_an_offer_is_parked_once() {
        let hub = Hub::new(8, usize::MAX, None);
        let ch = ChannelName::new("d").unwrap();
        let sub = Arc::new(Mutex::new(hub.subscribe(&ch)));
        let (wakes, d) = (Arc::new(Wakes::default()), sink(Offer::Taken));
        let (s, w, d2) = (sub.clone(), wakes.clone(), d.clone());
        *d.during.lock().unwrap() = Some(Box::new(move |_| {
            let mut s = s.lock().unwrap();
            assert_eq!(poll(&mut s, &w, &d2), Some(1), "its task read it");
            assert_eq!(poll(&mut s, &w, &d2), None, "and waits again");
        }));
        assert_eq!(poll(&mut sub.lock().unwrap(), &wakes, &d), None);
        hub.send(ev(&ch, 1));
        let ring = hub.ring(&ch).unwrap();
        assert_eq!(lock(&ring.state).parked.len(), 1, "parked once");
        hub.send(ev(&ch, 2));
        assert_eq!(*d.taken.lock().unwrap(), vec![1, 2], "offered once each");
    }

    /// A subscriber leaves during the offer and a new one gets its slot: the new one is
    /// not parked with the old one's `Direct` (which would take its events).
    #[test]
    fn a_slot_taken_over_during_an_offer_keeps_nothing_of_the_old_subscriber() {
        let hub = Hub::new(8, usize::MAX, None);
        let ch = ChannelName::new("d").unwrap();
        let old = Arc::new(Mutex::new(Some(hub.subscribe(&ch))));
        // Keeps the ring, and so the slot, alive across the departure.
        let mut keep = hub.subscribe(&ch);
        let newer: Arc<Mutex<Option<LiveSubscription>>> = Arc::default();
        let (wakes, d) = (Arc::new(Wakes::default()), sink(Offer::Taken));
        let (o, n, h, c) = (old.clone(), newer.clone(), hub.clone(), ch.clone());
        *d.during.lock().unwrap() = Some(Box::new(move |_| {
            *o.lock().unwrap() = None;
            *n.lock().unwrap() = Some(h.subscribe(&c));
        }));
        assert_eq!(
            poll(old.lock().unwrap().as_mut().unwrap(), &wakes, &d),
            None
        );
        hub.send(ev(&ch, 1));
        hub.send(ev(&ch, 2));
        assert_eq!(
            *d.taken.lock().unwrap(),
            vec![1],
            "2 is not the old Direct's"
        );
        let mut cx = Context::from_waker(Waker::noop());
        let mut newer = newer.lock().unwrap();
        match newer.as_mut().unwrap().poll_recv(&mut cx) {
            Poll::Ready(LiveRecv::Event(e)) => assert_eq!(e.id.ms, 2),
            other => panic!("{other:?}"),
        }
        let _ = keep.poll_recv(&mut cx);
    }

    /// More than `INLINE_OFFERS` waiting subscribers: the send returns before any offer
    /// (they run on a task of their own), and then every one is taken, none woken.
    #[tokio::test]
    async fn a_large_send_makes_its_offers_on_a_task_of_its_own() {
        let hub = Hub::new(8, usize::MAX, None);
        let ch = ChannelName::new("d").unwrap();
        let n = INLINE_OFFERS * 5 + 1;
        let wakes = Arc::new(Wakes::default());
        let mut subs: Vec<_> = (0..n)
            .map(|_| (hub.subscribe(&ch), sink(Offer::Taken)))
            .collect();
        for (sub, d) in &mut subs {
            assert_eq!(poll(sub, &wakes, d), None);
        }
        hub.send(ev(&ch, 1));
        let offered = |subs: &[(LiveSubscription, Arc<Sink>)]| {
            subs.iter()
                .filter(|(_, d)| !d.taken.lock().unwrap().is_empty())
                .count()
        };
        assert_eq!(offered(&subs), 0, "not on the sender");
        for _ in 0..1000 {
            if held(&hub, &ch) == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(offered(&subs), n);
        assert_eq!(held(&hub, &ch), 0, "every subscriber credited");
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
        hub.send(ev(&ch, 2));
        for _ in 0..1000 {
            if held(&hub, &ch) == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(subs.iter().all(|(_, d)| *d.taken.lock().unwrap() == [1, 2]));
    }
}
