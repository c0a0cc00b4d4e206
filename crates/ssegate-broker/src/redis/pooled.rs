//! The pool of command connections to the primary, and how a dead one is found before it
//! is handed out.
//!
//! # Liveness without a round trip
//!
//! A pooled connection that Redis closed while it sat idle (a restart, Redis's own idle
//! `timeout`, `CLIENT KILL`) must be found at checkout, not by the command that would use
//! it: a publish sent on a dead connection fails after it was handed to the socket, and
//! can then only be answered `504 publish_outcome_unknown` where `503` (not published) is
//! the truth. Asking Redis with a `PING` at every checkout finds it, but doubles the round
//! trips of every publish and every read.
//!
//! So a plain TCP connection is a socket of ours, driven by its user's task ([`Plain`]),
//! and a busy connection's checkout reads its state from the kernel instead: no request's
//! reply is outstanding on it, and a non-blocking one-byte `MSG_PEEK` finds neither the
//! end of the stream nor an error. Redis's close arrives before anything it could send
//! after it, so a connection Redis closed before a checkout is never handed out.
//!
//! The kernel only knows of a close that reached it. A peer that vanished without one (a
//! NAT or load balancer that dropped an idle flow, a crashed or partitioned host, a frozen
//! Redis) looks open, so Redis is still asked with `PING` when the kernel cannot vouch:
//! when the connection sat unused for longer than [`PING_IDLE_AFTER`] (a busy node does
//! not pay for it, an idle one has round trips to spare), when its last command failed
//! ([`Conn::suspect`]), and always over TLS or a Unix socket, which redis-rs opens. A
//! connection is dropped instead, without a word to Redis, when a reply on it was not read
//! (its command timed out: the late reply would be taken for the next one's) or bytes no
//! request asked for wait on it. A peer lost while the connection is busy is found by the command itself: it
//! fails, and a publish is answered `504 publish_outcome_unknown`, as it must when the
//! script may have run.
//!
//! Each connection holds one file descriptor (a TLS or Unix one also a redis-rs driver
//! task, which ends with it). There are at most `SSEGATE_REDIS_POOL_SIZE` of them.

use std::io;
use std::mem::MaybeUninit;
use std::sync::Arc;
use std::time::Duration;

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use futures_util::FutureExt;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::io::tcp::TcpSettings;
use redis::{Cmd, ConnectionAddr, ProtocolVersion, RedisError, RedisFuture, Value};
use tokio::net::TcpStream;

use super::plain::Plain;
use super::primary::{Primary, unavailable};
use crate::BrokerError;

/// A pooled connection unused for longer than this is asked with `PING` when taken.
pub const PING_IDLE_AFTER: Duration = Duration::from_secs(1);

/// A pooled connection and the generation it was opened under.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) conn: Link,
    pub(crate) generation: u64,
    /// Its last command failed or got no reply in time: ask Redis before the next one.
    suspect: bool,
}

/// How a pooled connection talks to Redis.
#[derive(Debug)]
pub(crate) enum Link {
    /// Our own socket, driven by its user (see `plain`); its liveness is the kernel's.
    Plain(Plain),
    /// Opened by redis-rs (TLS, a Unix socket, RESP3): asked with `PING`.
    Mux(MultiplexedConnection),
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Plain(p) => p.req_packed_command(cmd),
            Self::Mux(m) => m.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Plain(p) => p.req_packed_commands(pipeline, offset, count),
            Self::Mux(m) => m.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Plain(p) => p.get_db(),
            Self::Mux(m) => m.get_db(),
        }
    }
}

impl Conn {
    /// Marks the connection for a `PING` at its next checkout (its last command failed
    /// or timed out: the peer may be gone without the kernel knowing).
    pub(crate) fn suspect(&mut self) {
        self.suspect = true;
    }
}

/// What the kernel says about an idle connection's socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Socket {
    /// Nothing to read and no close: open, as far as the kernel knows.
    Open,
    /// The end of the stream: Redis closed it.
    Closed,
    /// Bytes the driver has yet to read (a late reply), perhaps with a close behind them.
    Unread,
}

fn socket_state(socket: &TcpStream) -> io::Result<Socket> {
    let mut byte = [MaybeUninit::<u8>::uninit()];
    match socket2::SockRef::from(socket).peek(&mut byte) {
        Ok(0) => Ok(Socket::Closed),
        Ok(_) => Ok(Socket::Unread),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            Ok(Socket::Open)
        }
        Err(e) => Err(e),
    }
}

/// Connects to the first of `host`'s addresses that answers, trying them all at once (as
/// redis-rs does: a name with an unreachable address must not cost the whole timeout).
async fn connect(host: &str, port: u16) -> io::Result<TcpStream> {
    let tries: Vec<_> = tokio::net::lookup_host((host, port))
        .await?
        .map(|addr| TcpStream::connect(addr).boxed())
        .collect();
    if tries.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "the Redis host has no address",
        ));
    }
    Ok(futures_util::future::select_ok(tries).await?.0)
}

/// The socket options redis-rs would have set from the connection's settings.
fn apply(stream: &TcpStream, settings: &TcpSettings) -> io::Result<()> {
    stream.set_nodelay(settings.nodelay())?;
    let socket = socket2::SockRef::from(stream);
    if let Some(keepalive) = settings.keepalive() {
        socket.set_tcp_keepalive(keepalive)?;
    }
    socket.set_tcp_user_timeout(settings.user_timeout())?;
    Ok(())
}

/// The pool's manager: opens connections to the current primary, and refuses to hand
/// out one of an ended generation (see the trust rule in [`super::primary`]) or one
/// that Redis closed.
#[derive(Debug)]
pub(crate) struct Manager(pub(crate) Arc<Primary>);

impl Manager {
    /// A connection over a TCP socket of ours.
    async fn open_socket(
        &self,
        client: &redis::Client,
        host: &str,
        port: u16,
    ) -> Result<Link, RedisError> {
        let info = client.get_connection_info();
        let open = async {
            let stream = connect(host, port).await?;
            apply(&stream, info.tcp_settings())?;
            Ok::<_, RedisError>(Link::Plain(
                Plain::open(stream, info.redis_settings()).await?,
            ))
        };
        match tokio::time::timeout(self.0.timeout, open).await {
            Ok(opened) => opened,
            Err(_) => Err(io::Error::from(io::ErrorKind::TimedOut).into()),
        }
    }
}

impl managed::Manager for Manager {
    type Type = Conn;
    type Error = BrokerError;

    async fn create(&self) -> Result<Conn, BrokerError> {
        let (client, generation) = self.0.client().await?;
        let info = client.get_connection_info();
        let opened = match info.addr() {
            ConnectionAddr::Tcp(host, port)
                if info.redis_settings().protocol() == ProtocolVersion::RESP2 =>
            {
                self.open_socket(&client, host, *port).await
            }
            _ => client
                .get_multiplexed_async_connection_with_config(&self.0.connection_config())
                .await
                .map(Link::Mux),
        };
        match opened {
            Ok(conn) => {
                let conn = Conn {
                    conn,
                    generation,
                    suspect: false,
                };
                // A generation that ended while we connected (a failover announced):
                // this connection may reach the demoted primary; nothing was sent on it.
                if self.0.generation() != generation {
                    return Err(unavailable("the Redis primary changed while connecting"));
                }
                Ok(conn)
            }
            // Redis answered with an error (a wrong password, a database out of range):
            // it is reachable, and only an error that says it is no longer the primary
            // ends the generation.
            Err(e) if e.code().is_some() => {
                self.0.check(generation, &e);
                Err(unavailable(e))
            }
            Err(e) => {
                self.0.unreachable(generation, &e);
                Err(unavailable(e))
            }
        }
    }

    async fn recycle(&self, c: &mut Conn, metrics: &Metrics) -> RecycleResult<BrokerError> {
        if c.generation != self.0.generation() {
            return Err(RecycleError::message("the primary changed"));
        }
        let ask = match &c.conn {
            Link::Plain(p) if p.in_doubt() => {
                return Err(RecycleError::message("a reply on it was not read"));
            }
            Link::Plain(p) => match socket_state(p.socket()) {
                Ok(Socket::Closed) => {
                    return Err(RecycleError::message("Redis closed the connection"));
                }
                Err(e) => return Err(RecycleError::Backend(unavailable(e))),
                // Nothing was asked: whatever it is (an error before a close), a reply
                // read after it would be out of step.
                Ok(Socket::Unread) => {
                    return Err(RecycleError::message("unasked bytes wait on it"));
                }
                Ok(Socket::Open) => c.suspect || metrics.last_used() > PING_IDLE_AFTER,
            },
            Link::Mux(_) => true,
        };
        if !ask {
            return Ok(());
        }
        let ping = redis::cmd("PING");
        let asked = ping.query_async::<()>(&mut c.conn);
        match tokio::time::timeout(self.0.timeout, asked).await {
            Ok(Ok(())) => {
                c.suspect = false;
                Ok(())
            }
            Ok(Err(e)) => {
                self.0.check(c.generation, &e);
                Err(RecycleError::Backend(unavailable(e)))
            }
            Err(_) => Err(RecycleError::message("PING timed out")),
        }
    }
}

/// The pool of command connections.
pub(crate) type Pool = managed::Pool<Manager>;

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The probe reads a socket's state without consuming from it.
    #[tokio::test]
    async fn the_probe_tells_an_open_socket_from_a_closed_one() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let mut client = client;
        assert_eq!(socket_state(&client).unwrap(), Socket::Open, "idle");

        // A reply waiting to be read is not a close, however often it is peeked at.
        server.write_all(b"+PONG\r\n").await.unwrap();
        client.readable().await.unwrap();
        assert_eq!(socket_state(&client).unwrap(), Socket::Unread);
        assert_eq!(socket_state(&client).unwrap(), Socket::Unread);
        let mut read = [0u8; 7];
        client.read_exact(&mut read).await.unwrap();
        assert_eq!(&read, b"+PONG\r\n", "peeking consumed nothing");

        drop(server);
        // Wait for the close as the connection's own reader would see it.
        loop {
            client.readable().await.unwrap();
            match client.try_read(&mut [0u8]) {
                Ok(0) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => panic!("only the close was left to read, got {other:?}"),
            }
        }
        assert_eq!(socket_state(&client).unwrap(), Socket::Closed);
    }
}
