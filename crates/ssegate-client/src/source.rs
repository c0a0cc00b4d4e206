//! A reconnecting event source, modelled on the browser's `EventSource`.
//!
//! * Each (re)connect uses the next URL of the list, round robin, so a test
//!   can fail over from a dead node to a live one.
//! * The reconnect delay is the last `retry:` value received (3 s until the
//!   server sends one), unless [`EventSource::with_retry_override`] forces one.
//! * `Last-Event-ID` carries the source's last event ID string, which
//!   persists across connections and includes IDs from `id:`-only blocks.
//!
//! Difference from the browser: a browser fails for good on *any* HTTP error
//! status and only retries network errors. We also retry `5xx` responses
//! (e.g. a node that is shutting down), besides connect/network errors and
//! timeouts. Other non-`200` statuses ([`Error::Status`]) and a `200` that is
//! not `text/event-stream` ([`Error::NotEventStream`]) close the source, like
//! in the browser.

use std::time::Duration;

use http::StatusCode;
use http::header::CONTENT_TYPE;
use tokio::time::Instant;

use crate::conn::{ConnectOptions, Connection};
use crate::error::Error;
use crate::parser::{Event, Item};

/// The reconnect delay before any `retry:` field was received.
pub const DEFAULT_RETRY: Duration = Duration::from_millis(3000);

/// What [`EventSource::next`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceItem {
    /// A connection was established (the `open` event).
    Open {
        /// The URL that was connected to.
        url: String,
        /// The response status (always `200`).
        status: StatusCode,
    },
    /// A parsed item from the current connection.
    Item(Item),
    /// The stream ended (server closed it or a network error); the next call
    /// reconnects after the retry delay.
    Closed,
}

/// A reconnecting SSE client; see the [module docs](self).
#[derive(Debug)]
pub struct EventSource {
    urls: Vec<String>,
    next_url: usize,
    opts: ConnectOptions,
    conn: Option<Connection>,
    last_event_id: String,
    retry: Duration,
    retry_override: Option<Duration>,
    max_reconnects: Option<u64>,
    reconnects: u64,
    /// Set while disconnected after a first attempt: when to try again.
    reconnect_at: Option<Instant>,
    failed: bool,
    last_error: Option<Error>,
}

impl EventSource {
    /// A source over `urls` (used round robin). `opts.last_event_id` seeds the
    /// last event ID string. Nothing happens until [`next`](Self::next).
    pub fn new(urls: Vec<String>, opts: ConnectOptions) -> Self {
        Self {
            urls,
            next_url: 0,
            last_event_id: opts.last_event_id.clone().unwrap_or_default(),
            opts,
            conn: None,
            retry: DEFAULT_RETRY,
            retry_override: None,
            max_reconnects: None,
            reconnects: 0,
            reconnect_at: None,
            failed: false,
            last_error: None,
        }
    }

    /// Uses `delay` between connections instead of the server's `retry:`.
    #[must_use]
    pub fn with_retry_override(mut self, delay: Option<Duration>) -> Self {
        self.retry_override = delay;
        self
    }

    /// Gives up with [`Error::TooManyReconnects`] instead of attempting
    /// reconnect number `n + 1` (every attempt after the first counts).
    #[must_use]
    pub fn with_max_reconnects(mut self, n: u64) -> Self {
        self.max_reconnects = Some(n);
        self
    }

    /// How many reconnect attempts were made (successful or not).
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// The last event ID string, sent as `Last-Event-ID` on reconnect.
    pub fn last_event_id(&self) -> &str {
        &self.last_event_id
    }

    /// The current reconnect delay (override, else last `retry:`, else 3 s).
    pub fn retry_delay(&self) -> Duration {
        self.retry_override.unwrap_or(self.retry)
    }

    /// The error that caused the latest reconnect, if any.
    pub fn last_error(&self) -> Option<&Error> {
        self.last_error.as_ref()
    }

    /// The open connection, if any (e.g. to inspect response headers).
    pub fn connection(&self) -> Option<&Connection> {
        self.conn.as_ref()
    }

    /// The next thing that happens: a connection opening, an item, or the
    /// stream closing. Waits (cancel-safely) for the retry delay before a
    /// reconnect; connection failures are retried internally.
    pub async fn next(&mut self) -> Result<SourceItem, Error> {
        loop {
            if let Some(conn) = &mut self.conn {
                match conn.next_item().await {
                    Ok(Some(item)) => {
                        match &item {
                            Item::Retry(ms) => self.retry = Duration::from_millis(*ms),
                            Item::Event(Event { id, .. }) | Item::LastEventId(id) => {
                                self.last_event_id.clone_from(id);
                            }
                            Item::Comment(_) => {}
                        }
                        return Ok(SourceItem::Item(item));
                    }
                    Ok(None) => {
                        self.disconnected(None);
                        return Ok(SourceItem::Closed);
                    }
                    Err(Error::LineTooLong) => {
                        self.conn = None;
                        self.failed = true;
                        return Err(Error::LineTooLong);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "event stream failed");
                        self.disconnected(Some(e));
                        return Ok(SourceItem::Closed);
                    }
                }
            }
            if self.failed {
                return Err(Error::Closed);
            }
            if let Some(item) = self.connect().await? {
                return Ok(item);
            }
        }
    }

    /// Like [`next`](Self::next) but only returns events.
    pub async fn next_event(&mut self) -> Result<Event, Error> {
        loop {
            if let SourceItem::Item(Item::Event(event)) = self.next().await? {
                return Ok(event);
            }
        }
    }

    fn disconnected(&mut self, error: Option<Error>) {
        self.conn = None;
        self.reconnect_at = Some(Instant::now() + self.retry_delay());
        if error.is_some() {
            self.last_error = error;
        }
    }

    /// One connection attempt; `Ok(None)` means "failed, try again".
    async fn connect(&mut self) -> Result<Option<SourceItem>, Error> {
        if self.urls.is_empty() {
            self.failed = true;
            return Err(Error::InvalidUrl("no URLs given".to_owned()));
        }
        let is_reconnect = self.reconnect_at.is_some();
        if let Some(at) = self.reconnect_at {
            if self
                .max_reconnects
                .is_some_and(|max| self.reconnects >= max)
            {
                self.failed = true;
                return Err(Error::TooManyReconnects(self.reconnects));
            }
            tokio::time::sleep_until(at).await;
        }
        let url = self.urls[self.next_url % self.urls.len()].clone();
        self.next_url = self.next_url.wrapping_add(1);
        let mut opts = self.opts.clone();
        opts.last_event_id = Some(self.last_event_id.clone()).filter(|id| !id.is_empty());
        let result = Connection::open(&url, &opts).await;
        if is_reconnect {
            self.reconnects += 1;
        }
        self.reconnect_at = None;

        let conn = match result {
            Ok(conn) => conn,
            Err(e @ (Error::Connect(_) | Error::Timeout | Error::Http(_))) => {
                tracing::debug!(%url, error = %e, "connect failed; will retry");
                self.disconnected(Some(e));
                return Ok(None);
            }
            Err(e) => {
                self.failed = true;
                return Err(e);
            }
        };
        let status = conn.status();
        if status.is_server_error() {
            tracing::debug!(%url, %status, "server error; will retry");
            self.disconnected(Some(Error::Status(status)));
            return Ok(None);
        }
        if status != StatusCode::OK {
            self.failed = true;
            return Err(Error::Status(status));
        }
        if !is_event_stream(&conn) {
            self.failed = true;
            let content_type = conn.headers().get(CONTENT_TYPE);
            let content_type = content_type.map(|v| String::from_utf8_lossy(v.as_bytes()).into());
            return Err(Error::NotEventStream(content_type));
        }
        self.conn = Some(conn);
        Ok(Some(SourceItem::Open { url, status }))
    }
}

fn is_event_stream(conn: &Connection) -> bool {
    conn.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("text/event-stream"))
}

#[cfg(test)]
mod tests;
