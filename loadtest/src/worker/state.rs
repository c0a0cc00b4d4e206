//! A worker's shared state: the run phase its subscribers watch, the counters they add
//! to, and the connect-rate limiter.

use std::cell::Cell;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::{Instant, sleep_until};

use crate::proto::{self, Counters, Progress, WorkerReport};

/// Where the run is; subscribers watch it through a `watch` channel.
#[derive(Debug, Clone, Default)]
pub(crate) struct Phase {
    /// Bumped for every `Drop` command.
    pub(crate) drop_gen: u32,
    pub(crate) finish: Option<FinishState>,
}

#[derive(Debug, Clone)]
pub(crate) struct FinishState {
    pub(crate) last_seq: Vec<u64>,
    pub(crate) deadline: Instant,
}

impl Phase {
    /// The last acknowledged sequence number of channel `k`, once finishing.
    pub(crate) fn last_seq(&self, k: u64) -> Option<u64> {
        let f = self.finish.as_ref()?;
        f.last_seq.get(usize::try_from(k).ok()?).copied()
    }
}

/// Counters of one worker (single-threaded: subscribers borrow it briefly).
#[derive(Debug)]
pub(crate) struct Stats {
    pub(crate) progress: Progress,
    pub(crate) counts: Counters,
    latency: Histogram<u64>,
    connect: Histogram<u64>,
    errors: Vec<String>,
    error_count: u64,
}

/// How many error texts a worker keeps for its report.
const KEEP_ERRORS: usize = 8;

impl Default for Stats {
    fn default() -> Self {
        Self {
            progress: Progress::default(),
            counts: Counters::default(),
            latency: proto::histogram(),
            connect: proto::histogram(),
            errors: Vec::new(),
            error_count: 0,
        }
    }
}

impl Stats {
    pub(crate) fn record_latency(&mut self, us: u64) {
        self.latency.saturating_record(us.max(1));
    }

    pub(crate) fn record_connect(&mut self, d: Duration) {
        self.connect
            .saturating_record(u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1));
    }

    /// A subscriber is live again after `down` without a stream.
    pub(crate) fn relive(&mut self, down: Duration) {
        self.counts.last_relive_us = crate::payload::now_us();
        let us = u64::try_from(down.as_micros()).unwrap_or(u64::MAX);
        self.counts.max_down_us = self.counts.max_down_us.max(us);
    }

    pub(crate) fn error(&mut self, e: String) {
        self.error_count += 1;
        if self.errors.len() < KEEP_ERRORS {
            self.errors.push(e);
        }
    }

    pub(crate) fn report(&self) -> WorkerReport {
        let mut errors = self.errors.clone();
        if self.error_count > errors.len() as u64 {
            errors.push(format!("... {} errors in all", self.error_count));
        }
        let me = std::process::id();
        WorkerReport {
            progress: self.progress,
            counts: self.counts,
            latency_us: proto::flatten(&self.latency),
            connect_us: proto::flatten(&self.connect),
            cpu_s: crate::procstat::self_cpu_seconds(),
            peak_rss_kib: crate::procstat::status_kib(me, "VmHWM").unwrap_or(0),
            errors,
        }
    }
}

/// Spaces out events to at most `rate` per second (0: no limit).
#[derive(Debug)]
pub(crate) struct Limiter {
    interval: Option<Duration>,
    next: Cell<Option<Instant>>,
}

impl Limiter {
    pub(crate) fn new(rate: f64) -> Self {
        let interval =
            (rate > 0.0 && rate.is_finite()).then(|| Duration::from_secs_f64(1.0 / rate));
        Self {
            interval,
            next: Cell::new(None),
        }
    }

    /// Waits for this caller's slot.
    pub(crate) async fn acquire(&self) {
        let Some(interval) = self.interval else {
            return;
        };
        let now = Instant::now();
        let slot = self.next.get().map_or(now, |n| n.max(now));
        self.next.set(Some(slot + interval));
        if slot > now {
            sleep_until(slot).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn limiter_spaces_out() {
        let l = Limiter::new(10.0);
        let start = Instant::now();
        for _ in 0..5 {
            l.acquire().await;
        }
        assert_eq!(Instant::now() - start, Duration::from_millis(400));
        let unlimited = Limiter::new(0.0);
        unlimited.acquire().await;
    }

    #[test]
    fn errors_are_capped() {
        let mut s = Stats::default();
        for i in 0..20 {
            s.error(format!("e{i}"));
        }
        let r = s.report();
        assert_eq!(r.errors.len(), KEEP_ERRORS + 1);
        assert!(r.errors[KEEP_ERRORS].contains("20 errors"));
    }
}
