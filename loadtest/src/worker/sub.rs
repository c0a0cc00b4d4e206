//! One subscriber: connect, read, check every event's sequence number, and reconnect with
//! its last event id whenever the stream ends (to the next target, so a killed node's
//! subscribers land on the others), until the coordinator says the run is over.

use std::cell::RefCell;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::Duration;

use ssegate_client::{Item, Parser};
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until, timeout};

use crate::payload;
use crate::proto::WorkerPlan;
use crate::sse::conn::{self, Pump, Reader};
use crate::sse::http1;
use crate::worker::state::{Limiter, Phase, Stats};

/// What a worker shares with its subscribers.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) plan: WorkerPlan,
    pub(crate) stats: RefCell<Stats>,
    pub(crate) connect_limiter: Limiter,
    pub(crate) reconnect_limiter: Limiter,
}

/// Per-subscriber delivery bookkeeping.
#[derive(Debug)]
struct Track {
    channel: u64,
    /// The next sequence number expected on the channel.
    next_seq: u64,
}

/// How one stream ended.
enum End {
    /// The coordinator asked for a drop (reconnect storm).
    Dropped,
    /// The run is over for this subscriber.
    Finished,
    /// The server closed the stream, or it failed, or was refused.
    Lost { was_live: bool },
}

/// Runs subscriber number `index` (global) until the run finishes.
pub(crate) async fn run(ctx: Rc<Ctx>, index: usize, mut phase: watch::Receiver<Phase>) {
    let plan = &ctx.plan;
    let k = index % plan.channels.max(1);
    let channel = format!("{}{k}", plan.channel_prefix);
    let mut target = index % plan.targets.len();
    // The first source (127.0.0.1) is the kernel's own choice: no bind (see conn::open).
    let source: Option<IpAddr> = plan
        .sources
        .get((index / plan.per_source.max(1)) % plan.sources.len().max(1))
        .copied()
        .filter(|ip| *ip != IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
    let mut parser = Parser::new();
    let mut track = Track {
        channel: k as u64,
        next_seq: 1,
    };
    let mut ever_live = false;
    let mut down_since: Option<Instant> = None;
    let mut failures: u32 = 0;
    let mut retry_ms: u64 = 0;
    let mut seen_drop = phase.borrow().drop_gen;
    // Connect time counts from the first attempt (after the rate limiter's slot).
    let mut started: Option<Instant> = None;
    loop {
        if finished(&phase.borrow(), &track) {
            break;
        }
        if !ever_live {
            ctx.connect_limiter.acquire().await;
            started.get_or_insert_with(Instant::now);
        } else {
            ctx.reconnect_limiter.acquire().await;
        }
        let t = &plan.targets[target];
        let last_id = Some(parser.last_event_id()).filter(|id| !id.is_empty());
        let request = http1::request(
            &t.subscribe_path(plan.flavor, &channel),
            &t.authority,
            last_id,
        );
        let opened = timeout(
            Duration::from_millis(plan.connect_timeout_ms),
            conn::open(t.addr, source, &request),
        )
        .await;
        let end = match opened {
            Ok(Ok(tcp)) => {
                let mut s = Stream {
                    ctx: &ctx,
                    tcp,
                    reader: Reader::new(),
                    live: false,
                    ever_live: &mut ever_live,
                    down_since: &mut down_since,
                    started: started.unwrap_or_else(Instant::now),
                    retry_ms: &mut retry_ms,
                };
                s.read(&mut parser, &mut track, &mut phase, &mut seen_drop)
                    .await
            }
            Ok(Err(e)) => {
                ctx.stats
                    .borrow_mut()
                    .error(format!("connect {}: {e}", t.addr));
                End::Lost { was_live: false }
            }
            Err(_) => {
                ctx.stats
                    .borrow_mut()
                    .error(format!("connect {}: timed out", t.addr));
                End::Lost { was_live: false }
            }
        };
        parser.finish();
        match end {
            End::Finished => break,
            End::Dropped => {
                down_since.get_or_insert_with(Instant::now);
                failures = 0;
            }
            End::Lost { was_live } => {
                down_since.get_or_insert_with(Instant::now);
                if was_live {
                    failures = 0;
                } else {
                    failures += 1;
                    if !ever_live {
                        ctx.stats.borrow_mut().progress.connect_failures += 1;
                    }
                }
                // The next attempt goes to the next node, like a load balancer would.
                target = (target + 1) % plan.targets.len();
                let mut wait = if plan.honor_retry { retry_ms } else { 0 };
                if failures > 0 {
                    let backoff = (50u64 << failures.min(6)).min(2000);
                    wait = wait.max(backoff / 2 + fastrand::u64(0..=backoff / 2));
                }
                if wait > 0 && !wait_or_finish(&mut phase, &track, wait).await {
                    break;
                }
            }
        }
    }
    let mut stats = ctx.stats.borrow_mut();
    let ph = phase.borrow();
    if let Some(last) = ph.last_seq(track.channel) {
        stats.counts.missing += (last + 1).saturating_sub(track.next_seq);
    }
    if down_since.is_some() || !ever_live {
        stats.counts.down_at_end += 1;
    }
}

/// Whether the run is over for this subscriber: finishing, and it has everything or the
/// grace time is up.
fn finished(phase: &Phase, track: &Track) -> bool {
    match (&phase.finish, phase.last_seq(track.channel)) {
        (Some(f), Some(last)) => track.next_seq > last || Instant::now() >= f.deadline,
        (Some(f), None) => Instant::now() >= f.deadline,
        _ => false,
    }
}

/// Sleeps `ms`, but not past the finish deadline; `false` when the run is over.
async fn wait_or_finish(phase: &mut watch::Receiver<Phase>, track: &Track, ms: u64) -> bool {
    let mut until = Instant::now() + Duration::from_millis(ms);
    loop {
        if let Some(f) = &phase.borrow().finish {
            until = until.min(f.deadline);
        }
        tokio::select! {
            () = sleep_until(until) => return !finished(&phase.borrow(), track),
            r = phase.changed() => if r.is_err() { return false },
        }
    }
}

/// One open stream.
struct Stream<'a> {
    ctx: &'a Ctx,
    tcp: tokio::net::TcpStream,
    reader: Reader,
    live: bool,
    ever_live: &'a mut bool,
    down_since: &'a mut Option<Instant>,
    started: Instant,
    retry_ms: &'a mut u64,
}

impl Stream<'_> {
    async fn read(
        &mut self,
        parser: &mut Parser,
        track: &mut Track,
        phase: &mut watch::Receiver<Phase>,
        seen_drop: &mut u32,
    ) -> End {
        let mut items = Vec::new();
        let end = loop {
            {
                let ph = phase.borrow_and_update();
                if ph.drop_gen != *seen_drop {
                    *seen_drop = ph.drop_gen;
                    break End::Dropped;
                }
                if finished(&ph, track) {
                    break End::Finished;
                }
            }
            let deadline = phase.borrow().finish.as_ref().map(|f| f.deadline);
            tokio::select! {
                r = self.tcp.readable() => if let Err(e) = r {
                    self.ctx.stats.borrow_mut().error(format!("read: {e}"));
                    break End::Lost { was_live: self.live };
                },
                r = phase.changed() => {
                    if r.is_err() { break End::Finished; }
                    continue;
                }
                () = sleep_until(deadline.unwrap_or_else(far_future)), if deadline.is_some() => continue,
            }
            // Drain what is there, a bounded number of reads before yielding.
            let mut outcome = None;
            for _ in 0..16 {
                let p = self.reader.pump(&self.tcp, parser, &mut items);
                self.handle(&mut items, track);
                match p {
                    Pump::Data => {}
                    Pump::WouldBlock => break,
                    Pump::End => {
                        outcome = Some(End::Lost {
                            was_live: self.live,
                        });
                        break;
                    }
                    Pump::Status(code) => {
                        self.ctx.stats.borrow_mut().error(format!("status {code}"));
                        outcome = Some(End::Lost { was_live: false });
                        break;
                    }
                    Pump::Failed(e) => {
                        self.ctx.stats.borrow_mut().error(e);
                        outcome = Some(End::Lost {
                            was_live: self.live,
                        });
                        break;
                    }
                }
            }
            if let Some(end) = outcome {
                break end;
            }
            if self.reader.status() == Some(200)
                && !self.live
                && !self.ctx.plan.flavor.live_on_first_id()
            {
                self.went_live();
            }
        };
        if self.live {
            self.ctx.stats.borrow_mut().progress.live -= 1;
        }
        end
    }

    fn went_live(&mut self) {
        self.live = true;
        let now = Instant::now();
        let mut stats = self.ctx.stats.borrow_mut();
        stats.progress.live += 1;
        if !*self.ever_live {
            *self.ever_live = true;
            stats.progress.ever_live += 1;
            stats.record_connect(now - self.started);
        } else {
            stats.counts.reconnects += 1;
        }
        if let Some(since) = self.down_since.take() {
            stats.relive(now - since);
        }
    }

    fn handle(&mut self, items: &mut Vec<Item>, track: &mut Track) {
        if items.is_empty() {
            return;
        }
        let now_us = payload::now_us();
        for item in items.drain(..) {
            match item {
                Item::LastEventId(_) => {
                    if !self.live {
                        self.went_live();
                    }
                }
                Item::Retry(ms) => *self.retry_ms = ms,
                Item::Comment(_) => {}
                Item::Event(ev) => {
                    if !self.live {
                        self.went_live();
                    }
                    let mut stats = self.ctx.stats.borrow_mut();
                    if ev.event == "sync-required" {
                        stats.counts.sync_required += 1;
                        continue;
                    }
                    let Some(stamp) = payload::decode(&ev.data).filter(|s| s.ch == track.channel)
                    else {
                        stats.counts.foreign += 1;
                        continue;
                    };
                    stats.progress.received += 1;
                    stats.record_latency(now_us.saturating_sub(stamp.ts_us));
                    if stamp.seq < track.next_seq {
                        stats.counts.duplicates += 1;
                    } else {
                        stats.counts.gaps += stamp.seq - track.next_seq;
                        track.next_seq = stamp.seq + 1;
                    }
                }
            }
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::state::FinishState;

    #[test]
    fn finish_rules() {
        let track = Track {
            channel: 1,
            next_seq: 5,
        };
        let mut phase = Phase::default();
        assert!(!finished(&phase, &track));
        phase.finish = Some(FinishState {
            last_seq: vec![0, 4],
            deadline: Instant::now() + Duration::from_secs(60),
        });
        assert!(finished(&phase, &track));
        phase.finish = Some(FinishState {
            last_seq: vec![0, 9],
            deadline: Instant::now() + Duration::from_secs(60),
        });
        assert!(!finished(&phase, &track));
    }
}
