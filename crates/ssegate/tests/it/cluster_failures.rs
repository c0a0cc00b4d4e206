//! Redis failures under a running cluster: a killed pub/sub connection, a restart with
//! persistence, a restart that lost everything.

use std::time::Duration;

use http::StatusCode;
use ssegate_client::{HttpClient, Item};

use crate::cluster::{cluster, publish, stream};
use crate::helpers::{
    WAIT, events, history_data, json, next_item, opening_id, sync_reasons_then_event,
};
use crate::redis_server::RedisServer;

#[tokio::test]
async fn killing_the_pubsub_connection_loses_nothing() {
    let redis = RedisServer::start(false).await;
    let nodes = cluster(&redis, 2, &[]).await;
    let http = HttpClient::new();
    let mut subs = Vec::new();
    for _ in 0..5 {
        subs.push(stream(&nodes[1], "/v1/channels/k/events", None).await);
    }
    let mut n = 0;
    for _ in 0..20 {
        publish(&http, &nodes[0], "k", &n.to_string()).await;
        n += 1;
    }
    // Kill every pub/sub connection (node 2's is the one with subscribers), then keep
    // publishing while it reconnects.
    redis.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    for _ in 0..40 {
        let (status, _) = publish(&http, &nodes[0], "k", &n.to_string()).await;
        assert_eq!(status, StatusCode::CREATED);
        n += 1;
    }
    for c in &mut subs {
        let got: Vec<usize> = events(c, n)
            .await
            .iter()
            .map(|e| e.data.parse().unwrap())
            .collect();
        assert_eq!(got, (0..n).collect::<Vec<_>>());
    }
    // Live delivery still works after the reconnect.
    publish(&http, &nodes[0], "k", "after").await;
    for c in &mut subs {
        assert_eq!(events(c, 1).await[0].data, "after");
    }
}

#[tokio::test]
async fn a_redis_restart_with_persistence_keeps_subscribers_and_loses_nothing_acknowledged() {
    let mut redis = RedisServer::start(true).await;
    let nodes = cluster(&redis, 2, &[("SSEGATE_HEARTBEAT_INTERVAL", "200ms")]).await;
    let http = HttpClient::new();
    let mut sub = stream(&nodes[1], "/v1/channels/r/events", None).await;
    let mut acked = Vec::new();
    for i in 0..10 {
        let (status, _) = publish(&http, &nodes[0], "r", &format!("before{i}")).await;
        assert_eq!(status, StatusCode::CREATED);
        acked.push(format!("before{i}"));
    }
    assert_eq!(events(&mut sub, 10).await.len(), 10);

    redis.stop().await;
    let (status, body) = publish(&http, &nodes[0], "r", "during").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(json(body.as_bytes())["error"]["code"], "broker_unavailable");
    let ready = http.get(&nodes[0].url("/readyz")).await.unwrap();
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    // The subscriber stays connected: heartbeats keep coming.
    let mut beats = 0;
    while beats < 2 {
        match next_item(&mut sub).await {
            Some(Item::Comment(_)) => beats += 1,
            other => panic!("only heartbeats while Redis is down, got {other:?}"),
        }
    }

    redis.restart().await;
    // Publish until Redis answers again (through node 1), then more through node 1 and 2.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut i = 0;
    while acked.len() < 30 {
        let node = &nodes[i % 2];
        let data = format!("after{i}");
        let (status, _) = publish(&http, node, "r", &data).await;
        if status == StatusCode::CREATED {
            acked.push(data);
            i += 1;
        } else {
            assert!(
                tokio::time::Instant::now() < deadline,
                "Redis never came back"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let ready = http.get(&nodes[0].url("/readyz")).await.unwrap();
    assert_eq!(ready.status, StatusCode::OK);
    let got: Vec<String> = events(&mut sub, 20)
        .await
        .into_iter()
        .map(|e| e.data)
        .collect();
    assert_eq!(
        got,
        acked[10..],
        "every acknowledged event after the restart, once, in order"
    );
    // Nothing from before was lost either: a replay from 0 has all 30.
    let h = json(
        &http
            .get(&nodes[1].url("/v1/channels/r/history?limit=100"))
            .await
            .unwrap()
            .body,
    );
    assert_eq!(h["events"].as_array().unwrap().len(), 30);
}

#[tokio::test]
async fn a_redis_that_lost_its_data_is_an_epoch_change_never_a_silent_gap() {
    let redis = RedisServer::start(false).await;
    let nodes = cluster(&redis, 2, &[]).await;
    let http = HttpClient::new();
    let mut live = stream(&nodes[1], "/v1/channels/w/events", None).await;
    let (_, first) = publish(&http, &nodes[0], "w", "old").await;
    assert_eq!(events(&mut live, 1).await[0].data, "old");
    for i in 0..3 {
        publish(&http, &nodes[0], "w", &format!("lost{i}")).await;
    }
    assert_eq!(events(&mut live, 3).await.len(), 3);

    redis.cmd(&["FLUSHALL"]).await;
    let (status, new_id) = publish(&http, &nodes[0], "w", "new").await;
    assert_eq!(status, StatusCode::CREATED);
    assert_ne!(new_id[..8], first[..8], "a new epoch");

    // A client resuming from before the wipe is told.
    let mut resumed = stream(&nodes[0], "/v1/channels/w/events", Some(&first)).await;
    let (reasons, after) = sync_reasons_then_event(&mut resumed).await;
    assert_eq!(reasons, ["epoch_changed"]);
    assert_eq!(after.data, "new");
    // So is the client that was connected through it.
    let (live_reasons, next) = sync_reasons_then_event(&mut live).await;
    assert_eq!(live_reasons, ["epoch_changed"]);
    assert_eq!(next.data, "new");
}

/// What a failover to a replica that lacked the newest events leaves behind: the stream
/// no longer has an entry that clients received, while newer ones exist, and no node has
/// reported it yet. A client resuming from the lost entry is told (`sync-required`: it
/// holds an event the store lost) and continues after its cursor, with nothing repeated.
#[tokio::test]
async fn a_cursor_naming_a_lost_entry_is_a_gap_never_a_silent_one() {
    let redis = RedisServer::start(false).await;
    let nodes = cluster(&redis, 1, &[]).await;
    let http = HttpClient::new();
    let (_, a) = publish(&http, &nodes[0], "gone", "a").await;
    let (_, lost) = publish(&http, &nodes[0], "gone", "b").await;
    publish(&http, &nodes[0], "gone", "c").await;
    // The entry id is the cursor after its epoch (`<epoch>-<ms>-<seq>`).
    let entry = lost.split_once('-').unwrap().1;
    redis.cmd(&["XDEL", "ssegate:{gone}:s", entry]).await;

    let mut resumed = stream(&nodes[0], "/v1/channels/gone/events", Some(&lost)).await;
    let signal = loop {
        match next_item(&mut resumed).await {
            Some(Item::Event(e)) if e.event == "sync-required" => break e,
            Some(Item::Event(e)) => panic!("an event before the signal: {e:?}"),
            Some(_) => {}
            None => panic!("the stream ended"),
        }
    };
    assert_eq!(json(signal.data.as_bytes())["reason"], "history_trimmed");
    assert_eq!(
        events(&mut resumed, 1).await[0].data,
        "c",
        "continues after the cursor"
    );
    // The signal's id names the entry before the lost one: reconnecting from it right
    // away is no gap again, and nothing repeats.
    assert_eq!(
        signal.id, a,
        "the signal continues from the entry before the cursor"
    );
    let mut again = stream(&nodes[0], "/v1/channels/gone/events", Some(&signal.id)).await;
    let (reasons, first) = sync_reasons_then_event(&mut again).await;
    assert!(reasons.is_empty(), "{reasons:?}");
    assert_eq!(first.data, "c");
    // A cursor on an entry the stream still has is no gap.
    let (_, kept) = publish(&http, &nodes[0], "gone", "d").await;
    publish(&http, &nodes[0], "gone", "e").await;
    let mut fine = stream(&nodes[0], "/v1/channels/gone/events", Some(&kept)).await;
    let (reasons, next) = sync_reasons_then_event(&mut fine).await;
    assert!(reasons.is_empty(), "{reasons:?}");
    assert_eq!(next.data, "e");
}

/// After a failover that lost the newest event of a channel, the new primary would hand
/// that event's id to the next event, and a client holding it as its cursor would skip
/// the new event as one it has; a client whose cursor is before the lost event would skip
/// it silently. On reconnecting, a node reports the newest id it delivered: the stream's
/// ids are raised past it, and a cursor before it, or at it, is a gap.
#[tokio::test]
async fn after_a_lost_event_its_id_is_never_given_to_another() {
    let redis = RedisServer::start(false).await;
    let nodes = cluster(&redis, 1, &[]).await;
    let http = HttpClient::new();
    let (_, first) = publish(&http, &nodes[0], "guard", "first").await;
    let (_, before) = publish(&http, &nodes[0], "guard", "before").await;
    let mut live = stream(&nodes[0], "/v1/channels/guard/events", Some(&before)).await;
    let (_, a) = publish(&http, &nodes[0], "guard", "a").await;
    assert_eq!(events(&mut live, 1).await[0].data, "a");
    let entry = a.split_once('-').unwrap().1.to_owned();
    failover_lost(&redis, "guard", &before, &a).await;
    let (_, b) = publish(&http, &nodes[0], "guard", "b").await;
    assert!(b > a, "{b} comes after {a}");
    // The live client holds `a`, which the store no longer has: it is told.
    let (reasons, next) = sync_reasons_then_event(&mut live).await;
    assert_eq!(
        reasons,
        ["history_trimmed"],
        "holding a lost event is announced"
    );
    assert_eq!(next.data, "b");
    // A client that had only `before` missed `a`, and is told.
    let mut early = stream(&nodes[0], "/v1/channels/guard/events", Some(&before)).await;
    let (reasons, next) = sync_reasons_then_event(&mut early).await;
    assert_eq!(reasons, ["history_trimmed"], "the lost event is announced");
    assert_eq!(next.data, "b");
    // Resuming from the lost event itself too; resuming from where that announcement
    // continues is not (the client was told once).
    let mut had = stream(&nodes[0], "/v1/channels/guard/events", Some(&a)).await;
    let (reasons, next) = sync_reasons_then_event(&mut had).await;
    assert_eq!(reasons, ["history_trimmed"]);
    assert_eq!(next.data, "b");
    let told = format!("{}-{}", a.split_once('-').unwrap().0, succ(&entry));
    let mut again = stream(&nodes[0], "/v1/channels/guard/events", Some(&told)).await;
    let (reasons, next) = sync_reasons_then_event(&mut again).await;
    assert!(reasons.is_empty(), "{reasons:?}");
    assert_eq!(next.data, "b");
    // A client further behind gets what the store kept first, and is told where the loss
    // is: after `before`, not instead of it.
    let mut behind = stream(&nodes[0], "/v1/channels/guard/events", Some(&first)).await;
    let (reasons, next) = sync_reasons_then_event(&mut behind).await;
    assert!(reasons.is_empty(), "{reasons:?}");
    assert_eq!(next.data, "before");
    let (reasons, next) = sync_reasons_then_event(&mut behind).await;
    assert_eq!(reasons, ["history_trimmed"], "the lost event is announced");
    assert_eq!(next.data, "b");
    // The history endpoint says the same, page by page.
    let url = nodes[0].url(&format!("/v1/channels/guard/history?after={first}"));
    let page = json(&http.get(&url).await.unwrap().body);
    assert_eq!(page["events"][0]["data"], "before", "{page}");
    assert_eq!(page["sync_required"], serde_json::Value::Null, "{page}");
    let next_after = page["next_after"].as_str().unwrap();
    let url = nodes[0].url(&format!("/v1/channels/guard/history?after={next_after}"));
    let page = json(&http.get(&url).await.unwrap().body);
    assert_eq!(page["sync_required"]["reason"], "history_trimmed", "{page}");
    let data = history_data(&page);
    assert_eq!(data, ["b"], "{page}");
}

/// The guard covers an event a stream got from history as well as one it got live: a
/// stream opened just before a publish reads it from history while its SUBSCRIBE is on
/// the way (the CI run that found this: the id was never raised). Here deterministically:
/// the event is published before the stream opens behind it.
#[tokio::test]
async fn an_event_read_from_history_is_guarded_like_a_live_one() {
    let redis = RedisServer::start(false).await;
    let nodes = cluster(&redis, 1, &[]).await;
    let http = HttpClient::new();
    let (_, before) = publish(&http, &nodes[0], "read", "before").await;
    let (_, a) = publish(&http, &nodes[0], "read", "a").await;
    let mut sub = stream(&nodes[0], "/v1/channels/read/events", Some(&before)).await;
    assert_eq!(events(&mut sub, 1).await[0].data, "a");
    failover_lost(&redis, "read", &before, &a).await;
    let (_, b) = publish(&http, &nodes[0], "read", "b").await;
    assert!(b > a, "{b} comes after {a}");
    let (reasons, next) = sync_reasons_then_event(&mut sub).await;
    assert_eq!(
        reasons,
        ["history_trimmed"],
        "holding a lost event is announced"
    );
    assert_eq!(next.data, "b");
}

/// A stream that holds an event the store lost records the loss itself when it next
/// reads, without waiting for the node's guard (which runs only after a pub/sub
/// reconnect, and here never does): a client that had only the event before it is told,
/// and the lost event's id is not given to another. (The CI runs that found this: a
/// stream's read that came before the guard moved its cursor back, and the region the
/// guard recorded then was announced to it a second time.)
#[tokio::test]
async fn a_stream_holding_a_lost_event_records_the_loss_itself() {
    let redis = RedisServer::start(false).await;
    let nodes = cluster(&redis, 1, &[]).await;
    let http = HttpClient::new();
    let (_, before) = publish(&http, &nodes[0], "own", "before").await;
    let mut live = stream(&nodes[0], "/v1/channels/own/events", Some(&before)).await;
    let (_, a) = publish(&http, &nodes[0], "own", "a").await;
    assert_eq!(events(&mut live, 1).await[0].data, "a");
    promote_without(&redis, "own", &before, &a).await;
    // `b` follows `before` in the store, not `a`: the live stream sees the mismatch and
    // reads from `a`, which the store lacks.
    publish(&http, &nodes[0], "own", "b").await;
    let (reasons, next) = sync_reasons_then_event(&mut live).await;
    assert_eq!(reasons, ["history_trimmed"], "{reasons:?}");
    assert_eq!(next.data, "b");
    let lost_entry = a.split_once('-').unwrap().1;
    let meta = redis.cmd(&["HGET", "ssegate:{own}:m", "lost"]).await;
    let redis::Value::BulkString(lost) = meta else {
        panic!("no lost region recorded: {meta:?}")
    };
    let lost = String::from_utf8(lost).unwrap();
    assert_eq!(
        lost.split(' ').nth(1),
        Some(succ(lost_entry).as_str()),
        "the stream's own read recorded the region up to the lost event: {lost}"
    );
    let mut early = stream(&nodes[0], "/v1/channels/own/events", Some(&before)).await;
    let (reasons, next) = sync_reasons_then_event(&mut early).await;
    assert_eq!(reasons, ["history_trimmed"], "the lost event is announced");
    assert_eq!(next.data, "b");
    let (_, c) = publish(&http, &nodes[0], "own", "c").await;
    let entry = |id: &str| -> (u64, u64) {
        let (_epoch, entry) = id.split_once('-').unwrap();
        let (ms, seq) = entry.split_once('-').unwrap();
        (ms.parse().unwrap(), seq.parse().unwrap())
    };
    let (ms, seq) = entry(&a);
    assert!(entry(&c) > (ms, seq + 1), "{c} comes after the lost {a}");
    let next = events(&mut live, 1).await;
    assert_eq!(next[0].data, "c");
}

/// The reconnect guard alone records a loss, for an event the node delivered to a stream
/// that has gone since: the one left on the channel opened after that event (its cursor is
/// the store's word, not an event it wrote), so its reads record nothing themselves.
#[tokio::test]
async fn the_guard_alone_records_an_event_whose_stream_has_gone() {
    let redis = RedisServer::start(false).await;
    let nodes = cluster(&redis, 1, &[]).await;
    let http = HttpClient::new();
    let (_, before) = publish(&http, &nodes[0], "gone2", "before").await;
    let mut x = stream(&nodes[0], "/v1/channels/gone2/events", Some(&before)).await;
    let (_, a) = publish(&http, &nodes[0], "gone2", "a").await;
    assert_eq!(events(&mut x, 1).await[0].data, "a");
    // Opened after `a`: it starts at the store's newest id, and keeps the channel's
    // subscription (and the node's record of `a`) once `x` is gone.
    let _y = stream(&nodes[0], "/v1/channels/gone2/events", None).await;
    drop(x);
    // Waits for the guard to raise the ids past `a`: nothing else can here.
    failover_lost(&redis, "gone2", &before, &a).await;
    let mut early = stream(&nodes[0], "/v1/channels/gone2/events", Some(&before)).await;
    publish(&http, &nodes[0], "gone2", "b").await;
    let (reasons, next) = sync_reasons_then_event(&mut early).await;
    assert_eq!(reasons, ["history_trimmed"], "the lost event is announced");
    assert_eq!(next.data, "b");
}

/// What a replica that lacked `lost` (the newest event of `channel`, right after `before`)
/// looks like once promoted.
async fn promote_without(redis: &RedisServer, channel: &str, before: &str, lost: &str) {
    let (stream_key, meta_key) = (
        format!("ssegate:{{{channel}}}:s"),
        format!("ssegate:{{{channel}}}:m"),
    );
    let entry = lost.split_once('-').unwrap().1.to_owned();
    let before_entry = before.split_once('-').unwrap().1.to_owned();
    // At once, as a promotion shows it: a node's read in between that saw the event
    // missing records the loss, which must not then be undone half-way.
    let promote = "redis.call('XDEL', KEYS[1], ARGV[1]) \
                   redis.call('XSETID', KEYS[1], ARGV[2]) \
                   redis.call('HSET', KEYS[2], 'last', ARGV[2])";
    redis
        .cmd(&[
            "EVAL",
            promote,
            "2",
            &stream_key,
            &meta_key,
            &entry,
            &before_entry,
        ])
        .await;
}

/// [`promote_without`], then the node's pub/sub connection drops (as it does in a
/// failover) and comes back, and this waits until the node's guard (or a stream's read)
/// raised the stream's ids past `lost`.
async fn failover_lost(redis: &RedisServer, channel: &str, before: &str, lost: &str) {
    promote_without(redis, channel, before, lost).await;
    let stream_key = format!("ssegate:{{{channel}}}:s");
    let entry = lost.split_once('-').unwrap().1.to_owned();
    redis.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let last = last_generated_id(redis, &stream_key).await;
        if last == succ(&entry) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the id was never raised: {last}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The stream's last-generated id (what its next entry's id must exceed).
async fn last_generated_id(redis: &RedisServer, stream_key: &str) -> String {
    let info = redis.cmd(&["XINFO", "STREAM", stream_key]).await;
    let redis::Value::Array(fields) = info else {
        panic!("{info:?}")
    };
    fields
        .chunks(2)
        .find(|kv| kv[0] == redis::Value::BulkString(b"last-generated-id".to_vec()))
        .map(|kv| match &kv[1] {
            redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            other => panic!("{other:?}"),
        })
        .unwrap()
}

/// The stream id right after `id` (`ms-seq`): where a read continues past a lost event.
fn succ(id: &str) -> String {
    let (ms, seq) = id.split_once('-').unwrap();
    format!("{ms}-{}", seq.parse::<u64>().unwrap() + 1)
}

/// A failover lost an event this node delivered, and no guard has run yet (the node's
/// pub/sub connection did not drop): a stream that opens fresh now starts after the lost
/// event, not before it. Starting before it, the new primary's next event would take the
/// stream past the loss without a word (a history checker run found that); now its read
/// records the loss, so the stream's position is past it and a cursor before it is told.
#[tokio::test]
async fn a_fresh_stream_after_an_unreported_loss_starts_past_it() {
    let redis = RedisServer::start(false).await;
    let nodes = cluster(&redis, 1, &[]).await;
    let http = HttpClient::new();
    let (_, before) = publish(&http, &nodes[0], "unrep", "before").await;
    let mut x = stream(&nodes[0], "/v1/channels/unrep/events", Some(&before)).await;
    let (_, lost) = publish(&http, &nodes[0], "unrep", "lost").await;
    assert_eq!(events(&mut x, 1).await[0].data, "lost");
    promote_without(&redis, "unrep", &before, &lost).await;
    let mut fresh = stream(&nodes[0], "/v1/channels/unrep/events", None).await;
    let start = opening_id(&mut fresh).await;
    let (epoch, entry) = lost.split_once('-').unwrap();
    assert_eq!(
        start,
        format!("{epoch}-{}", succ(entry)),
        "past the lost event"
    );
    let (status, after) = publish(&http, &nodes[0], "unrep", "after").await;
    assert_eq!(status, StatusCode::CREATED, "{after}");
    let got = events(&mut fresh, 1).await;
    assert_eq!(
        (got[0].data.as_str(), got[0].id.as_str()),
        ("after", after.as_str())
    );
    let mut early = stream(&nodes[0], "/v1/channels/unrep/events", Some(&before)).await;
    let (reasons, next) = sync_reasons_then_event(&mut early).await;
    assert_eq!(reasons, ["history_trimmed"], "the lost event is announced");
    assert_eq!(next.data, "after");
}
