//! A tiny scripted HTTP/1.1 server for the unit tests: every accepted
//! connection gets the next scripted [`Reply`], written as raw bytes.

use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// What to do with one accepted connection.
#[derive(Debug, Clone)]
pub(crate) enum Reply {
    /// Write these chunks (head included) one by one, then close.
    Raw(Vec<Vec<u8>>),
    /// Read the request and never answer (the socket stays open).
    Hang,
}

/// A `200 text/event-stream` response with `body`, closed at the end.
pub(crate) fn sse(body: &str) -> Reply {
    Reply::Raw(vec![
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\r\n"
            .to_vec(),
        body.as_bytes().to_vec(),
    ])
}

/// A response with the given status line, content type and body.
pub(crate) fn status(status: &str, content_type: &str, body: &str) -> Reply {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    Reply::Raw(vec![head.into_bytes(), body.as_bytes().to_vec()])
}

/// A request the server received.
#[derive(Debug)]
pub(crate) struct Seen {
    pub(crate) head: String,
    pub(crate) at: Instant,
}

impl Seen {
    /// The request line, e.g. `GET /x HTTP/1.1`.
    pub(crate) fn request_line(&self) -> &str {
        self.head.lines().next().unwrap_or_default()
    }

    /// The first header called `name` (case-insensitive).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// A running scripted server; aborted when dropped.
#[derive(Debug)]
pub(crate) struct TestServer {
    pub(crate) url: String,
    pub(crate) seen: mpsc::UnboundedReceiver<Seen>,
    task: JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    /// Waits for the next request to arrive.
    pub(crate) async fn next_request(&mut self) -> Seen {
        self.seen.recv().await.expect("server task ended")
    }
}

/// Serves `replies` to successive connections on `path`, then stops listening.
pub(crate) async fn serve(path: &str, replies: Vec<Reply>) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}{path}", listener.local_addr().unwrap());
    let (tx, seen) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut hung = Vec::new();
        for reply in replies {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let Some(head) = read_head(&mut stream).await else {
                continue;
            };
            let _ = tx.send(Seen {
                head,
                at: Instant::now(),
            });
            match reply {
                Reply::Raw(chunks) => {
                    for chunk in chunks {
                        if stream.write_all(&chunk).await.is_err() {
                            break;
                        }
                        let _ = stream.flush().await;
                    }
                    let _ = stream.shutdown().await;
                }
                Reply::Hang => hung.push(stream),
            }
        }
        drop(listener);
        std::future::pending::<()>().await;
    });
    TestServer { url, seen, task }
}

async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > 65536 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// A URL on which nothing listens (connections are refused).
pub(crate) async fn dead_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/events")
}
