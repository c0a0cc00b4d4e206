//! A stream's lane: how the hub writes a live event straight into an idle stream's
//! socket (the hub's `direct` module says why).
//!
//! # Rule
//!
//! **The hub writes to a stream's socket only while both of its owners say they wait,
//! and each takes its word back, under the lane's lock, before it does anything else.**
//! The owners are the connection's writer ([`Respond`](super::write)), which says so
//! when nothing is half-written and it waits for the session's next frame, and the
//! session, which says so when it waits for live events in the plain state where the
//! next live event is written as it is: one channel, its own ids, live (not catching
//! up), nothing queued. The lock is held across the hub's one non-blocking write, so a
//! word is never taken back in the middle of one, and [`Lane::offer`] only tries it (a
//! busy lane declines, and the stream's task does the work as before).
//!
//! What the hub writes is what the session would have written: the event's shared frame
//! as one chunk, only if its `prev` is the stream's cursor (the session's live rule),
//! same epoch, above a gap's floor. When the socket takes part of the chunk, the rest
//! (at most [`DIRECT_MAX`] bytes, the one allocation of this path) waits here for the
//! writer, which writes it before anything else, and the lane stays closed until then.
//!
//! # Bounds
//!
//! Per stream: this struct, and at most one partial chunk of at most [`DIRECT_MAX`]
//! bytes. A larger event is declined (the task writes it).

use std::sync::{Arc, Mutex, TryLockError};

use bytes::Bytes;
use ssegate_broker::{Direct, Offer, StoredEvent};
use ssegate_core::{EntryId, Epoch};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::state::AppState;

/// The largest chunk (size line, frame, CRLF) the hub writes directly; built on the
/// sending task's stack.
pub(crate) const DIRECT_MAX: usize = 2048;

/// One stream's lane (see the module docs).
pub(crate) struct Lane {
    state: Mutex<LaneState>,
    app: Arc<AppState>,
}

impl std::fmt::Debug for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lane").finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct LaneState {
    /// The connection, from when the writer has written the response head.
    socket: Option<Arc<TcpStream>>,
    /// The writer waits, with nothing half-written.
    idle: bool,
    /// The session waits in the plain live state, at this cursor.
    live: Option<Live>,
    /// When the hub last wrote (since the session's last look).
    wrote: Option<Instant>,
    /// What the socket did not take of the hub's last chunk.
    rest: Bytes,
}

/// Where the session waits: what the next live event must follow to be written as is.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Live {
    pub(crate) cursor: EntryId,
    pub(crate) epoch: Epoch,
    /// After a gap moved the cursor back: events at or below it are never written live.
    pub(crate) floor: Option<EntryId>,
}

impl Lane {
    pub(crate) fn new(app: Arc<AppState>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(LaneState::default()),
            app,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LaneState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The session waits at `live`.
    pub(crate) fn session_waits(&self, live: Live) {
        self.lock().live = Some(live);
    }

    /// The session runs: it takes its word back, and learns the cursor and the time of
    /// the hub's last write when the hub wrote since it last looked.
    pub(crate) fn session_runs(&self) -> Option<(EntryId, Instant)> {
        let mut st = self.lock();
        let live = st.live.take()?;
        st.wrote.take().map(|at| (live.cursor, at))
    }

    /// The writer has written the response head: from now on the socket may be lent.
    pub(crate) fn attach(&self, socket: Arc<TcpStream>) {
        self.lock().socket = Some(socket);
    }

    /// The writer waits for the session's next frame, with nothing half-written.
    pub(crate) fn writer_waits(&self) {
        self.lock().idle = true;
    }

    /// The writer runs: it takes its word back, and gets what it must write first (empty
    /// unless the socket took only part of the hub's last chunk).
    pub(crate) fn writer_runs(&self) -> Bytes {
        let mut st = self.lock();
        st.idle = false;
        std::mem::take(&mut st.rest)
    }

    /// The response is over: the socket is not lent again.
    pub(crate) fn detach(&self) {
        let mut st = self.lock();
        st.idle = false;
        st.socket = None;
        st.live = None;
    }
}

impl Direct for Lane {
    fn offer(&self, ev: &StoredEvent) -> Offer {
        let mut st = match self.state.try_lock() {
            Ok(st) => st,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            // An owner is taking its word back right now.
            Err(TryLockError::WouldBlock) => return Offer::Declined,
        };
        let st = &mut *st;
        let (Some(live), Some(socket), true) = (st.live.as_mut(), st.socket.as_ref(), st.idle)
        else {
            return Offer::Declined;
        };
        if ev.epoch != live.epoch
            || ev.prev != live.cursor
            || live.floor.is_some_and(|f| ev.id <= f)
        {
            return Offer::Declined;
        }
        let frame = ev.encoded.frame();
        let mut buf = [0u8; DIRECT_MAX];
        let Some(len) = super::write::chunk_into(&mut buf, frame) else {
            return Offer::Declined;
        };
        let offer = match socket.try_write(&buf[..len]) {
            Ok(n) if n == len => Offer::Taken,
            Ok(n) if n > 0 => {
                st.rest = Bytes::copy_from_slice(&buf[n..len]);
                st.idle = false;
                Offer::TakenWake
            }
            // Full, or failed: the writer finds out for itself.
            _ => return Offer::Declined,
        };
        live.cursor = ev.id;
        st.wrote = Some(Instant::now());
        let m = &self.app.metrics;
        m.bytes.increment(frame.len() as u64);
        m.delivered_live(ev.published_at_ms);
        offer
    }
}
