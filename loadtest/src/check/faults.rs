//! The fault schedule: drawn from the seed before the run (so a seed names the same
//! faults at the same moments), then executed one fault at a time.
//!
//! One at a time on purpose: the contract promises nothing lost across *a* node crash, a
//! Redis restart or failover, or a pub/sub reconnect, and overlapping faults would mostly test how
//! long clients wait. Every fault ends with the system whole again (a killed node or
//! Redis is restarted before the next fault), and at the end of the run anything still
//! down is restored before the quiet phase.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, mpsc, watch};
use tokio::time::{Instant, sleep, sleep_until};

use crate::check::publish;
use crate::check::record::{FaultRecord, Recorder};
use crate::check::redis::{RedisKind, Reply, query};
use crate::check::topology::Topology;

/// Events published on a stalled client's channels while it does not read, and their
/// data size: together more than a loopback socket's send and receive buffers hold
/// (4 MiB at most here), so the stall outlasts the kernel's buffering and the node's
/// per-connection backlog (`SSEGATE_LIVE_BACKLOG`), and the slow-consumer catch-up from
/// the stream is what gets tested.
const BURST: usize = 300;
const BURST_PAD: usize = 32_000;

/// One fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fault {
    /// SIGKILL a node; restart it after `down_ms`.
    KillNode { node: usize, down_ms: u64 },
    /// SIGTERM a node (it drains), wait for it to exit; restart it after `down_ms`.
    TermNode { node: usize, down_ms: u64 },
    /// `CLIENT KILL TYPE pubsub`: every node loses its live feed at once.
    PubsubKill,
    /// Redis stops cleanly (SIGTERM, AOF flushed) and starts again on the same port.
    RedisRestart { down_ms: u64 },
    /// `DEBUG SLEEP 0.5`: Redis (the primary) answers nothing for half a second.
    RedisSleep,
    /// `SENTINEL FAILOVER`, or on a Redis Cluster `CLUSTER FAILOVER` on the replica of
    /// primary `pick` (modulo the primaries): the replica is promoted, the primary demoted.
    Failover { pick: usize },
    /// SIGKILL of the primary (Sentinel), or of primary `pick` (Redis Cluster); its
    /// replica is promoted, and `down_ms` after that the old primary comes back as a
    /// replica.
    KillPrimary { pick: usize, down_ms: u64 },
    /// Redis Cluster only: `slots` slots move from primary `pick` to the next one
    /// (`redis-cli --cluster reshard`), while their channels are busy.
    Reshard { pick: usize, slots: u32 },
    /// Client `client` stops reading for `ms`, then reads on; meanwhile a burst of big
    /// events on its channels fills its socket, so that the node has to catch it up.
    Stall { client: usize, ms: u64 },
}

impl Fault {
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Self::KillNode { .. } => "kill",
            Self::TermNode { .. } => "term",
            Self::PubsubKill => "pubsub-kill",
            Self::RedisRestart { .. } => "redis-restart",
            Self::RedisSleep => "redis-sleep",
            Self::Failover { .. } => "failover",
            Self::KillPrimary { .. } => "kill-primary",
            Self::Reshard { .. } => "reshard",
            Self::Stall { .. } => "stall",
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::KillNode { node, down_ms } => {
                format!("SIGKILL node{}, down {down_ms} ms", node + 1)
            }
            Self::TermNode { node, down_ms } => {
                format!("SIGTERM node{} (drain), down {down_ms} ms", node + 1)
            }
            Self::PubsubKill => "redis CLIENT KILL TYPE pubsub".into(),
            Self::RedisRestart { down_ms } => format!("redis SIGTERM + restart, down {down_ms} ms"),
            Self::RedisSleep => "redis DEBUG SLEEP 0.5".into(),
            Self::Failover { pick } => format!("failover of primary {pick}"),
            Self::KillPrimary { pick, down_ms } => {
                format!(
                    "SIGKILL Redis primary {pick}, back as a replica {down_ms} ms after the promotion"
                )
            }
            Self::Reshard { pick, slots } => {
                format!("reshard {slots} slots from primary {pick} to the next")
            }
            Self::Stall { client, ms } => {
                format!(
                    "client {client} stops reading for {ms} ms; a burst of {BURST} big events on its channels"
                )
            }
        }
    }
}

/// A fault and when (ms after the start of publishing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Planned {
    pub(crate) at_ms: u64,
    pub(crate) fault: Fault,
}

/// Draws the schedule: a fault every 1.5–4 s from 1.5 s until 2 s before the end. Behind
/// Sentinel and on a Redis Cluster, failovers and primary crashes take the place of Redis
/// restarts; on a Redis Cluster, slot migrations take some of the pub/sub kills' turns.
pub(crate) fn schedule(
    seed: u64,
    duration_ms: u64,
    nodes: usize,
    clients: usize,
    kind: RedisKind,
) -> Vec<Planned> {
    let ha = kind != RedisKind::One;
    let mut rng = fastrand::Rng::with_seed(seed ^ 0xfa17_5eed);
    let mut out = Vec::new();
    let mut at = 1500;
    while at + 2000 < duration_ms {
        let fault = match rng.u32(0..100) {
            0..20 => Fault::KillNode {
                node: rng.usize(0..nodes),
                down_ms: rng.u64(200..1500),
            },
            20..35 => Fault::TermNode {
                node: rng.usize(0..nodes),
                down_ms: rng.u64(200..1000),
            },
            35..43 if kind == RedisKind::Cluster => Fault::Reshard {
                pick: rng.usize(..8),
                slots: rng.u32(50..1500),
            },
            35..50 => Fault::PubsubKill,
            50..60 if ha => Fault::Failover {
                pick: rng.usize(..8),
            },
            50..60 => Fault::RedisRestart {
                down_ms: rng.u64(100..800),
            },
            60..75 if ha => Fault::KillPrimary {
                pick: rng.usize(..8),
                down_ms: rng.u64(0..1000),
            },
            60..75 => Fault::RedisSleep,
            _ => Fault::Stall {
                client: rng.usize(0..clients.max(1)),
                ms: rng.u64(2500..6000),
            },
        };
        out.push(Planned { at_ms: at, fault });
        at += rng.u64(1500..4000);
    }
    out
}

/// What the fault runner drives.
#[derive(Debug)]
pub(crate) struct Runner {
    pub(crate) topo: Arc<Mutex<Topology>>,
    pub(crate) rec: Arc<Recorder>,
    /// One sender per client, for stalls.
    pub(crate) stalls: Vec<mpsc::Sender<Duration>>,
    /// Each client's channels, for the burst that goes with a stall.
    pub(crate) client_channels: Vec<Vec<String>>,
    /// For that burst.
    pub(crate) publish: Arc<publish::Ctx>,
}

impl Runner {
    /// Runs the schedule (times from `start`) until it is done or `stop` turns true, then
    /// restores whatever is down. Between faults it also notices processes that died by
    /// themselves (a crash is recorded and the process restarted).
    pub(crate) async fn run(
        self,
        plan: Vec<Planned>,
        start: Instant,
        mut stop: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        for p in plan {
            let at = start + Duration::from_millis(p.at_ms);
            // Stop first: a fault that ran long leaves the next one already due.
            tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => break,
                () = sleep_until(at) => {}
            }
            self.reap().await;
            let t0 = self.rec.now();
            let what = p.fault.describe();
            eprintln!("[{}] fault: {what}", crate::check::record::secs(t0));
            let result = self.apply(&p.fault).await;
            let what = match result {
                Ok(()) => what,
                Err(e) => format!("{what} (failed: {e:#})"),
            };
            Recorder::push(
                &self.rec.faults,
                FaultRecord {
                    start: t0,
                    end: self.rec.now(),
                    kind: p.fault.label(),
                    what,
                },
            );
        }
        self.reap().await;
        self.topo.lock().await.restore().await
    }

    async fn reap(&self) {
        let crashed = self.topo.lock().await.reap_crashed().await;
        for c in crashed {
            eprintln!("check: {c}");
            Recorder::push(&self.rec.crashes, (self.rec.now(), c));
        }
    }

    async fn apply(&self, fault: &Fault) -> anyhow::Result<()> {
        match *fault {
            Fault::KillNode { node, down_ms } | Fault::TermNode { node, down_ms } => {
                let signal = if matches!(fault, Fault::KillNode { .. }) {
                    "KILL"
                } else {
                    "TERM"
                };
                self.topo.lock().await.stop_node(node, signal).await;
                sleep(Duration::from_millis(down_ms)).await;
                self.topo.lock().await.start_node(node).await
            }
            Fault::PubsubKill => {
                let addr = self.topo.lock().await.redis.primary().await?;
                query(addr, &["CLIENT", "KILL", "TYPE", "pubsub"])
                    .await
                    .map(drop)
            }
            Fault::RedisRestart { down_ms } => {
                let down = Duration::from_millis(down_ms);
                self.topo.lock().await.redis.restart(down).await
            }
            Fault::RedisSleep => {
                let addr = self.topo.lock().await.redis.primary().await?;
                let reply = query(addr, &["DEBUG", "SLEEP", "0.5"]).await?;
                anyhow::ensure!(
                    reply == Reply::Simple("OK".into()),
                    "DEBUG SLEEP answered {reply:?}"
                );
                Ok(())
            }
            Fault::Failover { pick } => {
                let redis = &mut self.topo.lock().await.redis;
                match redis.kind() {
                    RedisKind::Cluster => redis.cluster_failover(pick).await,
                    _ => redis.failover().await,
                }
            }
            Fault::KillPrimary { pick, down_ms } => {
                let down = Duration::from_millis(down_ms);
                let redis = &mut self.topo.lock().await.redis;
                match redis.kind() {
                    RedisKind::Cluster => redis.cluster_kill_primary(pick, down).await,
                    _ => redis.kill_primary(down).await,
                }
            }
            Fault::Reshard { pick, slots } => {
                self.topo
                    .lock()
                    .await
                    .redis
                    .cluster_reshard(pick, slots)
                    .await
            }
            Fault::Stall { client, ms } => {
                if let Some(tx) = self.stalls.get(client) {
                    let _ = tx.try_send(Duration::from_millis(ms));
                }
                let channels = self
                    .client_channels
                    .get(client)
                    .cloned()
                    .unwrap_or_default();
                if !channels.is_empty() {
                    // Ordinary recorded publishes: owed to every subscriber like any other.
                    let mut rng = fastrand::Rng::with_seed(ms);
                    for i in 0..BURST {
                        let ch = &channels[i % channels.len()];
                        publish::publish(&self.publish, ch, BURST_PAD, false, rng.u64(..)).await;
                    }
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_reproducible_and_bounded() {
        let a = schedule(7, 45_000, 3, 20, RedisKind::One);
        assert_eq!(a, schedule(7, 45_000, 3, 20, RedisKind::One));
        assert_ne!(a, schedule(8, 45_000, 3, 20, RedisKind::One));
        assert!(a.len() >= 10, "{a:?}");
        assert!(a.iter().all(|p| p.at_ms >= 1500 && p.at_ms + 2000 < 45_000));
        assert!(a.windows(2).all(|w| w[0].at_ms < w[1].at_ms));
        assert!(schedule(7, 3000, 3, 20, RedisKind::One).is_empty());
        let plain = |p: &Planned| {
            !matches!(
                p.fault,
                Fault::Failover { .. } | Fault::KillPrimary { .. } | Fault::Reshard { .. }
            )
        };
        assert!(a.iter().all(plain));
        let cluster = schedule(7, 120_000, 3, 20, RedisKind::Cluster);
        assert!(
            cluster
                .iter()
                .any(|p| matches!(p.fault, Fault::Reshard { .. }))
        );
        let ha = schedule(7, 120_000, 3, 20, RedisKind::Sentinel);
        assert!(ha.iter().all(|p| !matches!(p.fault, Fault::Reshard { .. })));
        assert!(ha.iter().any(|p| !plain(p)), "{ha:?}");
        assert!(
            ha.iter()
                .all(|p| !matches!(p.fault, Fault::RedisRestart { .. }))
        );
    }
}
