//! What the coordinator and its worker processes say to each other: one JSON object per
//! line, coordinator → worker on the worker's stdin, worker → coordinator on its stdout
//! (a worker's diagnostics go to stderr).

use std::net::IpAddr;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::target::{Flavor, Target};

/// Everything a worker needs to open its share of the subscribers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WorkerPlan {
    pub(crate) flavor: Flavor,
    pub(crate) targets: Vec<Target>,
    /// Global index of this worker's first subscriber; subscriber `i` uses channel
    /// `i % channels` and starts on target `i % targets.len()`.
    pub(crate) first: usize,
    pub(crate) count: usize,
    pub(crate) channels: usize,
    /// Channel `k` is named `{channel_prefix}{k}`.
    pub(crate) channel_prefix: String,
    /// New connections per second of this worker (first connects).
    pub(crate) connect_rate: f64,
    /// Reconnects per second of this worker; 0: as fast as they come.
    pub(crate) reconnect_rate: f64,
    pub(crate) connect_timeout_ms: u64,
    /// Source addresses, `per_source` subscribers each (more than the ~28k ephemeral
    /// ports of one address need several).
    pub(crate) sources: Vec<IpAddr>,
    pub(crate) per_source: usize,
    /// Wait the server's `retry:` before reconnecting, like a browser; else at once.
    pub(crate) honor_retry: bool,
}

/// Coordinator → worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub(crate) enum ToWorker {
    Start(WorkerPlan),
    /// Close every stream at once and resume each with its last event id.
    Drop,
    /// Publishing is over: `last_seq[k]` is the last acknowledged sequence number of
    /// channel `k`. Wait (up to `grace_ms`) until every subscriber has it, then report.
    Finish {
        last_seq: Vec<u64>,
        grace_ms: u64,
    },
}

/// Worker → coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub(crate) enum FromWorker {
    Progress(Progress),
    /// All streams were closed for a `Drop`, at this wall-clock time (µs).
    Dropped {
        at_us: u64,
    },
    Report(Box<WorkerReport>),
}

/// Counters sent every 200 ms.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(crate) struct Progress {
    /// Subscribers that were live at least once.
    pub(crate) ever_live: u64,
    /// Subscribers live right now.
    pub(crate) live: u64,
    pub(crate) connect_failures: u64,
    pub(crate) received: u64,
}

/// What subscribers count: kept by each worker, reported, and combined over workers.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(crate) struct Counters {
    pub(crate) gaps: u64,
    pub(crate) duplicates: u64,
    /// Acknowledged events a subscriber had not received when the grace time ran out.
    pub(crate) missing: u64,
    pub(crate) sync_required: u64,
    /// Events whose data was not ours.
    pub(crate) foreign: u64,
    pub(crate) reconnects: u64,
    /// Latest moment (µs since the epoch) a subscriber became live again after losing its
    /// stream; 0 when none did.
    pub(crate) last_relive_us: u64,
    /// Longest time one subscriber was without a stream (µs).
    pub(crate) max_down_us: u64,
    /// Streams not live when the worker stopped.
    pub(crate) down_at_end: u64,
}

impl Counters {
    /// Adds another worker's counts (for the two times: the later and the longer).
    pub(crate) fn absorb(&mut self, other: &Counters) {
        self.gaps += other.gaps;
        self.duplicates += other.duplicates;
        self.missing += other.missing;
        self.sync_required += other.sync_required;
        self.foreign += other.foreign;
        self.reconnects += other.reconnects;
        self.last_relive_us = self.last_relive_us.max(other.last_relive_us);
        self.max_down_us = self.max_down_us.max(other.max_down_us);
        self.down_at_end += other.down_at_end;
    }
}

/// The final numbers of one worker.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct WorkerReport {
    pub(crate) progress: Progress,
    #[serde(flatten)]
    pub(crate) counts: Counters,
    pub(crate) latency_us: Vec<(u64, u64)>,
    pub(crate) connect_us: Vec<(u64, u64)>,
    pub(crate) cpu_s: f64,
    pub(crate) peak_rss_kib: u64,
    /// The first few errors seen, for the log.
    pub(crate) errors: Vec<String>,
}

/// A histogram of microseconds, 1 µs to 1 h, three significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap_or_else(|_| {
        // The bounds above are valid constants; this arm is unreachable in practice.
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits is valid"))
    })
}

/// Flattens a histogram to `(value, count)` pairs for the wire.
pub(crate) fn flatten(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

/// Adds flattened pairs into a histogram.
pub(crate) fn merge(into: &mut Histogram<u64>, pairs: &[(u64, u64)]) {
    for &(value, count) in pairs {
        into.saturating_record_n(value.max(1), count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_histograms_round_trip() {
        let mut h = histogram();
        for v in [5, 5, 1000, 250_000] {
            h.record(v).unwrap();
        }
        let mut back = histogram();
        merge(&mut back, &flatten(&h));
        assert_eq!(back.len(), 4);
        assert_eq!(back.max(), h.max());
        let line = serde_json::to_string(&ToWorker::Finish {
            last_seq: vec![1, 2],
            grace_ms: 5,
        })
        .unwrap();
        assert!(line.starts_with(r#"{"cmd":"finish""#), "{line}");
        let ev: FromWorker = serde_json::from_str(r#"{"ev":"dropped","at_us":7}"#).unwrap();
        assert!(matches!(ev, FromWorker::Dropped { at_us: 7 }));
    }
}
