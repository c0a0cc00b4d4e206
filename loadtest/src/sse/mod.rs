//! A minimal streaming HTTP/1.1 client for `text/event-stream`: no per-connection HTTP
//! client object, just a socket, a tiny state machine and the WHATWG parser of
//! `ssegate-client`.

pub(crate) mod conn;
pub(crate) mod http1;
