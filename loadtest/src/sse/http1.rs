//! The HTTP/1.1 pieces a streaming GET needs, incremental and allocation-light: the
//! request line, the response head, and the body framing (chunked, content-length, or
//! delimited by the connection's close).

use std::fmt::Write as _;

/// Largest response head we accept.
const MAX_HEAD: usize = 16 * 1024;

/// Builds `GET path HTTP/1.1` with `Host`, `Accept: text/event-stream` and, when given,
/// `Last-Event-ID`.
pub(crate) fn request(path: &str, authority: &str, last_event_id: Option<&str>) -> Vec<u8> {
    let mut s = String::with_capacity(128 + path.len());
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: text/event-stream\r\n\
         Cache-Control: no-cache\r\n"
    );
    if let Some(id) = last_event_id.filter(|id| !id.is_empty()) {
        // An id never contains CR or LF (the parser splits lines there).
        let _ = write!(s, "Last-Event-ID: {id}\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

/// How the body of a response is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    Chunked,
    Length(u64),
    /// Until the server closes the connection (HTTP/1.0 style, or no length given).
    Close,
}

/// A parsed response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) status: u16,
    pub(crate) framing: Framing,
    /// How many bytes of the buffer the head took; the rest is body.
    pub(crate) len: usize,
}

/// Why a response could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HeadError {
    Malformed(String),
    TooLarge,
}

/// Parses a response head from the start of `buf`: `Ok(None)` when more bytes are needed.
pub(crate) fn parse_head(buf: &[u8]) -> Result<Option<Head>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    };
    let status = response.code.unwrap_or(0);
    let mut framing = Framing::Close;
    let mut chunked = false;
    for h in response.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let value = String::from_utf8_lossy(h.value).to_ascii_lowercase();
            chunked = value.split(',').any(|t| t.trim() == "chunked");
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| HeadError::Malformed("bad content-length".into()))?;
            framing = Framing::Length(n);
        }
    }
    if chunked {
        framing = Framing::Chunked;
    }
    Ok(Some(Head {
        status,
        framing,
        len,
    }))
}

/// Incremental body decoder: hands out the payload bytes of whatever framing is in use.
#[derive(Debug, Clone)]
pub(crate) struct BodyDecoder {
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a chunk-size line: the value so far and whether a digit was seen.
    Size {
        value: u64,
        digits: bool,
    },
    /// Skipping a chunk extension up to the LF.
    Extension {
        value: u64,
    },
    /// `n` bytes of chunk data left.
    Data(u64),
    /// After the data: expecting CR (false) or LF (true).
    DataEnd {
        cr_seen: bool,
    },
    /// After the last chunk: trailer lines; `empty` while the current line is empty.
    Trailer {
        empty: bool,
    },
    Length(u64),
    Close,
    Done,
}

/// What the decoder saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Progress {
    More,
    /// The body is complete (the server ended the stream).
    Done,
}

impl BodyDecoder {
    pub(crate) fn new(framing: Framing) -> Self {
        let state = match framing {
            Framing::Chunked => State::Size {
                value: 0,
                digits: false,
            },
            Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Close => State::Close,
        };
        Self { state }
    }

    /// Decodes `input`, calling `sink` with each run of payload bytes.
    pub(crate) fn decode(
        &mut self,
        mut input: &[u8],
        sink: &mut impl FnMut(&[u8]),
    ) -> Result<Progress, String> {
        while !input.is_empty() {
            match self.state {
                State::Done => return Ok(Progress::Done),
                State::Close => {
                    sink(input);
                    return Ok(Progress::More);
                }
                State::Length(n) | State::Data(n) => {
                    let take = usize::try_from(n).unwrap_or(usize::MAX).min(input.len());
                    sink(&input[..take]);
                    input = &input[take..];
                    let left = n - take as u64;
                    self.state = match (self.state, left) {
                        (State::Length(_), 0) => State::Done,
                        (State::Length(_), l) => State::Length(l),
                        (_, 0) => State::DataEnd { cr_seen: false },
                        (_, l) => State::Data(l),
                    };
                }
                State::Size { value, digits } => {
                    let b = input[0];
                    input = &input[1..];
                    self.state = match b {
                        b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                            let d = u64::from((b as char).to_digit(16).unwrap_or(0));
                            let v = value
                                .checked_mul(16)
                                .and_then(|v| v.checked_add(d))
                                .ok_or("chunk size overflows")?;
                            State::Size {
                                value: v,
                                digits: true,
                            }
                        }
                        b';' | b' ' | b'\t' | b'\r' if digits => State::Extension { value },
                        b'\n' if digits => chunk_start(value),
                        _ => return Err(format!("bad chunk size byte {b:#04x}")),
                    };
                }
                State::Extension { value } => match input.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        input = &input[i + 1..];
                        self.state = chunk_start(value);
                    }
                    None => input = &[],
                },
                State::DataEnd { cr_seen } => {
                    let b = input[0];
                    input = &input[1..];
                    self.state = match (cr_seen, b) {
                        (false, b'\r') => State::DataEnd { cr_seen: true },
                        (_, b'\n') => State::Size {
                            value: 0,
                            digits: false,
                        },
                        _ => return Err("missing CRLF after chunk data".into()),
                    };
                }
                State::Trailer { empty } => {
                    let b = input[0];
                    input = &input[1..];
                    self.state = match b {
                        b'\n' if empty => State::Done,
                        b'\n' => State::Trailer { empty: true },
                        b'\r' => State::Trailer { empty },
                        _ => State::Trailer { empty: false },
                    };
                }
            }
        }
        Ok(if self.state == State::Done {
            Progress::Done
        } else {
            Progress::More
        })
    }
}

fn chunk_start(size: u64) -> State {
    if size == 0 {
        State::Trailer { empty: true }
    } else {
        State::Data(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_split(framing: Framing, wire: &[u8], split: usize) -> (Vec<u8>, Progress) {
        let mut d = BodyDecoder::new(framing);
        let mut out = Vec::new();
        let mut last = Progress::More;
        for part in [&wire[..split], &wire[split..]] {
            last = d.decode(part, &mut |b| out.extend_from_slice(b)).unwrap();
        }
        (out, last)
    }

    #[test]
    fn chunked_at_every_split() {
        let wire = b"5;ext=1\r\nhello\r\nA\r\n, world!!!\r\n0\r\nX-T: 1\r\n\r\n";
        for split in 0..=wire.len() {
            let (out, p) = decode_split(Framing::Chunked, wire, split);
            assert_eq!(out, b"hello, world!!!", "split {split}");
            assert_eq!(p, Progress::Done, "split {split}");
        }
        let (out, p) = decode_split(Framing::Chunked, b"3\r\nabc\r\n", 4);
        assert_eq!((out.as_slice(), p), (&b"abc"[..], Progress::More));
        let mut d = BodyDecoder::new(Framing::Chunked);
        assert!(d.decode(b"zz\r\n", &mut |_| {}).is_err());
        let mut d = BodyDecoder::new(Framing::Chunked);
        assert!(d.decode(b"1\r\nab", &mut |_| {}).is_err());
    }

    #[test]
    fn length_and_close() {
        let (out, p) = decode_split(Framing::Length(3), b"abcdef", 1);
        assert_eq!((out.as_slice(), p), (&b"abc"[..], Progress::Done));
        let (out, p) = decode_split(Framing::Close, b"abcdef", 2);
        assert_eq!((out.as_slice(), p), (&b"abcdef"[..], Progress::More));
    }

    #[test]
    fn heads() {
        let h = parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nxx")
            .unwrap()
            .unwrap();
        assert_eq!((h.status, h.framing, h.len), (200, Framing::Chunked, 47));
        let h = parse_head(b"HTTP/1.1 404 No\r\nContent-Length: 2\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((h.status, h.framing), (404, Framing::Length(2)));
        let h = parse_head(b"HTTP/1.0 200 OK\r\n\r\n").unwrap().unwrap();
        assert_eq!(h.framing, Framing::Close);
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\n").unwrap(), None);
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
        let req = String::from_utf8(request("/a", "h:1", Some("x-1"))).unwrap();
        assert!(req.starts_with("GET /a HTTP/1.1\r\nHost: h:1\r\n"));
        assert!(req.ends_with("Last-Event-ID: x-1\r\n\r\n"));
        assert!(
            !String::from_utf8(request("/a", "h", Some("")))
                .unwrap()
                .contains("Last")
        );
    }
}
