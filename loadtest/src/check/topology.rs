//! The system under test, started by the checker itself: one `redis-server` and N
//! gateway nodes on loopback, each restartable, all killed when the run ends.
//!
//! Redis runs with `--appendonly yes` (and no RDB snapshots) in the run's directory, so a
//! restart (SIGTERM: Redis flushes the AOF on a clean shutdown; `SHUTDOWN NOSAVE` would
//! too, but only a clean shutdown is what the fault means) keeps every acknowledged event
//! and the epoch, and a resumed client must then see no gap at all.
//!
//! Nodes listen on `127.0.0.1:0` the first time and print `http=ADDR` on stdout (read
//! from a file, like `loadtest/smoke.sh` does); a restarted node asks for the same port
//! again, as a load balancer's backend would come back, and falls back to a new one.
//!
//! [`Guard`] owns the cleanup: every child's pid is registered the moment it is spawned,
//! and dropping the guard (normal end, error, panic unwinding) SIGKILLs whatever is still
//! registered, so no `ssegate` or `redis-server` outlives the run. The children are also
//! `kill_on_drop`, for the runtime's own shutdown.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep, timeout};

/// Longest wait for a process to come up or go down.
const START_TIMEOUT: Duration = Duration::from_secs(15);
const STOP_TIMEOUT: Duration = Duration::from_secs(8);

/// Kills every registered child when dropped; removes the run directory unless kept.
#[derive(Debug)]
pub(crate) struct Guard {
    pids: Arc<Mutex<BTreeSet<u32>>>,
    pub(crate) dir: PathBuf,
    pub(crate) keep_dir: bool,
}

impl Guard {
    pub(crate) fn new(dir: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self {
            pids: Arc::default(),
            dir,
            keep_dir: false,
        })
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let pids: Vec<String> = self
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

/// What to start.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub(crate) gateway_bin: PathBuf,
    pub(crate) redis_bin: String,
    pub(crate) nodes: usize,
    /// Extra `SSEGATE_*` settings for every node.
    pub(crate) env: Vec<(String, String)>,
}

/// A started process.
#[derive(Debug)]
struct Proc {
    child: Child,
    pid: u32,
}

#[derive(Debug)]
pub(crate) struct Topology {
    spec: Spec,
    dir: PathBuf,
    pids: Arc<Mutex<BTreeSet<u32>>>,
    redis_port: u16,
    redis: Option<Proc>,
    nodes: Vec<Option<Proc>>,
    starts: Vec<u32>,
    /// Every node's current address, shared with clients and publishers.
    pub(crate) addrs: Arc<RwLock<Vec<SocketAddr>>>,
}

impl Topology {
    /// Starts Redis and every node.
    pub(crate) async fn start(spec: Spec, guard: &Guard) -> anyhow::Result<Self> {
        let redis_port = free_port()?;
        let placeholder = SocketAddr::from(([127, 0, 0, 1], 1));
        let mut t = Self {
            nodes: (0..spec.nodes).map(|_| None).collect(),
            starts: vec![0; spec.nodes],
            addrs: Arc::new(RwLock::new(vec![placeholder; spec.nodes])),
            spec,
            dir: guard.dir.clone(),
            pids: guard.pids.clone(),
            redis_port,
            redis: None,
        };
        t.start_redis().await?;
        for i in 0..t.spec.nodes {
            t.start_node(i).await?;
        }
        Ok(t)
    }

    pub(crate) fn redis_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.redis_port))
    }

    pub(crate) fn node_addr(&self, i: usize) -> SocketAddr {
        self.addrs.read().unwrap_or_else(|p| p.into_inner())[i]
    }

    fn spawn(&self, cmd: &mut Command) -> anyhow::Result<Proc> {
        let child = cmd.kill_on_drop(true).spawn()?;
        let pid = child.id().context("child has no pid")?;
        self.pids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pid);
        Ok(Proc { child, pid })
    }

    fn forget(&self, pid: u32) {
        self.pids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&pid);
    }

    /// Starts (or restarts) Redis on its port, waiting until it answers `PING`.
    pub(crate) async fn start_redis(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("redis.out"))?;
        let mut cmd = Command::new(&self.spec.redis_bin);
        cmd.args([
            "--port",
            &self.redis_port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .args([
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
        ])
        .arg("--dir")
        .arg(&self.dir)
        .args(["--logfile", "redis.log"]);
        if redis_major(&self.spec.redis_bin).await >= 7 {
            // DEBUG SLEEP is a fault we inject; Redis 7 disables DEBUG by default.
            cmd.args(["--enable-debug-command", "yes"]);
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let p = self.spawn(&mut cmd).context("starting redis-server")?;
        self.redis = Some(p);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(reply) = redis_cmd(self.redis_addr(), &["PING"]).await
                && reply == "+PONG"
            {
                return Ok(());
            }
            if let Some(p) = self.redis.as_mut()
                && let Ok(Some(status)) = p.child.try_wait()
            {
                bail!(
                    "redis-server exited at start ({status}); see {}",
                    self.dir.join("redis.log").display()
                );
            }
            if Instant::now() >= deadline {
                bail!("redis-server did not answer PING within {START_TIMEOUT:?}");
            }
            sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops Redis cleanly (SIGTERM: the AOF is flushed) and waits for it to exit.
    pub(crate) async fn stop_redis(&mut self) -> anyhow::Result<()> {
        if let Some(p) = self.redis.take() {
            self.stop(p, "TERM").await?;
        }
        Ok(())
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
        cmd.env(
            "SSEGATE_REDIS_URL",
            format!("redis://{}", self.redis_addr()),
        )
        .env("SSEGATE_LISTEN", format!("127.0.0.1:{}", port.unwrap_or(0)))
        .env("SSEGATE_ADMIN_LISTEN", "off")
        .env("SSEGATE_NODE_ID", format!("node{}", i + 1))
        .env("SSEGATE_LOG", "warn");
        for (k, v) in &self.spec.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let mut p = self
            .spawn(&mut cmd)
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
            if let Ok(Some(status)) = p.child.try_wait() {
                self.forget(p.pid);
                bail!(
                    "node{} exited at start ({status}): {}",
                    i + 1,
                    tail(&self.node_log(i))
                );
            }
            if Instant::now() >= deadline {
                self.stop(p, "KILL").await?;
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
    pub(crate) async fn stop_node(&mut self, i: usize, signal: &str) -> anyhow::Result<()> {
        if let Some(p) = self.nodes[i].take() {
            self.stop(p, signal).await?;
        }
        Ok(())
    }

    async fn stop(&self, mut p: Proc, signal: &str) -> anyhow::Result<()> {
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
        Ok(())
    }

    /// Processes that exited without being told to: (what, details). They are restarted.
    pub(crate) async fn reap_crashed(&mut self) -> Vec<String> {
        let mut crashed = Vec::new();
        if let Some(p) = self.redis.as_mut()
            && let Ok(Some(status)) = p.child.try_wait()
        {
            let pid = p.pid;
            self.redis = None;
            self.forget(pid);
            crashed.push(format!("redis-server exited by itself ({status})"));
            if let Err(e) = self.start_redis().await {
                crashed.push(format!("redis-server did not restart: {e:#}"));
            }
        }
        for i in 0..self.nodes.len() {
            let exited = match self.nodes[i].as_mut() {
                Some(p) => p.child.try_wait().ok().flatten().map(|s| (s, p.pid)),
                None => None,
            };
            if let Some((status, pid)) = exited {
                self.nodes[i] = None;
                self.forget(pid);
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
        if self.redis.is_none() {
            self.start_redis().await?;
        }
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

/// Sends one command to Redis over a fresh connection and returns the first reply line
/// (enough for `PING`, `CLIENT KILL`, `DEBUG SLEEP`). Bounded by a timeout.
pub(crate) async fn redis_cmd(addr: SocketAddr, args: &[&str]) -> anyhow::Result<String> {
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    let exchange = async {
        let mut tcp = TcpStream::connect(addr).await?;
        tcp.write_all(req.as_bytes()).await?;
        let mut line = String::new();
        BufReader::new(tcp).read_line(&mut line).await?;
        anyhow::Ok(line.trim_end().to_owned())
    };
    timeout(Duration::from_secs(5), exchange)
        .await
        .context("redis command timed out")?
}
