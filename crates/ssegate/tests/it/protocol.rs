//! The wire: HTTP/1.1 and h2c on one port, the opening frame, heartbeats.

use std::time::Duration;

use http::{StatusCode, Version};
use ssegate_client::{ConnectOptions, Connection, HttpClient, Item, Protocol};

use crate::helpers::{events, json, next_item, opening_id, spawn_app, spawn_app_with};

#[tokio::test]
async fn http1_stream_sends_headers_and_the_opening_frame_at_once() {
    let app = spawn_app().await;
    // Nothing is published: the headers and the first frame must still arrive.
    let mut conn = Connection::open(
        &app.url("/v1/channels/quiet/events"),
        &ConnectOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(conn.version(), Version::HTTP_11);
    assert_eq!(conn.status(), StatusCode::OK);
    let raw = tokio::time::timeout(crate::helpers::WAIT, conn.next_raw())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let text = String::from_utf8(raw.to_vec()).unwrap();
    let lines: Vec<&str> = text.split('\n').collect();
    assert!(lines[0].starts_with("retry: "), "{text:?}");
    let retry: u64 = lines[0]["retry: ".len()..].parse().unwrap();
    assert!(
        (100..150).contains(&retry),
        "base 100ms plus jitter below 50ms: {retry}"
    );
    assert!(lines[1].starts_with("id: "), "{text:?}");
    assert_eq!(&lines[2..], ["", ""], "one id-only event: {text:?}");
    app.stop().await;
}

#[tokio::test]
async fn the_retry_value_is_jittered() {
    let app = spawn_app_with(|s| s.retry_jitter = Duration::from_secs(10)).await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..8 {
        let mut conn = app.stream("/v1/channels/j/events", None).await;
        opening_id(&mut conn).await;
        seen.insert(conn.retry_ms().unwrap());
    }
    assert!(
        seen.len() > 1,
        "eight connections, one retry value: {seen:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn h2c_streams_and_publishes_on_the_same_port() {
    let app = spawn_app().await;
    let opts = ConnectOptions {
        protocol: Protocol::Http2,
        ..ConnectOptions::default()
    };
    let mut conn = Connection::open(&app.url("/v1/channels/h2/events"), &opts)
        .await
        .unwrap();
    assert_eq!(conn.version(), Version::HTTP_2);
    assert_eq!(conn.status(), StatusCode::OK);
    assert_eq!(conn.headers()["content-type"], "text/event-stream");
    let h2 = HttpClient::http2_only();
    let res = h2
        .post(
            &app.url("/v1/channels/h2/events"),
            "application/json",
            r#"{"data":"over h2"}"#,
        )
        .await
        .unwrap();
    assert_eq!(res.status, StatusCode::CREATED);
    let id = json(&res.body)["id"].as_str().unwrap().to_owned();
    let got = events(&mut conn, 1).await;
    assert_eq!(
        (got[0].id.as_str(), got[0].data.as_str()),
        (id.as_str(), "over h2")
    );
    // Many streams share one h2 connection's worth of server: open a second one too.
    let mut second = Connection::open(&app.url("/v1/events?channels=h2,other"), &opts)
        .await
        .unwrap();
    assert_eq!(second.status(), StatusCode::OK);
    app.publish("h2", "both").await;
    assert_eq!(events(&mut conn, 1).await[0].data, "both");
    assert_eq!(events(&mut second, 1).await[0].data, "both");
    app.stop().await;
}

#[tokio::test]
async fn idle_streams_get_comment_heartbeats() {
    let app = spawn_app_with(|s| s.heartbeat_interval = Duration::from_millis(150)).await;
    let mut conn = app.stream("/v1/channels/hb/events", None).await;
    opening_id(&mut conn).await;
    let mut beats = 0;
    while beats < 3 {
        match next_item(&mut conn).await {
            Some(Item::Comment(c)) => {
                assert_eq!(c.trim(), "hb");
                beats += 1;
            }
            other => panic!("only heartbeats expected on an idle stream, got {other:?}"),
        }
    }
    app.stop().await;
}
