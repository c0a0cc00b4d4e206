//! One SSE request on its own HTTP connection.
//!
//! [`Connection::open`] dials TCP, runs a hyper HTTP/1.1 or prior-knowledge
//! HTTP/2 (h2c) handshake, spawns the connection driver, sends a single `GET`
//! and hands back the response head. The body is then read frame by frame and
//! run through a [`Parser`]. Nothing is pooled or shared, which keeps a
//! connection cheap enough for a load generator to open thousands of them.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CACHE_CONTROL, HOST, HeaderName, HeaderValue};
use http::{HeaderMap, Request, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::error::Error;
use crate::parser::{Event, Item, Parser};

/// The HTTP version to speak.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge over plain TCP (h2c, no upgrade dance).
    Http2,
}

/// How to open a [`Connection`].
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// HTTP/1.1 or h2c.
    pub protocol: Protocol,
    /// Sent as `Last-Event-ID` when set, and seeds the parser's last event ID.
    pub last_event_id: Option<String>,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// Bounds TCP connect, handshake and waiting for the response head.
    pub connect_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            protocol: Protocol::Http1,
            last_event_id: None,
            headers: Vec::new(),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// Aborts the hyper connection driver (closing the socket) when dropped.
#[derive(Debug)]
struct DriverGuard(JoinHandle<()>);

impl Drop for DriverGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keeps the request sender alive for the lifetime of the response.
enum Sender {
    Http1(#[allow(dead_code)] http1::SendRequest<Empty<Bytes>>),
    Http2(#[allow(dead_code)] http2::SendRequest<Empty<Bytes>>),
}

/// An open SSE response: status, headers and a parsed body.
pub struct Connection {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    body: Incoming,
    parser: Parser,
    pending: VecDeque<Item>,
    scratch: Vec<Item>,
    retry_ms: Option<u64>,
    eof: bool,
    _sender: Sender,
    _driver: DriverGuard,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("status", &self.status)
            .field("version", &self.version)
            .field("last_event_id", &self.parser.last_event_id())
            .field("retry_ms", &self.retry_ms)
            .field("pending", &self.pending.len())
            .field("eof", &self.eof)
            .finish_non_exhaustive()
    }
}

/// The parts of an `http://` URL a connection needs.
struct Target {
    host: String,
    port: u16,
    authority: String,
    uri: Uri,
    path: Uri,
}

fn parse_url(url: &str) -> Result<Target, Error> {
    let invalid = |why: &str| Error::InvalidUrl(format!("{url:?}: {why}"));
    let uri: Uri = url.parse().map_err(|e| invalid(&format!("{e}")))?;
    if uri.scheme_str() != Some("http") {
        return Err(invalid("only http:// is supported"));
    }
    let authority = uri.authority().ok_or_else(|| invalid("no host"))?;
    let host = authority.host();
    if host.is_empty() {
        return Err(invalid("no host"));
    }
    let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str());
    let path: Uri = path_and_query
        .parse()
        .map_err(|e| invalid(&format!("{e}")))?;
    Ok(Target {
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        port: authority.port_u16().unwrap_or(80),
        authority: authority.as_str().to_owned(),
        uri,
        path,
    })
}

fn build_request(target: &Target, opts: &ConnectOptions) -> Result<Request<Empty<Bytes>>, Error> {
    let mut builder = match opts.protocol {
        Protocol::Http1 => Request::get(target.path.clone()).header(HOST, &target.authority),
        Protocol::Http2 => Request::get(target.uri.clone()).version(Version::HTTP_2),
    };
    builder = builder
        .header(ACCEPT, "text/event-stream")
        .header(CACHE_CONTROL, "no-cache");
    if let Some(id) = opts.last_event_id.as_deref().filter(|id| !id.is_empty()) {
        let value = HeaderValue::from_bytes(id.as_bytes())
            .map_err(|_| Error::InvalidHeader("last-event-id".to_owned()))?;
        builder = builder.header("last-event-id", value);
    }
    for (name, value) in &opts.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| Error::InvalidHeader(name.clone()))?;
        let value = HeaderValue::from_bytes(value.as_bytes())
            .map_err(|_| Error::InvalidHeader(name.to_string()))?;
        builder = builder.header(name, value);
    }
    Ok(builder.body(Empty::new())?)
}

impl Connection {
    /// Connects to `url` (`http://host[:port]/path?query`), sends the `GET`
    /// and waits for the response head. Any status is returned as `Ok`; check
    /// [`status`](Self::status) (the [`EventSource`](crate::EventSource)
    /// does that for you).
    pub async fn open(url: &str, opts: &ConnectOptions) -> Result<Connection, Error> {
        let target = parse_url(url)?;
        let request = build_request(&target, opts)?;
        tokio::time::timeout(
            opts.connect_timeout,
            Self::open_inner(&target, request, opts),
        )
        .await
        .map_err(|_| Error::Timeout)?
    }

    async fn open_inner(
        target: &Target,
        request: Request<Empty<Bytes>>,
        opts: &ConnectOptions,
    ) -> Result<Connection, Error> {
        let tcp = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(Error::Connect)?;
        tcp.set_nodelay(true).map_err(Error::Connect)?;
        let io = TokioIo::new(tcp);
        let (sender, driver, response) = match opts.protocol {
            Protocol::Http1 => {
                let (mut tx, conn) = http1::handshake(io).await?;
                let driver = DriverGuard(tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "http1 connection ended");
                    }
                }));
                let response = tx.send_request(request).await?;
                (Sender::Http1(tx), driver, response)
            }
            Protocol::Http2 => {
                let (mut tx, conn) = http2::handshake(TokioExecutor::new(), io).await?;
                let driver = DriverGuard(tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "http2 connection ended");
                    }
                }));
                let response = tx.send_request(request).await?;
                (Sender::Http2(tx), driver, response)
            }
        };
        let (parts, body) = response.into_parts();
        let parser = match &opts.last_event_id {
            Some(id) => Parser::new().with_last_event_id(id.clone()),
            None => Parser::new(),
        };
        Ok(Connection {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
            parser,
            pending: VecDeque::new(),
            scratch: Vec::new(),
            retry_ms: None,
            eof: false,
            _sender: sender,
            _driver: driver,
        })
    }

    /// The response status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The response headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The negotiated HTTP version of the response.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The parser's last event ID string (seeded from
    /// [`ConnectOptions::last_event_id`]).
    pub fn last_event_id(&self) -> &str {
        self.parser.last_event_id()
    }

    /// The most recent `retry:` value received on this connection.
    pub fn retry_ms(&self) -> Option<u64> {
        self.retry_ms
    }

    /// Reads the next body chunk, feeds it to the parser (its items become
    /// available from [`next_item`](Self::next_item)) and returns it verbatim.
    /// `Ok(None)` once the body has ended.
    pub async fn next_raw(&mut self) -> Result<Option<Bytes>, Error> {
        while !self.eof {
            match self.body.frame().await {
                None => {
                    self.eof = true;
                    self.parser.finish();
                }
                Some(Err(e)) => return Err(Error::Http(e)),
                Some(Ok(frame)) => {
                    // Trailers (HTTP/2) carry no event data; skip them.
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if data.is_empty() {
                        continue;
                    }
                    self.parser.feed(&data, &mut self.scratch);
                    for item in self.scratch.drain(..) {
                        if let Item::Retry(ms) = item {
                            self.retry_ms = Some(ms);
                        }
                        self.pending.push_back(item);
                    }
                    return Ok(Some(data));
                }
            }
        }
        Ok(None)
    }

    /// The next parsed item; `Ok(None)` at the end of the stream (a trailing
    /// unterminated event is discarded). Fails with [`Error::LineTooLong`]
    /// once the parser has had to drop an over-long line.
    pub async fn next_item(&mut self) -> Result<Option<Item>, Error> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Ok(Some(item));
            }
            if self.parser.overflowed() {
                return Err(Error::LineTooLong);
            }
            if self.next_raw().await?.is_none() {
                return Ok(None);
            }
        }
    }

    /// The next [`Event`], skipping comments, `retry:` and ID-only items.
    pub async fn next_event(&mut self) -> Result<Option<Event>, Error> {
        while let Some(item) = self.next_item().await? {
            if let Item::Event(event) = item {
                return Ok(Some(event));
            }
        }
        Ok(None)
    }

    /// Collects the rest of the body, e.g. the JSON error of a non-200
    /// response. Bytes already returned by the `next_*` methods are not included.
    pub async fn read_to_end_body(self) -> Result<Bytes, Error> {
        Ok(self.body.collect().await?.to_bytes())
    }
}

#[cfg(test)]
mod tests;
