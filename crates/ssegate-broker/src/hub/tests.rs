use super::*;
use ssegate_core::{Data, EntryId, Epoch};
use std::time::Duration;

/// Event `n` of `ch`, following `n - 1` (also used by `direct`'s tests).
pub(super) fn ev(ch: &ChannelName, n: u64) -> Arc<StoredEvent> {
    ev_sized(ch, n, 0)
}

fn ev_sized(ch: &ChannelName, n: u64, pad: usize) -> Arc<StoredEvent> {
    Arc::new(StoredEvent::new(
        Epoch::random(),
        ch.clone(),
        EntryId::new(n, 0),
        EntryId::new(n - 1, 0),
        None,
        Data::text(format!("{n}{}", "x".repeat(pad))),
        n,
    ))
}

fn event_id(r: LiveRecv) -> u64 {
    match r {
        LiveRecv::Event(e) => e.id.ms,
        other => panic!("{other:?}"),
    }
}

/// Polls once without waiting.
fn try_recv(sub: &mut LiveSubscription) -> Option<LiveRecv> {
    let mut cx = Context::from_waker(Waker::noop());
    match sub.poll_recv(&mut cx) {
        Poll::Ready(r) => Some(r),
        Poll::Pending => None,
    }
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

#[test]
fn a_subscriber_can_drop_what_is_queued_for_it() {
    let hub = Hub::new(8, usize::MAX, None);
    let ch = ChannelName::new("q").unwrap();
    let mut skipping = hub.subscribe(&ch);
    let mut other = hub.subscribe(&ch);
    hub.send(ev(&ch, 1));
    hub.send(ev(&ch, 2));
    assert_eq!(event_id(try_recv(&mut skipping).unwrap()), 1);
    skipping.skip_queued();
    assert!(try_recv(&mut skipping).is_none(), "2 was dropped");
    // The other subscriber still has both; once it read them, nothing is held.
    assert_eq!(event_id(try_recv(&mut other).unwrap()), 1);
    assert_eq!(event_id(try_recv(&mut other).unwrap()), 2);
    assert_eq!(lock(&skipping.ring.state).entries.len(), 0);
    // Later events reach both again.
    hub.send(ev(&ch, 3));
    assert_eq!(event_id(try_recv(&mut skipping).unwrap()), 3);
    assert_eq!(event_id(try_recv(&mut other).unwrap()), 3);
}

#[tokio::test]
async fn subscriptions_are_reference_counted() {
    let log = Arc::new(Log::default());
    let hub = Hub::new(4, usize::MAX, Some(log.clone()));
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
    let hub = Hub::new(4, usize::MAX, None);
    let ch = ChannelName::new("a").unwrap();
    let mut fast = hub.subscribe(&ch);
    let mut slow = hub.subscribe(&ch);
    for n in 1..=10 {
        hub.send(ev(&ch, n));
        assert_eq!(event_id(fast.recv().await), n);
    }
    assert_eq!(hub.ring_size(&ch).map(|s| s.0), Some(4), "capacity entries");
    assert!(matches!(slow.recv().await, LiveRecv::Lagged));
    // After the lag it continues with what the ring still holds, in order.
    assert_eq!(event_id(slow.recv().await), 7);
}

#[tokio::test]
async fn a_subscriber_too_many_bytes_behind_lags() {
    let one = ev_sized(&ChannelName::new("a").unwrap(), 1, 1000)
        .encoded
        .frame()
        .len();
    // Room for three such frames, not four.
    let hub = Hub::new(512, 3 * one + one / 2, None);
    let ch = ChannelName::new("a").unwrap();
    let mut slow = hub.subscribe(&ch);
    for n in 1..=10 {
        hub.send(ev_sized(&ch, n, 1000));
    }
    assert_eq!(hub.ring_size(&ch).map(|s| s.0), Some(3));
    assert!(matches!(slow.recv().await, LiveRecv::Lagged));
    assert_eq!(event_id(slow.recv().await), 8);
    // One event larger than the limit pushes out everything older, and is still
    // delivered.
    hub.send(ev_sized(&ch, 11, 10 * one));
    assert_eq!(hub.ring_size(&ch).map(|s| s.0), Some(1));
    assert!(matches!(slow.recv().await, LiveRecv::Lagged));
    assert_eq!(event_id(slow.recv().await), 11);
}

#[tokio::test]
async fn the_ring_holds_only_what_someone_has_not_read() {
    let hub = Hub::new(512, usize::MAX, None);
    let ch = ChannelName::new("a").unwrap();
    let mut a = hub.subscribe(&ch);
    let mut b = hub.subscribe(&ch);
    assert_eq!(
        hub.ring_size(&ch),
        Some((0, 0)),
        "an idle ring allocates nothing"
    );
    let first = ev(&ch, 1);
    hub.send(first.clone());
    for n in 2..=100 {
        hub.send(ev(&ch, n));
    }
    assert_eq!(hub.ring_size(&ch).map(|s| s.0), Some(100));
    for n in 1..=100 {
        assert_eq!(event_id(a.recv().await), n);
    }
    assert_eq!(
        hub.ring_size(&ch).map(|s| s.0),
        Some(100),
        "b has read nothing"
    );
    for n in 1..=50 {
        assert_eq!(event_id(b.recv().await), n);
    }
    assert_eq!(hub.ring_size(&ch).map(|s| s.0), Some(50));
    assert_eq!(Arc::strong_count(&first), 1, "read by both: released");
    // A subscriber that leaves releases what it did not read.
    drop(b);
    assert_eq!(
        hub.ring_size(&ch),
        Some((0, 0)),
        "emptied: its buffer is freed"
    );
    assert!(try_recv(&mut a).is_none());
    // Resync entries count like events.
    hub.resync(&ch);
    assert!(matches!(try_recv(&mut a), Some(LiveRecv::Resync)));
    assert_eq!(hub.ring_size(&ch).map(|s| s.0), Some(0));
}

#[tokio::test]
async fn a_late_subscriber_starts_at_the_tail_and_is_not_waited_for() {
    let hub = Hub::new(512, usize::MAX, None);
    let ch = ChannelName::new("a").unwrap();
    let mut early = hub.subscribe(&ch);
    hub.send(ev(&ch, 1));
    let mut late = hub.subscribe(&ch);
    hub.send(ev(&ch, 2));
    assert_eq!(event_id(late.recv().await), 2);
    assert_eq!(hub.ring_size(&ch).map(|s| s.0), Some(2));
    assert_eq!(event_id(early.recv().await), 1);
    assert_eq!(event_id(early.recv().await), 2);
    assert_eq!(hub.ring_size(&ch).map(|s| s.0), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_waiting_subscriber_is_woken_also_after_others_left() {
    let hub = Hub::new(512, usize::MAX, None);
    let ch = ChannelName::new("a").unwrap();
    let mut tasks = Vec::new();
    let mut leaving = Vec::new();
    for i in 0..1000 {
        let mut sub = hub.subscribe(&ch);
        if i % 3 == 0 {
            // Parks its waker, then leaves: the others' slots must stay right.
            assert!(try_recv(&mut sub).is_none());
            leaving.push(sub);
            continue;
        }
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while got.len() < 3 {
                got.push(event_id(sub.recv().await));
            }
            got
        }));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(leaving);
    for n in 1..=3 {
        hub.send(ev(&ch, n));
        tokio::task::yield_now().await;
    }
    for t in tasks {
        let got = tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(got, [1, 2, 3]);
    }
    assert_eq!(hub.ring_size(&ch).map(|s| s.0), None, "all gone");
}

/// What came live is kept for resumes until upstream delivery is in doubt: a resync, a
/// lost subscription, or the channel's last subscriber leaving.
#[test]
fn recent_events_are_forgotten_when_live_delivery_is_in_doubt() {
    let hub = Hub::new(8, usize::MAX, None);
    let ch = ChannelName::new("r").unwrap();
    let epoch = Epoch::random();
    let live = |n: u64| {
        Arc::new(StoredEvent::new(
            epoch,
            ch.clone(),
            EntryId::new(n, 0),
            EntryId::new(n - 1, 0),
            None,
            Data::text(n.to_string()),
            n,
        ))
    };
    let sub = hub.subscribe(&ch);
    let served = |sub: &LiveSubscription| {
        sub.recent_after(epoch, EntryId::new(1, 0))
            .map(|v| v.iter().map(|e| e.id.ms).collect::<Vec<_>>())
    };
    hub.send(live(1));
    hub.send(live(2));
    assert_eq!(served(&sub), Some(vec![2]));
    hub.resync(&ch);
    assert_eq!(served(&sub), None, "after a resync");
    hub.send(live(1));
    hub.send(live(2));
    hub.forget_recent(&ch);
    assert_eq!(served(&sub), None, "after its subscription was lost");
    hub.send(live(1));
    hub.send(live(2));
    hub.forget_recent_all();
    assert_eq!(served(&sub), None, "after the pub/sub connection was lost");
    hub.send(live(1));
    hub.send(live(2));
    drop(sub);
    let sub = hub.subscribe(&ch);
    assert_eq!(served(&sub), None, "a new ring starts empty");
}
