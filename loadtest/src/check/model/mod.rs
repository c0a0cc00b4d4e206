//! The model: checks a recorded [`History`] against the delivery contract and lists
//! every [`Anomaly`].
//!
//! Ground truth is each channel's stream as read back at the end (Redis order). Every
//! event a session saw is identified by its data (the publish number), never by its id;
//! ids are only read to know positions (the `<ms>-<seq>` inside) and are checked against
//! the stream.
//!
//! Per session and channel the model keeps `last`, the position the session has
//! everything up to, and walks the session's observations in order:
//!
//! The per-session walk is in [`session`]:
//!
//! * A resumed session starts at its cursor: it owes every entry after it.
//! * A fresh session starts unknown. Its first observation (usually the id-only opening
//!   frame, but the model never relies on that) fixes the start; every entry up to it
//!   whose publish *started after the head arrived* was owed and is lost. Entries whose
//!   publish overlapped the head may or may not be there.
//! * After that, each event must be the next entry (a later one is a gap, an earlier one
//!   a duplicate or out of order), and an id-only frame may not jump ahead either: the
//!   session's cursor would skip what it never got.
//! * A `sync-required` for a channel excuses the next jump of that channel.
//! * A final session (it ran until the end in the quiet phase) owes everything up to the
//!   end of each stream.
//!
//! The publishes are checked against the streams as well: an acknowledged event is there
//! once with the id it was given, a refused one is not there, nothing is there twice, and
//! an event acknowledged before another's publish started comes first.
//!
//! Behind Sentinel ([`Contract::failovers`]) the store itself may lose events: a replica
//! promoted without the newest writes. Such an event is *vanished*: a session may have
//! got it (its id names no entry of the stream, but the event is a publish of the
//! channel), and the model then takes its id as the session's position. An event whose
//! publish was answered `504` may vanish; an acknowledged one only without replica
//! confirmation ([`Contract::acked_may_vanish`]), and then never silently: a session
//! whose position moves over a vanished acknowledged event it was owed and did not get
//! (after its cursor; for a fresh session, published after its head, as any event),
//! without a `sync-required` for that channel, lost it; one that got a vanished event
//! and moves on from it without one keeps, unknowing, an event the history no longer
//! has.

mod session;

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::check::record::{
    Entry, History, Key, Micros, ObsKind, Outcome, PublishOp, parse_id, parse_single, secs,
};

/// What the run's settings promise, i.e. what the model may excuse.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Contract {
    /// Nothing can have been trimmed (the run's history limits are far above what it
    /// publishes), so a `sync-required` needs another reason.
    pub(crate) history_complete: bool,
    /// Redis fails over (Sentinel): the store may lose its newest events, and a
    /// `sync-required` after the first failover may announce that.
    pub(crate) failovers: bool,
    /// Acknowledged events may be among the lost ones (no replica confirmation).
    pub(crate) acked_may_vanish: bool,
}

/// What kind of contract violation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Kind {
    /// An event the session was owed never reached it (no `sync-required` either).
    Lost,
    /// The session got an event twice (or one it had before its cursor).
    Duplicate,
    /// The session got an event earlier in the stream than one it already had.
    OutOfOrder,
    /// The session got data that is not in the stream (or not of its channels).
    Phantom,
    /// A fresh session got an event acknowledged before its request was even sent.
    Stale,
    /// An id does not match the stream (wrong entry, wrong epoch, unreadable).
    BadId,
    /// A `sync-required` although nothing was trimmed or lost.
    SpuriousSync,
    /// An acknowledged publish is not in the stream (or has another id there).
    AckedMissing,
    /// A publish is in the stream twice (idempotency failed).
    PublishedTwice,
    /// A refused publish is in the stream anyway.
    RefusedButPublished,
    /// The stream order contradicts real time: A was acknowledged before B started,
    /// yet B comes first.
    RealTimeOrder,
    /// A request answered with an error it should not get: a stream request with
    /// anything but `200` (e.g. a `400` for a cursor the gateway gave), a publish with
    /// anything but success, `429`, `503` or `504`.
    Rejected,
    /// A client could not catch up in the final phase.
    NotFinished,
    /// A gateway or Redis exited without being told to.
    Crash,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Lost => "lost",
            Self::Duplicate => "duplicate",
            Self::OutOfOrder => "out-of-order",
            Self::Phantom => "phantom",
            Self::Stale => "stale",
            Self::BadId => "bad-id",
            Self::SpuriousSync => "spurious-sync",
            Self::AckedMissing => "acked-missing",
            Self::PublishedTwice => "published-twice",
            Self::RefusedButPublished => "refused-but-published",
            Self::RealTimeOrder => "real-time-order",
            Self::Rejected => "rejected",
            Self::NotFinished => "not-finished",
            Self::Crash => "crash",
        }
    }
}

/// One violation, with what the report needs to show a minimal history.
#[derive(Debug, Clone)]
pub(crate) struct Anomaly {
    pub(crate) kind: Kind,
    /// Index into `History::sessions`.
    pub(crate) session: Option<usize>,
    pub(crate) channel: Option<String>,
    /// Stream positions of the events concerned (in `channel`).
    pub(crate) positions: Vec<usize>,
    /// Index into the session's observations where it was noticed.
    pub(crate) obs: Option<usize>,
    pub(crate) at: Micros,
    pub(crate) detail: String,
}

/// The indexes the checks share.
pub(crate) struct Index<'a> {
    pub(crate) h: &'a History,
    pub(crate) ops: HashMap<u64, &'a PublishOp>,
    /// Where each publish is in the streams (first occurrence).
    pub(crate) pos: HashMap<u64, (&'a str, usize)>,
    pub(crate) contract: Contract,
    /// Per channel, the keys of vanished events (see the module docs; only with
    /// failovers): for an acknowledged one, when its publish started (no session it is
    /// owed to may skip it silently); `None` for one only a session got.
    pub(crate) vanished: HashMap<&'a str, BTreeMap<Key, Option<Micros>>>,
    /// When the first failover began (a `sync-required` before it is spurious).
    pub(crate) first_failover: Option<Micros>,
}

impl<'a> Index<'a> {
    pub(crate) fn new(h: &'a History, contract: Contract) -> Self {
        let ops: HashMap<u64, &PublishOp> = h.publishes.iter().map(|p| (p.op, p)).collect();
        let mut pos = HashMap::new();
        for (ch, entries) in &h.truth.channels {
            for (i, e) in entries.iter().enumerate() {
                if let Some(op) = e.op {
                    pos.entry(op).or_insert((ch.as_str(), i));
                }
            }
        }
        let mut ix = Self {
            h,
            ops,
            pos,
            contract,
            vanished: HashMap::new(),
            first_failover: None,
        };
        if contract.failovers {
            ix.find_vanished();
        }
        ix
    }

    /// Fills `vanished` and `first_failover`.
    fn find_vanished(&mut self) {
        let h = self.h;
        self.first_failover = h
            .faults
            .iter()
            .filter(|f| matches!(f.kind, "failover" | "kill-primary"))
            .map(|f| f.start)
            .min();
        let mut vanished: HashMap<&'a str, BTreeMap<Key, Option<Micros>>> = HashMap::new();
        for op in &h.publishes {
            if let Outcome::Acked { id } = &op.outcome
                && !self.pos.contains_key(&op.op)
                && let Some((_, k)) = parse_single(id)
            {
                vanished
                    .entry(op.channel.as_str())
                    .or_default()
                    .insert(k, Some(op.start));
            }
        }
        for s in &h.sessions {
            for o in &s.obs {
                let ObsKind::Event {
                    id, op: Some(op), ..
                } = &o.kind
                else {
                    continue;
                };
                let Some(p) = self.ops.get(op) else { continue };
                let Some(ci) = s.channels.iter().position(|c| *c == p.channel) else {
                    continue;
                };
                let Some((_, keys)) = parse_id(id, s.multi, s.channels.len()) else {
                    continue;
                };
                let k = keys[ci];
                if !self.is_entry(&p.channel, k) {
                    vanished
                        .entry(p.channel.as_str())
                        .or_default()
                        .entry(k)
                        .or_insert(None);
                }
            }
        }
        self.vanished = vanished;
    }

    /// Whether `key` is an entry of the channel's stream.
    pub(crate) fn is_entry(&self, channel: &str, key: Key) -> bool {
        usize::try_from(self.pos_of_key(channel, key))
            .is_ok_and(|p| self.entries(channel)[p].key == key)
    }

    /// Whether `key` is a vanished event of the channel.
    pub(crate) fn is_vanished(&self, channel: &str, key: Key) -> bool {
        self.vanished
            .get(channel)
            .is_some_and(|v| v.contains_key(&key))
    }

    pub(crate) fn entries(&self, channel: &str) -> &'a [Entry] {
        self.h
            .truth
            .channels
            .get(channel)
            .map_or(&[], Vec::as_slice)
    }

    /// The publish of an entry.
    pub(crate) fn op_at(&self, channel: &str, p: usize) -> Option<&'a PublishOp> {
        let op = self.entries(channel).get(p)?.op?;
        self.ops.get(&op).copied()
    }

    /// Position of the last entry at or before `key` (-1: before the first).
    pub(crate) fn pos_of_key(&self, channel: &str, key: Key) -> i64 {
        let n = self.entries(channel).partition_point(|e| e.key <= key);
        n as i64 - 1
    }
}

/// Checks the whole history against what `contract` promises.
pub(crate) fn check(h: &History, contract: Contract) -> Vec<Anomaly> {
    let ix = Index::new(h, contract);
    let mut out = Vec::new();
    check_streams(&ix, &mut out);
    for (si, s) in h.sessions.iter().enumerate() {
        session::SessionCheck::new(&ix, si, s).run(&mut out);
    }
    for &c in &h.unfinished {
        out.push(global(
            Kind::NotFinished,
            h.sessions.iter().map(|s| s.end).max().unwrap_or(0),
            format!("client {c} never caught up with every channel in the final phase"),
        ));
    }
    for (t, what) in &h.crashes {
        out.push(global(Kind::Crash, *t, what.clone()));
    }
    out.sort_by_key(|a| (a.kind, a.at));
    out
}

/// Events the store lost in failovers: (acknowledged ones, others that sessions got).
pub(crate) fn vanished(h: &History, contract: Contract) -> (usize, usize) {
    let ix = Index::new(h, contract);
    ix.vanished
        .values()
        .flat_map(|v| v.values())
        .fold((0, 0), |(a, o), acked| {
            if acked.is_some() {
                (a + 1, o)
            } else {
                (a, o + 1)
            }
        })
}

fn global(kind: Kind, at: Micros, detail: String) -> Anomaly {
    Anomaly {
        kind,
        session: None,
        channel: None,
        positions: Vec::new(),
        obs: None,
        at,
        detail,
    }
}

/// The streams themselves against the publishes.
fn check_streams(ix: &Index<'_>, out: &mut Vec<Anomaly>) {
    let mut seen: HashSet<u64> = HashSet::new();
    for (ch, entries) in &ix.h.truth.channels {
        let on = |kind, p: usize, at, detail| Anomaly {
            kind,
            session: None,
            channel: Some(ch.clone()),
            positions: vec![p],
            obs: None,
            at,
            detail,
        };
        for (p, e) in entries.iter().enumerate() {
            if p > 0 && entries[p - 1].key >= e.key {
                out.push(on(
                    Kind::BadId,
                    p,
                    0,
                    format!("stream ids not increasing at {}", e.id),
                ));
            }
            let Some(op) = e.op.and_then(|o| ix.ops.get(&o)) else {
                out.push(on(
                    Kind::Phantom,
                    p,
                    0,
                    format!("{} carries no publish of this run", e.id),
                ));
                continue;
            };
            if op.channel != *ch {
                out.push(on(
                    Kind::Phantom,
                    p,
                    op.start,
                    format!("op {} of {} is in {ch}", op.op, op.channel),
                ));
            }
            if !seen.insert(op.op) {
                out.push(on(
                    Kind::PublishedTwice,
                    p,
                    op.start,
                    format!("op {} is in the stream twice", op.op),
                ));
                continue;
            }
            match &op.outcome {
                Outcome::Acked { id } if *id != e.id => out.push(on(
                    Kind::AckedMissing,
                    p,
                    op.end,
                    format!(
                        "op {} was acknowledged as {id} but is {} in the stream",
                        op.op, e.id
                    ),
                )),
                Outcome::Refused { last } => out.push(on(
                    Kind::RefusedButPublished,
                    p,
                    op.end,
                    format!("op {} was refused ({last}) but is in the stream", op.op),
                )),
                _ => {}
            }
        }
        // Real time: walking backwards, the earliest acknowledgement among later entries
        // must not precede this entry's publish start.
        let mut min_later: Option<(Micros, usize)> = None;
        for p in (0..entries.len()).rev() {
            let Some(op) = ix.op_at(ch, p) else { continue };
            if let Some((end, q)) = min_later
                && end < op.start
            {
                out.push(Anomaly {
                    positions: vec![p, q],
                    ..on(
                        Kind::RealTimeOrder,
                        p,
                        op.start,
                        format!("entry {q} was acknowledged at {} before op {} (entry {p}) started at {}", secs(end), op.op, secs(op.start)),
                    )
                });
            }
            if matches!(op.outcome, Outcome::Acked { .. })
                && min_later.is_none_or(|(e, _)| op.end < e)
            {
                min_later = Some((op.end, p));
            }
        }
    }
    for op in &ix.h.publishes {
        if let Some(r) = &op.rejection {
            out.push(Anomaly {
                channel: Some(op.channel.clone()),
                ..global(
                    Kind::Rejected,
                    op.end,
                    format!("publish of op {} answered {r}", op.op),
                )
            });
        }
        // Lost in a failover: allowed without replica confirmation (counted by
        // `vanished`), and then the sessions must have been told.
        if let Outcome::Acked { id } = &op.outcome
            && !ix.pos.contains_key(&op.op)
            && !(ix.contract.failovers && ix.contract.acked_may_vanish)
        {
            out.push(Anomaly {
                channel: Some(op.channel.clone()),
                ..global(
                    Kind::AckedMissing,
                    op.end,
                    format!(
                        "op {} was acknowledged ({id}) but is not in the stream",
                        op.op
                    ),
                )
            });
        }
    }
}
