//! `GET /v1/channels/{channel}/history?after=ID&limit=N`: retained history as JSON.

use http::{Response, StatusCode};
use serde_json::json;
use ssegate_broker::ReadFrom;
use ssegate_core::{ChannelName, Cursor, Position};

use crate::body::Body;
use crate::error::{ApiError, channel_error, cursor_error};
use crate::handlers::json;
use crate::query::Query;
use crate::state::AppState;

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

pub(crate) async fn history(
    state: &AppState,
    req: &http::Request<hyper::body::Incoming>,
    channel: &str,
) -> Result<Response<Body>, ApiError> {
    let query = Query::parse(req.uri().query());
    let principal = state.auth.subscriber(req.headers(), &query)?;
    let channel = ChannelName::new(channel).map_err(channel_error)?;
    if principal
        .as_ref()
        .is_some_and(|p| !p.may_subscribe(&channel))
    {
        return Err(crate::auth::forbidden(&channel));
    }
    let limit = match query.get("limit") {
        None => DEFAULT_LIMIT,
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_query",
                    format!("limit must be a whole number from 1 to {MAX_LIMIT}"),
                )
            })?,
    };
    let cursor = match query.get("after").filter(|s| !s.is_empty()) {
        None => Cursor::Zero,
        Some(s) => Cursor::parse(s).map_err(cursor_error)?,
    };
    let broker = &state.broker;
    let epoch = broker.epoch().await?;
    let (from, mut reason) = match cursor {
        Cursor::Zero => (ReadFrom::Oldest, None),
        Cursor::At(p) if p.epoch == epoch => (ReadFrom::After(p.id), None),
        Cursor::At(_) => (ReadFrom::Oldest, Some("epoch_changed")),
    };
    let page = broker.read(&channel, from, limit).await?;
    if reason.is_none() && page.gap {
        reason = Some("history_trimmed");
    }
    let events: Vec<serde_json::Value> = page
        .events
        .iter()
        .map(|e| {
            json!({
                "id": Position { epoch: page.epoch, id: e.id }.to_string(),
                "event": e.event_type.as_ref().map(|t| t.as_str()),
                "data": e.data.to_json(),
                "published_at": rfc3339(e.published_at_ms),
            })
        })
        .collect();
    let next = page.events.last().map_or(page.start, |e| e.id);
    Ok(json(
        StatusCode::OK,
        &json!({
            "channel": channel,
            "events": events,
            "next_after": Position { epoch: page.epoch, id: next }.to_string(),
            "has_more": page.has_more(),
            "sync_required": reason.map(|r| json!({ "reason": r })),
        }),
    ))
}

fn rfc3339(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}
