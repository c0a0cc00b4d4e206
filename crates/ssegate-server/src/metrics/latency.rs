//! The node's latency histograms: fixed buckets of relaxed atomic counters, rendered into
//! `/metrics` beside the Prometheus recorder's text.
//!
//! Why not the recorder's histograms: metrics-exporter-prometheus keeps every sample
//! recorded since its last upkeep (a value and a timestamp, in blocks of 64 it allocates),
//! and sorts them into buckets at the next upkeep, every 5 s here. Recorded once per
//! delivery, that was a block allocated every 64 deliveries and about 2% of the node's CPU
//! in the many-channels benchmark, and what it held grew with the delivery rate: at
//! 200,000 deliveries/s, 5 s of samples are about 16 MB (docs/benchmarks/notes.md).
//!
//! # Bounds
//!
//! A histogram is one counter per bucket of [`LATENCY_BUCKETS`] and one for the sum,
//! whatever the rate; a record is a bucket search and two atomic adds, no allocation and
//! no lock. The sum is kept in whole microseconds and wraps (after about 580,000 years of
//! recorded latency), which Prometheus reads as a counter reset.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use ssegate_core::metric_names::{self as m, HELP, LATENCY_BUCKETS};

/// `ssegate_publish_duration_seconds`: request received to broker acknowledged.
pub static PUBLISH_DURATION: Latency = Latency::new(m::PUBLISH_DURATION);
/// `ssegate_delivery_latency_seconds`: publish timestamp to frame handed to the
/// connection, for live deliveries.
pub static DELIVERY_LATENCY: Latency = Latency::new(m::DELIVERY_LATENCY);
/// Every histogram, in the order `/metrics` renders them. Process-wide, as the recorder's
/// metrics are.
pub static ALL: [&Latency; 2] = [&PUBLISH_DURATION, &DELIVERY_LATENCY];

const BUCKETS: usize = LATENCY_BUCKETS.len() + 1;

/// One latency histogram (seconds), `name` from `metric_names`.
#[derive(Debug)]
pub struct Latency {
    name: &'static str,
    /// Samples at most `LATENCY_BUCKETS[i]` and above the bucket before; the last one
    /// counts the samples above every bound (`+Inf`).
    buckets: [AtomicU64; BUCKETS],
    sum_micros: AtomicU64,
}

impl Latency {
    /// An empty histogram named `name`.
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            buckets: [const { AtomicU64::new(0) }; BUCKETS],
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Whether `name` is one of the node's histograms (in [`ALL`]): the recorder
    /// describes every other metric of `metric_names::HELP`.
    pub fn is_histogram(name: &str) -> bool {
        ALL.iter().any(|h| h.name == name)
    }

    /// Counts one sample of `seconds` (a negative or NaN one as 0).
    pub fn record(&self, seconds: f64) {
        let seconds = if seconds > 0.0 { seconds } else { 0.0 };
        let i = LATENCY_BUCKETS.partition_point(|&le| le < seconds);
        if let Some(bucket) = self.buckets.get(i) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        // `as` saturates: an infinite sample adds u64::MAX, which wraps like any other.
        let micros = (seconds * 1e6).round() as u64;
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Appends the histogram in the Prometheus text format, as the recorder writes its
    /// own (cumulative buckets, `_sum`, `_count`).
    pub fn render(&self, out: &mut String) {
        let name = self.name;
        if let Some((_, help)) = HELP.iter().find(|(n, _)| *n == name) {
            let _ = writeln!(out, "# HELP {name} {help}");
        }
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut count = 0u64;
        for (i, bucket) in self.buckets.iter().enumerate() {
            count = count.wrapping_add(bucket.load(Ordering::Relaxed));
            match LATENCY_BUCKETS.get(i) {
                Some(le) => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {count}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
                }
            }
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssegate_core::metric_names::DELIVERY_LATENCY;

    fn line<'a>(text: &'a str, key: &str) -> &'a str {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {key} in {text}"))
    }

    #[test]
    fn samples_land_in_the_first_bucket_that_holds_them_and_render_cumulatively() {
        let h = Latency::new(DELIVERY_LATENCY);
        let first = LATENCY_BUCKETS[0];
        for s in [first, first / 2.0, -1.0, f64::NAN, first * 1.5, 1e9] {
            h.record(s);
        }
        let mut text = String::new();
        h.render(&mut text);
        let bucket = |le: &str| line(&text, &format!("{DELIVERY_LATENCY}_bucket{{le=\"{le}\"}}"));
        assert_eq!(
            bucket(&first.to_string()),
            "4",
            "at the bound, below, negative, NaN"
        );
        assert_eq!(bucket(&LATENCY_BUCKETS[1].to_string()), "5");
        let last = LATENCY_BUCKETS[LATENCY_BUCKETS.len() - 1];
        assert_eq!(bucket(&last.to_string()), "5");
        assert_eq!(bucket("+Inf"), "6");
        assert_eq!(line(&text, &format!("{DELIVERY_LATENCY}_count")), "6");
        let sum: f64 = line(&text, &format!("{DELIVERY_LATENCY}_sum"))
            .parse()
            .unwrap();
        assert!((sum - (1e9 + first * 3.0)).abs() < 1e-3, "{sum}");
        assert!(text.starts_with(&format!("# HELP {DELIVERY_LATENCY} ")));
        assert!(text.contains(&format!("# TYPE {DELIVERY_LATENCY} histogram\n")));
    }

    /// The convention: every `_seconds` metric is a histogram, kept by this module. One
    /// missing from `ALL` would be described to the recorder as a gauge and never
    /// rendered as a histogram.
    #[test]
    fn every_seconds_metric_is_a_histogram_of_all_and_each_has_help() {
        for (name, _) in HELP {
            assert_eq!(
                name.ends_with("_seconds"),
                Latency::is_histogram(name),
                "{name}: histograms are the `_seconds` metrics, and all of them are in ALL"
            );
        }
        for h in ALL {
            assert!(
                HELP.iter().any(|(n, _)| *n == h.name),
                "{} has no help",
                h.name
            );
        }
    }
}
