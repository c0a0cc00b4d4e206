//! Criterion benchmark of the hub's live fan-out: one channel, many subscribers, each a
//! task that receives every event (as a stream's session does).
//!
//! Each iteration publishes a burst of events (fewer than the ring holds, so nobody lags)
//! and waits until every subscriber has received all of them; throughput is deliveries
//! (events x subscribers) per second.
//!
//! Run: `cargo bench -p ssegate-broker --bench fanout` (add `-- --quick` for a fast pass).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ssegate_broker::hub::Hub;
use ssegate_broker::{LiveRecv, StoredEvent};
use ssegate_core::{ChannelName, Data, EntryId, Epoch};
use tokio::sync::Notify;

const BURST: usize = 256;
const RING: usize = 512;

fn events(channel: &ChannelName) -> Vec<Arc<StoredEvent>> {
    let epoch = Epoch::random();
    (1..=BURST as u64)
        .map(|n| {
            Arc::new(StoredEvent::new(
                epoch,
                channel.clone(),
                EntryId::new(n, 0),
                EntryId::new(n - 1, 0),
                None,
                Data::text(format!("{{\"n\":{n},\"pad\":\"{}\"}}", "x".repeat(100))),
                n,
            ))
        })
        .collect()
}

/// Subscribers that count what they receive; `done` is bumped by each one that has
/// received a whole burst.
struct Fleet {
    hub: Hub,
    done: Arc<AtomicUsize>,
    notify: Arc<Notify>,
    subscribers: usize,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Fleet {
    fn start(subscribers: usize, channel: &ChannelName) -> Self {
        let hub = Hub::new(RING, usize::MAX, None);
        let done = Arc::new(AtomicUsize::new(0));
        let notify = Arc::new(Notify::new());
        let tasks = (0..subscribers)
            .map(|_| {
                let mut sub = hub.subscribe(channel);
                let (done, notify) = (done.clone(), notify.clone());
                tokio::spawn(async move {
                    let mut got = 0usize;
                    loop {
                        match sub.recv().await {
                            LiveRecv::Event(ev) => {
                                std::hint::black_box(&ev);
                                got += 1;
                                if got % BURST == 0
                                    && done.fetch_add(1, Ordering::AcqRel) + 1 == subscribers
                                {
                                    notify.notify_one();
                                }
                            }
                            LiveRecv::Lagged => {
                                panic!("a subscriber lagged: the burst fits the ring")
                            }
                            LiveRecv::Resync => {}
                            LiveRecv::Closed => break,
                        }
                    }
                })
            })
            .collect();
        Self {
            hub,
            done,
            notify,
            subscribers,
            tasks,
        }
    }

    async fn burst(&self, events: &[Arc<StoredEvent>]) {
        self.done.store(0, Ordering::Release);
        for ev in events {
            self.hub.send(ev.clone());
        }
        while self.done.load(Ordering::Acquire) < self.subscribers {
            let _ = tokio::time::timeout(Duration::from_millis(50), self.notify.notified()).await;
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn fanout(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let channel = ChannelName::new("bench").unwrap_or_else(|e| panic!("{e}"));
    let evs = events(&channel);
    let mut group = c.benchmark_group("hub_fanout");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    for subscribers in [1usize, 100, 5000] {
        group.throughput(Throughput::Elements((subscribers * BURST) as u64));
        group.bench_function(BenchmarkId::new("deliveries", subscribers), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let fleet = Fleet::start(subscribers, &channel);
                    fleet.burst(&evs).await; // warm-up
                    let start = Instant::now();
                    for _ in 0..iters {
                        fleet.burst(&evs).await;
                    }
                    start.elapsed()
                })
            });
        });
    }
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
