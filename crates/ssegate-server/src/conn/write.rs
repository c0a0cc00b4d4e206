//! Writing a response on a raw HTTP/1.1 connection: the head, then the body, a whole
//! buffer with `Content-Length` or a stream as chunks.
//!
//! # Backpressure rule
//!
//! **The next frame is pulled from the stream only once the previous write has gone
//! into the socket.** Nothing is queued here: a client that stops reading leaves the
//! session unpolled, so its live ring laps it and it is caught up from history later
//! (the hub's rule). Frames that are already waiting when a write starts go out
//! together, as one chunk in one write (up to [`GATHER`] frames).
//!
//! # One buffer per write
//!
//! A chunk is several parts (size line, frames, CRLF, maybe the head before it). When
//! they add up to at most [`STAGE`] bytes (every live event of usual size, and a new
//! stream's head with its opening frame) they are copied into one stack buffer and go out
//! in one `write`; only larger writes use `writev`. Measured on fan-out (5,000 streams,
//! 20 ev/s, one Redis, seven interleaved A/B pairs): a `writev` of the three parts cost
//! the node 5.45 CPU s per million deliveries on average, the copy and a `write` 4.96
//! (-9%, lower in 6 of the 7 pairs); the copy is a few hundred bytes, the difference is
//! the kernel's.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::Stream;
use http::Response;
use tokio::net::TcpStream;

use super::lane::Lane;
use crate::body::Body;

/// Frames gathered into one write at most: enough for an opening frame plus a replay
/// page plus a few live events, small enough to live in every connection's task.
const GATHER: usize = 4;
/// Bytes gathered into one write at most.
const GATHER_BYTES: usize = 256 * 1024;
/// Writes up to this size are copied into one buffer and written with `write`, not
/// `writev` (see the module docs). On the stack of the poll, never in a connection's
/// state.
const STAGE: usize = 4096;

const CRLF: &[u8] = b"\r\n";
const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// How a response ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Ended {
    /// Completely written: the connection may carry another request.
    Complete,
    /// The client went away, a write failed, or the client sent bytes during its stream:
    /// the connection closes.
    Gone,
}

/// Writes `res`; with `close`, says `Connection: close`. The head goes out at once,
/// without waiting for a stream's first frame; a frame that is ready already (a stream's
/// opening frame, queued before the response existed) goes out with it, in one write: one
/// segment per new stream instead of two.
/// A stream whose response carries a [`Lane`] lends its socket to the hub while it waits
/// (see `lane`).
pub(super) fn respond(stream: &Arc<TcpStream>, res: Response<Body>, close: bool) -> Respond<'_> {
    let (mut parts, body) = res.into_parts();
    let lane = parts.extensions.remove::<Arc<Lane>>();
    let mut head = encode_head(&parts, &body, close);
    let (frames, lane) = match body {
        // Whole bodies are small (errors, refusals): one buffer, one write.
        Body::Full(bytes) => {
            head.extend_from_slice(&bytes.unwrap_or_default());
            (None, None)
        }
        Body::Stream(frames) => (Some(frames), lane),
    };
    Respond {
        stream,
        lane,
        rest: Bytes::new(),
        head,
        frames,
        batch: Default::default(),
        n: 0,
        size: ChunkSize::new(0),
        written: 0,
        last: false,
        discarded: false,
    }
}

fn encode_head(parts: &http::response::Parts, body: &Body, close: bool) -> Vec<u8> {
    let mut head = Vec::with_capacity(320);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(parts.status.as_str().as_bytes());
    head.push(b' ');
    let reason = parts.status.canonical_reason().unwrap_or("Unknown");
    head.extend_from_slice(reason.as_bytes());
    head.extend_from_slice(CRLF);
    for (name, value) in &parts.headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(CRLF);
    }
    head.extend_from_slice(b"date: ");
    head.extend_from_slice(httpdate::fmt_http_date(SystemTime::now()).as_bytes());
    head.extend_from_slice(CRLF);
    if close {
        head.extend_from_slice(b"connection: close\r\n");
    }
    match body {
        Body::Full(bytes) => {
            let len = bytes.as_ref().map_or(0, Bytes::len);
            head.extend_from_slice(format!("content-length: {len}\r\n\r\n").as_bytes());
        }
        Body::Stream(_) => head.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n"),
    }
    head
}

/// Writing one response: the head (with a whole body), then, for a stream, frames
/// pulled from the session and written as chunks until the session ends or the client
/// goes away. A hand-written future rather than an `async fn` so that what an idle
/// stream keeps is exactly these fields.
pub(super) struct Respond<'a> {
    stream: &'a Arc<TcpStream>,
    /// Where the hub may write live events while this waits (see `lane`).
    lane: Option<Arc<Lane>>,
    /// What the socket did not take of the hub's last direct write: written first.
    rest: Bytes,
    /// The head still to write (with a whole body appended); emptied once written.
    head: Vec<u8>,
    /// A stream's frames; `None` for a whole body.
    frames: Option<Pin<Box<dyn Stream<Item = Bytes> + Send>>>,
    /// The frames of the chunk being written (`n` of them).
    batch: [Bytes; GATHER],
    n: usize,
    size: ChunkSize,
    /// Bytes of the current write (head, or size line, frames, CRLF, last chunk)
    /// already written.
    written: usize,
    /// The session has ended: the last chunk follows, and `frames` is not polled again.
    /// Something is being written exactly when `n > 0 || last || !rest.is_empty()`.
    last: bool,
    /// The client sent bytes while its stream ran. They were read and dropped (a stream
    /// request has no body, and nothing can answer a pipelined request meanwhile), so the
    /// connection must not carry another request: whatever follows them would be read
    /// from the middle of something (request smuggling), and a pipelined request would
    /// never be answered.
    discarded: bool,
}

impl std::fmt::Debug for Respond<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Respond")
            .field("streaming", &self.frames.is_some())
            .finish_non_exhaustive()
    }
}

impl Respond<'_> {
    /// Whether the client has closed its side (or the socket failed). Anything a
    /// client sends while its stream runs is read and dropped (see `discarded`).
    fn peer_gone(&mut self, cx: &mut Context<'_>) -> bool {
        let mut scratch = [0u8; 64];
        for _ in 0..16 {
            match self.stream.poll_read_ready(cx) {
                Poll::Pending => return false,
                Poll::Ready(Err(_)) => return true,
                Poll::Ready(Ok(())) => match self.stream.try_read(&mut scratch) {
                    Ok(0) => return true,
                    Ok(_) => self.discarded = true,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return true,
                },
            }
        }
        false
    }

    /// Takes the frames that are ready (at least one, or the end) into the batch.
    fn fill(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(frames) = self.frames.as_mut() else {
            return false;
        };
        let mut total = 0;
        while !self.last && self.n < GATHER && total < GATHER_BYTES {
            match frames.as_mut().poll_next(cx) {
                Poll::Ready(Some(frame)) if frame.is_empty() => {}
                Poll::Ready(Some(frame)) => {
                    total += frame.len();
                    self.batch[self.n] = frame;
                    self.n += 1;
                }
                Poll::Ready(None) => self.last = true,
                Poll::Pending => break,
            }
        }
        self.size = ChunkSize::new(total);
        self.written = 0;
        self.n > 0 || self.last
    }

    /// Writes what is left of the head, or of the current batch.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut parts: [&[u8]; GATHER + 5] = [&[]; GATHER + 5];
        let mut count = 0;
        if !self.head.is_empty() {
            parts[0] = &self.head;
            count = 1;
        }
        if !self.rest.is_empty() {
            parts[count] = &self.rest;
            count += 1;
        }
        if self.n > 0 {
            parts[count] = self.size.as_bytes();
            count += 1;
            for frame in &self.batch[..self.n] {
                parts[count] = frame;
                count += 1;
            }
            parts[count] = CRLF;
            count += 1;
        }
        if self.last {
            parts[count] = LAST_CHUNK;
            count += 1;
        }
        let mut skip = self.written;
        let mut slices = [IoSlice::new(&[]); GATHER + 5];
        let mut used = 0;
        for part in &parts[..count] {
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            slices[used] = IoSlice::new(&part[skip..]);
            skip = 0;
            used += 1;
        }
        let before: usize = slices[..used].iter().map(|s| s.len()).sum();
        // Zeroed only when used: a larger write does not pay for it.
        let mut stage: [u8; STAGE];
        let mut one = [IoSlice::new(&[])];
        let mut bufs = if used > 1 && before <= STAGE {
            stage = [0u8; STAGE];
            match gather(&mut stage, slices[..used].iter().map(|s| &**s)) {
                Some(at) => {
                    one[0] = IoSlice::new(&stage[..at]);
                    &mut one[..]
                }
                None => &mut slices[..used],
            }
        } else {
            &mut slices[..used]
        };
        let result = poll_write_all(self.stream, cx, &mut bufs);
        let left: usize = bufs.iter().map(|s| s.len()).sum();
        self.written += before - left;
        result
    }
}

impl Respond<'_> {
    /// The batch went into the socket: releases its frames; the end, after the last.
    fn flushed(&mut self) -> Option<Ended> {
        for frame in &mut self.batch[..self.n] {
            *frame = Bytes::new();
        }
        self.n = 0;
        self.written = 0;
        self.rest = Bytes::new();
        self.last.then_some(if self.discarded {
            Ended::Gone
        } else {
            Ended::Complete
        })
    }
}

/// Writes every slice, waiting for the socket as needed; `bufs` is left at what is still
/// unwritten. Poll-style, so that a waiting connection stores no readiness future.
fn poll_write_all(
    stream: &TcpStream,
    cx: &mut Context<'_>,
    bufs: &mut &mut [IoSlice<'_>],
) -> Poll<io::Result<()>> {
    loop {
        if bufs.is_empty() {
            return Poll::Ready(Ok(()));
        }
        // One buffer is a `write`, cheaper in the kernel than a `writev` of one.
        let wrote = match &**bufs {
            [one] => stream.try_write(one),
            _ => stream.try_write_vectored(bufs),
        };
        match wrote {
            Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Ok(n) => IoSlice::advance_slices(bufs, n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                ready!(stream.poll_write_ready(cx))?;
            }
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
}

impl Future for Respond<'_> {
    type Output = Ended;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Ended> {
        let this = self.get_mut();
        if let Some(lane) = &this.lane {
            let rest = lane.writer_runs();
            if !rest.is_empty() {
                this.rest = rest;
            }
        }
        if !this.head.is_empty() {
            if this.frames.is_some() && this.n == 0 && !this.last && this.written == 0 {
                // What the stream has ready now joins the head (before any of the head is
                // written, as the batch's offsets count from it); nothing is waited for.
                this.fill(cx);
            }
            if ready!(this.poll_flush(cx)).is_err() {
                return Poll::Ready(Ended::Gone);
            }
            this.head = Vec::new();
            if this.frames.is_none() {
                return Poll::Ready(Ended::Complete);
            }
            if let Some(lane) = &this.lane {
                lane.attach(this.stream.clone());
            }
            if let Some(ended) = this.flushed() {
                return Poll::Ready(ended);
            }
        }
        loop {
            if this.n == 0 && !this.last && this.rest.is_empty() {
                if this.peer_gone(cx) {
                    return Poll::Ready(Ended::Gone);
                }
                if !this.fill(cx) {
                    if let Some(lane) = &this.lane {
                        lane.writer_waits();
                    }
                    return Poll::Pending;
                }
            }
            match ready!(this.poll_flush(cx)) {
                Ok(()) => {
                    if let Some(ended) = this.flushed() {
                        return Poll::Ready(ended);
                    }
                }
                Err(_) => return Poll::Ready(Ended::Gone),
            }
        }
    }
}

impl Drop for Respond<'_> {
    fn drop(&mut self) {
        if let Some(lane) = &self.lane {
            lane.detach();
        }
    }
}

/// Writes `frame` as one chunk (size line, frame, CRLF) into `buf`; its length, or `None`
/// when it does not fit.
pub(super) fn chunk_into(buf: &mut [u8], frame: &[u8]) -> Option<usize> {
    let size = ChunkSize::new(frame.len());
    gather(buf, [size.as_bytes(), frame, CRLF])
}

/// Copies `parts` one after another into `buf`: their length, or `None` when they do not
/// fit.
fn gather<'p>(buf: &mut [u8], parts: impl IntoIterator<Item = &'p [u8]>) -> Option<usize> {
    let mut at = 0;
    for part in parts {
        buf.get_mut(at..at + part.len())?.copy_from_slice(part);
        at += part.len();
    }
    Some(at)
}

/// A chunk-size line (`1a2b\r\n`) without an allocation.
struct ChunkSize {
    buf: [u8; 18],
    start: usize,
}

impl ChunkSize {
    fn new(mut n: usize) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut buf = [0u8; 18];
        buf[16] = b'\r';
        buf[17] = b'\n';
        let mut start = 16;
        loop {
            start -= 1;
            buf[start] = HEX[n & 0xf];
            n >>= 4;
            if n == 0 {
                break;
            }
        }
        Self { buf, start }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// Decodes a chunked body (after the head) into its bytes; `None` if it is malformed
    /// or has no last chunk.
    fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let line = body.windows(2).position(|w| w == CRLF)?;
            let size = usize::from_str_radix(std::str::from_utf8(&body[..line]).ok()?, 16).ok()?;
            body = &body[line + 2..];
            if size == 0 {
                return (body == CRLF).then_some(out);
            }
            out.extend_from_slice(body.get(..size)?);
            body = body.get(size..)?.strip_prefix(CRLF)?;
        }
    }

    /// Frames small enough to be staged into one `write` and larger ones written with
    /// `writev`, to a reader with a small receive window (so that writes end part-way
    /// through a staged buffer): the body decodes to exactly the frames, in order.
    #[tokio::test]
    async fn staged_and_vectored_writes_survive_partial_writes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let frames: Vec<Bytes> = (0..3000usize)
            .map(|i| {
                let len = if i % 500 == 7 { 40_000 } else { 20 + i % 300 };
                Bytes::from(vec![b'a' + (i % 26) as u8; len])
            })
            .collect();
        let expected: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
        let server = tokio::spawn(async move {
            let (sock, _) = listener.accept().await.unwrap();
            // A small send buffer: most writes end part-way (the kernel's minimum is
            // about 4.5 KiB).
            socket2::SockRef::from(&sock)
                .set_send_buffer_size(1024)
                .unwrap();
            let res = crate::stream::sse_response(Body::stream(futures_util::stream::iter(frames)));
            respond(&std::sync::Arc::new(sock), res, true).await
        });
        // A small receive window: the server's writes end part-way, often.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut client = socket.connect(addr).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1500];
        loop {
            let n = client.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(server.await.unwrap(), Ended::Complete);
        let split = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"));
        let body = dechunk(&got[split..]).expect("a well-formed chunked body");
        assert_eq!(body.len(), expected.len());
        assert!(body == expected, "the frames arrive whole and in order");
    }

    #[test]
    fn chunk_sizes_are_lowercase_hex_lines() {
        for (n, text) in [
            (0, "0\r\n"),
            (10, "a\r\n"),
            (255, "ff\r\n"),
            (4096, "1000\r\n"),
            (usize::MAX, "ffffffffffffffff\r\n"),
        ] {
            assert_eq!(ChunkSize::new(n).as_bytes(), text.as_bytes());
        }
    }
}
