//! Positions in a channel's history, and the epoch of the history store.

use std::fmt;
use std::str::FromStr;

/// The id of one entry in a channel's history: `<ms>-<seq>`, the same form as a Redis
/// Stream entry id, strictly increasing within a channel.
///
/// `0-0` is the position before the first event: "nothing delivered yet".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EntryId {
    /// Milliseconds since the Unix epoch when the entry was added (by the store's clock).
    pub ms: u64,
    /// Tells apart entries added in the same millisecond.
    pub seq: u64,
}

impl EntryId {
    /// `0-0`: before the first event of every channel.
    pub const ZERO: EntryId = EntryId { ms: 0, seq: 0 };

    /// The id `<ms>-<seq>`.
    pub const fn new(ms: u64, seq: u64) -> Self {
        Self { ms, seq }
    }

    /// The id that the next entry gets when the wall clock reads `now_ms`: the clock's
    /// millisecond if it moved forward, else the same millisecond with the next sequence
    /// number, so ids stay strictly increasing even when the clock steps back.
    pub fn next_after(self, now_ms: u64) -> Self {
        if now_ms > self.ms {
            Self { ms: now_ms, seq: 0 }
        } else if self.seq < u64::MAX {
            Self {
                ms: self.ms,
                seq: self.seq + 1,
            }
        } else {
            Self {
                ms: self.ms.saturating_add(1),
                seq: 0,
            }
        }
    }

    /// Writes the canonical text form into `out`.
    pub fn write_to(self, out: &mut impl fmt::Write) -> fmt::Result {
        write!(out, "{}-{}", self.ms, self.seq)
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// A canonical unsigned decimal: no sign, no leading zero (except `0` itself), fits u64.
fn parse_canonical_u64(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if s.len() > 1 && s.starts_with('0') {
        return None;
    }
    s.parse().ok()
}

/// The entry id could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an entry id of the form <ms>-<seq>")]
pub struct BadEntryId;

impl FromStr for EntryId {
    type Err = BadEntryId;

    /// Strict: exactly `<ms>-<seq>` in canonical decimal, as [`fmt::Display`] writes it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ms, seq) = s.split_once('-').ok_or(BadEntryId)?;
        Ok(Self {
            ms: parse_canonical_u64(ms).ok_or(BadEntryId)?,
            seq: parse_canonical_u64(seq).ok_or(BadEntryId)?,
        })
    }
}

/// Length of an epoch token.
pub const EPOCH_LEN: usize = 8;
const EPOCH_ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// The random token of one history store (a Redis database, or one run of the
/// in-memory broker). Every cursor carries it: when the store loses its data and starts
/// over, the epoch changes, and an old cursor is answered with `sync-required` instead of
/// being applied to unrelated new ids.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Epoch([u8; EPOCH_LEN]);

impl Epoch {
    /// A fresh random epoch.
    pub fn random() -> Self {
        let mut bytes = [0u8; EPOCH_LEN];
        for b in &mut bytes {
            *b = EPOCH_ALPHABET[fastrand::usize(..EPOCH_ALPHABET.len())];
        }
        Self(bytes)
    }

    /// The token's text, as it appears at the start of every cursor.
    pub fn as_str(&self) -> &str {
        // Only ever built from EPOCH_ALPHABET (ASCII), see `random` and `from_str`.
        std::str::from_utf8(&self.0).unwrap_or("????????")
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Epoch({})", self.as_str())
    }
}

/// The epoch could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an epoch: {EPOCH_LEN} characters of 0-9a-z")]
pub struct BadEpoch;

impl FromStr for Epoch {
    type Err = BadEpoch;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes: [u8; EPOCH_LEN] = s.as_bytes().try_into().map_err(|_| BadEpoch)?;
        if !bytes
            .iter()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        {
            return Err(BadEpoch);
        }
        Ok(Self(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_parse_strictly() {
        assert_eq!("0-0".parse(), Ok(EntryId::ZERO));
        assert_eq!(
            "1700000000000-12".parse(),
            Ok(EntryId::new(1_700_000_000_000, 12))
        );
        for bad in [
            "",
            "0",
            "-",
            "1-",
            "-1",
            "01-0",
            "1-01",
            "+1-0",
            "1-0-0",
            " 1-0",
            "1-0 ",
            "a-0",
            "18446744073709551616-0",
        ] {
            assert_eq!(bad.parse::<EntryId>(), Err(BadEntryId), "{bad:?}");
        }
    }

    #[test]
    fn next_id_is_strictly_increasing_when_the_clock_steps_back() {
        let a = EntryId::new(1000, 0);
        assert_eq!(a.next_after(1001), EntryId::new(1001, 0));
        assert_eq!(a.next_after(1000), EntryId::new(1000, 1));
        assert_eq!(a.next_after(5), EntryId::new(1000, 1));
        let top = EntryId::new(1000, u64::MAX);
        assert!(top.next_after(0) > top);
    }

    #[test]
    fn epochs_round_trip() {
        let e = Epoch::random();
        assert_eq!(e.as_str().parse(), Ok(e));
        for bad in ["", "abc", "ABCDEFGH", "abcdefgh1", "abcdefg-"] {
            assert_eq!(bad.parse::<Epoch>(), Err(BadEpoch), "{bad:?}");
        }
    }
}
