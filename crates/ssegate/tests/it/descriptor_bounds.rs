//! Descriptors are bounded (docs/security.md, "Limits"): a node sizes its descriptor
//! table for its open-files limit at start, and a connection flood on the public listener
//! cannot take the descriptors the admin listener needs.
//!
//! Real processes under `prlimit`, raw sockets on loopback, every loop bounded.

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::body_bounds::{RawPublisher, healthz, subscribers};
use crate::helpers::{TestProcess, WAIT, events, spawn_process_under};

/// A node started with a small open-files limit (`prlimit`), like a crowded host; `None`
/// where `prlimit` is missing.
async fn limited_node(nofile: u32, env: &[(&str, &str)]) -> Option<TestProcess> {
    let found = std::process::Command::new("prlimit")
        .arg("--version")
        .output()
        .is_ok();
    let limit = format!("--nofile={nofile}:{nofile}");
    if found {
        Some(spawn_process_under(&["prlimit", &limit, "--"], env).await)
    } else {
        None
    }
}

/// A node sizes its descriptor table for its open-files limit before its threads start: a
/// table that grows later, while streams arrive, stalls the accepting thread at every
/// doubling (`limits::presize_descriptor_table`). The kernel reports the size as `FDSize`.
#[tokio::test]
async fn a_node_sizes_its_descriptor_table_for_its_limit_at_start() {
    const NOFILE: u32 = 4096;
    let Some(node) = limited_node(NOFILE, &[]).await else {
        eprintln!("prlimit is not available: skipped");
        return;
    };
    let status = std::fs::read_to_string(format!("/proc/{}/status", node.pid())).unwrap();
    let size: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("FDSize:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    assert!(
        size >= NOFILE,
        "a table for {NOFILE} descriptors, holding {}: {size}",
        node.open_files()
    );
}

/// 900 connections (idle, stalled heads, stalled bodies) on the public listener of a node
/// that may hold 256 files: the admin listener keeps answering, the node never runs out
/// of descriptors, existing subscribers get every event, and the public listener serves
/// again once the flood is gone.
#[tokio::test]
async fn a_descriptor_flood_on_the_public_listener_leaves_the_admin_listener_answering() {
    const NOFILE: u32 = 256;
    const FLOOD: usize = 900;
    let Some(node) = limited_node(
        NOFILE,
        &[
            ("SSEGATE_HEADER_READ_TIMEOUT", "3s"),
            ("SSEGATE_BODY_READ_TIMEOUT", "2s"),
        ],
    )
    .await
    else {
        eprintln!("prlimit is not available: skipped");
        return;
    };
    let mut subs = subscribers(|p| node.url(p), "steady", 3).await;
    let mut publisher = RawPublisher::connect(node.addr).await;
    let mut published = 0usize;
    let a = publisher.publish("steady", &published.to_string()).await;
    assert_eq!(a.status, 201, "{a:?}");
    published += 1;

    // The flood: every third connection idle, stalled in its head, or stalled in its body,
    // each held until the end.
    let addr = node.addr;
    let (release, released) = tokio::sync::watch::channel(false);
    let connected = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut flood = JoinSet::new();
    for i in 0..FLOOD {
        let mut released = released.clone();
        let connected = connected.clone();
        flood.spawn(async move {
            let connect = tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(addr));
            let Ok(Ok(mut s)) = connect.await else {
                return;
            };
            connected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let first: &[u8] = match i % 3 {
                0 => b"",
                1 => b"GET /v1/channels/steady/events HTTP/1.1\r\nHost: x\r\nX-Slow: ",
                _ => b"POST /v1/channels/x/events HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nabc",
            };
            let _ = s.write_all(first).await;
            let _ = released.wait_for(|r| *r).await;
        });
    }

    // Hold it for a few seconds (past the head and body deadlines, so the node cycles
    // through the queued connections): admin keeps answering, events keep flowing.
    let started = Instant::now();
    let mut max_files = 0;
    let mut probes = 0;
    while started.elapsed() < Duration::from_secs(6) {
        healthz(node.admin.unwrap(), Duration::from_millis(1500))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "admin /healthz during the flood ({:?} in, {} connected): {e}; stderr:\n{}",
                    started.elapsed(),
                    connected.load(std::sync::atomic::Ordering::Relaxed),
                    node.stderr()
                )
            });
        probes += 1;
        let a = publisher.publish("steady", &published.to_string()).await;
        assert_eq!(a.status, 201, "{a:?}");
        published += 1;
        max_files = max_files.max(node.open_files());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let held = connected.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "descriptor flood: {held} connections held against a limit of {NOFILE}; {probes} admin \
         probes answered; at most {max_files} files open in the node"
    );
    assert!(
        held > NOFILE as usize,
        "the flood is larger than the limit: {held}"
    );
    release.send_replace(true);
    while let Some(res) = flood.join_next().await {
        res.unwrap();
    }

    // The public listener serves again, and the subscribers have every event.
    let back = Instant::now();
    loop {
        if healthz(node.addr, Duration::from_secs(2)).await.is_ok() {
            break;
        }
        assert!(
            back.elapsed() < WAIT,
            "the public listener serves again after the flood"
        );
    }
    for c in &mut subs {
        let got: Vec<usize> = events(c, published)
            .await
            .iter()
            .map(|e| e.data.parse().unwrap())
            .collect();
        assert_eq!(got, (0..published).collect::<Vec<_>>(), "no event lost");
    }
    let log = node.stderr();
    assert!(
        !log.contains("accept failed"),
        "the node never ran out of descriptors:\n{log}"
    );
}
