//! A small router: the v1 API has a handful of routes, so a match on path segments is
//! clearer than a framework. Known paths with the wrong method answer 405 with `Allow`.

use std::future::Future;
use std::ops::ControlFlow;
use std::sync::Arc;

use http::{Method, Request, Response};
use hyper::body::Incoming;
use percent_encoding::percent_decode_str;

use crate::body::Body;
use crate::cluster;
use crate::error::ApiError;
use crate::handlers::{self, health, history, publish};
use crate::state::AppState;
use crate::stream;

/// Which listener a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Listener {
    Public,
    Admin,
}

fn decode_segment(seg: &str) -> Result<String, ApiError> {
    percent_decode_str(seg)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| ApiError::bad_request("invalid_channel", "channel name is not valid UTF-8"))
}

pub(crate) async fn route(
    state: Arc<AppState>,
    req: Request<Incoming>,
    listener: Listener,
) -> Response<Body> {
    let origin = match cors_gate(&state, &req, listener) {
        ControlFlow::Continue(origin) => origin,
        ControlFlow::Break(res) => return res,
    };
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let result = dispatch(&state, req, listener).await;
    finish(&state, result, origin, &method, &path)
}

/// A subscribe request read by the connection's own HTTP/1.1 front (see `conn`): the
/// same CORS policy and handlers as [`route`], for the two stream routes only. The
/// request is parsed before anything is awaited, so the future does not borrow it.
pub(crate) fn route_stream<B>(
    state: &Arc<AppState>,
    req: &Request<B>,
) -> impl Future<Output = Response<Body>> + Send + 'static {
    let gate = cors_gate(state, req, Listener::Public);
    let parsed = match stream_route(req.uri().path()) {
        Some(StreamRoute::One(ch)) => {
            decode_segment(ch).and_then(|ch| stream::subscribe_one(state, req, &ch))
        }
        Some(StreamRoute::Many) => stream::subscribe_many(state, req),
        None => Err(ApiError::not_found()),
    };
    let state = state.clone();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    async move {
        let origin = match gate {
            ControlFlow::Continue(origin) => origin,
            ControlFlow::Break(res) => return res,
        };
        let result = match parsed {
            Ok(sub) => Ok(sub.start().await),
            Err(e) => Err(e),
        };
        finish(&state, result, origin, &method, &path)
    }
}

/// The two subscribe routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamRoute<'a> {
    /// `/v1/channels/{channel}/events`, with the channel still percent-encoded.
    One(&'a str),
    /// `/v1/events`.
    Many,
}

/// Which subscribe route `path` names, if any.
pub(crate) fn stream_route(path: &str) -> Option<StreamRoute<'_>> {
    let mut it = path.strip_prefix('/')?.split('/');
    match (it.next(), it.next(), it.next(), it.next(), it.next()) {
        (Some("v1"), Some("channels"), Some(ch), Some("events"), None) => {
            Some(StreamRoute::One(ch))
        }
        (Some("v1"), Some("events"), None, None, None) => Some(StreamRoute::Many),
        _ => None,
    }
}

/// The CORS check before a handler runs: the request's allowed origin, or the answer
/// already (a refused origin, or a preflight).
fn cors_gate<B>(
    state: &AppState,
    req: &Request<B>,
    listener: Listener,
) -> ControlFlow<Response<Body>, Option<http::HeaderValue>> {
    let cors = &state.settings.cors;
    // CORS applies to the public API; the admin listener is not for browsers of others.
    if listener != Listener::Public {
        return ControlFlow::Continue(None);
    }
    let origin = match cors.check(req.headers()) {
        Ok(origin) => origin,
        Err(e) => {
            let mut res = e.into_response();
            cors.decorate(&mut res, None);
            return ControlFlow::Break(res);
        }
    };
    if req.method() == Method::OPTIONS {
        if let Some(origin) = origin {
            return ControlFlow::Break(cors.preflight(req.headers(), origin));
        }
    }
    ControlFlow::Continue(origin)
}

/// A handler's result as a response, with the CORS headers.
fn finish(
    state: &AppState,
    result: Result<Response<Body>, ApiError>,
    origin: Option<http::HeaderValue>,
    method: &Method,
    path: &str,
) -> Response<Body> {
    let mut res = match result {
        Ok(res) => res,
        Err(e) => {
            // Paths only: query strings may carry tokens, which are never logged.
            tracing::debug!(%method, %path, status = e.status.as_u16(), code = e.code, "request refused");
            e.into_response()
        }
    };
    state.settings.cors.decorate(&mut res, origin);
    res
}

async fn dispatch(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    listener: Listener,
) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let method = req.method().clone();
    let get = method == Method::GET || method == Method::HEAD;
    let traceparent = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    match (listener, segments.as_slice()) {
        (_, ["healthz"]) if get => Ok(health::healthz(state)),
        (_, ["readyz"]) if get => Ok(health::readyz(state).await),
        (_, ["healthz" | "readyz"]) => Err(ApiError::method_not_allowed("GET, HEAD")),
        (Listener::Admin, ["v1", "stats"]) if get => Ok(health::stats(state)),
        (Listener::Admin, ["metrics"]) if get => Ok(health::metrics()),
        (Listener::Admin, ["v1", "cluster"]) if get => Ok(cluster::cluster(state).await),
        (Listener::Admin, ["v1", "cluster", "stream"]) if get => Ok(cluster::stream(state.clone())),
        (Listener::Admin, ["dashboard"]) if get => Ok(cluster::dashboard()),
        (Listener::Admin, ["v1", "cluster"] | ["v1", "cluster", "stream"] | ["dashboard"]) => {
            Err(ApiError::method_not_allowed("GET, HEAD"))
        }
        (Listener::Admin, ["metrics"]) => Err(ApiError::method_not_allowed("GET, HEAD")),
        (Listener::Admin, ["v1", "stats"]) => Err(ApiError::method_not_allowed("GET, HEAD")),
        (Listener::Admin, _) => Err(ApiError::not_found()),
        (_, [""]) if get => Ok(handlers::demo_page()),
        (_, [""]) => Err(ApiError::method_not_allowed("GET, HEAD")),
        (_, ["v1", "channels", ch, "events"]) => {
            let ch = decode_segment(ch)?;
            match method {
                Method::GET => match stream::subscribe_one(state, &req, &ch) {
                    Ok(sub) => Ok(sub.start().await),
                    Err(e) => Err(e),
                },
                Method::POST => {
                    publish::measured(state, traceparent, publish::publish_one(state, req, &ch))
                        .await
                }
                _ => Err(ApiError::method_not_allowed("GET, POST")),
            }
        }
        (_, ["v1", "channels", ch, "history"]) => {
            let ch = decode_segment(ch)?;
            match method {
                Method::GET => history::history(state, &req, &ch).await,
                _ => Err(ApiError::method_not_allowed("GET")),
            }
        }
        (_, ["v1", "events"]) => match method {
            Method::GET => match stream::subscribe_many(state, &req) {
                Ok(sub) => Ok(sub.start().await),
                Err(e) => Err(e),
            },
            _ => Err(ApiError::method_not_allowed("GET")),
        },
        (_, ["v1", "tokens"]) => match method {
            Method::POST => handlers::tokens(state, req).await,
            _ => Err(ApiError::method_not_allowed("POST")),
        },
        (_, ["v1", "publish"]) => match method {
            Method::POST => {
                publish::measured(state, traceparent, publish::publish_batch(state, req)).await
            }
            _ => Err(ApiError::method_not_allowed("POST")),
        },
        _ => Err(ApiError::not_found()),
    }
}
