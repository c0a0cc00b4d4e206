//! Resuming from `Last-Event-ID`: no gaps, no duplicates, and gaps that cannot be
//! avoided are announced with `sync-required`.

use http::Method;
use ssegate_client::{Connection, Item};

use crate::helpers::{TestApp, events, json, next_item, opening_id, spawn_app, spawn_app_with};

async fn publish_n(app: &TestApp, channel: &str, from: usize, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in from..from + n {
        ids.push(app.publish(channel, &format!("m{i}")).await);
    }
    ids
}

/// Reads items up to and including the next event, returning any sync-required first.
async fn sync_then_event(
    conn: &mut Connection,
) -> (Option<ssegate_client::Event>, ssegate_client::Event) {
    let mut sync = None;
    loop {
        match next_item(conn).await {
            Some(Item::Event(e)) if e.event == "sync-required" => sync = Some(e),
            Some(Item::Event(e)) => return (sync, e),
            Some(_) => {}
            None => panic!("stream ended"),
        }
    }
}

#[tokio::test]
async fn the_id_only_first_frame_lets_a_client_that_got_nothing_resume() {
    let app = spawn_app().await;
    publish_n(&app, "r", 0, 2).await;
    let mut conn = app.stream("/v1/channels/r/events", None).await;
    let announced = opening_id(&mut conn).await;
    assert_eq!(conn.last_event_id(), announced);
    drop(conn);
    let ids = publish_n(&app, "r", 2, 3).await;
    let mut conn = app.stream("/v1/channels/r/events", Some(&announced)).await;
    assert_eq!(
        opening_id(&mut conn).await,
        announced,
        "resume echoes the cursor"
    );
    let got = events(&mut conn, 3).await;
    let got_ids: Vec<&str> = got.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(got_ids, ids.iter().map(String::as_str).collect::<Vec<_>>());
    app.stop().await;
}

#[tokio::test]
async fn reconnect_with_last_event_id_gets_every_event_exactly_once_in_order() {
    let app = spawn_app().await;
    let mut conn = app.stream("/v1/channels/seq/events", None).await;
    publish_n(&app, "seq", 0, 10).await;
    let first = events(&mut conn, 10).await;
    let last = first.last().unwrap().id.clone();
    drop(conn);
    let missed = publish_n(&app, "seq", 10, 100).await;
    let mut conn = app.stream("/v1/channels/seq/events", Some(&last)).await;
    let got = events(&mut conn, 100).await;
    for (i, (e, id)) in got.iter().zip(&missed).enumerate() {
        assert_eq!(&e.id, id);
        assert_eq!(e.data, format!("m{}", i + 10));
    }
    // Live continues right after the replay, with nothing repeated.
    let live = app.publish("seq", "live").await;
    let next = events(&mut conn, 1).await;
    assert_eq!(
        (next[0].id.as_str(), next[0].data.as_str()),
        (live.as_str(), "live")
    );
    app.stop().await;
}

#[tokio::test]
async fn last_event_id_zero_replays_from_the_oldest_retained_event() {
    let app = spawn_app().await;
    publish_n(&app, "z", 0, 3).await;
    let mut conn = app
        .stream("/v1/channels/z/events?lastEventId=0", None)
        .await;
    assert_eq!(opening_id(&mut conn).await, "0");
    let got = events(&mut conn, 3).await;
    assert_eq!(
        got.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(),
        ["m0", "m1", "m2"]
    );
    app.stop().await;
}

#[tokio::test]
async fn the_header_wins_over_the_query_and_an_empty_header_is_absent() {
    let app = spawn_app().await;
    let ids = publish_n(&app, "w", 0, 3).await;
    let mut conn = app
        .stream("/v1/channels/w/events?lastEventId=0", Some(&ids[1]))
        .await;
    assert_eq!(events(&mut conn, 1).await[0].data, "m2");
    let mut conn = app
        .stream("/v1/channels/w/events?lastEventId=0", Some(""))
        .await;
    assert_eq!(opening_id(&mut conn).await, "0");
    assert_eq!(events(&mut conn, 1).await[0].data, "m0");
    app.stop().await;
}

#[tokio::test]
async fn a_trimmed_cursor_gets_sync_required_once_then_the_oldest_retained() {
    let app = spawn_app_with(|s| s.history.max_len = 5).await;
    let ids = publish_n(&app, "t", 0, 10).await;
    let mut conn = app.stream("/v1/channels/t/events", Some(&ids[0])).await;
    let (sync, first) = sync_then_event(&mut conn).await;
    let sync = sync.expect("a gap is never silent");
    let data = json(sync.data.as_bytes());
    assert_eq!(data["channel"], "t");
    assert_eq!(data["reason"], "history_trimmed");
    assert_eq!(first.data, "m5", "continues from the oldest retained event");
    let rest = events(&mut conn, 4).await;
    assert_eq!(rest.last().unwrap().data, "m9");
    drop(conn);
    // Reconnecting right after the signal does not repeat it, nor any event.
    let mut conn = app.stream("/v1/channels/t/events", Some(&sync.id)).await;
    let (again, first) = sync_then_event(&mut conn).await;
    assert!(again.is_none(), "the sync-required id is a clean cursor");
    assert_eq!(first.data, "m5");
    // A cursor trimmed only up to itself is no gap.
    let mut conn = app.stream("/v1/channels/t/events", Some(&ids[4])).await;
    let (none, first) = sync_then_event(&mut conn).await;
    assert!(none.is_none());
    assert_eq!(first.data, "m5");
    app.stop().await;
}

#[tokio::test]
async fn a_cursor_from_another_epoch_gets_sync_required() {
    let old = spawn_app().await;
    let stale = old.publish("ep", "before restart").await;
    old.stop().await;
    let app = spawn_app().await;
    publish_n(&app, "ep", 0, 2).await;
    let mut conn = app.stream("/v1/channels/ep/events", Some(&stale)).await;
    let (sync, first) = sync_then_event(&mut conn).await;
    let sync = sync.expect("epoch change is signalled");
    assert_eq!(json(sync.data.as_bytes())["reason"], "epoch_changed");
    assert_eq!(first.data, "m0");
    // History says so too.
    let path = format!("/v1/channels/ep/history?after={stale}");
    let page = json(&app.request(Method::GET, &path, &[], "").await.body);
    assert_eq!(page["sync_required"]["reason"], "epoch_changed");
    assert_eq!(page["events"].as_array().unwrap().len(), 2);
    app.stop().await;
}

#[tokio::test]
async fn a_multi_channel_stream_resumes_every_channel_from_its_composite_id() {
    let app = spawn_app().await;
    let path = "/v1/events?channels=x,y";
    let mut conn = app.stream(path, None).await;
    app.publish("x", "x0").await;
    app.publish("y", "y0").await;
    let seen = events(&mut conn, 2).await;
    drop(conn);
    publish_n(&app, "x", 1, 3).await;
    publish_n(&app, "y", 1, 2).await;
    let mut conn = app.stream(path, Some(&seen[1].id)).await;
    let got = events(&mut conn, 5).await;
    let data: Vec<&str> = got.iter().map(|e| e.data.as_str()).collect();
    assert_eq!(
        data,
        ["m1", "m2", "m3", "m1", "m2"],
        "per channel in order, none twice"
    );
    // The composite id is refused on another channel set, and on a single stream.
    let res = app
        .request(
            Method::GET,
            "/v1/events?channels=x,z",
            &[("last-event-id", &got[4].id)],
            "",
        )
        .await;
    assert_eq!(res.status, 400);
    assert_eq!(json(&res.body)["error"]["code"], "cursor_mismatch");
    let res = app
        .request(
            Method::GET,
            "/v1/channels/x/events",
            &[("last-event-id", &got[4].id)],
            "",
        )
        .await;
    assert_eq!(json(&res.body)["error"]["code"], "cursor_mismatch");
    app.stop().await;
}

#[tokio::test]
async fn a_multi_channel_gap_is_signalled_for_the_trimmed_channel_only() {
    let app = spawn_app_with(|s| s.history.max_len = 3).await;
    let path = "/v1/events?channels=p,q";
    let mut conn = app.stream(path, None).await;
    app.publish("p", "p0").await;
    app.publish("q", "q0").await;
    let seen = events(&mut conn, 2).await;
    drop(conn);
    publish_n(&app, "p", 1, 6).await; // p1..p6, p keeps p4..p6: p1..p3 lost
    app.publish("q", "q1").await;
    let mut conn = app.stream(path, Some(&seen[1].id)).await;
    let mut syncs = Vec::new();
    let mut data = Vec::new();
    while data.len() < 4 {
        match next_item(&mut conn).await {
            Some(Item::Event(e)) if e.event == "sync-required" => {
                syncs.push(json(e.data.as_bytes()))
            }
            Some(Item::Event(e)) => data.push(e.data),
            _ => {}
        }
    }
    assert_eq!(syncs.len(), 1);
    assert_eq!(syncs[0]["channel"], "p");
    assert_eq!(data, ["m4", "m5", "m6", "q1"]);
    app.stop().await;
}
