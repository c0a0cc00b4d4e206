//! Subscription churn costs the node nothing that grows with it: a client opening and
//! closing multi-channel streams, each over 64 channels nobody else uses, as fast as it
//! can, makes the node send coalesced (UN)SUBSCRIBEs (a channel subscribed and released
//! before the node got to it costs nothing upstream), not one command per channel per
//! stream queued without bound; and a new channel gets its live events as soon as the
//! churn stops.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::StatusCode;
use ssegate_client::{ConnectOptions, Connection, HttpClient};
use tokio::task::JoinSet;

use crate::cluster::{cluster, publish, stream};
use crate::helpers::events;
use crate::redis_server::RedisServer;

const OPENS: usize = 400;
const CHANNELS: usize = 64;

#[tokio::test]
async fn churning_streams_over_fresh_channels_leaves_live_delivery_working() {
    let redis = RedisServer::start(false).await;
    let nodes = cluster(&redis, 2, &[]).await;
    let base = nodes[0].url("");
    let before = redis.calls("subscribe").await;

    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..8 {
        let (next, base) = (next.clone(), base.clone());
        tasks.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= OPENS {
                    return;
                }
                let channels: Vec<String> = (0..CHANNELS).map(|i| format!("c{n}-{i}")).collect();
                let url = format!("{base}/v1/events?channels={}", channels.join(","));
                let conn = Connection::open(&url, &ConnectOptions::default())
                    .await
                    .unwrap();
                assert_eq!(conn.status(), StatusCode::OK);
                drop(conn);
            }
        });
    }
    while let Some(res) = tasks.join_next().await {
        res.unwrap();
    }

    // A channel the node has never seen gets its live events right away.
    let mut fresh = stream(&nodes[0], "/v1/channels/after-churn/events", None).await;
    let http = HttpClient::new();
    let (status, id) = publish(&http, &nodes[1], "after-churn", "live").await;
    assert_eq!(status, StatusCode::CREATED, "{id}");
    assert_eq!(events(&mut fresh, 1).await[0].data, "live");

    // One SUBSCRIBE per channel per stream would be OPENS * CHANNELS of them.
    let sent = redis.calls("subscribe").await - before;
    assert!(
        sent < (OPENS * CHANNELS / 8) as u64,
        "{sent} SUBSCRIBE commands for {OPENS} streams of {CHANNELS} channels"
    );
}
