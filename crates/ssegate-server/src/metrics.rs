//! Prometheus metrics: the recorder, and cached handles for everything the hot paths
//! record (a handle is an atomic; looking a metric up by name on every event is not).
//! Names are constants in `ssegate_core::metric_names`; every label's values are one
//! enum implementing [`LabelValue`] (a handle per value, built from `ALL`).

use std::sync::OnceLock;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use ssegate_core::metric_names::{self as m, LabelValue};

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
    ConnectionLimit,
    Draining,
    SubjectLimit,
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

    pub fn increment(&self, value: L) {
        if let Some(c) = self.counters.get(value.index()) {
            c.increment(1);
        }
    }
}

/// Handles for every metric the node records.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub connections_open: Gauge,
    pub connections_opened: Counter,
    closed: Labeled<CloseReason>,
    refused: Labeled<RefuseReason>,
    pub events_published: Counter,
    publish_errors: Labeled<ssegate_broker::ErrorClass>,
    pub deliveries: Counter,
    pub replayed: Counter,
    sync: Labeled<ssegate_core::sse::SyncReason>,
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
            publish_duration: histogram!(m::PUBLISH_DURATION),
            delivery_latency: histogram!(m::DELIVERY_LATENCY),
        }
    }

    pub fn closed(&self, reason: CloseReason) {
        self.closed.increment(reason);
    }

    pub fn refused(&self, reason: RefuseReason) {
        self.refused.increment(reason);
    }

    pub fn publish_error(&self, class: ssegate_broker::ErrorClass) {
        self.publish_errors.increment(class);
    }

    pub fn sync_required(&self, reason: ssegate_core::sse::SyncReason) {
        self.sync.increment(reason);
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
    use ssegate_core::metric_names::check_label_values;

    #[test]
    fn every_label_has_distinct_snake_case_values_and_indexes_its_own_handle() {
        fn check<L: LabelValue>() {
            check_label_values::<L>().unwrap();
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
