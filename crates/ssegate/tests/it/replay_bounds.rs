//! A resuming stream whose client never reads pins one bounded replay chunk, not a page
//! sized by event count (256 events of 64 KiB were 16 MiB per stream).

use std::time::Duration;

use http::StatusCode;
use ssegate_client::HttpClient;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::helpers::publish_batch;
use crate::helpers::{TestProcess, WAIT, json, spawn_process};

const EVENTS: usize = 600;
const DATA: usize = 60_000;
const STREAMS: usize = 40;

/// `EVENTS` events of `DATA` bytes on channel `big`.
pub async fn publish_big(node: &TestProcess) {
    let data = "x".repeat(DATA);
    for batch in 0..EVENTS / 15 {
        let events: Vec<_> = (0..15)
            .map(|i| serde_json::json!({"channel": "big", "data": format!("{batch}-{i} {data}")}))
            .collect();
        publish_batch(node, events).await;
    }
}

/// Waits until `streams` streams are open and the node has stopped writing (the sockets'
/// buffers are full and every session holds what it could not write).
pub async fn settled(node: &TestProcess, streams: u64) {
    let admin = node.admin.unwrap();
    let http = HttpClient::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut last = None;
    loop {
        let res = http.get(&format!("http://{admin}/v1/stats")).await.unwrap();
        assert_eq!(res.status, StatusCode::OK);
        let s = json(&res.body);
        let now = (s["streams"].as_u64(), s["deliveries"].as_u64());
        if now.0 == Some(streams) && last == Some(now) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "stats: {s}");
        last = Some(now);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn unread_resuming_streams_pin_one_bounded_chunk_each() {
    let node = spawn_process(&[]).await;
    publish_big(&node).await;
    let before = node.rss_kib();
    // Streams that ask for everything retained and never read a byte.
    let mut socks = Vec::new();
    for _ in 0..STREAMS {
        let mut s = TcpStream::connect(node.addr).await.unwrap();
        s.write_all(b"GET /v1/channels/big/events?lastEventId=0 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        socks.push(s);
    }
    settled(&node, STREAMS as u64).await;
    let grown = node.rss_kib().saturating_sub(before);
    let per_stream = grown / STREAMS as u64;
    // The budget is 128 KiB plus one event; allow for allocator slack and the stream's
    // own state. A page sized by count alone was ~16 MiB per stream.
    assert!(
        per_stream < 1024,
        "each unread resuming stream grew the node by {per_stream} KiB ({grown} KiB for {STREAMS})"
    );
    drop(socks);
}
