//! The publisher: `rate` events per second for `duration`, spread round-robin over the
//! channels, over keep-alive HTTP/1.1 connections (`ssegate_client::HttpClient`).
//!
//! Channels are split over up to 16 lanes; each lane publishes its channels one request
//! at a time, so per channel the publish order is the sequence order. A failed publish is
//! retried on the next target when the server makes that safe (`Idempotency-Key`), and
//! a sequence number is only used up by an acknowledged publish.

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use serde::{Deserialize, Serialize};
use ssegate_client::HttpClient;
use tokio::time::{Instant, MissedTickBehavior};

use crate::payload;
use crate::target::{Flavor, Target};

/// Most lanes (concurrent publish requests).
const MAX_LANES: usize = 16;
/// Longest wait for one publish response.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub(crate) struct PublishPlan {
    pub(crate) flavor: Flavor,
    pub(crate) targets: Vec<Target>,
    pub(crate) channels: usize,
    pub(crate) channel_prefix: String,
    pub(crate) rate: f64,
    pub(crate) duration: Duration,
    pub(crate) pad: usize,
    /// Makes idempotency keys unique to this run.
    pub(crate) run_id: String,
}

/// What the publisher did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct PublishOutcome {
    /// Last acknowledged sequence number per channel (0: none).
    #[serde(skip)]
    pub(crate) last_seq: Vec<u64>,
    pub(crate) target_rate: f64,
    pub(crate) published: u64,
    pub(crate) achieved_rate: f64,
    /// Failed attempts (transport errors, timeouts, non-2xx).
    pub(crate) errors: u64,
    /// Events given up after every attempt failed (their sequence number was reused).
    pub(crate) given_up: u64,
    pub(crate) elapsed_s: f64,
    pub(crate) error_samples: Vec<String>,
}

struct Lane {
    channels: Vec<usize>,
    rate: f64,
}

/// Publishes until `plan.duration` is over.
pub(crate) async fn run(plan: PublishPlan) -> PublishOutcome {
    let lanes_n = plan.channels.clamp(1, MAX_LANES);
    let mut lanes: Vec<Lane> = (0..lanes_n)
        .map(|_| Lane {
            channels: Vec::new(),
            rate: plan.rate / lanes_n as f64,
        })
        .collect();
    for k in 0..plan.channels {
        lanes[k % lanes_n].channels.push(k);
    }
    let http = HttpClient::new();
    let start = Instant::now();
    let end = start + plan.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for (i, lane) in lanes.into_iter().enumerate() {
        tasks.spawn(run_lane(plan.clone(), http.clone(), lane, i, end));
    }
    let mut out = PublishOutcome {
        last_seq: vec![0; plan.channels],
        target_rate: plan.rate,
        ..PublishOutcome::default()
    };
    while let Some(res) = tasks.join_next().await {
        let Ok(lane) = res else { continue };
        for (k, seq) in lane.last_seq {
            out.last_seq[k] = seq;
        }
        out.published += lane.published;
        out.errors += lane.errors;
        out.given_up += lane.given_up;
        for e in lane.error_samples {
            if out.error_samples.len() < 8 {
                out.error_samples.push(e);
            }
        }
    }
    out.elapsed_s = plan.duration.as_secs_f64();
    out.achieved_rate = out.published as f64 / out.elapsed_s.max(1e-9);
    out
}

#[derive(Default)]
struct LaneOutcome {
    last_seq: Vec<(usize, u64)>,
    published: u64,
    errors: u64,
    given_up: u64,
    error_samples: Vec<String>,
}

async fn run_lane(
    plan: PublishPlan,
    http: HttpClient,
    lane: Lane,
    lane_no: usize,
    end: Instant,
) -> LaneOutcome {
    let mut out = LaneOutcome::default();
    if lane.channels.is_empty() || lane.rate <= 0.0 {
        return out;
    }
    let mut seqs = vec![0u64; lane.channels.len()];
    let mut target = lane_no % plan.targets.len();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / lane.rate));
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut next = 0;
    let attempts = if plan.flavor.idempotent_publish() {
        4
    } else {
        1
    };
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = tokio::time::sleep_until(end) => break,
        }
        if Instant::now() >= end {
            break;
        }
        let k = lane.channels[next];
        let seq = seqs[next] + 1;
        let data = payload::encode(k, seq, payload::now_us(), plan.pad);
        let (content_type, body) = plan.flavor.publish_body(&data);
        let channel = format!("{}{k}", plan.channel_prefix);
        let key = format!("lt-{}-{k}-{seq}", plan.run_id);
        let mut ok = false;
        for attempt in 0..attempts {
            let url = plan.targets[target].publish_url(plan.flavor, &channel);
            let mut headers = vec![("content-type", content_type)];
            if plan.flavor.idempotent_publish() {
                headers.push(("idempotency-key", key.as_str()));
            }
            let req = http.request(Method::POST, &url, &headers, Bytes::from(body.clone()));
            let err = match tokio::time::timeout(REQUEST_TIMEOUT, req).await {
                Ok(Ok(r)) if r.status.is_success() => {
                    ok = true;
                    break;
                }
                Ok(Ok(r)) => format!("{url}: {} {}", r.status, r.text()),
                Ok(Err(e)) => format!("{url}: {e}"),
                Err(_) => format!("{url}: timed out"),
            };
            out.errors += 1;
            if out.error_samples.len() < 4 {
                out.error_samples.push(err);
            }
            // Another node may be up; a short pause before a retry.
            target = (target + 1) % plan.targets.len();
            if attempt + 1 < attempts {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        if ok {
            seqs[next] = seq;
            out.published += 1;
            next = (next + 1) % lane.channels.len();
        } else {
            out.given_up += 1;
        }
    }
    out.last_seq = lane.channels.iter().copied().zip(seqs).collect();
    out
}
