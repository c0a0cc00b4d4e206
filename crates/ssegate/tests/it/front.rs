//! The lean HTTP/1.1 front that serves streams on the socket itself, and its hand-off
//! to hyper for everything else: framing, keep-alive, client departure, odd heads.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{WAIT, built, json, spawn_app, spawn_app_with};

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
    // Publish right after the head, as a client would (never waiting for the opening
    // frame). Frames that are ready together may share a chunk.
    let id = app.publish("wire", "hello").await;
    let mut body = String::new();
    let mut chunks = 0;
    while !body.ends_with("data: hello\n\n") {
        // Each chunk: its hex size line, exactly that many bytes, CRLF.
        let size = raw.until(b"\r\n").await;
        let size = usize::from_str_radix(size.trim_end(), 16).unwrap();
        while raw.buf.len() < size + 2 {
            assert!(raw.fill().await);
        }
        let chunk: Vec<u8> = raw.buf.drain(..size + 2).collect();
        let chunk = String::from_utf8(chunk).unwrap();
        if chunks == 0 {
            assert!(chunk.starts_with("retry: "), "{chunk:?}");
        }
        assert!(chunk.ends_with("\n\n\r\n"), "{chunk:?}");
        body.push_str(&chunk[..size]);
        chunks += 1;
    }
    // The opening frame (retry + id only), then the event, as its own frame.
    let frames: Vec<&str> = body.split_terminator("\n\n").collect();
    assert_eq!(frames.len(), 2, "{body:?}");
    let opening: Vec<&str> = frames[0].lines().collect();
    assert!(opening[0].starts_with("retry: "), "{body:?}");
    assert!(opening[1].starts_with("id: "), "{body:?}");
    assert_eq!(opening.len(), 2, "{body:?}");
    assert!(
        frames[1].starts_with(&format!("id: {id}\n")),
        "the published event: {body:?}"
    );
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
    assert_eq!(app.state.lifecycle.streams.open(), 1);
    drop(raw);
    tokio::time::timeout(WAIT, app.state.lifecycle.streams.wait_idle())
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

const SECRET: &str = "a-secret-for-the-front-tests-of-32-bytes";

/// A token for every channel that expires `secs` from now. With auth on, a stream ends at
/// its token's `exp` (`token-expired`) and keeps the connection: a stream that ends by
/// itself.
fn token(secs: u64) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + secs;
    let claims = serde_json::json!({"sub": "f", "exp": exp, "ssegate": {"subscribe": ["*"]}});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn bytes_sent_during_a_stream_close_the_connection_after_it() {
    // A header timeout longer than the test's patience: a connection kept after the
    // stream would be seen waiting, not cut by the timeout.
    let app = spawn_app_with(|s| {
        s.auth = built(ssegate_server::auth::AuthSettings {
            jwt_secret: Some(SECRET.into()),
            ..Default::default()
        });
        s.header_read_timeout = WAIT * 2;
    })
    .await;
    let token = token(1);
    let mut raw = Raw::connect(app.addr).await;
    raw.send(
        format!(
            "GET /v1/channels/p/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    let head = raw.until(b"\r\n\r\n").await.to_ascii_lowercase();
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    // While the stream runs: a pipelined request, and one whose body carries another
    // request (smuggling). The stream cannot answer them, so neither may ever run.
    let inner = "POST /v1/channels/smuggled/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{\"data\":\"x\"}";
    let outer = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nPOST /v1/channels/p/events HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{inner}",
        inner.len()
    );
    raw.send(outer.as_bytes()).await;
    // The stream ends (token-expired, last chunk) and then the connection closes at once:
    // it is not kept for a next request whose first bytes were dropped (the pipelined
    // `/healthz` would wait for an answer forever).
    let end = raw.until(b"0\r\n\r\n").await;
    assert!(end.contains("event: token-expired"), "{end}");
    let rest = raw.eof().await;
    assert!(
        rest.is_empty(),
        "nothing is answered after the stream: {:?}",
        String::from_utf8_lossy(&rest)
    );
    let bearer = format!("Bearer {}", self::token(60));
    let history = app
        .request(
            http::Method::GET,
            "/v1/channels/smuggled/history",
            &[("authorization", &bearer)],
            "",
        )
        .await;
    let events = json(&history.body)["events"].as_array().unwrap().len();
    assert_eq!(events, 0, "a request smuggled during a stream never runs");
    app.stop().await;
}

#[tokio::test]
async fn a_head_handed_to_hyper_keeps_the_front_s_deadline() {
    let timeout = Duration::from_secs(2);
    let app = spawn_app_with(|s| s.header_read_timeout = timeout).await;
    let mut raw = Raw::connect(app.addr).await;
    let start = tokio::time::Instant::now();
    raw.send(b"GET /v1/channels/slow/events HTTP/1.1\r\nHost: x\r\n")
        .await;
    // Most of the timeout later, more header than the front buffers (16 KiB), still
    // unfinished: the front hands the head to hyper, which must not start a new timeout.
    tokio::time::sleep(timeout * 3 / 4).await;
    let big = format!("X-Big: {}\r\n", "x".repeat(20 * 1024));
    raw.send(big.as_bytes()).await;
    let rest = raw.eof().await;
    let cut_after = start.elapsed();
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        rest.is_empty() || rest.starts_with("HTTP/1.1 408"),
        "{rest}"
    );
    // Cut at the front's deadline, not a whole timeout after the hand-off (which would be
    // 1.75 x the timeout). The margin is for a busy machine; the bound is a correctness
    // one (the deadline), not a speed.
    assert!(
        cut_after < timeout * 3 / 2,
        "a slow head lived {cut_after:?} with a {timeout:?} header timeout"
    );
    app.stop().await;
}
