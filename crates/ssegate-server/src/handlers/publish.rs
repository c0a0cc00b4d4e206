//! Publishing: `POST /v1/channels/{channel}/events` and `POST /v1/publish` (batch).
//!
//! A request is fully read and validated before anything is published: a batch with one
//! bad event publishes nothing and names the event's index. Bodies:
//! `application/json` (or no content type) `{"data": <any JSON>, "event": "type"?}`;
//! `application/x-www-form-urlencoded` with `data` and `event` (what `curl -d` sends);
//! `text/plain` as the data string (`?event=` gives the type). Anything else is 415.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::json;
use serde_json::value::RawValue;
use ssegate_core::{ChannelName, Data, EventType, NewEvent, Position};

use crate::body::Body;
use crate::error::{ApiError, channel_error, data_error, event_type_error};
use crate::handlers::json;
use crate::limits::BodyBytes;
use crate::query::Query;
use crate::state::AppState;

/// Longest accepted `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY: usize = 255;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    Json,
    Form,
    Text,
}

fn body_kind(headers: &HeaderMap) -> Result<BodyKind, ApiError> {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return Ok(BodyKind::Json);
    };
    let ct = ct.to_str().unwrap_or_default();
    let essence = ct.split(';').next().unwrap_or_default().trim();
    match essence.to_ascii_lowercase().as_str() {
        "application/json" => Ok(BodyKind::Json),
        "application/x-www-form-urlencoded" => Ok(BodyKind::Form),
        "text/plain" => Ok(BodyKind::Text),
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send application/json, application/x-www-form-urlencoded or text/plain",
        )),
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bad = || {
        ApiError::bad_request(
            "invalid_idempotency_key",
            format!("Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"),
        )
    };
    let s = v.to_str().map_err(|_| bad())?;
    if s.is_empty() || s.len() > MAX_IDEMPOTENCY_KEY || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad());
    }
    Ok(Some(s.to_owned()))
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("request body is larger than {limit} bytes"),
    )
}

/// How much of an over-limit body is read and thrown away before answering 413 (and of a
/// refused one while answering 503), so that a proxy still sending it gets the answer
/// instead of a reset (and answers 502).
const DRAIN_MAX: u64 = 8 * 1024 * 1024;
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads and discards the rest of a body, up to `budget` bytes.
async fn drain(body: &mut hyper::body::Incoming, mut budget: u64) {
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while let Some(Ok(frame)) = body.frame().await {
            let n = frame.data_ref().map_or(0, |d| d.len() as u64);
            if n >= budget {
                break;
            }
            budget -= n;
        }
    })
    .await;
}

/// Why reading a body stopped early.
enum Stop {
    TooLarge,
    Overloaded,
    Unreadable,
}

/// A body's bytes, holding their share of the node's body budget until the last
/// reference to them is dropped (when the request has been answered).
struct Held {
    buf: Vec<u8>,
    _share: BodyBytes,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

/// Reads a whole request body of at most `limit` bytes, within the node's bounds
/// (docs/security.md, "Limits"):
///
/// - larger than `limit` (by `Content-Length`, or while reading): `413 body_too_large`,
///   after reading and discarding up to [`DRAIN_MAX`] of it;
/// - its bytes do not fit in the node's body budget: `503 overloaded` with `Retry-After`,
///   before any of it is read when it has a `Content-Length` (else as soon as a chunk does
///   not fit). The rest is thrown away in the background for at most [`DRAIN_TIMEOUT`],
///   so that a client still sending reads the answer rather than a reset; a client that
///   sent `Expect: 100-continue` is never asked for its body;
/// - not complete within `SSEGATE_BODY_READ_TIMEOUT` of this call: `408 body_timeout`,
///   and the connection is closed.
///
/// The bytes returned keep their share of the budget while they live.
pub(crate) async fn read_body(
    state: &AppState,
    req: Request<hyper::body::Incoming>,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let expects_continue = req
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let mut body = req.into_body();
    if let Some(n) = declared.filter(|n| *n > limit as u64) {
        if n <= DRAIN_MAX {
            drain(&mut body, n).await;
        }
        return Err(too_large(limit));
    }
    let declared = declared.map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX));
    let budget = &state.body_budget;
    let Some(mut share) = budget.try_take(declared) else {
        if !expects_continue {
            discard_later(state, body, declared as u64);
        }
        return Err(overloaded());
    };
    let mut buf = Vec::with_capacity(declared);
    let read = async {
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                return Err(Stop::Unreadable);
            };
            let Some(data) = frame.data_ref() else {
                continue;
            };
            let needed = buf.len() + data.len();
            if needed > limit {
                return Err(Stop::TooLarge);
            }
            if needed > buf.capacity() {
                // No Content-Length (chunked, or HTTP/2 without it): the share grows with
                // the buffer, doubling up to the limit.
                let cap = needed.max(buf.capacity().saturating_mul(2).min(limit));
                if !share.grow(budget, cap - share.len()) {
                    return Err(Stop::Overloaded);
                }
                buf.reserve_exact(cap - buf.len());
            }
            buf.extend_from_slice(data);
        }
        Ok(())
    };
    match tokio::time::timeout(state.settings.body_read_timeout, read).await {
        Ok(Ok(())) => Ok(Bytes::from_owner(Held { buf, _share: share })),
        Ok(Err(Stop::TooLarge)) => {
            drop((buf, share));
            drain(&mut body, DRAIN_MAX).await;
            Err(too_large(limit))
        }
        Ok(Err(Stop::Overloaded)) => {
            drop((buf, share));
            discard_later(state, body, DRAIN_MAX);
            Err(overloaded())
        }
        Ok(Err(Stop::Unreadable)) => Err(ApiError::bad_request(
            "invalid_body",
            "the request body could not be read",
        )),
        // Dropping the body makes hyper stop reading the connection and close it.
        Err(_) => Err(ApiError {
            close: true,
            ..ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the request body did not arrive within {}",
                    humantime::format_duration(state.settings.body_read_timeout)
                ),
            )
        }),
    }
}

fn overloaded() -> ApiError {
    ApiError::overloaded("too many request bodies in flight on this node; retry later")
}

/// Reads and discards the rest of a refused body in the background, up to `budget`
/// bytes and [`DRAIN_TIMEOUT`], while the answer is written.
fn discard_later(state: &AppState, mut body: hyper::body::Incoming, budget: u64) {
    state
        .lifecycle
        .spawn(async move { drain(&mut body, budget).await });
}

fn invalid_json(e: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(
        "invalid_json",
        format!("request body is not valid JSON: {e}"),
    )
}

/// Checks that the body is JSON and keeps its text: event data is published as the
/// publisher wrote it (compacted), never through a [`serde_json::Value`], which would
/// round numbers beyond `f64` and reorder keys.
fn parse_json(bytes: &[u8]) -> Result<&RawValue, ApiError> {
    serde_json::from_slice(bytes).map_err(invalid_json)
}

/// The first byte of a JSON value's text, which tells its type.
fn json_type(raw: &RawValue) -> u8 {
    raw.get().trim_start().bytes().next().unwrap_or_default()
}

/// The members of a JSON object, each value still as text (a repeated key: the last
/// one counts, as before). `None`: not an object.
fn object(raw: &RawValue) -> Result<Option<BTreeMap<String, &RawValue>>, ApiError> {
    if json_type(raw) != b'{' {
        return Ok(None);
    }
    serde_json::from_str(raw.get())
        .map(Some)
        .map_err(invalid_json)
}

/// A member that must be a JSON string (or, with `null_ok`, `null`).
fn string_member(raw: &RawValue, name: &str, null_ok: bool) -> Result<Option<String>, ApiError> {
    match json_type(raw) {
        b'"' => serde_json::from_str(raw.get())
            .map(Some)
            .map_err(invalid_json),
        b'n' if null_ok => Ok(None),
        _ => Err(invalid_body(format!("{name:?} must be a string"))),
    }
}

fn invalid_body(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_body", message)
}

fn event_type(raw: Option<&str>) -> Result<Option<EventType>, ApiError> {
    raw.map(|t| EventType::new(t).map_err(event_type_error))
        .transpose()
}

/// One event object: `{"data": ..., "event": ...}` plus `"channel"` in batches.
fn event_from_object(
    value: &RawValue,
    channel: Option<&ChannelName>,
    max_size: usize,
) -> Result<NewEvent, ApiError> {
    let Some(mut map) = object(value)? else {
        return Err(invalid_body("an event must be a JSON object"));
    };
    let allowed: &[&str] = if channel.is_some() {
        &["data", "event"]
    } else {
        &["channel", "data", "event"]
    };
    if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        let shown: String = unknown.chars().take(64).collect();
        return Err(invalid_body(format!(
            "unknown field {shown:?}; allowed: {}",
            allowed.join(", ")
        )));
    }
    let channel = match channel {
        Some(c) => c.clone(),
        None => match map.remove("channel") {
            Some(raw) => match string_member(raw, "channel", false)? {
                Some(s) => ChannelName::new(&s).map_err(channel_error)?,
                None => return Err(invalid_body("\"channel\" must be a string")),
            },
            None => return Err(invalid_body("\"channel\" must be a string")),
        },
    };
    let data = map
        .remove("data")
        .ok_or_else(|| invalid_body("missing field \"data\""))?;
    let event_type = match map.remove("event") {
        None => None,
        Some(raw) => event_type(string_member(raw, "event", true)?.as_deref())?,
    };
    let data = Data::from_raw_json(data).map_err(invalid_json)?;
    data.check_size(max_size).map_err(data_error)?;
    Ok(NewEvent {
        channel,
        event_type,
        data,
        trace: ssegate_broker::trace::current_traceparent(),
    })
}

fn text(bytes: Bytes) -> Result<String, ApiError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| invalid_body("request body is not valid UTF-8"))
}

/// Records a publish request's outcome: duration (request in to broker acknowledged),
/// events published, or the error's class.
pub(crate) async fn measured(
    state: &AppState,
    parent: Option<String>,
    publish: impl std::future::Future<Output = Result<(Response<Body>, usize), ApiError>>,
) -> Result<Response<Body>, ApiError> {
    let started = std::time::Instant::now();
    if let Some(limit) = &state.publishes {
        if let Err(secs) = limit.take() {
            let mut e = ApiError::new(
                http::StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many publishes on this node; retry later",
            );
            e.retry_after = Some(secs);
            state.metrics.publish_error(e.class());
            return Err(e);
        }
    }
    // Held until the publish is answered: past the cap nothing of the request is read.
    let Ok(_in_flight) = state.publishes_in_flight.clone().try_acquire_owned() else {
        let e = ApiError::overloaded("too many publishes in flight on this node; retry later");
        state.metrics.publish_error(e.class());
        return Err(e);
    };
    // The publish's span: exported when tracing is configured, and its `traceparent` is
    // stored with the events so that deliveries on every node join this trace. A
    // publisher's own `traceparent` header makes it part of the publisher's trace.
    let span = tracing::info_span!(target: "ssegate_trace", "publish");
    if let (Some(hook), Some(parent)) = (ssegate_broker::trace::hook(), parent.as_deref()) {
        hook.adopt_parent(&span, parent);
    }
    match tracing::Instrument::instrument(publish, span).await {
        Ok((res, n)) => {
            let m = &state.metrics;
            m.publish_duration.record(started.elapsed().as_secs_f64());
            m.events_published.increment(n as u64);
            Ok(res)
        }
        Err(e) => {
            state.metrics.publish_error(e.class());
            Err(e)
        }
    }
}

/// `POST /v1/channels/{channel}/events`.
pub(crate) async fn publish_one(
    state: &AppState,
    req: Request<hyper::body::Incoming>,
    channel: &str,
) -> Result<(Response<Body>, usize), ApiError> {
    let publisher = state.auth.publisher(req.headers())?;
    let channel = ChannelName::new(channel).map_err(channel_error)?;
    if !publisher.may_publish(&channel) {
        return Err(crate::auth::forbidden(&channel));
    }
    let kind = body_kind(req.headers())?;
    let key = idempotency_key(req.headers())?;
    let query = Query::parse(req.uri().query());
    let max_event = state.settings.max_event_size;
    let bytes = read_body(state, req, state.settings.max_body_size).await?;
    let event = match kind {
        BodyKind::Json => event_from_object(parse_json(&bytes)?, Some(&channel), max_event)?,
        BodyKind::Form => {
            let form = Query::parse(Some(&text(bytes)?));
            let data = form
                .get("data")
                .ok_or_else(|| invalid_body("missing form field \"data\""))?;
            let data = Data::text(data.to_owned());
            data.check_size(max_event).map_err(data_error)?;
            NewEvent {
                channel: channel.clone(),
                event_type: event_type(form.get("event").filter(|s| !s.is_empty()))?,
                data,
                trace: ssegate_broker::trace::current_traceparent(),
            }
        }
        BodyKind::Text => {
            let data = Data::text(text(bytes)?);
            data.check_size(max_event).map_err(data_error)?;
            NewEvent {
                channel: channel.clone(),
                event_type: event_type(query.get("event").filter(|s| !s.is_empty()))?,
                data,
                trace: ssegate_broker::trace::current_traceparent(),
            }
        }
    };
    let published = state.broker.publish(vec![event], key.as_deref()).await?;
    let id = published.ids.first().copied().unwrap_or_default();
    let res = json(
        StatusCode::CREATED,
        &json!({
            "id": Position { epoch: published.epoch, id }.to_string(),
            "channel": channel,
        }),
    );
    Ok((res, 1))
}

/// `POST /v1/publish`: `{"events": [{"channel", "data", "event"?}, ...]}`.
pub(crate) async fn publish_batch(
    state: &AppState,
    req: Request<hyper::body::Incoming>,
) -> Result<(Response<Body>, usize), ApiError> {
    let publisher = state.auth.publisher(req.headers())?;
    if body_kind(req.headers())? != BodyKind::Json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "a batch is application/json",
        ));
    }
    let key = idempotency_key(req.headers())?;
    let bytes = read_body(state, req, state.settings.max_body_size).await?;
    let Some(mut root) = object(parse_json(&bytes)?)? else {
        return Err(invalid_body("expected {\"events\": [...]}"));
    };
    if let Some(unknown) = root.keys().find(|k| k.as_str() != "events") {
        let shown: String = unknown.chars().take(64).collect();
        return Err(invalid_body(format!(
            "unknown field {shown:?}; allowed: events"
        )));
    }
    let items: Vec<&RawValue> = match root.remove("events") {
        Some(raw) if json_type(raw) == b'[' => {
            serde_json::from_str(raw.get()).map_err(invalid_json)?
        }
        _ => return Err(invalid_body("\"events\" must be an array")),
    };
    if items.is_empty() {
        return Err(ApiError::bad_request("empty_batch", "\"events\" is empty"));
    }
    let max_event = state.settings.max_event_size;
    let events = items
        .into_iter()
        .enumerate()
        .map(|(i, v)| event_from_object(v, None, max_event).map_err(|e| e.at_index(i)))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(i) = events
        .iter()
        .position(|e| !publisher.may_publish(&e.channel))
    {
        return Err(crate::auth::forbidden(&events[i].channel).at_index(i));
    }
    let published = state.broker.publish(events, key.as_deref()).await?;
    let ids: Vec<String> = published
        .ids
        .iter()
        .map(|&id| {
            Position {
                epoch: published.epoch,
                id,
            }
            .to_string()
        })
        .collect();
    let n = ids.len();
    Ok((json(StatusCode::CREATED, &json!({ "ids": ids })), n))
}
