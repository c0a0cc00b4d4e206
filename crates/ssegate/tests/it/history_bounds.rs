//! Hardening of the history endpoint and of what a publisher sends (issue 12):
//!
//! - a history reply is bounded by bytes, not only by `limit` (1000 events of 64 KiB of
//!   quotes were one 132 MiB body): it ends with `has_more: true` at the byte budget, and
//!   paging with `next_after` returns every event exactly once, in order;
//! - JSON data keeps the publisher's text (numbers beyond `f64`, key order), on the stream
//!   and in history;
//! - `.` and `..` are not channel names (a normalising proxy would route
//!   `/v1/channels/../events` elsewhere).

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use ssegate_client::HttpClient;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::helpers::publish_batch;
use crate::helpers::{
    TestApp, TestProcess, events, json, spawn_app, spawn_app_with, spawn_process,
};
use crate::redis_server::RedisServer;

/// The documented byte budget of one history reply (docs/security.md, "Bounds").
const REPLY_BUDGET: usize = 1024 * 1024;
/// The default event size limit.
const MAX_EVENT: usize = 64 * 1024;

/// Data of exactly `len` bytes, nearly all `"` (each escapes to two bytes in JSON), that
/// starts with `i` so that every event is told apart.
fn quotes(i: usize, len: usize) -> String {
    let mut s = format!("{i:05}");
    s.push_str(&"\"".repeat(len - s.len()));
    s
}

async fn publish_quotes(app: &TestApp, channel: &str, n: usize, len: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        ids.push(app.publish(channel, &quotes(i, len)).await);
    }
    ids
}

/// Pages through a channel's history with `limit=1000` and returns the pages' events
/// (id, data) and body sizes, checking the page invariants on the way. `base` is the
/// node's `http://host:port`.
async fn page_through(base: &str, channel: &str) -> (Vec<(String, String)>, Vec<usize>) {
    let http = HttpClient::new();
    let mut after = "0".to_owned();
    let mut got = Vec::new();
    let mut sizes = Vec::new();
    for _ in 0..1000 {
        let res = http
            .get(&format!(
                "{base}/v1/channels/{channel}/history?after={after}&limit=1000"
            ))
            .await
            .unwrap();
        assert_eq!(res.status, StatusCode::OK, "{}", res.text());
        sizes.push(res.body.len());
        let page = json(&res.body);
        let evs = page["events"].as_array().unwrap();
        for e in evs {
            got.push((
                e["id"].as_str().unwrap().to_owned(),
                e["data"].as_str().unwrap().to_owned(),
            ));
        }
        if let Some(last) = evs.last() {
            assert_eq!(page["next_after"], last["id"], "next_after is the last id");
        }
        after = page["next_after"].as_str().unwrap().to_owned();
        match page["has_more"].as_bool() {
            Some(true) => assert!(!evs.is_empty(), "has_more on an empty page"),
            Some(false) => return (got, sizes),
            None => panic!("has_more missing: {}", page["has_more"]),
        }
    }
    panic!("paging did not end");
}

#[tokio::test]
async fn a_history_reply_is_bounded_by_bytes_and_pages_cover_everything_once() {
    let app = spawn_app().await;
    const N: usize = 40;
    let ids = publish_quotes(&app, "big", N, MAX_EVENT).await;

    // One reply: under the budget, says there is more, and holds whole events.
    let res = app
        .request(Method::GET, "/v1/channels/big/history?limit=1000", &[], "")
        .await;
    assert_eq!(res.status, StatusCode::OK);
    assert!(
        res.body.len() <= REPLY_BUDGET,
        "one reply is {} bytes, more than the budget of {REPLY_BUDGET}",
        res.body.len()
    );
    let page = json(&res.body);
    assert_eq!(page["has_more"], true);
    assert_eq!(page["channel"], "big");
    assert!(page["sync_required"].is_null());
    let first = page["events"].as_array().unwrap();
    assert!(
        !first.is_empty() && first.len() < N,
        "{} events",
        first.len()
    );
    // Reasonably full: a 64 KiB event of quotes is ~128 KiB of JSON.
    assert!(
        res.body.len() > REPLY_BUDGET / 2,
        "{} bytes",
        res.body.len()
    );

    // Paging with next_after: every event exactly once, in publish order, with its data.
    let (got, sizes) = page_through(&app.url(""), "big").await;
    assert!(sizes.iter().all(|&s| s <= REPLY_BUDGET), "{sizes:?}");
    assert!(sizes.len() > 1, "{sizes:?}");
    let got_ids: Vec<&str> = got.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(got_ids, ids.iter().map(String::as_str).collect::<Vec<_>>());
    for (i, (_, data)) in got.iter().enumerate() {
        assert_eq!(*data, quotes(i, MAX_EVENT), "event {i}");
    }

    // A small limit still applies, and small events fill a page up to the limit.
    let small = publish_quotes(&app, "small", 30, 10).await;
    let page = json(
        &app.request(Method::GET, "/v1/channels/small/history?limit=25", &[], "")
            .await
            .body,
    );
    assert_eq!(page["events"].as_array().unwrap().len(), 25);
    assert_eq!(page["has_more"], true);
    assert_eq!(page["next_after"], small[24].as_str());
    let page = json(
        &app.request(
            Method::GET,
            &format!("/v1/channels/small/history?after={}", small[24]),
            &[],
            "",
        )
        .await
        .body,
    );
    assert_eq!(page["events"].as_array().unwrap().len(), 5);
    assert_eq!(page["has_more"], false);
    assert_eq!(page["next_after"], small[29].as_str());
    app.stop().await;
}

#[tokio::test]
async fn an_event_larger_than_the_budget_comes_alone() {
    // An operator may allow events whose JSON is larger than the reply budget: each reply
    // then carries one of them, so paging still makes progress.
    let big = 600 * 1024;
    let app = spawn_app_with(|s| {
        s.max_event_size = big;
        s.max_body_size = 4 * big;
    })
    .await;
    let ids = publish_quotes(&app, "huge", 3, big).await;
    let (got, sizes) = page_through(&app.url(""), "huge").await;
    assert_eq!(sizes.len(), 3, "one event per reply: {sizes:?}");
    for &s in &sizes {
        assert!(s <= 2 * big + 1024, "{s} bytes: one event and the envelope");
    }
    let got_ids: Vec<&str> = got.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(got_ids, ids.iter().map(String::as_str).collect::<Vec<_>>());
    app.stop().await;
}

#[tokio::test]
async fn history_from_redis_is_bounded_and_keeps_json_text() {
    let redis = RedisServer::start(false).await;
    let node = spawn_process(&[("SSEGATE_REDIS_URL", &redis.url())]).await;
    publish_quotes_to(&node, "big", 40).await;
    let (got, sizes) = page_through(&node.url(""), "big").await;
    assert!(
        sizes.len() > 1 && sizes.iter().all(|&s| s <= REPLY_BUDGET),
        "{sizes:?}"
    );
    let data: Vec<&str> = got.iter().map(|(_, d)| d.as_str()).collect();
    let want: Vec<String> = (0..40).map(|i| quotes(i, MAX_EVENT)).collect();
    assert_eq!(data, want.iter().map(String::as_str).collect::<Vec<_>>());

    // JSON data through the Redis store: the text comes back as it was published.
    let compact = r#"{"z":[1E2,-0.0],"big":123456789012345678901234567890}"#;
    let http = HttpClient::new();
    let res = http
        .post(
            &node.url("/v1/channels/num/events"),
            "application/json",
            Bytes::from(format!(r#"{{"data": {compact}}}"#)),
        )
        .await
        .unwrap();
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text());
    let res = http
        .get(&node.url("/v1/channels/num/history"))
        .await
        .unwrap();
    assert!(
        res.text().contains(&format!(r#""data":{compact}"#)),
        "{}",
        res.text()
    );
}

async fn publish_quotes_to(node: &TestProcess, channel: &str, n: usize) {
    // Batches of 7: 7 x ~128 KiB of JSON stays under the 1 MiB body limit.
    for start in (0..n).step_by(7) {
        let events: Vec<_> = (start..n.min(start + 7))
            .map(|i| serde_json::json!({"channel": channel, "data": quotes(i, MAX_EVENT)}))
            .collect();
        publish_batch(node, events).await;
    }
}

/// Waits until the process's RSS has not changed by more than 1 MiB for a second.
async fn settled_rss(node: &TestProcess) -> u64 {
    let mut last = node.rss_kib();
    let mut stable = 0;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = node.rss_kib();
        if now.abs_diff(last) < 1024 {
            stable += 1;
            if stable == 4 {
                return now;
            }
        } else {
            stable = 0;
        }
        last = now;
    }
    last
}

/// The process's peak resident memory in KiB.
fn peak_rss_kib(node: &TestProcess) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", node.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn unread_history_replies_pin_one_budget_each() {
    const EVENTS: usize = 200;
    const REQUESTS: usize = 20;
    let node = spawn_process(&[]).await;
    publish_quotes_to(&node, "big", EVENTS).await;
    let before = settled_rss(&node).await;
    // Clients that ask for everything and never read a byte of the answer.
    let mut socks = Vec::new();
    for _ in 0..REQUESTS {
        let mut s = TcpStream::connect(node.addr).await.unwrap();
        s.write_all(b"GET /v1/channels/big/history?limit=1000 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        socks.push(s);
    }
    let after = settled_rss(&node).await;
    let grown = after.saturating_sub(before);
    let per_request = grown / REQUESTS as u64;
    eprintln!(
        "history_bounds: RSS {before} KiB -> {after} KiB (peak {} KiB): {grown} KiB for \
         {REQUESTS} unread history replies ({per_request} KiB each)",
        peak_rss_kib(&node)
    );
    // The budget is 1 MiB per reply (much of which the socket buffers take); allow for
    // allocator slack. One reply of all 200 events was ~25 MiB.
    assert!(
        per_request < 3 * 1024,
        "each unread history reply grew the node by {per_request} KiB ({grown} KiB for {REQUESTS})"
    );
    drop(socks);
}

#[tokio::test]
async fn json_data_keeps_the_publishers_text() {
    let app = spawn_app().await;
    let mut conn = app.stream("/v1/channels/num/events", None).await;
    // Whitespace outside strings goes; everything else is kept as written: numbers
    // beyond f64 and i64, the way a number is written, key order, escapes in strings.
    let published = r#"{ "data" : {"z": 1, "big": 123456789012345678901234567890,
        "neg": -98765432109876543210, "f": 1.10, "e": 1E2, "tiny": 1e-400,
        "s": "a  b\u0041", "arr": [ 1 , 2 ] } }"#;
    let compact = r#"{"z":1,"big":123456789012345678901234567890,"neg":-98765432109876543210,"f":1.10,"e":1E2,"tiny":1e-400,"s":"a  b\u0041","arr":[1,2]}"#;
    let res = app
        .request(
            Method::POST,
            "/v1/channels/num/events",
            &[("content-type", "application/json")],
            published,
        )
        .await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text());
    // The same through a batch.
    let batch = format!(r#"{{"events": [{{"channel": "num", "data": {compact}}}]}}"#);
    let res = app
        .request(
            Method::POST,
            "/v1/publish",
            &[("content-type", "application/json")],
            &batch,
        )
        .await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text());

    let got = events(&mut conn, 2).await;
    assert_eq!(got[0].data, compact);
    assert_eq!(got[1].data, compact);

    // History embeds the same text as the value of "data".
    let res = app
        .request(Method::GET, "/v1/channels/num/history", &[], "")
        .await;
    assert_eq!(res.status, StatusCode::OK);
    let body = res.text();
    assert_eq!(
        body.matches(&format!(r#""data":{compact}"#)).count(),
        2,
        "{body}"
    );
    json(&res.body);

    // Still refused: invalid JSON, and a lone surrogate (not Unicode text).
    for bad in [
        r#"{"data": [1,]}"#,
        r#"{"data": {"s": "\ud800"}}"#,
        r#"{"data": "\udc00"}"#,
    ] {
        let res = app
            .request(
                Method::POST,
                "/v1/channels/num/events",
                &[("content-type", "application/json")],
                bad,
            )
            .await;
        assert_eq!(res.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(json(&res.body)["error"]["code"], "invalid_json", "{bad}");
    }
    app.stop().await;
}

#[tokio::test]
async fn dot_segments_are_not_channel_names() {
    let app = spawn_app().await;
    let ct = [("content-type", "application/json")];
    let data = r#"{"data": "x"}"#;
    let cases: Vec<(Method, String, &str)> = vec![
        (Method::POST, "/v1/channels/../events".into(), data),
        (Method::POST, "/v1/channels/./events".into(), data),
        (Method::POST, "/v1/channels/%2e%2E/events".into(), data),
        (Method::GET, "/v1/channels/../history".into(), ""),
        (Method::GET, "/v1/channels/%2E/history".into(), ""),
        (Method::GET, "/v1/channels/../events".into(), ""),
        (Method::GET, "/v1/events?channel=..".into(), ""),
        (Method::GET, "/v1/events?channels=a,.".into(), ""),
        (
            Method::POST,
            "/v1/publish".into(),
            r#"{"events": [{"channel": "..", "data": "x"}]}"#,
        ),
    ];
    for (method, path, body) in cases {
        let res = app.request(method.clone(), &path, &ct, body).await;
        assert_eq!(res.status, StatusCode::BAD_REQUEST, "{method} {path}");
        assert_eq!(
            json(&res.body)["error"]["code"],
            "invalid_channel",
            "{method} {path}"
        );
    }
    // Dots elsewhere are fine, and event types keep the whole alphabet.
    for name in ["...", ".a", "a..b", "a."] {
        let res = app
            .request(
                Method::POST,
                &format!("/v1/channels/{name}/events"),
                &ct,
                r#"{"data": "x", "event": ".."}"#,
            )
            .await;
        assert_eq!(res.status, StatusCode::CREATED, "{name}: {}", res.text());
    }
    app.stop().await;
}
