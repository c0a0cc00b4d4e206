//! A lean Rust Server-Sent Events client.
//!
//! It parses streams exactly per the WHATWG `EventSource` rules, reconnects
//! honouring `retry:`, and resends `Last-Event-ID`. It is meant for the
//! ssegate integration tests and load generator, so it stays small (one
//! hyper client connection per stream, nothing pooled or shared) and exposes
//! the raw details tests want to assert on: response status and headers, raw
//! body chunks, comments, `retry:` values and ID-only frames.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ssegate_client::Error> {
//! use ssegate_client::{ConnectOptions, EventSource};
//!
//! // One channel on two gateway nodes: each reconnect takes the next URL and resumes
//! // from the last event id with `Last-Event-ID`.
//! let urls = vec![
//!     "http://127.0.0.1:8080/v1/channels/news/events".to_owned(),
//!     "http://127.0.0.1:8081/v1/channels/news/events".to_owned(),
//! ];
//! let mut source = EventSource::new(urls, ConnectOptions::default());
//! let event = source.next_event().await?;
//! println!("{} {}: {}", event.id, event.event, event.data);
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! * [`parser`] — the incremental, push-based `text/event-stream` parser
//!   ([`Parser`], [`Item`], [`Event`]). Pure and I/O-free so it can be tested
//!   exhaustively (every chunk split, property tests) and reused by anything
//!   that has bytes.
//! * [`conn`] — [`Connection`]: one `GET` on its own HTTP/1.1 or h2c
//!   connection, driven by hyper's low-level `client::conn` API. Gives access
//!   to status, headers, raw chunks and parsed items; no reconnects.
//! * [`source`] — [`EventSource`]: the browser-like reconnecting loop on top
//!   of [`Connection`] (retry delay, `Last-Event-ID`, round-robin failover).
//! * [`http`] — [`HttpClient`]: a pooled helper for ordinary requests
//!   (publishing, admin calls), kept apart so streams never share its pool.
//! * [`error`] — the one [`Error`] type shared by all of the above.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod conn;
pub mod error;
pub mod http;
pub mod parser;
pub mod source;

#[cfg(test)]
mod test_server;

pub use crate::conn::{ConnectOptions, Connection, Protocol};
pub use crate::error::Error;
pub use crate::http::{HttpClient, Response};
pub use crate::parser::{Event, Item, Parser};
pub use crate::source::{EventSource, SourceItem};
