//! The report: what was done (operations, faults), what is wrong (anomalies), and for
//! the first few anomalies a minimal history that shows each one: the session, its
//! observations around the anomaly, the publishes of the entries concerned (with their
//! times and outcomes), and the faults near it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::check::model::{Anomaly, Contract, Index};
use crate::check::record::{History, ObsKind, Outcome, Session, parse_id, secs};

/// Anomalies shown with their history; the rest get one line each.
const DETAILED: usize = 6;
const LISTED: usize = 60;

/// Counts for the summary.
#[derive(Debug, Default)]
pub(crate) struct Totals {
    pub(crate) publishes: usize,
    pub(crate) acked: usize,
    pub(crate) unknown: usize,
    pub(crate) refused: usize,
    pub(crate) probes: usize,
    pub(crate) retried: usize,
    pub(crate) sessions: usize,
    pub(crate) fresh: usize,
    pub(crate) multi: usize,
    pub(crate) finals: usize,
    pub(crate) stalls: usize,
    pub(crate) deliveries: usize,
    pub(crate) syncs: usize,
    pub(crate) faults: BTreeMap<&'static str, usize>,
    /// Why sessions ended (the reason up to its first `:`).
    pub(crate) ends: BTreeMap<String, usize>,
}

impl Totals {
    pub(crate) fn of(h: &History) -> Self {
        let mut t = Self {
            publishes: h.publishes.len(),
            sessions: h.sessions.len(),
            ..Self::default()
        };
        for p in &h.publishes {
            match p.outcome {
                Outcome::Acked { .. } => t.acked += 1,
                Outcome::Unknown { .. } => t.unknown += 1,
                Outcome::Refused { .. } => t.refused += 1,
            }
            t.probes += usize::from(p.probe);
            t.retried += usize::from(p.attempts.len() > 1);
        }
        for s in &h.sessions {
            t.fresh += usize::from(s.cursor.is_none());
            t.multi += usize::from(s.multi);
            t.finals += usize::from(s.final_);
            t.stalls += s.stalls.len();
            let why = s
                .end_reason
                .split(':')
                .next()
                .unwrap_or_default()
                .to_owned();
            *t.ends.entry(why).or_default() += 1;
            for o in &s.obs {
                match o.kind {
                    ObsKind::Event { .. } => t.deliveries += 1,
                    ObsKind::Sync { .. } => t.syncs += 1,
                    ObsKind::IdOnly { .. } => {}
                }
            }
        }
        for f in &h.faults {
            *t.faults.entry(f.kind).or_default() += 1;
        }
        t
    }
}

/// The whole report, as text.
pub(crate) fn render(
    h: &History,
    contract: Contract,
    anomalies: &[Anomaly],
    seed: u64,
    extra: &str,
) -> String {
    let t = Totals::of(h);
    let ix = Index::new(h, contract);
    let mut out = String::new();
    let _ = writeln!(out, "== ssegate-loadtest check, seed {seed}");
    let _ = writeln!(
        out,
        "publishes: {} (acknowledged {}, unknown {}, refused {}; {} probes; {} retried)",
        t.publishes, t.acked, t.unknown, t.refused, t.probes, t.retried
    );
    let _ = writeln!(
        out,
        "sessions: {} ({} fresh, {} resumed, {} multi-channel, {} final; {} stalls); {} events delivered, {} sync-required; {extra}",
        t.sessions,
        t.fresh,
        t.sessions - t.fresh,
        t.multi,
        t.finals,
        t.stalls,
        t.deliveries,
        t.syncs
    );
    let ends: Vec<String> = t.ends.iter().map(|(k, n)| format!("{k} {n}")).collect();
    let _ = writeln!(out, "sessions ended: {}", ends.join(", "));
    let faults: Vec<String> = t.faults.iter().map(|(k, n)| format!("{k} {n}")).collect();
    let _ = writeln!(out, "faults: {} ({})", h.faults.len(), faults.join(", "));
    let stream_len: usize = h.truth.channels.values().map(Vec::len).sum();
    let _ = writeln!(
        out,
        "streams: {} channels, {stream_len} entries",
        h.truth.channels.len()
    );
    if contract.failovers {
        let (acked, other) = crate::check::model::vanished(h, contract);
        let _ = writeln!(
            out,
            "lost in failovers: {acked} acknowledged events ({}), {other} more that sessions got (publish answered 504 or never answered)",
            if contract.acked_may_vanish {
                "allowed without replica confirmation, if announced"
            } else {
                "none allowed"
            }
        );
    }
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for a in anomalies {
        *kinds.entry(a.kind.as_str()).or_default() += 1;
    }
    let kinds_line: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
    let _ = writeln!(
        out,
        "anomalies: {} ({})",
        anomalies.len(),
        kinds_line.join(", ")
    );
    for (i, a) in anomalies.iter().take(DETAILED).enumerate() {
        let _ = writeln!(
            out,
            "\n-- anomaly {}/{}: {}",
            i + 1,
            anomalies.len(),
            a.kind.as_str()
        );
        detail(&mut out, &ix, a);
    }
    if anomalies.len() > DETAILED {
        let _ = writeln!(out, "\n-- more anomalies (one line each)");
        for a in anomalies.iter().skip(DETAILED).take(LISTED) {
            let who = a
                .session
                .map_or_else(String::new, |si| format!("session {si}: "));
            let _ = writeln!(
                out,
                "{} {:<14} {who}{}",
                secs(a.at),
                a.kind.as_str(),
                a.detail
            );
        }
        if anomalies.len() > DETAILED + LISTED {
            let _ = writeln!(out, "... and {} more", anomalies.len() - DETAILED - LISTED);
        }
    }
    out
}

fn session_line(si: usize, s: &Session) -> String {
    let kind = if s.multi { "multi" } else { "single" };
    let start = s
        .cursor
        .as_deref()
        .map_or_else(|| "fresh".to_owned(), |c| format!("resume from {c}"));
    format!(
        "session {si}: client {} #{} {kind} [{}] on node{}, {start}; sent {}, head {}, end {} ({}){}",
        s.client,
        s.no,
        s.channels.join(","),
        s.node + 1,
        secs(s.sent).trim(),
        s.head.map_or("-".into(), |h| secs(h).trim().to_owned()),
        secs(s.end).trim(),
        s.end_reason,
        if s.final_ { ", final" } else { "" }
    )
}

fn detail(out: &mut String, ix: &Index<'_>, a: &Anomaly) {
    let h = ix.h;
    let _ = writeln!(out, "   {}", a.detail);
    let (from, to) = match a.session.and_then(|si| h.sessions.get(si).map(|s| (si, s))) {
        Some((si, s)) => {
            let _ = writeln!(out, "   {}", session_line(si, s));
            for (f, t) in &s.stalls {
                let _ = writeln!(out, "   stalled {} .. {}", secs(*f).trim(), secs(*t).trim());
            }
            let at = a.obs.unwrap_or(0);
            let lo = at.saturating_sub(5);
            let hi = (at + 3).min(s.obs.len());
            let _ = writeln!(out, "   observations {lo}..{hi} of {}:", s.obs.len());
            for (i, o) in s.obs.iter().enumerate().take(hi).skip(lo) {
                let mark = if Some(i) == a.obs { '>' } else { ' ' };
                let _ = writeln!(
                    out,
                    "   {mark}{} {}",
                    secs(o.t),
                    describe_obs(ix, s, &o.kind)
                );
            }
            (s.sent.saturating_sub(3_000_000), s.end + 1_000_000)
        }
        None => (a.at.saturating_sub(3_000_000), a.at + 1_000_000),
    };
    if let Some(ch) = &a.channel {
        publishes(out, ix, ch, &a.positions);
    }
    let near: Vec<_> = h
        .faults
        .iter()
        .filter(|f| f.end >= from && f.start <= to)
        .collect();
    if near.is_empty() {
        let _ = writeln!(out, "   faults near: none");
    }
    for f in near {
        let _ = writeln!(
            out,
            "   fault {} .. {}: {}",
            secs(f.start).trim(),
            secs(f.end).trim(),
            f.what
        );
    }
}

/// One observation, with the stream positions it stands for.
fn describe_obs(ix: &Index<'_>, s: &Session, k: &ObsKind) -> String {
    let positions = |id: &str| -> String {
        parse_id(id, s.multi, s.channels.len()).map_or_else(
            || "?".to_owned(),
            |(_, keys)| {
                let parts: Vec<String> = s
                    .channels
                    .iter()
                    .zip(keys)
                    .map(|(c, k)| {
                        format!(
                            "{c}@{}",
                            ix.entries(c).partition_point(|e| e.key <= k) as i64 - 1
                        )
                    })
                    .collect();
                parts.join(" ")
            },
        )
    };
    match k {
        ObsKind::IdOnly { id } => format!("id-only {id}  (= {})", positions(id)),
        ObsKind::Sync {
            id,
            channel,
            reason,
        } => format!("sync-required {channel} {reason} {id}"),
        ObsKind::Event {
            id, op: Some(op), ..
        } => {
            let at = ix.pos.get(op).map_or_else(
                || "not in any stream".to_owned(),
                |(c, p)| format!("{c} entry {p}"),
            );
            format!("event op {op} = {at}, id {id}")
        }
        ObsKind::Event { id, raw, .. } => format!("event with unreadable data {raw:?}, id {id}"),
    }
}

/// The publishes of the entries concerned and their neighbours.
fn publishes(out: &mut String, ix: &Index<'_>, ch: &str, positions: &[usize]) {
    let entries = ix.entries(ch);
    let (Some(&lo), Some(&hi)) = (positions.iter().min(), positions.iter().max()) else {
        return;
    };
    let mut show: Vec<usize> =
        (lo.saturating_sub(2)..=(hi + 2).min(entries.len().saturating_sub(1))).collect();
    if show.len() > 14 {
        let tail = show.split_off(show.len() - 5);
        show.truncate(7);
        show.extend(tail);
    }
    let _ = writeln!(
        out,
        "   stream {ch} (* = concerned), time = publish start .. end:"
    );
    let mut prev = None;
    for p in show {
        if prev.is_some_and(|q: usize| q + 1 < p) {
            let _ = writeln!(out, "      ...");
        }
        prev = Some(p);
        let mark = if positions.contains(&p) { '*' } else { ' ' };
        let Some(e) = entries.get(p) else { continue };
        let Some(op) = ix.op_at(ch, p) else {
            let _ = writeln!(
                out,
                "    {mark} entry {p} {} (no publish of this run)",
                e.id
            );
            continue;
        };
        let outcome = match &op.outcome {
            Outcome::Acked { .. } => "acked".to_owned(),
            Outcome::Unknown { last } => format!("unknown ({last})"),
            Outcome::Refused { last } => format!("refused ({last})"),
        };
        let _ = writeln!(
            out,
            "    {mark} entry {p} {} op {} {} .. {} {outcome}{}{}",
            e.id,
            op.op,
            secs(op.start).trim(),
            secs(op.end).trim(),
            if op.probe { " probe" } else { "" },
            if op.attempts.len() > 1 {
                format!(
                    ", {} attempts: {}",
                    op.attempts.len(),
                    op.attempts.join("; ")
                )
            } else {
                String::new()
            }
        );
    }
}

/// A one-line summary.
pub(crate) fn summary(h: &History, anomalies: usize, seed: u64, elapsed_s: f64) -> String {
    let t = Totals::of(h);
    format!(
        "check: seed={seed} {} publishes ({} acked), {} sessions, {} deliveries, {} faults, {anomalies} anomalies in {elapsed_s:.1}s: {}",
        t.publishes,
        t.acked,
        t.sessions,
        t.deliveries,
        h.faults.len(),
        if anomalies == 0 { "OK" } else { "FAILED" }
    )
}
