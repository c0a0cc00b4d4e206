//! Reading `/proc`: CPU time and resident memory of processes (with their descendants,
//! so an nginx master counts its workers), kernel socket memory, and what machine this is.

use std::collections::HashMap;
use std::fs;
use std::process::Command;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// Clock ticks per second of `/proc/*/stat` times (`getconf CLK_TCK`, 100 on Linux).
pub(crate) fn clk_tck() -> u64 {
    static TCK: OnceLock<u64> = OnceLock::new();
    *TCK.get_or_init(|| getconf("CLK_TCK").unwrap_or(100))
}

fn page_size() -> u64 {
    static PAGE: OnceLock<u64> = OnceLock::new();
    *PAGE.get_or_init(|| getconf("PAGESIZE").unwrap_or(4096))
}

fn getconf(name: &str) -> Option<u64> {
    let out = Command::new("getconf").arg(name).output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// The fields of `/proc/<pid>/stat` after the command name: index 0 is the state.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &text[text.rfind(')')? + 1..];
    Some(after.split_whitespace().map(str::to_owned).collect())
}

/// User + system CPU ticks of one process (all its threads).
pub(crate) fn cpu_ticks(pid: u32) -> Option<u64> {
    let f = stat_fields(pid)?;
    // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after the name.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// CPU seconds of this process so far.
pub(crate) fn self_cpu_seconds() -> f64 {
    cpu_ticks(std::process::id()).map_or(0.0, |t| t as f64 / clk_tck() as f64)
}

/// A `/proc/<pid>/status` value in KiB (`VmRSS`, `VmHWM`, ...).
pub(crate) fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// `pid` and every live descendant of it.
pub(crate) fn tree(pid: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(ppid) = stat_fields(p).and_then(|f| f.get(1)?.parse::<u32>().ok()) {
                children.entry(ppid).or_default().push(p);
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        if let Some(c) = children.get(&out[i]) {
            out.extend(c);
        }
        i += 1;
    }
    out
}

/// TCP ports that the tree of `pid` listens on (from its socket inodes and
/// `/proc/net/tcp`), to tell which target a `--kill-pid` serves.
pub(crate) fn listening_ports(pid: u32) -> Vec<u16> {
    let mut inodes = std::collections::HashSet::new();
    for p in tree(pid) {
        let Ok(dir) = fs::read_dir(format!("/proc/{p}/fd")) else {
            continue;
        };
        for fd in dir.flatten() {
            if let Ok(link) = fs::read_link(fd.path()) {
                let link = link.to_string_lossy().into_owned();
                if let Some(inode) = link
                    .strip_prefix("socket:[")
                    .and_then(|l| l.strip_suffix(']'))
                {
                    inodes.insert(inode.to_owned());
                }
            }
        }
    }
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address is f[1] ("0100007F:1F90"), state f[3] (0A = LISTEN), inode f[9].
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            if *state == "0A" && inodes.contains(*inode) {
                if let Some(port) = local
                    .rsplit(':')
                    .next()
                    .and_then(|h| u16::from_str_radix(h, 16).ok())
                {
                    ports.push(port);
                }
            }
        }
    }
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// CPU and memory of a set of process trees at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Sample {
    pub(crate) rss_kib: u64,
    /// CPU seconds per tree, `None` for a tree whose root is gone (killed).
    pub(crate) cpu_s: Vec<Option<f64>>,
}

impl Sample {
    /// CPU seconds used since `earlier`, over the trees alive in both samples (a killed
    /// node's time up to its death is not counted: its counters are gone with it).
    pub(crate) fn cpu_since(&self, earlier: &Self) -> f64 {
        self.cpu_s
            .iter()
            .zip(&earlier.cpu_s)
            .filter_map(|(now, then)| Some((now.as_ref()? - then.as_ref()?).max(0.0)))
            .sum()
    }
}

/// CPU seconds and RSS over the trees of `pids`.
pub(crate) fn sample(pids: &[u32]) -> Sample {
    let mut out = Sample::default();
    for &root in pids {
        let Some(root_ticks) = cpu_ticks(root) else {
            out.cpu_s.push(None);
            continue;
        };
        let mut ticks = root_ticks;
        for (i, p) in tree(root).into_iter().enumerate() {
            if i > 0 {
                ticks += cpu_ticks(p).unwrap_or(0);
            }
            out.rss_kib += status_kib(p, "VmRSS").unwrap_or(0);
        }
        out.cpu_s.push(Some(ticks as f64 / clk_tck() as f64));
    }
    out
}

/// Kernel memory of all TCP sockets (`/proc/net/sockstat`, `TCP: ... mem <pages>`), KiB.
pub(crate) fn tcp_mem_kib() -> u64 {
    let text = fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    let pages = text
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .and_then(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let i = f.iter().position(|w| *w == "mem")?;
            f.get(i + 1)?.parse::<u64>().ok()
        })
        .unwrap_or(0);
    pages * page_size() / 1024
}

/// Sends SIGKILL to `pid` and all its descendants (descendants first are not needed:
/// all get the signal within microseconds).
pub(crate) fn kill_tree(pid: u32) -> anyhow::Result<()> {
    let pids: Vec<String> = tree(pid).iter().map(u32::to_string).collect();
    let status = Command::new("kill").arg("-KILL").args(&pids).status()?;
    anyhow::ensure!(status.success(), "kill -KILL {pids:?} failed");
    Ok(())
}

/// The machine a result was measured on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Machine {
    pub(crate) nproc: usize,
    pub(crate) mem_total_mib: u64,
    pub(crate) kernel: String,
    pub(crate) cpu_model: String,
    pub(crate) nofile_hard: u64,
}

pub(crate) fn machine() -> Machine {
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, v)| v)
        })
        .unwrap_or("unknown")
        .trim()
        .to_owned();
    Machine {
        nproc: std::thread::available_parallelism().map_or(1, usize::from),
        mem_total_mib: mem_kib / 1024,
        kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        cpu_model,
        nofile_hard: rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(0, |(_, h)| h),
    }
}

/// Raises the soft open-files limit to the hard limit; returns the new soft limit.
pub(crate) fn raise_nofile() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process() {
        let me = std::process::id();
        assert!(cpu_ticks(me).is_some());
        assert!(status_kib(me, "VmRSS").unwrap_or(0) > 0);
        assert_eq!(tree(me)[0], me);
        let s = sample(&[me, u32::MAX]);
        assert!(s.rss_kib > 0);
        assert_eq!(s.cpu_s.len(), 2);
        assert!(s.cpu_s[1].is_none());
        assert!(s.cpu_since(&s).abs() < 1e-9);
        let m = machine();
        assert!(m.nproc >= 1 && m.mem_total_mib > 0);
        assert!(raise_nofile() >= 1024);
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(listening_ports(me).contains(&port));
        let _ = tcp_mem_kib();
    }
}
