//! Redis Cluster: three primaries and three replicas of real `redis-server` processes on
//! loopback, three gateway processes; the conformance cases of `cluster` run on it, and
//! faults during fan-out (a manual failover, a primary's crash).

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use ssegate_client::HttpClient;

use crate::cluster::{self, Store, stream};
use crate::helpers::{WAIT, events, json};
use crate::redis_server::{RedisServer, free_port, query};

/// How long a primary may be unreachable before its replica is promoted: short, so that
/// a crash test takes seconds.
const NODE_TIMEOUT_MS: &str = "1000";

pub struct RedisCluster {
    pub servers: Vec<RedisServer>,
}

/// The slot Redis gives `key`.
async fn keyslot(port: u16, key: &str) -> i64 {
    query(port, &["CLUSTER", "KEYSLOT", key]).await.unwrap()
}

impl RedisCluster {
    /// Six servers, joined with `redis-cli --cluster create --cluster-replicas 1`; returns
    /// once every node says the cluster is ok.
    pub async fn start() -> Self {
        Self::start_with(|_| Vec::new()).await
    }

    /// [`RedisCluster::start`] with more arguments for each server (`extra(k)` for the
    /// k-th, e.g. its own TLS port).
    pub async fn start_with(extra: impl Fn(usize) -> Vec<String>) -> Self {
        let mut servers = Vec::new();
        for k in 0..6 {
            let mut args: Vec<String> = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                NODE_TIMEOUT_MS,
            ]
            .map(str::to_owned)
            .to_vec();
            // The bus port defaults to the port + 10000, past 65535 for a port above
            // 55535, which the ephemeral range free_port draws from includes.
            args.extend(["--cluster-port".to_owned(), free_port().to_string()]);
            args.extend(extra(k));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            servers.push(RedisServer::start_with(false, &args).await);
        }
        let addrs: Vec<String> = servers
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        let out = tokio::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .await
            .expect("redis-cli is installed");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = Self { servers };
        cluster.wait_ok().await;
        cluster
    }

    /// Until every running node reports `cluster_state:ok` and agrees on the primaries.
    pub async fn wait_ok(&self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let mut ok = true;
            for s in &self.servers {
                let info: redis::RedisResult<String> = query(s.port, &["CLUSTER", "INFO"]).await;
                ok &= info.is_ok_and(|i| i.contains("cluster_state:ok"));
            }
            if ok {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the Redis Cluster never became ok"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `host:port` of two nodes: a gateway finds the rest itself.
    pub fn seeds(&self) -> String {
        format!(
            "127.0.0.1:{},127.0.0.1:{}",
            self.servers[0].port, self.servers[1].port
        )
    }

    /// The port of the primary that serves `key`, asked of a live node.
    pub async fn owner(&self, key: &str) -> u16 {
        for s in &self.servers {
            let Ok(slot) = query::<i64>(s.port, &["CLUSTER", "KEYSLOT", key]).await else {
                continue;
            };
            let Ok(redis::Value::Array(ranges)) =
                query::<redis::Value>(s.port, &["CLUSTER", "SLOTS"]).await
            else {
                continue;
            };
            for r in ranges {
                let redis::Value::Array(parts) = r else {
                    continue;
                };
                let (redis::Value::Int(lo), redis::Value::Int(hi), redis::Value::Array(node)) =
                    (&parts[0], &parts[1], &parts[2])
                else {
                    continue;
                };
                if (*lo..=*hi).contains(&slot)
                    && let redis::Value::Int(port) = node[1]
                {
                    return u16::try_from(port).unwrap();
                }
            }
        }
        panic!("no node names the owner of {key}");
    }

    /// A replica of the primary on `port`.
    pub async fn replica_of(&self, port: u16) -> u16 {
        for s in &self.servers {
            if s.port == port {
                continue;
            }
            let Ok(info) = query::<String>(s.port, &["INFO", "replication"]).await else {
                continue;
            };
            if info.contains("role:slave") && info.contains(&format!("master_port:{port}")) {
                return s.port;
            }
        }
        panic!("no replica of {port}");
    }

    pub fn server(&mut self, port: u16) -> &mut RedisServer {
        self.servers.iter_mut().find(|s| s.port == port).unwrap()
    }

    /// Until `key`'s slot is served by another primary than `old`.
    pub async fn wait_moved(&self, key: &str, old: u16) {
        let deadline = tokio::time::Instant::now() + WAIT * 2;
        while self.owner(key).await == old {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no replica of {old} was promoted"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The stream key of `channel` (the default key prefix).
pub fn stream_key(channel: &str) -> String {
    format!("ssegate:{{{channel}}}:s")
}

#[tokio::test]
async fn on_redis_cluster_three_nodes_deliver_across_nodes() {
    cluster::deliver_across_nodes(&Store::cluster().await).await;
}

#[tokio::test]
async fn on_redis_cluster_a_trimmed_cursor_gets_sync_required_on_any_node() {
    cluster::trimmed_cursor(&Store::cluster().await).await;
}

#[tokio::test]
async fn on_redis_cluster_a_multi_channel_subscriber_resumes_on_another_node() {
    let store = Store::cluster().await;
    let Store::Cluster(c) = &store else {
        unreachable!()
    };
    // The case's two channels live in different slots.
    assert_ne!(
        keyslot(c.servers[0].port, "p").await,
        keyslot(c.servers[0].port, "q").await
    );
    cluster::multi_channel_resume(&store).await;
}

#[tokio::test]
async fn on_redis_cluster_the_same_idempotency_key_on_two_nodes_publishes_once() {
    cluster::idempotency_across_nodes(&Store::cluster().await).await;
}

#[tokio::test]
async fn on_redis_cluster_expired_events_are_a_gap_only_past_the_cursor() {
    cluster::expired_events(&Store::cluster().await).await;
}

#[tokio::test]
async fn on_redis_cluster_a_gateway_crash_loses_and_repeats_nothing() {
    cluster::failover(&Store::cluster().await, "KILL").await;
}

/// Channels spread over every primary.
const SPREAD: [&str; 6] = ["a", "b", "c", "news", "user:1", "user:2"];

#[tokio::test]
async fn a_batch_over_several_slots_is_written_per_slot_and_retried_safely() {
    let store = Store::cluster().await;
    let Store::Cluster(c) = &store else {
        unreachable!()
    };
    let mut owners: Vec<u16> = Vec::new();
    for ch in SPREAD {
        owners.push(c.owner(&stream_key(ch)).await);
    }
    owners.sort_unstable();
    owners.dedup();
    assert_eq!(owners.len(), 3, "the channels cover every primary");
    let nodes = store.nodes(2, &[]).await;
    let http = HttpClient::new();
    let path = format!("/v1/events?channels={}", SPREAD.join(","));
    let mut all = stream(&nodes[1], &path, None).await;
    let batch: Vec<serde_json::Value> = SPREAD
        .iter()
        .enumerate()
        .map(|(i, ch)| serde_json::json!({"channel": ch, "data": format!("e{i}")}))
        .collect();
    let body = Bytes::from(serde_json::json!({ "events": batch }).to_string());
    let mut answers = Vec::new();
    for node in &nodes {
        let res = http
            .request(
                http::Method::POST,
                &node.url("/v1/publish"),
                &[
                    ("content-type", "application/json"),
                    ("idempotency-key", "batch-1"),
                ],
                body.clone(),
            )
            .await
            .unwrap();
        assert_eq!(res.status, StatusCode::CREATED, "{}", res.text());
        answers.push(json(&res.body)["ids"].clone());
    }
    assert_eq!(answers[0], answers[1], "the retry got the same ids");
    // Each id is the one a single-channel subscriber sees, in request order.
    for (i, ch) in SPREAD.iter().enumerate() {
        let h = json(
            &http
                .get(&nodes[0].url(&format!("/v1/channels/{ch}/history")))
                .await
                .unwrap()
                .body,
        );
        let events = h["events"].as_array().unwrap();
        assert_eq!(events.len(), 1, "{ch}: published once");
        assert_eq!(events[0]["id"], answers[0][i]);
        assert_eq!(events[0]["data"], format!("e{i}"));
    }
    let mut got: Vec<String> = events(&mut all, SPREAD.len())
        .await
        .into_iter()
        .map(|e| e.data)
        .collect();
    got.sort_unstable();
    let mut want: Vec<String> = (0..SPREAD.len()).map(|i| format!("e{i}")).collect();
    want.sort_unstable();
    assert_eq!(
        got, want,
        "a multi-channel stream over every slot got each once"
    );
    // The same key with another batch is refused, and publishes nothing.
    let other = Bytes::from(
        serde_json::json!({"events": [{"channel": "a", "data": "x"}, {"channel": "b", "data": "y"}]})
            .to_string(),
    );
    let res = http
        .request(
            http::Method::POST,
            &nodes[0].url("/v1/publish"),
            &[
                ("content-type", "application/json"),
                ("idempotency-key", "batch-1"),
            ],
            other,
        )
        .await
        .unwrap();
    assert_eq!(
        res.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        res.text()
    );
}

/// Publishing goes on through the gateways while the primary of the test's channel is
/// failed over (`CLUSTER FAILOVER` on its replica), then crashed (SIGKILL): every
/// subscriber gets every acknowledged event exactly once, or a `sync-required`.
#[tokio::test]
async fn a_failover_and_a_primary_crash_during_fan_out_lose_nothing_silently() {
    let Store::Cluster(mut c) = Store::cluster().await else {
        unreachable!()
    };
    let nodes = crate::cluster::nodes_on(
        ("SSEGATE_REDIS_CLUSTER", &c.seeds()),
        3,
        &[
            ("SSEGATE_REDIS_TIMEOUT", "1s"),
            ("SSEGATE_HEARTBEAT_INTERVAL", "500ms"),
        ],
    )
    .await;
    let key = stream_key("ha");
    crate::sentinel::survives(&mut c, "ha", &nodes, 0, false, async |c| {
        let old = c.owner(&key).await;
        let replica = c.replica_of(old).await;
        query::<String>(replica, &["CLUSTER", "FAILOVER"])
            .await
            .unwrap();
        c.wait_moved(&key, old).await;
    })
    .await;
    crate::sentinel::survives(&mut c, "ha", &nodes, 1, false, async |c| {
        let old = c.owner(&key).await;
        c.server(old).kill().await;
        c.wait_moved(&key, old).await;
    })
    .await;
}

/// A channel whose slot is among the first `n` slots its primary serves (the ones
/// `redis-cli --cluster reshard --cluster-slots n` moves).
async fn channel_in_first_slots(c: &RedisCluster, n: i64) -> (String, u16) {
    let port = c.servers[0].port;
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let firsts = first_slots(port).await;
    for i in 0.. {
        let name = format!("mig{i}");
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&name)
            .query_async(&mut conn)
            .await
            .unwrap();
        if let Some(&(_, owner)) = firsts.iter().find(|(lo, _)| (*lo..*lo + n).contains(&slot)) {
            return (name, owner);
        }
    }
    unreachable!()
}

/// Each primary's lowest slot and its port.
async fn first_slots(port: u16) -> Vec<(i64, u16)> {
    let redis::Value::Array(ranges) = query::<redis::Value>(port, &["CLUSTER", "SLOTS"])
        .await
        .unwrap()
    else {
        panic!("CLUSTER SLOTS")
    };
    let mut firsts: Vec<(i64, u16)> = Vec::new();
    for r in ranges {
        let redis::Value::Array(parts) = r else {
            continue;
        };
        let (redis::Value::Int(lo), redis::Value::Array(node)) = (&parts[0], &parts[2]) else {
            continue;
        };
        let redis::Value::Int(p) = node[1] else {
            continue;
        };
        let p = u16::try_from(p).unwrap();
        match firsts.iter_mut().find(|(_, o)| *o == p) {
            Some(f) => f.0 = f.0.min(*lo),
            None => firsts.push((*lo, p)),
        }
    }
    firsts
}

/// Publishing goes on while the busy channel's slot moves to another primary
/// (`redis-cli --cluster reshard`): nothing acknowledged is lost or repeated, and no
/// subscriber is disconnected.
#[tokio::test]
async fn a_slot_migration_of_a_busy_channel_loses_and_repeats_nothing() {
    let Store::Cluster(mut c) = Store::cluster().await else {
        unreachable!()
    };
    let (channel, owner) = channel_in_first_slots(&c, 50).await;
    let to = c
        .servers
        .iter()
        .map(|s| s.port)
        .find(|&p| p != owner)
        .unwrap();
    let mut target = 0;
    for s in &c.servers {
        let info: String = query(s.port, &["INFO", "replication"]).await.unwrap();
        if s.port != owner && info.contains("role:master") {
            target = s.port;
            break;
        }
    }
    assert_ne!(target, 0, "{to}");
    let id = |port: u16| async move { query::<String>(port, &["CLUSTER", "MYID"]).await.unwrap() };
    let (from_id, to_id) = (id(owner).await, id(target).await);
    let nodes = crate::cluster::nodes_on(
        ("SSEGATE_REDIS_CLUSTER", &c.seeds()),
        3,
        &[
            ("SSEGATE_REDIS_TIMEOUT", "1s"),
            ("SSEGATE_HEARTBEAT_INTERVAL", "500ms"),
        ],
    )
    .await;
    let key = stream_key(&channel);
    let channel: &'static str = Box::leak(channel.into_boxed_str());
    crate::sentinel::survives(&mut c, channel, &nodes, 0, true, async |c| {
        let out = tokio::process::Command::new("redis-cli")
            .args(["--cluster", "reshard", &format!("127.0.0.1:{owner}")])
            .args(["--cluster-from", &from_id, "--cluster-to", &to_id])
            .args(["--cluster-slots", "50", "--cluster-yes"])
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        c.wait_moved(&key, owner).await;
    })
    .await;
    assert_eq!(c.owner(&key).await, target);
}

/// A channel (from `names`) that the primary on `port` serves, or that it does not.
pub async fn channel_on(c: &RedisCluster, port: u16, on: bool) -> String {
    for i in 0.. {
        let name = format!("f{i}");
        if (c.owner(&stream_key(&name)).await == port) == on {
            return name;
        }
    }
    unreachable!()
}

/// The shard that holds the epoch is flushed (`FLUSHALL` on its primary; its replica
/// follows): its channels' clients are told, the other shards' are not, and the nodes put
/// the epoch back instead of starting a new one.
#[tokio::test]
async fn a_flushed_shard_is_a_loss_for_its_channels_only() {
    let store = Store::cluster().await;
    let Store::Cluster(c) = &store else {
        unreachable!()
    };
    let shard = c.owner("ssegate:epoch").await;
    let (lost, kept) = (
        channel_on(c, shard, true).await,
        channel_on(c, shard, false).await,
    );
    let nodes = store.nodes(2, &[]).await;
    let http = HttpClient::new();
    let (_, lost_id) = cluster::publish(&http, &nodes[0], &lost, "l0").await;
    let (_, kept_id) = cluster::publish(&http, &nodes[0], &kept, "k0").await;
    let mut live = stream(
        &nodes[1],
        &format!("/v1/channels/{lost}/events"),
        Some(&lost_id),
    )
    .await;
    let epoch: String = query(shard, &["GET", "ssegate:epoch"]).await.unwrap();
    let _: String = query(shard, &["FLUSHALL"]).await.unwrap();
    // Awaited, not slept on: a node puts the epoch it knows back.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now: Option<String> = query(shard, &["GET", "ssegate:epoch"]).await.unwrap();
        if let Some(now) = now {
            assert_eq!(now, epoch, "the epoch was put back, not replaced");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the epoch never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster::publish(&http, &nodes[0], &lost, "l1").await;
    cluster::publish(&http, &nodes[0], &kept, "k1").await;
    // The open stream on the flushed channel is told, then gets what the store has.
    let got = events(&mut live, 2).await;
    assert_eq!(got[0].event, "sync-required");
    assert_eq!(got[1].data, "l1");
    // A cursor on the flushed channel is told, on a node started after the flush too.
    let late = store.nodes(1, &[]).await;
    for node in [&nodes[0], &late[0]] {
        let mut conn = stream(node, &format!("/v1/channels/{lost}/events"), Some(&lost_id)).await;
        let got = events(&mut conn, 2).await;
        assert_eq!(got[0].event, "sync-required");
        assert_eq!(json(got[0].data.as_bytes())["reason"], "history_trimmed");
        assert_eq!(got[1].data, "l1");
        // The other shard lost nothing: no signal, the next event.
        let mut conn = stream(node, &format!("/v1/channels/{kept}/events"), Some(&kept_id)).await;
        let got = events(&mut conn, 1).await;
        assert_eq!(
            (got[0].event.as_str(), got[0].data.as_str()),
            ("message", "k1")
        );
    }
}
