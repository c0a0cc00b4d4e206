//! `--redis-cluster`: three primaries and three replicas (`redis-server
//! --cluster-enabled yes`, joined with `redis-cli --cluster create --cluster-replicas 1`),
//! and the faults a Redis Cluster has in production: a manual `CLUSTER FAILOVER` of a
//! primary, a SIGKILL of a primary (its replica is promoted; the old one comes back as a
//! replica), and a slot migration (`redis-cli --cluster reshard`) between two primaries.
//! Each fault ends with the cluster whole again: every node up and `cluster_state:ok`,
//! every primary with a replica in sync.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use tokio::process::Command;
use tokio::time::{Instant, sleep};

use crate::check::redis::{RedisSet, Reply, addr, query, role};

/// How long a node may be unreachable before the cluster fails it over.
pub(crate) const NODE_TIMEOUT_MS: &str = "2000";
/// Primaries (each with one replica).
pub(crate) const PRIMARIES: usize = 3;
/// Longest wait for the cluster to be whole again.
const WHOLE_TIMEOUT: Duration = Duration::from_secs(30);

/// `redis-cli` beside the server binary the run was given.
fn cli(server_bin: &str) -> String {
    match server_bin.rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/redis-cli"),
        None => "redis-cli".to_owned(),
    }
}

impl RedisSet {
    /// Joins the (started, empty) servers into one cluster and waits until it is whole.
    pub(crate) async fn create_cluster(&self) -> anyhow::Result<()> {
        let addrs: Vec<String> = self.ports().iter().map(|p| addr(*p).to_string()).collect();
        let out = Command::new(cli(self.bin()))
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .await
            .context("running redis-cli --cluster create")?;
        ensure!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        self.wait_cluster_whole().await
    }

    /// The setting that points a gateway at the cluster: two seed nodes.
    pub(crate) fn cluster_seeds(&self) -> String {
        let p = self.ports();
        format!("{},{}", addr(p[0]), addr(p[1]))
    }

    /// The primaries now (live servers whose `ROLE` is master).
    pub(crate) async fn cluster_primaries(&self) -> Vec<SocketAddr> {
        let mut out = Vec::new();
        for (p, up) in self.ports().into_iter().zip(self.up()) {
            if up && role(addr(p)).await.as_deref() == Some("master") {
                out.push(addr(p));
            }
        }
        out
    }

    async fn replica_of(&self, primary: SocketAddr) -> anyhow::Result<SocketAddr> {
        for (p, up) in self.ports().into_iter().zip(self.up()) {
            if !up {
                continue;
            }
            if let Ok(Reply::Array(r)) = query(addr(p), &["ROLE"]).await
                && r.len() >= 3
                && r[0].text() == "slave"
                && r[2] == Reply::Int(i64::from(primary.port()))
            {
                return Ok(addr(p));
            }
        }
        bail!("{primary} has no replica")
    }

    /// `CLUSTER FAILOVER` on the replica of the primary `pick` chooses.
    pub(crate) async fn cluster_failover(&mut self, pick: usize) -> anyhow::Result<()> {
        let primaries = self.cluster_primaries().await;
        ensure!(!primaries.is_empty(), "no primary");
        let old = primaries[pick % primaries.len()];
        let replica = self.replica_of(old).await?;
        let reply = query(replica, &["CLUSTER", "FAILOVER"]).await?;
        ensure!(
            reply == Reply::Simple("OK".into()),
            "CLUSTER FAILOVER answered {reply:?}"
        );
        self.wait_cluster_whole().await?;
        ensure!(
            role(replica).await.as_deref() == Some("master"),
            "{replica} was not promoted"
        );
        Ok(())
    }

    /// SIGKILL of a primary; once its replica is promoted, waits `down` and brings it
    /// back (its `nodes.conf` makes it a replica of the new primary).
    pub(crate) async fn cluster_kill_primary(
        &mut self,
        pick: usize,
        down: Duration,
    ) -> anyhow::Result<()> {
        let primaries = self.cluster_primaries().await;
        ensure!(!primaries.is_empty(), "no primary");
        let old = primaries[pick % primaries.len()];
        let replica = self.replica_of(old).await?;
        let i = self.index_of(old)?;
        self.stop_server(i, "KILL").await;
        let deadline = Instant::now() + WHOLE_TIMEOUT;
        while role(replica).await.as_deref() != Some("master") {
            ensure!(Instant::now() < deadline, "{replica} was never promoted");
            sleep(Duration::from_millis(100)).await;
        }
        sleep(down).await;
        self.start_server(i, None).await?;
        self.wait_cluster_whole().await
    }

    /// Moves `slots` slots from one primary to another with `redis-cli --cluster reshard`.
    pub(crate) async fn cluster_reshard(&mut self, pick: usize, slots: u32) -> anyhow::Result<()> {
        let primaries = self.cluster_primaries().await;
        ensure!(primaries.len() >= 2, "fewer than two primaries");
        let from = primaries[pick % primaries.len()];
        let to = primaries[(pick + 1) % primaries.len()];
        let id = |a: SocketAddr| async move {
            match query(a, &["CLUSTER", "MYID"]).await? {
                Reply::Bulk(Some(id)) => Ok(id),
                other => bail!("CLUSTER MYID answered {other:?}"),
            }
        };
        let (from_id, to_id) = (id(from).await?, id(to).await?);
        let out = Command::new(cli(self.bin()))
            .args(["--cluster", "reshard", &from.to_string()])
            .args(["--cluster-from", &from_id, "--cluster-to", &to_id])
            .args(["--cluster-slots", &slots.to_string(), "--cluster-yes"])
            .output()
            .await
            .context("running redis-cli --cluster reshard")?;
        ensure!(
            out.status.success(),
            "redis-cli --cluster reshard failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        self.wait_cluster_whole().await
    }

    /// Until every server is up and reports `cluster_state:ok`, there are [`PRIMARIES`]
    /// primaries, and every replica's link to its primary is up.
    pub(crate) async fn wait_cluster_whole(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + WHOLE_TIMEOUT;
        loop {
            if self.cluster_is_whole().await {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "the Redis Cluster was not whole again within {WHOLE_TIMEOUT:?}"
            );
            sleep(Duration::from_millis(100)).await;
        }
    }

    async fn cluster_is_whole(&self) -> bool {
        let mut primaries = 0;
        for (p, up) in self.ports().into_iter().zip(self.up()) {
            if !up {
                return false;
            }
            let ok = matches!(
                query(addr(p), &["CLUSTER", "INFO"]).await,
                Ok(Reply::Bulk(Some(info))) if info.contains("cluster_state:ok")
            );
            if !ok {
                return false;
            }
            match query(addr(p), &["ROLE"]).await {
                Ok(Reply::Array(r)) if !r.is_empty() && r[0].text() == "master" => primaries += 1,
                Ok(Reply::Array(r)) if r.len() >= 4 && r[3].text() == "connected" => {}
                _ => return false,
            }
        }
        primaries == PRIMARIES
    }
}
