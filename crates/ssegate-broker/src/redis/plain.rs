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

use super::resp::{self, MAX_REPLY, Scan};

/// A read buffer larger than this is freed once its reply was parsed.
const KEEP_BUFFER: usize = 64 * 1024;
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
            if let Some(len) = resp::value_len(&self.buf, &mut scan)? {
                let value = resp::parse(&self.buf[..len])?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
