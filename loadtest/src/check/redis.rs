//! Redis for the checker: one standalone `redis-server`, or (`--sentinel`) a primary, a
//! replica and three sentinels, or (`--redis-cluster`, see [`crate::check::cluster`]) a
//! Redis Cluster of three primaries and three replicas, all real processes on loopback,
//! each restartable.
//!
//! Every data server runs with `--appendonly yes` (and no RDB snapshots) in its own
//! directory of the run's, so a clean restart (SIGTERM: the AOF is flushed) keeps every
//! acknowledged event and the epoch, and a resumed client must then see no gap at all.
//!
//! Behind Sentinel the faults are the ones a production deployment has: a manual
//! `SENTINEL FAILOVER`, and a SIGKILL of the primary (the sentinels promote the replica;
//! the old primary comes back as a replica of the new one). Each fault ends with the set
//! whole again (both data servers up, the replica in sync, the sentinels agreeing), so
//! that the next failover has a replica to promote.
//!
//! Also the tiny RESP client the faults use ([`query`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::time::{Instant, sleep, timeout};

use crate::check::topology::{Proc, Procs, START_TIMEOUT};

/// The sentinels' name for the primary (the gateway's default `SSEGATE_REDIS_MASTER_NAME`).
const MASTER: &str = "mymaster";
/// Longest wait for a promotion or for the replica to be in sync again.
const HA_TIMEOUT: Duration = Duration::from_secs(30);

/// One Redis process.
#[derive(Debug)]
struct Server {
    name: String,
    port: u16,
    /// The cluster bus port, kept across restarts. Given, because Redis's default (the
    /// port + 10000) is past 65535 for a port above 55535, which free ports can be.
    bus: u16,
    proc: Option<Proc>,
}

/// Which Redis topology a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RedisKind {
    One,
    Sentinel,
    Cluster,
}

#[derive(Debug)]
pub(crate) struct RedisSet {
    kind: RedisKind,
    bin: String,
    dir: PathBuf,
    procs: Procs,
    /// Data servers: one, or a primary and a replica (which is which changes).
    servers: Vec<Server>,
    /// Empty without `--sentinel`.
    sentinels: Vec<Server>,
    debug_command: bool,
}

impl RedisSet {
    pub(crate) async fn start(
        bin: &str,
        dir: PathBuf,
        procs: Procs,
        kind: RedisKind,
    ) -> anyhow::Result<Self> {
        let sentinel = kind == RedisKind::Sentinel;
        let data = match kind {
            RedisKind::One => 1,
            RedisKind::Sentinel => 2,
            RedisKind::Cluster => 2 * crate::check::cluster::PRIMARIES,
        };
        let mut set = Self {
            kind,
            bin: bin.to_owned(),
            servers: (0..data)
                .map(|i| {
                    Ok(Server {
                        name: format!("redis{}", i + 1),
                        port: crate::check::topology::free_port()?,
                        bus: crate::check::topology::free_port()?,
                        proc: None,
                    })
                })
                .collect::<anyhow::Result<_>>()?,
            sentinels: Vec::new(),
            debug_command: redis_major(bin).await >= 7,
            dir,
            procs,
        };
        if kind == RedisKind::Cluster {
            for i in 0..data {
                set.start_server(i, None).await?;
            }
            set.create_cluster().await?;
            return Ok(set);
        }
        set.start_server(0, None).await?;
        if sentinel {
            let primary = set.servers[0].port;
            set.start_server(1, Some(primary)).await?;
            for k in 0..3 {
                let port = crate::check::topology::free_port()?;
                let name = format!("sentinel{}", k + 1);
                let sdir = set.dir.join(&name);
                std::fs::create_dir_all(&sdir)?;
                let conf = sdir.join("sentinel.conf");
                std::fs::write(
                    &conf,
                    format!(
                        "port {port}\nbind 127.0.0.1\ndir {}\nlogfile sentinel.log\n\
                         sentinel monitor {MASTER} 127.0.0.1 {primary} 2\n\
                         sentinel down-after-milliseconds {MASTER} 1000\n\
                         sentinel failover-timeout {MASTER} 4000\n\
                         sentinel parallel-syncs {MASTER} 1\n",
                        sdir.display()
                    ),
                )?;
                let mut cmd = Command::new(&set.bin);
                cmd.arg(&conf).arg("--sentinel");
                let p = set.procs.spawn(&mut cmd, &sdir.join("out"))?;
                set.sentinels.push(Server {
                    name,
                    port,
                    bus: 0, // a sentinel has no cluster bus
                    proc: Some(p),
                });
                wait_ping(port, &format!("sentinel{}", k + 1)).await?;
            }
            set.wait_whole().await?;
        }
        Ok(set)
    }

    /// The setting that points a gateway node at this set.
    pub(crate) fn node_env(&self) -> (&'static str, String) {
        if self.kind == RedisKind::Cluster {
            ("SSEGATE_REDIS_CLUSTER", self.cluster_seeds())
        } else if self.sentinels.is_empty() {
            (
                "SSEGATE_REDIS_URL",
                format!("redis://{}", addr(self.servers[0].port)),
            )
        } else {
            let list: Vec<String> = self
                .sentinels
                .iter()
                .map(|s| addr(s.port).to_string())
                .collect();
            ("SSEGATE_REDIS_SENTINELS", list.join(","))
        }
    }

    /// What the run prints about Redis.
    pub(crate) fn describe(&self) -> String {
        let ports: Vec<String> = self.servers.iter().map(|s| s.port.to_string()).collect();
        if self.kind == RedisKind::Cluster {
            format!("a Redis Cluster on ports {} (AOF)", ports.join(", "))
        } else if self.sentinels.is_empty() {
            format!("redis {} (AOF)", addr(self.servers[0].port))
        } else {
            let sentinels: Vec<String> =
                self.sentinels.iter().map(|s| s.port.to_string()).collect();
            format!(
                "redis on ports {} behind sentinels on {} (AOF)",
                ports.join(", "),
                sentinels.join(", ")
            )
        }
    }

    /// The current primary: the sentinels' answer (the first that answers), or the one
    /// data server.
    pub(crate) async fn primary(&self) -> anyhow::Result<SocketAddr> {
        if self.kind == RedisKind::Cluster {
            let primaries = self.cluster_primaries().await;
            return primaries
                .get(fastrand::usize(..primaries.len().max(1)))
                .copied()
                .context("no Redis Cluster primary answers");
        }
        if self.sentinels.is_empty() {
            return Ok(addr(self.servers[0].port));
        }
        let mut last = None;
        for s in &self.sentinels {
            match query(
                addr(s.port),
                &["SENTINEL", "get-master-addr-by-name", MASTER],
            )
            .await
            {
                Ok(Reply::Array(a)) if a.len() == 2 => {
                    let port = a[1]
                        .text()
                        .parse::<u16>()
                        .context("sentinel named no port")?;
                    return Ok(addr(port));
                }
                Ok(other) => last = Some(anyhow::anyhow!("sentinel answered {other:?}")),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no sentinel")))
    }

    pub(crate) fn index_of(&self, a: SocketAddr) -> anyhow::Result<usize> {
        self.servers
            .iter()
            .position(|s| addr(s.port) == a)
            .with_context(|| format!("{a} is none of the data servers"))
    }

    /// Stops the (one) data server cleanly, waits `down`, starts it again.
    pub(crate) async fn restart(&mut self, down: Duration) -> anyhow::Result<()> {
        self.stop_server(0, "TERM").await;
        sleep(down).await;
        self.start_server(0, None).await
    }

    /// `SENTINEL FAILOVER`, then waits for the promotion and for the set to be whole.
    pub(crate) async fn failover(&mut self) -> anyhow::Result<()> {
        let old = self.primary().await?;
        let reply = query(
            addr(self.sentinels[0].port),
            &["SENTINEL", "FAILOVER", MASTER],
        )
        .await?;
        ensure!(
            reply == Reply::Simple("OK".into()),
            "SENTINEL FAILOVER answered {reply:?}"
        );
        self.wait_promoted(old).await?;
        self.wait_whole().await
    }

    /// SIGKILL of the primary; once the sentinels promoted the replica, waits `down` and
    /// brings the old primary back as a replica of the new one.
    pub(crate) async fn kill_primary(&mut self, down: Duration) -> anyhow::Result<()> {
        let old = self.primary().await?;
        let i = self.index_of(old)?;
        self.stop_server(i, "KILL").await;
        self.wait_promoted(old).await?;
        sleep(down).await;
        let new = self.primary().await?;
        self.start_server(i, Some(new.port())).await?;
        self.wait_whole().await
    }

    /// Waits until the sentinels name a primary other than `old` that says it is one.
    async fn wait_promoted(&self, old: SocketAddr) -> anyhow::Result<()> {
        let deadline = Instant::now() + HA_TIMEOUT;
        loop {
            if let Ok(p) = self.primary().await
                && p != old
                && role(p).await.as_deref() == Some("master")
            {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "no promotion within {HA_TIMEOUT:?}"
            );
            sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every data server is up, the one the sentinels name is the primary,
    /// the others replicate it in sync, and every sentinel sees a promotable replica.
    async fn wait_whole(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + HA_TIMEOUT;
        loop {
            if self.is_whole().await {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "the Redis set was not whole again within {HA_TIMEOUT:?}"
            );
            sleep(Duration::from_millis(100)).await;
        }
    }

    async fn is_whole(&self) -> bool {
        let Ok(primary) = self.primary().await else {
            return false;
        };
        if role(primary).await.as_deref() != Some("master") {
            return false;
        }
        for s in &self.servers {
            let a = addr(s.port);
            if a == primary {
                continue;
            }
            // ROLE of a replica: slave, host, port, state, offset.
            match query(a, &["ROLE"]).await {
                Ok(Reply::Array(r))
                    if r.len() >= 4
                        && r[0].text() == "slave"
                        && r[2] == Reply::Int(i64::from(primary.port()))
                        && r[3].text() == "connected" => {}
                _ => return false,
            }
        }
        for s in &self.sentinels {
            let Ok(Reply::Array(replicas)) =
                query(addr(s.port), &["SENTINEL", "replicas", MASTER]).await
            else {
                return false;
            };
            let good = replicas.iter().any(|r| {
                r.field("flags").as_deref() == Some("slave")
                    && r.field("master-link-status").as_deref() == Some("ok")
            });
            if !good {
                return false;
            }
        }
        true
    }

    /// Starts data server `i` (as a replica of `replica_of`), waiting until it answers.
    pub(crate) async fn start_server(
        &mut self,
        i: usize,
        replica_of: Option<u16>,
    ) -> anyhow::Result<()> {
        let s = &self.servers[i];
        let sdir = self.dir.join(&s.name);
        std::fs::create_dir_all(&sdir)?;
        let mut cmd = Command::new(&self.bin);
        cmd.args(["--port", &s.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
            ])
            .arg("--dir")
            .arg(&sdir)
            .args(["--logfile", "redis.log"]);
        if let Some(p) = replica_of {
            cmd.args(["--replicaof", "127.0.0.1", &p.to_string()]);
        }
        if self.kind == RedisKind::Cluster {
            cmd.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-port",
                &s.bus.to_string(),
            ])
            .args([
                "--cluster-node-timeout",
                crate::check::cluster::NODE_TIMEOUT_MS,
            ]);
        }
        if self.debug_command {
            // DEBUG SLEEP is a fault we inject; Redis 7 disables DEBUG by default.
            cmd.args(["--enable-debug-command", "yes"]);
        }
        let p = self
            .procs
            .spawn(&mut cmd, &sdir.join("out"))
            .context("starting redis-server")?;
        let (name, port) = (s.name.clone(), s.port);
        self.servers[i].proc = Some(p);
        wait_ping(port, &name)
            .await
            .with_context(|| format!("see {}", sdir.join("redis.log").display()))
    }

    pub(crate) async fn stop_server(&mut self, i: usize, signal: &str) {
        if let Some(p) = self.servers[i].proc.take() {
            self.procs.stop(p, signal).await;
        }
    }

    /// Processes that exited without being told to; they are restarted.
    pub(crate) async fn reap_crashed(&mut self) -> Vec<String> {
        let mut crashed = Vec::new();
        for i in 0..self.servers.len() + self.sentinels.len() {
            let s = if i < self.servers.len() {
                &mut self.servers[i]
            } else {
                &mut self.sentinels[i - self.servers.len()]
            };
            if let Some(status) = s.proc.as_mut().and_then(Proc::exited) {
                let p = s.proc.take();
                crashed.push(format!("{} exited by itself ({status})", s.name));
                if let Some(p) = p {
                    self.procs.forget(p.pid);
                }
            }
        }
        if !crashed.is_empty()
            && let Err(e) = self.restore().await
        {
            crashed.push(format!("redis did not restart: {e:#}"));
        }
        crashed
    }

    /// Brings every data server that is down back up (a sentinel that crashed is not
    /// restarted: two of three still elect).
    pub(crate) async fn restore(&mut self) -> anyhow::Result<()> {
        for i in 0..self.servers.len() {
            if self.servers[i].proc.is_none() {
                let of = if self.sentinels.is_empty() || self.kind == RedisKind::Cluster {
                    None
                } else {
                    Some(self.primary().await?.port())
                };
                self.start_server(i, of).await?;
            }
        }
        if self.kind == RedisKind::Cluster {
            self.wait_cluster_whole().await?;
        } else if !self.sentinels.is_empty() {
            self.wait_whole().await?;
        }
        Ok(())
    }

    pub(crate) fn ports(&self) -> Vec<u16> {
        self.servers.iter().map(|s| s.port).collect()
    }

    /// Per data server: whether it runs.
    pub(crate) fn up(&self) -> Vec<bool> {
        self.servers.iter().map(|s| s.proc.is_some()).collect()
    }

    pub(crate) fn kind(&self) -> RedisKind {
        self.kind
    }

    pub(crate) fn bin(&self) -> &str {
        &self.bin
    }
}

pub(crate) fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

async fn wait_ping(port: u16, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if query(addr(port), &["PING"]).await.ok() == Some(Reply::Simple("PONG".into())) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{what} did not answer PING within {START_TIMEOUT:?}");
        }
        sleep(Duration::from_millis(50)).await;
    }
}

/// A data server's role (`master`, `slave`), or `None` when it does not answer.
pub(crate) async fn role(a: SocketAddr) -> Option<String> {
    match query(a, &["ROLE"]).await {
        Ok(Reply::Array(r)) if !r.is_empty() => Some(r[0].text()),
        _ => None,
    }
}

/// The major version of `redis-server` (0 when unknown).
async fn redis_major(bin: &str) -> u32 {
    let out = Command::new(bin).arg("--version").output().await;
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("v="))
        .and_then(|v| v.split('.').next()?.parse().ok())
        .unwrap_or(0)
}

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<String>),
    Array(Vec<Reply>),
}

impl Reply {
    /// A string reply's text (empty for anything else).
    pub(crate) fn text(&self) -> String {
        match self {
            Self::Simple(s) | Self::Bulk(Some(s)) => s.clone(),
            Self::Int(n) => n.to_string(),
            _ => String::new(),
        }
    }

    /// In a flat `key value key value ...` array (what `SENTINEL replicas` gives per
    /// replica), the value of `key`.
    fn field(&self, key: &str) -> Option<String> {
        let Self::Array(kv) = self else { return None };
        kv.chunks(2)
            .find(|p| p.len() == 2 && p[0].text() == key)
            .map(|p| p[1].text())
    }
}

/// Sends one command over a fresh connection and reads its reply. Bounded by a timeout.
pub(crate) async fn query(a: SocketAddr, args: &[&str]) -> anyhow::Result<Reply> {
    let mut req = format!("*{}\r\n", args.len());
    for arg in args {
        req.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    let exchange = async {
        let mut tcp = TcpStream::connect(a).await?;
        tcp.write_all(req.as_bytes()).await?;
        read_reply(&mut BufReader::new(tcp), 0).await
    };
    timeout(Duration::from_secs(5), exchange)
        .await
        .context("redis command timed out")?
}

/// Reads one reply; nesting, array lengths and bulk sizes are bounded (this reads only
/// our own servers' small answers).
async fn read_reply<R: AsyncBufRead + Unpin + Send>(r: &mut R, depth: u8) -> anyhow::Result<Reply> {
    ensure!(depth < 8, "reply nested too deep");
    let mut line = String::new();
    r.read_line(&mut line).await?;
    let line = line.trim_end_matches(['\r', '\n']);
    ensure!(!line.is_empty(), "connection closed before a reply");
    let (kind, rest) = line.split_at(1);
    let num = || {
        rest.parse::<i64>()
            .with_context(|| format!("bad length {rest:?}"))
    };
    Ok(match kind {
        "+" => Reply::Simple(rest.to_owned()),
        "-" => Reply::Error(rest.to_owned()),
        ":" => Reply::Int(num()?),
        "$" => {
            let n = num()?;
            if n < 0 {
                return Ok(Reply::Bulk(None));
            }
            ensure!(n <= 1 << 20, "bulk reply of {n} bytes");
            let mut buf = vec![0; n as usize + 2];
            r.read_exact(&mut buf).await?;
            buf.truncate(n as usize);
            Reply::Bulk(Some(String::from_utf8_lossy(&buf).into_owned()))
        }
        "*" => {
            let n = num()?;
            ensure!(n <= 10_000, "array reply of {n} elements");
            let mut items = Vec::new();
            for _ in 0..n.max(0) {
                items.push(Box::pin(read_reply(r, depth + 1)).await?);
            }
            Reply::Array(items)
        }
        _ => bail!("not a RESP reply: {line:?}"),
    })
}
