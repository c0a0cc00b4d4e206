//! `GET /v1/channels/{channel}/history?after=ID&limit=N`: retained history as JSON.
//!
//! A reply is bounded by bytes as well as by `limit`: at most [`REPLY_BUDGET`] bytes of
//! JSON, except that the first event always goes in (an event whose JSON alone is larger
//! than the budget comes alone). `has_more` says whether events follow `next_after`, so a
//! client pages on with `after=next_after`. The broker is read in pages of
//! [`READ_BUDGET`]`/max_event_size` events, so that what a reply holds while it is built
//! stays near the budget too (one read of 1000 events of 64 KiB was 64 MiB).

use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};
use ssegate_broker::{ReadFrom, StoredData, StoredEvent};
use ssegate_core::{ChannelName, Cursor, EntryId, Epoch, Position};

use crate::body::Body;
use crate::error::{ApiError, channel_error, cursor_error};
use crate::query::Query;
use crate::state::AppState;

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// Most bytes of JSON in one reply (unless its first event alone is larger).
pub(crate) const REPLY_BUDGET: usize = 1024 * 1024;
/// Most bytes of event data one broker read may return: reads ask for this divided by
/// the event size limit (at least one event).
pub(crate) const READ_BUDGET: usize = 1024 * 1024;

/// Room kept for the end of a reply: `],"has_more":false,"next_after":"<id>",
/// "sync_required":{"reason":"history_trimmed"}}` with the longest id is 131 bytes.
const TAIL_RESERVE: usize = 160;

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
    let per_read = state.settings.events_fitting(READ_BUDGET);

    let first = broker.read(&channel, from, per_read.min(limit)).await?;
    if reason.is_none() && first.gap {
        reason = Some("history_trimmed");
    }
    let epoch = first.epoch;
    let mut reply = Reply::new(&channel, epoch, first.start);
    let mut page = first;
    let has_more = loop {
        if !reply.push_all(&page.events) {
            break true; // the budget is full
        }
        if reply.count == limit || page.events.is_empty() || reply.next >= page.last {
            break reply.next < page.last;
        }
        page = broker
            .read(
                &channel,
                ReadFrom::After(reply.next),
                per_read.min(limit - reply.count),
            )
            .await?;
        if page.epoch != epoch || page.gap {
            // The store started over or trimmed past this reply while it was read: end
            // here, and the next request (from `next_after`) reports it.
            break true;
        }
    };
    Ok(reply.finish(has_more, reason))
}

/// One history event as the reply writes it (keys in the order the reply always had).
#[derive(serde::Serialize)]
struct EventJson<'a> {
    data: &'a StoredData,
    event: Option<&'a str>,
    id: String,
    published_at: String,
}

/// A reply body under construction: `{"channel":..,"events":[` and then event by event,
/// while the budget lasts.
struct Reply {
    body: Vec<u8>,
    epoch: Epoch,
    /// Events written.
    count: usize,
    /// The position the reply continues from: its last event, else where the read started.
    next: EntryId,
}

impl Reply {
    fn new(channel: &ChannelName, epoch: Epoch, start: EntryId) -> Self {
        let mut body = Vec::with_capacity(256);
        body.extend_from_slice(b"{\"channel\":");
        // Writing JSON of a name into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut body, channel);
        body.extend_from_slice(b",\"events\":[");
        Self {
            body,
            epoch,
            count: 0,
            next: start,
        }
    }

    /// Writes the events while they fit; false when one did not (the reply is full).
    fn push_all(&mut self, events: &[Arc<StoredEvent>]) -> bool {
        events.iter().all(|e| self.push(e))
    }

    /// Writes one event if it fits in the budget (the first one always does).
    fn push(&mut self, e: &StoredEvent) -> bool {
        let mark = self.body.len();
        if self.count > 0 {
            self.body.push(b',');
        }
        let json = EventJson {
            data: &e.data,
            event: e.event_type.as_ref().map(|t| t.as_str()),
            id: Position {
                epoch: self.epoch,
                id: e.id,
            }
            .to_string(),
            published_at: rfc3339(e.published_at_ms),
        };
        let _ = serde_json::to_writer(&mut self.body, &json);
        if self.count > 0 && self.body.len() + TAIL_RESERVE > REPLY_BUDGET {
            self.body.truncate(mark);
            return false;
        }
        self.count += 1;
        self.next = e.id;
        true
    }

    fn finish(mut self, has_more: bool, reason: Option<&str>) -> Response<Body> {
        let next = Position {
            epoch: self.epoch,
            id: self.next,
        };
        self.body.extend_from_slice(b"],\"has_more\":");
        self.body
            .extend_from_slice(if has_more { b"true" } else { b"false" });
        self.body.extend_from_slice(b",\"next_after\":");
        let _ = serde_json::to_writer(&mut self.body, &next.to_string());
        self.body.extend_from_slice(b",\"sync_required\":");
        match reason {
            None => self.body.extend_from_slice(b"null"),
            Some(r) => {
                self.body.extend_from_slice(b"{\"reason\":");
                let _ = serde_json::to_writer(&mut self.body, r);
                self.body.push(b'}');
            }
        }
        self.body.push(b'}');
        // What stays allocated while the client reads is the reply, not what the buffer
        // grew to.
        self.body.shrink_to_fit();
        super::json_bytes(StatusCode::OK, Bytes::from(self.body))
    }
}

fn rfc3339(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use serde_json::json;
    use ssegate_core::{Data, DataKind, EventType};

    fn epoch() -> Epoch {
        "k3x9p2qa".parse().unwrap()
    }

    fn event(id: u64, data: Data, event_type: Option<&str>) -> Arc<StoredEvent> {
        Arc::new(StoredEvent::new(
            epoch(),
            ChannelName::new("c").unwrap(),
            EntryId::new(id, 0),
            EntryId::ZERO,
            event_type.map(|t| EventType::new(t).unwrap()),
            data,
            1_732_179_000_123,
        ))
    }

    async fn body(res: Response<Body>) -> Vec<u8> {
        res.into_body().collect().await.unwrap().to_bytes().to_vec()
    }

    #[tokio::test]
    async fn the_reply_keeps_its_format() {
        let ch = ChannelName::new("news").unwrap();
        let mut r = Reply::new(&ch, epoch(), EntryId::ZERO);
        let big = "123456789012345678901234567890";
        assert!(r.push(&event(
            5,
            Data::from_stored(DataKind::Json, format!("{{\"b\":{big},\"a\":1}}")),
            Some("update"),
        )));
        assert!(r.push(&event(6, Data::text("a\"b".into()), None)));
        let text = String::from_utf8(body(r.finish(true, Some("history_trimmed"))).await).unwrap();
        let old = json!({
            "channel": "news",
            "events": [
                {"id": "k3x9p2qa-5-0", "event": "update", "data": {"b": 1, "a": 1},
                 "published_at": "2024-11-21T08:50:00.123Z"},
                {"id": "k3x9p2qa-6-0", "event": null, "data": "a\"b",
                 "published_at": "2024-11-21T08:50:00.123Z"},
            ],
            "next_after": "k3x9p2qa-6-0",
            "has_more": true,
            "sync_required": {"reason": "history_trimmed"},
        })
        .to_string();
        // Byte for byte what the reply was before, except that data keeps its text.
        assert_eq!(
            text,
            old.replace("{\"a\":1,\"b\":1}", &format!("{{\"b\":{big},\"a\":1}}"))
        );
    }

    #[tokio::test]
    async fn the_budget_holds_with_the_longest_tail() {
        let ch = ChannelName::new(&"c".repeat(128)).unwrap();
        let mut r = Reply::new(&ch, epoch(), EntryId::ZERO);
        let data = Data::text("\"".repeat(60_000));
        let mut n = 0;
        while r.push(&event(
            u64::MAX - 100 + n,
            data.clone(),
            Some(&"t".repeat(64)),
        )) {
            n += 1;
        }
        assert!(n > 1);
        r.next = EntryId::new(u64::MAX, u64::MAX);
        let b = body(r.finish(false, Some("history_trimmed"))).await;
        assert!(b.len() <= REPLY_BUDGET, "{}", b.len());
        assert!(b.len() > REPLY_BUDGET - 130_000, "{}", b.len());
        let tail = b.iter().rposition(|&c| c == b']').unwrap();
        assert!(b.len() - tail <= TAIL_RESERVE, "{}", b.len() - tail);
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["events"].as_array().unwrap().len(), n as usize);
        assert_eq!(
            v["next_after"],
            format!("k3x9p2qa-{}-{}", u64::MAX, u64::MAX)
        );
    }

    #[tokio::test]
    async fn the_first_event_always_goes_in() {
        let ch = ChannelName::new("c").unwrap();
        let mut r = Reply::new(&ch, epoch(), EntryId::new(1, 0));
        let huge = Data::text("\"".repeat(REPLY_BUDGET));
        assert!(r.push(&event(2, huge.clone(), None)));
        assert!(!r.push(&event(3, Data::text("x".into()), None)));
        assert_eq!((r.count, r.next), (1, EntryId::new(2, 0)));
        let b = body(r.finish(true, None)).await;
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["events"].as_array().unwrap().len(), 1);
        assert_eq!(v["has_more"], true);
    }

    #[tokio::test]
    async fn an_empty_reply_continues_from_the_start() {
        let ch = ChannelName::new("c").unwrap();
        let r = Reply::new(&ch, epoch(), EntryId::new(7, 1));
        let v: serde_json::Value =
            serde_json::from_slice(&body(r.finish(false, Some("epoch_changed"))).await).unwrap();
        assert_eq!(
            v,
            json!({"channel": "c", "events": [], "next_after": "k3x9p2qa-7-1",
                   "has_more": false, "sync_required": {"reason": "epoch_changed"}})
        );
    }
}
