//! The coordinator's side of the worker processes: start them (this same binary with the
//! hidden `worker` subcommand), send commands, follow their progress, collect reports.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use crate::proto::{FromWorker, Progress, ToWorker, WorkerPlan, WorkerReport};

/// Most subscribers one worker process holds (the per-process open-files limit here is
/// 20,000; this leaves room for the runtime and the odd reconnect).
pub(crate) const MAX_PER_WORKER: usize = 15_000;

#[derive(Debug)]
pub(crate) struct Pool {
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
    events: mpsc::UnboundedReceiver<(usize, FromWorker)>,
    progress: Vec<Progress>,
    reports: Vec<Option<WorkerReport>>,
    /// Every worker's stdout has closed.
    closed: bool,
}

impl Pool {
    /// Starts one worker per plan and sends it its plan.
    pub(crate) async fn start(plans: Vec<WorkerPlan>) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find this program's path")?;
        let (tx, events) = mpsc::unbounded_channel();
        let mut children = Vec::new();
        let mut stdins = Vec::new();
        for (i, plan) in plans.iter().enumerate() {
            let mut child = Command::new(&exe)
                .arg("worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .context("cannot start a worker process")?;
            let stdout = child.stdout.take().context("worker stdout")?;
            let mut stdin = child.stdin.take().context("worker stdin")?;
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    match serde_json::from_str::<FromWorker>(&line) {
                        Ok(msg) => {
                            if tx.send((i, msg)).is_err() {
                                break;
                            }
                        }
                        Err(e) => eprintln!("worker {i}: unreadable line ({e}): {line}"),
                    }
                }
            });
            write(&mut stdin, &ToWorker::Start(plan.clone())).await?;
            children.push(child);
            stdins.push(stdin);
        }
        let n = plans.len();
        Ok(Self {
            children,
            stdins,
            events,
            progress: vec![Progress::default(); n],
            reports: vec![None; n],
            closed: false,
        })
    }

    /// The sum of the latest progress of every worker.
    pub(crate) fn progress(&self) -> Progress {
        let mut sum = Progress::default();
        for p in &self.progress {
            sum.ever_live += p.ever_live;
            sum.live += p.live;
            sum.connect_failures += p.connect_failures;
            sum.received += p.received;
        }
        sum
    }

    /// Handles messages for up to `wait`. Fails when every worker is gone before
    /// reporting.
    pub(crate) async fn pump(&mut self, wait: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if self.closed {
                if self.reports.iter().all(Option::is_some) {
                    return Ok(());
                }
                bail!("the worker processes stopped without reporting (see their errors above)");
            }
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => return Ok(()),
                Ok(None) => self.closed = true,
                Ok(Some((i, msg))) => match msg {
                    FromWorker::Progress(p) => self.progress[i] = p,
                    FromWorker::Dropped { .. } => {}
                    FromWorker::Report(r) => {
                        self.progress[i] = r.progress;
                        self.reports[i] = Some(*r);
                    }
                },
            }
        }
    }

    /// Waits (up to `timeout`) until `done` holds for the summed progress.
    pub(crate) async fn wait_for(
        &mut self,
        timeout: Duration,
        done: impl Fn(&Progress) -> bool,
    ) -> anyhow::Result<bool> {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if done(&self.progress()) {
                return Ok(true);
            }
            self.pump(Duration::from_millis(50)).await?;
        }
        Ok(done(&self.progress()))
    }

    pub(crate) async fn broadcast(&mut self, cmd: &ToWorker) -> anyhow::Result<()> {
        for stdin in &mut self.stdins {
            write(stdin, cmd).await?;
        }
        Ok(())
    }

    /// Sends `Finish` and collects every report (waiting up to the grace time plus a
    /// margin), then stops the workers.
    pub(crate) async fn finish(
        mut self,
        last_seq: Vec<u64>,
        grace: Duration,
    ) -> anyhow::Result<Vec<WorkerReport>> {
        let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        self.broadcast(&ToWorker::Finish { last_seq, grace_ms })
            .await?;
        let deadline = tokio::time::Instant::now() + grace + Duration::from_secs(15);
        while self.reports.iter().any(Option::is_none) && tokio::time::Instant::now() < deadline {
            self.pump(Duration::from_millis(100)).await?;
        }
        self.stdins.clear();
        for child in &mut self.children {
            if tokio::time::timeout(Duration::from_secs(5), child.wait())
                .await
                .is_err()
            {
                let _ = child.start_kill();
            }
        }
        let missing = self.reports.iter().filter(|r| r.is_none()).count();
        if missing > 0 {
            bail!("{missing} worker(s) sent no report");
        }
        Ok(self.reports.into_iter().flatten().collect())
    }
}

async fn write(stdin: &mut ChildStdin, cmd: &ToWorker) -> anyhow::Result<()> {
    let mut line = serde_json::to_vec(cmd)?;
    line.push(b'\n');
    stdin.write_all(&line).await?;
    stdin.flush().await?;
    Ok(())
}
