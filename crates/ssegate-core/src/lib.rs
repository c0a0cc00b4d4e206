//! The I/O-free core of ssegate: everything that must mean the same on every node.
//!
//! Nothing in this crate touches a socket, a clock it does not get passed, or a broker.
//! That keeps the rules that clients and other nodes depend on (what a valid name is,
//! what an event id looks like, how an event is framed on the wire) in one place that
//! is cheap to test exhaustively.
//!
//! # Layout
//!
//! - [`name`]: channel names and event types, validated on construction.
//! - [`id`]: [`EntryId`] (`<ms>-<seq>`, a position in one channel's history) and
//!   [`Epoch`] (the random token of one history store).
//! - [`cursor`]: the event ids that clients see and send back as `Last-Event-ID`:
//!   single-channel cursors and composite multi-channel cursors, parsed strictly.
//! - [`event`]: the event model: payload normalisation and what a publish carries.
//! - [`sse`]: `text/event-stream` framing of events and control frames.
//! - [`metric_names`]: every metric name and its fixed label values.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cursor;
pub mod event;
pub mod id;
pub mod metric_names;
pub mod name;
pub mod sse;

pub use cursor::{ChannelSet, CompositeCursor, Cursor, CursorError, Position, StartFrom};
pub use event::{Data, DataError, DataKind, InvalidJson, NewEvent};
pub use id::{EntryId, Epoch};
pub use name::{ChannelName, EventType, NameError};
