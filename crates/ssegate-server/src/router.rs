//! A small router: the v1 API has a handful of routes, so a match on path segments is
//! clearer than a framework. Known paths with the wrong method answer 405 with `Allow`.

use std::future::Future;
use std::ops::ControlFlow;
use std::sync::Arc;

use http::{Method, Request, Response};
use hyper::body::Incoming;
use percent_encoding::percent_decode_str;

use crate::body::Body;
use crate::cluster_view;
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
    let parsed = match Route::parse(req.uri().path(), Listener::Public) {
        Some(Route::ChannelEvents(ch)) => {
            decode_segment(ch).and_then(|ch| stream::subscribe_one(state, req, &ch))
        }
        Some(Route::Events) => stream::subscribe_many(state, req),
        _ => Err(ApiError::not_found()),
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

/// Every route of both listeners, parsed once from a path: hyper's dispatch and the lean
/// stream front both start from it, so a route is added here and nowhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route<'a> {
    /// `/`: the demo page (public listener).
    Demo,
    /// `/ssegate.js`: the browser helper (public listener).
    BrowserHelper,
    /// `/healthz` and `/readyz` (both listeners).
    Healthz,
    Readyz,
    /// Admin listener only.
    Stats,
    Metrics,
    Cluster,
    ClusterStream,
    Dashboard,
    /// `/v1/channels/{channel}/events`, with the channel still percent-encoded: `GET`
    /// streams, `POST` publishes.
    ChannelEvents(&'a str),
    /// `/v1/channels/{channel}/history`, the channel still percent-encoded.
    ChannelHistory(&'a str),
    /// `/v1/events`: a multi-channel stream.
    Events,
    /// `/v1/tokens`, `/v1/publish`.
    Tokens,
    Publish,
}

impl<'a> Route<'a> {
    /// The route `path` names on `listener`, if any.
    pub(crate) fn parse(path: &'a str, listener: Listener) -> Option<Self> {
        let mut it = path.strip_prefix('/')?.split('/');
        let segs = (it.next(), it.next(), it.next(), it.next(), it.next());
        let both = match segs {
            (Some("healthz"), None, ..) => Some(Self::Healthz),
            (Some("readyz"), None, ..) => Some(Self::Readyz),
            _ => None,
        };
        let own = match (listener, segs) {
            (Listener::Admin, (Some("metrics"), None, ..)) => Some(Self::Metrics),
            (Listener::Admin, (Some("dashboard"), None, ..)) => Some(Self::Dashboard),
            (Listener::Admin, (Some("v1"), Some("stats"), None, ..)) => Some(Self::Stats),
            (Listener::Admin, (Some("v1"), Some("cluster"), None, ..)) => Some(Self::Cluster),
            (Listener::Admin, (Some("v1"), Some("cluster"), Some("stream"), None, _)) => {
                Some(Self::ClusterStream)
            }
            (Listener::Public, (Some(""), None, ..)) => Some(Self::Demo),
            (Listener::Public, (Some("ssegate.js"), None, ..)) => Some(Self::BrowserHelper),
            (Listener::Public, (Some("v1"), Some("channels"), Some(ch), Some("events"), None)) => {
                Some(Self::ChannelEvents(ch))
            }
            (Listener::Public, (Some("v1"), Some("channels"), Some(ch), Some("history"), None)) => {
                Some(Self::ChannelHistory(ch))
            }
            (Listener::Public, (Some("v1"), Some("events"), None, ..)) => Some(Self::Events),
            (Listener::Public, (Some("v1"), Some("tokens"), None, ..)) => Some(Self::Tokens),
            (Listener::Public, (Some("v1"), Some("publish"), None, ..)) => Some(Self::Publish),
            _ => None,
        };
        both.or(own)
    }

    /// The methods the route answers, for a 405's `Allow`.
    pub(crate) fn allow(self) -> &'static str {
        match self {
            Self::ChannelEvents(_) => "GET, POST",
            Self::ChannelHistory(_) | Self::Events => "GET",
            Self::Tokens | Self::Publish => "POST",
            _ => "GET, HEAD",
        }
    }

    /// Whether `method` on this route opens an SSE stream (the front serves those itself).
    pub(crate) fn is_stream(self, method: &Method) -> bool {
        method == Method::GET && matches!(self, Self::ChannelEvents(_) | Self::Events)
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
    let Some(route) = Route::parse(&path, listener) else {
        return Err(ApiError::not_found());
    };
    let method = req.method().clone();
    let get = method == Method::GET || method == Method::HEAD;
    let traceparent = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    match route {
        Route::Healthz if get => Ok(health::healthz(state)),
        Route::Readyz if get => Ok(health::readyz(state).await),
        Route::Stats if get => Ok(health::stats(state)),
        Route::Metrics if get => Ok(health::metrics()),
        Route::Cluster if get => Ok(cluster_view::list(state).await),
        Route::ClusterStream if get => Ok(cluster_view::stream(state.clone())),
        Route::Dashboard if get => Ok(cluster_view::dashboard()),
        Route::Demo if get => Ok(handlers::demo_page()),
        Route::BrowserHelper if get => Ok(handlers::browser_helper()),
        Route::ChannelEvents(ch) if method == Method::GET => {
            let ch = decode_segment(ch)?;
            Ok(stream::subscribe_one(state, &req, &ch)?.start().await)
        }
        Route::ChannelEvents(ch) if method == Method::POST => {
            let ch = decode_segment(ch)?;
            publish::measured(state, traceparent, publish::publish_one(state, req, &ch)).await
        }
        Route::ChannelHistory(ch) if method == Method::GET => {
            let ch = decode_segment(ch)?;
            history::history(state, &req, &ch).await
        }
        Route::Events if method == Method::GET => {
            Ok(stream::subscribe_many(state, &req)?.start().await)
        }
        Route::Tokens if method == Method::POST => handlers::tokens(state, req).await,
        Route::Publish if method == Method::POST => {
            publish::measured(state, traceparent, publish::publish_batch(state, req)).await
        }
        other => Err(ApiError::method_not_allowed(other.allow())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_parses_on_its_listener_only() {
        use Listener::{Admin, Public};
        let cases = [
            ("/", Public, Some(Route::Demo)),
            ("/ssegate.js", Public, Some(Route::BrowserHelper)),
            ("/ssegate.js", Admin, None),
            ("/healthz", Public, Some(Route::Healthz)),
            ("/readyz", Admin, Some(Route::Readyz)),
            ("/metrics", Admin, Some(Route::Metrics)),
            ("/metrics", Public, None),
            ("/v1/stats", Admin, Some(Route::Stats)),
            ("/v1/cluster", Admin, Some(Route::Cluster)),
            ("/v1/cluster/stream", Admin, Some(Route::ClusterStream)),
            ("/dashboard", Admin, Some(Route::Dashboard)),
            (
                "/v1/channels/a%3Ab/events",
                Public,
                Some(Route::ChannelEvents("a%3Ab")),
            ),
            ("/v1/channels/a/events", Admin, None),
            (
                "/v1/channels/a/history",
                Public,
                Some(Route::ChannelHistory("a")),
            ),
            ("/v1/events", Public, Some(Route::Events)),
            ("/v1/tokens", Public, Some(Route::Tokens)),
            ("/v1/publish", Public, Some(Route::Publish)),
            ("/v1/channels/a/events/x", Public, None),
            ("/v1/events/", Public, None),
            ("//", Public, None),
            ("healthz", Public, None),
        ];
        for (path, listener, want) in cases {
            assert_eq!(Route::parse(path, listener), want, "{path} on {listener:?}");
        }
        assert!(Route::Events.is_stream(&Method::GET));
        assert!(!Route::ChannelEvents("a").is_stream(&Method::POST));
        assert!(!Route::ChannelHistory("a").is_stream(&Method::GET));
    }
}
