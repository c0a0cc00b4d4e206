//! The scenarios. They share one flow (see [`run`]): connect N subscribers through the
//! worker processes, wait until all are live, optionally publish for a while (with a drop
//! or a node kill in the middle), let every subscriber catch up, collect.
//!
//! | scenario | channels | publishing | disruption |
//! |---|---|---|---|
//! | `capacity` | 1 | none: idle connections are held for `--duration` | – |
//! | `fanout` | 1 | `--rate` ev/s | – |
//! | `channels` | `-k` (100) | `--rate` spread round-robin | – |
//! | `reconnect-storm` | 1 | `--rate` | every stream closed at `--drop-after` |
//! | `failover` | 1 | `--rate` | `--kill-pid` SIGKILLed at `--kill-after` |

pub(crate) mod run;

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{bail, ensure};

use crate::cli::{NodeArgs, RunArgs};
use crate::pool::MAX_PER_WORKER;
use crate::proto::WorkerPlan;
use crate::target::{self, Flavor, Target};

/// Subscribers per worker process when `--workers` is not given.
const DEFAULT_PER_WORKER: usize = 10_000;
/// Subscribers per loopback source address (ephemeral ports: ~28k per address).
const PER_SOURCE: usize = 20_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scenario {
    Capacity,
    Fanout,
    Channels,
    ReconnectStorm,
    Failover,
}

impl Scenario {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Capacity => "capacity",
            Self::Fanout => "fanout",
            Self::Channels => "channels",
            Self::ReconnectStorm => "reconnect-storm",
            Self::Failover => "failover",
        }
    }

    pub(crate) fn parse(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "capacity" => Self::Capacity,
            "fanout" => Self::Fanout,
            "channels" => Self::Channels,
            "reconnect-storm" | "storm" => Self::ReconnectStorm,
            "failover" => Self::Failover,
            other => bail!("unknown scenario {other:?}"),
        })
    }
}

/// A run with every default filled in and checked.
#[derive(Debug, Clone)]
pub(crate) struct Setup {
    pub(crate) scenario: Scenario,
    pub(crate) flavor: Flavor,
    pub(crate) targets: Vec<Target>,
    /// Where the publisher sends events: every target, except in `failover` the one the
    /// killed process listens on (a publish that dies with its node is ambiguous for a
    /// server without idempotency keys, and this scenario measures the subscribers).
    pub(crate) publish_targets: Vec<Target>,
    pub(crate) pids: Vec<u32>,
    pub(crate) aux_pids: Vec<u32>,
    pub(crate) kill_pid: Option<u32>,
    pub(crate) args: RunArgs,
    pub(crate) channels: usize,
    pub(crate) rate: f64,
    pub(crate) workers: usize,
    pub(crate) sources: usize,
    /// Seconds into publishing of the drop or kill.
    pub(crate) disrupt_after: Option<f64>,
    pub(crate) channel_prefix: String,
    pub(crate) run_id: String,
}

impl Setup {
    pub(crate) fn new(
        scenario: Scenario,
        nodes: &NodeArgs,
        args: &RunArgs,
    ) -> anyhow::Result<Self> {
        let targets = target::parse_all(&nodes.targets)?;
        let n = args.subscribers;
        ensure!(n > 0, "--subscribers must be at least 1");
        ensure!(
            args.duration > 0.0 && args.duration <= 3600.0,
            "--duration must be in (0, 3600] s"
        );
        let channels = match (scenario, args.channels) {
            (_, Some(k)) => k,
            (Scenario::Channels, None) => 100,
            _ => 1,
        };
        ensure!(channels >= 1, "--channels must be at least 1");
        let rate = match (scenario, args.rate) {
            (Scenario::Capacity, _) => 0.0,
            (_, Some(r)) => r,
            (_, None) => 20.0,
        };
        ensure!(
            rate.is_finite() && rate >= 0.0,
            "--rate must be a positive number"
        );
        if scenario != Scenario::Capacity {
            ensure!(rate > 0.0, "{} needs --rate > 0", scenario.as_str());
        }
        let workers = if args.workers == 0 {
            // At least one per core (a single-threaded worker delivering a fan-out to
            // thousands of sockets adds its own queueing to the measured latency), and
            // enough to stay under the per-worker connection budget.
            let cores = std::thread::available_parallelism().map_or(1, usize::from);
            n.div_ceil(DEFAULT_PER_WORKER).max(cores.min(4)).min(n)
        } else {
            args.workers.min(n)
        };
        ensure!(
            n.div_ceil(workers) <= MAX_PER_WORKER,
            "{} subscribers per worker is over {MAX_PER_WORKER}: use more --workers",
            n.div_ceil(workers)
        );
        let sources = if args.sources == 0 {
            n.div_ceil(PER_SOURCE).max(1)
        } else {
            args.sources
        };
        ensure!(sources <= 250, "--sources: at most 250 loopback addresses");
        let disrupt_after = match scenario {
            Scenario::ReconnectStorm => Some(args.drop_after.unwrap_or(args.duration / 2.0)),
            Scenario::Failover => {
                ensure!(
                    targets.len() >= 2,
                    "failover needs at least two --target nodes"
                );
                ensure!(nodes.kill_pid.is_some(), "failover needs --kill-pid");
                Some(args.kill_after.unwrap_or(args.duration / 3.0))
            }
            _ => None,
        };
        if let Some(t) = disrupt_after {
            ensure!(
                t >= 0.0 && t < args.duration,
                "the disruption must be within --duration"
            );
        }
        let mut publish_targets = targets.clone();
        if let (Scenario::Failover, Some(pid)) = (scenario, nodes.kill_pid) {
            let ports = crate::procstat::listening_ports(pid);
            let survivors: Vec<Target> = targets
                .iter()
                .filter(|t| !ports.contains(&t.addr.port()))
                .cloned()
                .collect();
            if !survivors.is_empty() {
                publish_targets = survivors;
            }
        }
        let run_id: String = (0..6)
            .map(|_| fastrand::alphanumeric().to_ascii_lowercase())
            .collect();
        Ok(Self {
            scenario,
            flavor: nodes.flavor,
            targets,
            publish_targets,
            pids: nodes.pids.clone(),
            aux_pids: nodes.aux_pids.clone(),
            kill_pid: nodes.kill_pid,
            args: args.clone(),
            channels,
            rate,
            workers,
            sources,
            disrupt_after,
            channel_prefix: format!("lt{run_id}-"),
            run_id,
        })
    }

    /// Subscribers on channel `k` (subscriber `i` is on channel `i % channels`).
    pub(crate) fn subscribers_on(&self, k: usize) -> u64 {
        let n = self.args.subscribers;
        (n / self.channels + usize::from(k < n % self.channels)) as u64
    }

    /// One plan per worker, splitting the subscribers evenly.
    pub(crate) fn plans(&self) -> Vec<WorkerPlan> {
        let n = self.args.subscribers;
        let sources: Vec<IpAddr> = (0..self.sources)
            .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + i as u8)))
            .collect();
        let per_source = n.div_ceil(self.sources);
        let mut plans = Vec::new();
        let mut first = 0;
        for w in 0..self.workers {
            let count = n / self.workers + usize::from(w < n % self.workers);
            plans.push(WorkerPlan {
                flavor: self.flavor,
                targets: self.targets.clone(),
                first,
                count,
                channels: self.channels,
                channel_prefix: self.channel_prefix.clone(),
                connect_rate: self.args.connect_rate / self.workers as f64,
                reconnect_rate: self.args.reconnect_rate / self.workers as f64,
                connect_timeout_ms: self.args.connect_timeout_ms,
                sources: sources.clone(),
                per_source,
                honor_retry: self.args.honor_retry,
            });
            first += count;
        }
        plans
    }
}
