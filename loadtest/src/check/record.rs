//! What a run records, in the form the model checks: every publish with its attempts and
//! outcome, every client session with what it saw and when, every fault, and the ground
//! truth (each channel's stream as read back at the end).
//!
//! Times are microseconds since the start of the run on one monotonic clock, so that
//! "the publish started after the head arrived" is a plain comparison.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

/// Microseconds since the start of the run.
pub(crate) type Micros = u64;

/// A channel position: the `<ms>-<seq>` entry id of a Redis Stream.
pub(crate) type Key = (u64, u64);

/// Formats a time as seconds with milliseconds, for humans.
pub(crate) fn secs(t: Micros) -> String {
    format!("{:>8.3}s", t as f64 / 1e6)
}

/// How one publish ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A `2xx` with this id: the event must be in the stream, once.
    Acked { id: String },
    /// Every attempt was refused before any work (`503`, `429`, a `4xx`): never published.
    Refused { last: String },
    /// Some attempt may have reached Redis (`504 publish_outcome_unknown`, a dropped
    /// connection, a timeout) and none was acknowledged: it may appear, at most once.
    Unknown { last: String },
}

/// One publish request and its retries (all with the same `Idempotency-Key`).
#[derive(Debug, Clone)]
pub(crate) struct PublishOp {
    /// Unique in the run; the event data carries it, so events are known by content.
    pub(crate) op: u64,
    pub(crate) channel: String,
    /// When the first attempt was sent: the "publish starts" of the contract.
    pub(crate) start: Micros,
    /// When the last attempt ended.
    pub(crate) end: Micros,
    pub(crate) outcome: Outcome,
    /// One line per attempt: `node status` or the error, for the failure report.
    pub(crate) attempts: Vec<String>,
    /// Published on behalf of a fresh session right after its head (see `publish.rs`).
    pub(crate) probe: bool,
    /// The first answer that was neither a success nor a documented retryable error.
    pub(crate) rejection: Option<String>,
}

/// What a session saw, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ObsKind {
    /// An id-only frame (the opening frame, or any block that only moved the id).
    IdOnly { id: String },
    /// An event of this run: `op` is what its data names (`None`: unreadable data, kept
    /// in `raw`, shortened).
    Event {
        id: String,
        op: Option<u64>,
        raw: String,
    },
    /// `event: sync-required` for `channel`.
    Sync {
        id: String,
        channel: String,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Obs {
    pub(crate) t: Micros,
    pub(crate) kind: ObsKind,
}

/// One stream request of one client, from connect to close.
#[derive(Debug, Clone, Default)]
pub(crate) struct Session {
    pub(crate) client: usize,
    /// Sequence number of the session within its client.
    pub(crate) no: u32,
    /// The channels, sorted (the canonical order of composite ids).
    pub(crate) channels: Vec<String>,
    /// `/v1/events` (composite ids) rather than `/v1/channels/{c}/events`.
    pub(crate) multi: bool,
    pub(crate) node: usize,
    /// The `Last-Event-ID` sent; `None` for a fresh session.
    pub(crate) cursor: Option<String>,
    /// When the request had been written.
    pub(crate) sent: Micros,
    /// When the response head had been read: the moment the stream starts.
    pub(crate) head: Option<Micros>,
    pub(crate) status: Option<u16>,
    pub(crate) obs: Vec<Obs>,
    pub(crate) end: Micros,
    pub(crate) end_reason: String,
    /// The session ran, in the final phase, until it had every channel's last event (or
    /// the deadline): it owes everything up to the end of each stream.
    pub(crate) final_: bool,
    /// Stalls (stopped reading) as (from, to).
    pub(crate) stalls: Vec<(Micros, Micros)>,
}

/// One injected fault, as done.
#[derive(Debug, Clone)]
pub(crate) struct FaultRecord {
    pub(crate) start: Micros,
    pub(crate) end: Micros,
    /// Short label (`kill`, `term`, ...), for counting.
    pub(crate) kind: &'static str,
    pub(crate) what: String,
}

/// One entry of a channel's stream, read back at the end.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// The single-channel id as the history endpoint gives it.
    pub(crate) id: String,
    pub(crate) key: Key,
    /// The publish its data names (`None`: data of no publish of this run).
    pub(crate) op: Option<u64>,
}

/// The streams as they are in Redis at the end: the order every subscriber must follow.
#[derive(Debug, Clone, Default)]
pub(crate) struct Truth {
    pub(crate) epoch: String,
    pub(crate) channels: BTreeMap<String, Vec<Entry>>,
}

/// Everything a run recorded.
#[derive(Debug, Clone, Default)]
pub(crate) struct History {
    pub(crate) publishes: Vec<PublishOp>,
    pub(crate) sessions: Vec<Session>,
    pub(crate) faults: Vec<FaultRecord>,
    pub(crate) truth: Truth,
    /// Clients that never completed a final session (they could not catch up in time).
    pub(crate) unfinished: Vec<usize>,
    /// Gateway or Redis processes that exited without being told to, with details.
    pub(crate) crashes: Vec<(Micros, String)>,
}

/// The shared, append-only log the tasks write into while the run goes on.
#[derive(Debug)]
pub(crate) struct Recorder {
    t0: Instant,
    pub(crate) publishes: Mutex<Vec<PublishOp>>,
    pub(crate) sessions: Mutex<Vec<Session>>,
    pub(crate) faults: Mutex<Vec<FaultRecord>>,
    pub(crate) crashes: Mutex<Vec<(Micros, String)>>,
}

impl Recorder {
    pub(crate) fn new() -> Self {
        Self {
            t0: Instant::now(),
            publishes: Mutex::default(),
            sessions: Mutex::default(),
            faults: Mutex::default(),
            crashes: Mutex::default(),
        }
    }

    pub(crate) fn now(&self) -> Micros {
        u64::try_from(self.t0.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Appends to one of the logs; a poisoned lock (a panicked task) still takes it.
    pub(crate) fn push<T>(log: &Mutex<Vec<T>>, item: T) {
        log.lock().unwrap_or_else(|p| p.into_inner()).push(item);
    }

    pub(crate) fn take<T>(log: &Mutex<Vec<T>>) -> Vec<T> {
        std::mem::take(&mut *log.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

// ----- event data -----

/// The data of publish `op`: `chk <run> <op> <padlen> <pad>`, a JSON string the gateway
/// sends as-is. The pad makes some events big (so stalled readers fill their socket)
/// and is checked on receipt, so a corrupted event is noticed.
pub(crate) fn encode_data(run: &str, op: u64, pad: usize) -> String {
    format!("chk {run} {op} {pad} {}", "x".repeat(pad))
}

/// The publish an event's data names, if it is well-formed data of run `run`.
pub(crate) fn decode_data(run: &str, data: &str) -> Option<u64> {
    let mut parts = data.splitn(5, ' ');
    if parts.next()? != "chk" || parts.next()? != run {
        return None;
    }
    let op = parts.next()?.parse().ok()?;
    let pad: usize = parts.next()?.parse().ok()?;
    let rest = parts.next().unwrap_or("");
    (rest.len() == pad && rest.bytes().all(|b| b == b'x')).then_some(op)
}

// ----- ids (opaque to clients; the checker reads them to know positions) -----

/// `<ms>-<seq>`.
pub(crate) fn parse_key(s: &str) -> Option<Key> {
    let (a, b) = s.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// A single-channel id `<epoch>-<ms>-<seq>`: (epoch, key).
pub(crate) fn parse_single(id: &str) -> Option<(&str, Key)> {
    let (epoch, rest) = id.split_once('-')?;
    Some((epoch, parse_key(rest)?))
}

/// A composite id `<epoch>.<set>.<id>.<id>...` of `n` channels: (epoch, keys).
pub(crate) fn parse_composite(id: &str, n: usize) -> Option<(&str, Vec<Key>)> {
    let mut parts = id.split('.');
    let epoch = parts.next()?;
    parts.next()?;
    let keys = parts.map(parse_key).collect::<Option<Vec<_>>>()?;
    (keys.len() == n).then_some((epoch, keys))
}

/// The per-channel keys of an id of a session with `n` channels (in sorted order).
pub(crate) fn parse_id(id: &str, multi: bool, n: usize) -> Option<(&str, Vec<Key>)> {
    if multi {
        parse_composite(id, n)
    } else {
        parse_single(id).map(|(e, k)| (e, vec![k]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_and_ids() {
        let d = encode_data("r1", 17, 3);
        assert_eq!(d, "chk r1 17 3 xxx");
        assert_eq!(decode_data("r1", &d), Some(17));
        assert_eq!(decode_data("r1", "chk r1 17 0 "), Some(17));
        assert_eq!(decode_data("r2", &d), None);
        assert_eq!(decode_data("r1", "chk r1 17 3 xx"), None);
        assert_eq!(decode_data("r1", "hello"), None);
        assert_eq!(parse_single("abc-12-3"), Some(("abc", (12, 3))));
        assert_eq!(parse_single("abc-12"), None);
        assert_eq!(
            parse_composite("e.1f0c33aa.5-0.0-0", 2),
            Some(("e", vec![(5, 0), (0, 0)]))
        );
        assert_eq!(parse_composite("e.1f0c33aa.5-0", 2), None);
        assert!(parse_id("e.x.1-1", true, 1).is_some());
    }
}
