//! The system under test, started by the checker itself: Redis ([`RedisSet`]: one
//! `redis-server`, or a primary, a replica and three sentinels) and N gateway nodes on
//! loopback, each restartable, all killed when the run ends.
//!
//! Nodes listen on `127.0.0.1:0` the first time and print `http=ADDR` on stdout (read
//! from a file, like `loadtest/smoke.sh` does); a restarted node asks for the same port
//! again, as a load balancer's backend would come back, and falls back to a new one.
//!
//! [`Guard`] owns the cleanup: every child's pid is registered the moment it is spawned
//! ([`Procs`]), and dropping the guard (normal end, error, panic unwinding) SIGKILLs
//! whatever is still registered, so no `ssegate` or `redis-server` outlives the run. The
//! children are also `kill_on_drop`, for the runtime's own shutdown.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep, timeout};

use crate::check::redis::RedisSet;

/// Longest wait for a process to come up or go down.
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(15);
const STOP_TIMEOUT: Duration = Duration::from_secs(8);

/// Kills every registered child when dropped; removes the run directory unless kept.
#[derive(Debug)]
pub(crate) struct Guard {
    procs: Procs,
    pub(crate) dir: PathBuf,
    pub(crate) keep_dir: bool,
}

impl Guard {
    pub(crate) fn new(dir: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self {
            procs: Procs::default(),
            dir,
            keep_dir: false,
        })
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let pids: Vec<String> = self
            .procs
            .pids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(u32::to_string)
            .collect();
        if !pids.is_empty() {
            let _ = std::process::Command::new("kill")
                .arg("-KILL")
                .args(&pids)
                .stderr(Stdio::null())
                .status();
        }
        if !self.keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A started process.
#[derive(Debug)]
pub(crate) struct Proc {
    child: Child,
    pub(crate) pid: u32,
}

impl Proc {
    /// Its exit status, if it has exited.
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

/// Spawns and stops children, registering each with the [`Guard`].
#[derive(Debug, Clone, Default)]
pub(crate) struct Procs {
    pids: Arc<Mutex<BTreeSet<u32>>>,
}

impl Procs {
    /// Spawns `cmd` with no stdin and stdout and stderr appended to `out`.
    pub(crate) fn spawn(&self, cmd: &mut Command, out: &Path) -> anyhow::Result<Proc> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(out)?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.spawn_as_is(cmd)
    }

    fn spawn_as_is(&self, cmd: &mut Command) -> anyhow::Result<Proc> {
        let child = cmd.kill_on_drop(true).spawn()?;
        let pid = child.id().context("child has no pid")?;
        self.pids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pid);
        Ok(Proc { child, pid })
    }

    pub(crate) fn forget(&self, pid: u32) {
        self.pids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&pid);
    }

    /// Sends `signal` (`KILL`, `TERM`) and waits for the exit (SIGKILL after
    /// [`STOP_TIMEOUT`]).
    pub(crate) async fn stop(&self, mut p: Proc, signal: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(p.pid.to_string())
            .status()
            .await;
        if timeout(STOP_TIMEOUT, p.child.wait()).await.is_err() {
            let _ = p.child.start_kill();
            let _ = timeout(STOP_TIMEOUT, p.child.wait()).await;
        }
        self.forget(p.pid);
    }
}

/// What to start.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub(crate) gateway_bin: PathBuf,
    pub(crate) redis_bin: String,
    /// One Redis, Redis behind Sentinel (a primary, a replica, three sentinels), or a
    /// Redis Cluster.
    pub(crate) redis: crate::check::redis::RedisKind,
    pub(crate) nodes: usize,
    /// Extra `SSEGATE_*` settings for every node.
    pub(crate) env: Vec<(String, String)>,
}

#[derive(Debug)]
pub(crate) struct Topology {
    spec: Spec,
    dir: PathBuf,
    procs: Procs,
    pub(crate) redis: RedisSet,
    nodes: Vec<Option<Proc>>,
    starts: Vec<u32>,
    /// Every node's current address, shared with clients and publishers.
    pub(crate) addrs: Arc<RwLock<Vec<SocketAddr>>>,
}

impl Topology {
    /// Starts Redis and every node.
    pub(crate) async fn start(spec: Spec, guard: &Guard) -> anyhow::Result<Self> {
        let placeholder = SocketAddr::from(([127, 0, 0, 1], 1));
        let redis = RedisSet::start(
            &spec.redis_bin,
            guard.dir.clone(),
            guard.procs.clone(),
            spec.redis,
        )
        .await?;
        let mut t = Self {
            nodes: (0..spec.nodes).map(|_| None).collect(),
            starts: vec![0; spec.nodes],
            addrs: Arc::new(RwLock::new(vec![placeholder; spec.nodes])),
            spec,
            dir: guard.dir.clone(),
            procs: guard.procs.clone(),
            redis,
        };
        for i in 0..t.spec.nodes {
            t.start_node(i).await?;
        }
        Ok(t)
    }

    pub(crate) fn node_addr(&self, i: usize) -> SocketAddr {
        self.addrs.read().unwrap_or_else(|p| p.into_inner())[i]
    }

    /// Starts node `i` and waits for its `http=` line.
    pub(crate) async fn start_node(&mut self, i: usize) -> anyhow::Result<()> {
        let same_port = (self.starts[i] > 0).then(|| self.node_addr(i).port());
        match self.try_start_node(i, same_port).await {
            Ok(()) => Ok(()),
            // The old port may be taken meanwhile: any port will do.
            Err(_) if same_port.is_some() => self.try_start_node(i, None).await,
            Err(e) => Err(e),
        }
    }

    async fn try_start_node(&mut self, i: usize, port: Option<u16>) -> anyhow::Result<()> {
        self.starts[i] += 1;
        let out_path = self
            .dir
            .join(format!("node{}.{}.out", i + 1, self.starts[i]));
        let out = std::fs::File::create(&out_path)?;
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.node_log(i))?;
        let mut cmd = Command::new(&self.spec.gateway_bin);
        // Nothing of the caller's environment may change what is tested.
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("SSEGATE_")) {
            cmd.env_remove(k);
        }
        let (redis_key, redis_value) = self.redis.node_env();
        cmd.env(redis_key, redis_value)
            .env("SSEGATE_LISTEN", format!("127.0.0.1:{}", port.unwrap_or(0)))
            .env("SSEGATE_ADMIN_LISTEN", "off")
            .env("SSEGATE_NODE_ID", format!("node{}", i + 1))
            .env("SSEGATE_LOG", "warn");
        for (k, v) in &self.spec.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let mut p = self
            .procs
            .spawn_as_is(&mut cmd)
            .with_context(|| format!("starting {}", self.spec.gateway_bin.display()))?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let text = std::fs::read_to_string(&out_path).unwrap_or_default();
            if let Some(addr) = text
                .split_whitespace()
                .find_map(|w| w.strip_prefix("http="))
                .and_then(|a| a.parse::<SocketAddr>().ok())
            {
                self.addrs.write().unwrap_or_else(|p| p.into_inner())[i] = addr;
                self.nodes[i] = Some(p);
                return Ok(());
            }
            if let Some(status) = p.exited() {
                self.procs.forget(p.pid);
                bail!(
                    "node{} exited at start ({status}): {}",
                    i + 1,
                    tail(&self.node_log(i))
                );
            }
            if Instant::now() >= deadline {
                self.procs.stop(p, "KILL").await;
                bail!(
                    "node{} printed no http= line within {START_TIMEOUT:?}",
                    i + 1
                );
            }
            sleep(Duration::from_millis(25)).await;
        }
    }

    pub(crate) fn node_log(&self, i: usize) -> PathBuf {
        self.dir.join(format!("node{}.err", i + 1))
    }

    /// Sends `signal` (`KILL` or `TERM`) to node `i` and waits for it to exit (SIGKILL
    /// after [`STOP_TIMEOUT`]: a drain must end).
    pub(crate) async fn stop_node(&mut self, i: usize, signal: &str) {
        if let Some(p) = self.nodes[i].take() {
            self.procs.stop(p, signal).await;
        }
    }

    /// Processes that exited without being told to: (what, details). They are restarted.
    pub(crate) async fn reap_crashed(&mut self) -> Vec<String> {
        let mut crashed = self.redis.reap_crashed().await;
        for i in 0..self.nodes.len() {
            let exited = self.nodes[i]
                .as_mut()
                .and_then(|p| p.exited().map(|s| (s, p.pid)));
            if let Some((status, pid)) = exited {
                self.nodes[i] = None;
                self.procs.forget(pid);
                crashed.push(format!(
                    "node{} exited by itself ({status}): {}",
                    i + 1,
                    tail(&self.node_log(i))
                ));
                if let Err(e) = self.start_node(i).await {
                    crashed.push(format!("node{} did not restart: {e:#}", i + 1));
                }
            }
        }
        crashed
    }

    /// Brings everything that is down back up.
    pub(crate) async fn restore(&mut self) -> anyhow::Result<()> {
        self.redis.restore().await?;
        for i in 0..self.nodes.len() {
            if self.nodes[i].is_none() {
                self.start_node(i).await?;
            }
        }
        Ok(())
    }
}

/// The last few lines of a log, on one line.
pub(crate) fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(4)..].join(" | ")
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
