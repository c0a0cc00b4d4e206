//! The per-session part of the model: walks one session's observations per channel,
//! keeping the position it has everything up to (see the rules in the parent module).

use std::collections::HashSet;
use std::ops::Bound;

use crate::check::model::{Anomaly, Index, Kind};
use crate::check::record::{Key, Micros, ObsKind, Outcome, Session, parse_id, secs};

/// Per-channel state of one session.
#[derive(Debug, Clone, Default)]
struct Track {
    /// Everything up to this position was received (-1: before the first entry);
    /// `None`: a fresh session before its first observation.
    last: Option<i64>,
    /// Where the session's cursor put it (for telling duplicates from reordering).
    cursor: Option<i64>,
    /// A `sync-required` for this channel excuses the next jump.
    excused: bool,
    seen: HashSet<usize>,
    /// The key of the last observation (with failovers: where vanished events are
    /// looked for between observations).
    key: Option<Key>,
}

pub(super) struct SessionCheck<'a, 'b> {
    ix: &'b Index<'a>,
    si: usize,
    s: &'a Session,
    tracks: Vec<Track>,
    found: Vec<Anomaly>,
    /// The observation being looked at.
    cur: usize,
    now: Micros,
}

impl<'a, 'b> SessionCheck<'a, 'b> {
    pub(super) fn new(ix: &'b Index<'a>, si: usize, s: &'a Session) -> Self {
        Self {
            ix,
            si,
            s,
            tracks: vec![Track::default(); s.channels.len()],
            found: Vec::new(),
            cur: 0,
            now: s.sent,
        }
    }

    fn flag(&mut self, kind: Kind, ci: Option<usize>, positions: Vec<usize>, detail: String) {
        self.found.push(Anomaly {
            kind,
            session: Some(self.si),
            channel: ci.map(|c| self.s.channels[c].clone()),
            positions,
            obs: Some(self.cur),
            at: self.now,
            detail,
        });
    }

    pub(super) fn run(mut self, out: &mut Vec<Anomaly>) {
        let s = self.s;
        match s.status {
            Some(200) => {}
            // Every request is valid; a node that cannot serve a stream (draining, at its
            // limit, Redis down) answers a retry-only `200`, since `EventSource` gives up
            // on any other status.
            Some(code) => {
                let d = format!("stream request answered {code} (cursor {:?})", s.cursor);
                self.flag(Kind::Rejected, None, Vec::new(), d);
                out.append(&mut self.found);
                return;
            }
            None => return,
        }
        if s.head.is_none() {
            return;
        }
        if let Some(c) = &s.cursor {
            match self.keys(c) {
                Some(keys) => {
                    for (ci, k) in keys.into_iter().enumerate() {
                        let p = self.ix.pos_of_key(&s.channels[ci], k);
                        self.tracks[ci].last = Some(p);
                        self.tracks[ci].cursor = Some(p);
                        self.tracks[ci].key = Some(k);
                    }
                }
                None => return out.append(&mut self.found),
            }
        }
        for (i, o) in s.obs.iter().enumerate() {
            self.cur = i;
            self.now = o.t;
            match &o.kind {
                ObsKind::IdOnly { id } => self.marker(id, true),
                ObsKind::Sync {
                    id,
                    channel,
                    reason,
                } => {
                    if let Some(ci) = s.channels.iter().position(|c| c == channel) {
                        // After a failover a loss of the store may be announced.
                        let after_failover = self.ix.contract.failovers
                            && self.ix.first_failover.is_some_and(|f| o.t >= f);
                        if self.ix.contract.history_complete && !after_failover {
                            let d = format!(
                                "sync-required ({reason}) though nothing was trimmed or lost"
                            );
                            self.flag(Kind::SpuriousSync, Some(ci), Vec::new(), d);
                        }
                        self.tracks[ci].excused = true;
                    } else {
                        let d =
                            format!("sync-required for {channel}, not a channel of the session");
                        self.flag(Kind::Phantom, None, Vec::new(), d);
                    }
                    self.marker(id, false);
                }
                ObsKind::Event { id, op, raw } => self.event(id, *op, raw),
            }
        }
        self.cur = s.obs.len().saturating_sub(1);
        self.now = s.end;
        for ci in 0..s.channels.len() {
            self.end(ci);
        }
        out.append(&mut self.found);
    }

    /// The per-channel keys of an id, checking its form and epoch.
    fn keys(&mut self, id: &str) -> Option<Vec<Key>> {
        match parse_id(id, self.s.multi, self.s.channels.len()) {
            Some((epoch, keys)) if epoch == self.ix.h.truth.epoch => Some(keys),
            Some((epoch, _)) => {
                let d = format!(
                    "id {id} has epoch {epoch}, the store's is {}",
                    self.ix.h.truth.epoch
                );
                self.flag(Kind::BadId, None, Vec::new(), d);
                None
            }
            None => {
                self.flag(
                    Kind::BadId,
                    None,
                    Vec::new(),
                    format!("unreadable id {id:?}"),
                );
                None
            }
        }
    }

    /// An id that says where the session is. `exact`: it must name an entry (or `0-0`),
    /// as an opening frame does (a channel's position is its last entry's id); only
    /// checked when nothing can have been trimmed, since a trimmed entry's id is fine.
    fn marker(&mut self, id: &str, exact: bool) {
        let Some(keys) = self.keys(id) else { return };
        for (ci, k) in keys.into_iter().enumerate() {
            let ch = &self.s.channels[ci];
            let m = self.ix.pos_of_key(ch, k);
            let names_entry = k == (0, 0) || self.ix.is_entry(ch, k);
            // After a failover, a channel's position may be an id the store lost (the
            // node that delivered it raised the stream to it).
            if exact
                && self.ix.contract.history_complete
                && !self.ix.contract.failovers
                && !names_entry
            {
                let d = format!("id {id} names no entry of {ch}");
                self.flag(Kind::BadId, Some(ci), Vec::new(), d);
            }
            self.skipped_vanished(ci, k, true);
            self.advance(ci, m, None, id);
        }
    }

    fn event(&mut self, id: &str, op: Option<u64>, raw: &str) {
        let Some(op) = op else {
            return self.flag(
                Kind::Phantom,
                None,
                Vec::new(),
                format!("unreadable data {raw:?}"),
            );
        };
        if self.vanished_event(op, id) {
            return;
        }
        let Some(&(ch, p)) = self.ix.pos.get(&op) else {
            let d = format!("op {op} delivered but it is not in any stream");
            return self.flag(Kind::Phantom, None, Vec::new(), d);
        };
        let Some(ci) = self.s.channels.iter().position(|c| c == ch) else {
            return self.flag(
                Kind::Phantom,
                None,
                vec![p],
                format!("op {op} of {ch}: not a channel of the session"),
            );
        };
        // The id: this channel's part must be the entry's id; the others unchanged.
        if let Some(keys) = self.keys(id) {
            let entry_key = self.ix.entries(ch)[p].key;
            let others_moved = keys.iter().enumerate().any(|(cj, k)| {
                cj != ci
                    && self.tracks[cj]
                        .last
                        .is_some_and(|l| self.ix.pos_of_key(&self.s.channels[cj], *k) != l)
            });
            if keys[ci] != entry_key || others_moved {
                let d = format!(
                    "op {op} came with id {id}; in the stream it is {}",
                    self.ix.entries(ch)[p].id
                );
                self.flag(Kind::BadId, Some(ci), vec![p], d);
            }
            self.skipped_vanished(ci, keys[ci], false);
        }
        self.advance(ci, p as i64, Some(op), id);
    }

    /// With failovers: an event the session got that the store then lost (its id names
    /// a vanished event of its channel). The session has the channel up to that id, as
    /// an id-only frame would say. `false`: not such an event.
    fn vanished_event(&mut self, op: u64, id: &str) -> bool {
        if !self.ix.contract.failovers {
            return false;
        }
        let Some(o) = self.ix.ops.get(&op) else {
            return false;
        };
        let Some(ci) = self.s.channels.iter().position(|c| *c == o.channel) else {
            return false;
        };
        let Some((_, keys)) = parse_id(id, self.s.multi, self.s.channels.len()) else {
            return false;
        };
        let k = keys[ci];
        if !self.ix.is_vanished(&o.channel, k) {
            return false;
        }
        self.skipped_vanished(ci, k, false);
        let m = self.ix.pos_of_key(&o.channel, k);
        self.advance(ci, m, None, id);
        true
    }

    /// With failovers: the session moves channel `ci` to key `k` (`through`: including
    /// `k` itself, as an id says). An acknowledged vanished event between where it was
    /// and there, which it did not get and was not told about, was lost silently; a
    /// vanished event it was at (it got it) and leaves for a kept position without being
    /// told is one its client keeps although the store lost it.
    fn skipped_vanished(&mut self, ci: usize, k: Key, through: bool) {
        let from = self.tracks[ci].key.replace(k);
        let (Some(from), Some(vanished)) =
            (from, self.ix.vanished.get(self.s.channels[ci].as_str()))
        else {
            return;
        };
        if k <= from || self.tracks[ci].excused {
            return;
        }
        // From one vanished event to another is moving within one loss (the node's
        // guard announces it once, when it runs); leaving the loss for a kept position
        // without being told is the silent case.
        if vanished.contains_key(&from) && !vanished.contains_key(&k) {
            let d = format!(
                "went on from {}-{}, an event the store lost in a failover, without a sync-required",
                from.0, from.1
            );
            self.flag(Kind::Lost, Some(ci), Vec::new(), d);
        }
        let upper = if through {
            Bound::Included(k)
        } else {
            Bound::Excluded(k)
        };
        // Owed as every event is: to a resumed session everything after its cursor; to a
        // fresh one what was published after its head. A fresh stream that starts where
        // the new primary's stream ends, before events the old primary took and lost
        // earlier, was never owed those.
        let owed = |start: Micros| self.s.cursor.is_some() || self.published_after_head(start);
        let skipped: Vec<String> = vanished
            .range((Bound::Excluded(from), upper))
            .filter(|(_, acked)| acked.is_some_and(owed))
            .map(|((ms, seq), _)| format!("{ms}-{seq}"))
            .collect();
        if !skipped.is_empty() {
            let d = format!(
                "went past {} acknowledged event(s) the store lost in a failover ({}) without a sync-required",
                skipped.len(),
                skipped.join(", ")
            );
            self.flag(Kind::Lost, Some(ci), Vec::new(), d);
        }
    }

    /// The session now has channel `ci` up to position `p`: by an event (`op`) or by an
    /// id that says so.
    fn advance(&mut self, ci: usize, p: i64, op: Option<u64>, id: &str) {
        let Some(last) = self.tracks[ci].last else {
            // A fresh session's first word on this channel fixes where it started.
            let upto = if op.is_some() { p - 1 } else { p };
            self.owed_after_head(ci, upto, "before where it started");
            if let Some(p) = usize::try_from(p).ok().filter(|_| op.is_some()) {
                self.stale(ci, p);
                self.tracks[ci].seen.insert(p);
            }
            self.tracks[ci].last = Some(p);
            return;
        };
        // An excuse is used up by the first observation that moves the channel.
        let excused = self.tracks[ci].excused;
        if p != last || op.is_some() {
            self.tracks[ci].excused = false;
        }
        let what = if op.is_some() { "event" } else { "id" };
        if p < last || (p == last && op.is_some()) {
            if excused {
                // After sync-required the stream restarts at the oldest retained event.
                self.tracks[ci].last = Some(p);
            } else if op.is_some() {
                let up = usize::try_from(p).unwrap_or(0);
                let t = &self.tracks[ci];
                let again = t.seen.contains(&up) || t.cursor.is_some_and(|c| p <= c);
                let (kind, d) = if again {
                    (
                        Kind::Duplicate,
                        format!("entry {p} again ({id}); it had it already"),
                    )
                } else {
                    (
                        Kind::OutOfOrder,
                        format!("entry {p} ({id}) after entry {last}"),
                    )
                };
                self.flag(kind, Some(ci), vec![up], d);
            } else {
                let d = format!("id {id} moved back to entry {p} from {last}");
                self.flag(Kind::OutOfOrder, Some(ci), Vec::new(), d);
            }
            return;
        }
        let gap_to = if op.is_some() { p - 1 } else { p };
        if gap_to > last && !excused {
            let lost = range(last + 1, gap_to);
            let d = format!("{what} {id} skipped {} entr(ies) it never got", lost.len());
            self.flag(Kind::Lost, Some(ci), lost, d);
        }
        if let (Some(_), Ok(up)) = (op, usize::try_from(p)) {
            self.tracks[ci].seen.insert(up);
        }
        self.tracks[ci].last = Some(p);
    }

    /// Whether a publish that started at `start` is owed to the session as a fresh one
    /// (the contract: it started after the head).
    fn published_after_head(&self, start: Micros) -> bool {
        self.s.head.is_some_and(|head| start > head)
    }

    /// Entries up to `to` whose publish started after the head: owed, so lost.
    fn owed_after_head(&mut self, ci: usize, to: i64, why: &str) {
        let Some(head) = self.s.head else { return };
        let ch = &self.s.channels[ci];
        let lost: Vec<usize> = range(0, to)
            .into_iter()
            .filter(|&p| {
                self.ix
                    .op_at(ch, p)
                    .is_some_and(|o| self.published_after_head(o.start))
            })
            .collect();
        if !lost.is_empty() {
            let d = format!(
                "{} entr(ies) published after the head ({}) are {why}",
                lost.len(),
                secs(head).trim()
            );
            self.flag(Kind::Lost, Some(ci), lost, d);
        }
    }

    /// A fresh session must not get an event acknowledged before its request was sent.
    fn stale(&mut self, ci: usize, p: usize) {
        let ch = &self.s.channels[ci];
        if let Some(o) = self.ix.op_at(ch, p)
            && matches!(o.outcome, Outcome::Acked { .. })
            && o.end < self.s.sent
        {
            let d = format!(
                "op {} was acknowledged at {} before the request",
                o.op,
                secs(o.end).trim()
            );
            self.flag(Kind::Stale, Some(ci), vec![p], d);
        }
    }

    /// At the end: a final session owes the rest of every stream (and, with failovers,
    /// a word about every acknowledged event lost after where it is).
    fn end(&mut self, ci: usize) {
        if !self.s.final_ {
            return;
        }
        if self.ix.contract.failovers {
            self.skipped_vanished(ci, (u64::MAX, u64::MAX), true);
        }
        let n = self.ix.entries(&self.s.channels[ci]).len() as i64;
        match self.tracks[ci].last {
            None => self.owed_after_head(ci, n - 1, "never delivered"),
            Some(l) if l + 1 < n => {
                let lost = range(l + 1, n - 1);
                let d = format!(
                    "final session ended {} entr(ies) short of the end",
                    lost.len()
                );
                self.flag(Kind::Lost, Some(ci), lost, d);
            }
            Some(_) => {}
        }
    }
}

/// Positions `from..=to` (empty when `to < from`).
fn range(from: i64, to: i64) -> Vec<usize> {
    let from = usize::try_from(from.max(0)).unwrap_or(0);
    match usize::try_from(to) {
        Ok(to) if to >= from => (from..=to).collect(),
        _ => Vec::new(),
    }
}
