//! Redis Cluster, one shard in trouble: the others go on, and a slow replica does not
//! queue one shard's publishes behind each other.

use std::time::Duration;

use http::StatusCode;
use ssegate_client::HttpClient;

use crate::cluster::{Store, nodes_on, publish, stream};
use crate::helpers::{events, json};
use crate::redis_cluster::{RedisCluster, channel_on, stream_key};
use crate::redis_server::query;

/// `n` channels whose keys the primary on `port` serves.
async fn channels_on(c: &RedisCluster, port: u16, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0.. {
        let name = format!("w{i}");
        if c.owner(&stream_key(&name)).await == port {
            out.push(name);
            if out.len() == n {
                break;
            }
        }
    }
    out
}

/// The shard that holds the epoch key goes down (its primary and its replica stopped, so
/// nothing fails over; `cluster-require-full-coverage no`, so the rest of the cluster
/// serves on): channels on the other shards keep publishing and resuming on any node
/// past two of the nodes' epoch re-checks (every 5 s), and the nodes stay ready.
#[tokio::test]
async fn the_epoch_shard_down_leaves_the_other_shards_serving() {
    let Store::Cluster(c) = Store::cluster().await else {
        unreachable!()
    };
    for s in &c.servers {
        let _: String = query(
            s.port,
            &["CONFIG", "SET", "cluster-require-full-coverage", "no"],
        )
        .await
        .unwrap();
    }
    let shard = c.owner("ssegate:epoch").await;
    let replica = c.replica_of(shard).await;
    let kept = channel_on(&c, shard, false).await;
    let nodes = nodes_on(
        ("SSEGATE_REDIS_CLUSTER", &c.seeds()),
        2,
        &[("SSEGATE_REDIS_TIMEOUT", "500ms")],
    )
    .await;
    let http = HttpClient::new();
    // Both nodes serve the channel before the shard goes down.
    let path = format!("/v1/channels/{kept}/events");
    let mut before = Vec::new();
    for node in &nodes {
        before.push(stream(node, &path, None).await);
    }
    let (status, mut last) = publish(&http, &nodes[0], &kept, "k0").await;
    assert_eq!(status, StatusCode::CREATED, "{last}");
    for conn in &mut before {
        assert_eq!(events(conn, 1).await[0].data, "k0");
    }
    let down = [shard, replica];
    for port in down {
        c.servers
            .iter()
            .find(|s| s.port == port)
            .unwrap()
            .signal("STOP");
    }
    let until = tokio::time::Instant::now() + Duration::from_secs(11);
    let mut i = 1;
    while tokio::time::Instant::now() < until {
        let data = format!("k{i}");
        let (status, id) = publish(&http, &nodes[0], &kept, &data).await;
        assert_eq!(status, StatusCode::CREATED, "publish {i}: {id}");
        let mut resumed = stream(&nodes[1], &path, Some(&last)).await;
        let got = events(&mut resumed, 1).await;
        assert_eq!(
            (
                got[0].event.as_str(),
                got[0].data.as_str(),
                got[0].id.as_str()
            ),
            ("message", data.as_str(), id.as_str())
        );
        for node in &nodes {
            let admin = node.admin.expect("an admin listener");
            let res = http.get(&format!("http://{admin}/readyz")).await.unwrap();
            assert_eq!(res.status, StatusCode::OK, "{}", res.text());
        }
        last = id;
        i += 1;
        // Paced, not waited on: the property must hold for the whole window.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for port in down {
        c.servers
            .iter()
            .find(|s| s.port == port)
            .unwrap()
            .signal("CONT");
    }
}

/// With `SSEGATE_PUBLISH_MIN_REPLICAS=1`, a replica that stops confirming makes each
/// publish to its primary wait for the replica timeout, and every one of several
/// concurrent publishes is answered `504 publish_outcome_unknown` with the id its event
/// got: one publish's `WAIT` does not hold up the next one's script (on a shared
/// connection the later scripts would miss their own 500 ms deadline behind the first
/// `WAIT`, and be answered without ids).
#[tokio::test]
async fn a_stalled_replica_does_not_queue_publishes_behind_each_others_wait() {
    let Store::Cluster(c) = Store::cluster().await else {
        unreachable!()
    };
    let primary = c.owner(&stream_key("w0")).await;
    let channels = channels_on(&c, primary, 4).await;
    let nodes = nodes_on(
        ("SSEGATE_REDIS_CLUSTER", &c.seeds()),
        1,
        &[
            ("SSEGATE_PUBLISH_MIN_REPLICAS", "1"),
            ("SSEGATE_PUBLISH_REPLICA_TIMEOUT", "1500ms"),
            ("SSEGATE_REDIS_TIMEOUT", "500ms"),
        ],
    )
    .await;
    let http = HttpClient::new();
    let replica = c.replica_of(primary).await;
    // Until the replica is in sync: before that, no publish is confirmed.
    let deadline = tokio::time::Instant::now() + crate::helpers::WAIT;
    loop {
        let info: String = query(replica, &["INFO", "replication"]).await.unwrap();
        if info.contains("master_link_status:up") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{info}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = publish(&http, &nodes[0], &channels[0], "before").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let stalled = c.servers.iter().find(|s| s.port == replica).unwrap();
    stalled.signal("STOP");
    // Side by side, as concurrent backends publish.
    let p = |i: usize| publish(&http, &nodes[0], &channels[i], "during");
    let (a, b, c2, d) = tokio::join!(p(0), p(1), p(2), p(3));
    let answers = [a, b, c2, d];
    stalled.signal("CONT");
    for (ch, (status, body)) in channels.iter().zip(&answers) {
        assert_eq!(status.as_u16(), 504, "{ch}: {body}");
        let error = &json(body.as_bytes())["error"];
        assert_eq!(error["code"], "publish_outcome_unknown", "{ch}: {body}");
        assert!(
            error["ids"][0].is_string(),
            "{ch}: the id the event got is known: {body}"
        );
    }
    // The replica is back: publishes are confirmed again.
    let (status, body) = publish(&http, &nodes[0], &channels[1], "after").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

/// The clients on `port` that are not Redis's own (a replication link) nor this query.
async fn foreign_clients(port: u16) -> Vec<String> {
    let list: String = query(port, &["CLIENT", "LIST"]).await.unwrap();
    list.lines()
        .filter(|l| !l.contains("cmd=client|list"))
        .filter(|l| {
            let flags = l.split(' ').find_map(|f| f.strip_prefix("flags="));
            !flags.is_some_and(|f| f.contains('M') || f.contains('S'))
        })
        .map(str::to_owned)
        .collect()
}

/// A failover turns a primary into a replica: the node closes what it held there (the
/// command connection, and the sharded pub/sub connection once its subscriptions moved),
/// so failovers one after another do not pile connections up on former primaries, and the
/// channel is delivered from its new primary.
#[tokio::test]
async fn after_a_failover_a_node_holds_no_connection_to_the_former_primary() {
    let Store::Cluster(c) = Store::cluster().await else {
        unreachable!()
    };
    let key = stream_key("fo");
    let old = c.owner(&key).await;
    let nodes = nodes_on(("SSEGATE_REDIS_CLUSTER", &c.seeds()), 1, &[]).await;
    let http = HttpClient::new();
    let mut sub = stream(&nodes[0], "/v1/channels/fo/events", None).await;
    let (status, id) = publish(&http, &nodes[0], "fo", "before").await;
    assert_eq!(status, StatusCode::CREATED, "{id}");
    assert_eq!(events(&mut sub, 1).await[0].data, "before");
    let held = foreign_clients(old).await;
    assert!(
        held.iter().any(|l| l.contains("ssub=1")),
        "the node's sharded subscription is on the primary: {held:#?}"
    );
    let replica = c.replica_of(old).await;
    query::<String>(replica, &["CLUSTER", "FAILOVER"])
        .await
        .unwrap();
    c.wait_moved(&key, old).await;
    let (status, id) = publish(&http, &nodes[0], "fo", "after").await;
    assert_eq!(status, StatusCode::CREATED, "{id}");
    let got = events(&mut sub, 1).await;
    assert_eq!(
        (got[0].data.as_str(), got[0].id.as_str()),
        ("after", id.as_str())
    );
    // Awaited by polling what Redis lists (nothing else observes a closed connection);
    // the node reconciles every second.
    let until = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let left = foreign_clients(old).await;
        if left.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "still held on the former primary: {left:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
