//! Redis Cluster's key slots and who owns them.
//!
//! A key's slot is CRC16 (XMODEM) of its hash tag (the text between the first `{` and the
//! next `}`, when not empty) or of the whole key, modulo 16384. Every key of a channel
//! carries the channel as its tag (see `keys`), so a channel's scripts touch one slot.
//!
//! The slot map comes from `CLUSTER SLOTS` and is treated as untrusted input: a reply that
//! does not cover a slot leaves it unowned (a command for it waits for the next refresh).

use redis::Value;

use crate::redis::codec::{self, BadReply};

/// Slots in a Redis Cluster.
pub(crate) const SLOTS: usize = 16384;

/// CRC16-CCITT (XMODEM: polynomial 0x1021, initial value 0), as Redis Cluster uses.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The slot of `key` (hash tag rule included).
pub(crate) fn slot(key: &str) -> u16 {
    let b = key.as_bytes();
    let hashed = b
        .iter()
        .position(|&c| c == b'{')
        .and_then(|open| {
            let rest = &b[open + 1..];
            let close = rest.iter().position(|&c| c == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(b);
    // The modulo keeps it below 16384, which fits.
    crc16(hashed) % (SLOTS as u16)
}

/// Which primary (by address, `host:port`) owns each slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SlotMap {
    /// Distinct primaries' addresses.
    nodes: Vec<String>,
    /// Per slot: an index into `nodes`, or `u16::MAX` when no primary serves it.
    owner: Vec<u16>,
}

const UNOWNED: u16 = u16::MAX;

impl SlotMap {
    /// The map that a `CLUSTER SLOTS` reply describes; `asked` is the node that answered
    /// (an empty host in the reply means "the address you reached me at").
    pub(crate) fn from_reply(reply: &Value, asked: &str) -> Result<Self, BadReply> {
        let mut map = Self {
            nodes: Vec::new(),
            owner: vec![UNOWNED; SLOTS],
        };
        let asked_host = asked.rsplit_once(':').map_or(asked, |(h, _)| h);
        for range in codec::array(reply)? {
            let parts = codec::array(range)?;
            let [start, end, primary, ..] = parts else {
                return Err(BadReply("CLUSTER SLOTS range"));
            };
            let (start, end) = (codec::int(start)?, codec::int(end)?);
            let node = codec::array(primary)?;
            let [host, port, ..] = node else {
                return Err(BadReply("CLUSTER SLOTS node"));
            };
            let host = match codec::text(host)? {
                "" => asked_host,
                "?" => continue,
                h => h,
            };
            let port = codec::int(port)?;
            let valid = |n: i64| (0..SLOTS as i64).contains(&n);
            if !valid(start) || !valid(end) || start > end || !(1..=65535).contains(&port) {
                return Err(BadReply("CLUSTER SLOTS bounds"));
            }
            let addr = format!("{host}:{port}");
            let index = match map.nodes.iter().position(|n| *n == addr) {
                Some(i) => i,
                None => {
                    map.nodes.push(addr);
                    map.nodes.len() - 1
                }
            };
            let index = u16::try_from(index).map_err(|_| BadReply("too many nodes"))?;
            for s in start..=end {
                // In bounds: checked above.
                map.owner[s as usize] = index;
            }
        }
        Ok(map)
    }

    /// The primary that owns `slot`, if one does.
    pub(crate) fn owner(&self, slot: u16) -> Option<&str> {
        let i = *self.owner.get(usize::from(slot))?;
        self.nodes.get(usize::from(i)).map(String::as_str)
    }

    /// Every primary's address.
    pub(crate) fn primaries(&self) -> &[String] {
        &self.nodes
    }

    /// Records a `MOVED` answer: `slot` is served by `addr` now.
    pub(crate) fn moved(&mut self, slot: u16, addr: &str) {
        let index = match self.nodes.iter().position(|n| n == addr) {
            Some(i) => i,
            None => {
                self.nodes.push(addr.to_owned());
                self.nodes.len() - 1
            }
        };
        if let (Ok(index), Some(o)) = (u16::try_from(index), self.owner.get_mut(usize::from(slot)))
        {
            *o = index;
        }
    }

    /// Whether every slot has an owner.
    pub(crate) fn complete(&self) -> bool {
        self.owner.iter().all(|&o| o != UNOWNED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.0.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("bar"), 5061);
        assert_eq!(slot("{user1000}.following"), slot("user1000"));
        assert_eq!(slot("foo{}{bar}"), slot("foo{}{bar}"));
        assert_ne!(slot("foo{}{bar}"), slot("bar"));
        assert_eq!(slot("foo{{bar}}zap"), slot("{bar"));
        assert_eq!(slot("foo{bar}{zap}"), slot("bar"));
        assert_eq!(slot("sg:{news}:s"), slot("sg:{news}:live"));
    }

    #[test]
    fn a_map_is_read_from_cluster_slots() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(8191),
                Value::Array(vec![bulk("127.0.0.1"), Value::Int(7000), bulk("id")]),
                Value::Array(vec![bulk("127.0.0.1"), Value::Int(7003), bulk("id")]),
            ]),
            Value::Array(vec![
                Value::Int(8192),
                Value::Int(16383),
                Value::Array(vec![bulk(""), Value::Int(7001)]),
            ]),
        ]);
        let mut map = SlotMap::from_reply(&reply, "10.0.0.9:7001").unwrap();
        assert!(map.complete());
        assert_eq!(map.owner(0), Some("127.0.0.1:7000"));
        assert_eq!(map.owner(16383), Some("10.0.0.9:7001"));
        assert_eq!(map.primaries().len(), 2);
        map.moved(5, "127.0.0.1:7002");
        assert_eq!(map.owner(5), Some("127.0.0.1:7002"));
        assert_eq!(map.owner(6), Some("127.0.0.1:7000"));
    }

    #[test]
    fn a_bad_map_is_an_error_not_a_panic() {
        for bad in [
            Value::Int(3),
            Value::Array(vec![Value::Array(vec![Value::Int(0)])]),
            Value::Array(vec![Value::Array(vec![
                Value::Int(9),
                Value::Int(99999),
                Value::Array(vec![bulk("h"), Value::Int(1)]),
            ])]),
            Value::Array(vec![Value::Array(vec![
                Value::Int(0),
                Value::Int(1),
                Value::Array(vec![bulk("h"), Value::Int(0)]),
            ])]),
        ] {
            assert!(SlotMap::from_reply(&bad, "x:1").is_err(), "{bad:?}");
        }
        let partial = Value::Array(vec![Value::Array(vec![
            Value::Int(0),
            Value::Int(1),
            Value::Array(vec![bulk("h"), Value::Int(1)]),
        ])]);
        let map = SlotMap::from_reply(&partial, "x:1").unwrap();
        assert!(!map.complete());
        assert_eq!(map.owner(2), None);
    }
}
