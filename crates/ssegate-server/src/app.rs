//! Building a node and running it until shutdown.
//!
//! [`App::run`] takes its shutdown signal as a future (mini-redis style), so the binary
//! passes SIGTERM/SIGINT and tests pass a oneshot. On shutdown: `/readyz` turns 503, new
//! subscribers get a retry-only stream, every open stream is closed at a random moment of
//! the drain window (after a jittered `retry:`), and once they are gone (or the window has
//! passed) the listeners close and remaining connections get a short grace period; then
//! every task stops. All of it goes through the node's one [`crate::lifecycle::Lifecycle`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use ssegate_broker::{Broker, MemoryBroker, RedisBroker};
use tokio::net::TcpListener;

use crate::conn;
use crate::router::Listener;
use crate::settings::Settings;
use crate::state::AppState;

/// How long connections get to finish after the drain, before they are cut.
const FINAL_GRACE: Duration = Duration::from_secs(3);

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The Redis broker cannot be built (an invalid URL or pool setting). An unreachable
    /// Redis is no build error: the node starts, and is not ready until Redis answers.
    #[error("cannot set up the broker: {0}")]
    Broker(#[source] ssegate_broker::BrokerError),
    /// A listener cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why binding failed (in use, not permitted, ...).
        source: std::io::Error,
    },
}

/// A node, bound and ready to run.
#[derive(Debug)]
pub struct App {
    listener: TcpListener,
    admin: Option<TcpListener>,
    state: Arc<AppState>,
}

/// Connections the kernel queues for a listener that is not accepting (at its
/// connection cap, see `limits::ConnectionSlots`) or not accepting fast enough; capped by
/// `net.core.somaxconn`. Sized for a reconnect wave: when a node goes away its clients
/// come back to the others all at once, and a SYN the full queue drops is retried by the
/// client's kernel only after a second (measured: at 1024, 10,000 resumes through three
/// nodes overflowed it thousands of times; at 4096, never; docs/benchmarks.md).
const LISTEN_BACKLOG: u32 = 4096;

async fn bind(addr: SocketAddr) -> Result<TcpListener, BuildError> {
    let listen = || {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    listen().map_err(|source| BuildError::Bind { addr, source })
}

impl App {
    /// Builds a node: with the Redis broker when `settings.redis` is set, else with the
    /// embedded in-memory broker.
    pub async fn build(settings: Settings) -> Result<Self, BuildError> {
        let broker: Arc<dyn Broker> = match settings.redis.clone() {
            Some(redis) => Arc::new(
                RedisBroker::connect(redis, settings.history.clone())
                    .map_err(BuildError::Broker)?,
            ),
            None => Arc::new(MemoryBroker::new(settings.history.clone())),
        };
        Self::with_broker(settings, broker).await
    }

    /// Builds a node on a given broker; the broker's background work (see
    /// [`Broker::background`]) runs from [`App::run`] on.
    pub async fn with_broker(
        settings: Settings,
        broker: Arc<dyn Broker>,
    ) -> Result<Self, BuildError> {
        let listener = bind(settings.listen).await?;
        let admin = match settings.admin_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let state = AppState::new(settings, broker);
        tracing::info!(
            streams = state.settings.max_connections,
            request_connections = state.public_connections.max_requests(),
            public_connections = state.public_connections.max_total(),
            admin_connections = state.admin_connections.max_total(),
            open_files_limit = state.settings.open_files_limit,
            body_bytes_in_flight = state.settings.max_body_bytes_in_flight,
            "connection and body limits"
        );
        if let Ok(addr) = listener.local_addr() {
            let _ = state.public_addr.set(addr);
        }
        Ok(Self {
            listener,
            admin,
            state,
        })
    }

    /// The public listener's bound address (the real port when `:0` was asked for).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The admin listener's bound address; `None` when it is turned off.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The node's shared state (tests watch its stream count).
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Serves until `shutdown` resolves, then drains, stops every task and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Self {
            listener,
            admin,
            state,
        } = self;
        let life = &state.lifecycle;
        if let Some(work) = state.broker.background() {
            life.spawn(work);
        }
        life.spawn(crate::cluster_view::announcer(state.clone()));
        let front = |which| {
            Arc::new(conn::Front {
                state: state.clone(),
                builder: builder(&state.settings),
                which,
            })
        };
        let public = front(Listener::Public);
        if let Some(l) = admin {
            let front = front(Listener::Admin);
            // The admin listener answers until the end (`/readyz` says draining).
            life.spawn(async move { accept_forever(&l, front).await });
        }

        tokio::select! {
            () = accept_forever(&listener, public.clone()) => {}
            () = shutdown => {}
        }

        let streams = &life.streams;
        tracing::info!(
            streams = streams.open(),
            window = ?state.settings.drain_window,
            "shutting down: draining streams"
        );
        life.begin_drain();
        let deadline =
            tokio::time::Instant::now() + state.settings.drain_window + Duration::from_secs(1);
        // Keep answering (politely) while the streams drain: new subscribers are told to
        // retry elsewhere, publishes and history still work.
        tokio::select! {
            () = accept_forever(&listener, public) => {}
            () = streams.wait_idle() => {}
            () = tokio::time::sleep_until(deadline) => {
                tracing::warn!(streams = streams.open(), "drain window over with streams open");
            }
        }
        drop(listener);
        // Public connections finish the response they are writing, then close.
        life.begin_close();
        if tokio::time::timeout(FINAL_GRACE, state.public_connections.wait_empty())
            .await
            .is_err()
        {
            tracing::warn!("connections still open after the grace period: closing them");
        }
        life.stop().await;
        if let Err(e) = state.broker.retire_node(&state.settings.node_id).await {
            tracing::debug!(error = %e, "cannot leave the cluster view");
        }
        tracing::info!("shutdown complete");
    }
}

/// Streams one HTTP/2 connection may carry at once (what nginx and browsers expect).
pub const H2_MAX_STREAMS: u32 = 100;
/// What hyper buffers for one HTTP/2 stream's response beyond the chunk it is writing.
/// With the session's own bound (one replay chunk, see `stream::session`), an h2 stream
/// whose client reads nothing pins about 128 KiB + one event + this, and an h2 connection
/// at most [`H2_MAX_STREAMS`] times that.
pub const H2_SEND_BUFFER: usize = 16 * 1024;
/// An HTTP/1.1 connection's read buffer (so the largest request head hyper takes) and
/// write queue: a stream that hyper serves over HTTP/1.1 pins at most this beyond its
/// session's chunk. Four times the front's head limit, hyper's is the one heads past
/// the front's buffer meet.
pub const H1_BUFFER: usize = 64 * 1024;
/// Flow-control windows for what clients send (publish bodies): a connection holds at
/// most this much that the node has not read yet.
const H2_STREAM_WINDOW: u32 = 256 * 1024;
const H2_CONNECTION_WINDOW: u32 = 1024 * 1024;

fn builder(settings: &Settings) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(H1_BUFFER)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_send_buf_size(H2_SEND_BUFFER)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_header_list_size(64 * 1024);
    b
}

/// How long an accept loop waits after its `n`th failure in a row: 10 ms, doubling up
/// to 1 s.
fn accept_backoff(n: u32) -> Duration {
    Duration::from_millis(10u64 << n.saturating_sub(1).min(7)).min(Duration::from_secs(1))
}

async fn accept_forever(listener: &TcpListener, front: Arc<conn::Front>) {
    let state = front.state.clone();
    let (slots, streams): (_, fn(&AppState) -> usize) = match front.which {
        Listener::Public => (state.public_connections.clone(), |s| {
            s.lifecycle.streams.open()
        }),
        Listener::Admin => (state.admin_connections.clone(), |_| 0),
    };
    let mut failures = 0u32;
    loop {
        // At the listener's connection cap, wait for a connection to end: new ones queue
        // in the kernel's backlog instead of taking descriptors the process needs.
        let slot = slots.acquire(|| streams(&state)).await;
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => {
                failures = 0;
                conn
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning, and
                // log the 1st, 2nd, 4th, 8th, ... failure of a streak.
                failures = failures.saturating_add(1);
                if failures.is_power_of_two() {
                    tracing::warn!(error = %e, failures, "accept failed");
                }
                tokio::time::sleep(accept_backoff(failures)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        state
            .lifecycle
            .spawn_connection(conn::serve(stream, peer, front.clone(), slot));
    }
}
