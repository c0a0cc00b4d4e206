//! The crate-wide error type.

use http::StatusCode;

/// Everything that can go wrong while talking to an SSE endpoint (or making a
/// plain request with [`HttpClient`](crate::HttpClient)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL could not be parsed, is not `http://`, or has no host.
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    /// A configured header name or value (or the `Last-Event-ID` value) is not
    /// a valid HTTP header.
    #[error("invalid header {0:?}")]
    InvalidHeader(String),
    /// The TCP connection could not be established.
    #[error("connect failed: {0}")]
    Connect(#[source] std::io::Error),
    /// Connecting (TCP, handshake and response head) took longer than
    /// [`ConnectOptions::connect_timeout`](crate::ConnectOptions::connect_timeout).
    #[error("timed out while connecting")]
    Timeout,
    /// The HTTP layer failed (handshake, request, or reading the body).
    #[error("HTTP error: {0}")]
    Http(#[from] hyper::Error),
    /// Building the request failed.
    #[error("could not build request: {0}")]
    Build(#[from] http::Error),
    /// The pooled [`HttpClient`](crate::HttpClient) failed to send the request.
    #[error("request failed: {0}")]
    Client(#[from] hyper_util::client::legacy::Error),
    /// The server answered with a status that ends the event source for good.
    #[error("unexpected status {0}")]
    Status(StatusCode),
    /// The server answered `200` but not with `Content-Type: text/event-stream`.
    #[error("not an event stream (content-type {0:?})")]
    NotEventStream(Option<String>),
    /// A single line (or one event's data) exceeded the parser's limit.
    #[error("event stream line exceeds the parser limit")]
    LineTooLong,
    /// The [`EventSource`](crate::EventSource) used up its reconnect budget.
    #[error("gave up after {0} reconnects")]
    TooManyReconnects(u64),
    /// The [`EventSource`](crate::EventSource) failed earlier and is closed.
    #[error("event source is closed")]
    Closed,
}
