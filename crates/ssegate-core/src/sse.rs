//! `text/event-stream` framing.
//!
//! An event is encoded once per node into an [`EncodedEvent`]: the complete frame for a
//! single-channel stream (`id:` line included) whose tail, the body without the `id:` line,
//! is what a multi-channel stream writes after its own composite `id:` line. Both are
//! slices of one shared buffer, so every connection gets the same bytes without a copy.
//!
//! Data lines: the data is split at every CRLF, CR and LF, each piece becoming its own
//! `data:` line, so a client's `data` is the published text with line breaks normalised to
//! LF. An empty string is one empty `data:` line, which WHATWG parsers dispatch as an
//! event with empty data.

use bytes::{BufMut, Bytes, BytesMut};

use crate::metric_names::LabelValue;

use crate::cursor::Position;
use crate::name::EventType;

/// The event type of the gap signal.
pub const SYNC_REQUIRED: &str = "sync-required";
/// A comment heartbeat: ignored by clients, keeps proxies and NATs from timing out.
pub const HEARTBEAT: &[u8] = b": hb\n\n";

/// An event encoded for the wire once, shared by every connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedEvent {
    frame: Bytes,
    body_at: usize,
}

impl EncodedEvent {
    /// Encodes `id: <position>`, `event: <type>` when given, and the data lines.
    pub fn new(position: Position, event_type: Option<&EventType>, data: &str) -> Self {
        let mut buf = BytesMut::with_capacity(48 + data.len() + 16);
        buf.put_slice(b"id: ");
        push_fmt(&mut buf, format_args!("{position}"));
        buf.put_u8(b'\n');
        let body_at = buf.len();
        write_body(&mut buf, event_type.map(EventType::as_str), data);
        Self {
            frame: buf.freeze(),
            body_at,
        }
    }

    /// The whole frame, as a single-channel stream sends it.
    pub fn frame(&self) -> &Bytes {
        &self.frame
    }

    /// Everything after the `id:` line, for streams that write their own id.
    pub fn body(&self) -> Bytes {
        self.frame.slice(self.body_at..)
    }

    /// The body without copying into a new allocation, as a slice.
    pub fn body_slice(&self) -> &[u8] {
        &self.frame[self.body_at..]
    }
}

fn push_fmt(buf: &mut BytesMut, args: std::fmt::Arguments<'_>) {
    use std::fmt::Write;
    struct W<'a>(&'a mut BytesMut);
    impl Write for W<'_> {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            self.0.put_slice(s.as_bytes());
            Ok(())
        }
    }
    // Writing into memory cannot fail.
    let _ = W(buf).write_fmt(args);
}

/// Writes `event:` (when given), the `data:` lines and the terminating blank line.
pub fn write_body(buf: &mut BytesMut, event_type: Option<&str>, data: &str) {
    if let Some(t) = event_type {
        buf.put_slice(b"event: ");
        buf.put_slice(t.as_bytes());
        buf.put_u8(b'\n');
    }
    write_data_lines(buf, data);
    buf.put_u8(b'\n');
}

/// Writes one `data:` line per line of `data` (split at CRLF, CR or LF).
pub fn write_data_lines(buf: &mut BytesMut, data: &str) {
    let bytes = data.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\n' => {
                put_data_line(buf, &bytes[start..i]);
                i += 1;
                start = i;
            }
            b'\r' => {
                put_data_line(buf, &bytes[start..i]);
                i += if bytes.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                start = i;
            }
            _ => i += 1,
        }
    }
    put_data_line(buf, &bytes[start..]);
}

fn put_data_line(buf: &mut BytesMut, line: &[u8]) {
    if line.is_empty() {
        buf.put_slice(b"data:\n");
    } else {
        buf.put_slice(b"data: ");
        buf.put_slice(line);
        buf.put_u8(b'\n');
    }
}

/// The first frame of a stream: `retry:` and the id-only event that sets the client's
/// last event id without dispatching anything.
pub fn open_frame(retry_ms: u64, id: &str) -> Bytes {
    let mut buf = BytesMut::with_capacity(24 + id.len());
    push_fmt(&mut buf, format_args!("retry: {retry_ms}\nid: {id}\n\n"));
    buf.freeze()
}

/// A frame with only `retry:`: the last thing a refused or drained stream sends.
pub fn retry_frame(retry_ms: u64) -> Bytes {
    let mut buf = BytesMut::with_capacity(20);
    push_fmt(&mut buf, format_args!("retry: {retry_ms}\n\n"));
    buf.freeze()
}

/// The last frame of a stream whose token expired: the client should fetch a new token.
pub fn token_expired_frame() -> Bytes {
    Bytes::from_static(b"event: token-expired\ndata: {\"reason\":\"token_expired\"}\n\n")
}

/// Why a stream had to skip events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncReason {
    /// Events after the cursor were trimmed or expired (or the cursor is ahead of the
    /// history the store still has).
    HistoryTrimmed,
    /// The cursor comes from another epoch of the history store.
    EpochChanged,
}

impl crate::metric_names::LabelValue for SyncReason {
    const LABEL: &'static str = "reason";
    const ALL: &'static [Self] = &[Self::HistoryTrimmed, Self::EpochChanged];

    fn as_str(self) -> &'static str {
        match self {
            Self::HistoryTrimmed => "history_trimmed",
            Self::EpochChanged => "epoch_changed",
        }
    }
}

/// `event: sync-required` for one channel, with the id from which the stream continues.
pub fn sync_required_frame(id: &str, channel: &str, reason: SyncReason) -> Bytes {
    let mut buf = BytesMut::with_capacity(80 + id.len() + channel.len());
    // Channel names need no JSON escaping: their alphabet is [A-Za-z0-9_.:-].
    push_fmt(
        &mut buf,
        format_args!(
            "id: {id}\nevent: {SYNC_REQUIRED}\ndata: {{\"channel\":\"{channel}\",\"reason\":\"{}\"}}\n\n",
            reason.as_str()
        ),
    );
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::EntryId;

    fn body(data: &str) -> String {
        let mut b = BytesMut::new();
        write_body(&mut b, None, data);
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[test]
    fn multi_line_data_is_split_at_every_line_break() {
        assert_eq!(body("a\nb"), "data: a\ndata: b\n\n");
        assert_eq!(body("a\r\nb"), "data: a\ndata: b\n\n");
        assert_eq!(body("a\rb"), "data: a\ndata: b\n\n");
        assert_eq!(body("a\r\rb"), "data: a\ndata:\ndata: b\n\n");
        assert_eq!(body("a\n"), "data: a\ndata:\n\n");
        assert_eq!(body("\n"), "data:\ndata:\n\n");
    }

    #[test]
    fn empty_and_unicode_data() {
        assert_eq!(body(""), "data:\n\n");
        assert_eq!(body("héllo ✓ 🚀"), "data: héllo ✓ 🚀\n\n");
        assert_eq!(body(" lead"), "data:  lead\n\n");
    }

    #[test]
    fn json_values_are_one_line() {
        let d = crate::event::Data::from_json(serde_json::json!({"a": "x\ny"}));
        assert_eq!(body(d.as_str()), "data: {\"a\":\"x\\ny\"}\n\n");
    }

    #[test]
    fn encoded_event_shares_its_body() {
        let p = Position {
            epoch: "k3x9p2qa".parse().unwrap(),
            id: EntryId::new(7, 1),
        };
        let t = EventType::new("greeting").unwrap();
        let e = EncodedEvent::new(p, Some(&t), "hi");
        assert_eq!(
            &e.frame()[..],
            b"id: k3x9p2qa-7-1\nevent: greeting\ndata: hi\n\n"
        );
        assert_eq!(&e.body()[..], b"event: greeting\ndata: hi\n\n");
        assert_eq!(
            e.body().as_ptr(),
            e.frame()[e.frame().len() - e.body().len()..].as_ptr()
        );
    }

    #[test]
    fn control_frames() {
        assert_eq!(
            &open_frame(3412, "x-1-0")[..],
            b"retry: 3412\nid: x-1-0\n\n"
        );
        assert_eq!(&retry_frame(10)[..], b"retry: 10\n\n");
        assert_eq!(
            &sync_required_frame("e-5-0", "news", SyncReason::HistoryTrimmed)[..],
            &b"id: e-5-0\nevent: sync-required\ndata: {\"channel\":\"news\",\"reason\":\"history_trimmed\"}\n\n"[..]
        );
    }
}
