//! An event as a broker stores it and hands it to connections.

use ssegate_core::sse::EncodedEvent;
use ssegate_core::{ChannelName, Data, EntryId, Epoch, EventType, Position};

/// A stored event, encoded for the wire once (per node) and shared by every connection
/// through an `Arc`: the hub ring, the history and every subscriber point at one copy.
#[derive(Debug)]
pub struct StoredEvent {
    /// The epoch of the store that numbered it: a stream that sees a new epoch on a live
    /// event knows the store started over.
    pub epoch: Epoch,
    pub channel: ChannelName,
    pub id: EntryId,
    /// The entry id that preceded this one in its channel (`0-0` for the first). A stream
    /// writes a live event only if `prev` is its cursor; otherwise it missed something
    /// (a dropped pub/sub message, a subscription not yet active) and catches up from
    /// history first. This makes live delivery self-checking.
    pub prev: EntryId,
    pub event_type: Option<EventType>,
    pub data: Data,
    /// When the broker accepted the event (ms since the Unix epoch); carried so that
    /// history can report it and delivery latency can be measured.
    pub published_at_ms: u64,
    /// The frame as a single-channel stream sends it; its body serves multi-channel ones.
    pub encoded: EncodedEvent,
    /// The publish's `traceparent`, when it was traced.
    pub trace: Option<Box<str>>,
}

impl StoredEvent {
    pub fn with_trace(mut self, trace: Option<&str>) -> Self {
        self.trace = trace.filter(|t| !t.is_empty()).map(Into::into);
        self
    }

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
}
