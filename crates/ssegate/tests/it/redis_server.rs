//! A real `redis-server` per test, on a free loopback port, in its own directory.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::helpers::WAIT;

pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    persistent: bool,
    /// More arguments (a replica's `--replicaof`), kept for a restart.
    extra: Vec<String>,
    child: Option<Child>,
}

/// One command to the Redis (or sentinel) on `port` of loopback.
pub async fn query<T: redis::FromRedisValue>(port: u16, args: &[&str]) -> redis::RedisResult<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(&mut conn).await
}

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl RedisServer {
    /// Starts Redis; with `persistent`, an AOF fsynced on every write, so that a restart
    /// keeps everything that was acknowledged.
    pub async fn start(persistent: bool) -> Self {
        Self::start_with(persistent, &[]).await
    }

    /// [`RedisServer::start`] with more arguments.
    pub async fn start_with(persistent: bool, extra: &[&str]) -> Self {
        let mut server = Self {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            persistent,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            child: None,
        };
        // A port that free_port saw free may be taken before Redis binds it (another test
        // starting a server at the same moment): start again on another, with what Redis
        // said in the panic when every try failed.
        let mut said = Vec::new();
        for _ in 0..3 {
            match server.boot().await {
                Ok(()) => return server,
                Err(log) => said.push(log),
            }
            server.port = free_port();
        }
        panic!("redis-server did not start: {said:#?}");
    }

    /// Sends `sig` (`STOP`, `CONT`, ...) to the server.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().and_then(Child::id).expect("running");
        let status = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGKILL: a crash, nothing flushed.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }

    /// Starts the server on `self.port`; `Err` with what it logged when it did not
    /// become ready.
    async fn boot(&mut self) -> Result<(), Vec<String>> {
        let aof = if self.persistent { "yes" } else { "no" };
        let mut child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", aof, "--appendfsync", "always"])
            .args(&self.extra)
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--logfile", ""])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server is installed (scripts/test installs it)");
        let stdout = child.stdout.take().unwrap();
        self.child = Some(child);
        // Redis logs this line once it accepts connections.
        let mut lines = BufReader::new(stdout).lines();
        let mut log = Vec::new();
        let ready = tokio::time::timeout(WAIT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("Ready to accept connections") {
                    return true;
                }
                log.push(line);
            }
            false
        })
        .await;
        if ready.ok() != Some(true) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill().await;
            }
            return Err(log);
        }
        // Keep draining its log so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub async fn cmd(&self, args: &[&str]) -> redis::Value {
        query(self.port, args).await.unwrap()
    }

    /// How often Redis has run `cmd` (`calls=` in `INFO commandstats`).
    pub async fn calls(&self, cmd: &str) -> u64 {
        let info = match self.cmd(&["INFO", "commandstats"]).await {
            redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
            redis::Value::VerbatimString { text, .. } => text,
            other => panic!("INFO: {other:?}"),
        };
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Stops Redis (SIGTERM: a clean shutdown) and waits for it to exit.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id().unwrap().to_string();
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status();
            tokio::time::timeout(WAIT, child.wait())
                .await
                .unwrap()
                .unwrap();
        }
    }

    /// Starts Redis again on the same port and directory.
    pub async fn restart(&mut self) {
        if let Err(log) = self.boot().await {
            panic!("redis-server did not start again: {log:#?}");
        }
    }
}
