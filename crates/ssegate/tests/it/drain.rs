//! Graceful shutdown: readiness drops, new subscribers are told to retry, open streams
//! end with a `retry:` spread over the drain window, and the process exits cleanly.

use std::time::Duration;

use http::StatusCode;
use ssegate_client::{ConnectOptions, Connection, HttpClient, Item};

use crate::helpers::{WAIT, next_item, opening_id, spawn_process};

/// Reads a stream to its end and returns the last `retry:` value seen after the opening.
async fn read_to_end(conn: &mut Connection) -> Option<u64> {
    let mut last_retry = None;
    while let Some(item) = next_item(conn).await {
        if let Item::Retry(ms) = item {
            last_retry = Some(ms);
        }
    }
    last_retry
}

#[tokio::test]
async fn sigterm_drains_streams_and_exits() {
    let mut node = spawn_process(&[
        ("SSEGATE_DRAIN_WINDOW", "2s"),
        ("SSEGATE_RETRY", "1s"),
        ("SSEGATE_RETRY_JITTER", "500ms"),
    ])
    .await;
    let http = HttpClient::new();
    let mut streams = Vec::new();
    for i in 0..4 {
        let url = node.url(&format!("/v1/channels/d{i}/events"));
        let conn = Connection::open(&url, &ConnectOptions::default())
            .await
            .unwrap();
        streams.push(conn);
    }
    let ready = http.get(&node.url("/readyz")).await.unwrap();
    assert_eq!(ready.status, StatusCode::OK);

    node.signal("TERM");
    // Readiness drops as soon as the signal is handled; poll it (bounded) to see it.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let res = http.get(&node.url("/readyz")).await.unwrap();
        if res.status == StatusCode::SERVICE_UNAVAILABLE {
            assert!(res.text().contains("\"draining\":true"));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "readyz never turned 503"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A new subscriber during the drain gets a 200 stream with only a retry.
    let mut late = Connection::open(
        &node.url("/v1/channels/late/events"),
        &ConnectOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(late.status(), StatusCode::OK);
    assert!(matches!(next_item(&mut late).await, Some(Item::Retry(_))));
    assert!(next_item(&mut late).await.is_none(), "and ends");
    // Every open stream ends after a jittered retry. The signal came right after the
    // heads; only now is each opening frame read, so that the retry below is the drain's.
    for conn in &mut streams {
        opening_id(conn).await;
        let retry = read_to_end(conn).await.expect("a retry before the end");
        assert!((1000..1500).contains(&retry), "{retry}");
    }
    let status = node.wait_exit().await;
    assert!(status.success(), "{status:?}\n{}", node.stderr());
}

#[tokio::test]
async fn sigint_with_no_streams_exits_at_once() {
    let mut node = spawn_process(&[("SSEGATE_DRAIN_WINDOW", "30s")]).await;
    node.signal("INT");
    // With nothing to drain, the node does not sit out its 30 s window.
    let status = node.wait_exit().await;
    assert!(status.success());
}
