//! Cursors: the event ids that clients see, store, and send back as `Last-Event-ID`.
//!
//! Two forms, both opaque to clients (documented in `docs/api.md`):
//!
//! - single-channel: `<epoch>-<ms>-<seq>`, e.g. `k3x9p2qa-1732179000123-0`;
//! - composite (multi-channel streams): `<epoch>.<set>.<id>.<id>...`: the epoch, the
//!   8-hex-digit checksum of the canonical channel set, then the last delivered entry id
//!   of every channel in canonical (sorted) order, e.g.
//!   `k3x9p2qa.1f0c33aa.1732179000123-0.0-0`.
//!
//! The literal `0` is accepted in both places and means "from the oldest retained event".
//! Everything else is parsed strictly: a cursor that does not match is an error (a 400),
//! never a silent fresh start.

use std::fmt;

use crate::id::{EntryId, Epoch};
use crate::name::ChannelName;

/// Why a cursor was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    /// Not a cursor of either form.
    #[error("malformed event id")]
    Malformed,
    /// A composite cursor whose checksum or channel count is not the request's channel
    /// set: it was written for another stream and would be misapplied.
    #[error("event id belongs to a different set of channels")]
    ChannelSetMismatch,
    /// A composite cursor sent to a single-channel stream.
    #[error("a multi-channel event id cannot resume a single-channel stream")]
    CompositeOnSingle,
    /// A single-channel cursor sent to a multi-channel stream.
    #[error("a single-channel event id cannot resume a multi-channel stream")]
    SingleOnComposite,
}

/// Where a stream starts for one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// No cursor: start at the channel's current end (only new events).
    Now,
    /// `0`: from the oldest retained event.
    Oldest,
    /// After this entry, if the epoch is still the store's epoch.
    After(Position),
}

/// A position in one channel's history together with the epoch it belongs to. Its text
/// form is the single-channel event id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The history store the entry id belongs to.
    pub epoch: Epoch,
    /// The last entry delivered (the stream continues after it).
    pub id: EntryId,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.epoch, self.id.ms, self.id.seq)
    }
}

/// A parsed single-channel cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    /// `0`: from the oldest retained event.
    Zero,
    /// After this position.
    At(Position),
}

impl Cursor {
    /// Parses a single-channel cursor strictly.
    pub fn parse(s: &str) -> Result<Self, CursorError> {
        if s == "0" {
            return Ok(Self::Zero);
        }
        if s.contains('.') {
            return Err(CursorError::CompositeOnSingle);
        }
        let (epoch, rest) = s.split_once('-').ok_or(CursorError::Malformed)?;
        Ok(Self::At(Position {
            epoch: epoch.parse().map_err(|_| CursorError::Malformed)?,
            id: rest.parse().map_err(|_| CursorError::Malformed)?,
        }))
    }

    /// Where the stream starts for the channel.
    pub fn start(self) -> StartFrom {
        match self {
            Self::Zero => StartFrom::Oldest,
            Self::At(p) => StartFrom::After(p),
        }
    }
}

/// The canonical (sorted, de-duplicated) set of channels of a multi-channel stream,
/// with its checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelSet {
    names: Vec<ChannelName>,
    checksum: u32,
}

impl ChannelSet {
    /// Sorts and de-duplicates `names` and computes the set's checksum.
    pub fn new(mut names: Vec<ChannelName>) -> Self {
        names.sort();
        names.dedup();
        let checksum = checksum(&names);
        Self { names, checksum }
    }

    /// The channels in canonical order: the order of the ids in a composite cursor.
    pub fn names(&self) -> &[ChannelName] {
        &self.names
    }

    /// How many distinct channels.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// No channel at all (a request the caller refuses).
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// FNV-1a of the canonical names: the second part of a composite cursor, so a
    /// cursor replayed against another channel set is refused.
    pub fn checksum(&self) -> u32 {
        self.checksum
    }
}

/// Parses the channels of a multi-channel request: every `channel=` value is one name,
/// every `channels=` value a comma-separated list. The result is canonical (sorted,
/// de-duplicated); an empty result is the caller's to refuse.
pub fn parse_channel_list<'a>(
    single: impl IntoIterator<Item = &'a str>,
    lists: impl IntoIterator<Item = &'a str>,
) -> Result<ChannelSet, crate::name::NameError> {
    let mut names = Vec::new();
    for raw in single {
        names.push(ChannelName::new(raw)?);
    }
    for list in lists {
        for raw in list.split(',') {
            names.push(ChannelName::new(raw)?);
        }
    }
    Ok(ChannelSet::new(names))
}

/// FNV-1a (32 bit) over the names joined by `\n`: stable across nodes, versions and
/// platforms, which a std `Hasher` is not guaranteed to be.
fn checksum(names: &[ChannelName]) -> u32 {
    const OFFSET: u32 = 0x811c_9dc5;
    const PRIME: u32 = 0x0100_0193;
    let mut h = OFFSET;
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            h = (h ^ u32::from(b'\n')).wrapping_mul(PRIME);
        }
        for b in name.as_str().bytes() {
            h = (h ^ u32::from(b)).wrapping_mul(PRIME);
        }
    }
    h
}

/// A parsed composite cursor for a known channel set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompositeCursor {
    /// `0`: every channel from its oldest retained event.
    Zero,
    /// One entry id per channel, in the set's canonical order.
    At {
        /// The history store the ids belong to (one for every channel).
        epoch: Epoch,
        /// The last delivered entry of each channel.
        ids: Vec<EntryId>,
    },
}

impl CompositeCursor {
    /// Parses a composite cursor strictly, against the channel set of the request.
    pub fn parse(s: &str, set: &ChannelSet) -> Result<Self, CursorError> {
        if s == "0" {
            return Ok(Self::Zero);
        }
        let mut parts = s.split('.');
        let epoch = parts.next().unwrap_or_default();
        let Some(sum) = parts.next() else {
            // No '.' at all: a single-channel id, if it parses as one.
            return Err(match Cursor::parse(s) {
                Ok(_) => CursorError::SingleOnComposite,
                Err(_) => CursorError::Malformed,
            });
        };
        let epoch: Epoch = epoch.parse().map_err(|_| CursorError::Malformed)?;
        if sum.len() != 8 || !sum.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(CursorError::Malformed);
        }
        let sum = u32::from_str_radix(sum, 16).map_err(|_| CursorError::Malformed)?;
        let ids = parts
            .map(|p| p.parse::<EntryId>().map_err(|_| CursorError::Malformed))
            .collect::<Result<Vec<_>, _>>()?;
        if ids.is_empty() {
            return Err(CursorError::Malformed);
        }
        if sum != set.checksum() || ids.len() != set.len() {
            return Err(CursorError::ChannelSetMismatch);
        }
        Ok(Self::At { epoch, ids })
    }

    /// The start of channel number `i` (in canonical order).
    pub fn start(&self, i: usize) -> StartFrom {
        match self {
            Self::Zero => StartFrom::Oldest,
            Self::At { epoch, ids } => StartFrom::After(Position {
                epoch: *epoch,
                id: ids.get(i).copied().unwrap_or(EntryId::ZERO),
            }),
        }
    }
}

/// Writes a composite cursor: the epoch, the set's checksum, and one id per channel.
pub fn write_composite(
    out: &mut impl fmt::Write,
    epoch: Epoch,
    set_checksum: u32,
    ids: impl IntoIterator<Item = EntryId>,
) -> fmt::Result {
    write!(out, "{epoch}.{set_checksum:08x}")?;
    for id in ids {
        out.write_char('.')?;
        id.write_to(out)?;
    }
    Ok(())
}

/// A composite cursor as a string.
pub fn composite_string(
    epoch: Epoch,
    set: &ChannelSet,
    ids: impl IntoIterator<Item = EntryId>,
) -> String {
    let mut s = String::with_capacity(20 + 24 * set.len());
    // Writing into a String cannot fail.
    let _ = write_composite(&mut s, epoch, set.checksum(), ids);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(names: &[&str]) -> ChannelSet {
        ChannelSet::new(names.iter().map(|n| ChannelName::new(n).unwrap()).collect())
    }

    #[test]
    fn single_cursor_forms() {
        let epoch: Epoch = "k3x9p2qa".parse().unwrap();
        let p = Position {
            epoch,
            id: EntryId::new(1_732_179_000_123, 0),
        };
        assert_eq!(p.to_string(), "k3x9p2qa-1732179000123-0");
        assert_eq!(Cursor::parse(&p.to_string()), Ok(Cursor::At(p)));
        assert_eq!(Cursor::parse("0"), Ok(Cursor::Zero));
        for bad in [
            "",
            "00",
            "k3x9p2qa",
            "k3x9p2qa-1",
            "k3x9p2qa-1-",
            "K3X9P2QA-1-0",
            "k3x9p2q-1-0",
            "k3x9p2qa-01-0",
            "k3x9p2qa-1-0-0",
            "k3x9p2qa--1-0",
            "null",
            "1-0",
        ] {
            assert_eq!(Cursor::parse(bad), Err(CursorError::Malformed), "{bad:?}");
        }
        assert_eq!(
            Cursor::parse("k3x9p2qa.1f0c33aa.1-0"),
            Err(CursorError::CompositeOnSingle)
        );
    }

    #[test]
    fn channel_lists_parse_both_forms() {
        let set = parse_channel_list(["b", "a"], ["c,a", "d"]).unwrap();
        let names: Vec<&str> = set.names().iter().map(ChannelName::as_str).collect();
        assert_eq!(names, ["a", "b", "c", "d"]);
        assert!(parse_channel_list([], ["a,,b"]).is_err());
        assert!(parse_channel_list(["a b"], []).is_err());
        assert!(parse_channel_list([], []).unwrap().is_empty());
    }

    #[test]
    fn channel_sets_are_canonical() {
        assert_eq!(set(&["b", "a", "b"]), set(&["a", "b"]));
        assert_eq!(set(&["a", "b"]).names().len(), 2);
        assert_ne!(set(&["a", "b"]).checksum(), set(&["a", "c"]).checksum());
        // Joining with a separator keeps ["ab"] and ["a","b"] apart.
        assert_ne!(set(&["ab"]).checksum(), set(&["a", "b"]).checksum());
    }

    #[test]
    fn composite_cursor_forms() {
        let s = set(&["news", "alerts"]);
        let epoch: Epoch = "k3x9p2qa".parse().unwrap();
        let text = composite_string(epoch, &s, [EntryId::new(5, 1), EntryId::ZERO]);
        assert!(text.starts_with("k3x9p2qa."));
        assert!(text.ends_with(".5-1.0-0"));
        assert_eq!(
            CompositeCursor::parse(&text, &s),
            Ok(CompositeCursor::At {
                epoch,
                ids: vec![EntryId::new(5, 1), EntryId::ZERO]
            })
        );
        assert_eq!(
            CompositeCursor::parse(&text, &set(&["news", "other"])),
            Err(CursorError::ChannelSetMismatch)
        );
        assert_eq!(
            CompositeCursor::parse(&text, &set(&["news"])),
            Err(CursorError::ChannelSetMismatch)
        );
        assert_eq!(CompositeCursor::parse("0", &s), Ok(CompositeCursor::Zero));
        assert_eq!(
            CompositeCursor::parse("k3x9p2qa-5-1", &s),
            Err(CursorError::SingleOnComposite)
        );
        let sum = format!("{:08x}", s.checksum());
        for bad in [
            String::new(),
            "x".into(),
            format!("k3x9p2qa.{sum}"),
            format!("k3x9p2qa.{sum}."),
            format!("k3x9p2qa.{sum}.1-0."),
            format!("k3x9p2qa.{}.1-0.1-0", sum.to_uppercase()),
            format!("k3x9p2q.{sum}.1-0.1-0"),
            format!("k3x9p2qa.{sum}.1-0.01-0"),
            format!("k3x9p2qa..{sum}.1-0.1-0"),
        ] {
            assert_eq!(
                CompositeCursor::parse(&bad, &s),
                Err(CursorError::Malformed),
                "{bad:?}"
            );
        }
    }

    fn arb_epoch() -> impl Strategy<Value = Epoch> {
        "[0-9a-z]{8}".prop_map(|s| s.parse().unwrap())
    }

    fn arb_id() -> impl Strategy<Value = EntryId> {
        (any::<u64>(), any::<u64>()).prop_map(|(ms, seq)| EntryId::new(ms, seq))
    }

    proptest! {
        #[test]
        fn single_round_trips(epoch in arb_epoch(), id in arb_id()) {
            let p = Position { epoch, id };
            prop_assert_eq!(Cursor::parse(&p.to_string()), Ok(Cursor::At(p)));
        }

        #[test]
        fn composite_round_trips(
            epoch in arb_epoch(),
            names in prop::collection::btree_set(
                "[a-z0-9:._-]{1,20}".prop_filter("a dot segment", |n| n != "." && n != ".."),
                1..8,
            ),
            ids in prop::collection::vec(arb_id(), 8),
        ) {
            let s = ChannelSet::new(names.iter().map(|n| ChannelName::new(n).unwrap()).collect());
            let ids = &ids[..s.len()];
            let text = composite_string(epoch, &s, ids.iter().copied());
            prop_assert_eq!(
                CompositeCursor::parse(&text, &s),
                Ok(CompositeCursor::At { epoch, ids: ids.to_vec() })
            );
        }

        #[test]
        fn parsing_never_panics_and_accepts_only_canonical_text(s in "\\PC{0,80}") {
            if let Ok(Cursor::At(p)) = Cursor::parse(&s) {
                prop_assert_eq!(p.to_string(), s.clone());
            }
            let set = ChannelSet::new(vec![ChannelName::new("a").unwrap()]);
            if let Ok(CompositeCursor::At { epoch, ids }) = CompositeCursor::parse(&s, &set) {
                prop_assert_eq!(composite_string(epoch, &set, ids), s);
            }
        }

        #[test]
        fn mutated_cursors_are_refused_or_canonical(epoch in arb_epoch(), id in arb_id(), pos in 0usize..40, byte in any::<u8>()) {
            let mut text = Position { epoch, id }.to_string().into_bytes();
            let pos = pos % text.len();
            text[pos] = byte;
            if let Ok(s) = String::from_utf8(text) {
                if let Ok(Cursor::At(p)) = Cursor::parse(&s) {
                    prop_assert_eq!(p.to_string(), s);
                }
            }
        }
    }
}
