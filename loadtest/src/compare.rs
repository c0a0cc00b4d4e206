//! `compare`: the same scenario against ssegate and against a peer, one after the other on
//! the same machine, with the ratios of the headline metrics; with `--floor`, against the
//! floor (see [`crate::floor`]) third, so each figure also reads as a ratio to it.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::cli::{CompareCmd, NodeArgs};
use crate::result::{RunResult, fmt_num, ratio};
use crate::scenarios::{Scenario, Setup, run};
use crate::target::Flavor;

/// What `compare --json` writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Comparison {
    pub(crate) scenario: String,
    pub(crate) command: String,
    pub(crate) ssegate: RunResult,
    pub(crate) peer: RunResult,
    /// The same scenario against the floor, in the same run (`--floor`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) floor: Option<RunResult>,
}

pub(crate) async fn run(cmd: &CompareCmd, command: &str) -> anyhow::Result<Comparison> {
    let scenario = Scenario::parse(&cmd.scenario)?;
    let ssegate_nodes = NodeArgs {
        targets: cmd.ssegate_targets.clone(),
        flavor: Flavor::Ssegate,
        pids: cmd.ssegate_pids.clone(),
        aux_pids: cmd.ssegate_aux_pids.clone(),
        kill_pid: cmd.ssegate_kill_pid,
    };
    let peer_nodes = NodeArgs {
        targets: cmd.peer_targets.clone(),
        flavor: cmd.peer_flavor,
        pids: cmd.peer_pids.clone(),
        aux_pids: cmd.peer_aux_pids.clone(),
        kill_pid: cmd.peer_kill_pid,
    };
    // Check both before running either.
    let a = Setup::new(scenario, &ssegate_nodes, &cmd.run)?;
    let b = Setup::new(scenario, &peer_nodes, &cmd.run)?;
    anyhow::ensure!(
        !cmd.floor
            || matches!(
                scenario,
                Scenario::Capacity | Scenario::Fanout | Scenario::Channels
            ),
        "--floor: the floor has no ids and one node; it runs capacity, fanout and channels"
    );
    let label = |nodes: usize, name: &str| {
        cmd.run
            .label
            .clone()
            .unwrap_or_else(|| format!("{name}, {nodes} node(s)"))
    };
    let ssegate = run::run(&a, command, &label(a.targets.len(), "ssegate")).await?;
    // Let the machine settle (closing sockets, TIME_WAIT) before the second run.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let peer = run::run(&b, command, &label(b.targets.len(), b.flavor.as_str())).await?;
    let floor = if cmd.floor {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        let child = crate::floor::Child::start()?;
        let nodes = NodeArgs {
            targets: vec![child.url.clone()],
            flavor: Flavor::Floor,
            pids: vec![child.pid()],
            aux_pids: Vec::new(),
            kill_pid: None,
        };
        let c = Setup::new(scenario, &nodes, &cmd.run)?;
        Some(run::run(&c, command, "floor, 1 node").await?)
    } else {
        None
    };
    Ok(Comparison {
        scenario: scenario.as_str().to_owned(),
        command: command.to_owned(),
        ssegate,
        peer,
        floor,
    })
}

impl Comparison {
    /// Markdown: the parameters, then metric | ssegate | peer | ssegate/peer, with a pair
    /// of columns more for every `extra` run (e.g. the Node.js reference).
    pub(crate) fn markdown(&self, extra: &[&RunResult]) -> String {
        let mut s = String::new();
        let p = &self.ssegate.params;
        let _ = writeln!(
            s,
            "### {}: {} subscribers, {} channel(s), {} ev/s for {} s, {} node(s)\n",
            self.scenario, p.subscribers, p.channels, p.rate, p.duration_s, p.nodes
        );
        let others: Vec<&RunResult> = std::iter::once(&self.peer)
            .chain(extra.iter().copied())
            .chain(self.floor.as_ref())
            .collect();
        let mut head = "| metric | ssegate |".to_owned();
        let mut rule = "|---|---:|".to_owned();
        for o in &others {
            let name = o.flavor.as_str();
            let _ = write!(head, " {name} | ssegate / {name} |");
            rule.push_str("---:|---:|");
        }
        let _ = writeln!(s, "{head}\n{rule}");
        let metrics: Vec<_> = others.iter().map(|o| o.metrics()).collect();
        for m in self.ssegate.metrics() {
            let _ = write!(s, "| {} | {} |", m.name, fmt_num(m.value));
            for theirs in &metrics {
                let other = theirs
                    .iter()
                    .find(|o| o.name == m.name)
                    .and_then(|o| o.value);
                let r = ratio(m.value, other);
                let mark = match r {
                    Some(r) if (r < 1.0) == m.lower_is_better && (r - 1.0).abs() > 0.05 => " ✓",
                    _ => "",
                };
                let _ = write!(
                    s,
                    " {} | {}{mark} |",
                    fmt_num(other),
                    r.map_or_else(|| "–".to_owned(), |r| format!("{r:.2}×")),
                );
            }
            s.push('\n');
        }
        let verdict = |r: &RunResult| if r.ok { "OK" } else { "NOT OK" };
        let _ = write!(
            s,
            "\nDelivery check (all live, nothing lost or repeated): ssegate **{}**",
            verdict(&self.ssegate)
        );
        for o in &others {
            let _ = write!(s, ", {} **{}**", o.flavor.as_str(), verdict(o));
        }
        let _ = writeln!(s, ". ✓: ssegate better by more than 5%.");
        s
    }
}
