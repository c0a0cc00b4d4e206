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
//! as one chunk, only when the session's live rule (`stream::live_rule`) says to write
//! it as is, and before the token's expiry. When the socket takes part of the chunk, the rest
//! (at most [`DIRECT_MAX`] bytes, the one allocation of this path) waits here for the
//! writer, which writes it before anything else, and the lane stays closed until then.
//!
//! # Bounds
//!
//! Per stream: this struct, and at most one partial chunk of at most [`DIRECT_MAX`]
//! bytes. A larger event is declined (the task writes it).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, TryLockError};

use bytes::Bytes;
use ssegate_broker::{Direct, Offer, StoredEvent};
use ssegate_core::{EntryId, Epoch};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::state::AppState;
use crate::stream::{Verdict, live_rule};

/// The largest chunk (size line, frame, CRLF) the hub writes directly; built on the
/// sending task's stack.
pub(crate) const DIRECT_MAX: usize = 2048;

/// One stream's lane (see the module docs).
pub(crate) struct Lane {
    state: Mutex<LaneState>,
    /// Whether the socket is lent (read without the lock: a stream served by hyper has a
    /// lane that is never attached, and its session does not offer it to the hub).
    attached: AtomicBool,
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
    /// When the subscriber's token expires: nothing is written from then on (the
    /// session ends the stream when it runs).
    pub(crate) until: Option<Instant>,
}

impl Lane {
    pub(crate) fn new(app: Arc<AppState>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(LaneState::default()),
            attached: AtomicBool::new(false),
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
        self.attached.store(true, Ordering::Relaxed);
    }

    /// Whether the writer has lent the socket (see `attached`).
    pub(crate) fn attached(&self) -> bool {
        self.attached.load(Ordering::Relaxed)
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
        self.attached.store(false, Ordering::Relaxed);
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
        let now = Instant::now();
        let rule = live_rule(live.cursor, Some(live.epoch), live.floor, ev);
        if rule != Verdict::Write || live.until.is_some_and(|t| now >= t) {
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
        st.wrote = Some(now);
        let m = &self.app.metrics;
        m.bytes.increment(frame.len() as u64);
        m.delivered_live(ev.published_at_ms);
        offer
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ssegate_broker::MemoryBroker;
    use ssegate_core::{ChannelName, Data};
    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::settings::Settings;

    fn app() -> Arc<AppState> {
        let settings = Settings::default();
        let broker = MemoryBroker::new(settings.history.clone());
        AppState::new(settings, Arc::new(broker))
    }

    fn ev(epoch: Epoch, n: u64, data: &str) -> StoredEvent {
        StoredEvent::new(
            epoch,
            ChannelName::new("c").unwrap(),
            EntryId::new(n, 0),
            EntryId::new(n - 1, 0),
            None,
            Data::text(data.into()),
            n,
        )
    }

    /// A connected pair: the lane's socket (attached) and the client's end.
    async fn pair() -> (Arc<TcpStream>, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (Arc::new(accepted.unwrap().0), client.unwrap())
    }

    fn chunk(frame: &[u8]) -> Vec<u8> {
        let mut out = format!("{:x}\r\n", frame.len()).into_bytes();
        out.extend_from_slice(frame);
        out.extend_from_slice(b"\r\n");
        out
    }

    fn live(epoch: Epoch, cursor: u64) -> Live {
        Live {
            cursor: EntryId::new(cursor, 0),
            epoch,
            floor: None,
            until: None,
        }
    }

    #[tokio::test]
    async fn an_offer_is_taken_only_while_both_owners_wait() {
        let (socket, mut client) = pair().await;
        let lane = Lane::new(app());
        let epoch = Epoch::random();
        let e1 = ev(epoch, 1, "one");
        assert_eq!(lane.offer(&e1), Offer::Declined, "no socket yet");
        lane.attach(socket);
        lane.session_waits(live(epoch, 0));
        assert_eq!(
            lane.offer(&e1),
            Offer::Declined,
            "the writer has not said it waits"
        );
        lane.writer_waits();
        assert_eq!(lane.offer(&e1), Offer::Taken);
        let e2 = ev(epoch, 2, "two");
        assert_eq!(
            lane.offer(&e2),
            Offer::Taken,
            "follows the cursor the hub left"
        );
        assert!(lane.writer_runs().is_empty());
        assert_eq!(
            lane.offer(&ev(epoch, 3, "x")),
            Offer::Declined,
            "the writer runs"
        );
        let (cursor, _) = lane.session_runs().expect("the hub wrote");
        assert_eq!(cursor, EntryId::new(2, 0));
        assert!(lane.session_runs().is_none(), "told once");
        let mut want = chunk(e1.encoded.frame());
        want.extend(chunk(e2.encoded.frame()));
        let mut got = vec![0u8; want.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, want, "two whole chunks, in order");
        lane.detach();
        assert!(!lane.attached());
    }

    /// Everything the session would not write as is goes to the session.
    #[tokio::test]
    async fn an_offer_declines_what_the_live_rule_does_not_write_as_is() {
        let (socket, mut client) = pair().await;
        let lane = Lane::new(app());
        lane.attach(socket);
        lane.writer_waits();
        let epoch = Epoch::random();
        let past = Instant::now() - Duration::from_millis(1);
        let cases = [
            ("does not follow", live(epoch, 0), ev(epoch, 2, "a")),
            ("another epoch", live(epoch, 0), ev(Epoch::random(), 1, "a")),
            (
                "at a gap's floor",
                Live {
                    floor: Some(EntryId::new(1, 0)),
                    ..live(epoch, 0)
                },
                ev(epoch, 1, "a"),
            ),
            (
                "the token expired",
                Live {
                    until: Some(past),
                    ..live(epoch, 0)
                },
                ev(epoch, 1, "a"),
            ),
            (
                "larger than a direct write",
                live(epoch, 0),
                ev(epoch, 1, &"x".repeat(DIRECT_MAX)),
            ),
        ];
        for (why, at, event) in cases {
            lane.session_waits(at);
            assert_eq!(lane.offer(&event), Offer::Declined, "{why}");
            assert!(lane.session_runs().is_none(), "{why}");
        }
        drop(lane);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert!(got.is_empty(), "nothing was written");
    }

    /// A socket that takes part of a chunk: the rest waits for the writer, and the lane
    /// takes nothing more until the writer has run.
    #[tokio::test]
    async fn the_rest_of_a_partial_write_goes_to_the_writer() {
        let (socket, mut client) = pair().await;
        socket2::SockRef::from(&*socket)
            .set_send_buffer_size(1024)
            .unwrap();
        let lane = Lane::new(app());
        lane.attach(socket);
        let epoch = Epoch::random();
        lane.session_waits(live(epoch, 0));
        lane.writer_waits();
        let (mut wire, mut got) = (Vec::new(), Vec::new());
        let mut n = 1;
        let rest = loop {
            assert!(
                n < 10_000,
                "the socket never filled part-way through an event"
            );
            let e = ev(epoch, n, &"y".repeat(1500));
            match lane.offer(&e) {
                Offer::Taken => {}
                Offer::TakenWake => {
                    wire.extend(chunk(e.encoded.frame()));
                    break lane.writer_runs();
                }
                Offer::Declined => {
                    // Full exactly between two events: make some room, offer it again.
                    let mut some = [0u8; 700];
                    let k = client.read(&mut some).await.unwrap();
                    got.extend_from_slice(&some[..k]);
                    continue;
                }
            }
            wire.extend(chunk(e.encoded.frame()));
            n += 1;
        };
        assert!(!rest.is_empty());
        assert_eq!(
            lane.offer(&ev(epoch, n + 1, "z")),
            Offer::Declined,
            "closed until the writer runs"
        );
        let mut sent = vec![0u8; wire.len() - rest.len() - got.len()];
        client.read_exact(&mut sent).await.unwrap();
        got.extend_from_slice(&sent);
        got.extend_from_slice(&rest);
        assert!(got == wire, "what went out and the rest make whole chunks");
    }

    /// The writer takes its word back before it writes: while a large frame of its own
    /// is half-written it has not said it waits, even once the socket has room again
    /// (the client read some, the writer's task has not run yet), and an offer is
    /// declined.
    #[tokio::test]
    async fn nothing_is_written_into_a_frame_the_writer_has_half_written() {
        let (socket, mut client) = pair().await;
        // Small buffers both sides: the frame below cannot go into the socket at once.
        socket2::SockRef::from(&*socket)
            .set_send_buffer_size(1024)
            .unwrap();
        socket2::SockRef::from(&client)
            .set_recv_buffer_size(4096)
            .unwrap();
        let lane = Lane::new(app());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
        let body =
            crate::body::Body::stream(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
        let mut res = crate::stream::sse_response(body);
        res.extensions_mut().insert(lane.clone());
        let writer =
            tokio::spawn(async move { super::super::write::respond(&socket, res, true).await });
        while !lane.attached() {
            tokio::task::yield_now().await;
        }
        let big = Bytes::from(vec![b'a'; 128 * 1024]);
        tx.send(big.clone()).unwrap();
        // The writer writes what fits and waits (this test's thread runs it on a yield).
        tokio::task::yield_now().await;
        let mut wire = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = client.try_read(&mut buf) {
            wire.extend_from_slice(&buf[..n]);
        }
        assert!(!wire.is_empty(), "the writer began");
        // The socket has room now; the session says it waits (as it may: its frame was
        // handed over); the writer, mid-frame, has not said so.
        assert!(!writer.is_finished());
        assert!(!lane.lock().idle, "the writer took its word back");
        let epoch = Epoch::random();
        lane.session_waits(live(epoch, 0));
        assert_eq!(lane.offer(&ev(epoch, 1, "x")), Offer::Declined);
        drop(tx);
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        wire.extend_from_slice(&rest);
        assert!(writer.await.is_ok());
        let at = wire.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let mut want = chunk(&big);
        want.extend_from_slice(b"0\r\n\r\n");
        assert!(wire[at..] == want[..], "the frame, whole, then the end");
    }
}
