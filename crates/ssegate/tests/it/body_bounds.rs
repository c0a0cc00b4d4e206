//! Request bodies are bounded (docs/security.md, "Limits"): a body that does not arrive in
//! time is cut, and the bytes of all bodies being read are held to a node-wide budget.
//! (Descriptors: `descriptor_bounds`.)
//!
//! Real processes, raw sockets on loopback, every loop bounded.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use ssegate_client::{ConnectOptions, Connection, HttpClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::helpers::{TestProcess, WAIT, events, publish_batch, spawn_process};

const MIB: usize = 1024 * 1024;

/// A raw request head for a text publish declaring `len` bytes of body.
fn publish_head(channel: &str, len: usize) -> String {
    format!(
        "POST /v1/channels/{channel}/events HTTP/1.1\r\nHost: x\r\n\
         Content-Type: text/plain\r\nContent-Length: {len}\r\n\r\n"
    )
}

/// Writes `n` bytes of `a`s.
async fn write_filler(s: &mut TcpStream, mut n: usize) -> std::io::Result<()> {
    let chunk = vec![b'a'; 64 * 1024];
    while n > 0 {
        let k = n.min(chunk.len());
        s.write_all(&chunk[..k]).await?;
        n -= k;
    }
    Ok(())
}

/// One response read off a raw socket.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) head: String,
    pub(crate) body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Reads one complete response (head and a `Content-Length` body), or `None` if the
/// connection ends first or `within` passes. `buf` keeps what was read past it.
async fn read_answer(s: &mut TcpStream, buf: &mut Vec<u8>, within: Duration) -> Option<Answer> {
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                let len = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.trim()
                            .eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                    buf.drain(..end + 4 + len);
                    let status = head.split_whitespace().nth(1)?.parse().ok()?;
                    return Some(Answer { status, head, body });
                }
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(within, read).await.ok().flatten()
}

/// Whether the node closes the connection within `within` (reading and dropping
/// anything it still sends).
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut chunk = [0u8; 4096];
    let closed = async {
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, closed).await.is_ok()
}

/// `GET /healthz` on `addr` with a fresh connection, within `within`.
pub(crate) async fn healthz(addr: SocketAddr, within: Duration) -> Result<(), String> {
    let probe = async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::new();
        match read_answer(&mut s, &mut buf, within).await {
            Some(a) if a.status == 200 => Ok(()),
            other => Err(format!("answer: {other:?}")),
        }
    };
    tokio::time::timeout(within, probe)
        .await
        .unwrap_or_else(|_| Err(format!("no answer in {within:?}")))
}

/// A publisher on one keep-alive connection, opened before a flood.
pub(crate) struct RawPublisher {
    s: TcpStream,
    buf: Vec<u8>,
}

impl RawPublisher {
    pub(crate) async fn connect(addr: SocketAddr) -> Self {
        let s = TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        Self { s, buf: Vec::new() }
    }

    /// Publishes `data` as text and reads the answer.
    pub(crate) async fn publish(&mut self, channel: &str, data: &str) -> Answer {
        let req = format!("{}{data}", publish_head(channel, data.len()));
        self.s.write_all(req.as_bytes()).await.unwrap();
        read_answer(&mut self.s, &mut self.buf, WAIT)
            .await
            .expect("the publisher's connection is answered")
    }
}

/// Publishes `0..n` to `channel` through a pooled client, retrying a publish refused as
/// `overloaded` (bounded), and checks that every subscriber gets all of them, in order.
async fn publish_and_check(node: &TestProcess, channel: &str, n: usize, subs: &mut [Connection]) {
    let http = HttpClient::new();
    for i in 0..n {
        let mut tries = 0;
        loop {
            let res = http
                .post(
                    &node.url(&format!("/v1/channels/{channel}/events")),
                    "application/json",
                    Bytes::from(format!("{{\"data\":\"{i}\"}}")),
                )
                .await
                .unwrap();
            if res.status == StatusCode::CREATED {
                break;
            }
            assert_eq!(
                res.status,
                StatusCode::SERVICE_UNAVAILABLE,
                "{}",
                res.text()
            );
            assert!(res.text().contains("overloaded"), "{}", res.text());
            tries += 1;
            assert!(tries < 200, "publish {i} refused for too long");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for c in subs {
        let got: Vec<usize> = events(c, n)
            .await
            .iter()
            .map(|e| e.data.parse().unwrap())
            .collect();
        assert_eq!(got, (0..n).collect::<Vec<_>>(), "no event lost or repeated");
    }
}

pub(crate) async fn subscribers(
    node_url: impl Fn(&str) -> String,
    channel: &str,
    n: usize,
) -> Vec<Connection> {
    let mut subs = Vec::new();
    for _ in 0..n {
        let c = Connection::open(
            &node_url(&format!("/v1/channels/{channel}/events")),
            &ConnectOptions::default(),
        )
        .await
        .unwrap();
        assert_eq!(c.status(), StatusCode::OK);
        subs.push(c);
    }
    subs
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_is_cut_with_408() {
    let node = spawn_process(&[("SSEGATE_BODY_READ_TIMEOUT", "1s")]).await;
    let addr = node.addr;
    let mut cases = JoinSet::new();
    // A declared body that stalls after a few bytes.
    cases.spawn(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(publish_head("cut", 1000).as_bytes())
            .await
            .unwrap();
        s.write_all(b"0123456789").await.unwrap();
        ("content-length", s, Vec::new(), None)
    });
    // A chunked body that stalls after its first chunk.
    cases.spawn(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(
            b"POST /v1/channels/cut/events HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\
              Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        )
        .await
        .unwrap();
        ("chunked", s, Vec::new(), None)
    });
    // A body that keeps coming, a byte every 100 ms: the deadline is for the whole body,
    // not for the gaps between its bytes.
    cases.spawn(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(publish_head("cut", 100).as_bytes())
            .await
            .unwrap();
        let mut buf = Vec::new();
        for _ in 0..100 {
            if s.write_all(b"x").await.is_err() {
                break;
            }
            let answer = read_answer(&mut s, &mut buf, Duration::from_millis(100)).await;
            if answer.is_some() {
                return ("drip", s, buf, answer);
            }
        }
        ("drip", s, buf, None)
    });
    let started = Instant::now();
    let mut checks = JoinSet::new();
    while let Some(res) = cases.join_next().await {
        let (what, mut s, mut buf, answer) = res.unwrap();
        checks.spawn(async move {
            let answer = match answer {
                Some(a) => a,
                None => read_answer(&mut s, &mut buf, Duration::from_secs(5))
                    .await
                    .unwrap_or_else(|| panic!("{what}: no answer within 5 s of a 1 s deadline")),
            };
            let took = started.elapsed();
            assert_eq!(answer.status, 408, "{what}: {answer:?}");
            assert!(
                answer.body.contains("\"body_timeout\""),
                "{what}: {answer:?}"
            );
            assert_eq!(
                answer.header("connection"),
                Some("close"),
                "{what}: {answer:?}"
            );
            assert!(
                took >= Duration::from_millis(900),
                "{what}: cut early, {took:?}"
            );
            assert!(
                closed_within(&mut s, Duration::from_secs(5)).await,
                "{what}: the connection is closed after the 408"
            );
        });
    }
    while let Some(res) = checks.join_next().await {
        res.unwrap();
    }
    // Nothing of it was published, and the node serves normally.
    let mut publisher = RawPublisher::connect(node.addr).await;
    let a = publisher.publish("cut", "fine").await;
    assert_eq!(a.status, 201, "{a:?}");
    let history = HttpClient::new()
        .get(&node.url("/v1/channels/cut/history"))
        .await
        .unwrap();
    let events = crate::helpers::json(&history.body)["events"].clone();
    assert_eq!(events.as_array().map(Vec::len), Some(1), "{events}");
}

/// The flood: 300 publishes that send 1 MiB minus one byte of a 1 MiB body and
/// stall. Past the byte budget they are refused at once with `503 overloaded`; the rest
/// are cut at the body deadline; the node's memory stays near the budget, both
/// `/healthz` answer throughout, and subscribers lose nothing.
#[tokio::test]
async fn a_flood_of_stalled_bodies_is_held_to_the_byte_budget() {
    const FLOOD: usize = 300;
    const BUDGET_KIB: usize = 16 * 1024 + 512; // 16 full bodies, and room for small ones
    let budget = format!("{BUDGET_KIB}KiB");
    let node = spawn_process(&[
        ("SSEGATE_MAX_BODY_BYTES_IN_FLIGHT", budget.as_str()),
        ("SSEGATE_BODY_READ_TIMEOUT", "4s"),
    ])
    .await;
    let admin = node.admin.unwrap();
    let mut subs = subscribers(|p| node.url(p), "calm", 3).await;
    let rss_before = node.rss_kib();

    let addr = node.addr;
    let (sent_tx, mut sent_rx) = tokio::sync::mpsc::channel::<()>(FLOOD);
    let mut flood = JoinSet::new();
    for _ in 0..FLOOD {
        let sent_tx = sent_tx.clone();
        flood.spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let head = publish_head("flood", MIB);
            let sent = async {
                s.write_all(head.as_bytes()).await?;
                write_filler(&mut s, MIB - 1).await
            };
            let _ = tokio::time::timeout(WAIT, sent).await;
            let _ = sent_tx.send(()).await;
            let sent_at = Instant::now();
            let mut buf = Vec::new();
            let answer = read_answer(&mut s, &mut buf, WAIT).await;
            (answer, sent_at.elapsed(), s)
        });
    }
    drop(sent_tx);
    // While the flood is on: sample the memory, ask both listeners for /healthz, publish.
    let mut rss_peak = rss_before;
    let mut sent = 0;
    let flood_started = Instant::now();
    while sent < FLOOD {
        match tokio::time::timeout(Duration::from_millis(100), sent_rx.recv()).await {
            Ok(Some(())) => sent += 1,
            Ok(None) => break,
            Err(_) => {}
        }
        rss_peak = rss_peak.max(node.rss_kib());
        assert!(
            flood_started.elapsed() < WAIT * 2,
            "the flood was sent in time"
        );
    }
    for _ in 0..10 {
        rss_peak = rss_peak.max(node.rss_kib());
        healthz(node.addr, Duration::from_secs(2))
            .await
            .expect("public /healthz answers during the flood");
        healthz(admin, Duration::from_secs(2))
            .await
            .expect("admin /healthz answers during the flood");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    publish_and_check(&node, "calm", 50, &mut subs).await;
    rss_peak = rss_peak.max(node.rss_kib());

    let growth_mib = rss_peak.saturating_sub(rss_before) / 1024;
    eprintln!(
        "stalled-body flood: RSS {} MiB before, peak {} MiB (+{growth_mib} MiB)",
        rss_before / 1024,
        rss_peak / 1024
    );
    // 16.5 MiB of budget; 300 x 1.5 MB without it.
    assert!(
        growth_mib < 96,
        "memory stays near the body budget under the flood: +{growth_mib} MiB"
    );
    let (mut refused, mut cut) = (0usize, 0usize);
    while let Some(res) = flood.join_next().await {
        let (answer, waited, _s) = res.unwrap();
        let answer = answer.expect("every flooding publish is answered");
        match answer.status {
            503 => {
                assert!(answer.body.contains("\"overloaded\""), "{answer:?}");
                assert!(answer.header("retry-after").is_some(), "{answer:?}");
                // Refused before reading: the answer does not wait for the body.
                assert!(waited < Duration::from_secs(3), "503 after {waited:?}");
                refused += 1;
            }
            408 => {
                assert!(answer.body.contains("\"body_timeout\""), "{answer:?}");
                cut += 1;
            }
            _ => panic!("a stalled body is refused or cut: {answer:?}"),
        }
    }
    eprintln!("stalled-body flood: {refused} refused (503), {cut} cut (408)");
    assert!(
        refused >= FLOOD / 2,
        "past the budget, bodies are refused: {refused}"
    );
    assert!(cut >= 1, "bodies within the budget wait for their deadline");
    // Once the flood is gone, the whole budget is free again: a batch of almost the
    // largest body is taken.
    let data = "b".repeat(60 * 1024);
    let batch: Vec<_> = (0..16)
        .map(|_| serde_json::json!({ "channel": "big", "data": data }))
        .collect();
    let len = serde_json::json!({ "events": &batch }).to_string().len();
    assert!(len > MIB - 64 * 1024 && len <= MIB);
    publish_batch(&node, batch).await;
}
