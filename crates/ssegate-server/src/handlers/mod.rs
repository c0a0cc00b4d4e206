//! Request handlers other than streams.

pub(crate) mod health;
pub(crate) mod history;
pub(crate) mod publish;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::body::Body;
use crate::error::ApiError;
use crate::state::AppState;

/// A JSON response.
pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    json_bytes(status, Bytes::from(value.to_string()))
}

/// A JSON response whose body is already written.
pub(crate) fn json_bytes(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut res = Response::new(Body::full(body));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// `POST /v1/tokens`: mint a short-lived subscribe token (see `auth::mint`).
pub(crate) async fn tokens(
    state: &AppState,
    req: http::Request<hyper::body::Incoming>,
) -> Result<Response<Body>, ApiError> {
    let publisher = state.auth.publisher(req.headers())?;
    let body = publish::read_body(state, req, 64 * 1024).await?;
    let minted = crate::auth::mint::mint(&state.auth, &publisher, &body)?;
    Ok(json(StatusCode::CREATED, &minted))
}

/// `GET /`: the demo page, embedded in the binary.
pub(crate) fn demo_page() -> Response<Body> {
    html(include_str!("../demo/index.html"))
}

/// `GET /ssegate.js`: the browser helper (docs/clients.md), a JavaScript module.
pub(crate) fn browser_helper() -> Response<Body> {
    embedded(
        include_str!("../demo/ssegate.js"),
        "text/javascript; charset=utf-8",
    )
}

/// A page embedded in the binary (the demo page, the cluster dashboard).
pub(crate) fn html(page: &'static str) -> Response<Body> {
    embedded(page, "text/html; charset=utf-8")
}

/// A file embedded in the binary, revalidated on every use (a new release may change it).
fn embedded(text: &'static str, content_type: &'static str) -> Response<Body> {
    let mut res = Response::new(Body::full(Bytes::from_static(text.as_bytes())));
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}
