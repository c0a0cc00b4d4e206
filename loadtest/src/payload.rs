//! The data of every published event: a small JSON object with the channel number, the
//! sequence number within the channel and the publish time, e.g.
//! `{"ch":3,"seq":17,"ts":1732179000123456}` (`ts` in microseconds since the Unix epoch),
//! optionally padded with `"pad":"xxx…"` to a chosen size.
//!
//! Subscribers read it with a tiny scanner instead of a JSON parser: at hundreds of
//! thousands of deliveries per second the load generator's own CPU matters.

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch (wall clock: publisher and subscribers may live in
/// different processes, so a monotonic clock would not be comparable).
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The data string of event `seq` of channel `ch`, published at `ts_us`.
pub(crate) fn encode(ch: usize, seq: u64, ts_us: u64, pad: usize) -> String {
    let mut s = format!("{{\"ch\":{ch},\"seq\":{seq},\"ts\":{ts_us}");
    if pad > 0 {
        s.push_str(",\"pad\":\"");
        s.extend(std::iter::repeat_n('x', pad));
        s.push('"');
    }
    s.push('}');
    s
}

/// What a subscriber needs from an event's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    pub(crate) ch: u64,
    pub(crate) seq: u64,
    pub(crate) ts_us: u64,
}

/// Reads `ch`, `seq` and `ts` from data made by [`encode`]; `None` for anything else.
pub(crate) fn decode(data: &str) -> Option<Stamp> {
    Some(Stamp {
        ch: field(data, "\"ch\":")?,
        seq: field(data, "\"seq\":")?,
        ts_us: field(data, "\"ts\":")?,
    })
}

fn field(data: &str, key: &str) -> Option<u64> {
    let start = data.find(key)? + key.len();
    let digits = data[start..].bytes().take_while(u8::is_ascii_digit).count();
    data[start..start + digits].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let d = encode(3, 17, 1_732_179_000_123_456, 0);
        assert_eq!(d, r#"{"ch":3,"seq":17,"ts":1732179000123456}"#);
        let v: serde_json::Value = serde_json::from_str(&d).unwrap();
        assert_eq!(v["seq"], 17);
        let s = decode(&d).unwrap();
        assert_eq!((s.ch, s.seq, s.ts_us), (3, 17, 1_732_179_000_123_456));
        let padded = encode(0, 1, 2, 5);
        assert!(padded.ends_with(r#","pad":"xxxxx"}"#));
        assert!(serde_json::from_str::<serde_json::Value>(&padded).is_ok());
        assert_eq!(decode(&padded).unwrap().seq, 1);
        assert_eq!(decode("hello"), None);
        assert_eq!(decode(r#"{"ch":1,"seq":x}"#), None);
    }
}
