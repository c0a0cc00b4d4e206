//! An event as a broker stores it and hands it to connections.

use std::borrow::Cow;

use bytes::Bytes;
use ssegate_core::sse::EncodedEvent;
use ssegate_core::{ChannelName, Data, DataKind, EntryId, Epoch, EventType, Position};

/// A stored event, encoded for the wire once (per node) and shared by every connection
/// through an `Arc`: the hub ring, the history and every subscriber point at one copy.
/// Its data is kept once too: inside the encoded frame (see [`StoredData`]).
#[derive(Debug)]
pub struct StoredEvent {
    /// The epoch of the store that numbered it: a stream that sees a new epoch on a live
    /// event knows the store started over.
    pub epoch: Epoch,
    /// The channel it was published to.
    pub channel: ChannelName,
    /// Its entry id in the channel's history.
    pub id: EntryId,
    /// The entry id that preceded this one in its channel (`0-0` for the first). A stream
    /// writes a live event only if `prev` is its cursor; otherwise it missed something
    /// (a dropped pub/sub message, a subscription not yet active) and catches up from
    /// history first. This makes live delivery self-checking.
    pub prev: EntryId,
    /// The `event:` type, when the publisher gave one.
    pub event_type: Option<EventType>,
    /// The payload, as history answers it.
    pub data: StoredData,
    /// When the broker accepted the event (ms since the Unix epoch); carried so that
    /// history can report it and delivery latency can be measured.
    pub published_at_ms: u64,
    /// The frame as a single-channel stream sends it; its body serves multi-channel ones.
    pub encoded: EncodedEvent,
    /// The publish's `traceparent`, when it was traced.
    pub trace: Option<Box<str>>,
}

impl StoredEvent {
    /// Attaches the publish's `traceparent`; an empty one (a store entry or live message
    /// without one) is none.
    pub fn with_trace(mut self, trace: Option<&str>) -> Self {
        self.trace = trace.filter(|t| !t.is_empty()).map(Into::into);
        self
    }

    /// An event as a store numbered it, framed once here for every stream of the node.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        epoch: Epoch,
        channel: ChannelName,
        id: EntryId,
        prev: EntryId,
        event_type: Option<EventType>,
        data: Data,
        published_at_ms: u64,
    ) -> Self {
        let encoded = EncodedEvent::new(Position { epoch, id }, event_type.as_ref(), data.as_str());
        let data = StoredData::new(data, &encoded, event_type.as_ref());
        Self {
            epoch,
            channel,
            id,
            prev,
            event_type,
            data,
            published_at_ms,
            encoded,
            trace: None,
        }
    }

    /// The heap bytes this event keeps alive: its frame, its data where the frame does not
    /// hold it, its trace context. (Not its fixed-size parts, which a store adds itself.)
    pub fn heap_bytes(&self) -> usize {
        self.encoded.frame().len()
            + self.data.own_bytes()
            + self.trace.as_ref().map_or(0, |t| t.len())
    }

    /// What keeping this event costs a store that counts it: its heap bytes, its own
    /// size and about what an allocation and a container slot add. The one measure of
    /// an event for every node-wide byte budget (history, recent events).
    pub fn held_bytes(&self) -> usize {
        self.heap_bytes() + EVENT_OVERHEAD
    }
}

/// The fixed part of [`StoredEvent::held_bytes`].
const EVENT_OVERHEAD: usize = std::mem::size_of::<StoredEvent>() + 96;

/// The data of a [`StoredEvent`], kept once. Framing writes the data verbatim into the
/// frame's `data:` lines, so the text is read back from the frame (a slice of the same
/// buffer, no copy) whenever that is exact: always, unless the text has a CR (framing
/// normalises CR and CRLF to LF), in which case the text is kept apart.
#[derive(Debug, Clone)]
pub struct StoredData {
    kind: DataKind,
    repr: Repr,
}

#[derive(Debug, Clone)]
enum Repr {
    /// The text, a slice of the frame (it has no line break).
    Line(Bytes),
    /// The frame's `data:` lines (a slice of the frame); the text is their values joined
    /// with LF.
    Lines(Bytes),
    /// The text, kept apart.
    Own(Box<str>),
}

impl StoredData {
    fn new(data: Data, encoded: &EncodedEvent, event_type: Option<&EventType>) -> Self {
        let kind = data.kind();
        let text = data.as_str();
        let frame = encoded.frame();
        let body = encoded.body_slice();
        // The body is `event: <type>\n` (when typed), the data lines, a blank line.
        let start = frame.len() - body.len() + event_type.map_or(0, |t| 8 + t.as_str().len());
        let end = frame.len() - 1;
        let repr = match frame.get(start..end) {
            Some(lines) if !text.contains('\r') && data_lines(lines).eq(text.split('\n')) => {
                if text.contains('\n') {
                    Repr::Lines(frame.slice(start..end))
                } else {
                    // `data: <text>\n`, or `data:\n` for an empty text.
                    let from = (start + 6).min(end - 1);
                    Repr::Line(frame.slice(from..end - 1))
                }
            }
            _ => Repr::Own(text.into()),
        };
        Self { kind, repr }
    }

    /// How the data was given (JSON string or other value), for history replies.
    pub fn kind(&self) -> DataKind {
        self.kind
    }

    /// The text as published (what [`Data::as_str`] gave).
    pub fn as_str(&self) -> Cow<'_, str> {
        match &self.repr {
            Repr::Line(b) => Cow::Borrowed(std::str::from_utf8(b).unwrap_or_default()),
            Repr::Lines(b) => {
                let mut text = String::with_capacity(b.len());
                for (i, line) in data_lines(b).enumerate() {
                    if i > 0 {
                        text.push('\n');
                    }
                    text.push_str(line);
                }
                Cow::Owned(text)
            }
            Repr::Own(s) => Cow::Borrowed(s),
        }
    }

    /// The data again, as published.
    pub fn to_data(&self) -> Data {
        Data::from_stored(self.kind, self.as_str().into_owned())
    }

    /// The data as a JSON value (history responses), as [`Data::to_json`] gives it.
    pub fn to_json(&self) -> serde_json::Value {
        self.to_data().to_json()
    }

    /// Bytes kept besides the frame.
    fn own_bytes(&self) -> usize {
        match &self.repr {
            Repr::Own(s) => s.len(),
            Repr::Line(_) | Repr::Lines(_) => 0,
        }
    }
}

/// Serialises as [`Data`] does (a string, or the JSON text as published).
impl serde::Serialize for StoredData {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_data().serialize(s)
    }
}

/// The values of `data:` lines (`data: <value>\n`, or `data:\n` for an empty value); a
/// line that is not a `data:` line yields a value no text can split into (a CR), so that
/// a comparison with the text fails.
fn data_lines(lines: &[u8]) -> impl Iterator<Item = &str> {
    let lines = lines.strip_suffix(b"\n").unwrap_or(b"\r");
    lines.split(|&b| b == b'\n').map(|line| {
        let value = match line {
            b"data:" => Some(&b""[..]),
            _ => line.strip_prefix(b"data: "),
        };
        value
            .and_then(|v| std::str::from_utf8(v).ok())
            .unwrap_or("\r")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stored(text: &str, event_type: Option<&str>) -> StoredEvent {
        StoredEvent::new(
            "k3x9p2qa".parse().unwrap(),
            ChannelName::new("c").unwrap(),
            EntryId::new(7, 1),
            EntryId::ZERO,
            event_type.map(|t| EventType::new(t).unwrap()),
            Data::text(text.to_owned()),
            7,
        )
    }

    #[test]
    fn data_is_kept_in_the_frame_unless_it_has_a_cr() {
        for (text, own) in [
            ("", false),
            ("hello", false),
            (" lead", false),
            ("a\nb", false),
            ("a\n", false),
            ("\n", false),
            ("data: x\n\ndata:", false),
            ("a\r\nb", true),
            ("a\rb", true),
        ] {
            for t in [None, Some("update")] {
                let ev = stored(text, t);
                assert_eq!(ev.data.as_str(), text, "{text:?} {t:?}");
                assert_eq!(ev.data.own_bytes() > 0, own, "{text:?} {t:?}");
                assert_eq!(
                    ev.heap_bytes(),
                    ev.encoded.frame().len() + ev.data.own_bytes()
                );
            }
        }
        let ev = stored("hello", None);
        let Repr::Line(b) = &ev.data.repr else {
            panic!("{:?}", ev.data.repr)
        };
        let frame = ev.encoded.frame();
        assert!(
            frame.as_ptr_range().contains(&b.as_ptr()),
            "a slice of the frame"
        );
    }

    #[test]
    fn json_data_keeps_its_kind() {
        let data = Data::from_json(serde_json::json!({"a": [1, "x\ny"]}));
        let ev = StoredEvent::new(
            Epoch::random(),
            ChannelName::new("c").unwrap(),
            EntryId::new(1, 0),
            EntryId::ZERO,
            None,
            data.clone(),
            1,
        );
        assert_eq!(ev.data.kind(), DataKind::Json);
        assert_eq!(ev.data.to_data(), data);
        assert_eq!(ev.data.to_json(), data.to_json());
    }

    proptest! {
        #[test]
        fn any_text_round_trips(text in "(?s).{0,200}", typed in any::<bool>()) {
            let ev = stored(&text, typed.then_some("t"));
            prop_assert_eq!(ev.data.as_str(), text.as_str());
        }

        #[test]
        fn line_heavy_text_round_trips(text in "[a\n\r ]{0,40}") {
            let ev = stored(&text, None);
            prop_assert_eq!(ev.data.as_str(), text.as_str());
            prop_assert_eq!(ev.data.own_bytes() > 0, text.contains('\r'));
        }
    }
}
