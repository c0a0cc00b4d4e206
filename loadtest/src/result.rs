//! The result of one run: what is written as JSON, the headline metrics (shared by the
//! summary, `compare` and `report`), and the markdown summary.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::procstat::Machine;
use crate::publisher::PublishOutcome;
use crate::target::Flavor;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RunResult {
    pub(crate) scenario: String,
    pub(crate) flavor: Flavor,
    pub(crate) label: String,
    /// The command line that produced this result.
    pub(crate) command: String,
    pub(crate) unix_time: u64,
    pub(crate) machine: Machine,
    pub(crate) params: Params,
    pub(crate) connect: ConnectStats,
    pub(crate) deliveries: Deliveries,
    pub(crate) latency_ms: Percentiles,
    pub(crate) publisher: PublishOutcome,
    pub(crate) nodes: NodeStats,
    pub(crate) kernel: KernelStats,
    pub(crate) loadgen: LoadgenStats,
    pub(crate) recovery: Option<Recovery>,
    pub(crate) errors: Vec<String>,
    /// Every subscriber was live, and nothing was lost, repeated or flagged.
    pub(crate) ok: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Params {
    pub(crate) subscribers: usize,
    pub(crate) channels: usize,
    pub(crate) rate: f64,
    pub(crate) duration_s: f64,
    pub(crate) pad: usize,
    pub(crate) nodes: usize,
    pub(crate) targets: Vec<String>,
    pub(crate) workers: usize,
    pub(crate) connect_rate: f64,
    pub(crate) disrupt_after_s: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct ConnectStats {
    pub(crate) requested: u64,
    /// Subscribers that were live at least once.
    pub(crate) live: u64,
    pub(crate) failures: u64,
    /// From the first connect until every subscriber was live (or the timeout).
    pub(crate) wall_s: f64,
    /// Per subscriber, from its first attempt to its stream being live.
    pub(crate) time_ms: Percentiles,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Deliveries {
    pub(crate) expected: u64,
    pub(crate) received: u64,
    pub(crate) gaps: u64,
    pub(crate) duplicates: u64,
    pub(crate) missing: u64,
    pub(crate) sync_required: u64,
    pub(crate) foreign: u64,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(crate) struct Percentiles {
    pub(crate) count: u64,
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) p999: f64,
    pub(crate) max: f64,
    pub(crate) mean: f64,
}

impl Percentiles {
    /// From a histogram of microseconds, in milliseconds.
    pub(crate) fn from_us(h: &hdrhistogram::Histogram<u64>) -> Self {
        let ms = |v: u64| v as f64 / 1000.0;
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct NodeStats {
    pub(crate) pids: Vec<u32>,
    /// CPU seconds of the node processes from the first publish until every subscriber
    /// had everything (capacity: while connecting and holding).
    pub(crate) cpu_s: f64,
    pub(crate) cpu_s_per_million: Option<f64>,
    pub(crate) rss_before_kib: u64,
    pub(crate) rss_connected_kib: u64,
    pub(crate) rss_end_kib: u64,
    pub(crate) rss_per_conn_bytes: Option<f64>,
    /// CPU seconds of the --aux-pid processes (e.g. Redis) over the same window.
    pub(crate) aux_cpu_s: f64,
    pub(crate) aux_rss_kib: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct KernelStats {
    pub(crate) tcp_mem_before_kib: u64,
    pub(crate) tcp_mem_connected_kib: u64,
    /// Both ends of each connection live on this host, so this is client + server side.
    pub(crate) tcp_mem_per_conn_bytes: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct LoadgenStats {
    pub(crate) workers: usize,
    /// Coordinator + workers, whole run.
    pub(crate) cpu_s: f64,
    pub(crate) worker_peak_rss_kib: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Recovery {
    /// What happened: "drop" (reconnect storm) or "kill" (failover).
    pub(crate) disruption: String,
    pub(crate) reconnects: u64,
    /// From the disruption until the last subscriber was live again.
    pub(crate) all_live_after_ms: Option<f64>,
    /// Longest time one subscriber was without a stream.
    pub(crate) max_down_ms: f64,
    /// Subscribers without a stream when the run ended.
    pub(crate) down_at_end: u64,
}

/// One headline number of a result.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Metric {
    pub(crate) name: &'static str,
    pub(crate) value: Option<f64>,
    /// For ratios: is a smaller value better?
    pub(crate) lower_is_better: bool,
}

impl RunResult {
    /// The numbers that `compare` and `report` put side by side.
    pub(crate) fn metrics(&self) -> Vec<Metric> {
        let m = |name, value, lower_is_better| Metric {
            name,
            value,
            lower_is_better,
        };
        let publishing = self.params.rate > 0.0;
        let mut out = vec![
            m("subscribers live", Some(self.connect.live as f64), false),
            m("connect wall time (s)", Some(self.connect.wall_s), true),
            m("connect p99 (ms)", Some(self.connect.time_ms.p99), true),
            m(
                "node RSS per connection (bytes)",
                self.nodes.rss_per_conn_bytes,
                true,
            ),
            m(
                "kernel TCP buffers, all sockets, connected (KiB)",
                Some(self.kernel.tcp_mem_connected_kib as f64),
                true,
            ),
        ];
        if publishing {
            out.extend([
                m(
                    "deliveries expected",
                    Some(self.deliveries.expected as f64),
                    false,
                ),
                m(
                    "deliveries received",
                    Some(self.deliveries.received as f64),
                    false,
                ),
                m(
                    "lost (gaps + missing)",
                    Some((self.deliveries.gaps + self.deliveries.missing) as f64),
                    true,
                ),
                m("duplicates", Some(self.deliveries.duplicates as f64), true),
                m("latency p50 (ms)", Some(self.latency_ms.p50), true),
                m("latency p90 (ms)", Some(self.latency_ms.p90), true),
                m("latency p99 (ms)", Some(self.latency_ms.p99), true),
                m("latency p99.9 (ms)", Some(self.latency_ms.p999), true),
                m("latency max (ms)", Some(self.latency_ms.max), true),
                m(
                    "publish rate achieved (ev/s)",
                    Some(self.publisher.achieved_rate),
                    false,
                ),
                m("publish errors", Some(self.publisher.errors as f64), true),
                m(
                    "node CPU s per million deliveries",
                    self.nodes.cpu_s_per_million,
                    true,
                ),
            ]);
        }
        out.push(m("node CPU s (window)", Some(self.nodes.cpu_s), true));
        if !self.nodes.pids.is_empty() || self.nodes.aux_cpu_s > 0.0 {
            out.push(m("aux (Redis) CPU s", Some(self.nodes.aux_cpu_s), true));
        }
        if let Some(r) = &self.recovery {
            out.push(m("all live again after (ms)", r.all_live_after_ms, true));
            out.push(m(
                "longest without a stream (ms)",
                Some(r.max_down_ms),
                true,
            ));
        }
        out.push(m("load generator CPU s", Some(self.loadgen.cpu_s), true));
        out
    }

    /// A markdown summary of this result.
    pub(crate) fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "### {} — {} ({})\n\n{} subscribers, {} channel(s), {} ev/s for {} s, {} node(s)\n",
            self.scenario,
            self.flavor.as_str(),
            self.label,
            self.params.subscribers,
            self.params.channels,
            self.params.rate,
            self.params.duration_s,
            self.params.nodes,
        );
        let _ = writeln!(s, "| metric | value |\n|---|---:|");
        for m in self.metrics() {
            let _ = writeln!(s, "| {} | {} |", m.name, fmt_num(m.value));
        }
        let d = &self.deliveries;
        let _ = writeln!(
            s,
            "\ngaps {}, duplicates {}, missing {}, sync-required {}, foreign {}: **{}**",
            d.gaps,
            d.duplicates,
            d.missing,
            d.sync_required,
            d.foreign,
            if self.ok { "OK" } else { "NOT OK" }
        );
        for e in self.errors.iter().take(6) {
            let _ = writeln!(s, "- error: `{e}`");
        }
        s
    }
}

/// Formats a number for tables: integers plainly, others with 3 significant-ish digits.
pub(crate) fn fmt_num(v: Option<f64>) -> String {
    match v {
        None => "–".to_owned(),
        Some(v) if !v.is_finite() => "–".to_owned(),
        Some(v) if v.fract() == 0.0 && v.abs() < 1e15 => format!("{v:.0}"),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

/// `a / b` as a ratio string, with the better side marked.
pub(crate) fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 && a.is_finite() && b.is_finite() => Some(a / b),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(fmt_num(Some(3.0)), "3");
        assert_eq!(fmt_num(Some(1.2345)), "1.23");
        assert_eq!(fmt_num(Some(12.345)), "12.3");
        assert_eq!(fmt_num(Some(123.45)), "123");
        assert_eq!(fmt_num(None), "–");
        assert_eq!(ratio(Some(1.0), Some(4.0)), Some(0.25));
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
    }
}
