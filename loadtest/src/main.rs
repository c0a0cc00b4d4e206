//! `ssegate-loadtest`: a load generator and benchmark harness for SSE gateways.
//!
//! It holds thousands of subscriber connections with a lean raw HTTP/1.1 reader spread
//! over worker processes (each under the per-process open-files limit), publishes
//! numbered, timestamped events at a fixed rate, and checks every delivery: gaps,
//! duplicates, publish→receive latency (HdrHistogram), node CPU per million deliveries,
//! node RSS and kernel memory per connection, and its own CPU use. The same scenarios run
//! against ssegate and against a peer (nchan, `loadtest/peers/nchan`), and `report`
//! turns the JSON results into `docs/benchmarks.md` with SVG charts.
//!
//! # Layout
//!
//! * [`cli`] — the command line (clap).
//! * [`check`] — `check`: the randomized history checker of the delivery contract
//!   (starts Redis and the nodes itself, injects faults, checks every session).
//! * [`target`] — node base URLs, URL shapes per flavor (ssegate, nchan, node), the
//!   loopback-only rule.
//! * [`scenarios`] — what each scenario does ([`scenarios::Setup`]) and the shared runner
//!   ([`scenarios::run`]).
//! * [`pool`] — the coordinator side of the worker processes; [`proto`] — their JSON-line
//!   protocol.
//! * [`worker`] — a worker process: one task per subscriber ([`worker::sub`]) on a
//!   single-threaded runtime, shared counters and rate limiter ([`worker::state`]).
//! * [`sse`] — the raw HTTP/1.1 stream reader (request, head, chunked/length/close
//!   framing) that feeds `ssegate_client::Parser`.
//! * [`floor`] — the cheapest possible SSE server, measured beside the others (`compare
//!   --floor`) so that their costs read as ratios to the kernel's.
//! * [`publisher`] — rate-limited publishing over keep-alive HTTP/1.1; [`payload`] — the
//!   sequence number and timestamp carried in every event.
//! * [`procstat`] — CPU, RSS, socket memory and machine facts from `/proc`.
//! * [`result`] — the JSON result and its markdown summary; [`compare`] — two runs side
//!   by side; [`report`] — `docs/benchmarks.md` and its charts.

#![forbid(unsafe_code)]

mod check;
mod cli;
mod compare;
mod floor;
mod payload;
mod pool;
mod procstat;
mod proto;
mod publisher;
mod report;
mod result;
mod scenarios;
mod sse;
mod target;
mod worker;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser as _;

use crate::cli::{Cli, Cmd};
use crate::scenarios::{Scenario, Setup};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Worker => worker::main().map(|()| true),
        Cmd::Floor(f) => floor::main(f.listen).map(|()| true),
        other => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(coordinator(other))),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("ssegate-loadtest: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs a user-facing command; `Ok(false)` when `--check` found a problem.
async fn coordinator(cmd: Cmd) -> anyhow::Result<bool> {
    let command = std::env::args()
        .map(|a| if a.contains(' ') { format!("'{a}'") } else { a })
        .collect::<Vec<_>>()
        .join(" ")
        .replacen(
            &std::env::args().next().unwrap_or_default(),
            "ssegate-loadtest",
            1,
        );
    let (scenario, args) = match cmd {
        Cmd::Capacity(a) => (Scenario::Capacity, a),
        Cmd::Fanout(a) => (Scenario::Fanout, a),
        Cmd::Channels(a) => (Scenario::Channels, a),
        Cmd::ReconnectStorm(a) => (Scenario::ReconnectStorm, a),
        Cmd::Failover(a) => (Scenario::Failover, a),
        Cmd::Compare(c) => {
            let cmp = compare::run(&c, &command).await?;
            emit(&c.run, &cmp, &cmp.markdown(&[]))?;
            return Ok(!c.run.check || (cmp.ssegate.ok && cmp.peer.ok));
        }
        Cmd::Check(c) => return check::run(c).await,
        Cmd::Report(r) => {
            report::generate(&r)?;
            return Ok(true);
        }
        Cmd::FreePort => {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            writeln!(std::io::stdout(), "{}", l.local_addr()?.port())?;
            return Ok(true);
        }
        Cmd::Worker | Cmd::Floor(_) => unreachable!("handled in main"),
    };
    let setup = Setup::new(scenario, &args.nodes, &args.run)?;
    let label =
        args.run.label.clone().unwrap_or_else(|| {
            format!("{}, {} node(s)", setup.flavor.as_str(), setup.targets.len())
        });
    let result = scenarios::run::run(&setup, &command, &label).await?;
    emit(&args.run, &result, &result.markdown())?;
    Ok(!args.run.check || result.ok)
}

/// Writes the result as JSON (file and/or stdout) and the markdown summary.
fn emit(args: &cli::RunArgs, value: &impl serde::Serialize, markdown: &str) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(value)?;
    if let Some(path) = &args.json {
        std::fs::write(path, format!("{json}\n"))?;
    }
    let mut out = std::io::stdout().lock();
    if args.json_stdout {
        writeln!(out, "{json}")?;
    } else {
        writeln!(out, "{markdown}")?;
    }
    Ok(())
}
