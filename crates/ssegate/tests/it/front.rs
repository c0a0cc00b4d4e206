//! The lean HTTP/1.1 front that serves streams on the socket itself, and its hand-off
//! to hyper for everything else: framing, keep-alive, client departure, odd heads.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{WAIT, json, spawn_app, spawn_app_with};

/// A raw client socket with what has been read but not yet consumed.
struct Raw {
    sock: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(addr: std::net::SocketAddr) -> Self {
        Self {
            sock: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).await.unwrap();
    }

    /// Reads more; `false` at the end of the connection.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, self.sock.read(&mut chunk))
            .await
            .expect("the node answers")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// Everything up to and including `pattern`.
    async fn until(&mut self, pattern: &[u8]) -> String {
        loop {
            if let Some(i) = self.buf.windows(pattern.len()).position(|w| w == pattern) {
                let got: Vec<u8> = self.buf.drain(..i + pattern.len()).collect();
                return String::from_utf8(got).unwrap();
            }
            let text = String::from_utf8_lossy(&self.buf).into_owned();
            assert!(self.fill().await, "closed before {pattern:?}: {text:?}");
        }
    }

    /// One response with a `content-length` body: its head and body.
    async fn response(&mut self) -> (String, Vec<u8>) {
        let head = self.until(b"\r\n\r\n").await;
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(str::to_owned)
            })
            .expect("a content-length")
            .trim()
            .parse()
            .unwrap();
        while self.buf.len() < len {
            assert!(self.fill().await, "closed inside a body");
        }
        let body = self.buf.drain(..len).collect();
        (head, body)
    }

    /// Reads to the end of the connection; what came after what was consumed.
    async fn eof(&mut self) -> Vec<u8> {
        while self.fill().await {}
        std::mem::take(&mut self.buf)
    }
}

#[tokio::test]
async fn a_stream_is_a_well_formed_chunked_response() {
    let app = spawn_app().await;
    let mut raw = Raw::connect(app.addr).await;
    raw.send(b"GET /v1/channels/wire/events HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let head = raw.until(b"\r\n\r\n").await.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    for h in [
        "content-type: text/event-stream",
        "cache-control: no-cache, no-transform",
        "x-accel-buffering: no",
        "transfer-encoding: chunked",
        "date: ",
    ] {
        assert!(head.contains(h), "{h} in {head}");
    }
    // Each chunk: its hex size line, exactly that many bytes, CRLF.
    for expect in ["retry: ", "id: "] {
        let size = raw.until(b"\r\n").await;
        let size = usize::from_str_radix(size.trim_end(), 16).unwrap();
        while raw.buf.len() < size + 2 {
            assert!(raw.fill().await);
        }
        let chunk: Vec<u8> = raw.buf.drain(..size + 2).collect();
        let chunk = String::from_utf8(chunk).unwrap();
        assert!(chunk.starts_with(expect), "{chunk:?}");
        assert!(chunk.ends_with("\n\n\r\n"), "{chunk:?}");
        if expect == "retry: " {
            // A published event arrives as the next chunk.
            app.publish("wire", "hello").await;
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn a_refused_stream_and_then_a_publish_share_one_keep_alive_connection() {
    let app = spawn_app().await;
    let mut raw = Raw::connect(app.addr).await;
    // Answered by the lean front: a malformed cursor is a 400 with a JSON body.
    raw.send(b"GET /v1/channels/k/events HTTP/1.1\r\nHost: x\r\nLast-Event-ID: nope\r\n\r\n")
        .await;
    let (head, body) = raw.response().await;
    assert!(head.starts_with("HTTP/1.1 400 "), "{head}");
    assert_eq!(json(&body)["error"]["code"], "invalid_cursor");
    // The same connection then carries a publish (hyper's) and its answer.
    let publish = r#"{"data":"kept alive"}"#;
    let req = format!(
        "POST /v1/channels/k/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{publish}",
        publish.len()
    );
    raw.send(req.as_bytes()).await;
    let (head, body) = raw.response().await;
    assert!(head.starts_with("HTTP/1.1 201 "), "{head}");
    assert_eq!(json(&body)["channel"], "k");
    app.stop().await;
}

#[tokio::test]
async fn connection_close_is_honoured() {
    let app = spawn_app().await;
    let mut raw = Raw::connect(app.addr).await;
    raw.send(b"GET /v1/channels/bad!name/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    let (head, body) = raw.response().await;
    assert!(head.starts_with("HTTP/1.1 400 "), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    assert_eq!(json(&body)["error"]["code"], "invalid_channel");
    assert!(raw.eof().await.is_empty(), "closed after the response");
    app.stop().await;
}

#[tokio::test]
async fn a_client_that_leaves_an_idle_stream_is_released_at_once() {
    // Heartbeats far away: only noticing the closed socket can release the stream.
    let app = spawn_app_with(|s| s.heartbeat_interval = Duration::from_secs(3600)).await;
    let mut raw = Raw::connect(app.addr).await;
    raw.send(b"GET /v1/channels/idle/events HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    raw.until(b"\n\n\r\n").await;
    assert_eq!(app.state.streams.open(), 1);
    drop(raw);
    tokio::time::timeout(WAIT, app.state.streams.wait_idle())
        .await
        .expect("the stream ends when its client leaves");
    app.stop().await;
}

#[tokio::test]
async fn heads_the_front_does_not_take_are_served_by_hyper() {
    let app = spawn_app().await;
    // A head past the front's buffer limit.
    let mut raw = Raw::connect(app.addr).await;
    let big = "x".repeat(20 * 1024);
    let req = format!("GET /v1/channels/big/events HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    raw.send(req.as_bytes()).await;
    let text = raw.until(b"\n\n").await.to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200 ok\r\n"), "{text}");
    assert!(text.contains("content-type: text/event-stream"), "{text}");
    assert!(text.contains("retry: "), "{text}");
    // Two pipelined requests, the second a stream: both answered, in order.
    let mut raw = Raw::connect(app.addr).await;
    raw.send(
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /v1/channels/pipe/events HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    let (head, _) = raw.response().await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let text = raw.until(b"\n\n").await.to_ascii_lowercase();
    assert!(text.contains("content-type: text/event-stream"), "{text}");
    // HTTP/1.0 has no chunked encoding: hyper answers it too.
    let mut raw = Raw::connect(app.addr).await;
    raw.send(b"GET /v1/channels/old/events HTTP/1.0\r\n\r\n")
        .await;
    let text = raw.until(b"\n\n").await.to_ascii_lowercase();
    assert!(text.starts_with("http/1.0 200 ok\r\n"), "{text}");
    assert!(!text.contains("transfer-encoding"), "{text}");
    app.stop().await;
}
