//! Subscribing: `GET /v1/channels/{channel}/events` and `GET /v1/events`.
//!
//! Everything a request can get wrong (names, cursors, too many channels) is answered
//! with a JSON error *before* the stream starts, so a stream is never half-written.
//! Parsing a request ([`subscribe_one`], [`subscribe_many`]) is synchronous and yields a
//! [`Subscribe`]; [`Subscribe::start`] then opens the session, which fixes every
//! channel's start position before the response (and so its head) exists: a stream
//! starts at its head (see `session`).
//! Admission control answers with a `200` stream that carries only a jittered `retry:`
//! and ends: browsers' `EventSource` gives up for good on a 503, but reconnects after a
//! stream ends.

mod heads;
mod session;

use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Request, Response, header};
use ssegate_core::cursor::parse_channel_list;
use ssegate_core::{ChannelName, CompositeCursor, Cursor, StartFrom};

use crate::auth::{Principal, forbidden};
use crate::body::Body;
use crate::error::{ApiError, channel_error, cursor_error};
use crate::limits::client_ip;
use crate::metrics::RefuseReason;
use crate::query::Query;
use crate::state::{AppState, RemoteAddr};
use tracing::Instrument;

pub(crate) use heads::Heads;
pub(crate) use session::{IdForm, Session, Verdict, live_rule};

/// The client's cursor: a non-empty `Last-Event-ID` header, else `?lastEventId=`.
fn cursor_text(headers: &HeaderMap, query: &Query) -> Result<Option<String>, ApiError> {
    if let Some(v) = headers.get("last-event-id") {
        let v = v
            .to_str()
            .map_err(|_| ApiError::bad_request("invalid_cursor", "malformed event id"))?;
        if !v.is_empty() {
            return Ok(Some(v.to_owned()));
        }
    }
    Ok(query
        .get("lastEventId")
        .filter(|v| !v.is_empty())
        .map(str::to_owned))
}

/// A `text/event-stream` response with the headers every stream needs.
pub(crate) fn sse_response(body: Body) -> Response<Body> {
    let mut res = Response::new(body);
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-transform"),
    );
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    res
}

/// The admission-control answer: a stream with only a jittered `retry:`.
pub(crate) fn retry_only(state: &AppState, reason: RefuseReason) -> Response<Body> {
    state.metrics.refused(reason);
    let frame = ssegate_core::sse::retry_frame(state.settings.jittered_retry_ms());
    sse_response(Body::full(frame))
}

/// Who is subscribing: the token's grants (auth on) and the subject limits count.
struct Subscriber {
    principal: Option<Principal>,
    subject: String,
}

impl Subscriber {
    fn of<B>(state: &AppState, req: &Request<B>, query: &Query) -> Result<Self, ApiError> {
        let principal = state.auth.subscriber(req.headers(), query)?;
        let subject = match &principal {
            Some(p) => format!("sub:{}", p.subject),
            None => {
                let peer = req
                    .extensions()
                    .get::<RemoteAddr>()
                    .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |r| r.0.ip());
                let trusted = &state.settings.trusted_proxies;
                format!("ip:{}", client_ip(peer, req.headers(), trusted))
            }
        };
        Ok(Self { principal, subject })
    }

    /// 403 unless the token grants every channel.
    fn check(&self, channels: &[ChannelName]) -> Result<(), ApiError> {
        if let Some(p) = &self.principal {
            if let Some(ch) = channels.iter().find(|c| !p.may_subscribe(c)) {
                return Err(forbidden(ch));
            }
        }
        Ok(())
    }
}

/// `GET /v1/channels/{channel}/events`.
pub(crate) fn subscribe_one<B>(
    state: &Arc<AppState>,
    req: &Request<B>,
    channel: &str,
) -> Result<Subscribe, ApiError> {
    let query = Query::parse(req.uri().query());
    let who = Subscriber::of(state, req, &query)?;
    let channel = ChannelName::new(channel).map_err(channel_error)?;
    who.check(std::slice::from_ref(&channel))?;
    let (start, echo) = match cursor_text(req.headers(), &query)? {
        Some(text) => (
            Cursor::parse(&text).map_err(cursor_error)?.start(),
            Some(text),
        ),
        None => (StartFrom::Now, None),
    };
    Ok(Subscribe {
        state: state.clone(),
        who,
        ids: IdForm::Single,
        channels: vec![channel],
        starts: vec![start],
        echo,
    })
}

/// `GET /v1/events?channel=a&channel=b` (or `channels=a,b`).
pub(crate) fn subscribe_many<B>(
    state: &Arc<AppState>,
    req: &Request<B>,
) -> Result<Subscribe, ApiError> {
    let query = Query::parse(req.uri().query());
    let who = Subscriber::of(state, req, &query)?;
    let set =
        parse_channel_list(query.all("channel"), query.all("channels")).map_err(channel_error)?;
    if set.is_empty() {
        return Err(ApiError::bad_request(
            "missing_channel",
            "name at least one channel with ?channel=NAME or ?channels=A,B",
        ));
    }
    who.check(set.names())?;
    let max = state.settings.max_channels_per_connection;
    if set.len() > max {
        return Err(ApiError::bad_request(
            "too_many_channels",
            format!("at most {max} channels per stream"),
        ));
    }
    let (starts, echo) = match cursor_text(req.headers(), &query)? {
        Some(text) => {
            let cursor = CompositeCursor::parse(&text, &set).map_err(cursor_error)?;
            (
                (0..set.len()).map(|i| cursor.start(i)).collect(),
                Some(text),
            )
        }
        None => (vec![StartFrom::Now; set.len()], None),
    };
    let ids = IdForm::Composite {
        checksum: set.checksum(),
    };
    Ok(Subscribe {
        state: state.clone(),
        who,
        ids,
        channels: set.names().to_vec(),
        starts,
        echo,
    })
}

/// A valid subscribe request, not yet admitted or opened.
pub(crate) struct Subscribe {
    state: Arc<AppState>,
    who: Subscriber,
    ids: IdForm,
    channels: Vec<ChannelName>,
    starts: Vec<StartFrom>,
    echo: Option<String>,
}

impl Subscribe {
    /// Admits and opens the stream: the response (a stream whose start is fixed, or the
    /// retry-only refusal) is ready to be written once this returns.
    pub(crate) async fn start(self) -> Response<Body> {
        let Self {
            state,
            who,
            ids,
            channels,
            starts,
            echo,
        } = self;
        if state.is_draining() {
            return retry_only(&state, RefuseReason::Draining);
        }
        if state
            .new_streams
            .as_ref()
            .is_some_and(|r| r.take().is_err())
        {
            return retry_only(&state, RefuseReason::RateLimit);
        }
        let Some(subject) = state.subjects.enter(who.subject) else {
            return retry_only(&state, RefuseReason::SubjectLimit);
        };
        let Some(mut guard) = state.admit_stream() else {
            tracing::debug!("connection limit reached: told to retry");
            return retry_only(&state, RefuseReason::ConnectionLimit);
        };
        guard.subject = Some(subject);
        let expires_at = who.principal.as_ref().map(|p| p.expires_at);
        let id = state
            .next_stream_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // One span per stream, at debug: at the default level none is built, nor entered
        // on every poll. The node's span (with its id) is its parent.
        let span = tracing::debug_span!("stream", id, channels = channels.len());
        let open = Session::open(state, guard, ids, channels, starts, echo);
        let mut session = open.instrument(span.clone()).await;
        if let Some(exp) = expires_at {
            session.expire_at_unix(exp);
        }
        let lane = session.lane();
        let stream = futures_util::stream::unfold(session, move |mut s| {
            let span = span.clone();
            async move { s.next_frame().await.map(|frame| (frame, s)) }.instrument(span)
        });
        let mut res = sse_response(Body::stream(stream));
        if let Some(lane) = lane {
            res.extensions_mut().insert(lane);
        }
        res
    }
}
