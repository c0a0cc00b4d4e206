//! The node's pooled command connections: one that Redis closed while it sat idle is
//! replaced before a command would use it (a publish sent on it could only be answered
//! "outcome unknown"), and that check costs Redis nothing while the connection is busy: a
//! publish is one round trip, not a `PING` and then the script. One that sat idle is still
//! asked, so a Redis that went silent without closing anything refuses the publish
//! (`503`) instead of leaving it unknown.

use std::time::Duration;

use http::StatusCode;
use ssegate_client::HttpClient;
use tokio::task::JoinSet;

use crate::cluster::{cluster, publish, stream};
use crate::helpers::{WAIT, events, json};
use crate::redis_server::RedisServer;

/// Publishes that run at once, so that the pool holds several connections.
const AT_ONCE: usize = 8;

async fn publish_at_once(http: &HttpClient, base: &str, round: &str) -> Vec<(StatusCode, String)> {
    let mut tasks = JoinSet::new();
    for i in 0..AT_ONCE {
        let (http, url) = (http.clone(), format!("{base}/v1/channels/pool/events"));
        let body = serde_json::json!({ "data": format!("{round}{i}") }).to_string();
        tasks.spawn(async move {
            match http
                .post(&url, "application/json", bytes::Bytes::from(body))
                .await
            {
                Ok(res) => (res.status, res.text()),
                Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()),
            }
        });
    }
    tasks.join_all().await
}

#[tokio::test]
async fn a_pooled_connection_redis_closed_is_replaced_and_no_publish_pings() {
    let redis = RedisServer::start(false).await;
    let nodes = cluster(&redis, 1, &[]).await;
    let http = HttpClient::new();
    let base = nodes[0].url("");
    // A subscriber, so that the node's pub/sub connection holds a subscription (Redis
    // counts it as `TYPE pubsub`, and the kill below leaves it alone).
    let mut sub = stream(&nodes[0], "/v1/channels/pool/events", None).await;
    assert!(
        publish_at_once(&http, &base, "warm")
            .await
            .iter()
            .all(|(s, _)| *s == StatusCode::CREATED)
    );

    let pings = redis.calls("ping").await;
    for i in 0..20 {
        let (status, body) = publish(&http, &nodes[0], "pool", &format!("one{i}")).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    assert_eq!(
        redis.calls("ping").await,
        pings,
        "a publish checks its pooled connection without asking Redis"
    );

    // Close every command connection (not the pub/sub one, not this one): the next
    // publishes take new connections, none fails.
    redis.cmd(&["CLIENT", "KILL", "TYPE", "normal"]).await;
    let after = publish_at_once(&http, &base, "after").await;
    assert!(
        after.iter().all(|(s, _)| *s == StatusCode::CREATED),
        "every publish after the close succeeds: {after:?}\n{}",
        nodes[0].stderr()
    );
    let history = http
        .get(&nodes[0].url("/v1/channels/pool/history?after=0&limit=100"))
        .await
        .unwrap();
    assert_eq!(history.status, StatusCode::OK);
    let stored = json(&history.body)["events"].as_array().unwrap().len();
    assert_eq!(
        stored,
        2 * AT_ONCE + 20,
        "every acknowledged publish is in the stream"
    );
    assert_eq!(
        events(&mut sub, stored).await.len(),
        stored,
        "and reached the subscriber"
    );
}

/// Longer than a pooled connection may sit unused before it is asked with `PING`.
const PAST_IDLE: Duration =
    ssegate_broker::PING_IDLE_AFTER.saturating_add(Duration::from_millis(300));

#[tokio::test]
async fn an_idle_connection_to_a_silent_redis_is_asked_first_so_the_publish_is_refused() {
    let redis = RedisServer::start(false).await;
    let nodes = cluster(&redis, 1, &[("SSEGATE_REDIS_TIMEOUT", "400ms")]).await;
    let http = HttpClient::new();
    let (status, body) = publish(&http, &nodes[0], "silent", "before").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // What is waited for is time itself: the connection must have sat idle.
    tokio::time::sleep(PAST_IDLE).await;
    // Frozen: no close reaches the node, and nothing answers.
    redis.signal("STOP");
    let (status, body) = publish(&http, &nodes[0], "silent", "during").await;
    redis.signal("CONT");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(json(body.as_bytes())["error"]["code"], "broker_unavailable");

    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, _) = publish(&http, &nodes[0], "silent", "after").await;
        if status == StatusCode::CREATED {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Redis never answered again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let history = http
        .get(&nodes[0].url("/v1/channels/silent/history?after=0&limit=10"))
        .await
        .unwrap();
    let data: Vec<_> = json(&history.body)["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["data"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        data,
        ["before", "after"],
        "the refused publish was not published"
    );
}

/// A Redis that requires a password, with the node's data in a database of its own: the
/// node's pooled connections (which open their own sockets and say `AUTH` and `SELECT`
/// themselves) authenticate and select it; a node without the password publishes nothing.
#[tokio::test]
async fn pooled_connections_authenticate_and_select_the_url_s_database() {
    let acl = [
        "--user", "default", "on", "nopass", "-@all", "+ping", "+info", "--user", "gw", "on",
        ">secret", "~*", "&*", "+@all",
    ];
    let redis = RedisServer::start_with(false, &acl).await;
    let port = redis.port;
    let url = format!("redis://gw:secret@127.0.0.1:{port}/3");
    let nodes = crate::cluster::nodes_on(("SSEGATE_REDIS_URL", &url), 1, &[]).await;
    let wrong = format!("redis://gw:wrong@127.0.0.1:{port}/3");
    let outsider = crate::cluster::nodes_on(
        ("SSEGATE_REDIS_URL", &wrong),
        1,
        &[("SSEGATE_NODE_ID", "outsider")],
    )
    .await;
    let http = HttpClient::new();
    let mut sub = stream(&nodes[0], "/v1/channels/locked/events", None).await;
    let (status, body) = publish(&http, &outsider[0], "locked", "wrong password").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    for i in 0..3 {
        let (status, id) = publish(&http, &nodes[0], "locked", &format!("e{i}")).await;
        assert_eq!(status, StatusCode::CREATED, "{id}");
    }
    let got = events(&mut sub, 3).await;
    assert_eq!(
        got.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(),
        ["e0", "e1", "e2"]
    );
    let gw = redis::Client::open(url.as_str()).unwrap();
    let mut conn = gw.get_multiplexed_async_connection().await.unwrap();
    let len: i64 = redis::cmd("XLEN")
        .arg("ssegate:{locked}:s")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        len, 3,
        "the events are in database 3, the outsider's is not"
    );
}

/// A publish whose reply is late (Redis froze right after it was sent) is answered "outcome
/// unknown"; its connection is not reused (it owes a reply, and once that arrives it holds
/// bytes no request asked for: either drops it), so the late reply answers nothing else:
/// the next publish, on a new connection, gets its own event's id. (With both checks
/// removed, the next publish reads the late reply and fails.)
#[tokio::test]
async fn a_late_reply_answers_nothing_else() {
    let redis = RedisServer::start(false).await;
    let env = [
        ("SSEGATE_REDIS_TIMEOUT", "300ms"),
        ("SSEGATE_REDIS_POOL_SIZE", "1"),
        // The node's own use of the pool (its entry in the cluster view) once, at start:
        // a late reply must meet the next publish, not that.
        ("SSEGATE_CLUSTER_ANNOUNCE_INTERVAL", "1h"),
    ];
    let nodes = cluster(&redis, 1, &env).await;
    let http = HttpClient::new();
    // What history must hold, in order.
    let mut stored = Vec::new();
    for k in 0.. {
        assert!(k < 10, "no publish was ever sent and left unanswered");
        // A publish that succeeds: the connection is busy, so the next is not asked first.
        let warm = format!("warm{k}");
        let (status, body) = publish(&http, &nodes[0], "late", &warm).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        stored.push(warm);
        // Redis freezes with the next script on its socket, and runs it when it thaws.
        let late = format!("late{k}");
        redis.signal("STOP");
        let (status, body) = publish(&http, &nodes[0], "late", &late).await;
        redis.signal("CONT");
        match status {
            StatusCode::GATEWAY_TIMEOUT => {
                assert_eq!(
                    json(body.as_bytes())["error"]["code"],
                    "publish_outcome_unknown"
                );
                stored.push(late);
                break;
            }
            // The one connection was taken by something else when Redis froze (it was
            // dropped for the reply it still owed), and the publish's new connection got
            // no answer to its handshake: nothing was sent. Again.
            StatusCode::SERVICE_UNAVAILABLE => {}
            other => panic!("{other}: {body}"),
        }
    }
    let (status, id) = publish(&http, &nodes[0], "late", "next").await;
    assert_eq!(status, StatusCode::CREATED, "{id}");
    stored.push("next".into());
    let history = http
        .get(&nodes[0].url("/v1/channels/late/history?after=0&limit=100"))
        .await
        .unwrap();
    let events = json(&history.body)["events"].as_array().unwrap().clone();
    let data: Vec<&str> = events.iter().map(|e| e["data"].as_str().unwrap()).collect();
    assert_eq!(
        data, stored,
        "the late one ran when Redis thawed; no refused one ran"
    );
    assert_eq!(
        events.last().and_then(|e| e["id"].as_str()),
        Some(id.as_str()),
        "the next publish was answered with its own event's id"
    );
}
