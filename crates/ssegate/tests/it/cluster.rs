//! Cluster mode: real gateway processes on one real Redis. Each case is written once
//! against a [`Store`] and run here on one Redis, and in `redis_cluster` on a Redis
//! Cluster (the conformance suite).

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use ssegate_client::{ConnectOptions, Connection, EventSource, HttpClient, Item, SourceItem};
use tokio::task::JoinSet;

use crate::helpers::{TestProcess, WAIT, events, json, next_item, opening_id, spawn_process};
use crate::redis_cluster::RedisCluster;
use crate::redis_server::RedisServer;

/// `n` gateway processes on `redis`, with extra settings.
pub async fn cluster(redis: &RedisServer, n: usize, env: &[(&str, &str)]) -> Vec<TestProcess> {
    nodes_on(("SSEGATE_REDIS_URL", &redis.url()), n, env).await
}

/// What the gateways share: one Redis, or a Redis Cluster.
#[allow(clippy::large_enum_variant)] // one per test: its size does not matter
pub enum Store {
    One(RedisServer),
    Cluster(RedisCluster),
}

impl Store {
    pub async fn one() -> Self {
        Self::One(RedisServer::start(false).await)
    }

    pub async fn cluster() -> Self {
        Self::Cluster(RedisCluster::start().await)
    }

    /// `n` gateway processes on this store.
    pub async fn nodes(&self, n: usize, env: &[(&str, &str)]) -> Vec<TestProcess> {
        match self {
            Self::One(redis) => cluster(redis, n, env).await,
            Self::Cluster(c) => nodes_on(("SSEGATE_REDIS_CLUSTER", &c.seeds()), n, env).await,
        }
    }
}

/// `n` gateway processes, node1..nodeN, on the Redis that `redis` (a setting and its
/// value) names, with extra settings.
pub async fn nodes_on(redis: (&str, &str), n: usize, env: &[(&str, &str)]) -> Vec<TestProcess> {
    let mut nodes = Vec::new();
    for i in 0..n {
        let id = format!("node{}", i + 1);
        let mut all = vec![
            redis,
            ("SSEGATE_NODE_ID", id.as_str()),
            ("SSEGATE_RETRY", "100ms"),
            ("SSEGATE_RETRY_JITTER", "100ms"),
            ("SSEGATE_DRAIN_WINDOW", "1s"),
        ];
        all.extend_from_slice(env);
        nodes.push(spawn_process(&all).await);
    }
    nodes
}

pub async fn publish(
    http: &HttpClient,
    node: &TestProcess,
    channel: &str,
    data: &str,
) -> (StatusCode, String) {
    let body = serde_json::json!({ "data": data }).to_string();
    match http
        .post(
            &node.url(&format!("/v1/channels/{channel}/events")),
            "application/json",
            Bytes::from(body),
        )
        .await
    {
        Ok(res) if res.status == StatusCode::CREATED => (
            res.status,
            json(&res.body)["id"].as_str().unwrap().to_owned(),
        ),
        Ok(res) => (res.status, res.text()),
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()),
    }
}

pub async fn stream(node: &TestProcess, path: &str, last_id: Option<&str>) -> Connection {
    let opts = ConnectOptions {
        last_event_id: last_id.map(str::to_owned),
        ..ConnectOptions::default()
    };
    let conn = Connection::open(&node.url(path), &opts).await.unwrap();
    assert_eq!(conn.status(), StatusCode::OK);
    conn
}

#[tokio::test]
async fn three_nodes_deliver_across_nodes() {
    deliver_across_nodes(&Store::one().await).await;
}

pub async fn deliver_across_nodes(store: &Store) {
    let nodes = store.nodes(3, &[]).await;
    let http = HttpClient::new();
    let ready = json(&http.get(&nodes[1].url("/readyz")).await.unwrap().body);
    assert_eq!(
        (ready["node_id"].as_str(), ready["broker"].as_str()),
        (Some("node2"), Some("redis"))
    );
    let mut on_b = stream(&nodes[1], "/v1/channels/x/events", None).await;
    let mut on_c = stream(&nodes[2], "/v1/events?channels=x,y", None).await;
    let (status, id) = publish(&http, &nodes[0], "x", "from A").await;
    assert_eq!(status, StatusCode::CREATED);
    let b = events(&mut on_b, 1).await;
    let c = events(&mut on_c, 1).await;
    assert_eq!(
        (b[0].id.as_str(), b[0].data.as_str()),
        (id.as_str(), "from A")
    );
    assert_eq!(c[0].data, "from A");
    // History is the same from every node.
    let h = json(
        &http
            .get(&nodes[2].url("/v1/channels/x/history"))
            .await
            .unwrap()
            .body,
    );
    assert_eq!(h["events"][0]["id"], id.as_str());
}

/// 50 subscribers read through node A while a publisher sends numbered events through B
/// and C; A is stopped with `signal`. Every subscriber must end with every event exactly
/// once, in order.
pub async fn failover(store: &Store, signal: &str) {
    const SUBSCRIBERS: usize = 50;
    const EVENTS: usize = 600; // 3 s at 200 events/s
    let mut nodes = store.nodes(3, &[]).await;
    let urls: Vec<String> = nodes
        .iter()
        .map(|n| n.url("/v1/channels/feed/events"))
        .collect();

    let mut subs = JoinSet::new();
    let (opened_tx, mut opened_rx) = tokio::sync::mpsc::channel::<()>(SUBSCRIBERS);
    for _ in 0..SUBSCRIBERS {
        let urls = urls.clone();
        let opened = opened_tx.clone();
        subs.spawn(async move {
            // Starts on A; a reconnect goes round-robin to B, then C.
            let mut source = EventSource::new(urls, ConnectOptions::default())
                .with_retry_override(Some(Duration::from_millis(50)));
            let mut got: Vec<usize> = Vec::with_capacity(EVENTS);
            let mut opened_once = false;
            while got.len() < EVENTS {
                match tokio::time::timeout(WAIT, source.next())
                    .await
                    .expect("subscriber stalled")
                {
                    // The head (`open`), not the id-only frame: what a browser reports.
                    Ok(SourceItem::Open { .. }) if !opened_once => {
                        opened_once = true;
                        let _ = opened.send(()).await;
                    }
                    Ok(SourceItem::Item(Item::Event(e))) => {
                        assert_ne!(e.event, "sync-required", "no gap expected");
                        got.push(e.data.parse().unwrap());
                    }
                    Ok(_) => {}
                    Err(e) => panic!("subscriber failed: {e}"),
                }
            }
            (got, source.reconnects())
        });
    }
    for _ in 0..SUBSCRIBERS {
        opened_rx.recv().await.unwrap();
    }

    let publisher_nodes = [nodes[1].url(""), nodes[2].url("")];
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0usize);
    let publisher = tokio::spawn(async move {
        let http = HttpClient::new();
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        for i in 0..EVENTS {
            tick.tick().await;
            let base = &publisher_nodes[i % 2];
            let url = format!("{base}/v1/channels/feed/events");
            let body = Bytes::from(format!("{{\"data\":\"{i}\"}}"));
            let res = http.post(&url, "application/json", body).await.unwrap();
            assert_eq!(res.status, StatusCode::CREATED, "{}", res.text());
            progress_tx.send_replace(i + 1);
        }
    });

    // Let a third of the events flow through A, then take it down mid-stream.
    progress.wait_for(|&n| n >= EVENTS / 3).await.unwrap();
    nodes[0].signal(signal);
    publisher.await.unwrap();
    let mut reconnected = 0;
    while let Some(res) = subs.join_next().await {
        let (got, reconnects) = res.unwrap();
        let want: Vec<usize> = (0..EVENTS).collect();
        assert_eq!(got, want, "every event exactly once, in order");
        reconnected += usize::from(reconnects > 0);
    }
    assert_eq!(
        reconnected, SUBSCRIBERS,
        "every subscriber moved off node A"
    );
    let status = nodes[0].wait_exit().await;
    if signal == "TERM" {
        assert!(status.success(), "{}", nodes[0].stderr());
    }
}

#[tokio::test]
async fn failover_after_sigkill_loses_and_repeats_nothing() {
    failover(&Store::one().await, "KILL").await;
}

#[tokio::test]
async fn failover_after_sigterm_drain_loses_and_repeats_nothing() {
    failover(&Store::one().await, "TERM").await;
}

#[tokio::test]
async fn a_trimmed_cursor_gets_sync_required_on_any_node() {
    trimmed_cursor(&Store::one().await).await;
}

pub async fn trimmed_cursor(store: &Store) {
    let nodes = store.nodes(3, &[("SSEGATE_HISTORY_MAX_LEN", "5")]).await;
    let http = HttpClient::new();
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(publish(&http, &nodes[0], "t", &format!("m{i}")).await.1);
    }
    for node in &nodes[1..] {
        let mut conn = stream(node, "/v1/channels/t/events", Some(&ids[0])).await;
        let mut sync = None;
        let first = loop {
            match next_item(&mut conn).await {
                Some(Item::Event(e)) if e.event == "sync-required" => sync = Some(e),
                Some(Item::Event(e)) => break e,
                Some(_) => {}
                None => panic!("ended"),
            }
        };
        let sync = sync.expect("a gap is never silent");
        assert_eq!(json(sync.data.as_bytes())["reason"], "history_trimmed");
        assert_eq!(first.data, "m5");
        // Resuming from the signal's id is clean, on yet another node.
        let mut again = stream(&nodes[0], "/v1/channels/t/events", Some(&sync.id)).await;
        let e = events(&mut again, 1).await;
        assert_eq!((e[0].event.as_str(), e[0].data.as_str()), ("message", "m5"));
    }
}

#[tokio::test]
async fn a_multi_channel_subscriber_resumes_on_another_node() {
    multi_channel_resume(&Store::one().await).await;
}

pub async fn multi_channel_resume(store: &Store) {
    let nodes = store.nodes(2, &[]).await;
    let http = HttpClient::new();
    let path = "/v1/events?channels=p,q";
    let mut on_a = stream(&nodes[0], path, None).await;
    publish(&http, &nodes[0], "p", "p0").await;
    publish(&http, &nodes[1], "q", "q0").await;
    let seen = events(&mut on_a, 2).await;
    drop(on_a);
    for i in 1..=3 {
        publish(&http, &nodes[0], "p", &format!("p{i}")).await;
        publish(&http, &nodes[1], "q", &format!("q{i}")).await;
    }
    let mut on_b = stream(&nodes[1], path, Some(&seen[1].id)).await;
    let got = events(&mut on_b, 6).await;
    let p: Vec<&str> = got
        .iter()
        .filter(|e| e.data.starts_with('p'))
        .map(|e| e.data.as_str())
        .collect();
    let q: Vec<&str> = got
        .iter()
        .filter(|e| e.data.starts_with('q'))
        .map(|e| e.data.as_str())
        .collect();
    assert_eq!(q, ["q1", "q2", "q3"]);
    assert_eq!(p, ["p1", "p2", "p3"]);
    // And live continues on the new node.
    publish(&http, &nodes[0], "q", "q4").await;
    assert_eq!(events(&mut on_b, 1).await[0].data, "q4");
}

#[tokio::test]
async fn the_same_idempotency_key_on_two_nodes_publishes_once() {
    idempotency_across_nodes(&Store::one().await).await;
}

pub async fn idempotency_across_nodes(store: &Store) {
    let nodes = store.nodes(2, &[]).await;
    let http = HttpClient::new();
    let mut ids = Vec::new();
    for node in &nodes {
        let res = http
            .request(
                http::Method::POST,
                &node.url("/v1/channels/pay/events"),
                &[
                    ("content-type", "application/json"),
                    ("idempotency-key", "charge-7"),
                ],
                Bytes::from_static(br#"{"data":"charge"}"#),
            )
            .await
            .unwrap();
        assert_eq!(res.status, StatusCode::CREATED);
        ids.push(json(&res.body)["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids[0], ids[1]);
    let h = json(
        &http
            .get(&nodes[1].url("/v1/channels/pay/history"))
            .await
            .unwrap()
            .body,
    );
    assert_eq!(h["events"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn expired_events_are_a_gap_only_past_the_cursor() {
    expired_events(&Store::one().await).await;
}

pub async fn expired_events(store: &Store) {
    let nodes = store.nodes(2, &[("SSEGATE_HISTORY_MAX_AGE", "1s")]).await;
    let http = HttpClient::new();
    let mut conn = stream(&nodes[0], "/v1/channels/age/events", None).await;
    let before = opening_id(&mut conn).await;
    drop(conn);
    let (_, old) = publish(&http, &nodes[0], "age", "old").await;
    // Age is the point of this test: let the first event expire.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    publish(&http, &nodes[0], "age", "new").await;
    // A cursor from before the expired event missed it: told so, then the new one.
    let mut conn = stream(&nodes[1], "/v1/channels/age/events", Some(&before)).await;
    let got = events(&mut conn, 2).await;
    assert_eq!(got[0].event, "sync-required");
    assert_eq!(json(got[0].data.as_bytes())["reason"], "history_trimmed");
    assert_eq!(got[1].data, "new");
    // A cursor at the expired event itself missed nothing.
    let mut conn = stream(&nodes[1], "/v1/channels/age/events", Some(&old)).await;
    let got = events(&mut conn, 1).await;
    assert_eq!(
        (got[0].event.as_str(), got[0].data.as_str()),
        ("message", "new")
    );
}
