//! The worker process (`ssegate-loadtest worker`, hidden): holds its share of the
//! subscriber connections on a single-threaded runtime, reports progress every 200 ms,
//! and follows the coordinator's commands (see [`crate::proto`]).

pub(crate) mod state;
pub(crate) mod sub;

use std::cell::RefCell;
use std::io::Write;
use std::rc::Rc;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::watch;
use tokio::task::LocalSet;
use tokio::time::Instant;

use crate::proto::{FromWorker, ToWorker, WorkerPlan};
use crate::worker::state::{FinishState, Limiter, Phase, Stats};
use crate::worker::sub::Ctx;

/// Entry point of the hidden `worker` subcommand.
pub(crate) fn main() -> anyhow::Result<()> {
    crate::procstat::raise_nofile();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    LocalSet::new().block_on(&runtime, run())
}

/// Writes one message line to stdout (the coordinator reads it).
fn send(msg: &FromWorker) -> anyhow::Result<()> {
    let mut line = serde_json::to_vec(msg)?;
    line.push(b'\n');
    let mut out = std::io::stdout().lock();
    out.write_all(&line)?;
    out.flush()?;
    Ok(())
}

async fn run() -> anyhow::Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let first = lines.next_line().await?.context("no start command")?;
    let ToWorker::Start(plan) = serde_json::from_str(&first)? else {
        anyhow::bail!("the first command must be start");
    };
    anyhow::ensure!(!plan.targets.is_empty(), "no targets");
    let ctx = Rc::new(Ctx {
        connect_limiter: Limiter::new(plan.connect_rate),
        reconnect_limiter: Limiter::new(plan.reconnect_rate),
        stats: RefCell::new(Stats::default()),
        plan: plan.clone(),
    });
    let (phase_tx, phase_rx) = watch::channel(Phase::default());
    let mut subs = tokio::task::JoinSet::new();
    spawn_subscribers(&mut subs, &ctx, &plan, &phase_rx);

    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut finishing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => send(&FromWorker::Progress(ctx.stats.borrow().progress))?,
            line = lines.next_line(), if !finishing => match line? {
                // The coordinator is gone: stop.
                None => return Ok(()),
                Some(line) => match serde_json::from_str::<ToWorker>(&line)? {
                    ToWorker::Start(_) => anyhow::bail!("already started"),
                    ToWorker::Drop => {
                        phase_tx.send_modify(|p| p.drop_gen += 1);
                        send(&FromWorker::Dropped { at_us: crate::payload::now_us() })?;
                    }
                    ToWorker::Finish { last_seq, grace_ms } => {
                        finishing = true;
                        let deadline = Instant::now() + Duration::from_millis(grace_ms);
                        phase_tx.send_modify(|p| {
                            p.finish = Some(FinishState { last_seq, deadline });
                        });
                    }
                },
            },
            done = subs.join_next(), if finishing => if done.is_none() { break },
        }
    }
    send(&FromWorker::Report(Box::new(ctx.stats.borrow().report())))?;
    Ok(())
}

fn spawn_subscribers(
    subs: &mut tokio::task::JoinSet<()>,
    ctx: &Rc<Ctx>,
    plan: &WorkerPlan,
    phase: &watch::Receiver<Phase>,
) {
    for i in plan.first..plan.first + plan.count {
        subs.spawn_local(sub::run(ctx.clone(), i, phase.clone()));
    }
}
