//! The public listener's connections: a lean HTTP/1.1 front for SSE streams, hyper for
//! everything else.
//!
//! A subscriber holds its connection for hours and receives small frames; hyper's
//! per-connection machinery (read and write buffers of several KiB each, its dispatcher
//! and protocol sniffing) is sized for request/response traffic and would be most of
//! what an idle stream costs. So each connection starts here: its first request head is
//! read into a small buffer and parsed with `httparse`. A complete, bodiless HTTP/1.1
//! `GET` of a stream route is answered by [`write::respond`] straight on the socket,
//! through the same router function, CORS policy and session as hyper's path; the
//! buffer is freed before the stream starts. Anything else (publishes, history, h2c, a
//! head this front does not take) is handed to hyper with the bytes already read, and
//! hyper serves the connection from then on.
//!
//! After a stream or a refusal ends the connection stays open for the next request
//! (keep-alive), unless the client asked to close or the node is draining.
//!
//! # Layout
//!
//! - `head`: reading and classifying the request head.
//! - `lane`: how the hub writes live events straight into an idle stream's socket.
//! - `write`: writing a response (head, whole body or chunked stream) with vectored writes.
//! - `prefixed`: a socket with its first bytes already read, for the hand-off to hyper.

mod head;
mod lane;
mod prefixed;
mod write;

pub(crate) use lane::{Lane, Live};

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use http::Response;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::body::Body;

use crate::router::{self, Listener};
use crate::state::{AppState, RemoteAddr};

use head::Head;
use prefixed::Prefixed;

/// What every connection of one listener shares (one `Arc` per connection task, so that
/// an idle stream's task stays small).
#[derive(Debug)]
pub(crate) struct Front {
    pub(crate) state: Arc<AppState>,
    pub(crate) builder: auto::Builder<TokioExecutor>,
    pub(crate) which: Listener,
}

/// Serves one connection until it ends; `_slot` is its place in the listener's cap.
pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    front: Arc<Front>,
    _slot: crate::limits::ConnectionSlot,
) {
    // A task is as large as its future's largest state for as long as it lives, and an
    // idle stream spends its life in `write::respond`: the head read and the stream's
    // open (`next_request`) and a hyper connection (`serve_hyper`) are several KiB each,
    // so they are boxed, on the heap only while they run (issue 6's bound of 4 KiB of
    // RSS per idle stream; heaptrack showed 4.5 KB per task with them inline).
    if front.which == Listener::Admin {
        return Box::pin(serve_hyper(stream, peer, &front, None)).await;
    }
    // Shared with a stream's lane while it runs (see `lane`), so that the hub can write
    // to it; the lane lets go when the response ends.
    let stream = Arc::new(stream);
    loop {
        let (res, close) = match Box::pin(next_request(&stream, peer, &front)).await {
            Next::Gone => return,
            Next::Hyper(buf, head_deadline) => {
                let Ok(stream) = Arc::try_unwrap(stream) else {
                    // Cannot happen (every lane detached when its response ended); close.
                    return;
                };
                let io = Prefixed::new(buf, stream);
                return Box::pin(serve_hyper(io, peer, &front, Some(head_deadline))).await;
            }
            Next::Respond(res, close) => (res, close),
        };
        let ended = write::respond(&stream, res, close).await;
        if ended == write::Ended::Gone || close || front.state.is_draining() {
            return;
        }
    }
}

/// What to do with a connection's next request.
enum Next {
    /// The client left, or was too slow with its head.
    Gone,
    /// Hyper serves the connection from here, starting with these bytes; its first
    /// request head must be complete by the deadline (the front's own, not a new one).
    Hyper(Vec<u8>, Instant),
    /// The SSE front answers, closing the connection after if `true`.
    Respond(Response<Body>, bool),
}

/// Reads the next request head; for a stream request, routes it. A function of its own
/// so that an open stream's task does not keep the head-reading state.
async fn next_request(stream: &TcpStream, peer: SocketAddr, front: &Front) -> Next {
    let state = &front.state;
    let mut buf = Vec::new();
    let deadline = Instant::now() + state.settings.header_read_timeout;
    // A keep-alive connection waiting for its next head when the drain is over is closed
    // (as hyper does with its idle connections); one whose head has begun is served.
    let started = AtomicBool::new(false);
    let read = std::future::poll_fn(|cx| {
        let res = head::poll_read(stream, &mut buf, cx);
        started.store(!buf.is_empty(), Ordering::Relaxed);
        res
    });
    let read = tokio::time::timeout_at(deadline, read);
    let mut read = std::pin::pin!(read);
    let drain = (!state.lifecycle.is_closing()).then(|| state.lifecycle.closing());
    let head = match drain {
        None => read.await,
        Some(drain) => tokio::select! {
            head = read.as_mut() => head,
            () = drain => {
                if !started.load(Ordering::Relaxed) {
                    return Next::Gone;
                }
                read.await
            }
        },
    };
    match head {
        // Slowloris (or an idle keep-alive connection): cut it.
        Err(_) | Ok(Head::Gone) => Next::Gone,
        Ok(Head::Other) => Next::Hyper(buf, deadline),
        Ok(Head::Stream { mut req, close }) => {
            req.extensions_mut().insert(RemoteAddr(peer));
            let res = router::route_stream(state, &req).await;
            Next::Respond(res, close || state.is_draining())
        }
    }
}

/// Serves a connection with hyper (HTTP/1.1 or h2c) until it ends.
///
/// Two deadlines hyper does not keep itself:
/// - With `head_deadline` (a connection the front began reading), the connection is cut
///   unless its first request reaches the service by then: hyper's own header timeout
///   starts when it takes over, so a slowloris head handed over just in time would
///   otherwise get the whole timeout again.
/// - A connection on which no byte moved either way for a whole
///   `SSEGATE_HEADER_READ_TIMEOUT`, and that has no streamed response open, is closed.
///   HTTP/2 has no idle timeout in hyper, so an h2c connection whose requests are done
///   would otherwise keep its descriptor (and its slot of the listener's connection cap)
///   for good. Counting bytes, not requests, leaves alone a slow client that is still
///   reading a large reply or still sending its next head.
async fn serve_hyper<I>(io: I, peer: SocketAddr, front: &Front, head_deadline: Option<Instant>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let state = front.state.clone();
    let which = front.which;
    let idle_after = state.settings.header_read_timeout;
    let activity = Arc::new(Activity::default());
    let seen = activity.clone();
    let service = service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        let guard = seen.start();
        req.extensions_mut().insert(RemoteAddr(peer));
        let state = state.clone();
        async move {
            let res = router::route(state, req, which).await;
            Ok::<_, std::convert::Infallible>(guard.until_body_ends(res))
        }
    });
    let io = Counted {
        io,
        activity: activity.clone(),
    };
    let conn = front
        .builder
        .serve_connection(TokioIo::new(io), service)
        .into_owned();
    // On the public listener, the end of the drain ends the connection after its current
    // response (keep-alive off, HTTP/2 GOAWAY); the admin listener serves until the node
    // stops.
    let graceful = (which == Listener::Public).then(|| front.state.lifecycle.closing());
    let fut = graceful_on(conn, graceful);
    let head_late = async {
        match head_deadline {
            Some(at) => {
                tokio::time::sleep_until(at).await;
                if activity.started.load(Ordering::Relaxed) > 0 {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    };
    let idle = async {
        let mut last = u64::MAX;
        loop {
            tokio::time::sleep(idle_after).await;
            let moved = activity.io.load(Ordering::Relaxed);
            if moved == last && activity.open.load(Ordering::Relaxed) == 0 {
                return;
            }
            last = moved;
        }
    };
    tokio::select! {
        res = fut => if let Err(e) = res {
            tracing::debug!(error = %e, "connection ended with an error");
        },
        () = head_late => tracing::debug!("request head not complete in time: connection cut"),
        () = idle => tracing::debug!("idle connection closed"),
    }
}

/// Serves `conn`, shutting it down gracefully once `drain` resolves.
async fn graceful_on<C: GracefulConnection>(
    conn: C,
    drain: Option<impl Future<Output = ()>>,
) -> Result<(), C::Error> {
    let mut conn = std::pin::pin!(conn);
    let Some(drain) = drain else {
        return conn.await;
    };
    tokio::select! {
        res = conn.as_mut() => return res,
        () = drain => conn.as_mut().graceful_shutdown(),
    }
    conn.await
}

/// What one hyper connection is doing: requests started, streamed responses still open,
/// and reads and writes that moved bytes.
#[derive(Debug, Default)]
struct Activity {
    started: AtomicU64,
    open: AtomicUsize,
    io: AtomicU64,
}

/// The connection's socket, counting the reads and writes that moved bytes.
struct Counted<I> {
    io: I,
    activity: Arc<Activity>,
}

impl<I> Counted<I> {
    fn moved<T>(&self, res: &std::task::Poll<std::io::Result<T>>) {
        if matches!(res, std::task::Poll::Ready(Ok(_))) {
            self.activity.io.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl<I: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Counted<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.moved(&res);
        }
        res
    }
}

impl<I: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Counted<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let res = Pin::new(&mut self.io).poll_write(cx, buf);
        self.moved(&res);
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let res = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.moved(&res);
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Activity {
    fn start(self: &Arc<Self>) -> InFlight {
        self.started.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// A request in flight; it ends when its response body has been written (or dropped).
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl InFlight {
    fn until_body_ends(self, res: Response<Body>) -> Response<Body> {
        let (parts, body) = res.into_parts();
        let body = match body {
            Body::Stream(frames) => Body::stream(futures_util::StreamExt::map(frames, move |f| {
                let _in_flight = &self;
                f
            })),
            whole => whole,
        };
        Response::from_parts(parts, body)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}
