//! `/metrics` after a scripted scenario shows exactly what happened.

use std::collections::HashMap;
use std::time::Duration;

use ssegate_client::HttpClient;

use crate::cluster::{publish, stream};
use crate::helpers::{TestProcess, WAIT, events, json, next_item, spawn_process};

/// Parses the Prometheus text format into `name{labels}` → value.
fn scrape_text(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

async fn scrape(node: &TestProcess) -> HashMap<String, f64> {
    let admin = node.admin.unwrap();
    let res = HttpClient::new()
        .get(&format!("http://{admin}/metrics"))
        .await
        .unwrap();
    assert_eq!(res.status, 200);
    assert!(
        res.header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    scrape_text(&res.text())
}

fn get(m: &HashMap<String, f64>, key: &str) -> f64 {
    m.get(key)
        .copied()
        .unwrap_or_else(|| panic!("{key} missing from /metrics"))
}

#[tokio::test]
async fn metrics_count_exactly_what_a_scripted_scenario_did() {
    let node = spawn_process(&[
        ("SSEGATE_MAX_CONNECTIONS", "3"),
        ("SSEGATE_HISTORY_MAX_LEN", "5"),
    ])
    .await;
    let http = HttpClient::new();
    // Two live subscribers.
    let mut a = stream(&node, "/v1/channels/m/events", None).await;
    let mut b = stream(&node, "/v1/channels/m/events", None).await;
    // Seven publishes; each subscriber receives all of them.
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(publish(&http, &node, "m", &format!("e{i}")).await.1);
    }
    assert_eq!(events(&mut a, 7).await.len(), 7);
    assert_eq!(events(&mut b, 7).await.len(), 7);
    // One replay: from e4, two events (e5, e6).
    let mut replay = stream(&node, "/v1/channels/m/events", Some(&ids[4])).await;
    assert_eq!(events(&mut replay, 2).await[1].data, "e6");
    drop(replay);
    // Wait until the node has noticed that client leave (it frees the slot).
    let deadline = tokio::time::Instant::now() + WAIT;
    while get(&scrape(&node).await, "ssegate_connections_open") != 2.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "closed stream never noticed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // One trimmed cursor: history keeps e2..e6, so a client whose last event came before
    // e0 gets sync-required + 5 events. (Not e0 itself: this node delivered e0..e6 live
    // and still holds them, so a resume from e0 is served every event after it, e1
    // included, with no gap to announce; see "Opening a stream" in docs/architecture.md.)
    let (epoch, entry) = ids[0].split_once('-').unwrap();
    let ms: u64 = entry.split_once('-').unwrap().0.parse().unwrap();
    let before_e0 = format!("{epoch}-{}-0", ms - 1);
    let mut trimmed = stream(&node, "/v1/channels/m/events", Some(&before_e0)).await;
    let got = events(&mut trimmed, 6).await;
    assert_eq!(got[0].event, "sync-required");
    // One refused connection: three streams are open, the limit is three.
    let mut refused = stream(&node, "/v1/channels/m/events", None).await;
    assert!(matches!(
        next_item(&mut refused).await,
        Some(ssegate_client::Item::Retry(_))
    ));
    assert!(next_item(&mut refused).await.is_none());

    let m = scrape(&node).await;
    let expect = [
        ("ssegate_connections_opened_total", 4.0),
        ("ssegate_connections_open", 3.0),
        (
            "ssegate_connections_closed_total{reason=\"client_gone\"}",
            1.0,
        ),
        ("ssegate_connections_closed_total{reason=\"drained\"}", 0.0),
        (
            "ssegate_connections_refused_total{reason=\"connection_limit\"}",
            1.0,
        ),
        ("ssegate_events_published_total", 7.0),
        ("ssegate_deliveries_total", 14.0 + 2.0 + 5.0),
        ("ssegate_replayed_events_total", 7.0),
        (
            "ssegate_sync_required_total{reason=\"history_trimmed\"}",
            1.0,
        ),
        ("ssegate_sync_required_total{reason=\"epoch_changed\"}", 0.0),
        ("ssegate_publish_errors_total{class=\"client\"}", 0.0),
        ("ssegate_publish_duration_seconds_count", 7.0),
        ("ssegate_delivery_latency_seconds_count", 14.0),
    ];
    for (key, want) in expect {
        assert_eq!(get(&m, key), want, "{key}");
    }
    assert!(get(&m, "ssegate_bytes_written_total") > 0.0);
    assert!(get(&m, "ssegate_publish_duration_seconds_bucket{le=\"+Inf\"}") == 7.0);
    // No channel name is ever a label.
    let admin = node.admin.unwrap();
    let text = http
        .get(&format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text();
    assert!(!text.contains("\"m\""), "a channel name leaked into labels");
    // /v1/stats agrees.
    let stats = json(
        &http
            .get(&format!("http://{admin}/v1/stats"))
            .await
            .unwrap()
            .body,
    );
    assert_eq!(stats["streams"], 3);
    assert_eq!(stats["deliveries"], 21);
}

async fn cluster_view(node: &TestProcess) -> serde_json::Value {
    let admin = node.admin.unwrap();
    json(
        &HttpClient::new()
            .get(&format!("http://{admin}/v1/cluster"))
            .await
            .unwrap()
            .body,
    )
}

/// Polls the cluster view (bounded) until `pred` holds; the view changes on timers.
async fn view_until(
    node: &TestProcess,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let view = cluster_view(node).await;
        if pred(&view) {
            return view;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "cluster view never got there: {view}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_cluster_view_lists_live_nodes_and_drops_dead_ones() {
    let redis = crate::redis_server::RedisServer::start(false).await;
    let mut nodes =
        crate::cluster::cluster(&redis, 3, &[("SSEGATE_CLUSTER_ANNOUNCE_INTERVAL", "200ms")]).await;
    let view = view_until(&nodes[0], |v| v["count"] == 3).await;
    let ids: Vec<&str> = view["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["node1", "node2", "node3"]);
    let n2 = &view["nodes"][1];
    assert_eq!(n2["broker"], "redis");
    assert_eq!(n2["address"], nodes[1].addr.to_string());
    assert!(n2["version"].is_string());
    // A stream on node2 shows up in its entry.
    let conn = stream(&nodes[1], "/v1/channels/v/events", None).await;
    view_until(&nodes[0], |v| {
        v["nodes"][1]["connections"] == 1 && v["nodes"][1]["channels"] == 1
    })
    .await;
    // A killed node disappears within its TTL (three intervals).
    nodes[2].signal("KILL");
    let view = view_until(&nodes[0], |v| v["count"] == 2).await;
    assert!(
        view["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["node_id"] != "node3")
    );
    // A node that shuts down cleanly takes itself out at once.
    drop(conn);
    nodes[1].signal("TERM");
    nodes[1].wait_exit().await;
    view_until(&nodes[0], |v| v["count"] == 1).await;
}

/// A local OTLP/HTTP receiver: records every span (node, name, trace id) it is sent.
struct OtlpReceiver {
    endpoint: String,
    spans: std::sync::Arc<std::sync::Mutex<Vec<(String, String, String)>>>,
    arrived: std::sync::Arc<tokio::sync::Notify>,
}

fn spans_of(body: &serde_json::Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for rs in body["resourceSpans"].as_array().into_iter().flatten() {
        let node = rs["resource"]["attributes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["key"] == "service.instance.id")
            .and_then(|a| a["value"]["stringValue"].as_str())
            .unwrap_or_default()
            .to_owned();
        for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
            for span in ss["spans"].as_array().into_iter().flatten() {
                out.push((
                    node.clone(),
                    span["name"].as_str().unwrap_or_default().to_owned(),
                    span["traceId"].as_str().unwrap_or_default().to_owned(),
                ));
            }
        }
    }
    out
}

async fn otlp_receiver() -> OtlpReceiver {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let spans = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let arrived = std::sync::Arc::new(tokio::sync::Notify::new());
    let (s, a) = (spans.clone(), arrived.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (s, a) = (s.clone(), a.clone());
            let service =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (s, a) = (s.clone(), a.clone());
                    async move {
                        assert_eq!(req.uri().path(), "/v1/traces");
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
                        s.lock().unwrap().extend(spans_of(&value));
                        a.notify_waiters();
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from_static(b"{}")),
                        ))
                    }
                });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    OtlpReceiver {
        endpoint,
        spans,
        arrived,
    }
}

#[tokio::test]
async fn a_publish_and_its_delivery_on_another_node_share_one_trace() {
    let otlp = otlp_receiver().await;
    let redis = crate::redis_server::RedisServer::start(false).await;
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let nodes = crate::cluster::cluster(&redis, 2, &env).await;
    let mut sub = stream(&nodes[1], "/v1/channels/traced/events", None).await;
    let http = HttpClient::new();
    publish(&http, &nodes[0], "traced", "hello").await;
    assert_eq!(events(&mut sub, 1).await[0].data, "hello");

    let shared = tokio::time::timeout(WAIT, async {
        loop {
            let arrived = otlp.arrived.notified();
            {
                let spans = otlp.spans.lock().unwrap();
                let publish = spans
                    .iter()
                    .find(|(n, name, _)| n == "node1" && name == "publish");
                if let Some((_, _, trace)) = publish {
                    let delivered = spans
                        .iter()
                        .any(|(n, name, t)| n == "node2" && name == "deliver" && t == trace);
                    if delivered {
                        return trace.clone();
                    }
                }
            }
            arrived.await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("spans received: {:?}", otlp.spans.lock().unwrap()));
    assert_eq!(shared.len(), 32, "a W3C trace id");
}
