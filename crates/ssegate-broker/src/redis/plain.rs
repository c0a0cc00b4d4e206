//! A pooled command connection that its one user drives itself: the caller's task writes
//! the request and reads the reply, with nothing in between.
//!
//! redis-rs's multiplexed connection puts a driver task and two channels between a
//! caller and the socket, so that many callers can share one connection. A pooled
//! connection has one user at a time (the pool hands it out whole), so none of that is
//! needed, and without it:
//!
//! - the pool's liveness probe peeks at the socket itself (the multiplexed connection owns
//!   its socket, so the probe needed a duplicate descriptor): one descriptor per pooled
//!   connection instead of two;
//! - a command that timed out cannot delay the next one: its connection is dropped (see
//!   the rule), where a multiplexed connection was reused behind the unanswered request
//!   (a `WAIT` that outlived its timeout held the next command up to the replica
//!   timeout);
//! - there is no task per connection to abort.
//!
//! It was also meant to save CPU (two task hand-offs fewer per command); measured, it
//! does not, within the noise: opening 15,000 streams, 2.21 / 1.99 → 2.18 / 1.96 node CPU
//! s; 10,000 streams over 1,000 channels at 2,000 ev/s, 18.1 / 17.7 → 17.7 / 17.5 s per
//! million deliveries (docs/benchmarks/notes.md).
//!
//! # Rule
//!
//! **One request at a time, and a request whose reply was not read leaves the connection
//! unusable.** When the caller gives up (its timeout fires) or a write or read fails
//! after the request began, whatever comes next on the socket may be that request's
//! reply, so the connection is [`Plain::in_doubt`] and the pool drops it instead of
//! reusing it. (A multiplexed connection matched a late reply to its request; here it
//! would be read as the next request's.)
//!
//! # Bounds
//!
//! The read buffer holds one reply: replies are what this node asked for (a page of
//! history, a script's result), at most [`MAX_REPLY`] (Redis's own largest bulk string,
//! `proto-max-bulk-len`): a peer that sends more without finishing a reply fails the
//! command and the connection is dropped. A buffer grown past [`KEEP_BUFFER`] by a large
//! reply is freed after it. Only RESP2 is spoken (the connection is opened that way); a
//! connection configured for RESP3 uses the multiplexed one.

use std::io;

use redis::aio::ConnectionLike;
use redis::{Cmd, ErrorKind, RedisConnectionInfo, RedisError, RedisFuture, RedisResult, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A read buffer larger than this is freed once its reply was parsed.
const KEEP_BUFFER: usize = 64 * 1024;
/// The largest reply read (see Bounds).
const MAX_REPLY: usize = 512 * 1024 * 1024;
/// What one read asks the socket for at least.
const READ_AT_LEAST: usize = 16 * 1024;

/// One command connection over a socket of ours (see the module docs).
#[derive(Debug)]
pub(crate) struct Plain {
    stream: TcpStream,
    /// Bytes read and not yet parsed (part of the reply being read).
    buf: Vec<u8>,
    /// A request went out and its reply was not read whole: see the rule.
    in_doubt: bool,
    db: i64,
}

impl Plain {
    /// Opens the connection on `stream`: `AUTH` and `SELECT` as `info` asks, else a
    /// `PING`. A connection is handed out only once Redis has answered on it: a frozen
    /// Redis still completes TCP handshakes (its kernel does), and a publish sent on such
    /// a connection could only be answered "outcome unknown".
    pub(crate) async fn open(stream: TcpStream, info: &RedisConnectionInfo) -> RedisResult<Self> {
        let mut plain = Self {
            stream,
            buf: Vec::new(),
            in_doubt: false,
            db: info.db(),
        };
        if let Some(password) = info.password() {
            let mut auth = redis::cmd("AUTH");
            if let Some(user) = info.username() {
                auth.arg(user);
            }
            auth.arg(password);
            plain.call(&auth.get_packed_command()).await?;
        }
        if info.db() != 0 {
            plain
                .call(&redis::cmd("SELECT").arg(info.db()).get_packed_command())
                .await?;
        }
        if info.password().is_none() && info.db() == 0 {
            plain.call(&redis::cmd("PING").get_packed_command()).await?;
        }
        Ok(plain)
    }

    /// Whether a request's reply may still be on its way (see the rule): never reuse.
    pub(crate) fn in_doubt(&self) -> bool {
        self.in_doubt
    }

    /// The socket, for the pool's liveness probe.
    pub(crate) fn socket(&self) -> &TcpStream {
        &self.stream
    }

    /// Sends `packed` (`replies` commands) and reads their replies.
    async fn request(&mut self, packed: &[u8], replies: usize) -> RedisResult<Vec<Value>> {
        if self.in_doubt {
            return Err(RedisError::from(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "an earlier reply on this connection was not read",
            )));
        }
        self.in_doubt = true;
        self.stream.write_all(packed).await?;
        let mut values = Vec::with_capacity(replies);
        for _ in 0..replies {
            values.push(self.read_reply().await?);
        }
        if !self.buf.is_empty() {
            // Bytes no request asked for: the connection is out of step.
            return Err((ErrorKind::Parse, "unexpected bytes after a reply").into());
        }
        if self.buf.capacity() > KEEP_BUFFER {
            self.buf = Vec::new();
        }
        self.in_doubt = false;
        Ok(values)
    }

    /// One command's reply, a server error as `Err`.
    async fn call(&mut self, packed: &[u8]) -> RedisResult<Value> {
        let mut values = self.request(packed, 1).await?;
        values.pop().unwrap_or(Value::Nil).extract_error()
    }

    async fn read_reply(&mut self) -> RedisResult<Value> {
        let mut scan = Scan::NEW;
        loop {
            if let Some(len) = value_len(&self.buf, &mut scan)? {
                let value = redis::parse_redis_value(&self.buf[..len])?;
                self.buf.drain(..len);
                return Ok(value);
            }
            if self.buf.len() > MAX_REPLY {
                return Err((
                    ErrorKind::Parse,
                    "a reply larger than any this node asks for",
                )
                    .into());
            }
            self.buf.reserve(READ_AT_LEAST);
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
            }
        }
    }
}

impl ConnectionLike for Plain {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move { self.call(&cmd.get_packed_command()).await })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let packed = pipeline.get_packed_pipeline();
            // As redis-rs's connections answer: the replies as they are, server errors
            // among them (the pipeline decides what an error in it means).
            let values = self.request(&packed, offset + count).await?;
            Ok(values.into_iter().skip(offset).collect())
        })
    }

    fn get_db(&self) -> i64 {
        self.db
    }
}

/// The longest line (a simple string, an error, a length) a reply may hold: a peer that
/// sends more without a line end fails the command, and each read rescans at most this.
const MAX_LINE: usize = 64 * 1024;

/// How far the framing of the reply being read has got: it resumes there when more bytes
/// arrive, so that a large reply is scanned once, not once per read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Scan {
    /// Where the next value to frame starts (everything before it is framed).
    at: usize,
    /// Values still to be framed: the first, then each array's elements.
    want: usize,
}

impl Scan {
    const NEW: Self = Self { at: 0, want: 1 };
}

/// Frames the first RESP2 value of `buf`, resuming from `scan`: its length once it is
/// complete, `None` while more bytes are needed. Bulk strings are skipped by their length
/// (their bytes may hold CRLF). Never panics, whatever `buf` holds.
fn value_len(buf: &[u8], scan: &mut Scan) -> RedisResult<Option<usize>> {
    while scan.want > 0 {
        let at = scan.at;
        let Some(&kind) = buf.get(at) else {
            return Ok(None);
        };
        if !matches!(kind, b'+' | b'-' | b':' | b'$' | b'*') {
            return Err((ErrorKind::Parse, "not a RESP2 reply").into());
        }
        let rest = &buf[at + 1..];
        let Some(end) = rest.windows(2).position(|w| w == b"\r\n") else {
            if rest.len() > MAX_LINE {
                return Err((ErrorKind::Parse, "a reply line too long").into());
            }
            return Ok(None);
        };
        let line = &rest[..end];
        let mut next = at + 1 + end + 2;
        let mut more = 0usize;
        match kind {
            b'$' => {
                // `-1` is nil; a length past any reply read is refused before it is waited
                // for (and cannot overflow the position).
                if let Ok(n) = usize::try_from(int(line)?) {
                    if n > MAX_REPLY {
                        return Err((ErrorKind::Parse, "a bulk string too large").into());
                    }
                    if buf.len() < next + n + 2 {
                        return Ok(None);
                    }
                    next += n + 2;
                }
            }
            b'*' => {
                if let Ok(n) = usize::try_from(int(line)?) {
                    more = n;
                }
            }
            _ => {}
        }
        scan.at = next;
        scan.want = (scan.want - 1).saturating_add(more);
    }
    Ok(Some(scan.at))
}

fn int(line: &[u8]) -> RedisResult<i64> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| (ErrorKind::Parse, "a malformed length in a reply").into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn len(buf: &[u8]) -> RedisResult<Option<usize>> {
        let mut scan = Scan::NEW;
        value_len(buf, &mut scan)
    }

    #[test]
    fn a_value_is_complete_only_with_all_its_bytes() {
        let whole: &[&[u8]] = &[
            b"+OK\r\n",
            b"-ERR no\r\n",
            b":42\r\n",
            b"$-1\r\n",
            b"*-1\r\n",
            b"*0\r\n",
            b"$4\r\na\r\nb\r\n",
            b"*2\r\n$1\r\nx\r\n*2\r\n:1\r\n+y\r\n",
        ];
        for v in whole {
            assert_eq!(len(v).unwrap(), Some(v.len()), "{v:?}");
            assert!(
                redis::parse_redis_value(v).is_ok(),
                "{v:?} is what Redis sends"
            );
            let mut more = v.to_vec();
            more.extend_from_slice(b"+next\r\n");
            assert_eq!(len(&more).unwrap(), Some(v.len()), "{v:?} then more");
            // Cut anywhere, fresh or resumed byte by byte: incomplete until the end.
            let mut scan = Scan::NEW;
            for cut in 0..v.len() {
                assert_eq!(len(&v[..cut]).unwrap(), None, "{v:?} cut at {cut}");
                assert_eq!(
                    value_len(&v[..cut], &mut scan).unwrap(),
                    None,
                    "{v:?} at {cut}"
                );
            }
            assert_eq!(
                value_len(v, &mut scan).unwrap(),
                Some(v.len()),
                "{v:?} resumed"
            );
        }
        // Malformed: an error, never a panic.
        for bad in [
            &b"?huh\r\n"[..],
            b"\r\n",
            b"*1\r\n\r\n",
            b"*2\r\n:1\r\n\r\n",
            b"$x\r\n",
            b"$99999999999999999999\r\n",
        ] {
            assert!(len(bad).is_err(), "{bad:?}");
        }
        let past = format!("${}\r\n", MAX_REPLY + 1);
        assert!(len(past.as_bytes()).is_err(), "refused, not waited for");
        let endless = vec![b'+'; MAX_LINE + 2];
        assert!(
            len(&endless).is_err(),
            "a line without an end is not waited for"
        );
    }

    /// A large reply arriving in small reads is framed once: each read resumes where
    /// the last complete element ended.
    #[test]
    fn a_large_reply_is_framed_once_across_reads() {
        let mut reply = b"*1000\r\n".to_vec();
        for i in 0..1000 {
            let item = format!("{i:0>1000}");
            reply.extend(format!("${}\r\n{item}\r\n", item.len()).into_bytes());
        }
        let mut scan = Scan::NEW;
        let mut framed_at = Vec::new();
        for cut in (1448..reply.len()).step_by(1448) {
            assert_eq!(value_len(&reply[..cut], &mut scan).unwrap(), None);
            framed_at.push(scan.at);
        }
        assert_eq!(value_len(&reply, &mut scan).unwrap(), Some(reply.len()));
        assert!(
            framed_at.windows(2).all(|w| w[0] <= w[1])
                && framed_at.last() > Some(&(reply.len() / 2)),
            "each read resumes past what was framed"
        );
    }

    /// A random RESP2 reply, as Redis encodes one.
    fn reply() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            "[ -~]{0,20}".prop_map(|t| format!("+{t}\r\n").into_bytes()),
            "[ -~]{0,20}".prop_map(|t| format!("-ERR {t}\r\n").into_bytes()),
            any::<i64>().prop_map(|n| format!(":{n}\r\n").into_bytes()),
            Just(b"$-1\r\n".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..64).prop_map(|b| {
                let mut out = format!("${}\r\n", b.len()).into_bytes();
                out.extend(b);
                out.extend_from_slice(b"\r\n");
                out
            }),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            proptest::collection::vec(inner, 0..8).prop_map(|items| {
                let mut out = format!("*{}\r\n", items.len()).into_bytes();
                out.extend(items.into_iter().flatten());
                out
            })
        })
    }

    proptest::proptest! {
        /// Any reply is framed at exactly its end, read whole or in pieces of any size,
        /// and agrees with redis-rs's parser.
        #[test]
        fn replies_are_framed_exactly_however_they_arrive(v in reply(), step in 1usize..40) {
            proptest::prop_assert_eq!(len(&v).unwrap(), Some(v.len()));
            proptest::prop_assert!(redis::parse_redis_value(&v).is_ok());
            let mut scan = Scan::NEW;
            let mut cut = step;
            while cut < v.len() {
                proptest::prop_assert_eq!(value_len(&v[..cut], &mut scan).unwrap(), None);
                cut += step;
            }
            proptest::prop_assert_eq!(value_len(&v, &mut scan).unwrap(), Some(v.len()));
        }

        /// Whatever bytes a peer sends, framing answers (complete, incomplete or an
        /// error) and never panics.
        #[test]
        fn framing_never_panics(bytes in proptest::collection::vec(any_byte(), 0..200)) {
            let _ = len(&bytes);
        }
    }

    fn any_byte() -> impl proptest::strategy::Strategy<Value = u8> {
        use proptest::prelude::*;
        prop_oneof![
            Just(b'\r'),
            Just(b'\n'),
            Just(b'*'),
            Just(b'$'),
            Just(b'-'),
            Just(b'1'),
            any::<u8>()
        ]
    }

    /// A request whose caller gave up leaves the connection in doubt; a server error
    /// does not.
    #[tokio::test(start_paused = true)]
    async fn a_reply_not_read_leaves_the_connection_in_doubt() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, server) = tokio::join!(client, listener.accept());
        let (mut server, _) = server.unwrap();
        let info = RedisConnectionInfo::default();
        let answer = tokio::spawn(async move {
            let mut req = [0u8; 64];
            let _ = server.read(&mut req).await.unwrap();
            server.write_all(b"+PONG\r\n").await.unwrap();
            let _ = server.read(&mut req).await.unwrap();
            server.write_all(b"-ERR nope\r\n").await.unwrap();
            let _ = server.read(&mut req).await.unwrap();
            // The second request is never answered.
            server
        });
        let mut plain = Plain::open(client.unwrap(), &info).await.unwrap();
        let err = plain.req_packed_command(&redis::cmd("PING")).await;
        assert_eq!(err.unwrap_err().code(), Some("ERR"));
        assert!(!plain.in_doubt(), "a server error is a reply");
        let ping = redis::cmd("PING");
        let gave_up = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            plain.req_packed_command(&ping),
        )
        .await;
        assert!(gave_up.is_err());
        assert!(plain.in_doubt());
        assert!(plain.req_packed_command(&ping).await.is_err(), "not reused");
        drop(answer);
    }
}
