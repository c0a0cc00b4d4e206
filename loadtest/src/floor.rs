//! `floor`: the cheapest SSE server we can write, measured beside the systems under test
//! so that their CPU per delivery reads as a ratio to what the kernel costs.
//!
//! It does nothing a real gateway must do: no ids, no history, no auth, no heartbeats, no
//! backpressure. A subscriber's `GET /sub/{ch}` gets a bare `200` head and a
//! close-delimited body; a `POST /pub/{ch}` frames its body once as `data: ...\n\n` and
//! writes that one buffer to every socket of the channel with one `write` each, on the
//! publisher's own thread, then answers `201`. Blocking std sockets and threads, no
//! runtime: what is left is the socket writes, the publish request and the accept, which
//! every server pays.
//!
//! Bounds: request heads up to [`MAX_HEAD`] and bodies up to [`MAX_BODY`]; a socket whose
//! write blocks for [`WRITE_TIMEOUT`] is dropped. It listens on loopback only and runs
//! until killed (`compare --floor` starts and kills it).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, ensure};

/// Largest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// Largest publish body.
const MAX_BODY: usize = 1024 * 1024;
/// A subscriber that does not take a frame for this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a new connection may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

type Channels = Arc<Mutex<HashMap<String, Vec<TcpStream>>>>;

/// Serves on `listen` (loopback) until killed; prints `listening <addr>` once bound.
pub(crate) fn main(listen: SocketAddr) -> anyhow::Result<()> {
    ensure!(
        listen.ip().is_loopback(),
        "the floor listens on loopback only"
    );
    crate::procstat::raise_nofile();
    let listener = TcpListener::bind(listen).with_context(|| format!("bind {listen}"))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening {}", listener.local_addr()?)?;
    out.flush()?;
    drop(out);
    serve(&listener);
    Ok(())
}

fn serve(listener: &TcpListener) {
    let channels: Channels = Arc::default();
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        // A failed head is that client's problem, never the server's.
        let _ = accept(&mut conn, &channels);
    }
}

/// Reads the first request: a subscriber joins its channel here; a publisher gets a
/// thread of its own for its keep-alive connection.
fn accept(conn: &mut TcpStream, channels: &Channels) -> anyhow::Result<()> {
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(HEAD_TIMEOUT))?;
    let mut buf = Vec::with_capacity(1024);
    let req = read_head(conn, &mut buf)?;
    if let Some(ch) = req
        .path
        .strip_prefix("/sub/")
        .filter(|_| req.method == "GET")
    {
        conn.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
              cache-control: no-cache\r\nconnection: close\r\n\r\n",
        )?;
        conn.set_write_timeout(Some(WRITE_TIMEOUT))?;
        let ch = ch.to_owned();
        let sock = conn.try_clone()?;
        lock(channels).entry(ch).or_default().push(sock);
        return Ok(());
    }
    let mut conn = conn.try_clone()?;
    let channels = channels.clone();
    std::thread::spawn(move || {
        let _ = serve_publisher(&mut conn, &channels, req, buf);
    });
    Ok(())
}

/// One publisher connection: every request is a publish (or a 404), in order.
fn serve_publisher(
    conn: &mut TcpStream,
    channels: &Channels,
    mut req: Head,
    mut buf: Vec<u8>,
) -> anyhow::Result<()> {
    conn.set_read_timeout(None)?;
    loop {
        while buf.len() < req.content_length {
            let mut chunk = [0u8; 16 * 1024];
            let n = conn.read(&mut chunk)?;
            ensure!(n > 0, "closed mid-body");
            buf.extend_from_slice(&chunk[..n]);
        }
        let rest = buf.split_off(req.content_length);
        let body = std::mem::replace(&mut buf, rest);
        match req
            .path
            .strip_prefix("/pub/")
            .filter(|_| req.method == "POST")
        {
            Some(ch) => {
                let mut frame = Vec::with_capacity(body.len() + 8);
                frame.extend_from_slice(b"data: ");
                frame.extend_from_slice(&body);
                frame.extend_from_slice(b"\n\n");
                if let Some(socks) = lock(channels).get_mut(ch) {
                    socks.retain_mut(|s| s.write_all(&frame).is_ok());
                }
                conn.write_all(b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n")?;
            }
            None => conn.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")?,
        }
        req = read_head(conn, &mut buf)?;
    }
}

/// What the floor needs of a request head.
#[derive(Debug)]
struct Head {
    method: String,
    path: String,
    content_length: usize,
}

/// Reads until a whole head is in `buf`, parses it and leaves only what follows it.
fn read_head(conn: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<Head> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        if let httparse::Status::Complete(len) = req.parse(buf)? {
            let content_length = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map(|h| std::str::from_utf8(h.value).unwrap_or("x").trim().parse())
                .transpose()
                .context("content-length")?
                .unwrap_or(0);
            ensure!(content_length <= MAX_BODY, "body too large");
            let head = Head {
                method: req.method.unwrap_or_default().to_owned(),
                path: req.path.unwrap_or_default().to_owned(),
                content_length,
            };
            buf.drain(..len);
            return Ok(head);
        }
        ensure!(buf.len() < MAX_HEAD, "head too large");
        let mut chunk = [0u8; 4096];
        let n = conn.read(&mut chunk)?;
        ensure!(n > 0, "closed before a whole head");
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn lock(channels: &Channels) -> std::sync::MutexGuard<'_, HashMap<String, Vec<TcpStream>>> {
    channels.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The floor as a child process of a run: started on a free loopback port, killed when
/// dropped.
pub(crate) struct Child {
    child: std::process::Child,
    /// `http://127.0.0.1:PORT`.
    pub(crate) url: String,
}

impl Child {
    pub(crate) fn start() -> anyhow::Result<Self> {
        use std::io::BufRead as _;
        let exe = std::env::current_exe()?;
        let mut child = std::process::Command::new(exe)
            .args(["floor", "--listen", "127.0.0.1:0"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("starting the floor")?;
        let stdout = child.stdout.take().context("the floor's stdout")?;
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .with_context(|| format!("the floor said {line:?}"))?;
        Ok(Self {
            url: format!("http://{addr}"),
            child,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publish_is_written_to_every_subscriber_of_its_channel() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || serve(&listener));
        let head = |sock: &mut TcpStream, want: &str| {
            let mut got = Vec::new();
            let mut byte = [0u8; 1];
            while !got.ends_with(b"\r\n\r\n") {
                sock.read_exact(&mut byte).unwrap();
                got.push(byte[0]);
            }
            let got = String::from_utf8(got).unwrap();
            assert!(got.starts_with(want), "{got}");
        };
        let mut subs: Vec<TcpStream> = (0..2)
            .map(|_| {
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(b"GET /sub/a HTTP/1.1\r\nhost: x\r\n\r\n")
                    .unwrap();
                head(&mut s, "HTTP/1.1 200 OK");
                s
            })
            .collect();
        let mut other = TcpStream::connect(addr).unwrap();
        other.write_all(b"GET /sub/b HTTP/1.1\r\n\r\n").unwrap();
        head(&mut other, "HTTP/1.1 200 OK");
        let mut publisher = TcpStream::connect(addr).unwrap();
        for data in ["one", "two"] {
            let req = format!(
                "POST /pub/a HTTP/1.1\r\ncontent-length: {}\r\n\r\n{data}",
                data.len()
            );
            publisher.write_all(req.as_bytes()).unwrap();
            head(&mut publisher, "HTTP/1.1 201");
        }
        for s in &mut subs {
            let mut frames = [0u8; 22];
            s.read_exact(&mut frames).unwrap();
            assert_eq!(&frames, b"data: one\n\ndata: two\n\n");
        }
        other.set_nonblocking(true).unwrap();
        let mut nothing = [0u8; 1];
        assert!(
            other.read(&mut nothing).is_err(),
            "another channel got nothing"
        );
    }

    /// `read_head` on the server side of a loopback connection whose client sent `bytes`.
    fn head_of(bytes: &[u8]) -> anyhow::Result<Head> {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        server.set_read_timeout(Some(HEAD_TIMEOUT)).unwrap();
        // A client that sends more than the floor reads may see its write refused.
        let _ = client.write_all(bytes);
        let _ = client.shutdown(std::net::Shutdown::Write);
        read_head(&mut server, &mut Vec::new())
    }

    #[test]
    fn read_head_takes_a_head_and_refuses_past_its_bounds() {
        let head = head_of(b"POST /pub/a HTTP/1.1\r\ncontent-length: 3\r\n\r\nabc").unwrap();
        assert_eq!(
            (
                head.method.as_str(),
                head.path.as_str(),
                head.content_length
            ),
            ("POST", "/pub/a", 3)
        );
        // A head that never ends is read no further than MAX_HEAD (and a chunk).
        let endless = format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_HEAD * 2));
        let e = head_of(endless.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("head too large"), "{e}");
        let big = format!(
            "POST /pub/a HTTP/1.1\r\ncontent-length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        let e = head_of(big.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("body too large"), "{e}");
        let e = head_of(b"POST /pub/a HTTP/1.1\r\ncontent-length: x\r\n\r\n").unwrap_err();
        assert!(e.to_string().contains("content-length"), "{e}");
        let e = head_of(b"GET /sub/a HTTP/1.1\r\n").unwrap_err();
        assert!(e.to_string().contains("closed before a whole head"), "{e}");
    }
}
