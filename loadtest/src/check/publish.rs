//! Publishers: random channels, random nodes, each publish with its own
//! `Idempotency-Key`, retried with the same key until it is acknowledged or refused.
//!
//! Retried: `504 publish_outcome_unknown` (the event may be in the stream), `503`/`429`
//! (refused before any work), a dropped connection or a timeout (unknown). A publish
//! counts as acknowledged only on a `2xx`; one that was never acknowledged but may have
//! reached Redis is `Unknown` (it may appear, at most once); one where every attempt was
//! refused is `Refused` (it must not appear).
//!
//! The prober publishes on behalf of a fresh session the moment its response head
//! arrives: that is exactly the event a gateway that fixes a stream's start position
//! only after writing the head would lose, and background traffic alone hits that
//! window only by luck.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use ssegate_client::HttpClient;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::{Instant, sleep, timeout};

use crate::check::record::{Outcome, PublishOp, Recorder, encode_data};

/// Longest wait for one publish response (the gateway answers 504 after its own
/// Redis timeout, 2 s by default).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(4);
/// A publish gives up after this many attempts or this long.
const MAX_ATTEMPTS: usize = 40;
const MAX_PUBLISH_TIME: Duration = Duration::from_secs(20);
/// Probes in flight at once; more are skipped (the probe is an extra, not the load).
const MAX_PROBES: usize = 8;

/// What publishers share.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) rec: Arc<Recorder>,
    pub(crate) run_id: String,
    pub(crate) addrs: Arc<RwLock<Vec<SocketAddr>>>,
    pub(crate) http: HttpClient,
    pub(crate) next_op: AtomicU64,
}

impl Ctx {
    fn addr(&self, i: usize) -> SocketAddr {
        let addrs = self.addrs.read().unwrap_or_else(|p| p.into_inner());
        addrs[i % addrs.len()]
    }

    fn nodes(&self) -> usize {
        self.addrs.read().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// Publishes on random channels with random pauses until `stop`.
pub(crate) async fn publisher(
    ctx: Arc<Ctx>,
    channels: Vec<String>,
    seed: u64,
    mut stop: watch::Receiver<bool>,
) {
    let mut rng = fastrand::Rng::with_seed(seed);
    while !*stop.borrow() {
        let ch = &channels[rng.usize(0..channels.len())];
        // Every fourth event is big, so that a stalled reader's socket fills up.
        let pad = if rng.u8(0..4) == 0 {
            rng.usize(0..4000)
        } else {
            0
        };
        publish(&ctx, ch, pad, false, rng.u64(..)).await;
        let pause = Duration::from_millis(rng.u64(5..60));
        tokio::select! {
            () = sleep(pause) => {}
            _ = stop.changed() => {}
        }
    }
}

/// Publishes once on a channel of every fresh session that reports its head, until the
/// senders are gone or `stop`.
pub(crate) async fn prober(
    ctx: Arc<Ctx>,
    mut heads: mpsc::Receiver<Vec<String>>,
    seed: u64,
    mut stop: watch::Receiver<bool>,
) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let permits = Arc::new(Semaphore::new(MAX_PROBES));
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let channels = tokio::select! {
            c = heads.recv() => match c { Some(c) => c, None => break },
            _ = stop.wait_for(|s| *s) => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            continue;
        };
        let ch = channels[rng.usize(0..channels.len())].clone();
        let (ctx, node_seed) = (ctx.clone(), rng.u64(..));
        tasks.spawn(async move {
            publish(&ctx, &ch, 0, true, node_seed).await;
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

/// One publish with its retries; recorded when it ends.
pub(crate) async fn publish(ctx: &Ctx, channel: &str, pad: usize, probe: bool, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let op = ctx.next_op.fetch_add(1, Ordering::Relaxed);
    let data = encode_data(&ctx.run_id, op, pad);
    let body = Bytes::from(serde_json::json!({ "data": data }).to_string());
    let key = format!("chk-{}-{op}", ctx.run_id);
    let headers = [
        ("content-type", "application/json"),
        ("idempotency-key", key.as_str()),
    ];
    let start = ctx.rec.now();
    let began = Instant::now();
    let mut attempts = Vec::new();
    let mut maybe_published = false;
    let mut rejection = None;
    let mut node = rng.usize(0..ctx.nodes().max(1));
    let outcome = loop {
        let addr = ctx.addr(node);
        let url = format!("http://{addr}/v1/channels/{channel}/events");
        let req = ctx.http.request(Method::POST, &url, &headers, body.clone());
        let t = ctx.rec.now();
        let (retry, last) = match timeout(ATTEMPT_TIMEOUT, req).await {
            Ok(Ok(r)) if r.status.is_success() => {
                let id = serde_json::from_slice::<serde_json::Value>(&r.body)
                    .ok()
                    .and_then(|v| v.get("id")?.as_str().map(str::to_owned))
                    .unwrap_or_default();
                attempts.push(format!(
                    "{} node{} {} {id}",
                    crate::check::record::secs(t),
                    node + 1,
                    r.status.as_u16()
                ));
                break Outcome::Acked { id };
            }
            Ok(Ok(r)) => {
                let code = r.status.as_u16();
                let text: String = r.text().chars().take(120).collect();
                if !matches!(code, 429 | 503 | 504) {
                    // Every request here is valid, and a retry is the same request with
                    // the same key: any other error is the gateway's fault (a 500, or a
                    // 422 idempotency_key_reused for an identical retry).
                    rejection.get_or_insert_with(|| format!("node{} {code} {text}", node + 1));
                }
                if code == 504 || code >= 500 && code != 503 {
                    // 504: the script may have run; any other 5xx says nothing either.
                    maybe_published = true;
                }
                (matches!(code, 429 | 500..=599), format!("{code} {text}"))
            }
            Ok(Err(e)) => {
                maybe_published = true;
                (true, format!("error {e}"))
            }
            Err(_) => {
                maybe_published = true;
                (true, "timed out".to_owned())
            }
        };
        attempts.push(format!(
            "{} node{} {last}",
            crate::check::record::secs(t),
            node + 1
        ));
        if !retry || attempts.len() >= MAX_ATTEMPTS || began.elapsed() >= MAX_PUBLISH_TIME {
            break if maybe_published {
                Outcome::Unknown { last }
            } else {
                Outcome::Refused { last }
            };
        }
        // Another node may be up; back off a little, more with every failure.
        node = rng.usize(0..ctx.nodes().max(1));
        let backoff = (20u64 << attempts.len().min(5)).min(500);
        sleep(Duration::from_millis(
            backoff / 2 + rng.u64(0..=backoff / 2),
        ))
        .await;
    };
    let end = ctx.rec.now();
    Recorder::push(
        &ctx.rec.publishes,
        PublishOp {
            op,
            channel: channel.to_owned(),
            start,
            end,
            outcome,
            attempts,
            probe,
            rejection,
        },
    );
}
