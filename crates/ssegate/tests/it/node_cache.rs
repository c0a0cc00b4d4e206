//! The node's recent events: a resume that the events this node received live can answer
//! is answered without the store (see the hub's `recent`).
//!
//! Proven the way a client would notice: with Redis frozen (`SIGSTOP`), a stream that
//! resumes from an event this node delivered live still gets what followed it, and a
//! fresh stream opens where an earlier fresh stream's read found the channel (its head);
//! once Redis is back, they go on live with nothing lost or repeated.

use std::time::Duration;

use http::StatusCode;
use ssegate_client::HttpClient;

use crate::cluster::{cluster, publish, stream};
use crate::helpers::{WAIT, events, opening_id, sync_reasons_then_event};
use crate::redis_server::{RedisServer, query};
use ssegate_client::Connection;

/// Waits until Redis counts a subscriber of `channel`'s live messages: from then on every
/// publish reaches the node live, after its subscription's resync.
async fn subscribed(redis: &RedisServer, channel: &str) {
    let key = format!("ssegate:{{{channel}}}:live");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let counts: Vec<redis::Value> = query(redis.port, &["PUBSUB", "NUMSUB", &key])
            .await
            .unwrap();
        if matches!(counts.get(1), Some(redis::Value::Int(n)) if *n > 0) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "never subscribed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn resumes_and_fresh_streams_are_served_from_what_the_node_received_live() {
    let redis = RedisServer::start(false).await;
    let nodes = cluster(&redis, 1, &[]).await;
    let node = &nodes[0];
    let http = HttpClient::new();
    let path = "/v1/channels/warm/events";
    let mut live = stream(node, path, None).await;
    subscribed(&redis, "warm").await;
    let mut ids = Vec::new();
    for i in 1..=3 {
        let (status, id) = publish(&http, node, "warm", &format!("e{i}")).await;
        assert_eq!(status, StatusCode::CREATED, "{id}");
        ids.push(id);
    }
    let got = events(&mut live, 3).await;
    assert_eq!(
        got.iter().map(|e| &e.id).collect::<Vec<_>>(),
        ids.iter().collect::<Vec<_>>()
    );

    redis.signal("STOP");
    let mut resumed = stream(node, path, Some(&ids[0])).await;
    // Bounded as a whole: with the store frozen, heartbeats would keep a wait for the
    // next item alive for ever.
    let replayed = tokio::time::timeout(WAIT, events(&mut resumed, 2)).await;
    let mut at_newest = stream(node, path, Some(&ids[2])).await;
    redis.signal("CONT");
    let replayed = replayed.expect("the resume was served with the store frozen");
    assert_eq!(
        replayed
            .iter()
            .map(|e| (e.id.as_str(), e.data.as_str()))
            .collect::<Vec<_>>(),
        [(ids[1].as_str(), "e2"), (ids[2].as_str(), "e3")],
        "what followed the cursor, with the store frozen"
    );

    let (status, id) = publish(&http, node, "warm", "e4").await;
    assert_eq!(status, StatusCode::CREATED, "{id}");
    for conn in [&mut live, &mut resumed, &mut at_newest] {
        let next = events(conn, 1).await.remove(0);
        assert_eq!((next.id.as_str(), next.data.as_str()), (id.as_str(), "e4"));
    }
}

/// Makes `channel`'s head known: a first fresh stream receives an event (`id`) live, and
/// a second, opening after it, reads it as where the channel stands.
async fn warm(
    node: &crate::helpers::TestProcess,
    http: &HttpClient,
    redis: &RedisServer,
    channel: &str,
) -> (Connection, Connection, String) {
    let path = format!("/v1/channels/{channel}/events");
    let mut first = stream(node, &path, None).await;
    subscribed(redis, channel).await;
    // Delivered live after the subscription's resync (one task does both, in order): a
    // read from now on is issued under the channel's current generation.
    let (status, id) = publish(http, node, channel, "warm").await;
    assert_eq!(status, StatusCode::CREATED, "{id}");
    assert_eq!(events(&mut first, 1).await[0].id, id);
    let mut second = stream(node, &path, None).await;
    assert_eq!(opening_id(&mut second).await, id, "read from the store");
    (first, second, id)
}

/// Once one fresh stream has read where a channel stands, the next ones start there
/// without the store, and miss nothing published after their heads.
#[tokio::test]
async fn fresh_streams_after_the_first_start_without_the_store() {
    let redis = RedisServer::start(false).await;
    let nodes = cluster(&redis, 1, &[]).await;
    let node = &nodes[0];
    let http = HttpClient::new();
    let path = "/v1/channels/known/events";
    let (mut first, mut second, e1) = warm(node, &http, &redis, "known").await;

    redis.signal("STOP");
    let opened = tokio::time::timeout(WAIT, stream(node, path, None)).await;
    redis.signal("CONT");
    let mut third = opened.expect("a fresh stream opened with the store frozen");
    assert_eq!(
        opening_id(&mut third).await,
        e1,
        "where the second read it stands"
    );

    let (status, e2) = publish(&http, node, "known", "e2").await;
    assert_eq!(status, StatusCode::CREATED, "{e2}");
    for conn in [&mut first, &mut second, &mut third] {
        let next = events(conn, 1).await.remove(0);
        assert_eq!((next.id.as_str(), next.data.as_str()), (e2.as_str(), "e2"));
    }
    // e2 is past that read: the next fresh stream reads again, and starts at e2.
    let mut fourth = stream(node, path, None).await;
    assert_eq!(opening_id(&mut fourth).await, e2);
}

/// A `FLUSHALL` with the pub/sub connection up starts a new epoch under a quiet channel's
/// head: a fresh stream starts in the store's new epoch, also beside a channel already in
/// it (a head of the old epoch would make the channels' positions disagree).
#[tokio::test]
async fn a_head_of_an_epoch_the_store_has_left_is_not_used() {
    let redis = RedisServer::start(false).await;
    let nodes = cluster(&redis, 1, &[]).await;
    let node = &nodes[0];
    let http = HttpClient::new();
    let (_qa, _qa_second, warmed) = warm(node, &http, &redis, "qa").await;
    // The store of the new epoch never had this entry: no stream may start there.
    let old_entry = warmed.split_once('-').unwrap().1.to_owned();
    let mut qb = stream(node, "/v1/channels/qb/events", None).await;
    subscribed(&redis, "qb").await;
    redis.cmd(&["FLUSHALL"]).await;
    let (status, b1) = publish(&http, node, "qb", "b1").await;
    assert_eq!(status, StatusCode::CREATED, "{b1}");
    let (_, event) = sync_reasons_then_event(&mut qb).await;
    assert_eq!(event.id, b1);
    let epoch = b1.split_once('-').unwrap().0;

    let mut both = stream(node, "/v1/events?channels=qa,qb", None).await;
    let id = opening_id(&mut both).await;
    assert!(
        id.starts_with(epoch),
        "opened in the store's epoch {epoch}: {id}"
    );
    assert!(
        !id.contains(&old_entry),
        "not at the old epoch's head: {id}"
    );
    let mut qa = stream(node, "/v1/channels/qa/events", None).await;
    let id = opening_id(&mut qa).await;
    assert!(id.starts_with(&format!("{epoch}-")), "{id}");
    assert!(
        !id.contains(&old_entry),
        "not at the old epoch's head: {id}"
    );
}

/// A head serves fresh streams for a moment, not for ever: once the store's keys are gone
/// under a quiet channel (expired), a fresh stream reads again and starts where the store
/// stands, and is told of no gap before its own head.
#[tokio::test]
async fn a_head_older_than_its_age_is_read_again() {
    let redis = RedisServer::start(false).await;
    let nodes = cluster(&redis, 1, &[]).await;
    let node = &nodes[0];
    let http = HttpClient::new();
    let (_first, _second, _) = warm(node, &http, &redis, "aged").await;
    redis
        .cmd(&["DEL", "ssegate:{aged}:s", "ssegate:{aged}:m"])
        .await;
    // The head's age is the rule under test: nothing to await but the clock.
    tokio::time::sleep(ssegate_broker::hub::HEAD_MAX_AGE + Duration::from_millis(100)).await;
    let mut fresh = stream(node, "/v1/channels/aged/events", None).await;
    let _ = opening_id(&mut fresh).await;
    let (status, next) = publish(&http, node, "aged", "next").await;
    assert_eq!(status, StatusCode::CREATED, "{next}");
    let (reasons, event) = sync_reasons_then_event(&mut fresh).await;
    assert!(
        reasons.is_empty(),
        "no gap before its own head: {reasons:?}"
    );
    assert_eq!(
        (event.id.as_str(), event.data.as_str()),
        (next.as_str(), "next")
    );
}
