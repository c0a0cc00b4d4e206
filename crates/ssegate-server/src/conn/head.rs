//! Reading one HTTP/1.1 request head off a raw socket, without hyper's per-connection
//! buffers: the bytes live in a small `Vec` only until the head is parsed.

use std::io;
use std::task::{Context, Poll, ready};

use http::{HeaderName, HeaderValue, Method, Request, Uri, Version};
use tokio::net::TcpStream;

use crate::router::{Listener, Route};

/// A head larger than this goes to hyper, which has its own (larger) limit.
const HEAD_MAX: usize = 16 * 1024;
/// What a first read gets room for: an `EventSource` request with cookies fits.
const HEAD_START: usize = 2048;
/// More headers than this also go to hyper.
const MAX_HEADERS: usize = 48;

/// What the first request on a connection is.
#[derive(Debug)]
#[allow(clippy::large_enum_variant, reason = "one per request, moved once")]
pub(super) enum Head {
    /// A complete `GET` of a stream route, with nothing read past its head: the SSE
    /// front serves it. `close` when the client asked for the connection to end after it.
    Stream { req: Request<()>, close: bool },
    /// Anything else (another route, a body, HTTP/1.0, h2c, a malformed or huge head, a
    /// pipelined request): hyper serves the connection, starting with these bytes.
    Other,
    /// The peer went away before sending a complete head.
    Gone,
}

/// Reads until a complete request head, then says who serves it. `buf` keeps what was
/// read, for [`Head::Other`]. Poll-style, so that a waiting connection stores no
/// readiness future.
pub(super) fn poll_read(stream: &TcpStream, buf: &mut Vec<u8>, cx: &mut Context<'_>) -> Poll<Head> {
    loop {
        if buf.capacity() == buf.len() {
            buf.reserve(buf.len().max(HEAD_START));
        }
        match stream.try_read_buf(buf) {
            Ok(0) => return Poll::Ready(Head::Gone),
            Ok(_) => match parse(buf) {
                Parsed::Partial if buf.len() < HEAD_MAX => {}
                Parsed::Partial | Parsed::Other => return Poll::Ready(Head::Other),
                Parsed::Stream(req, close) => return Poll::Ready(Head::Stream { req, close }),
            },
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if ready!(stream.poll_read_ready(cx)).is_err() {
                    return Poll::Ready(Head::Gone);
                }
            }
            Err(_) => return Poll::Ready(Head::Gone),
        }
    }
}

#[allow(clippy::large_enum_variant, reason = "one per request, moved once")]
enum Parsed {
    Partial,
    Other,
    Stream(Request<()>, bool),
}

fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut headers);
    let len = match head.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    // Pipelined bytes after the head, HTTP/1.0, other methods and routes: hyper's.
    if len != buf.len() || head.version != Some(1) || head.method != Some("GET") {
        return Parsed::Other;
    }
    let is_stream = |p: &str| {
        Route::parse(path_only(p), Listener::Public).is_some_and(|r| r.is_stream(&Method::GET))
    };
    let Some(path) = head.path.filter(|p| is_stream(p)) else {
        return Parsed::Other;
    };
    let Ok(uri) = path.parse::<Uri>() else {
        return Parsed::Other;
    };
    let mut req = Request::new(());
    *req.method_mut() = Method::GET;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    let mut close = false;
    let map = req.headers_mut();
    for h in head.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return Parsed::Other;
        };
        if name == http::header::CONTENT_LENGTH && value.as_bytes() != b"0" {
            return Parsed::Other;
        }
        if name == http::header::TRANSFER_ENCODING || name == http::header::UPGRADE {
            return Parsed::Other;
        }
        if name == http::header::CONNECTION {
            close |= value
                .to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")));
        }
        map.append(name, value);
    }
    Parsed::Stream(req, close)
}

fn path_only(target: &str) -> &str {
    target.split_once('?').map_or(target, |(p, _)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(text: &str) -> Option<(Request<()>, bool)> {
        match parse(text.as_bytes()) {
            Parsed::Stream(req, close) => Some((req, close)),
            _ => None,
        }
    }

    #[test]
    fn takes_only_complete_bodiless_http11_gets_of_stream_routes() {
        let (req, close) = stream(
            "GET /v1/channels/a%3Ab/events?lastEventId=0 HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 5\r\n\r\n",
        )
        .expect("a stream request");
        assert_eq!(req.uri().path(), "/v1/channels/a%3Ab/events");
        assert_eq!(req.uri().query(), Some("lastEventId=0"));
        assert_eq!(req.headers()["last-event-id"], "5");
        assert!(!close);
        let (_, close) =
            stream("GET /v1/events?channel=a HTTP/1.1\r\nConnection: keep-alive, close\r\n\r\n")
                .expect("a stream request");
        assert!(close);
        for other in [
            "POST /v1/channels/a/events HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
            "GET /v1/channels/a/history HTTP/1.1\r\n\r\n",
            "GET /v1/channels/a/events HTTP/1.0\r\n\r\n",
            "GET /v1/channels/a/events HTTP/1.1\r\nContent-Length: 3\r\n\r\n",
            "GET /v1/channels/a/events HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /v1/channels/a/events HTTP/1.1\r\nUpgrade: h2c\r\n\r\n",
            "GET /v1/channels/a/events HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GET /v1/channels/a/events/x HTTP/1.1\r\n\r\n",
            "\u{1}\u{2} nonsense\r\n\r\n",
        ] {
            assert!(
                matches!(parse(other.as_bytes()), Parsed::Other),
                "{other:?} goes to hyper"
            );
        }
        assert!(matches!(
            parse(b"GET /v1/events HTTP/1.1\r\nHost"),
            Parsed::Partial
        ));
    }
}
