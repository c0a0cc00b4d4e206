//! Command-line interface.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::target::Flavor;

#[derive(Debug, Parser)]
#[command(
    name = "ssegate-loadtest",
    version,
    about = "Load generator for SSE gateways (ssegate, and peers such as nchan): \
             connections, fan-out, latency, loss, duplicates, CPU and memory per connection",
    after_help = "Every target must be on 127.0.0.0/8. Results go to stdout as markdown and, \
                  with --json FILE, as JSON."
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Cmd,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Cmd {
    /// N idle subscribers: connect time, failures, node RSS and kernel memory per connection.
    Capacity(ScenarioCmd),
    /// N subscribers on one channel, a publisher at R events/s for D seconds.
    Fanout(ScenarioCmd),
    /// N subscribers over K channels (one each), publishes spread over the channels.
    Channels(ScenarioCmd),
    /// During fanout, every subscriber drops at once and resumes with its last id.
    ReconnectStorm(ScenarioCmd),
    /// During fanout over several nodes, one node (--kill-pid) is killed after --kill-after.
    Failover(ScenarioCmd),
    /// Runs one scenario against ssegate and against a peer, prints both and the ratios.
    Compare(CompareCmd),
    /// Randomized history check of a Redis cluster it starts itself: random clients,
    /// idempotent publishers and seeded faults, then every session checked against the
    /// delivery contract (exit status 1 on any anomaly).
    Check(crate::check::CheckArgs),
    /// Regenerates docs/benchmarks.md (and its SVG charts) from result JSON files.
    Report(ReportCmd),
    /// The floor: the cheapest possible SSE server (one write per event per socket and
    /// nothing else), to measure beside the systems under test (flavor `floor`).
    Floor(FloorCmd),
    /// Internal: one worker process of a run (talks JSON lines on stdin/stdout).
    #[command(hide = true)]
    Worker,
    /// Internal: prints a free TCP port on 127.0.0.1 (for scripts).
    #[command(hide = true)]
    FreePort,
}

/// The nodes of one system under test.
#[derive(Debug, Clone, Args)]
pub(crate) struct NodeArgs {
    /// Base URL of a node (repeat for a cluster); subscribers are spread over them.
    #[arg(long = "target", required = true)]
    pub(crate) targets: Vec<String>,
    /// What kind of server the targets are (URL shapes, publish body).
    #[arg(long, value_enum, default_value = "ssegate")]
    pub(crate) flavor: Flavor,
    /// PID of a node process (repeat); CPU and RSS are read from /proc, children included.
    #[arg(long = "pid")]
    pub(crate) pids: Vec<u32>,
    /// PID of a shared helper (e.g. redis-server), reported separately.
    #[arg(long = "aux-pid")]
    pub(crate) aux_pids: Vec<u32>,
    /// failover: the node process (and its children) to SIGKILL.
    #[arg(long)]
    pub(crate) kill_pid: Option<u32>,
}

/// Sizes and timings of a run.
#[derive(Debug, Clone, Args)]
pub(crate) struct RunArgs {
    /// Subscribers.
    #[arg(short = 'n', long, default_value_t = 1000)]
    pub(crate) subscribers: usize,
    /// Channels (default: 1; `channels`: 100).
    #[arg(short = 'k', long)]
    pub(crate) channels: Option<usize>,
    /// Events per second, all channels together (default: 20; `capacity`: 0).
    #[arg(short = 'r', long)]
    pub(crate) rate: Option<f64>,
    /// Seconds of publishing (`capacity`: seconds the idle connections are held).
    #[arg(short = 'd', long, default_value_t = 10.0)]
    pub(crate) duration: f64,
    /// Extra bytes of padding in each event's data.
    #[arg(long, default_value_t = 0)]
    pub(crate) pad: usize,
    /// Worker processes (0: one per 10,000 subscribers, at least one per core up to 4).
    #[arg(long, default_value_t = 0)]
    pub(crate) workers: usize,
    /// New connections per second, all workers together.
    #[arg(long, default_value_t = 2000.0)]
    pub(crate) connect_rate: f64,
    /// Reconnects per second, all workers together (0: no limit).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) reconnect_rate: f64,
    /// Timeout of one TCP connect, milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub(crate) connect_timeout_ms: u64,
    /// How long to wait for every subscriber to be live, seconds.
    #[arg(long, default_value_t = 120.0)]
    pub(crate) ready_timeout: f64,
    /// Pause between "all live" and the first publish, milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub(crate) settle_ms: u64,
    /// After publishing, how long subscribers may take to receive the rest, seconds.
    #[arg(long, default_value_t = 15.0)]
    pub(crate) grace: f64,
    /// Loopback source addresses to use (127.0.0.1, .2, ...); 0: one per 20,000 subscribers.
    #[arg(long, default_value_t = 0)]
    pub(crate) sources: usize,
    /// Reconnect after the server's `retry:` like a browser (default: at once).
    #[arg(long)]
    pub(crate) honor_retry: bool,
    /// reconnect-storm: seconds into publishing when everyone drops (default: half).
    #[arg(long)]
    pub(crate) drop_after: Option<f64>,
    /// failover: seconds into publishing when --kill-pid is killed (default: a third).
    #[arg(long)]
    pub(crate) kill_after: Option<f64>,
    /// Free-text label stored in the result (e.g. "ssegate 1 node + redis").
    #[arg(long)]
    pub(crate) label: Option<String>,
    /// Write the result as JSON to this file.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
    /// Print the JSON result on stdout instead of the markdown summary.
    #[arg(long)]
    pub(crate) json_stdout: bool,
    /// Exit with status 1 unless every subscriber was live and nothing was lost or repeated.
    #[arg(long)]
    pub(crate) check: bool,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct ScenarioCmd {
    #[command(flatten)]
    pub(crate) nodes: NodeArgs,
    #[command(flatten)]
    pub(crate) run: RunArgs,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct CompareCmd {
    /// The scenario: capacity, fanout, channels, reconnect-storm, failover.
    #[arg(long)]
    pub(crate) scenario: String,
    /// ssegate node base URLs (repeat).
    #[arg(long = "ssegate-target", required = true)]
    pub(crate) ssegate_targets: Vec<String>,
    #[arg(long = "ssegate-pid")]
    pub(crate) ssegate_pids: Vec<u32>,
    #[arg(long = "ssegate-aux-pid")]
    pub(crate) ssegate_aux_pids: Vec<u32>,
    #[arg(long)]
    pub(crate) ssegate_kill_pid: Option<u32>,
    /// Peer node base URLs (repeat).
    #[arg(long = "peer-target", required = true)]
    pub(crate) peer_targets: Vec<String>,
    #[arg(long, value_enum, default_value = "nchan")]
    pub(crate) peer_flavor: Flavor,
    #[arg(long = "peer-pid")]
    pub(crate) peer_pids: Vec<u32>,
    #[arg(long = "peer-aux-pid")]
    pub(crate) peer_aux_pids: Vec<u32>,
    #[arg(long)]
    pub(crate) peer_kill_pid: Option<u32>,
    /// Also run the scenario against the floor (`floor`, started here), so that every
    /// figure has a ratio to the kernel's cost (capacity, fanout and channels only).
    #[arg(long)]
    pub(crate) floor: bool,
    #[command(flatten)]
    pub(crate) run: RunArgs,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct FloorCmd {
    /// Where to listen (loopback; port 0: any free port, printed as `listening ADDR`).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub(crate) listen: std::net::SocketAddr,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct ReportCmd {
    /// Result files (from --json or compare) or directories of them.
    #[arg(required = true)]
    pub(crate) inputs: Vec<PathBuf>,
    /// The page to write.
    #[arg(long, default_value = "docs/benchmarks.md")]
    pub(crate) out: PathBuf,
    /// Where the SVG charts go (linked relative to the page).
    #[arg(long, default_value = "docs/benchmarks")]
    pub(crate) svg_dir: PathBuf,
    /// Hand-written analysis to include in the page (markdown).
    #[arg(long)]
    pub(crate) notes: Option<PathBuf>,
}
