//! The cluster view: every node puts a short-lived entry about itself in the shared store
//! (refreshed every `cluster_announce_interval`, expiring after three of them, so a killed
//! node disappears by itself), `GET /v1/cluster` lists the live entries, and
//! `GET /v1/cluster/stream` streams that list (SSE) to the `/dashboard` page. All of this is
//! on the admin listener: node addresses and load are for operators, not the public.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{BufMut, BytesMut};
use http::{Response, StatusCode};
use serde_json::{Value, json};
use ssegate_core::sse;

use crate::body::Body;
use crate::handlers::json;
use crate::state::AppState;

/// How many announce intervals an entry outlives its last refresh.
const TTL_INTERVALS: u32 = 3;

/// This node's entry in the cluster view.
pub(crate) fn node_info(state: &AppState) -> Value {
    let rate = f64::from_bits(state.delivery_rate_bits.load(Ordering::Relaxed));
    json!({
        "node_id": state.settings.node_id,
        "address": state.public_addr.get().map(ToString::to_string),
        "version": env!("CARGO_PKG_VERSION"),
        "broker": state.broker.kind(),
        "started_at_ms": state.started_at_ms,
        "connections": state.lifecycle.streams.open(),
        "channels": state.broker.local_channels(),
        "deliveries": state.metrics.deliveries_total(),
        "deliveries_per_second": (rate * 10.0).round() / 10.0,
        "draining": state.is_draining(),
    })
}

/// Refreshes this node's entry (and its delivery rate) until the node stops.
pub(crate) fn announcer(state: Arc<AppState>) -> impl std::future::Future<Output = ()> + Send {
    let every = state.settings.cluster_announce_interval;
    async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = (
            tokio::time::Instant::now(),
            state.metrics.deliveries_total(),
        );
        loop {
            tick.tick().await;
            let now = (
                tokio::time::Instant::now(),
                state.metrics.deliveries_total(),
            );
            let secs = now.0.duration_since(last.0).as_secs_f64();
            if secs > 0.0 {
                let rate = now.1.saturating_sub(last.1) as f64 / secs;
                state
                    .delivery_rate_bits
                    .store(rate.to_bits(), Ordering::Relaxed);
            }
            last = now;
            let info = node_info(&state).to_string();
            let ttl = every * TTL_INTERVALS;
            if let Err(e) = state
                .broker
                .announce_node(&state.settings.node_id, &info, ttl)
                .await
            {
                tracing::debug!(error = %e, "cannot refresh the cluster view entry");
            }
        }
    }
}

/// Every live node, sorted by id, with totals.
pub(crate) async fn view(state: &AppState) -> Value {
    let mut nodes: Vec<Value> = match state.broker.cluster_nodes().await {
        Ok(Some(list)) => list
            .iter()
            .filter_map(|s| serde_json::from_str(s).ok())
            .collect(),
        Ok(None) => vec![node_info(state)],
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the cluster view");
            vec![node_info(state)]
        }
    };
    nodes.sort_by(|a, b| a["node_id"].as_str().cmp(&b["node_id"].as_str()));
    let sum = |key: &str| nodes.iter().filter_map(|n| n[key].as_f64()).sum::<f64>();
    json!({
        "count": nodes.len(),
        "connections": sum("connections"),
        "deliveries_per_second": (sum("deliveries_per_second") * 10.0).round() / 10.0,
        "nodes": nodes,
    })
}

/// `GET /v1/cluster`: the view as JSON.
pub(crate) async fn list(state: &AppState) -> Response<Body> {
    json(StatusCode::OK, &view(state).await)
}

/// `GET /v1/cluster/stream`: the view as SSE, every announce interval, until drain.
pub(crate) fn stream(state: Arc<AppState>) -> Response<Body> {
    let every = state.settings.cluster_announce_interval;
    let draining = Box::pin(state.lifecycle.draining());
    let tick = tokio::time::interval(every);
    let stream = futures_util::stream::unfold(
        (state, draining, tick, true),
        |(state, mut draining, mut tick, first)| async move {
            if !first {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = draining.as_mut() => return None,
                }
            } else {
                tick.tick().await;
            }
            if state.is_draining() {
                return None;
            }
            let mut frame = BytesMut::new();
            if first {
                frame.put_slice(&sse::retry_frame(state.settings.jittered_retry_ms()));
            }
            sse::write_body(&mut frame, Some("cluster"), &view(&state).await.to_string());
            Some((frame.freeze(), (state, draining, tick, false)))
        },
    );
    crate::stream::sse_response(Body::stream(stream))
}

/// `GET /dashboard`.
pub(crate) fn dashboard() -> Response<Body> {
    crate::handlers::html(include_str!("demo/dashboard.html"))
}
