//! `/healthz` (the process is alive) and `/readyz` (it should get traffic).

use http::{Response, StatusCode};
use serde_json::json;

use crate::body::Body;
use crate::handlers::json;
use crate::state::AppState;

pub(crate) fn healthz(state: &AppState) -> Response<Body> {
    json(
        StatusCode::OK,
        &json!({ "status": "ok", "node_id": state.settings.node_id }),
    )
}

/// Ready when the broker answers and the node is not draining.
pub(crate) async fn readyz(state: &AppState) -> Response<Body> {
    let draining = state.is_draining();
    let broker = state.broker.ready().await;
    let ready = !draining && broker.is_ok();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(
        status,
        &json!({
            "status": if ready { "ready" } else { "not_ready" },
            "node_id": state.settings.node_id,
            "broker": state.broker.kind(),
            "broker_ok": broker.is_ok(),
            "draining": draining,
            "streams": state.lifecycle.streams.open(),
        }),
    )
}

/// `GET /v1/stats` (admin listener): this node's figures.
pub(crate) fn stats(state: &AppState) -> Response<Body> {
    let m = &state.metrics;
    json(
        StatusCode::OK,
        &json!({
            "node_id": state.settings.node_id,
            "broker": state.broker.kind(),
            "draining": state.is_draining(),
            "streams": state.lifecycle.streams.open(),
            "slow_consumer_catchups": m.catchups_total(),
            "sync_required": m.sync_required_total(),
            "deliveries": m.deliveries_total(),
        }),
    )
}

/// `GET /metrics` (admin listener): Prometheus text exposition.
pub(crate) fn metrics() -> Response<Body> {
    let mut text = match crate::metrics::prometheus() {
        Some(handle) => handle.render(),
        None => "# metrics recorder unavailable in this process\n".to_owned(),
    };
    for histogram in crate::metrics::latency::ALL {
        histogram.render(&mut text);
    }
    let mut res = Response::new(Body::full(text));
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    res
}
