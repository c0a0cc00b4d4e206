//! Cursor parsing: `Cursor::parse`, `CompositeCursor::parse`, `EntryId` and `Epoch`.
//!
//! Input: an optional first line with a comma-separated channel list (names that are not
//! valid are skipped; no first line means the set `a`), then the cursor text, e.g.
//! `news,alerts\nk3x9p2qa.1f0c33aa.1-0.0-0`.
//!
//! Invariants: nothing panics; whatever parses re-displays as exactly its input (parsing
//! is strict: one text per value); the error kinds match the input's shape; a composite
//! cursor that parses for one set is refused for a set of another size. Since a fuzzer
//! rarely guesses an FNV checksum, the text is also tried with its second `.` part
//! replaced by the set's real checksum, which reaches the accepting path.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ssegate_core::cursor::composite_string;
use ssegate_core::{
    ChannelName, ChannelSet, CompositeCursor, Cursor, CursorError, EntryId, Epoch, StartFrom,
};

fuzz_target!(|bytes: &[u8]| {
    let input = String::from_utf8_lossy(bytes);
    let (names, text) = input.split_once('\n').unwrap_or(("a", &input));
    let set = ChannelSet::new(
        names
            .split(',')
            .filter_map(|n| ChannelName::new(n).ok())
            .collect(),
    );

    check_single(text);
    check_composite(text, &set);
    check_pieces(text);

    // The same text with the set's real checksum in place of the second part.
    let mut parts: Vec<&str> = text.split('.').collect();
    if parts.len() >= 2 {
        let sum = format!("{:08x}", set.checksum());
        parts[1] = &sum;
        let patched = parts.join(".");
        check_composite(&patched, &set);
    }
});

fn check_single(text: &str) {
    match Cursor::parse(text) {
        Ok(Cursor::Zero) => {
            assert_eq!(text, "0");
            assert_eq!(Cursor::Zero.start(), StartFrom::Oldest);
        }
        Ok(Cursor::At(p)) => {
            assert_eq!(
                p.to_string(),
                text,
                "a single cursor re-displays as its text"
            );
            assert_eq!(Cursor::At(p).start(), StartFrom::After(p));
        }
        Err(CursorError::CompositeOnSingle) => assert!(text.contains('.'), "{text:?}"),
        Err(CursorError::Malformed) => assert!(!text.contains('.'), "{text:?}"),
        Err(e) => panic!("Cursor::parse({text:?}) gave {e:?}"),
    }
}

fn check_composite(text: &str, set: &ChannelSet) {
    let result = CompositeCursor::parse(text, set);
    match &result {
        Ok(CompositeCursor::Zero) => assert_eq!(text, "0"),
        Ok(CompositeCursor::At { epoch, ids }) => {
            assert_eq!(ids.len(), set.len());
            assert_eq!(
                composite_string(*epoch, set, ids.iter().copied()),
                text,
                "a composite cursor re-encodes as its text"
            );
            for (i, id) in ids.iter().enumerate() {
                assert_eq!(
                    result.as_ref().map(|c| c.start(i)),
                    Ok(StartFrom::After(ssegate_core::Position {
                        epoch: *epoch,
                        id: *id
                    }))
                );
            }
            // Out of range: the oldest position of the epoch, never a panic.
            let _ = result.as_ref().map(|c| c.start(ids.len()));

            // The same text for a set of another size is refused.
            let mut names = set.names().to_vec();
            let mut extra = 0u32;
            let bigger = loop {
                let name = ChannelName::new(&format!("fuzz-extra-{extra}")).expect("valid name");
                extra += 1;
                names.push(name);
                let bigger = ChannelSet::new(names.clone());
                if bigger.len() != set.len() {
                    break bigger;
                }
            };
            assert_eq!(
                CompositeCursor::parse(text, &bigger),
                Err(CursorError::ChannelSetMismatch)
            );
        }
        Err(CursorError::SingleOnComposite) => {
            assert!(!text.contains('.'));
            assert!(matches!(Cursor::parse(text), Ok(Cursor::At(_))), "{text:?}");
        }
        Err(CursorError::Malformed | CursorError::ChannelSetMismatch) => {
            if text != "0" && !text.contains('.') {
                // Without a '.', it is a single cursor or malformed.
                assert_eq!(result, Err(CursorError::Malformed));
                assert!(!matches!(Cursor::parse(text), Ok(Cursor::At(_))));
            }
        }
        Err(e) => panic!("CompositeCursor::parse({text:?}) gave {e:?}"),
    }
}

/// `EntryId` and `Epoch` on their own, on the whole text and on its pieces.
fn check_pieces(text: &str) {
    let pieces = std::iter::once(text)
        .chain(text.split('.'))
        .chain(text.split_once('-').map(|(_, rest)| rest));
    for piece in pieces {
        if let Ok(id) = piece.parse::<EntryId>() {
            assert_eq!(id.to_string(), piece, "an entry id re-displays as its text");
            let mut written = String::new();
            id.write_to(&mut written).expect("writing to a String");
            assert_eq!(written, piece);
        }
        if let Ok(epoch) = piece.parse::<Epoch>() {
            assert_eq!(epoch.as_str(), piece, "an epoch re-displays as its text");
            assert_eq!(epoch.to_string(), piece);
        }
    }
}
