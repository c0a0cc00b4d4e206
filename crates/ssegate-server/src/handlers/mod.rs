//! Request handlers other than streams.

pub(crate) mod health;
pub(crate) mod history;
pub(crate) mod publish;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::body::Body;

/// A JSON response.
pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut res = Response::new(Body::full(Bytes::from(value.to_string())));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// `GET /`: the demo page, embedded in the binary.
pub(crate) fn demo_page() -> Response<Body> {
    let mut res = Response::new(Body::full(Bytes::from_static(
        include_str!("../demo/index.html").as_bytes(),
    )));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}
