//! Runs one scenario end to end and measures it.

use std::time::Duration;

use tokio::time::Instant;

use crate::payload::now_us;
use crate::pool::Pool;
use crate::procstat::{self, Sample};
use crate::proto::{self, Counters, ToWorker, WorkerReport};
use crate::publisher::{self, PublishOutcome, PublishPlan};
use crate::result::{
    ConnectStats, Deliveries, KernelStats, LoadgenStats, NodeStats, Params, Percentiles, Recovery,
    RunResult,
};
use crate::scenarios::{Scenario, Setup};

/// Node and kernel readings taken along the way.
#[derive(Debug, Default)]
struct Readings {
    before: Sample,
    connected: Sample,
    window_start: Sample,
    end: Sample,
    aux_start: Sample,
    aux_end: Sample,
    tcp_before: u64,
    tcp_connected: u64,
}

/// Runs `setup`; `command` is recorded in the result.
pub(crate) async fn run(setup: &Setup, command: &str, label: &str) -> anyhow::Result<RunResult> {
    procstat::raise_nofile();
    let self_cpu_start = procstat::self_cpu_seconds();
    let mut r = Readings {
        before: procstat::sample(&setup.pids),
        tcp_before: procstat::tcp_mem_kib(),
        ..Readings::default()
    };
    let n = setup.args.subscribers as u64;
    eprintln!(
        "[{}] {} subscribers over {} worker(s) to {} node(s) ({})",
        setup.scenario.as_str(),
        n,
        setup.workers,
        setup.targets.len(),
        setup.flavor.as_str()
    );
    let connect_start = Instant::now();
    let mut pool = Pool::start(setup.plans()).await?;
    let ready = Duration::from_secs_f64(setup.args.ready_timeout);
    let all_live = pool.wait_for(ready, |p| p.live >= n).await?;
    let connect_wall = connect_start.elapsed().as_secs_f64();
    let p = pool.progress();
    eprintln!(
        "[{}] {}/{} live after {connect_wall:.2} s ({} connect failures){}",
        setup.scenario.as_str(),
        p.live,
        n,
        p.connect_failures,
        if all_live {
            ""
        } else {
            " — timed out, going on"
        }
    );
    pool.pump(Duration::from_millis(setup.args.settle_ms))
        .await?;
    r.connected = procstat::sample(&setup.pids);
    r.tcp_connected = procstat::tcp_mem_kib();
    r.window_start = if setup.scenario == Scenario::Capacity {
        r.before.clone()
    } else {
        r.connected.clone()
    };
    r.aux_start = procstat::sample(&setup.aux_pids);

    let (outcome, disrupted_us) = if setup.rate > 0.0 {
        publish_phase(setup, &mut pool).await?
    } else {
        pool.pump(Duration::from_secs_f64(setup.args.duration))
            .await?;
        (
            PublishOutcome {
                last_seq: vec![0; setup.channels],
                ..PublishOutcome::default()
            },
            None,
        )
    };
    let capacity_end = procstat::sample(&setup.pids);
    let grace = Duration::from_secs_f64(setup.args.grace);
    let reports = pool.finish(outcome.last_seq.clone(), grace).await?;
    r.end = procstat::sample(&setup.pids);
    if setup.scenario == Scenario::Capacity {
        r.end.rss_kib = capacity_end.rss_kib;
    }
    r.aux_end = procstat::sample(&setup.aux_pids);
    let loadgen_cpu = procstat::self_cpu_seconds() - self_cpu_start;
    Ok(assemble(
        setup,
        command,
        label,
        &r,
        outcome,
        disrupted_us,
        &reports,
        connect_wall,
        loadgen_cpu,
    ))
}

/// Publishes for the duration, with the scenario's disruption in the middle.
async fn publish_phase(
    setup: &Setup,
    pool: &mut Pool,
) -> anyhow::Result<(PublishOutcome, Option<u64>)> {
    let plan = PublishPlan {
        flavor: setup.flavor,
        targets: setup.publish_targets.clone(),
        channels: setup.channels,
        channel_prefix: setup.channel_prefix.clone(),
        rate: setup.rate,
        duration: Duration::from_secs_f64(setup.args.duration),
        pad: setup.args.pad,
        run_id: setup.run_id.clone(),
    };
    let start = Instant::now();
    let mut publisher = tokio::spawn(publisher::run(plan));
    let mut disrupt_at = setup
        .disrupt_after
        .map(|s| start + Duration::from_secs_f64(s));
    let mut disrupted_us = None;
    let outcome = loop {
        if disrupt_at.is_some_and(|at| Instant::now() >= at) {
            disrupt_at = None;
            disrupted_us = Some(now_us());
            match setup.scenario {
                Scenario::Failover => {
                    if let Some(pid) = setup.kill_pid {
                        eprintln!("[failover] SIGKILL node pid {pid} (and children)");
                        procstat::kill_tree(pid)?;
                    }
                }
                _ => {
                    eprintln!("[reconnect-storm] dropping every stream");
                    pool.broadcast(&ToWorker::Drop).await?;
                }
            }
        }
        tokio::select! {
            res = &mut publisher => break res?,
            pumped = pool.pump(Duration::from_millis(50)) => pumped?,
        }
    };
    eprintln!(
        "[{}] published {} events ({:.1}/s of {}/s), {} errors",
        setup.scenario.as_str(),
        outcome.published,
        outcome.achieved_rate,
        outcome.target_rate,
        outcome.errors
    );
    Ok((outcome, disrupted_us))
}

#[allow(clippy::too_many_arguments)]
fn assemble(
    setup: &Setup,
    command: &str,
    label: &str,
    r: &Readings,
    publisher: PublishOutcome,
    disrupted_us: Option<u64>,
    reports: &[WorkerReport],
    connect_wall: f64,
    coordinator_cpu: f64,
) -> RunResult {
    let mut latency = proto::histogram();
    let mut connect = proto::histogram();
    let mut d = Deliveries::default();
    let mut live = 0;
    let mut failures = 0;
    let mut errors = Vec::new();
    let mut counts = Counters::default();
    let mut loadgen = LoadgenStats {
        workers: reports.len(),
        cpu_s: coordinator_cpu,
        worker_peak_rss_kib: 0,
    };
    for w in reports {
        proto::merge(&mut latency, &w.latency_us);
        proto::merge(&mut connect, &w.connect_us);
        d.received += w.progress.received;
        counts.absorb(&w.counts);
        live += w.progress.ever_live;
        failures += w.progress.connect_failures;
        loadgen.cpu_s += w.cpu_s;
        loadgen.worker_peak_rss_kib = loadgen.worker_peak_rss_kib.max(w.peak_rss_kib);
        errors.extend(w.errors.iter().cloned());
    }
    d.gaps = counts.gaps;
    d.duplicates = counts.duplicates;
    d.missing = counts.missing;
    d.sync_required = counts.sync_required;
    d.foreign = counts.foreign;
    let Counters {
        last_relive_us: relive,
        max_down_us: max_down,
        reconnects,
        down_at_end,
        ..
    } = counts;
    d.expected = (0..setup.channels)
        .map(|k| publisher.last_seq.get(k).copied().unwrap_or(0) * setup.subscribers_on(k))
        .sum();
    let conns = live.max(1) as f64;
    let node_cpu = r.end.cpu_since(&r.window_start);
    let has_pids = !setup.pids.is_empty();
    let nodes = NodeStats {
        pids: setup.pids.clone(),
        cpu_s: node_cpu,
        cpu_s_per_million: (has_pids && d.received > 0)
            .then(|| node_cpu / (d.received as f64 / 1e6)),
        rss_before_kib: r.before.rss_kib,
        rss_connected_kib: r.connected.rss_kib,
        rss_end_kib: r.end.rss_kib,
        rss_per_conn_bytes: (has_pids && live > 0)
            .then(|| (r.connected.rss_kib as f64 - r.before.rss_kib as f64) * 1024.0 / conns),
        aux_cpu_s: r.aux_end.cpu_since(&r.aux_start),
        aux_rss_kib: r.aux_end.rss_kib,
    };
    let kernel = KernelStats {
        tcp_mem_before_kib: r.tcp_before,
        tcp_mem_connected_kib: r.tcp_connected,
        tcp_mem_per_conn_bytes: (live > 0)
            .then(|| (r.tcp_connected as f64 - r.tcp_before as f64) * 1024.0 / conns),
    };
    let recovery = disrupted_us.map(|at| Recovery {
        disruption: if setup.scenario == Scenario::Failover {
            "kill"
        } else {
            "drop"
        }
        .to_owned(),
        reconnects,
        all_live_after_ms: (relive > at && down_at_end == 0).then(|| (relive - at) as f64 / 1000.0),
        max_down_ms: max_down as f64 / 1000.0,
        down_at_end,
    });
    errors.extend(
        publisher
            .error_samples
            .iter()
            .map(|e| format!("publish: {e}")),
    );
    let n = setup.args.subscribers as u64;
    let ok = live == n
        && down_at_end == 0
        && d.gaps == 0
        && d.duplicates == 0
        && d.missing == 0
        && d.sync_required == 0;
    RunResult {
        scenario: setup.scenario.as_str().to_owned(),
        flavor: setup.flavor,
        label: label.to_owned(),
        command: command.to_owned(),
        unix_time: now_us() / 1_000_000,
        machine: procstat::machine(),
        params: Params {
            subscribers: setup.args.subscribers,
            channels: setup.channels,
            rate: setup.rate,
            duration_s: setup.args.duration,
            pad: setup.args.pad,
            nodes: setup.targets.len(),
            targets: setup.targets.iter().map(|t| t.url.clone()).collect(),
            workers: setup.workers,
            connect_rate: setup.args.connect_rate,
            disrupt_after_s: setup.disrupt_after,
        },
        connect: ConnectStats {
            requested: n,
            live,
            failures,
            wall_s: connect_wall,
            time_ms: Percentiles::from_us(&connect),
        },
        deliveries: d,
        latency_ms: Percentiles::from_us(&latency),
        publisher,
        nodes,
        kernel,
        loadgen,
        recovery,
        errors,
        ok,
    }
}
