//! One SSE stream: the state machine behind a subscriber's response body.
//!
//! The body pulls frames with [`Session::next_frame`]; nothing is produced while the
//! client is not reading, so a stalled client costs its cursor and nothing more (see the
//! hub's backpressure rule: its live ring laps it, and it is caught up from history).
//!
//! # When a stream starts
//!
//! **A stream starts at its response head.** [`Session::open`] takes the live
//! subscriptions and fixes every channel's start position (the store's epoch, and for a
//! fresh subscriber the channel's newest id, or a position before it that the hub knows:
//! see `heads`) *before* the caller writes the `200` head.
//! So every event whose publish starts after a client has the head (`EventSource`'s
//! `open`) is after the stream's cursor and is delivered, live or from history. Were the
//! position read after the head (lazily, on the body's first poll), an event published
//! in between would count as "before the stream" and be lost without a trace.
//!
//! Per channel a session keeps the id of the last event it wrote (its cursor) and whether
//! it is *catching up* (reading history) or *live*. Joining without loss: the live
//! subscriptions are taken when the session is built, before any history is read; a
//! channel goes live only once a history read reports nothing more, and from then on a
//! live event is written only if it directly follows the cursor (its `prev` is the
//! cursor). A live event that is not after the cursor was already replayed and is
//! skipped; one whose `prev` is after the cursor reveals that something did not come live
//! (a dropped pub/sub message, a subscription not yet active), and the channel catches up
//! from history instead. Live delivery therefore checks itself: a missed message costs a
//! history read, never an event.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::future::Either;
use ssegate_broker::{ChannelHead, Direct, LiveRecv, LiveSubscription, ReadFrom, StoredEvent};
use ssegate_core::cursor::write_composite;
use ssegate_core::sse::{self, SyncReason};
use ssegate_core::{ChannelName, EntryId, Epoch, Position, StartFrom};
use tokio::time::{Instant, Sleep};

use super::heads::Head;
use crate::conn::{Lane, Live};
use crate::metrics::CloseReason;
use crate::state::{AppState, StreamGuard};

/// How event ids are written on this stream.
#[derive(Debug, Clone, Copy)]
pub(crate) enum IdForm {
    /// `/v1/channels/{c}/events`: the event's own position.
    Single,
    /// `/v1/events`: the composite cursor of every channel, with the set's checksum.
    Composite { checksum: u32 },
}

#[derive(Debug, Clone, Copy)]
enum Resync {
    /// Start from the oldest retained event without a signal (`lastEventId=0`).
    Oldest,
    /// Start from the oldest retained event and tell the client why.
    Signal(SyncReason),
}

#[derive(Debug)]
struct Chan {
    name: ChannelName,
    live: LiveSubscription,
    /// Last entry id written (or announced) on this stream for this channel.
    cursor: EntryId,
    /// Whether `cursor` is an event this stream wrote (not a client's word, a position
    /// the store named, or an announcement's): then a store that lacks it lost it, and a
    /// read says so ([`ReadFrom::AfterShown`]).
    shown: bool,
    catching_up: bool,
    /// Until the first catch-up of a client's cursor: it may be served from the node's
    /// recent events (see [`Session::catch_up`]).
    resuming: bool,
    resync: Option<Resync>,
    /// After a gap moved `cursor` back (the store lost events this stream showed): the
    /// newest id shown before. A live event at or below it may be a late copy of a lost
    /// event, so it is never written live; history, which is the store's truth, is read
    /// instead.
    live_floor: Option<EntryId>,
}

pub(crate) struct Session {
    state: Arc<AppState>,
    ids: IdForm,
    epoch: Option<Epoch>,
    chans: Vec<Chan>,
    pending: VecDeque<Bytes>,
    /// Fires at the next moment a heartbeat may be due; re-armed from `last_write` when
    /// it fires rather than reset on every frame (a timer-wheel update per delivery).
    heartbeat: Pin<Box<Sleep>>,
    /// When the last frame was handed to the connection.
    last_write: Instant,
    /// Resolves once, when the node starts draining. Kept across waits: a fresh
    /// `watch::Receiver::changed()` per wait would take a waiter-list lock shared with
    /// every other stream on every delivery.
    draining: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// Whether the drain has been seen (the future above is not polled again).
    drain_seen: bool,
    close_at: Option<Pin<Box<Sleep>>>,
    /// Set after a failed history read: the next try waits for it (heartbeats go on).
    backoff: Option<Pin<Box<Sleep>>>,
    backoff_step: Duration,
    /// When the subscriber's token expires: the stream ends there.
    expiry: Option<Pin<Box<Sleep>>>,
    /// Events per history read, adapted to the event sizes seen (see `REPLAY_BUDGET`).
    page_limit: usize,
    close_reason: CloseReason,
    finished: bool,
    next_poll: usize,
    buf: BytesMut,
    /// For a one-channel stream with its own ids: where the hub may write its live events
    /// while it waits (see `conn::lane`), as the lane and as the hub sees it.
    lane: Option<(Arc<Lane>, Arc<dyn Direct>)>,
    _guard: StreamGuard,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("channels", &self.chans.len())
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

static HEARTBEAT: Bytes = Bytes::from_static(sse::HEARTBEAT);

/// What one catch-up chunk may hold: a stream being replayed or caught up pins at most
/// this plus one event's frame, whatever its client does. The first read of a stream is
/// sized for the largest possible events (see [`first_page_limit`]); later reads adapt to
/// the sizes seen, so small events still replay in large pages.
const REPLAY_BUDGET: usize = 128 * 1024;

/// Events in a stream's first history read: before any size is known, as many as fit in
/// the budget if every event had the largest allowed data.
fn first_page_limit(settings: &crate::settings::Settings) -> usize {
    settings
        .events_fitting(REPLAY_BUDGET)
        .min(settings.replay_page_size.max(1))
}

/// Retry delays for history reads while the broker is unreachable.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

impl Session {
    /// Builds a session: takes its live subscriptions, then fixes where each channel
    /// starts (reading the broker), so that the caller may write the response head once
    /// this returns. When the broker cannot be read the session is already finished with
    /// a jittered `retry:` (the client comes back later, see [`Session::next_frame`]).
    /// `echo` is the client's cursor, echoed in the first frame when resuming.
    pub(crate) async fn open(
        state: Arc<AppState>,
        guard: StreamGuard,
        ids: IdForm,
        channels: Vec<ChannelName>,
        starts: Vec<StartFrom>,
        echo: Option<String>,
    ) -> Self {
        let mut session = Self::new(state, guard, ids, channels);
        session.start(starts, echo).await;
        session
    }

    fn new(
        state: Arc<AppState>,
        guard: StreamGuard,
        ids: IdForm,
        channels: Vec<ChannelName>,
    ) -> Self {
        let chans: Vec<Chan> = channels
            .into_iter()
            .map(|name| Chan {
                live: state.broker.subscribe(&name),
                name,
                cursor: EntryId::ZERO,
                shown: false,
                catching_up: false,
                resuming: false,
                live_floor: None,
                resync: None,
            })
            .collect();
        state.metrics.connections_open.increment(1.0);
        state.metrics.connections_opened.increment(1);
        tracing::debug!("stream opened");
        let heartbeat = Box::pin(tokio::time::sleep(state.settings.heartbeat_interval));
        let draining = Box::pin(state.lifecycle.draining());
        let lane = (matches!(ids, IdForm::Single) && chans.len() == 1).then(|| {
            let lane = Lane::new(state.clone());
            let direct: Arc<dyn Direct> = lane.clone();
            (lane, direct)
        });
        Self {
            lane,
            ids,
            epoch: None,
            chans,
            pending: VecDeque::new(),
            heartbeat,
            last_write: Instant::now(),
            draining,
            drain_seen: false,
            close_at: None,
            backoff: None,
            backoff_step: BACKOFF_MIN,
            expiry: None,
            page_limit: first_page_limit(&state.settings),
            close_reason: CloseReason::ClientGone,
            finished: false,
            next_poll: 0,
            buf: BytesMut::new(),
            _guard: guard,
            state,
        }
    }

    /// The stream's lane, for the connection that writes it (see `conn::lane`).
    pub(crate) fn lane(&self) -> Option<Arc<Lane>> {
        self.lane.as_ref().map(|(lane, _)| lane.clone())
    }

    /// Where the hub may write this stream's next live event as is, when it may: one
    /// channel with its own ids, live, nothing queued or buffered, not ending.
    fn lane_live(&self) -> Option<Live> {
        let c = self.chans.first()?;
        let plain = self.lane.is_some()
            && !self.finished
            && self.pending.is_empty()
            && self.buf.is_empty()
            && !c.catching_up;
        plain.then_some(Live {
            cursor: c.cursor,
            epoch: self.epoch?,
            floor: c.live_floor,
            until: self.expiry.as_ref().map(|t| t.deadline()),
        })
    }

    /// Ends the stream at `exp` (Unix seconds), after an `event: token-expired`.
    pub(crate) fn expire_at_unix(&mut self, exp: u64) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let left = Duration::from_secs(exp).saturating_sub(now);
        self.expiry = Some(Box::pin(tokio::time::sleep(left)));
    }

    /// The next chunk of the stream, or `None` when it ends.
    pub(crate) async fn next_frame(&mut self) -> Option<Bytes> {
        loop {
            if let Some(frame) = self.pending.pop_front() {
                self.state.metrics.bytes.increment(frame.len() as u64);
                self.last_write = Instant::now();
                return Some(frame);
            }
            if self.finished {
                return None;
            }
            if self.backoff.is_none() {
                if let Some(i) = self.chans.iter().position(|c| c.catching_up) {
                    self.catch_up(i).await;
                    continue;
                }
            }
            self.wait_live().await;
        }
    }

    /// Ends the stream with a jittered `retry:` so that the client comes back later.
    fn finish_with_retry(&mut self, reason: CloseReason) {
        self.close_reason = reason;
        let retry = self.state.settings.jittered_retry_ms();
        self.pending.push_back(sse::retry_frame(retry));
        self.finished = true;
    }

    /// Fixes each channel's start (see the module docs: before the head is written) and
    /// queues the opening frame.
    async fn start(&mut self, starts: Vec<StartFrom>, echo: Option<String>) {
        let broker = self.state.broker.clone();
        let epoch = match broker.epoch().await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "cannot open stream: broker unavailable");
                return self.finish_with_retry(CloseReason::BrokerUnavailable);
            }
        };
        // A fresh subscriber starts where the hub knows its channel to stand (a recent
        // start read's answer, while nothing since makes it stale: the broker's
        // `hub::recent`), else at the channel's newest id in the store, by one read shared
        // with the streams opening on the channel at the same moment (see `heads`), whose
        // answer seeds the head. The reads run together, as they all stand between the
        // request and its head.
        let fresh = starts
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s, StartFrom::Now));
        let heads = &self.state.heads;
        let reads = fresh.map(|(i, _)| {
            let chan = &self.chans[i];
            let head = match chan.live.head(epoch) {
                ChannelHead::Known { epoch, last } => {
                    Either::Left(std::future::ready(Ok(Head::known(epoch, last))))
                }
                ChannelHead::Unknown(generation) => {
                    Either::Right(heads.newest(&broker, &chan.name, generation))
                }
            };
            async move { (i, head.await) }
        });
        let mut read_epoch = None;
        for (i, read) in futures_util::future::join_all(reads).await {
            match read {
                // A read reports the store's epoch at that moment; it wins over a cached
                // one (a store that started over since).
                Ok(head) if *read_epoch.get_or_insert(head.epoch) == head.epoch => {
                    self.chans[i].cursor = head.last;
                    if let Some(generation) = head.generation {
                        self.chans[i]
                            .live
                            .seed_head(generation, head.epoch, head.last);
                    }
                }
                Ok(_) => {
                    // The store started over between two of these reads: the positions
                    // do not belong together, so the client retries and starts afresh.
                    tracing::info!("history epoch changed while a stream was opening");
                    return self.finish_with_retry(CloseReason::BrokerUnavailable);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open stream: broker unavailable");
                    return self.finish_with_retry(CloseReason::BrokerUnavailable);
                }
            }
        }
        let epoch = read_epoch.unwrap_or(epoch);
        for (chan, start) in self.chans.iter_mut().zip(starts) {
            match start {
                StartFrom::Now => {}
                StartFrom::Oldest => {
                    chan.catching_up = true;
                    chan.resync = Some(Resync::Oldest);
                }
                StartFrom::After(Position { epoch: e, id }) if e == epoch => {
                    chan.cursor = id;
                    chan.catching_up = true;
                    chan.resuming = true;
                }
                StartFrom::After(_) => {
                    chan.catching_up = true;
                    chan.resync = Some(Resync::Signal(SyncReason::EpochChanged));
                }
            }
        }
        self.epoch = Some(epoch);
        let id = match echo {
            Some(echo) => echo,
            None => self.current_id(epoch),
        };
        let retry = self.state.settings.jittered_retry_ms();
        self.pending.push_back(sse::open_frame(retry, &id));
        if self.state.is_draining() {
            self.drain_seen = true;
            self.start_drain();
        }
    }

    /// The stream's current cursor as text.
    fn current_id(&self, epoch: Epoch) -> String {
        match self.ids {
            IdForm::Single => Position {
                epoch,
                id: self.chans.first().map_or(EntryId::ZERO, |c| c.cursor),
            }
            .to_string(),
            IdForm::Composite { checksum } => {
                let mut s = String::with_capacity(20 + 24 * self.chans.len());
                let _ =
                    write_composite(&mut s, epoch, checksum, self.chans.iter().map(|c| c.cursor));
                s
            }
        }
    }

    async fn catch_up(&mut self, i: usize) {
        let broker = self.state.broker.clone();
        let Some(epoch) = self.epoch else { return };
        let from = match self.chans[i].resync {
            Some(_) => ReadFrom::Oldest,
            None if self.chans[i].shown => ReadFrom::AfterShown(self.chans[i].cursor),
            None => ReadFrom::After(self.chans[i].cursor),
        };
        if std::mem::take(&mut self.chans[i].resuming)
            && let ReadFrom::After(cursor) = from
            && let Some(events) = self.chans[i].live.recent_after(epoch, cursor)
        {
            // A resume this node can serve from the events it received live (see the
            // hub's `recent`): what follows the cursor, with no history read. Only the
            // client's own cursor, on the first catch-up: any later one follows a gap, a
            // lag or a resync, where the chain may hold late copies of events the store
            // lost (a cursor moved back below `live_floor`), and history decides.
            if !self.replay(i, &events, false) {
                self.chans[i].catching_up = false;
            }
            return;
        }
        let page = match broker
            .read(&self.chans[i].name, from, self.page_limit)
            .await
        {
            Ok(page) => page,
            Err(e) => {
                // Keep the client: heartbeats go on, and the read is retried with backoff
                // from the same cursor, so nothing is lost while the broker is away.
                tracing::debug!(error = %e, retry_in = ?self.backoff_step, "history read failed");
                let ms = u64::try_from(self.backoff_step.as_millis())
                    .unwrap_or(1)
                    .max(1);
                let delay = Duration::from_millis(ms / 2 + fastrand::u64(0..=ms / 2));
                self.backoff = Some(Box::pin(tokio::time::sleep(delay)));
                self.backoff_step = (self.backoff_step * 2).min(BACKOFF_MAX);
                return;
            }
        };
        self.backoff_step = BACKOFF_MIN;
        if page.epoch != epoch {
            self.epoch_changed(page.epoch);
            return;
        }
        let reason = match self.chans[i].resync.take() {
            Some(Resync::Signal(reason)) => Some(reason),
            Some(Resync::Oldest) => {
                self.chans[i].cursor = page.start;
                self.chans[i].shown = false;
                None
            }
            None if page.gap => Some(SyncReason::HistoryTrimmed),
            None => None,
        };
        if let Some(reason) = reason {
            if page.start < self.chans[i].cursor {
                // The store lost events this stream showed: queued or late live copies of
                // them must not follow the new cursor.
                self.chans[i].live.skip_queued();
                let shown = self.chans[i].cursor;
                self.chans[i].live_floor =
                    Some(self.chans[i].live_floor.map_or(shown, |f| f.max(shown)));
            }
            self.chans[i].cursor = page.start;
            self.chans[i].shown = false;
            let id = self.current_id(epoch);
            let name = self.chans[i].name.clone();
            self.state.metrics.sync_required(reason);
            self.pending
                .push_back(sse::sync_required_frame(&id, name.as_str(), reason));
        }
        let cut = self.replay(i, &page.events, true);
        if !cut && !page.has_more() {
            self.chans[i].catching_up = false;
        }
    }

    /// Writes the events after channel `i`'s cursor as one coalesced chunk (replay is
    /// about throughput, not sharing). The chunk stops at the budget (plus the event that
    /// crossed it); returns whether it stopped there, leaving the rest to be read again
    /// next time rather than held for a client that may not be reading. With `adapt`, the
    /// next history read's size follows the sizes seen.
    fn replay(&mut self, i: usize, events: &[Arc<StoredEvent>], adapt: bool) -> bool {
        let mut replayed = 0u64;
        let mut cut = false;
        for ev in events {
            if self.buf.len() >= REPLAY_BUDGET {
                cut = true;
                break;
            }
            if ev.id > self.chans[i].cursor {
                self.chans[i].cursor = ev.id;
                self.chans[i].shown = true;
                self.write_event(i, ev, true);
                replayed += 1;
            }
        }
        if replayed > 0 {
            let m = &self.state.metrics;
            m.replayed.increment(replayed);
            m.delivered(replayed);
        }
        if !self.buf.is_empty() {
            if adapt {
                let per_event = self.buf.len() / usize::try_from(replayed).unwrap_or(1).max(1);
                self.page_limit = (REPLAY_BUDGET / per_event.max(1))
                    .clamp(1, self.state.settings.replay_page_size.max(1));
            }
            let chunk = self.buf.split().freeze();
            self.pending.push_back(chunk);
        }
        cut
    }

    /// The store started over: every channel restarts from its oldest retained event,
    /// each with its own `sync-required`.
    fn epoch_changed(&mut self, epoch: Epoch) {
        tracing::info!(%epoch, "history epoch changed under a live stream");
        self.epoch = Some(epoch);
        for chan in &mut self.chans {
            chan.catching_up = true;
            chan.live_floor = None; // ids of another epoch
            chan.resync = Some(Resync::Signal(SyncReason::EpochChanged));
        }
    }

    /// Writes one event for channel `i` (whose cursor is already the event's id). With
    /// `coalesce`, into the session buffer; else as its own chunk, shared when possible.
    fn write_event(&mut self, i: usize, ev: &StoredEvent, coalesce: bool) {
        match self.ids {
            IdForm::Single if !coalesce => {
                self.pending.push_back(ev.encoded.frame().clone());
            }
            IdForm::Single => self.buf.put_slice(ev.encoded.frame()),
            IdForm::Composite { checksum } => {
                let Some(epoch) = self.epoch else { return };
                self.buf.put_slice(b"id: ");
                let mut w = BufWriter(&mut self.buf);
                let _ =
                    write_composite(&mut w, epoch, checksum, self.chans.iter().map(|c| c.cursor));
                self.buf.put_u8(b'\n');
                self.buf.put_slice(ev.encoded.body_slice());
                if !coalesce {
                    let chunk = self.buf.split().freeze();
                    self.pending.push_back(chunk);
                }
            }
        }
        let _ = i;
    }

    fn start_drain(&mut self) {
        let window = self.state.settings.drain_window;
        let ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        let delay = Duration::from_millis(if ms == 0 { 0 } else { fastrand::u64(0..ms) });
        self.close_at = Some(Box::pin(tokio::time::sleep(delay)));
    }

    /// Waits for the next thing that produces a frame or changes state, in a fixed order
    /// with live events last: the timers are cheap to poll, and a channel that is always
    /// ready cannot starve the drain or the token's expiry.
    async fn wait_live(&mut self) {
        let n = self.chans.len();
        let start = self.next_poll;
        let live = self.lane_live();
        let lane = self.lane.as_ref();
        let last_write = &mut self.last_write;
        let chans = &mut self.chans;
        let woke = tokio::select! {
            biased;
            () = fire(&mut self.expiry) => Woke::Expired,
            () = self.heartbeat.as_mut() => Woke::Heartbeat,
            () = self.draining.as_mut(), if !self.drain_seen => Woke::Draining,
            () = fire(&mut self.close_at) => Woke::Close,
            () = fire(&mut self.backoff) => Woke::Backoff,
            (i, recv) = poll_fn(|cx| {
                // What the hub wrote while this waited comes first: the cursor it left.
                lane_ran(lane, chans, last_write);
                // Round-robin from where the last live event came, so that no channel of a
                // multi-channel stream is starved by a busy one.
                let lent = lane.filter(|(l, _)| l.attached());
                let direct = lent.map(|(_, d)| d);
                for k in 0..n {
                    let i = (start + k) % n;
                    if let Poll::Ready(r) = chans[i].live.poll_recv_or_direct(cx, direct) {
                        return Poll::Ready((i, r));
                    }
                }
                if let (Some((lane, _)), Some(live)) = (lent, live) {
                    // Nothing came: the hub may write the next event itself.
                    lane.session_waits(Live { cursor: chans[0].cursor, ..live });
                }
                Poll::Pending
            }) => Woke::Live(i, recv),
        };
        lane_ran(self.lane.as_ref(), &mut self.chans, &mut self.last_write);
        match woke {
            Woke::Live(i, recv) => {
                self.next_poll = (i + 1) % n.max(1);
                self.on_live(i, recv);
            }
            Woke::Heartbeat => self.on_heartbeat(),
            Woke::Draining => {
                self.drain_seen = true;
                if self.close_at.is_none() {
                    self.start_drain();
                }
            }
            Woke::Close => self.finish_with_retry(CloseReason::Drained),
            Woke::Backoff => self.backoff = None,
            Woke::Expired => {
                self.pending.push_back(sse::token_expired_frame());
                self.close_reason = CloseReason::TokenExpired;
                self.finished = true;
            }
        }
    }

    /// What channel `i`'s live subscription yielded.
    fn on_live(&mut self, i: usize, recv: LiveRecv) {
        match recv {
            LiveRecv::Event(ev) => self.on_live_event(i, &ev),
            LiveRecv::Lagged => {
                self.state.metrics.caught_up();
                self.chans[i].catching_up = true;
            }
            LiveRecv::Resync => {
                self.state.metrics.resyncs.increment(1);
                self.chans[i].catching_up = true;
            }
            LiveRecv::Closed => self.finish_with_retry(CloseReason::Shutdown),
        }
    }

    /// What channel `i` does with a live event, by the live rule ([`live_rule`]).
    fn on_live_event(&mut self, i: usize, ev: &StoredEvent) {
        let c = &self.chans[i];
        if c.catching_up {
            // Waiting to retry a history read, which will cover this event.
            return;
        }
        match live_rule(c.cursor, self.epoch, c.live_floor, ev) {
            Verdict::NewEpoch => self.epoch_changed(ev.epoch),
            Verdict::Written => {}
            Verdict::Hole => self.chans[i].catching_up = true,
            Verdict::Write => {
                self.chans[i].cursor = ev.id;
                self.chans[i].shown = true;
                self.write_event(i, ev, false);
                self.state.metrics.delivered_live(ev.published_at_ms);
            }
        }
    }

    /// The heartbeat timer fired: a comment if nothing was written for a whole interval,
    /// else the timer moves to an interval after the last write. (It is re-armed here
    /// rather than reset on every frame, which would be a timer-wheel update per delivery.)
    fn on_heartbeat(&mut self) {
        let interval = self.state.settings.heartbeat_interval;
        let due = self.last_write + interval;
        let now = Instant::now();
        if now >= due {
            self.state.metrics.heartbeats.increment(1);
            self.pending.push_back(HEARTBEAT.clone());
            self.heartbeat.as_mut().reset(now + interval);
        } else {
            self.heartbeat.as_mut().reset(due);
        }
    }
}

/// What the live rule makes of a live event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// From another epoch than the stream's: the store started over.
    NewEpoch,
    /// At or before the cursor: already written (replayed before this live copy came).
    Written,
    /// Something between the cursor and it did not come live, or it may be a late copy
    /// of a lost event (at or below a gap's floor): history is read instead, this event
    /// included.
    Hole,
    /// It directly follows the cursor: written as it is.
    Write,
}

/// **The live rule**: a live event is written only when it directly follows the channel's
/// cursor (its `prev` is the cursor), in the stream's epoch (`None`: not known yet), above
/// a gap's `floor`. The session applies it to every live event, and the hub's direct
/// writes (`conn::lane`) take an event only when it says [`Verdict::Write`].
pub(crate) fn live_rule(
    cursor: EntryId,
    epoch: Option<Epoch>,
    floor: Option<EntryId>,
    ev: &StoredEvent,
) -> Verdict {
    if ev.epoch != epoch.unwrap_or(ev.epoch) {
        Verdict::NewEpoch
    } else if ev.id <= cursor {
        Verdict::Written
    } else if floor.is_some_and(|f| ev.id <= f) || ev.prev != cursor {
        Verdict::Hole
    } else {
        Verdict::Write
    }
}

/// Takes the session's word back from its lane, and with it what the hub wrote meanwhile:
/// the channel's cursor moves to the last event the hub wrote (each followed the one
/// before, by the live rule) and the heartbeat counts from that write.
fn lane_ran(
    lane: Option<&(Arc<Lane>, Arc<dyn Direct>)>,
    chans: &mut [Chan],
    last_write: &mut Instant,
) {
    let Some((lane, _)) = lane else { return };
    if let (Some((cursor, at)), Some(c)) = (lane.session_runs(), chans.first_mut()) {
        if cursor > c.cursor {
            c.cursor = cursor;
            c.shown = true;
        }
        *last_write = (*last_write).max(at);
    }
}

/// What woke a waiting session.
enum Woke {
    Live(usize, LiveRecv),
    Heartbeat,
    Draining,
    Close,
    Backoff,
    Expired,
}

/// Resolves when the optional timer fires; never, when there is none.
async fn fire(timer: &mut Option<Pin<Box<Sleep>>>) {
    match timer.as_mut() {
        Some(sleep) => sleep.as_mut().await,
        None => std::future::pending().await,
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.state.metrics.connections_open.decrement(1.0);
        self.state.metrics.closed(self.close_reason);
        tracing::debug!(reason = ?self.close_reason, "stream closed");
    }
}

struct BufWriter<'a>(&'a mut BytesMut);

impl std::fmt::Write for BufWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.put_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests;
