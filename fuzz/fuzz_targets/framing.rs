//! The gateway's framing (`ssegate_core::sse`) read back by the client parser.
//!
//! Input: bytes 0..8 the epoch (each byte taken modulo its alphabet), 8..16 and 16..24 the
//! entry id's ms and seq, 24..32 a `retry:` value, 32..34 a cut point (little-endian),
//! byte 34 the length of the event type (0: none), then the type's bytes (each taken
//! modulo the name alphabet), then the data (invalid UTF-8 replaced by U+FFFD).
//!
//! Invariants: the frame of any published data parses, whole or cut anywhere, as exactly
//! one event with the position as its id, the type (or `message`) and the data with CRLF
//! and CR normalised to LF; a multi-channel stream's frame (its own `id:` line, then the
//! shared body) parses the same with its composite id; the stream-opening frame sets the
//! retry and the last event id without dispatching; a heartbeat is a comment.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ssegate_client::{Event, Item, Parser};
use ssegate_core::cursor::composite_string;
use ssegate_core::sse::{self, EncodedEvent};
use ssegate_core::{ChannelName, ChannelSet, EntryId, Epoch, EventType, Position};

#[derive(Debug)]
struct Input<'a> {
    epoch: [u8; 8],
    ms: u64,
    seq: u64,
    retry_ms: u64,
    cut: u16,
    event_type: Option<&'a [u8]>,
    data: String,
}

impl<'a> Input<'a> {
    fn decode(bytes: &'a [u8]) -> Option<Self> {
        let (epoch, rest) = bytes.split_first_chunk::<8>()?;
        let (ms, rest) = rest.split_first_chunk::<8>()?;
        let (seq, rest) = rest.split_first_chunk::<8>()?;
        let (retry_ms, rest) = rest.split_first_chunk::<8>()?;
        let (cut, rest) = rest.split_first_chunk::<2>()?;
        let (type_len, rest) = rest.split_first()?;
        let (event_type, data) = rest.split_at_checked(usize::from(*type_len))?;
        Some(Self {
            epoch: *epoch,
            ms: u64::from_le_bytes(*ms),
            seq: u64::from_le_bytes(*seq),
            retry_ms: u64::from_le_bytes(*retry_ms),
            cut: u16::from_le_bytes(*cut),
            event_type: (*type_len > 0).then_some(event_type),
            data: String::from_utf8_lossy(data).into_owned(),
        })
    }
}

const EPOCH_ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
const NAME_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-";

fuzz_target!(|bytes: &[u8]| {
    let Some(input) = Input::decode(bytes) else {
        return;
    };
    let epoch_text: String = input
        .epoch
        .iter()
        .map(|b| char::from(EPOCH_ALPHABET[usize::from(*b) % EPOCH_ALPHABET.len()]))
        .collect();
    let epoch: Epoch = epoch_text.parse().expect("valid epoch");
    let position = Position {
        epoch,
        id: EntryId::new(input.ms, input.seq),
    };
    let event_type = input.event_type.and_then(|raw| {
        let name: String = raw
            .iter()
            .take(64)
            .map(|b| char::from(NAME_ALPHABET[usize::from(*b) % NAME_ALPHABET.len()]))
            .collect();
        // Empty and reserved types are refused by the publish API: no frame has them.
        EventType::new(&name).ok()
    });
    let data = input.data.as_str();

    let expected = Event {
        id: position.to_string(),
        event: event_type
            .as_ref()
            .map_or("message", EventType::as_str)
            .to_owned(),
        data: data.replace("\r\n", "\n").replace('\r', "\n"),
    };

    // Single-channel frame: whole, cut at the fuzzed point, a byte at a time.
    let encoded = EncodedEvent::new(position, event_type.as_ref(), data);
    let frame = &encoded.frame()[..];
    let body = encoded.body();
    assert_eq!(&body[..], encoded.body_slice());
    let id_line = format!("id: {position}\n");
    assert_eq!(frame, [id_line.as_bytes(), &body[..]].concat().as_slice());
    let one = [Item::Event(expected.clone())];
    assert_eq!(parse([frame]), one);
    let cut = usize::from(input.cut) % (frame.len() + 1);
    assert_eq!(parse([&frame[..cut], &frame[cut..]]), one);
    assert_eq!(parse(frame.chunks(1)), one);

    // Multi-channel stream: its own composite `id:` line, then the shared body.
    let set = ChannelSet::new(vec![
        ChannelName::new("news").expect("valid name"),
        ChannelName::new("alerts").expect("valid name"),
    ]);
    let composite = composite_string(epoch, &set, [position.id, EntryId::ZERO]);
    let multi = [format!("id: {composite}\n").as_bytes(), &body[..]].concat();
    let cut = usize::from(input.cut) % (multi.len() + 1);
    assert_eq!(
        parse([&multi[..cut], &multi[cut..]]),
        [Item::Event(Event {
            id: composite,
            ..expected.clone()
        })]
    );

    // A stream as the gateway sends it: the opening frame, a heartbeat, the event.
    let open = sse::open_frame(input.retry_ms, &position.to_string());
    let stream = [&open[..], sse::HEARTBEAT, frame].concat();
    let cut = usize::from(input.cut) % (stream.len() + 1);
    assert_eq!(
        parse([&stream[..cut], &stream[cut..]]),
        [
            Item::Retry(input.retry_ms),
            Item::LastEventId(position.to_string()),
            Item::Comment(" hb".to_owned()),
            Item::Event(expected),
        ]
    );
});

fn parse<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Vec<Item> {
    let mut parser = Parser::new();
    let mut out = Vec::new();
    for chunk in chunks {
        parser.feed(chunk, &mut out);
    }
    out
}
