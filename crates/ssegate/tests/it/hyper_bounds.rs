//! Streams served by hyper (h2c, and HTTP/1.1 connections that began with another
//! request) are bounded per connection like the lean front's: a client that opens many
//! streams and reads none pins at most the documented bytes per stream, and an h2
//! connection carries at most the documented number of streams.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::spawn_process;
use crate::replay_bounds::{publish_big, settled};

#[tokio::test]
async fn one_h2c_connection_of_unread_streams_is_bounded() {
    let node = spawn_process(&[]).await;
    publish_big(&node).await;
    let before = node.rss_kib();
    let tcp = TcpStream::connect(node.addr).await.unwrap();
    let (mut tx, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    let driver = tokio::spawn(conn);
    // More streams than one connection may carry: the rest wait for a free one, as an h2
    // client queues them.
    const OPENED: usize = 150;
    let mut pending = Vec::new();
    for _ in 0..OPENED {
        let req = Request::get("/v1/channels/big/events?lastEventId=0")
            .header("host", node.addr.to_string())
            .body(Empty::<Bytes>::new())
            .unwrap();
        let mut tx = tx.clone();
        pending.push(tokio::spawn(async move { tx.send_request(req).await }));
    }
    tx.ready().await.unwrap();
    // The responses that came are held, never read.
    // Those beyond the limit never get a head: one deadline for all of them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut held = Vec::new();
    for p in pending {
        if let Ok(Ok(Ok(res))) = tokio::time::timeout_at(deadline, p).await {
            assert_eq!(res.status(), StatusCode::OK);
            held.push(res);
        }
    }
    let served = held.len() as u64;
    assert_eq!(served, 100, "one h2 connection carries at most 100 streams");
    settled(&node, served).await;
    let grown = node.rss_kib().saturating_sub(before);
    // Per stream: one replay chunk (128 KiB plus an event) and hyper's 16 KiB send
    // buffer; allow for allocator slack. (Before these bounds: ~550 KiB per stream, and
    // every stream the client asked for.)
    assert!(
        grown < 40 * 1024,
        "{served} unread h2 streams on one connection grew the node by {grown} KiB"
    );
    drop(held);
    driver.abort();
}

#[tokio::test]
async fn an_unread_stream_after_another_request_is_bounded() {
    let node = spawn_process(&[]).await;
    publish_big(&node).await;
    let before = node.rss_kib();
    const CONNS: usize = 40;
    let mut socks = Vec::new();
    for _ in 0..CONNS {
        let mut s = TcpStream::connect(node.addr).await.unwrap();
        // A first request makes hyper serve the connection; then a stream, never read.
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        s.write_all(b"GET /v1/channels/big/events?lastEventId=0 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        socks.push(s);
    }
    settled(&node, CONNS as u64).await;
    let per_stream = node.rss_kib().saturating_sub(before) / CONNS as u64;
    assert!(
        per_stream < 512,
        "each unread stream served by hyper grew the node by {per_stream} KiB"
    );
    drop(socks);
}

#[tokio::test]
async fn an_idle_h2c_connection_is_closed() {
    let app = crate::helpers::spawn_app_with(|s| {
        s.header_read_timeout = Duration::from_millis(500);
    })
    .await;
    let tcp = TcpStream::connect(app.addr).await.unwrap();
    let (mut tx, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    let driver = tokio::spawn(conn);
    let req = Request::get("/healthz")
        .header("host", app.addr.to_string())
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = tx.send_request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    drop(res);
    // Nothing more is sent: the node closes the connection (hyper alone never would,
    // and the connection would hold its descriptor and its slot of the cap for good).
    let ended = tokio::time::timeout(crate::helpers::WAIT, driver).await;
    assert!(ended.is_ok(), "an idle h2c connection stayed open");
    app.stop().await;
}
