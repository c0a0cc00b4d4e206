//! A client that stops reading must not make the node's memory grow, and must get every
//! event, in order, once it reads again (caught up from history).

use http::StatusCode;
use ssegate_client::{ConnectOptions, Connection, HttpClient, Item};

use crate::helpers::publish_batch;
use crate::helpers::{TestProcess, WAIT, json, spawn_process};
use crate::redis_server::RedisServer;

const EVENTS: usize = 10_000;
const DATA_BYTES: usize = 2048;
/// Small enough that the hub writes each live event straight into an idle stream's
/// socket (`conn::lane`), so the socket fills on that path, part-way through an event.
const SMALL_DATA_BYTES: usize = 1000;
const BATCH: usize = 250;
const STALLED: usize = 4;

async fn publish_all(node: &TestProcess, data_bytes: usize) -> Vec<String> {
    let pad = "x".repeat(data_bytes - 16);
    let mut ids = Vec::with_capacity(EVENTS);
    for start in (0..EVENTS).step_by(BATCH) {
        let events: Vec<serde_json::Value> = (start..start + BATCH)
            .map(|i| serde_json::json!({ "channel": "flood", "data": format!("{i:08}{pad}") }))
            .collect();
        ids.extend(publish_batch(node, events).await);
    }
    ids
}

/// `n` streams of the flood channel, open (each has its head).
async fn subscribe(node: &TestProcess, n: usize) -> Vec<Connection> {
    let mut subs = Vec::new();
    for _ in 0..n {
        let conn = Connection::open(
            &node.url("/v1/channels/flood/events"),
            &ConnectOptions::default(),
        )
        .await
        .unwrap();
        assert_eq!(conn.status(), StatusCode::OK);
        subs.push(conn);
    }
    subs
}

/// Reads the whole flood from `conn`: every event, in order, exactly once. With
/// `pause_every`, the reader stops for 20 ms every that many events (a client busy
/// elsewhere), so that its socket fills and empties while events arrive.
async fn read_all(conn: &mut Connection, pause_every: Option<usize>) {
    let mut next = 0usize;
    while next < EVENTS {
        if pause_every.is_some_and(|k| next % k == 0) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let item = tokio::time::timeout(WAIT, conn.next_item())
            .await
            .unwrap()
            .unwrap();
        match item {
            Some(Item::Event(e)) => {
                assert_ne!(e.event, "sync-required", "history still holds everything");
                let n: usize = e.data[..8].parse().unwrap();
                assert_eq!(n, next, "in order, nothing skipped or repeated");
                next += 1;
            }
            Some(_) => {}
            None => panic!("stream ended at {next}"),
        }
    }
}

async fn stats(node: &TestProcess) -> serde_json::Value {
    let admin = node.admin.unwrap();
    let res = HttpClient::new()
        .get(&format!("http://{admin}/v1/stats"))
        .await
        .unwrap();
    json(&res.body)
}

/// Runs the flood on a fresh node with `stalled` subscribers that read nothing until it
/// is over; returns the node's RSS growth (KiB) and the subscribers.
async fn flood(
    stalled: usize,
    env: &[(&str, &str)],
    data_bytes: usize,
) -> (u64, TestProcess, Vec<Connection>) {
    let mut all = vec![("SSEGATE_LIVE_BACKLOG", "64")];
    all.extend_from_slice(env);
    let node = spawn_process(&all).await;
    let subs = subscribe(&node, stalled).await;
    let before = node.rss_kib();
    publish_all(&node, data_bytes).await;
    let after = node.rss_kib();
    (after.saturating_sub(before), node, subs)
}

#[tokio::test]
async fn a_stalled_subscriber_keeps_memory_bounded_and_catches_up_in_order() {
    stalled_readers(&[], DATA_BYTES).await;
}

/// The same with events the hub writes directly: the sockets fill on that path (in a
/// run seen here, once part-way through an event, whose rest then went first), and every
/// frame arrives whole.
#[tokio::test]
async fn a_subscriber_stalled_on_direct_writes_gets_every_event_whole_and_in_order() {
    stalled_readers(&[], SMALL_DATA_BYTES).await;
}

#[tokio::test]
async fn over_redis_a_stalled_subscriber_keeps_memory_bounded_and_catches_up_in_order() {
    let redis = RedisServer::start(false).await;
    let url = redis.url();
    stalled_readers(&[("SSEGATE_REDIS_URL", &url)], DATA_BYTES).await;
    let len = redis.cmd(&["XLEN", "ssegate:{flood}:s"]).await;
    assert_eq!(
        len,
        redis::Value::Int(EVENTS as i64),
        "the flood is in the stream"
    );
}

async fn stalled_readers(env: &[(&str, &str)], data_bytes: usize) {
    // The same flood with and without stalled readers: history costs the same in both,
    // so the difference is what stalled readers cost. Buffering the flood for each of
    // them would cost STALLED x 20 MiB; the bound is less than what one of them would
    // cost (measured here: 1-7 MiB for all four, mostly Redis client buffers and hyper's
    // bounded write buffers).
    let (baseline, base_node, _) = flood(0, env, data_bytes).await;
    drop(base_node);
    let (with_stalled, node, mut subs) = flood(STALLED, env, data_bytes).await;
    let extra_kib = with_stalled.saturating_sub(baseline);
    let flood_kib = (EVENTS * data_bytes / 1024) as u64;
    eprintln!("stalled readers cost {extra_kib} KiB over a baseline growth of {baseline} KiB");
    assert!(
        extra_kib < flood_kib,
        "stalled readers cost {extra_kib} KiB (baseline growth {baseline} KiB, with stalled {with_stalled} KiB)"
    );

    // Now they read: every event, in order, exactly once.
    for conn in &mut subs {
        read_all(conn, None).await;
    }
    // A stalled reader's session is not polled while its socket is full, so it notices
    // that live delivery lapped it only when it writes again: count after the reading.
    let s = stats(&node).await;
    assert!(
        s["slow_consumer_catchups"].as_u64().unwrap() >= STALLED as u64,
        "the stalled readers fell behind live and were caught up from history: {s}"
    );
}

/// Readers that fall behind and catch up again and again while events keep coming: the
/// hub's direct writes and each stream's own writes (catch-up pages, the rest of a
/// partial write, live events the lane declined) take turns on the same sockets, and
/// every frame still arrives whole, in order, once.
#[tokio::test]
async fn readers_that_lag_while_events_keep_coming_get_every_event_whole_and_in_order() {
    let node = spawn_process(&[("SSEGATE_LIVE_BACKLOG", "64")]).await;
    let subs = subscribe(&node, STALLED).await;
    let readers: Vec<_> = subs
        .into_iter()
        .enumerate()
        .map(|(r, mut conn)| {
            tokio::spawn(async move { read_all(&mut conn, Some(400 + 150 * r)).await })
        })
        .collect();
    publish_all(&node, SMALL_DATA_BYTES).await;
    for reader in readers {
        reader.await.unwrap();
    }
}
