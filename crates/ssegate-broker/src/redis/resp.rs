//! RESP2 replies: where one ends ([`value_len`], which resumes across reads) and what it
//! holds ([`parse`]).
//!
//! Why our own decoder: redis-rs's parser (`redis::parse_redis_value`) copies the reply
//! into a buffer of its own and runs a general combinator parser over it; on the publish
//! path, one small script reply per event, that was about 3% of the node's CPU in the
//! many-channels benchmark, with the allocator's consolidation of that buffer on top
//! (docs/benchmarks/notes.md). [`parse`] decodes the replies this node gets (simple
//! strings, integers, bulk strings, arrays, nil) straight from the framed bytes, and hands
//! anything else to redis-rs's parser, so its answer is redis-rs's answer in every case:
//! a reply holding an error (redis-rs does not let a caller build its `ServerError`),
//! arrays nested deeper than [`MAX_DEPTH`], and anything malformed.
//!
//! # Bounds
//!
//! A reply is at most [`MAX_REPLY`] bytes (Redis's own largest bulk string,
//! `proto-max-bulk-len`), a line at most [`MAX_LINE`]; framing never recurses, decoding
//! recurses at most [`MAX_DEPTH`] deep, and an array's announced length reserves at most
//! what the framed bytes can hold.

use redis::{ErrorKind, RedisResult, Value};

/// The largest reply read (see Bounds).
pub(crate) const MAX_REPLY: usize = 512 * 1024 * 1024;

/// Arrays nested deeper than this are decoded by redis-rs's parser (no reply this node
/// asks for nests more than three deep).
const MAX_DEPTH: usize = 32;

/// The longest line (a simple string, an error, a length) a reply may hold: a peer that
/// sends more without a line end fails the command, and each read rescans at most this.
const MAX_LINE: usize = 64 * 1024;

/// How far the framing of the reply being read has got: it resumes there when more bytes
/// arrive, so that a large reply is scanned once, not once per read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scan {
    /// Where the next value to frame starts (everything before it is framed).
    at: usize,
    /// Values still to be framed: the first, then each array's elements.
    want: usize,
}

impl Scan {
    pub(crate) const NEW: Self = Self { at: 0, want: 1 };
}

/// Frames the first RESP2 value of `buf`, resuming from `scan`: its length once it is
/// complete, `None` while more bytes are needed. Bulk strings are skipped by their length
/// (their bytes may hold CRLF). Never panics, whatever `buf` holds.
pub(crate) fn value_len(buf: &[u8], scan: &mut Scan) -> RedisResult<Option<usize>> {
    while scan.want > 0 {
        let at = scan.at;
        let Some(&kind) = buf.get(at) else {
            return Ok(None);
        };
        if !matches!(kind, b'+' | b'-' | b':' | b'$' | b'*') {
            return Err((ErrorKind::Parse, "not a RESP2 reply").into());
        }
        let rest = &buf[at + 1..];
        let Some(end) = line_end(rest) else {
            if rest.len() > MAX_LINE {
                return Err((ErrorKind::Parse, "a reply line too long").into());
            }
            return Ok(None);
        };
        let line = &rest[..end];
        let mut next = at + 1 + end + 2;
        let mut more = 0usize;
        match kind {
            b'$' => {
                // `-1` is nil; a length past any reply read is refused before it is waited
                // for (and cannot overflow the position).
                if let Ok(n) = usize::try_from(int(line)?) {
                    if n > MAX_REPLY {
                        return Err((ErrorKind::Parse, "a bulk string too large").into());
                    }
                    if buf.len() < next + n + 2 {
                        return Ok(None);
                    }
                    next += n + 2;
                }
            }
            b'*' => {
                if let Ok(n) = usize::try_from(int(line)?) {
                    more = n;
                }
            }
            _ => {}
        }
        scan.at = next;
        scan.want = (scan.want - 1).saturating_add(more);
    }
    Ok(Some(scan.at))
}

/// Where the line at the start of `bytes` ends (its CRLF), as framing and decoding both
/// read a line.
fn line_end(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|w| w == b"\r\n")
}

fn int(line: &[u8]) -> RedisResult<i64> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| (ErrorKind::Parse, "a malformed length in a reply").into())
}

/// What redis-rs's parser makes of `reply`, one value framed by [`value_len`] (see the
/// module docs: decoded here when it can be, else by redis-rs).
pub(crate) fn parse(reply: &[u8]) -> RedisResult<Value> {
    let mut at = 0;
    match decode(reply, &mut at, 0) {
        Some(value) if at == reply.len() => Ok(value),
        _ => redis::parse_redis_value(reply),
    }
}

/// The value at `*at`, moving `*at` past it; `None` for anything redis-rs must decide.
fn decode(buf: &[u8], at: &mut usize, depth: usize) -> Option<Value> {
    let kind = *buf.get(*at)?;
    let rest = buf.get(*at + 1..)?;
    let end = line_end(rest)?;
    // As redis-rs reads a line: UTF-8, numbers trimmed.
    let line = std::str::from_utf8(&rest[..end]).ok()?;
    *at += 1 + end + 2;
    match kind {
        b'+' if line == "OK" => Some(Value::Okay),
        b'+' => Some(Value::SimpleString(line.to_owned())),
        b':' => line.trim().parse().ok().map(Value::Int),
        b'$' => {
            let Ok(n) = usize::try_from(line.trim().parse::<i64>().ok()?) else {
                return Some(Value::Nil);
            };
            let body = buf.get(*at..at.checked_add(n)?)?;
            if buf.get(*at + n..)?.get(..2)? != b"\r\n" {
                return None;
            }
            *at += n + 2;
            Some(Value::BulkString(body.to_vec()))
        }
        b'*' => {
            let Ok(n) = usize::try_from(line.trim().parse::<i64>().ok()?) else {
                return Some(Value::Nil);
            };
            if depth >= MAX_DEPTH {
                return None;
            }
            // Every element takes at least three bytes: a hostile length reserves nothing.
            let mut items = Vec::with_capacity(n.min(buf.len().saturating_sub(*at) / 3));
            for _ in 0..n {
                items.push(decode(buf, at, depth + 1)?);
            }
            Some(Value::Array(items))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn len(buf: &[u8]) -> RedisResult<Option<usize>> {
        let mut scan = Scan::NEW;
        value_len(buf, &mut scan)
    }

    #[test]
    fn a_value_is_complete_only_with_all_its_bytes() {
        let whole: &[&[u8]] = &[
            b"+OK\r\n",
            b"-ERR no\r\n",
            b":42\r\n",
            b"$-1\r\n",
            b"*-1\r\n",
            b"*0\r\n",
            b"$4\r\na\r\nb\r\n",
            b"*2\r\n$1\r\nx\r\n*2\r\n:1\r\n+y\r\n",
        ];
        for v in whole {
            assert_eq!(len(v).unwrap(), Some(v.len()), "{v:?}");
            assert!(
                redis::parse_redis_value(v).is_ok(),
                "{v:?} is what Redis sends"
            );
            let mut more = v.to_vec();
            more.extend_from_slice(b"+next\r\n");
            assert_eq!(len(&more).unwrap(), Some(v.len()), "{v:?} then more");
            // Cut anywhere, fresh or resumed byte by byte: incomplete until the end.
            let mut scan = Scan::NEW;
            for cut in 0..v.len() {
                assert_eq!(len(&v[..cut]).unwrap(), None, "{v:?} cut at {cut}");
                assert_eq!(
                    value_len(&v[..cut], &mut scan).unwrap(),
                    None,
                    "{v:?} at {cut}"
                );
            }
            assert_eq!(
                value_len(v, &mut scan).unwrap(),
                Some(v.len()),
                "{v:?} resumed"
            );
        }
        // Malformed: an error, never a panic.
        for bad in [
            &b"?huh\r\n"[..],
            b"\r\n",
            b"*1\r\n\r\n",
            b"*2\r\n:1\r\n\r\n",
            b"$x\r\n",
            b"$99999999999999999999\r\n",
        ] {
            assert!(len(bad).is_err(), "{bad:?}");
        }
        let past = format!("${}\r\n", MAX_REPLY + 1);
        assert!(len(past.as_bytes()).is_err(), "refused, not waited for");
        let endless = vec![b'+'; MAX_LINE + 2];
        assert!(
            len(&endless).is_err(),
            "a line without an end is not waited for"
        );
    }

    /// A large reply arriving in small reads is framed once: each read resumes where
    /// the last complete element ended.
    #[test]
    fn a_large_reply_is_framed_once_across_reads() {
        let mut reply = b"*1000\r\n".to_vec();
        for i in 0..1000 {
            let item = format!("{i:0>1000}");
            reply.extend(format!("${}\r\n{item}\r\n", item.len()).into_bytes());
        }
        let mut scan = Scan::NEW;
        let mut framed_at = Vec::new();
        for cut in (1448..reply.len()).step_by(1448) {
            assert_eq!(value_len(&reply[..cut], &mut scan).unwrap(), None);
            framed_at.push(scan.at);
        }
        assert_eq!(value_len(&reply, &mut scan).unwrap(), Some(reply.len()));
        assert!(
            framed_at.windows(2).all(|w| w[0] <= w[1])
                && framed_at.last() > Some(&(reply.len() / 2)),
            "each read resumes past what was framed"
        );
    }

    /// A random RESP2 reply, as Redis encodes one.
    fn reply() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            "[ -~]{0,20}".prop_map(|t| format!("+{t}\r\n").into_bytes()),
            "[ -~]{0,20}".prop_map(|t| format!("-ERR {t}\r\n").into_bytes()),
            any::<i64>().prop_map(|n| format!(":{n}\r\n").into_bytes()),
            Just(b"$-1\r\n".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..64).prop_map(|b| {
                let mut out = format!("${}\r\n", b.len()).into_bytes();
                out.extend(b);
                out.extend_from_slice(b"\r\n");
                out
            }),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            proptest::collection::vec(inner, 0..8).prop_map(|items| {
                let mut out = format!("*{}\r\n", items.len()).into_bytes();
                out.extend(items.into_iter().flatten());
                out
            })
        })
    }

    proptest::proptest! {
        /// Any reply is framed at exactly its end, read whole or in pieces of any size,
        /// and agrees with redis-rs's parser.
        #[test]
        fn replies_are_framed_exactly_however_they_arrive(v in reply(), step in 1usize..40) {
            proptest::prop_assert_eq!(len(&v).unwrap(), Some(v.len()));
            proptest::prop_assert!(redis::parse_redis_value(&v).is_ok());
            let mut scan = Scan::NEW;
            let mut cut = step;
            while cut < v.len() {
                proptest::prop_assert_eq!(value_len(&v[..cut], &mut scan).unwrap(), None);
                cut += step;
            }
            proptest::prop_assert_eq!(value_len(&v, &mut scan).unwrap(), Some(v.len()));
        }

        /// Whatever bytes a peer sends, framing answers (complete, incomplete or an
        /// error) and never panics.
        #[test]
        fn framing_never_panics(bytes in proptest::collection::vec(any_byte(), 0..200)) {
            let _ = len(&bytes);
        }
    }

    fn any_byte() -> impl proptest::strategy::Strategy<Value = u8> {
        use proptest::prelude::*;
        prop_oneof![
            Just(b'\r'),
            Just(b'\n'),
            Just(b'*'),
            Just(b'$'),
            Just(b'-'),
            Just(b'1'),
            any::<u8>()
        ]
    }

    /// The same answer as redis-rs's parser, compared as debug text (a `RedisError` has
    /// no equality).
    fn agrees(reply: &[u8]) -> Result<(), String> {
        let ours = format!("{:?}", parse(reply));
        let theirs = format!("{:?}", redis::parse_redis_value(reply));
        if ours == theirs {
            Ok(())
        } else {
            Err(format!("{reply:?}: ours {ours}, redis-rs {theirs}"))
        }
    }

    /// What the node's commands get back is decoded here, not handed to redis-rs; an error
    /// reply, and nesting past the depth bound, are handed over.
    #[test]
    fn common_replies_are_decoded_here_and_errors_by_redis_rs() {
        let here: &[(&[u8], Value)] = &[
            (b"+OK\r\n", Value::Okay),
            (b"+PONG\r\n", Value::SimpleString("PONG".into())),
            (b":-7\r\n", Value::Int(-7)),
            (b"$-1\r\n", Value::Nil),
            (b"*-1\r\n", Value::Nil),
            (b"$4\r\na\r\nb\r\n", Value::BulkString(b"a\r\nb".to_vec())),
            (
                b"*3\r\n$2\r\n1-\r\n:5\r\n*1\r\n$0\r\n\r\n",
                Value::Array(vec![
                    Value::BulkString(b"1-".to_vec()),
                    Value::Int(5),
                    Value::Array(vec![Value::BulkString(Vec::new())]),
                ]),
            ),
        ];
        for (reply, value) in here {
            let mut at = 0;
            assert_eq!(decode(reply, &mut at, 0).as_ref(), Some(value), "{reply:?}");
            assert_eq!(at, reply.len());
            agrees(reply).unwrap();
        }
        let deep = format!("{}:1\r\n", "*1\r\n".repeat(MAX_DEPTH + 1));
        for handed_over in [
            &b"-ERR no\r\n"[..],
            b"*2\r\n:1\r\n-ERR no\r\n",
            deep.as_bytes(),
        ] {
            assert_eq!(decode(handed_over, &mut 0, 0), None, "{handed_over:?}");
            agrees(handed_over).unwrap();
        }
        assert!(matches!(parse(b"-ERR no\r\n"), Ok(Value::ServerError(_))));
    }

    proptest::proptest! {
        /// Any reply Redis could send decodes to what redis-rs's parser makes of it.
        #[test]
        fn replies_decode_as_redis_rs_decodes_them(v in reply()) {
            proptest::prop_assert_eq!(agrees(&v), Ok(()));
        }

        /// Whatever bytes a peer sends, a value framed among them decodes as redis-rs
        /// decodes it, and never panics.
        #[test]
        fn any_framed_bytes_decode_as_redis_rs_decodes_them(
            bytes in proptest::collection::vec(any_byte(), 0..200),
        ) {
            if let Ok(Some(n)) = len(&bytes) {
                proptest::prop_assert_eq!(agrees(&bytes[..n]), Ok(()));
            }
            let _ = parse(&bytes);
        }
    }
}
