//! A stable fingerprint of a publish request, so that an `Idempotency-Key` retry can be
//! told apart from a different request reusing the key. FNV-1a 64: the same on every node
//! and every version (a std `Hasher` is not promised to be).

use ssegate_core::NewEvent;

pub(crate) fn fingerprint(events: &[NewEvent]) -> String {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(PRIME);
        }
        // A separator no field contains at its end, so fields cannot run together.
        h = (h ^ 0xff).wrapping_mul(PRIME);
    };
    for e in events {
        eat(e.channel.as_str().as_bytes());
        eat(e.event_type.as_ref().map_or("", |t| t.as_str()).as_bytes());
        eat(e.data.kind().tag().as_bytes());
        eat(e.data.as_str().as_bytes());
    }
    format!("{h:016x}")
}
