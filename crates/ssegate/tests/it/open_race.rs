//! A stream starts at its response head: an event published the moment a client has the
//! `200` head (when a browser's `EventSource` fires `open`) reaches it.
//!
//! Every round opens a stream and, as soon as the head is in, publishes one event with a
//! unique text; the round passes once that event arrives. Nothing here waits for the
//! id-only opening frame first: that is the blind spot through which cluster mode lost
//! these events (the stream's start was read from Redis after the head went out, so an
//! event published in between counted as "before" the stream). Rounds run many at a
//! time, on fresh channels (the node is not yet subscribed to them: the pub/sub race) and
//! on a channel another stream already holds (the live path), for both stream routes,
//! over the lean HTTP/1.1 front, hyper's h2c and HTTP/1.0, with both brokers, and
//! through nginx.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::StatusCode;
use ssegate_client::{ConnectOptions, Connection, HttpClient, Item, Protocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::cluster::cluster;
use crate::helpers::{WAIT, spawn_app};
use crate::lb::Nginx;
use crate::redis_server::RedisServer;

/// Rounds per case, and how many run at once.
const ROUNDS: usize = 48;
const PARALLEL: usize = 16;

/// How a round's stream is opened.
#[derive(Debug, Clone, Copy)]
enum Wire {
    /// HTTP/1.1: the lean front.
    Http11,
    /// h2c: hyper.
    H2c,
    /// HTTP/1.0: hyper, close-delimited.
    Http10,
}

/// Which route a round subscribes through.
#[derive(Debug, Clone, Copy)]
enum Route {
    One,
    Many,
}

impl Route {
    fn path(self, channel: &str) -> String {
        match self {
            Self::One => format!("/v1/channels/{channel}/events"),
            // A second channel, so that the composite path is exercised.
            Self::Many => format!("/v1/events?channels={channel},{channel}-other"),
        }
    }
}

/// A stream whose head has arrived.
enum Open {
    Client(Box<Connection>),
    Raw(TcpStream, Vec<u8>),
}

impl Open {
    async fn connect(base: &str, path: &str, wire: Wire) -> Self {
        match wire {
            Wire::Http11 | Wire::H2c => {
                let opts = ConnectOptions {
                    protocol: match wire {
                        Wire::H2c => Protocol::Http2,
                        _ => Protocol::Http1,
                    },
                    ..ConnectOptions::default()
                };
                let conn = Connection::open(&format!("{base}{path}"), &opts)
                    .await
                    .unwrap();
                assert_eq!(conn.status(), StatusCode::OK);
                Self::Client(Box::new(conn))
            }
            Wire::Http10 => {
                let addr = base.trim_start_matches("http://");
                let mut tcp = TcpStream::connect(addr).await.unwrap();
                let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
                tcp.write_all(req.as_bytes()).await.unwrap();
                // Read until the head is complete; whatever of the body came with it stays.
                let mut buf = Vec::new();
                loop {
                    let mut chunk = [0u8; 4096];
                    let n = tcp.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "closed before the head");
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(end) = find(&buf, b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        // nginx answers an HTTP/1.0 request as HTTP/1.1, without chunks.
                        assert!(
                            head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
                            "{head}"
                        );
                        buf.drain(..end + 4);
                        return Self::Raw(tcp, buf);
                    }
                }
            }
        }
    }

    /// Reads until an event with `data` arrives; false if the stream ended first.
    async fn saw(&mut self, data: &str) -> bool {
        match self {
            Self::Client(conn) => loop {
                match conn.next_item().await.unwrap() {
                    Some(Item::Event(e)) if e.data == data => return true,
                    Some(_) => {}
                    None => return false,
                }
            },
            Self::Raw(tcp, buf) => {
                let line = format!("data: {data}\n");
                loop {
                    if find(buf, line.as_bytes()).is_some() {
                        return true;
                    }
                    let mut chunk = [0u8; 4096];
                    match tcp.read(&mut chunk).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn publish(http: &HttpClient, base: &str, channel: &str, data: &str) {
    let body = serde_json::json!({ "data": data }).to_string();
    let res = http
        .post(
            &format!("{base}/v1/channels/{channel}/events"),
            "application/json",
            Bytes::from(body),
        )
        .await
        .unwrap();
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text());
}

/// Runs the rounds of one case: streams on `sub_base`, publishes on `pub_base`. Returns
/// how many rounds never received their event (within `WAIT`).
async fn lost_rounds(
    case: &str,
    sub_base: &str,
    pub_base: &str,
    route: Route,
    wire: Wire,
) -> usize {
    let http = HttpClient::new();
    // Half of the rounds use this channel, which a stream already holds on the node.
    let held = format!("held-{case}");
    let mut keeper = Open::connect(sub_base, &Route::One.path(&held), Wire::Http11).await;
    let next = Arc::new(AtomicUsize::new(0));
    let lost = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..PARALLEL {
        let (next, lost, http) = (next.clone(), lost.clone(), http.clone());
        let (sub_base, pub_base, case, held) = (
            sub_base.to_owned(),
            pub_base.to_owned(),
            case.to_owned(),
            held.clone(),
        );
        tasks.spawn(async move {
            loop {
                let round = next.fetch_add(1, Ordering::Relaxed);
                if round >= ROUNDS {
                    return;
                }
                let channel = if round % 2 == 0 {
                    format!("fresh-{case}-{round}")
                } else {
                    held.clone()
                };
                let data = format!("{case} round {round}");
                let mut open = Open::connect(&sub_base, &route.path(&channel), wire).await;
                // The head is in: publish at once, as a page does in `onopen`.
                publish(&http, &pub_base, &channel, &data).await;
                let got = tokio::time::timeout(WAIT, open.saw(&data)).await;
                if !matches!(got, Ok(true)) {
                    lost.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while let Some(res) = tasks.join_next().await {
        res.unwrap();
    }
    // The keeper saw every event of its channel, none twice. (Rounds publish in parallel,
    // so their order is not the rounds' order; ordering is the history checker's.)
    let Open::Client(conn) = &mut keeper else {
        unreachable!("the keeper speaks HTTP/1.1")
    };
    let mut got = Vec::new();
    while got.len() < ROUNDS / 2 {
        match tokio::time::timeout(WAIT, conn.next_item()).await {
            Ok(Ok(Some(Item::Event(e)))) => got.push(e.data),
            Ok(Ok(Some(_))) => {}
            other => panic!("{case}: keeper stream after {got:?}: {other:?}"),
        }
    }
    got.sort();
    let mut want: Vec<String> = (0..ROUNDS)
        .filter(|r| r % 2 == 1)
        .map(|r| format!("{case} round {r}"))
        .collect();
    want.sort();
    assert_eq!(got, want, "{case}: what the keeper saw");
    lost.load(Ordering::Relaxed)
}

/// Every route and wire against one subscribe base and one publish base.
async fn every_case(label: &str, sub_base: &str, pub_base: &str) {
    let mut report = Vec::new();
    for route in [Route::One, Route::Many] {
        for wire in [Wire::Http11, Wire::H2c, Wire::Http10] {
            let case = format!("{label}-{route:?}-{wire:?}").to_lowercase();
            let lost = lost_rounds(&case, sub_base, pub_base, route, wire).await;
            report.push((case, lost));
        }
    }
    let failed: Vec<_> = report.iter().filter(|(_, lost)| *lost > 0).collect();
    assert!(
        failed.is_empty(),
        "events published right after the head were lost ({ROUNDS} rounds per case): {failed:?}"
    );
}

#[tokio::test]
async fn embedded_broker_delivers_what_is_published_at_the_head() {
    let app = spawn_app().await;
    let base = app.url("");
    every_case("memory", &base, &base).await;
}

#[tokio::test]
async fn a_cluster_delivers_what_is_published_at_the_head_on_either_node() {
    let redis = RedisServer::start(false).await;
    let nodes = cluster(&redis, 2, &[]).await;
    let (a, b) = (nodes[0].url(""), nodes[1].url(""));
    every_case("same-node", &a, &a).await;
    every_case("other-node", &a, &b).await;
}

#[tokio::test]
async fn a_cluster_delivers_what_is_published_at_the_head_through_nginx() {
    let redis = RedisServer::start(false).await;
    let nodes = cluster(&redis, 2, &[]).await;
    let lb = Nginx::start(&nodes).await;
    let base = lb.url("");
    // nginx speaks HTTP/1.1 to the nodes whatever the client speaks; h2c is not offered
    // on its plain listener, so the client side is HTTP/1.1 and HTTP/1.0 here.
    for route in [Route::One, Route::Many] {
        for wire in [Wire::Http11, Wire::Http10] {
            let case = format!("nginx-{route:?}-{wire:?}").to_lowercase();
            let lost = lost_rounds(&case, &base, &base, route, wire).await;
            assert_eq!(lost, 0, "{case}: {lost} of {ROUNDS} events lost");
        }
    }
}
