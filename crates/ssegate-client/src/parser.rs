//! Incremental `text/event-stream` parser following the WHATWG
//! [event stream interpretation] rules.
//!
//! The parser is push-based: feed it byte chunks as they arrive (split
//! anywhere, even inside a CRLF pair or a multi-byte UTF-8 character) and it
//! appends the resulting [`Item`]s to a caller-owned vector.
//!
//! Deviations from the letter of the spec, all deliberate:
//!
//! * [`Item::LastEventId`] is an extension: a dispatch that produces no event
//!   but had an `id:` field (an id-only block) or changed the last event ID
//!   string is reported, so tests can observe it.
//! * [`Item::Retry`] and [`Item::Comment`] surface fields the spec handles
//!   internally or ignores.
//! * The last event ID buffer of a new stream starts as the last event ID
//!   string instead of empty (see [`Parser::with_last_event_id`] and
//!   [`Parser::finish`]); this is what Chromium does, and it keeps the ID
//!   across reconnects when the new stream's first event carries no `id:`.
//! * Memory is bounded: a line (or one event's data) longer than the limit is
//!   dropped, together with the event it belongs to, and
//!   [`Parser::overflowed`] becomes `true`.
//!
//! [event stream interpretation]: https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation

use std::mem;

/// Default limit for a single line and for one event's data: 16 MiB.
pub const DEFAULT_MAX_LINE: usize = 16 * 1024 * 1024;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// A dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The last event ID string at dispatch time (may come from an earlier event).
    pub id: String,
    /// The event type; `"message"` when the block had no (or an empty) `event:` field.
    pub event: String,
    /// The data lines joined with `\n`.
    pub data: String,
}

/// One thing the parser found in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A complete event (a block with at least one `data` field).
    Event(Event),
    /// A comment line; the text after the `:`, exactly (leading space kept).
    Comment(String),
    /// A valid `retry:` field, in milliseconds (saturating on overflow).
    Retry(u64),
    /// A dispatch without an event carried an `id:` field or changed the last
    /// event ID string (an id-only block).
    LastEventId(String),
}

/// Incremental WHATWG event-stream parser. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Parser {
    /// Bytes of the current, not yet terminated line.
    line: Vec<u8>,
    /// No line has been completed yet, so a leading BOM may still be stripped.
    at_start: bool,
    /// The previous chunk ended with CR; an LF starting the next one belongs to it.
    pending_cr: bool,
    /// The current line overflowed and is being skipped until its end.
    skipping_line: bool,
    /// The current event lost data to an overflow and must not be dispatched.
    discard_event: bool,
    /// The current block had an `id:` field (for [`Item::LastEventId`]).
    block_had_id: bool,
    overflowed: bool,
    max_line: usize,
    data: String,
    event_type: String,
    id_buffer: String,
    last_event_id: String,
}

impl Default for Parser {
    fn default() -> Self {
        Self::new()
    }
}

impl Parser {
    /// A parser with the default line limit ([`DEFAULT_MAX_LINE`]).
    pub fn new() -> Self {
        Self::with_max_line(DEFAULT_MAX_LINE)
    }

    /// A parser that drops lines (and event data) longer than `max_line` bytes.
    pub fn with_max_line(max_line: usize) -> Self {
        Self {
            line: Vec::new(),
            at_start: true,
            pending_cr: false,
            skipping_line: false,
            discard_event: false,
            block_had_id: false,
            overflowed: false,
            max_line,
            data: String::new(),
            event_type: String::new(),
            id_buffer: String::new(),
            last_event_id: String::new(),
        }
    }

    /// Seeds the last event ID string (and buffer), e.g. with the ID that was
    /// sent as `Last-Event-ID` when this stream was requested.
    #[must_use]
    pub fn with_last_event_id(mut self, id: impl Into<String>) -> Self {
        self.last_event_id = id.into();
        self.id_buffer.clone_from(&self.last_event_id);
        self
    }

    /// The last event ID string: the ID buffer as of the last dispatch.
    pub fn last_event_id(&self) -> &str {
        &self.last_event_id
    }

    /// Whether a line or an event's data ever exceeded the limit (sticky).
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// Parses `chunk`, appending every completed item to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<Item>) {
        let mut rest = chunk;
        if self.pending_cr {
            match rest.first() {
                None => return,
                Some(b'\n') => rest = &rest[1..],
                Some(_) => {}
            }
            self.pending_cr = false;
        }
        while let Some(pos) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.end_line(&rest[..pos], out);
            let terminator = rest[pos];
            rest = &rest[pos + 1..];
            if terminator == b'\r' {
                match rest.first() {
                    Some(b'\n') => rest = &rest[1..],
                    Some(_) => {}
                    None => self.pending_cr = true,
                }
            }
        }
        self.append(rest);
    }

    /// Signals the end of the stream: a partial line or event is discarded
    /// (the spec never dispatches an unterminated event). The ID buffer falls
    /// back to the last event ID string, and the parser is ready for a new
    /// stream (a BOM is stripped again). [`overflowed`](Self::overflowed) stays.
    pub fn finish(&mut self) {
        self.line.clear();
        self.at_start = true;
        self.pending_cr = false;
        self.skipping_line = false;
        self.discard_event = false;
        self.block_had_id = false;
        self.data.clear();
        self.event_type.clear();
        self.id_buffer.clone_from(&self.last_event_id);
    }

    fn overflow(&mut self) {
        self.overflowed = true;
        self.discard_event = true;
        self.data = String::new();
        tracing::warn!(
            max = self.max_line,
            "event stream line too long; dropping it"
        );
    }

    /// Buffers part of an unterminated line, enforcing the limit.
    fn append(&mut self, bytes: &[u8]) {
        if self.skipping_line || bytes.is_empty() {
            return;
        }
        if self.line.len() + bytes.len() > self.max_line {
            self.line = Vec::new();
            self.skipping_line = true;
            self.overflow();
        } else {
            self.line.extend_from_slice(bytes);
        }
    }

    /// Handles a line terminator; `tail` is the part of the line in this chunk.
    fn end_line(&mut self, tail: &[u8], out: &mut Vec<Item>) {
        if self.line.is_empty() && !self.skipping_line && tail.len() <= self.max_line {
            // Fast path: the whole line is in this chunk, no copy needed.
            self.process_line(tail, out);
            return;
        }
        self.append(tail);
        if self.skipping_line {
            self.skipping_line = false;
            self.at_start = false;
            return;
        }
        let line = mem::take(&mut self.line);
        self.process_line(&line, out);
        self.line = line;
        self.line.clear();
    }

    fn process_line(&mut self, mut line: &[u8], out: &mut Vec<Item>) {
        if self.at_start {
            self.at_start = false;
            line = line.strip_prefix(BOM).unwrap_or(line);
        }
        let text = String::from_utf8_lossy(line);
        if text.is_empty() {
            self.dispatch(out);
        } else if let Some(comment) = text.strip_prefix(':') {
            out.push(Item::Comment(comment.to_owned()));
        } else if let Some((name, value)) = text.split_once(':') {
            self.field(name, value.strip_prefix(' ').unwrap_or(value), out);
        } else {
            self.field(&text, "", out);
        }
    }

    fn field(&mut self, name: &str, value: &str, out: &mut Vec<Item>) {
        match name {
            "event" => {
                self.event_type.clear();
                self.event_type.push_str(value);
            }
            "data" => {
                if self.discard_event {
                    return;
                }
                if self.data.len() + value.len() + 1 > self.max_line {
                    self.overflow();
                    return;
                }
                self.data.push_str(value);
                self.data.push('\n');
            }
            // An ID containing NUL is ignored.
            "id" if !value.contains('\0') => {
                self.id_buffer.clear();
                self.id_buffer.push_str(value);
                self.block_had_id = true;
            }
            // Only all-ASCII-digit values count; saturate rather than overflow.
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                out.push(Item::Retry(value.parse().unwrap_or(u64::MAX)));
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<Item>) {
        let changed = self.last_event_id != self.id_buffer || self.block_had_id;
        self.block_had_id = false;
        if changed {
            self.last_event_id.clone_from(&self.id_buffer);
        }
        if self.data.is_empty() || self.discard_event {
            self.discard_event = false;
            self.data.clear();
            self.event_type.clear();
            if changed {
                out.push(Item::LastEventId(self.last_event_id.clone()));
            }
            return;
        }
        if self.data.ends_with('\n') {
            self.data.pop();
        }
        let event = if self.event_type.is_empty() {
            "message".to_owned()
        } else {
            mem::take(&mut self.event_type)
        };
        out.push(Item::Event(Event {
            id: self.last_event_id.clone(),
            event,
            data: mem::take(&mut self.data),
        }));
    }
}

#[cfg(test)]
mod tests;
