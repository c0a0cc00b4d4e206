//! The session state machine driven directly, with tokio's paused clock for timing.

use std::sync::Arc;
use std::time::Duration;

use ssegate_broker::{Broker, MemoryBroker, StoreLimits};
use ssegate_core::{ChannelName, Data, NewEvent, StartFrom};
use tokio::time::Instant;

use super::{IdForm, Session};
use crate::settings::Settings;
use crate::state::AppState;

fn state(tweak: impl FnOnce(&mut Settings)) -> (Arc<AppState>, MemoryBroker) {
    let mut settings = Settings::default();
    tweak(&mut settings);
    let broker = MemoryBroker::new(settings.history.clone());
    (AppState::new(settings, Arc::new(broker.clone())), broker)
}

async fn session(state: &Arc<AppState>, start: StartFrom) -> Session {
    let guard = state.admit_stream().unwrap();
    Session::open(
        state.clone(),
        guard,
        IdForm::Single,
        vec![ChannelName::new("c").unwrap()],
        vec![start],
        None,
    )
    .await
}

async fn publish(broker: &MemoryBroker, data: &str) {
    let ev = NewEvent {
        channel: ChannelName::new("c").unwrap(),
        event_type: None,
        data: Data::text(data.into()),
        trace: None,
    };
    broker.publish(vec![ev], None).await.unwrap();
}

fn text(b: &bytes::Bytes) -> String {
    String::from_utf8(b.to_vec()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn heartbeats_come_after_an_idle_interval() {
    let (state, _) = state(|s| s.heartbeat_interval = Duration::from_secs(15));
    let mut s = session(&state, StartFrom::Now).await;
    assert!(text(&s.next_frame().await.unwrap()).starts_with("retry: "));
    let start = Instant::now();
    for n in 1..=3 {
        assert_eq!(text(&s.next_frame().await.unwrap()), ": hb\n\n");
        assert_eq!(Instant::now() - start, Duration::from_secs(15 * n));
    }
}

#[tokio::test(start_paused = true)]
async fn an_event_postpones_the_heartbeat() {
    let (state, broker) = state(|s| s.heartbeat_interval = Duration::from_secs(15));
    let mut s = session(&state, StartFrom::Now).await;
    s.next_frame().await.unwrap();
    let start = Instant::now();
    let b = broker.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(10)).await;
        publish(&b, "x").await;
    });
    assert!(text(&s.next_frame().await.unwrap()).ends_with("data: x\n\n"));
    assert_eq!(Instant::now() - start, Duration::from_secs(10));
    assert_eq!(text(&s.next_frame().await.unwrap()), ": hb\n\n");
    assert_eq!(Instant::now() - start, Duration::from_secs(25));
}

#[tokio::test(start_paused = true)]
async fn drain_ends_each_stream_within_the_window_after_a_retry() {
    let (state, _) = state(|s| {
        s.drain_window = Duration::from_secs(10);
        s.heartbeat_interval = Duration::from_secs(3600);
    });
    let mut sessions = Vec::new();
    for _ in 0..20 {
        sessions.push(session(&state, StartFrom::Now).await);
    }
    for s in &mut sessions {
        s.next_frame().await.unwrap();
    }
    let start = Instant::now();
    state.lifecycle.begin_drain();
    let ends = futures_util::future::join_all(sessions.iter_mut().map(|s| async move {
        let last = s.next_frame().await.unwrap();
        assert!(text(&last).starts_with("retry: "), "{}", text(&last));
        let at = Instant::now() - start;
        assert!(s.next_frame().await.is_none());
        at
    }))
    .await;
    assert!(ends.iter().all(|d| *d < Duration::from_secs(10)));
    assert!(
        ends.iter().any(|d| *d > Duration::ZERO),
        "closes are spread, not all at once"
    );
    drop(sessions);
    assert_eq!(state.lifecycle.streams.open(), 0);
}

#[tokio::test]
async fn a_lagging_session_catches_up_from_history_in_order() {
    let (state, broker) = state(|s| {
        s.history = StoreLimits {
            live_backlog: 2,
            ..Settings::default().history
        };
        s.replay_page_size = 3;
    });
    let mut s = session(&state, StartFrom::Now).await;
    s.next_frame().await.unwrap();
    for n in 0..10 {
        publish(&broker, &format!("e{n}")).await;
    }
    let mut seen = String::new();
    while seen.matches("data: ").count() < 10 {
        seen.push_str(&text(&s.next_frame().await.unwrap()));
    }
    let data: Vec<&str> = seen
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    let want: Vec<String> = (0..10).map(|n| format!("e{n}")).collect();
    assert_eq!(data, want);
    assert!(state.metrics.catchups_total() >= 1);
}

/// The head is written once `Session::open` returns, before the body is polled: an event
/// published in between belongs to the stream (it starts at its head).
#[tokio::test]
async fn an_event_published_between_open_and_the_first_poll_is_delivered() {
    let (state, broker) = state(|_| {});
    publish(&broker, "before").await;
    let mut s = session(&state, StartFrom::Now).await;
    publish(&broker, "after").await;
    let first = text(&s.next_frame().await.unwrap());
    assert!(first.starts_with("retry: "), "{first}");
    assert!(
        !first.contains("data:"),
        "the opening frame carries no event: {first}"
    );
    let next = text(&s.next_frame().await.unwrap());
    assert!(next.ends_with("data: after\n\n"), "{next}");
}

/// A Resync (the node's subscription became active) re-reads history, and is not counted
/// as a slow consumer.
#[tokio::test]
async fn a_resync_is_not_a_slow_consumer() {
    let (state, broker) = state(|_| {});
    let mut s = session(&state, StartFrom::Now).await;
    s.next_frame().await.unwrap();
    broker.hub().resync(&ChannelName::new("c").unwrap());
    publish(&broker, "x").await;
    assert!(text(&s.next_frame().await.unwrap()).ends_with("data: x\n\n"));
    assert_eq!(state.metrics.catchups_total(), 0);
}
