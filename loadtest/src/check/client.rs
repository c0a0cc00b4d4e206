//! Clients: each one follows a fixed set of channels (one, over
//! `/v1/channels/{c}/events`, or several, over `/v1/events?channels=...`) as a chain of
//! sessions. A session goes to a random node, with the last id the client has (or, now
//! and then, fresh without one), reads for a random while, and is dropped; the next one
//! resumes. A stall (from the fault schedule) stops reading for a while mid-session.
//!
//! Every session records the moment its response head was read and every id-only frame,
//! event and `sync-required` with the time it was read. Nothing waits for the id-only
//! opening frame: the head is the moment a stream starts, and a fresh session reports it
//! to the prober at once.
//!
//! In the final phase clients stop dropping and stalling and read until they have the
//! last entry of each channel (or the deadline); that session is marked final.
//!
//! Reading uses the load generator's raw HTTP/1.1 reader (`crate::sse`) feeding
//! `ssegate_client::Parser`, so the checker parses streams exactly like the benchmarks.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ssegate_client::{Item, Parser};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep, sleep_until, timeout};

use crate::check::record::{Key, Obs, ObsKind, Recorder, Session, decode_data, parse_id};
use crate::sse::conn::{self, Pump, Reader};
use crate::sse::http1;

/// Where the run is.
#[derive(Debug, Clone)]
pub(crate) enum Phase {
    Running,
    /// Publishing is over: read until each channel is at its last key, until `deadline`.
    Final {
        targets: BTreeMap<String, Key>,
        deadline: Instant,
    },
}

/// What clients share.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) rec: Arc<Recorder>,
    pub(crate) run_id: String,
    pub(crate) addrs: Arc<RwLock<Vec<SocketAddr>>>,
    pub(crate) probes: mpsc::Sender<Vec<String>>,
    pub(crate) connect_failures: AtomicU64,
}

/// One client.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) index: usize,
    /// Sorted.
    pub(crate) channels: Vec<String>,
    pub(crate) multi: bool,
    pub(crate) seed: u64,
}

/// Runs a client until it caught up in the final phase (`true`) or the final deadline
/// passed or the run was abandoned (`false`).
pub(crate) async fn run(
    ctx: Arc<Ctx>,
    plan: Plan,
    mut stalls: mpsc::Receiver<Duration>,
    mut phase: watch::Receiver<Phase>,
) -> bool {
    let mut rng = fastrand::Rng::with_seed(plan.seed);
    let mut parser = Parser::new();
    for no in 0u32.. {
        let final_deadline = match &*phase.borrow() {
            Phase::Running => None,
            Phase::Final { deadline, .. } => Some(*deadline),
        };
        // Bounded: by the final deadline, or by the run going away (the sender dropped).
        if final_deadline.is_some_and(|d| Instant::now() >= d) || phase.has_changed().is_err() {
            return false;
        }
        // Fresh now and then (never in the final phase: it must catch up, not skip).
        if parser.last_event_id().is_empty() || (final_deadline.is_none() && rng.u8(0..100) < 30) {
            parser = Parser::new();
        }
        let cursor = Some(parser.last_event_id().to_owned()).filter(|c| !c.is_empty());
        let node = {
            let addrs = ctx.addrs.read().unwrap_or_else(|p| p.into_inner());
            rng.usize(0..addrs.len())
        };
        let addr = ctx.addrs.read().unwrap_or_else(|p| p.into_inner())[node];
        let path = if plan.multi {
            // Any order: the gateway must canonicalise the set (composite ids are sorted).
            let mut chs = plan.channels.clone();
            rng.shuffle(&mut chs);
            format!("/v1/events?channels={}", chs.join(","))
        } else {
            format!("/v1/channels/{}/events", plan.channels[0])
        };
        let request = http1::request(&path, &addr.to_string(), cursor.as_deref());
        let opened = timeout(Duration::from_secs(2), conn::open(addr, None, &request)).await;
        let Ok(Ok(tcp)) = opened else {
            // A node that is down: another one, after a short pause.
            ctx.connect_failures.fetch_add(1, Ordering::Relaxed);
            sleep(Duration::from_millis(rng.u64(20..150))).await;
            continue;
        };
        let mut s = Session {
            client: plan.index,
            no,
            channels: plan.channels.clone(),
            multi: plan.multi,
            node,
            cursor,
            sent: ctx.rec.now(),
            ..Session::default()
        };
        // Mostly short sessions (many heads, many resumes), now and then a long one.
        let life = if rng.u8(0..10) == 0 {
            rng.u64(4000..8000)
        } else {
            rng.u64(150..2500)
        };
        let caught_up = read(
            &ctx,
            &mut s,
            tcp,
            &mut parser,
            Duration::from_millis(life),
            &mut stalls,
            &mut phase,
        )
        .await;
        parser.finish();
        s.end = ctx.rec.now();
        Recorder::push(&ctx.rec.sessions, s);
        if caught_up {
            return true;
        }
        if phase.has_changed().is_err() {
            return false;
        }
        if final_deadline.is_none() {
            sleep(Duration::from_millis(rng.u64(0..80))).await;
        }
    }
    false
}

/// Reads one session; `true` when the final phase is reached and every channel caught up.
async fn read(
    ctx: &Ctx,
    s: &mut Session,
    tcp: TcpStream,
    parser: &mut Parser,
    life: Duration,
    stalls: &mut mpsc::Receiver<Duration>,
    phase: &mut watch::Receiver<Phase>,
) -> bool {
    let mut reader = Reader::new();
    let mut items = Vec::new();
    let mut drop_at = Instant::now() + life;
    loop {
        let targets = match &*phase.borrow_and_update() {
            Phase::Running => None,
            Phase::Final { targets, deadline } => {
                drop_at = *deadline;
                Some(targets.clone())
            }
        };
        if let Some(t) = &targets
            && s.head.is_some()
            && caught_up(parser.last_event_id(), s, t)
        {
            s.final_ = true;
            s.end_reason = "caught up".into();
            return true;
        }
        tokio::select! {
            r = tcp.readable() => if let Err(e) = r {
                s.end_reason = format!("read error: {e}");
                return false;
            },
            () = sleep_until(drop_at) => {
                if targets.is_some() {
                    s.final_ = true;
                    s.end_reason = "final deadline".into();
                } else {
                    s.end_reason = "dropped".into();
                }
                return false;
            }
            Some(d) = stalls.recv(), if targets.is_none() => {
                let from = ctx.rec.now();
                sleep(d).await;
                s.stalls.push((from, ctx.rec.now()));
                continue;
            }
            r = phase.changed() => {
                if r.is_err() {
                    s.end_reason = "run abandoned".into();
                    return false;
                }
                continue;
            }
        }
        // Drain what is there, a bounded number of reads before yielding.
        for _ in 0..16 {
            let p = reader.pump(&tcp, parser, &mut items);
            let t = ctx.rec.now();
            if s.status.is_none()
                && let Some(code) = reader.status()
            {
                s.status = Some(code);
                if code == 200 {
                    s.head = Some(t);
                    if s.cursor.is_none() {
                        let _ = ctx.probes.try_send(s.channels.clone());
                    }
                }
            }
            for item in items.drain(..) {
                if let Some(kind) = observe(&ctx.run_id, item) {
                    s.obs.push(Obs { t, kind });
                }
            }
            let end = match p {
                Pump::Data => continue,
                Pump::WouldBlock => break,
                Pump::End => "server closed".to_owned(),
                Pump::Status(code) => format!("status {code}"),
                Pump::Failed(e) => e,
            };
            s.end_reason = end;
            return false;
        }
    }
}

/// What of a parsed item the history keeps.
fn observe(run_id: &str, item: Item) -> Option<ObsKind> {
    match item {
        Item::LastEventId(id) => Some(ObsKind::IdOnly { id }),
        Item::Event(ev) if ev.event == "sync-required" => {
            let v: serde_json::Value = serde_json::from_str(&ev.data).unwrap_or_default();
            let field = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_owned();
            Some(ObsKind::Sync {
                id: ev.id,
                channel: field("channel"),
                reason: field("reason"),
            })
        }
        Item::Event(ev) => {
            let op = decode_data(run_id, &ev.data);
            let raw = if op.is_some() {
                String::new()
            } else {
                ev.data.chars().take(80).collect()
            };
            Some(ObsKind::Event { id: ev.id, op, raw })
        }
        Item::Retry(_) | Item::Comment(_) => None,
    }
}

/// Whether the client's last id is at or past every channel's last entry.
fn caught_up(id: &str, s: &Session, targets: &BTreeMap<String, Key>) -> bool {
    let Some((_, keys)) = parse_id(id, s.multi, s.channels.len()) else {
        return false;
    };
    s.channels
        .iter()
        .zip(keys)
        .all(|(c, k)| targets.get(c).is_none_or(|t| k >= *t))
}
