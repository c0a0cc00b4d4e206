//! Prometheus metrics: the recorder, and cached handles for everything the hot paths
//! record (a handle is an atomic; looking a metric up by name on every event is not).
//! Names and label values are constants in `ssegate_core::metric_names`.

use std::sync::OnceLock;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use ssegate_core::metric_names as m;

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once; `None` if another recorder was
/// installed first (then `/metrics` says so).
pub fn prometheus() -> Option<&'static PrometheusHandle> {
    PROMETHEUS
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(m::LATENCY_BUCKETS)
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            for (name, help) in m::HELP {
                if name.ends_with("_total") {
                    metrics::describe_counter!(*name, *help);
                } else if name.ends_with("_seconds") {
                    metrics::describe_histogram!(*name, metrics::Unit::Seconds, *help);
                } else {
                    metrics::describe_gauge!(*name, *help);
                }
            }
            Some(handle)
        })
        .as_ref()
}

/// Why a stream closed (the `reason` label of `ssegate_connections_closed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client went away (or the connection broke).
    ClientGone = 0,
    /// The node drained it for shutdown, after a `retry:`.
    Drained = 1,
    /// The broker could not serve it.
    BrokerUnavailable = 2,
    /// The node's hub shut down under it.
    Shutdown = 3,
    /// Its token expired (after an `event: token-expired`).
    TokenExpired = 4,
}

/// Why a subscriber got a retry-only stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefuseReason {
    ConnectionLimit = 0,
    Draining = 1,
    SubjectLimit = 2,
    RateLimit = 3,
}

/// Handles for every metric the node records.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub connections_open: Gauge,
    pub connections_opened: Counter,
    closed: Vec<Counter>,
    refused: Vec<Counter>,
    pub events_published: Counter,
    publish_errors: Vec<Counter>,
    pub deliveries: Counter,
    pub replayed: Counter,
    sync: Vec<Counter>,
    pub catchups: Counter,
    pub resyncs: Counter,
    pub heartbeats: Counter,
    pub bytes: Counter,
    pub publish_duration: Histogram,
    pub delivery_latency: Histogram,
}

impl Metrics {
    pub fn new() -> Self {
        let _ = prometheus();
        let by =
            |name: &'static str, label: &'static str, values: &[&'static str]| -> Vec<Counter> {
                values.iter().map(|v| counter!(name, label => *v)).collect()
            };
        Self {
            connections_open: gauge!(m::CONNECTIONS_OPEN),
            connections_opened: counter!(m::CONNECTIONS_OPENED),
            closed: by(m::CONNECTIONS_CLOSED, "reason", m::CLOSE_REASONS),
            refused: by(m::CONNECTIONS_REFUSED, "reason", m::REFUSE_REASONS),
            events_published: counter!(m::EVENTS_PUBLISHED),
            publish_errors: by(m::PUBLISH_ERRORS, "class", m::ERROR_CLASSES),
            deliveries: counter!(m::DELIVERIES),
            replayed: counter!(m::REPLAYED_EVENTS),
            sync: by(m::SYNC_REQUIRED, "reason", m::SYNC_REASONS),
            catchups: counter!(m::SLOW_CONSUMER_CATCHUPS),
            resyncs: counter!(m::LIVE_RESYNCS),
            heartbeats: counter!(m::HEARTBEATS),
            bytes: counter!(m::BYTES_WRITTEN),
            publish_duration: histogram!(m::PUBLISH_DURATION),
            delivery_latency: histogram!(m::DELIVERY_LATENCY),
        }
    }

    pub fn closed(&self, reason: CloseReason) {
        self.closed[reason as usize].increment(1);
    }

    pub fn refused(&self, reason: RefuseReason) {
        self.refused[reason as usize].increment(1);
    }

    pub fn publish_error(&self, class: ssegate_broker::ErrorClass) {
        let i = match class {
            ssegate_broker::ErrorClass::Client => 0,
            ssegate_broker::ErrorClass::Broker => 1,
            ssegate_broker::ErrorClass::Internal => 2,
        };
        self.publish_errors[i].increment(1);
    }

    pub fn sync_required(&self, reason: ssegate_core::sse::SyncReason) {
        let i = match reason {
            ssegate_core::sse::SyncReason::HistoryTrimmed => 0,
            ssegate_core::sse::SyncReason::EpochChanged => 1,
        };
        self.sync[i].increment(1);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
