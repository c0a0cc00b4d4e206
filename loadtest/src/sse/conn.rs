//! One raw HTTP/1.1 SSE stream on a tokio `TcpStream`: connect (from a chosen loopback
//! source address), send the request, then turn whatever the socket has into parsed
//! [`Item`]s without blocking.
//!
//! Per-connection memory stays small: bytes are read into an 8 KiB buffer on the stack of
//! the (synchronous) pump call, never held across an `await`; the only per-connection
//! buffers are the WHATWG parser's partial line and, until the head is complete, the
//! response head.

use std::io;
use std::net::{IpAddr, SocketAddr};

use ssegate_client::{Item, Parser};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

use crate::sse::http1::{self, BodyDecoder, Progress};

/// Read buffer size of one pump step.
const READ_BUF: usize = 8 * 1024;

/// Opens a TCP connection to `addr` from `source` (port chosen by the kernel) and sends
/// `request`.
///
/// Without a `source` the kernel picks the port at `connect`, per destination, and may
/// reuse loopback ports in TIME_WAIT. With one, `bind` has to find a port that is free
/// for every destination: with tens of thousands of sockets in TIME_WAIT that search
/// takes milliseconds per call and blocks the worker's thread, so callers pass a source
/// only for the extra loopback addresses (127.0.0.2, ...) that more than ~28k
/// connections need.
pub(crate) async fn open(
    addr: SocketAddr,
    source: Option<IpAddr>,
    request: &[u8],
) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = source {
        socket.set_reuseaddr(true)?;
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    // Small kernel buffers: these sockets carry small events; this is what a browser on
    // a phone looks like, and it keeps the load generator's own kernel memory down.
    socket.set_recv_buffer_size(16 * 1024)?;
    let mut stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    stream.write_all(request).await?;
    Ok(stream)
}

/// The state of one response being read.
#[derive(Debug)]
pub(crate) struct Reader {
    head: Vec<u8>,
    decoder: Option<BodyDecoder>,
    status: Option<u16>,
}

/// What one pump step found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Pump {
    /// Bytes were consumed (items may have been produced); call again.
    Data,
    /// Nothing more to read for now; wait for readiness.
    WouldBlock,
    /// The server closed the connection or ended the body.
    End,
    /// The response is not a `200`.
    Status(u16),
    /// Malformed HTTP or an I/O error.
    Failed(String),
}

impl Default for Reader {
    fn default() -> Self {
        Self::new()
    }
}

impl Reader {
    pub(crate) fn new() -> Self {
        Self {
            head: Vec::new(),
            decoder: None,
            status: None,
        }
    }

    /// The response status, once the head was read.
    pub(crate) fn status(&self) -> Option<u16> {
        self.status
    }

    /// Reads once from `tcp` (non-blocking) and parses what arrived into `items`.
    pub(crate) fn pump(
        &mut self,
        tcp: &TcpStream,
        parser: &mut Parser,
        items: &mut Vec<Item>,
    ) -> Pump {
        let mut buf = [0u8; READ_BUF];
        match tcp.try_read(&mut buf) {
            Ok(0) => Pump::End,
            Ok(n) => self.consume(&buf[..n], parser, items),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Pump::WouldBlock,
            Err(e) => Pump::Failed(e.to_string()),
        }
    }

    /// Feeds received bytes: first the head, then the body through its framing.
    pub(crate) fn consume(
        &mut self,
        bytes: &[u8],
        parser: &mut Parser,
        items: &mut Vec<Item>,
    ) -> Pump {
        let body: &[u8];
        let owned;
        if self.decoder.is_none() {
            self.head.extend_from_slice(bytes);
            let head = match http1::parse_head(&self.head) {
                Ok(Some(h)) => h,
                Ok(None) => return Pump::Data,
                Err(e) => return Pump::Failed(format!("bad response head: {e:?}")),
            };
            self.status = Some(head.status);
            if head.status != 200 {
                return Pump::Status(head.status);
            }
            self.decoder = Some(BodyDecoder::new(head.framing));
            owned = std::mem::take(&mut self.head).split_off(head.len);
            body = &owned;
        } else {
            body = bytes;
        }
        let Some(decoder) = self.decoder.as_mut() else {
            return Pump::Failed("no decoder".into());
        };
        match decoder.decode(body, &mut |payload| parser.feed(payload, items)) {
            Ok(Progress::More) => Pump::Data,
            Ok(Progress::Done) => Pump::End,
            Err(e) => Pump::Failed(format!("bad body framing: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_then_chunked_events_split_anywhere() {
        let wire: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
            Transfer-Encoding: chunked\r\n\r\n\
            17\r\nretry: 100\nid: e-1-0\n\n\r\n\
            C\r\ndata: hello\n\r\n\
            1\r\n\n\r\n0\r\n\r\n";
        for split in 0..wire.len() {
            let mut r = Reader::new();
            let mut p = Parser::new();
            let mut items = Vec::new();
            let a = r.consume(&wire[..split], &mut p, &mut items);
            assert!(matches!(a, Pump::Data), "split {split}: {a:?}");
            let b = r.consume(&wire[split..], &mut p, &mut items);
            assert_eq!(b, Pump::End, "split {split}");
            assert_eq!(r.status(), Some(200));
            assert_eq!(items.len(), 3, "split {split}: {items:?}");
            assert!(matches!(&items[2], Item::Event(e) if e.data == "hello" && e.id == "e-1-0"));
        }
    }

    #[test]
    fn close_delimited_and_errors() {
        let mut r = Reader::new();
        let mut p = Parser::new();
        let mut items = Vec::new();
        let out = r.consume(b"HTTP/1.1 200 OK\r\n\r\ndata: x\n\n", &mut p, &mut items);
        assert_eq!(out, Pump::Data);
        assert_eq!(items.len(), 1);
        let mut r = Reader::new();
        let out = r.consume(b"HTTP/1.1 503 No\r\n\r\n", &mut p, &mut items);
        assert_eq!(out, Pump::Status(503));
        let mut r = Reader::new();
        assert!(matches!(
            r.consume(b"nonsense\r\n\r\n", &mut p, &mut items),
            Pump::Failed(_)
        ));
    }
}
