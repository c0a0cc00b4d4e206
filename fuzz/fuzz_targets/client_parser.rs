//! The SSE client parser (`ssegate_client::Parser`), fed arbitrary bytes in arbitrary
//! chunks.
//!
//! Input: a 4-byte header, then the stream. Header byte 0 is a small line limit (0..=255
//! bytes), bytes 1..4 seed the chunk sizes.
//!
//! Invariants, for the small limit and for a 4096-byte one:
//! - nothing panics;
//! - the stream fed in one chunk, a byte at a time, cut after every CR (so that a CRLF
//!   pair straddles two chunks), and in pseudo-random chunks (with empty chunks among
//!   them) gives the same items, the same last event id and the same `overflowed()`, also
//!   after a closing blank line and after `finish()` and a new stream;
//! - memory is bounded by the limit: an event's data is shorter than the limit, any other
//!   text at most 3 times the limit (each invalid byte becomes a 3-byte U+FFFD);
//! - a valid UTF-8 stream no longer than the limit never overflows;
//! - no item text carries a line break; ids never carry NUL; event types are never empty.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ssegate_client::{Item, Parser};

const LIMIT: usize = 4096;

fuzz_target!(|bytes: &[u8]| {
    let Some((header, stream)) = bytes.split_first_chunk::<4>() else {
        return;
    };
    let seed = u32::from_le_bytes([header[1], header[2], header[3], 0x5a]);
    for limit in [usize::from(header[0]), LIMIT] {
        check(stream, limit, seed);
    }
});

/// What one way of feeding the stream produced.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    items: Vec<Item>,
    last_event_id: String,
    overflowed: bool,
    /// After a closing blank line.
    flushed: Vec<Item>,
    /// After `finish()` and a short new stream.
    restarted: Vec<Item>,
    restarted_last_event_id: String,
}

fn run<'a>(limit: usize, chunks: impl IntoIterator<Item = &'a [u8]>) -> Outcome {
    let mut parser = Parser::with_max_line(limit);
    let mut items = Vec::new();
    for chunk in chunks {
        parser.feed(chunk, &mut items);
    }
    let last_event_id = parser.last_event_id().to_owned();
    let overflowed = parser.overflowed();
    let mut flushed = Vec::new();
    parser.feed(b"\n\n", &mut flushed);
    parser.finish();
    let mut restarted = Vec::new();
    parser.feed(b"\xEF\xBB\xBFdata:x\r\n\r\n", &mut restarted);
    Outcome {
        items,
        last_event_id,
        overflowed,
        flushed,
        restarted,
        restarted_last_event_id: parser.last_event_id().to_owned(),
    }
}

fn check(stream: &[u8], limit: usize, seed: u32) {
    let whole = run(limit, [stream]);
    check_bounds(&whole, limit);
    if limit >= stream.len() && std::str::from_utf8(stream).is_ok() {
        assert!(!whole.overflowed, "overflowed within the limit of {limit}");
    }

    let bytewise = run(limit, stream.chunks(1));
    assert_eq!(whole, bytewise, "one chunk vs a byte at a time");

    let after_cr = run(limit, stream.split_inclusive(|&b| b == b'\r'));
    assert_eq!(whole, after_cr, "one chunk vs cut after every CR");

    let random = run(limit, random_chunks(stream, seed));
    assert_eq!(whole, random, "one chunk vs pseudo-random chunks");
}

/// Splits `stream` into chunks of 0..=max bytes, xorshift-driven.
fn random_chunks(stream: &[u8], seed: u32) -> Vec<&[u8]> {
    let mut state = seed | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    };
    let max = (next() % 64 + 1) as usize;
    let mut chunks = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let n = (next() as usize % (max + 1)).min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        chunks.push(chunk);
        rest = tail;
    }
    chunks.push(&[]);
    chunks
}

fn check_bounds(outcome: &Outcome, limit: usize) {
    let text_bound = limit.saturating_mul(3);
    let items = outcome.items.iter().chain(&outcome.flushed);
    for item in items {
        match item {
            Item::Event(e) => {
                assert!(e.data.len() < limit, "data of {} bytes", e.data.len());
                assert!(!e.data.contains('\r'));
                assert!(e.id.len() <= text_bound && e.event.len() <= text_bound);
                assert!(!e.event.is_empty());
                for s in [&e.id, &e.event] {
                    assert!(!s.contains(['\r', '\n']), "{s:?}");
                }
                assert!(!e.id.contains('\0'));
            }
            Item::Comment(c) => {
                assert!(c.len() <= text_bound);
                assert!(!c.contains(['\r', '\n']), "{c:?}");
            }
            Item::LastEventId(id) => {
                assert!(id.len() <= text_bound);
                assert!(!id.contains(['\r', '\n', '\0']), "{id:?}");
            }
            Item::Retry(_) => {}
        }
    }
    assert!(outcome.last_event_id.len() <= text_bound);
}
