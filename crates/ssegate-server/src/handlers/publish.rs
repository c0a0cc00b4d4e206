//! Publishing: `POST /v1/channels/{channel}/events` and `POST /v1/publish` (batch).
//!
//! A request is fully read and validated before anything is published: a batch with one
//! bad event publishes nothing and names the event's index. Bodies:
//! `application/json` (or no content type) `{"data": <any JSON>, "event": "type"?}`;
//! `application/x-www-form-urlencoded` with `data` and `event` (what `curl -d` sends);
//! `text/plain` as the data string (`?event=` gives the type). Anything else is 415.

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use ssegate_core::{ChannelName, Data, EventType, NewEvent, Position};

use crate::body::Body;
use crate::error::{ApiError, channel_error, data_error, event_type_error};
use crate::handlers::json;
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

/// How much of an over-limit body is read and thrown away before answering 413, so that
/// a proxy still sending it gets the answer instead of a reset (and answers 502).
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

pub(crate) async fn read_body(
    req: Request<hyper::body::Incoming>,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = req.into_body();
    if let Some(n) = declared.filter(|n| *n > limit as u64) {
        if n <= DRAIN_MAX {
            drain(&mut body, n).await;
        }
        return Err(too_large(limit));
    }
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err(ApiError::bad_request(
                "invalid_body",
                "the request body could not be read",
            ));
        };
        if let Some(data) = frame.data_ref() {
            if buf.len() + data.len() > limit {
                drain(&mut body, DRAIN_MAX).await;
                return Err(too_large(limit));
            }
            buf.extend_from_slice(data);
        }
    }
    Ok(buf.freeze())
}

fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!("request body is not valid JSON: {e}"),
        )
    })
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
    value: Value,
    channel: Option<&ChannelName>,
    max_size: usize,
) -> Result<NewEvent, ApiError> {
    let Value::Object(mut map) = value else {
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
            Some(Value::String(s)) => ChannelName::new(&s).map_err(channel_error)?,
            _ => return Err(invalid_body("\"channel\" must be a string")),
        },
    };
    let data = map
        .remove("data")
        .ok_or_else(|| invalid_body("missing field \"data\""))?;
    let event_type = match map.remove("event") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => event_type(Some(&s))?,
        Some(_) => return Err(invalid_body("\"event\" must be a string")),
    };
    let data = Data::from_json(data);
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
    let bytes = read_body(req, state.settings.max_body_size).await?;
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
    let bytes = read_body(req, state.settings.max_body_size).await?;
    let Value::Object(mut root) = parse_json(&bytes)? else {
        return Err(invalid_body("expected {\"events\": [...]}"));
    };
    if let Some(unknown) = root.keys().find(|k| k.as_str() != "events") {
        let shown: String = unknown.chars().take(64).collect();
        return Err(invalid_body(format!(
            "unknown field {shown:?}; allowed: events"
        )));
    }
    let Some(Value::Array(items)) = root.remove("events") else {
        return Err(invalid_body("\"events\" must be an array"));
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
