//! Prometheus metrics: the recorder, and cached handles for everything the hot paths
//! record (a handle is an atomic; looking a metric up by name on every event is not).
//! Names are constants in `ssegate_core::metric_names`; every label's values are one
//! enum implementing [`LabelValue`] (a handle per value, built from `ALL`).
//!
//! # Layout
//!
//! - this file: the recorder, the label enums, [`Metrics`] (the handles);
//! - [`latency`]: the latency histograms, kept by the node itself (see there why).

pub mod latency;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use metrics::{Counter, Gauge, counter, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use ssegate_core::metric_names::{self as m, LabelValue};

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once; `None` if another recorder was
/// installed first (then `/metrics` says so). It holds counters and gauges only, so it
/// needs no upkeep.
pub fn prometheus() -> Option<&'static PrometheusHandle> {
    PROMETHEUS
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            for (name, help) in m::HELP {
                if name.ends_with("_total") {
                    metrics::describe_counter!(*name, *help);
                } else if latency::Latency::is_histogram(name) {
                    // A histogram: kept and rendered by `latency`, not the recorder.
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
    ClientGone,
    /// The node drained it for shutdown, after a `retry:`.
    Drained,
    /// The broker could not serve it.
    BrokerUnavailable,
    /// The node's hub shut down under it.
    Shutdown,
    /// Its token expired (after an `event: token-expired`).
    TokenExpired,
}

impl LabelValue for CloseReason {
    const LABEL: &'static str = "reason";
    const ALL: &'static [Self] = &[
        Self::ClientGone,
        Self::Drained,
        Self::BrokerUnavailable,
        Self::Shutdown,
        Self::TokenExpired,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::ClientGone => "client_gone",
            Self::Drained => "drained",
            Self::BrokerUnavailable => "broker_unavailable",
            Self::Shutdown => "shutdown",
            Self::TokenExpired => "token_expired",
        }
    }
}

/// Why a subscriber got a retry-only stream (the `reason` label of
/// `ssegate_connections_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefuseReason {
    /// The node holds `SSEGATE_MAX_CONNECTIONS` streams.
    ConnectionLimit,
    /// The node is shutting down.
    Draining,
    /// The subject holds `SSEGATE_MAX_CONNECTIONS_PER_SUBJECT` streams.
    SubjectLimit,
    /// Past `SSEGATE_MAX_NEW_CONNECTIONS_PER_SECOND` on this node.
    RateLimit,
}

impl LabelValue for RefuseReason {
    const LABEL: &'static str = "reason";
    const ALL: &'static [Self] = &[
        Self::ConnectionLimit,
        Self::Draining,
        Self::SubjectLimit,
        Self::RateLimit,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::ConnectionLimit => "connection_limit",
            Self::Draining => "draining",
            Self::SubjectLimit => "subject_limit",
            Self::RateLimit => "rate_limit",
        }
    }
}

/// One counter per value of label `L`, cached.
#[derive(Debug, Clone)]
pub struct Labeled<L> {
    counters: Vec<Counter>,
    _label: std::marker::PhantomData<L>,
}

impl<L: LabelValue> Labeled<L> {
    fn new(name: &'static str) -> Self {
        Self {
            counters: L::ALL
                .iter()
                .map(|v| counter!(name, L::LABEL => v.as_str()))
                .collect(),
            _label: std::marker::PhantomData,
        }
    }

    /// Adds one to the counter of `value`.
    pub fn increment(&self, value: L) {
        if let Some(c) = self.counters.get(value.index()) {
            c.increment(1);
        }
    }
}

/// Handles for every metric the node records.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// `ssegate_connections_open`: streams open now.
    pub connections_open: Gauge,
    /// `ssegate_connections_opened_total`: streams opened.
    pub connections_opened: Counter,
    closed: Labeled<CloseReason>,
    refused: Labeled<RefuseReason>,
    /// `ssegate_events_published_total`: events accepted by publishes on this node.
    pub events_published: Counter,
    publish_errors: Labeled<ssegate_broker::ErrorClass>,
    /// `ssegate_deliveries_total`: events written to streams, live and replayed.
    deliveries: Counter,
    /// `ssegate_replayed_events_total`: events written from history.
    pub replayed: Counter,
    sync: Labeled<ssegate_core::sse::SyncReason>,
    /// `ssegate_slow_consumer_catchups_total`: streams that fell behind live and were
    /// caught up from history.
    catchups: Counter,
    /// `ssegate_live_resyncs_total`: streams told to re-read history because the node's
    /// upstream subscription to their channel became active or was re-established.
    pub resyncs: Counter,
    /// `ssegate_heartbeats_total`: heartbeat comments sent.
    pub heartbeats: Counter,
    /// `ssegate_bytes_written_total`: bytes of stream frames handed to connections.
    pub bytes: Counter,
    /// `ssegate_publish_duration_seconds`: request received to broker acknowledged.
    pub publish_duration: &'static latency::Latency,
    /// `ssegate_delivery_latency_seconds` (see [`Metrics::delivered_live`]).
    delivery_latency: &'static latency::Latency,
    /// The counters above that the node also reads back.
    read: std::sync::Arc<ReadBack>,
}

/// The counters the node reads back about itself (`/v1/stats`, the cluster view's rate):
/// a `metrics` handle cannot be read, so each of these is recorded by one method of
/// [`Metrics`] that increments its Prometheus counter and this together.
#[derive(Debug, Default)]
struct ReadBack {
    deliveries: AtomicU64,
    catchups: AtomicU64,
    sync_required: AtomicU64,
}

impl Metrics {
    /// Installs the Prometheus recorder if no recorder is installed yet, then registers
    /// every handle.
    pub fn new() -> Self {
        let _ = prometheus();
        Self {
            connections_open: gauge!(m::CONNECTIONS_OPEN),
            connections_opened: counter!(m::CONNECTIONS_OPENED),
            closed: Labeled::new(m::CONNECTIONS_CLOSED),
            refused: Labeled::new(m::CONNECTIONS_REFUSED),
            events_published: counter!(m::EVENTS_PUBLISHED),
            publish_errors: Labeled::new(m::PUBLISH_ERRORS),
            deliveries: counter!(m::DELIVERIES),
            replayed: counter!(m::REPLAYED_EVENTS),
            sync: Labeled::new(m::SYNC_REQUIRED),
            catchups: counter!(m::SLOW_CONSUMER_CATCHUPS),
            resyncs: counter!(m::LIVE_RESYNCS),
            heartbeats: counter!(m::HEARTBEATS),
            bytes: counter!(m::BYTES_WRITTEN),
            publish_duration: &latency::PUBLISH_DURATION,
            delivery_latency: &latency::DELIVERY_LATENCY,
            read: std::sync::Arc::default(),
        }
    }

    /// Counts a stream that closed (`ssegate_connections_closed_total`).
    pub fn closed(&self, reason: CloseReason) {
        self.closed.increment(reason);
    }

    /// Counts a subscriber that got a retry-only stream
    /// (`ssegate_connections_refused_total`).
    pub fn refused(&self, reason: RefuseReason) {
        self.refused.increment(reason);
    }

    /// Counts a publish request that was refused or failed (`ssegate_publish_errors_total`).
    pub fn publish_error(&self, class: ssegate_broker::ErrorClass) {
        self.publish_errors.increment(class);
    }

    /// Counts a `sync-required` frame sent (`ssegate_sync_required_total`).
    pub fn sync_required(&self, reason: ssegate_core::sse::SyncReason) {
        self.sync.increment(reason);
        self.read.sync_required.fetch_add(1, Ordering::Relaxed);
    }

    /// `n` events written to streams (`ssegate_deliveries_total`).
    pub fn delivered(&self, n: u64) {
        self.deliveries.increment(n);
        self.read.deliveries.fetch_add(n, Ordering::Relaxed);
    }

    /// One live event written to a stream, published at `published_at_ms`: counted and
    /// its delivery latency recorded.
    pub fn delivered_live(&self, published_at_ms: u64) {
        self.delivered(1);
        let now = ssegate_broker::clock::Clock::now_ms(&ssegate_broker::clock::SystemClock);
        self.delivery_latency
            .record(now.saturating_sub(published_at_ms) as f64 / 1000.0);
    }

    /// A stream fell behind live and is caught up from history
    /// (`ssegate_slow_consumer_catchups_total`).
    pub fn caught_up(&self) {
        self.catchups.increment(1);
        self.read.catchups.fetch_add(1, Ordering::Relaxed);
    }

    /// Events written to streams since start.
    pub fn deliveries_total(&self) -> u64 {
        self.read.deliveries.load(Ordering::Relaxed)
    }

    /// Slow-consumer catch-ups since start.
    pub fn catchups_total(&self) -> u64 {
        self.read.catchups.load(Ordering::Relaxed)
    }

    /// `sync-required` frames sent since start.
    pub fn sync_required_total(&self) -> u64 {
        self.read.sync_required.load(Ordering::Relaxed)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssegate_core::metric_names::assert_label_values;

    #[test]
    fn every_label_has_distinct_snake_case_values_and_indexes_its_own_handle() {
        fn check<L: LabelValue>() {
            assert_label_values::<L>();
            for (i, v) in L::ALL.iter().enumerate() {
                assert_eq!(v.index(), i, "{v:?}");
            }
        }
        check::<CloseReason>();
        check::<RefuseReason>();
        check::<ssegate_core::sse::SyncReason>();
        check::<ssegate_broker::ErrorClass>();
        check::<ssegate_broker::BrokerOp>();
    }
}
