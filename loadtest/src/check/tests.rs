//! The model on small synthetic histories: each test builds streams, publishes and one
//! session by hand and asserts exactly which anomalies the model reports.
//!
//! Entry `i` of channel `c` has key `(100 + i, 0)`, id `ep-<100+i>-0`; publish `op`s
//! are numbered by the tests.

use crate::check::model::{Contract, Kind, check};
use crate::check::record::{Entry, History, Obs, ObsKind, Outcome, PublishOp, Session, Truth};

const EPOCH: &str = "ep";

fn id(i: i64) -> String {
    if i < 0 {
        format!("{EPOCH}-0-0")
    } else {
        format!("{EPOCH}-{}-0", 100 + i)
    }
}

/// A history whose channel `a` holds the publishes `(op, start, acknowledged)` in that
/// order.
fn history(ops: &[(u64, u64, u64)]) -> History {
    let mut h = History {
        truth: Truth {
            epoch: EPOCH.into(),
            ..Truth::default()
        },
        ..History::default()
    };
    let mut entries = Vec::new();
    for (i, &(op, start, end)) in ops.iter().enumerate() {
        let i = i as i64;
        entries.push(Entry {
            id: id(i),
            key: (100 + i as u64, 0),
            op: Some(op),
        });
        h.publishes.push(PublishOp {
            op,
            channel: "a".into(),
            start,
            end,
            outcome: Outcome::Acked { id: id(i) },
            attempts: Vec::new(),
            probe: false,
            rejection: None,
        });
    }
    h.truth.channels.insert("a".into(), entries);
    h
}

/// Five events published at 10, 20, ... 50 (each acknowledged 5 later).
fn five() -> History {
    history(&[
        (1, 10, 15),
        (2, 20, 25),
        (3, 30, 35),
        (4, 40, 45),
        (5, 50, 55),
    ])
}

fn session(cursor: Option<i64>, head: u64, obs: Vec<ObsKind>) -> Session {
    Session {
        channels: vec!["a".into()],
        cursor: cursor.map(id),
        sent: head - 1,
        head: Some(head),
        status: Some(200),
        obs: obs
            .into_iter()
            .enumerate()
            .map(|(i, kind)| Obs {
                t: head + 1 + i as u64,
                kind,
            })
            .collect(),
        end: 1000,
        ..Session::default()
    }
}

fn ev(op: u64, pos: i64) -> ObsKind {
    ObsKind::Event {
        id: id(pos),
        op: Some(op),
        raw: String::new(),
    }
}

fn id_only(pos: i64) -> ObsKind {
    ObsKind::IdOnly { id: id(pos) }
}

/// What a run without failovers promises; `complete`: nothing can have been trimmed.
fn plain(complete: bool) -> Contract {
    Contract {
        history_complete: complete,
        ..Contract::default()
    }
}

fn kinds(h: &History, complete: bool) -> Vec<Kind> {
    check(h, plain(complete))
        .into_iter()
        .map(|a| a.kind)
        .collect()
}

fn with(mut h: History, s: Session) -> History {
    h.sessions.push(s);
    h
}

#[test]
fn clean_sessions_pass() {
    // Fresh at 12: entry 0 (started at 10) is before the head; the opening id says so.
    let h = with(
        five(),
        session(None, 12, vec![id_only(0), ev(2, 1), ev(3, 2), ev(4, 3)]),
    );
    assert_eq!(kinds(&h, true), vec![]);
    // Resumed after entry 1, then final: owes 2, 3, 4 and gets them.
    let mut s = session(Some(1), 60, vec![id_only(1), ev(3, 2), ev(4, 3), ev(5, 4)]);
    s.final_ = true;
    assert_eq!(kinds(&with(five(), s), true), vec![]);
}

#[test]
fn event_published_after_the_head_but_before_the_start_is_lost() {
    // The old bug: head at 12, the position is read later and includes entry 1 (published
    // at 20), so the opening id already says "up to entry 1" and entry 1 never comes.
    let h = with(five(), session(None, 12, vec![id_only(1), ev(3, 2)]));
    let a = check(&h, plain(true));
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!((a[0].kind, a[0].positions.clone()), (Kind::Lost, vec![1]));
    // The same without the id-only frame: the first event is entry 2.
    let h = with(five(), session(None, 12, vec![ev(3, 2)]));
    assert_eq!(kinds(&h, true), vec![Kind::Lost]);
}

#[test]
fn publish_overlapping_the_head_may_or_may_not_appear() {
    // Entry 1 started at 20, acknowledged at 25; the head came at 22: both fine.
    let without = with(five(), session(None, 22, vec![id_only(1), ev(3, 2)]));
    assert_eq!(kinds(&without, true), vec![]);
    let with_it = with(
        five(),
        session(None, 22, vec![id_only(0), ev(2, 1), ev(3, 2)]),
    );
    assert_eq!(kinds(&with_it, true), vec![]);
    // But not skipped once the stream started before it: 0, then 2 without 1.
    let gap = with(five(), session(None, 22, vec![id_only(0), ev(3, 2)]));
    assert_eq!(kinds(&gap, true), vec![Kind::Lost]);
}

#[test]
fn a_gap_after_the_cursor_is_lost() {
    let h = with(
        five(),
        session(Some(0), 60, vec![id_only(0), ev(2, 1), ev(4, 3)]),
    );
    let a = check(&h, plain(true));
    assert_eq!(
        (a.len(), a[0].kind, a[0].positions.clone()),
        (1, Kind::Lost, vec![2])
    );
    // An id that jumps ahead skips too: the client would resume past entry 2.
    let h = with(five(), session(Some(0), 60, vec![id_only(2)]));
    assert_eq!(kinds(&h, true), vec![Kind::Lost]);
}

#[test]
fn duplicates_and_reordering() {
    let h = with(
        five(),
        session(Some(0), 60, vec![ev(2, 1), ev(3, 2), ev(3, 2)]),
    );
    assert_eq!(kinds(&h, true), vec![Kind::Duplicate]);
    // Replaying the cursor's own event is a duplicate too.
    let h = with(five(), session(Some(1), 60, vec![ev(2, 1), ev(3, 2)]));
    assert_eq!(kinds(&h, true), vec![Kind::Duplicate]);
    // 1, 3, 2: the 3 skips 2 (lost), then 2 comes out of order.
    let h = with(
        five(),
        session(Some(0), 60, vec![ev(2, 1), ev(4, 3), ev(3, 2)]),
    );
    assert_eq!(kinds(&h, true), vec![Kind::Lost, Kind::OutOfOrder]);
}

#[test]
fn sync_required_excuses_a_gap() {
    let sync = ObsKind::Sync {
        id: id(2),
        channel: "a".into(),
        reason: "history_trimmed".into(),
    };
    let h = with(
        five(),
        session(
            Some(0),
            60,
            vec![id_only(0), sync.clone(), ev(4, 3), ev(5, 4)],
        ),
    );
    assert_eq!(kinds(&h, false), vec![]);
    // When nothing can have been trimmed, the signal itself is the anomaly.
    assert_eq!(kinds(&h, true), vec![Kind::SpuriousSync]);
    // An excuse covers one jump only.
    let h = with(
        five(),
        session(Some(0), 60, vec![sync, ev(4, 3), ev(5, 4), id_only(4)]),
    );
    assert_eq!(kinds(&h, false), vec![]);
    let sync = ObsKind::Sync {
        id: id(0),
        channel: "a".into(),
        reason: "history_trimmed".into(),
    };
    let h = with(five(), session(Some(0), 60, vec![sync, ev(3, 2), ev(5, 4)]));
    assert_eq!(kinds(&h, false), vec![Kind::Lost]);
}

#[test]
fn final_sessions_owe_the_rest() {
    let mut s = session(Some(1), 60, vec![id_only(1), ev(3, 2)]);
    s.final_ = true;
    let a = check(&with(five(), s.clone()), plain(true));
    assert_eq!(
        (a.len(), a[0].kind, a[0].positions.clone()),
        (1, Kind::Lost, vec![3, 4])
    );
    // A session that was dropped owes nothing past what it got.
    s.final_ = false;
    assert_eq!(kinds(&with(five(), s), true), vec![]);
}

#[test]
fn phantoms_stale_events_and_bad_ids() {
    let h = with(five(), session(Some(0), 60, vec![ev(99, 1)]));
    assert_eq!(kinds(&h, true), vec![Kind::Phantom]);
    let corrupt = ObsKind::Event {
        id: id(1),
        op: None,
        raw: "garbage".into(),
    };
    assert_eq!(
        kinds(&with(five(), session(Some(0), 60, vec![corrupt])), true),
        vec![Kind::Phantom]
    );
    // Fresh at 60 (request sent at 59): entry 2 was acknowledged at 35.
    let h = with(five(), session(None, 60, vec![ev(3, 2), ev(4, 3)]));
    assert_eq!(kinds(&h, true), vec![Kind::Stale]);
    // The right event with the wrong id.
    let h = with(five(), session(Some(0), 60, vec![ev(2, 2)]));
    assert_eq!(kinds(&h, true), vec![Kind::BadId]);
    // An opening id between entries (or past the end) names no position of the stream.
    let between = ObsKind::IdOnly {
        id: "ep-100-5".into(),
    };
    assert_eq!(
        kinds(
            &with(five(), session(Some(0), 60, vec![between.clone()])),
            true
        ),
        vec![Kind::BadId]
    );
    assert_eq!(
        kinds(&with(five(), session(Some(0), 60, vec![between])), false),
        vec![]
    );
    let other_epoch = ObsKind::IdOnly {
        id: "zz-100-0".into(),
    };
    assert_eq!(
        kinds(&with(five(), session(Some(0), 60, vec![other_epoch])), true),
        vec![Kind::BadId]
    );
}

#[test]
fn multi_channel_ids() {
    let mut h = five();
    h.truth.channels.insert(
        "b".into(),
        vec![Entry {
            id: id(0),
            key: (100, 0),
            op: Some(9),
        }],
    );
    h.publishes.push(PublishOp {
        op: 9,
        channel: "b".into(),
        start: 70,
        end: 75,
        outcome: Outcome::Acked { id: id(0) },
        attempts: Vec::new(),
        probe: false,
        rejection: None,
    });
    let comp = |a: i64, b: &str| {
        format!(
            "{EPOCH}.0000abcd.{}.{b}",
            if a < 0 {
                "0-0".into()
            } else {
                format!("{}-0", 100 + a)
            }
        )
    };
    let mut s = session(None, 42, Vec::new());
    s.channels = vec!["a".into(), "b".into()];
    s.multi = true;
    s.obs = [
        ObsKind::IdOnly { id: comp(3, "0-0") },
        ObsKind::Event {
            id: comp(4, "0-0"),
            op: Some(5),
            raw: String::new(),
        },
        ObsKind::Event {
            id: comp(4, "100-0"),
            op: Some(9),
            raw: String::new(),
        },
    ]
    .into_iter()
    .enumerate()
    .map(|(i, kind)| Obs {
        t: 43 + i as u64,
        kind,
    })
    .collect();
    assert_eq!(kinds(&with(h.clone(), s.clone()), true), vec![]);
    // The b event must not move a's part of the id.
    s.obs[2].kind = ObsKind::Event {
        id: comp(3, "100-0"),
        op: Some(9),
        raw: String::new(),
    };
    assert_eq!(kinds(&with(h, s), true), vec![Kind::BadId]);
}

#[test]
fn the_streams_against_the_publishes() {
    // Acknowledged but not in the stream.
    let mut h = five();
    if let Some(e) = h.truth.channels.get_mut("a") {
        e.pop();
    }
    assert_eq!(kinds(&h, true), vec![Kind::AckedMissing]);
    // In the stream twice.
    let mut h = five();
    if let Some(e) = h.truth.channels.get_mut("a") {
        e.push(Entry {
            id: id(5),
            key: (105, 0),
            op: Some(5),
        });
    }
    assert_eq!(kinds(&h, true), vec![Kind::PublishedTwice]);
    // Refused, yet there.
    let mut h = five();
    h.publishes[4].outcome = Outcome::Refused { last: "503".into() };
    assert_eq!(kinds(&h, true), vec![Kind::RefusedButPublished]);
    // An error answer no valid publish should get.
    let mut h = five();
    h.publishes[0].rejection = Some("node1 500 internal".into());
    assert_eq!(kinds(&h, true), vec![Kind::Rejected]);
    // Unknown outcome: either way is fine.
    let mut h = five();
    h.publishes[4].outcome = Outcome::Unknown { last: "504".into() };
    assert_eq!(kinds(&h, true), vec![]);
    // Op 2 was acknowledged (25) before op 3 started (30), yet comes after it.
    let h = history(&[(1, 10, 15), (3, 30, 35), (2, 20, 25)]);
    assert_eq!(kinds(&h, true), vec![Kind::RealTimeOrder]);
    // Concurrent publishes may land in either order.
    let h = history(&[(1, 10, 15), (3, 22, 35), (2, 20, 25)]);
    assert_eq!(kinds(&h, true), vec![]);
}

/// `five()` after a failover at 5 that lost entry 2 (op 3, acknowledged): the store
/// holds entries 0, 1, 3, 4.
fn failed_over() -> History {
    let mut h = five();
    if let Some(es) = h.truth.channels.get_mut("a") {
        es.remove(2);
    }
    h.faults.push(crate::check::record::FaultRecord {
        start: 5,
        end: 8,
        kind: "failover",
        what: "SENTINEL FAILOVER".into(),
    });
    h
}

fn failover_kinds(h: &History, acked_may_vanish: bool) -> Vec<Kind> {
    let contract = Contract {
        history_complete: true,
        failovers: true,
        acked_may_vanish,
    };
    check(h, contract).into_iter().map(|a| a.kind).collect()
}

fn sync_at(pos: i64) -> ObsKind {
    ObsKind::Sync {
        id: id(pos),
        channel: "a".into(),
        reason: "history_trimmed".into(),
    }
}

#[test]
fn a_lost_acknowledged_event_must_be_announced() {
    // Resumed at 1, it goes on to 3: past the lost event 2, silently.
    let h = with(
        failed_over(),
        session(Some(1), 60, vec![ev(4, 3), ev(5, 4)]),
    );
    assert_eq!(failover_kinds(&h, true), vec![Kind::Lost]);
    // Told where the loss is: fine.
    let h = with(
        failed_over(),
        session(Some(1), 60, vec![sync_at(2), ev(4, 3), ev(5, 4)]),
    );
    assert_eq!(failover_kinds(&h, true), vec![]);
    // With replica confirmation an acknowledged event must not vanish at all.
    let h = with(
        failed_over(),
        session(Some(1), 60, vec![sync_at(2), ev(4, 3), ev(5, 4)]),
    );
    assert_eq!(failover_kinds(&h, false), vec![Kind::AckedMissing]);
}

#[test]
fn a_session_holding_a_lost_event_must_be_told() {
    // It got event 2 live before the failover lost it, then goes on without a word.
    let h = with(
        failed_over(),
        session(Some(1), 60, vec![ev(3, 2), ev(4, 3), ev(5, 4)]),
    );
    assert_eq!(failover_kinds(&h, true), vec![Kind::Lost]);
    // Resumed from the lost event, silently going on: the same.
    let h = with(
        failed_over(),
        session(Some(2), 60, vec![ev(4, 3), ev(5, 4)]),
    );
    assert_eq!(failover_kinds(&h, true), vec![Kind::Lost]);
    // From one lost event to the next (live, before the node's guard ran) is no
    // anomaly in itself; leaving them for a kept event untold is.
    let mut h = failed_over();
    if let Some(es) = h.truth.channels.get_mut("a") {
        es.remove(2); // entry 3 (op 4) is lost as well
    }
    let h2 = with(
        h.clone(),
        session(Some(1), 60, vec![ev(3, 2), ev(4, 3), sync_at(3), ev(5, 4)]),
    );
    assert_eq!(failover_kinds(&h2, true), vec![]);
    let h3 = with(h, session(Some(1), 60, vec![ev(3, 2), ev(4, 3), ev(5, 4)]));
    assert_eq!(failover_kinds(&h3, true), vec![Kind::Lost]);
    // Told: fine, and the announcement after a failover is no anomaly.
    let h = with(
        failed_over(),
        session(Some(2), 60, vec![sync_at(2), ev(4, 3), ev(5, 4)]),
    );
    assert_eq!(failover_kinds(&h, true), vec![]);
}

#[test]
fn a_fresh_session_is_owed_only_the_lost_events_published_after_its_head() {
    // Opened at 32 where the new primary's stream ends (entry 1): op 3, lost, was
    // published at 30, before the head, so going past it is no loss to this session.
    let h = with(
        failed_over(),
        session(None, 32, vec![id_only(1), ev(4, 3), ev(5, 4)]),
    );
    assert_eq!(failover_kinds(&h, true), vec![]);
    // Opened at 25, before op 3's publish started: it was owed op 3 or a word.
    let h = with(
        failed_over(),
        session(None, 25, vec![id_only(1), ev(4, 3), ev(5, 4)]),
    );
    assert_eq!(failover_kinds(&h, true), vec![Kind::Lost]);
    let h = with(
        failed_over(),
        session(None, 25, vec![id_only(1), sync_at(2), ev(4, 3), ev(5, 4)]),
    );
    assert_eq!(failover_kinds(&h, true), vec![]);
}
