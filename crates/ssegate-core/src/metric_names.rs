//! Every metric name, in one place, with its help text. No channel name, client id or
//! other unbounded value is ever a label: label values are the small fixed sets listed
//! here (cardinality stays constant however many channels and clients there are).

/// Streams open now (gauge).
pub const CONNECTIONS_OPEN: &str = "ssegate_connections_open";
/// Streams opened (counter).
pub const CONNECTIONS_OPENED: &str = "ssegate_connections_opened_total";
/// Streams closed, by `reason` (counter).
pub const CONNECTIONS_CLOSED: &str = "ssegate_connections_closed_total";
/// Subscribers told to retry instead of getting a stream, by `reason` (counter).
pub const CONNECTIONS_REFUSED: &str = "ssegate_connections_refused_total";
/// Events accepted by publishes on this node (counter).
pub const EVENTS_PUBLISHED: &str = "ssegate_events_published_total";
/// Publish requests refused or failed, by `class` (counter).
pub const PUBLISH_ERRORS: &str = "ssegate_publish_errors_total";
/// Events written to streams, live and replayed (counter).
pub const DELIVERIES: &str = "ssegate_deliveries_total";
/// Events written from history (resume or catch-up) (counter).
pub const REPLAYED_EVENTS: &str = "ssegate_replayed_events_total";
/// `sync-required` frames sent, by `reason` (counter).
pub const SYNC_REQUIRED: &str = "ssegate_sync_required_total";
/// Streams that fell behind live and were caught up from history (counter).
pub const SLOW_CONSUMER_CATCHUPS: &str = "ssegate_slow_consumer_catchups_total";
/// Streams told to re-read history because this node's upstream subscription to their
/// channel became active or was re-established (counter).
pub const LIVE_RESYNCS: &str = "ssegate_live_resyncs_total";
/// Heartbeat comments sent (counter).
pub const HEARTBEATS: &str = "ssegate_heartbeats_total";
/// Bytes of stream frames handed to connections (counter).
pub const BYTES_WRITTEN: &str = "ssegate_bytes_written_total";
/// Request received to broker acknowledged, for publishes (histogram, seconds).
pub const PUBLISH_DURATION: &str = "ssegate_publish_duration_seconds";
/// Publish timestamp carried in the event to the moment its frame is handed to the
/// connection, for live deliveries (histogram, seconds).
pub const DELIVERY_LATENCY: &str = "ssegate_delivery_latency_seconds";
/// Broker operations that failed, by `op` (counter).
pub const BROKER_ERRORS: &str = "ssegate_broker_errors_total";
/// Pub/sub connections re-established (counter).
pub const PUBSUB_RECONNECTS: &str = "ssegate_pubsub_reconnects_total";
/// Times this node found the Redis primary at another address (counter).
pub const REDIS_PRIMARY_CHANGES: &str = "ssegate_redis_primary_changes_total";
/// Publishes that fewer replicas than `SSEGATE_PUBLISH_MIN_REPLICAS` confirmed in time,
/// answered `504 publish_outcome_unknown` (counter).
pub const PUBLISH_REPLICA_TIMEOUTS: &str = "ssegate_publish_replica_timeouts_total";
/// Channels with at least one local subscriber (gauge).
pub const SUBSCRIBED_CHANNELS: &str = "ssegate_subscribed_channels";

/// The values of one label: an enum per label, each value spelled once by `as_str`, so
/// that reordering or adding a variant cannot mislabel a metric. Implemented by
/// `CloseReason` and `RefuseReason` (server), [`crate::sse::SyncReason`], and the
/// broker's `ErrorClass` and `BrokerOp`.
pub trait LabelValue: Copy + PartialEq + std::fmt::Debug + 'static {
    /// The label's name (`reason`, `class`, `op`).
    const LABEL: &'static str;
    /// Every value, each once.
    const ALL: &'static [Self];
    /// The value as it appears in the exposition.
    fn as_str(self) -> &'static str;
    /// The value's place in [`LabelValue::ALL`] (for a table of cached handles).
    fn index(self) -> usize {
        Self::ALL.iter().position(|v| *v == self).unwrap_or(0)
    }
}

/// Asserts a label's values: non-empty snake_case strings, none twice. For the unit
/// tests of each implementation (it panics, naming the label and the value).
pub fn assert_label_values<L: LabelValue>() {
    let mut seen = std::collections::HashSet::new();
    for v in L::ALL {
        let s = v.as_str();
        assert!(
            !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "{}: {s:?} is not snake_case",
            L::LABEL
        );
        assert!(seen.insert(s), "{}: {s:?} twice", L::LABEL);
    }
}

/// Histogram buckets (seconds): fine below 10 ms, where a healthy gateway lives, coarse
/// up to 10 s, where a broken one does.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Every metric with its help text, for `# HELP` lines.
pub const HELP: &[(&str, &str)] = &[
    (CONNECTIONS_OPEN, "SSE streams open now"),
    (CONNECTIONS_OPENED, "SSE streams opened"),
    (CONNECTIONS_CLOSED, "SSE streams closed, by reason"),
    (
        CONNECTIONS_REFUSED,
        "Subscribers told to retry instead of getting a stream, by reason",
    ),
    (
        EVENTS_PUBLISHED,
        "Events accepted by publishes on this node",
    ),
    (
        PUBLISH_ERRORS,
        "Publish requests refused or failed, by class",
    ),
    (DELIVERIES, "Events written to streams, live and replayed"),
    (
        REPLAYED_EVENTS,
        "Events written from history on resume or catch-up",
    ),
    (SYNC_REQUIRED, "sync-required frames sent, by reason"),
    (
        SLOW_CONSUMER_CATCHUPS,
        "Streams caught up from history after falling behind live",
    ),
    (
        LIVE_RESYNCS,
        "Streams told to re-read history because the node's subscription to their channel became active",
    ),
    (HEARTBEATS, "Heartbeat comments sent"),
    (
        BYTES_WRITTEN,
        "Bytes of stream frames handed to connections",
    ),
    (
        PUBLISH_DURATION,
        "Publish: request received to broker acknowledged, seconds",
    ),
    (
        DELIVERY_LATENCY,
        "Publish timestamp to frame handed to the connection, seconds",
    ),
    (BROKER_ERRORS, "Broker operations that failed, by op"),
    (PUBSUB_RECONNECTS, "Pub/sub connections re-established"),
    (
        REDIS_PRIMARY_CHANGES,
        "Times this node found the Redis primary at another address",
    ),
    (
        PUBLISH_REPLICA_TIMEOUTS,
        "Publishes that too few replicas confirmed in time (answered 504)",
    ),
    (
        SUBSCRIBED_CHANNELS,
        "Channels with at least one local subscriber",
    ),
];
