//! `ssegate-loadtest check`: a randomized history checker (the Jepsen idea) for the
//! delivery contract of a Redis-backed cluster.
//!
//! It starts its own system (a `redis-server` with AOF, or with `--sentinel` a primary,
//! a replica and three sentinels, or with `--redis-cluster` three primaries and three
//! replicas, and N gateway nodes on loopback), lets random clients
//! open, read, stall, drop and resume single- and multi-channel streams on random nodes
//! while publishers publish with `Idempotency-Key` and retries, injects faults drawn from
//! the seed (node SIGKILL and SIGTERM, pub/sub connection kills, Redis restarts and
//! `DEBUG SLEEP`, or behind Sentinel `SENTINEL FAILOVER` and primary SIGKILLs, or on a
//! Redis Cluster `CLUSTER FAILOVER`, primary SIGKILLs and slot migrations; client stalls),
//! records everything with one monotonic clock, then stops publishing, lets every client
//! catch up, reads each channel's stream back as ground truth, and checks the whole
//! history against the contract (see [`model`]). Any anomaly prints a minimal history
//! that shows it, and the exit status is 1.
//!
//! The key rule: a stream starts at its response head. A fresh session owes every event
//! whose publish began after the head arrived; a resumed one owes every event after its
//! cursor. Nothing here waits for the id-only opening frame before counting.
//!
//! A seed fixes every random choice (clients' channels, session lengths, fresh or
//! resumed, nodes, publish channels and sizes, the fault schedule); thread and network
//! timing still differ between runs, so a seed reproduces the scenario, and usually the
//! anomaly, not the exact interleaving.
//!
//! # Layout
//!
//! * `mod.rs` — the command's options and the run: start, load, faults, quiet phase,
//!   ground truth, check, report.
//! * [`topology`] — the gateway processes, restarts, the kill-everything
//!   [`topology::Guard`].
//! * [`redis`] — Redis: standalone or behind Sentinel, its faults, a tiny RESP client;
//!   [`cluster`] — a Redis Cluster and its faults.
//! * [`faults`] — the seeded fault schedule and its runner.
//! * [`publish`] — publishers with idempotent retries, and the prober that publishes
//!   right after a fresh session's head.
//! * [`client`] — the clients and their sessions (raw reader + `ssegate_client::Parser`).
//! * [`record`] — the recorded history: publishes, sessions, faults, ground truth; the
//!   event data and id formats.
//! * [`model`] — the checker proper; [`report`] — the report and minimal histories.
//! * `tests.rs` — the model on synthetic histories.

mod client;
mod cluster;
mod faults;
mod model;
mod publish;
mod record;
mod redis;
mod report;
#[cfg(test)]
mod tests;
mod topology;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use ssegate_client::HttpClient;
use tokio::sync::{Mutex, mpsc, watch};
use tokio::time::{Instant, sleep, timeout};

use crate::check::client::Phase;
use crate::check::record::{Entry, History, Recorder, Truth, decode_data, parse_single};
use crate::check::redis::RedisKind;
use crate::check::topology::{Guard, Spec, Topology};

/// Options of `check`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct CheckArgs {
    /// Seed of every random choice (printed at the start); random when absent.
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// Seconds of publishing with faults (then a quiet phase of at most --final-timeout).
    #[arg(short = 'd', long, default_value_t = 30.0)]
    pub(crate) duration: f64,
    /// Gateway nodes.
    #[arg(long, default_value_t = 3)]
    pub(crate) nodes: usize,
    /// The gateway binary (default: `ssegate` next to this executable).
    #[arg(long)]
    pub(crate) gateway_bin: Option<PathBuf>,
    /// The Redis server binary.
    #[arg(long, default_value = "redis-server")]
    pub(crate) redis_bin: String,
    /// Redis behind Sentinel: a primary, a replica and three sentinels; the faults include
    /// `SENTINEL FAILOVER` and SIGKILLs of the primary.
    #[arg(long, conflicts_with = "redis_cluster")]
    pub(crate) sentinel: bool,
    /// A Redis Cluster of three primaries and three replicas; the faults include
    /// `CLUSTER FAILOVER`, SIGKILLs of a primary and slot migrations of busy channels.
    #[arg(long)]
    pub(crate) redis_cluster: bool,
    /// `SSEGATE_PUBLISH_MIN_REPLICAS` of every node (with --sentinel). With 0, a failover
    /// may lose acknowledged events, and the check then demands that every such loss is
    /// announced with `sync-required`; with 1, nothing acknowledged may be lost.
    #[arg(long, default_value_t = 0, requires = "sentinel")]
    pub(crate) min_replicas: u32,
    /// Clients (each a chain of sessions); every third one is multi-channel.
    #[arg(long, default_value_t = 18)]
    pub(crate) clients: usize,
    /// Channels.
    #[arg(long, default_value_t = 4)]
    pub(crate) channels: usize,
    /// Publisher tasks (each publishes one event at a time, 5–60 ms apart).
    #[arg(long, default_value_t = 3)]
    pub(crate) publishers: usize,
    /// No faults (a baseline).
    #[arg(long)]
    pub(crate) no_faults: bool,
    /// Seconds the clients have to catch up once publishing stopped.
    #[arg(long, default_value_t = 15.0)]
    pub(crate) final_timeout: f64,
    /// Keep the run directory (logs, AOF) even when the check passes.
    #[arg(long)]
    pub(crate) keep_dir: bool,
}

impl CheckArgs {
    fn redis_kind(&self) -> RedisKind {
        match (self.sentinel, self.redis_cluster) {
            (true, _) => RedisKind::Sentinel,
            (_, true) => RedisKind::Cluster,
            _ => RedisKind::One,
        }
    }
}

/// Settings of every node: short retries and drain (so clients come back quickly),
/// history far larger than a run (so nothing is trimmed and every `sync-required` is
/// spurious), and a small live backlog (so that slow readers take the catch-up path).
const NODE_ENV: &[(&str, &str)] = &[
    ("SSEGATE_RETRY", "200ms"),
    ("SSEGATE_RETRY_JITTER", "200ms"),
    ("SSEGATE_DRAIN_WINDOW", "1s"),
    ("SSEGATE_HISTORY_MAX_LEN", "1000000"),
    ("SSEGATE_HISTORY_MAX_AGE", "24h"),
    ("SSEGATE_LIVE_BACKLOG", "32"),
    ("SSEGATE_HEARTBEAT_INTERVAL", "2s"),
];

/// Runs the check; `Ok(false)` when anomalies were found.
pub(crate) async fn run(args: CheckArgs) -> anyhow::Result<bool> {
    ensure!(
        args.nodes >= 1 && args.nodes <= 16,
        "--nodes must be 1..=16"
    );
    ensure!(
        args.clients >= 1 && args.clients <= 2000,
        "--clients must be 1..=2000"
    );
    ensure!(
        args.channels >= 1 && args.channels <= 64,
        "--channels must be 1..=64"
    );
    ensure!(
        args.publishers >= 1 && args.publishers <= 64,
        "--publishers must be 1..=64"
    );
    ensure!(
        args.duration > 0.0 && args.duration <= 86_400.0,
        "--duration must be in (0, 86400]"
    );
    ensure!(
        args.final_timeout > 0.0 && args.final_timeout <= 600.0,
        "--final-timeout must be in (0, 600]"
    );
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    eprintln!("check: seed {seed} (rerun with --seed {seed})");
    let gateway_bin = match &args.gateway_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("ssegate"),
    };
    ensure!(
        gateway_bin.is_file(),
        "no gateway binary at {} (--gateway-bin)",
        gateway_bin.display()
    );
    let mut guard = Guard::new(
        std::env::temp_dir().join(format!("ssegate-check-{}-{seed}", std::process::id())),
    )?;
    guard.keep_dir = args.keep_dir;
    ensure!(
        args.min_replicas <= 1,
        "--min-replicas must be 0 or 1 (one replica runs)"
    );
    let mut env: Vec<(String, String)> = NODE_ENV
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    if args.min_replicas > 0 {
        env.push((
            "SSEGATE_PUBLISH_MIN_REPLICAS".into(),
            args.min_replicas.to_string(),
        ));
    }
    let spec = Spec {
        gateway_bin,
        redis_bin: args.redis_bin.clone(),
        redis: args.redis_kind(),
        nodes: args.nodes,
        env,
    };
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let outcome = tokio::select! {
        r = run_checked(&args, seed, spec, &guard) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        _ = sigterm.recv() => Err(anyhow::anyhow!("terminated")),
    };
    // The guard kills whatever is left when it goes out of scope, also on error; a failed
    // run keeps its logs.
    if !matches!(outcome, Ok(true)) {
        guard.keep_dir = true;
        eprintln!("check: logs and AOF kept in {}", guard.dir.display());
    }
    outcome
}

async fn run_checked(
    args: &CheckArgs,
    seed: u64,
    spec: Spec,
    guard: &Guard,
) -> anyhow::Result<bool> {
    let t_start = std::time::Instant::now();
    let rec = Arc::new(Recorder::new());
    let topo = Topology::start(spec, guard).await?;
    let addrs = topo.addrs.clone();
    eprintln!(
        "check: {} in {}, nodes {:?}",
        topo.redis.describe(),
        guard.dir.display(),
        addrs.read().unwrap_or_else(|p| p.into_inner())
    );
    let topo = Arc::new(Mutex::new(topo));
    let mut rng = fastrand::Rng::with_seed(seed);
    let run_id = format!("r{:08x}", rng.u32(..));
    let channels: Vec<String> = (0..args.channels)
        .map(|i| format!("chk-{run_id}-{i}"))
        .collect();

    let (stop_tx, stop_rx) = watch::channel(false);
    let (phase_tx, phase_rx) = watch::channel(Phase::Running);
    let (probe_tx, probe_rx) = mpsc::channel(64);
    let pctx = Arc::new(publish::Ctx {
        rec: rec.clone(),
        run_id: run_id.clone(),
        addrs: addrs.clone(),
        http: HttpClient::new(),
        next_op: AtomicU64::new(1),
    });
    let cctx = Arc::new(client::Ctx {
        rec: rec.clone(),
        run_id: run_id.clone(),
        addrs: addrs.clone(),
        probes: probe_tx,
        connect_failures: AtomicU64::new(0),
    });

    let mut clients = tokio::task::JoinSet::new();
    let mut stall_txs = Vec::new();
    let mut client_channels = Vec::new();
    for i in 0..args.clients {
        let multi = i % 3 == 2 && args.channels > 1;
        let mut chs = if multi {
            let mut all = channels.clone();
            rng.shuffle(&mut all);
            all.truncate(rng.usize(2..=args.channels.min(3)));
            all
        } else {
            vec![channels[i % channels.len()].clone()]
        };
        chs.sort();
        let (tx, rx) = mpsc::channel(4);
        stall_txs.push(tx);
        client_channels.push(chs.clone());
        let plan = client::Plan {
            index: i,
            channels: chs,
            multi,
            seed: rng.u64(..),
        };
        let run = client::run(cctx.clone(), plan, rx, phase_rx.clone());
        clients.spawn(async move { (i, run.await) });
    }
    let mut publishers = tokio::task::JoinSet::new();
    for _ in 0..args.publishers {
        publishers.spawn(publish::publisher(
            pctx.clone(),
            channels.clone(),
            rng.u64(..),
            stop_rx.clone(),
        ));
    }
    publishers.spawn(publish::prober(
        pctx.clone(),
        probe_rx,
        rng.u64(..),
        stop_rx.clone(),
    ));
    let duration_ms = (args.duration * 1000.0) as u64;
    let plan = if args.no_faults {
        Vec::new()
    } else {
        faults::schedule(
            seed,
            duration_ms,
            args.nodes,
            args.clients,
            args.redis_kind(),
        )
    };
    let runner = faults::Runner {
        topo: topo.clone(),
        rec: rec.clone(),
        stalls: stall_txs,
        client_channels,
        publish: pctx.clone(),
    };
    let faults_task = tokio::spawn(runner.run(plan, Instant::now(), stop_rx.clone()));

    sleep(Duration::from_millis(duration_ms)).await;
    eprintln!(
        "[{}] publishing stops; restoring every process",
        record::secs(rec.now())
    );
    let _ = stop_tx.send(true);
    match timeout(Duration::from_secs(60), faults_task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(e.context("restoring the system after the faults")),
        Ok(Err(e)) => bail!("fault runner panicked: {e}"),
        Err(_) => bail!("fault runner did not finish within 60 s"),
    }
    if timeout(Duration::from_secs(40), async {
        while publishers.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        bail!("publishers did not finish within 40 s");
    }

    // Without WAIT, a failover may lose acknowledged events (announced, never silent).
    let lossy = args.redis_kind() != RedisKind::One && !args.no_faults;
    let truth = fetch_truth(&pctx.http, &addrs, &run_id, &channels, lossy).await?;
    let targets: BTreeMap<String, record::Key> = truth
        .channels
        .iter()
        .map(|(c, es)| (c.clone(), es.last().map_or((0, 0), |e| e.key)))
        .collect();
    let final_timeout = Duration::from_secs_f64(args.final_timeout);
    let _ = phase_tx.send(Phase::Final {
        targets,
        deadline: Instant::now() + final_timeout,
    });
    eprintln!(
        "[{}] final phase: clients catch up",
        record::secs(rec.now())
    );
    let mut finished = vec![false; args.clients];
    let _ = timeout(final_timeout + Duration::from_secs(5), async {
        while let Some(r) = clients.join_next().await {
            if let Ok((i, true)) = r {
                finished[i] = true;
            }
        }
    })
    .await;
    clients.abort_all();
    let crashed = topo.lock().await.reap_crashed().await;
    for c in crashed {
        Recorder::push(&rec.crashes, (rec.now(), c));
    }

    let history = History {
        publishes: Recorder::take(&rec.publishes),
        sessions: Recorder::take(&rec.sessions),
        faults: Recorder::take(&rec.faults),
        truth,
        unfinished: (0..args.clients).filter(|&i| !finished[i]).collect(),
        crashes: Recorder::take(&rec.crashes),
    };
    let contract = model::Contract {
        history_complete: true,
        failovers: lossy,
        acked_may_vanish: args.min_replicas == 0,
    };
    let anomalies = model::check(&history, contract);
    let elapsed = t_start.elapsed().as_secs_f64();
    let extra = format!(
        "{} connects refused or timed out",
        cctx.connect_failures.load(Ordering::Relaxed)
    );
    let mut out = std::io::stdout().lock();
    write!(
        out,
        "{}",
        report::render(&history, contract, &anomalies, seed, &extra)
    )?;
    writeln!(
        out,
        "{}",
        report::summary(&history, anomalies.len(), seed, elapsed)
    )?;
    Ok(anomalies.is_empty())
}

/// Reads every channel's stream back through the history endpoint: the ground truth.
/// Tries each node in turn for up to 20 s (one may still be starting). With `lossy`
/// (failovers may lose events), a `sync_required` in the history is where a loss was
/// recorded and the read goes on past it; otherwise it is an error (nothing may be missing).
async fn fetch_truth(
    http: &HttpClient,
    addrs: &std::sync::RwLock<Vec<SocketAddr>>,
    run_id: &str,
    channels: &[String],
    lossy: bool,
) -> anyhow::Result<Truth> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut attempt = 0usize;
    loop {
        let addr = {
            let a = addrs.read().unwrap_or_else(|p| p.into_inner());
            a[attempt % a.len()]
        };
        attempt += 1;
        match read_streams(http, addr, run_id, channels, lossy).await {
            Ok(t) => return Ok(t),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context("reading the streams back"));
            }
            Err(_) => sleep(Duration::from_millis(200)).await,
        }
    }
}

async fn read_streams(
    http: &HttpClient,
    addr: SocketAddr,
    run_id: &str,
    channels: &[String],
    lossy: bool,
) -> anyhow::Result<Truth> {
    let mut truth = Truth::default();
    for ch in channels {
        let mut after = "0".to_owned();
        let mut entries = Vec::new();
        // At most 10,000 pages of 1,000: far more than any run publishes.
        for _ in 0..10_000 {
            let url = format!("http://{addr}/v1/channels/{ch}/history?after={after}&limit=1000");
            let r = timeout(Duration::from_secs(10), http.get(&url))
                .await
                .context("timed out")??;
            ensure!(r.status.is_success(), "{url}: {} {}", r.status, r.text());
            let v: serde_json::Value = serde_json::from_slice(&r.body)?;
            ensure!(
                v["sync_required"].is_null()
                    || (lossy && v["sync_required"]["reason"] == "history_trimmed"),
                "{url}: the history is not complete: {}",
                v["sync_required"]
            );
            let events = v["events"].as_array().context("no events array")?;
            for e in events {
                let id = e["id"].as_str().context("event without id")?.to_owned();
                let (_, key) = parse_single(&id).with_context(|| format!("unreadable id {id}"))?;
                let op = e["data"].as_str().and_then(|d| decode_data(run_id, d));
                entries.push(Entry { id, key, op });
            }
            let next = v["next_after"]
                .as_str()
                .context("no next_after")?
                .to_owned();
            // A page past a lost region may hold no events yet move the cursor on.
            let moved = next != after;
            after = next;
            if truth.epoch.is_empty()
                && let Some((epoch, _)) = parse_single(&after)
            {
                truth.epoch = epoch.to_owned();
            }
            if (events.is_empty() && !moved) || v["has_more"] == serde_json::Value::Bool(false) {
                break;
            }
        }
        truth.channels.insert(ch.clone(), entries);
    }
    Ok(truth)
}
