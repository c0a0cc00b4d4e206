//! Through a real nginx, configured with the project's own templates (`nginx/`), in front of
//! real gateway processes on a real Redis: events pass unbuffered, a client whose node is
//! killed resumes through nginx on another node with nothing lost or repeated, a
//! connection attempt while a node is down is moved to a live one, a Redis outage does not
//! make nginx give up on the nodes, and the demo page and the publish API work through the
//! proxy.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use ssegate_client::{ConnectOptions, Connection, EventSource, HttpClient, Item, SourceItem};

use crate::cluster::cluster;
use crate::helpers::{TestProcess, WAIT, events, json, next_item, opening_id, spawn_process};
use crate::redis_server::RedisServer;

/// A real nginx on a free loopback port, running the project's config rendered for the
/// given nodes into a temp dir (config, pid, logs, scratch files). Stopped on drop.
pub struct Nginx {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The project's nginx templates.
fn templates() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../nginx")
}

/// Replaces each `${NAME}` of `vars` in a template, like the official image's envsubst and
/// `scripts/cluster` do, and insists that no template variable is left.
fn render(template: &str, vars: &[(&str, String)]) -> String {
    let mut text = std::fs::read_to_string(templates().join(template)).unwrap();
    for (name, value) in vars {
        text = text.replace(&format!("${{{name}}}"), value);
    }
    assert!(
        !text.contains("${SSEGATE_LB_"),
        "{template}: a variable was left unreplaced"
    );
    text
}

impl Nginx {
    pub async fn start(nodes: &[TestProcess]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("conf");
        let run = dir.path().join("run");
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::create_dir_all(&run).unwrap();
        let port = free_port();
        let upstreams: String = nodes
            .iter()
            .map(|n| format!("server {} max_fails=0;\n    ", n.addr))
            .collect();
        let error_log = dir.path().join("error.log");
        let path = |p: &Path| p.to_str().unwrap().to_owned();
        std::fs::write(
            conf.join("nginx.conf"),
            render(
                "nginx.conf.template",
                &[
                    ("SSEGATE_LB_RUN_DIR", path(&run)),
                    ("SSEGATE_LB_ERROR_LOG", path(&error_log)),
                    (
                        "SSEGATE_LB_ACCESS_LOG",
                        path(&dir.path().join("access.log")),
                    ),
                ],
            ),
        )
        .unwrap();
        std::fs::write(
            conf.join("ssegate.conf"),
            render(
                "ssegate.conf.template",
                &[
                    ("SSEGATE_LB_LISTEN", format!("127.0.0.1:{port}")),
                    ("SSEGATE_LB_UPSTREAMS", upstreams.trim_end().to_owned()),
                ],
            ),
        )
        .unwrap();
        std::fs::copy(
            templates().join("ssegate-proxy.conf"),
            conf.join("ssegate-proxy.conf"),
        )
        .unwrap();

        // In the foreground, so that this process owns it. As root, nginx would run its
        // workers as "nobody", who cannot enter the private temp dir.
        let mut globals = String::from("daemon off;");
        if is_root() {
            globals.push_str(" user root root;");
        }
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(conf.join("nginx.conf"))
            .arg("-e")
            .arg(&error_log)
            .args(["-g", &globals])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx is installed (scripts/test installs it)");
        let mut nginx = Self { child, port, dir };
        nginx.wait_ready().await;
        nginx
    }

    /// Polls nginx's own health endpoint until it answers (bounded by `WAIT`): nginx has
    /// no ready line to wait for.
    async fn wait_ready(&mut self) {
        let http = HttpClient::new();
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(res) = http.get(&self.url("/lb-healthz")).await {
                if res.status == StatusCode::OK {
                    return;
                }
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("nginx exited with {status}:\n{}", self.error_log());
            }
            assert!(
                Instant::now() < deadline,
                "nginx not up in time:\n{}",
                self.error_log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    /// SIGTERM is nginx's fast shutdown: the master closes the open streams and stops its
    /// workers before it exits. (A SIGKILL of the master would leave the workers running.)
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        for _ in 0..250 {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// Publishes `{"data": data}` through `base` (nginx) with an `Idempotency-Key`, retrying
/// (bounded) while the proxy answers 502/503: a node may die with the request in flight,
/// and only the key makes the retry safe.
async fn publish_with_key(http: &HttpClient, base: &str, channel: &str, data: &str) -> String {
    let url = format!("{base}/v1/channels/{channel}/events");
    let key = format!("{channel}-{data}");
    let body = Bytes::from(serde_json::json!({ "data": data }).to_string());
    for _ in 0..100 {
        let headers = [
            ("content-type", "application/json"),
            ("idempotency-key", key.as_str()),
        ];
        match http
            .request(Method::POST, &url, &headers, body.clone())
            .await
        {
            Ok(res) if res.status == StatusCode::CREATED => {
                return json(&res.body)["id"].as_str().unwrap().to_owned();
            }
            Ok(res) if res.status.is_server_error() => {}
            Ok(res) => panic!("publish {data}: {} {}", res.status, res.text()),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("publish {data} kept failing");
}

/// The number of open streams each node reports on its admin `/readyz`.
async fn streams_per_node(http: &HttpClient, nodes: &[TestProcess]) -> Vec<Option<u64>> {
    let mut out = Vec::new();
    for node in nodes {
        let url = format!("http://{}/readyz", node.admin.unwrap());
        out.push(match http.get(&url).await {
            Ok(res) => json(&res.body)["streams"].as_u64(),
            Err(_) => None, // a dead node
        });
    }
    out
}

/// Which node holds the one stream (bounded wait: the count is updated as the stream opens).
async fn node_with_the_stream(http: &HttpClient, nodes: &[TestProcess]) -> usize {
    let deadline = Instant::now() + WAIT;
    loop {
        let counts = streams_per_node(http, nodes).await;
        if let Some(i) = counts.iter().position(|&c| c == Some(1)) {
            return i;
        }
        assert!(
            Instant::now() < deadline,
            "no node reports the stream: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A stream through nginx, sent as a browser would (with `Accept-Encoding: gzip`, so that
/// compression of event streams would show).
async fn open_stream(url: &str) -> Connection {
    let opts = ConnectOptions {
        headers: vec![("accept-encoding".into(), "gzip, deflate, br".into())],
        ..ConnectOptions::default()
    };
    let conn = Connection::open(url, &opts).await.unwrap();
    assert_eq!(conn.status(), StatusCode::OK);
    conn
}

#[tokio::test]
async fn events_pass_through_nginx_unbuffered() {
    let redis = RedisServer::start(false).await;
    let nodes = cluster(&redis, 3, &[("SSEGATE_HEARTBEAT_INTERVAL", "300ms")]).await;
    let lb = Nginx::start(&nodes).await;
    let http = HttpClient::new();

    let mut sub = open_stream(&lb.url("/v1/channels/lat/events")).await;
    let headers = sub.headers();
    assert_eq!(headers["content-type"], "text/event-stream");
    assert!(
        headers.get("content-encoding").is_none(),
        "an event stream must not be compressed: {headers:?}"
    );
    opening_id(&mut sub).await;

    // 100 ms is a correctness bound, not a benchmark: on loopback the whole path (publish
    // through nginx, Redis, the node, nginx again) takes a few milliseconds, while a proxy
    // that buffers or compresses holds a small event until kilobytes more arrive or the
    // stream ends (seconds, or never). Each event is timed from before its publish is sent
    // to its arrival, with publish and receive raced so that an event arriving before the
    // 201 is timed correctly.
    let base = lb.url("");
    for i in 0..10 {
        let data = format!("e{i}");
        let start = Instant::now();
        let (id, (got, elapsed)) =
            tokio::join!(publish_with_key(&http, &base, "lat", &data), async {
                let got = events(&mut sub, 1).await.remove(0);
                (got, start.elapsed())
            });
        assert_eq!(
            (got.id.as_str(), got.data.as_str()),
            (id.as_str(), data.as_str())
        );
        assert!(
            elapsed < Duration::from_millis(100),
            "event {i} took {elapsed:?} through nginx"
        );
    }

    // Idle streams carry the heartbeat comments through the proxy too (they are what keeps
    // proxies and load balancers from timing the stream out).
    loop {
        match next_item(&mut sub).await {
            Some(Item::Comment(c)) if c.trim() == "hb" => break,
            Some(Item::Comment(_)) => {}
            other => panic!("expected a heartbeat, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_killed_node_s_subscriber_resumes_through_nginx_with_nothing_lost_or_repeated() {
    const EVENTS: usize = 300;
    let redis = RedisServer::start(false).await;
    let nodes = cluster(&redis, 3, &[]).await;
    let lb = Nginx::start(&nodes).await;
    let http = HttpClient::new();

    // One browser-like client, through nginx only: which node serves it is nginx's choice.
    let mut source = EventSource::new(
        vec![lb.url("/v1/channels/feed/events")],
        ConnectOptions::default(),
    )
    .with_retry_override(Some(Duration::from_millis(50)));
    loop {
        match tokio::time::timeout(WAIT, source.next()).await.unwrap() {
            Ok(SourceItem::Item(Item::LastEventId(_))) => break,
            Ok(_) => {}
            Err(e) => panic!("subscribe failed: {e}"),
        }
    }
    let serving = node_with_the_stream(&http, &nodes).await;

    // The publisher also goes through nginx, with an Idempotency-Key per event: the node
    // that nginx picks for a publish may be the one that dies.
    let base = lb.url("");
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0usize);
    let publisher = tokio::spawn(async move {
        let http = HttpClient::new();
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        for i in 0..EVENTS {
            tick.tick().await;
            publish_with_key(&http, &base, "feed", &i.to_string()).await;
            progress_tx.send_replace(i + 1);
        }
    });

    let mut got: Vec<usize> = Vec::with_capacity(EVENTS);
    let mut killed = false;
    while got.len() < EVENTS {
        // A third of the way in, crash the subscriber's node.
        if !killed && *progress.borrow_and_update() >= EVENTS / 3 {
            nodes[serving].signal("KILL");
            killed = true;
        }
        let item = tokio::time::timeout(WAIT, source.next())
            .await
            .expect("subscriber stalled");
        match item {
            Ok(SourceItem::Item(Item::Event(e))) => {
                assert_ne!(e.event, "sync-required", "no gap expected");
                got.push(e.data.parse().unwrap());
            }
            Ok(_) => {}
            Err(e) => panic!("subscriber failed: {e}"),
        }
    }
    publisher.await.unwrap();
    assert!(killed, "the node was killed mid-stream");
    assert_eq!(
        got,
        (0..EVENTS).collect::<Vec<_>>(),
        "every event exactly once, in order"
    );
    assert!(source.reconnects() >= 1, "the client reconnected");
    // It is now served by one of the survivors.
    let counts = streams_per_node(&http, &nodes).await;
    assert_eq!(counts[serving], None, "the killed node is gone");
    assert_eq!(counts.iter().flatten().sum::<u64>(), 1, "{counts:?}");
}

#[tokio::test]
async fn a_connection_attempt_while_a_node_is_down_goes_to_another() {
    let redis = RedisServer::start(false).await;
    let mut nodes = cluster(&redis, 3, &[]).await;
    let lb = Nginx::start(&nodes).await;
    let http = HttpClient::new();
    let dead: SocketAddr = nodes[0].addr;
    nodes[0].signal("KILL");
    nodes[0].wait_exit().await;

    // least_conn sends a new connection to the node with the fewest open streams, and the
    // dead node has none: once the live ones hold a stream each, nginx must try the dead
    // one, be refused, and move the request on (proxy_next_upstream). Every attempt has to
    // succeed all the same.
    let mut subs = Vec::new();
    for _ in 0..4 {
        let mut conn = open_stream(&lb.url("/v1/channels/down/events")).await;
        opening_id(&mut conn).await;
        subs.push(conn);
    }
    // Publishes too: a POST whose connection was refused was never sent, so nginx may
    // move it on like a GET.
    let mut ids = Vec::new();
    for i in 0..3 {
        let res = http
            .post(
                &lb.url("/v1/channels/down/events"),
                "application/json",
                format!("{{\"data\":\"d{i}\"}}"),
            )
            .await
            .unwrap();
        assert_eq!(res.status, StatusCode::CREATED, "{}", res.text());
        ids.push(json(&res.body)["id"].as_str().unwrap().to_owned());
    }
    for conn in &mut subs {
        let got: Vec<String> = events(conn, 3).await.into_iter().map(|e| e.id).collect();
        assert_eq!(got, ids);
    }
    let log = lb.error_log();
    assert!(
        log.contains("Connection refused") && log.contains(&dead.to_string()),
        "nginx tried the dead node {dead} and moved on; error log:\n{log}"
    );
}

/// While Redis is down every node answers 503 to readiness, history and publishes. None of
/// that may make nginx count the nodes as failed: the next subscriber would get nginx's
/// 502 ("no live upstreams"), on which a browser's EventSource gives up for good, instead
/// of a node's retry-only stream.
#[tokio::test]
async fn a_redis_outage_does_not_take_the_nodes_out_of_nginx() {
    let mut redis = RedisServer::start(false).await;
    let nodes = cluster(&redis, 2, &[]).await;
    let lb = Nginx::start(&nodes).await;
    let http = HttpClient::new();
    redis.stop().await;

    for _ in 0..3 {
        for path in ["/readyz", "/v1/channels/out/history"] {
            let res = http.get(&lb.url(path)).await.unwrap();
            assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        }
        let res = http
            .post(
                &lb.url("/v1/channels/out/events"),
                "application/json",
                r#"{"data": "x"}"#,
            )
            .await
            .unwrap();
        assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
    }
    // A subscriber still reaches a node, which tells it when to come back and ends.
    let mut conn = open_stream(&lb.url("/v1/channels/out/events")).await;
    assert!(matches!(next_item(&mut conn).await, Some(Item::Retry(_))));
    assert_eq!(next_item(&mut conn).await, None);
    let log = lb.error_log();
    assert!(!log.contains("no live upstreams"), "{log}");
}

#[tokio::test]
async fn the_demo_page_and_the_publish_api_work_through_nginx() {
    let redis = RedisServer::start(false).await;
    let nodes = cluster(&redis, 2, &[]).await;
    let lb = Nginx::start(&nodes).await;
    let http = HttpClient::new();

    // The demo page, uncompressed and (for a browser that asks) gzip-compressed.
    let page = http.get(&lb.url("/")).await.unwrap();
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert!(page.text().contains("EventSource"));
    let gz = http
        .request(
            Method::GET,
            &lb.url("/"),
            &[("accept-encoding", "gzip")],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(gz.header("content-encoding"), Some("gzip"));
    assert!(gz.body.len() < page.body.len());

    // Health through the proxy, and nginx's own.
    let ready = http.get(&lb.url("/readyz")).await.unwrap();
    assert_eq!(ready.status, StatusCode::OK);
    assert!(
        json(&ready.body)["node_id"]
            .as_str()
            .unwrap()
            .starts_with("node")
    );
    let own = http.get(&lb.url("/lb-healthz")).await.unwrap();
    assert_eq!((own.status, own.text().as_str()), (StatusCode::OK, "ok\n"));

    // The publish API: JSON, a form (what curl -d sends), a batch; then history.
    let mut sub = open_stream(&lb.url("/v1/events?channels=api,other")).await;
    opening_id(&mut sub).await;
    let res = http
        .post(
            &lb.url("/v1/channels/api/events"),
            "application/json",
            r#"{"data": {"n": 1}, "event": "update"}"#,
        )
        .await
        .unwrap();
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text());
    assert_eq!(json(&res.body)["channel"], "api");
    let res = http
        .post(
            &lb.url("/v1/channels/api/events"),
            "application/x-www-form-urlencoded",
            "data=plain+text",
        )
        .await
        .unwrap();
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text());
    let res = http
        .post(
            &lb.url("/v1/publish"),
            "application/json",
            r#"{"events": [{"channel": "api", "data": "b0"}, {"channel": "other", "data": "b1"}]}"#,
        )
        .await
        .unwrap();
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text());
    assert_eq!(json(&res.body)["ids"].as_array().unwrap().len(), 2);
    // Order holds per channel (across channels, events interleave as they come).
    let got: Vec<(String, String)> = events(&mut sub, 4)
        .await
        .into_iter()
        .map(|e| (e.event, e.data))
        .collect();
    let (other, api): (Vec<_>, Vec<_>) = got.into_iter().partition(|(_, data)| data == "b1");
    assert_eq!(
        api,
        [
            ("update".into(), r#"{"n":1}"#.into()),
            ("message".into(), "plain text".into()),
            ("message".into(), "b0".into()),
        ]
    );
    assert_eq!(other, [("message".into(), "b1".into())]);
    let history = http.get(&lb.url("/v1/channels/api/history")).await.unwrap();
    assert_eq!(history.status, StatusCode::OK);
    assert_eq!(json(&history.body)["events"].as_array().unwrap().len(), 3);

    // Errors are the gateway's own JSON, passed through unchanged. An oversized body is
    // refused by nginx itself (see ssegate-proxy.conf), in the same format.
    let res = http
        .post(&lb.url("/v1/channels/api/events"), "application/json", "{")
        .await
        .unwrap();
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert!(json(&res.body)["error"]["code"].is_string());
    let big = format!("{{\"data\": \"{}\"}}", "x".repeat(1_200_000));
    let res = http
        .post(&lb.url("/v1/publish"), "application/json", big)
        .await
        .unwrap();
    assert_eq!(res.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(json(&res.body)["error"]["code"], "body_too_large");
}

/// A rolling restart: node1 goes down and a stream attempt finds it refusing (with nginx's
/// default max_fails=1 that marks it failed until a request to it *finishes*, which a
/// stream never does), node1 comes back, then node2 goes down. A new `EventSource` must
/// reach node1 at once, not get nginx's 502 ("no live upstreams").
#[tokio::test]
async fn a_restarted_node_takes_streams_again_at_once() {
    let redis = RedisServer::start(false).await;
    let mut nodes = cluster(&redis, 2, &[]).await;
    let lb = Nginx::start(&nodes).await;
    let node1 = nodes[0].addr.to_string();
    nodes[0].signal("KILL");
    nodes[0].wait_exit().await;
    // Two streams: least_conn sends the second to the dead node (it has none), which
    // refuses; nginx moves it on.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut conn = open_stream(&lb.url("/v1/channels/roll/events")).await;
        opening_id(&mut conn).await;
        held.push(conn);
    }
    assert!(lb.error_log().contains(&node1), "nginx tried the dead node");
    nodes[0] = spawn_process(&[
        ("SSEGATE_REDIS_URL", &redis.url()),
        ("SSEGATE_LISTEN", &node1),
        ("SSEGATE_NODE_ID", "node1"),
    ])
    .await;
    nodes[1].signal("KILL");
    nodes[1].wait_exit().await;
    drop(held);
    // Well within the default fail_timeout (10 s) of a node marked failed.
    let mut conn = open_stream(&lb.url("/v1/channels/roll/events")).await;
    opening_id(&mut conn).await;
    let log = lb.error_log();
    assert!(!log.contains("no live upstreams"), "{log}");
}

/// With no node reachable, nginx answers a stream with what a full node sends (`200`,
/// only a `retry:`), so `EventSource` comes back later instead of closing for good; a
/// publish gets a JSON error, never a `2xx`.
#[tokio::test]
async fn with_no_node_up_a_stream_is_told_to_retry_and_a_publish_gets_an_error() {
    let redis = RedisServer::start(false).await;
    let mut nodes = cluster(&redis, 2, &[]).await;
    let lb = Nginx::start(&nodes).await;
    for node in &mut nodes {
        node.signal("KILL");
        node.wait_exit().await;
    }
    for path in ["/v1/channels/none/events", "/v1/events?channels=none"] {
        let mut conn = open_stream(&lb.url(path)).await;
        let ct = conn
            .headers()
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap();
        assert!(ct.starts_with("text/event-stream"), "{path}: {ct}");
        assert_eq!(
            next_item(&mut conn).await,
            Some(Item::Retry(3000)),
            "{path}"
        );
        assert_eq!(next_item(&mut conn).await, None, "{path}");
    }
    let res = HttpClient::new()
        .post(
            &lb.url("/v1/channels/none/events"),
            "application/json",
            r#"{"data": "x"}"#,
        )
        .await
        .unwrap();
    assert_eq!(res.status, StatusCode::BAD_GATEWAY, "{}", res.text());
    assert_eq!(
        json(&res.body)["error"]["code"],
        "no_node",
        "{}",
        res.text()
    );
}
