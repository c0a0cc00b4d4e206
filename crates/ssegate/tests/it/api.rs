//! Publish and receive, history, batches, publish body forms.

use http::{Method, StatusCode};
use ssegate_client::HttpClient;

use crate::helpers::{events, history_data, json, opening_id, spawn_app};

#[tokio::test]
async fn publish_then_receive_on_a_single_channel_stream() {
    let app = spawn_app().await;
    let mut conn = app.stream("/v1/channels/news/events", None).await;
    assert_eq!(
        conn.headers()["content-type"],
        "text/event-stream",
        "SSE content type"
    );
    assert_eq!(conn.headers()["cache-control"], "no-cache, no-transform");
    assert_eq!(conn.headers()["x-accel-buffering"], "no");
    // Publish right after the head, as a real client's publisher would; the opening
    // frame still announces the position the stream started at, before the event.
    let id = app.publish("news", "hello").await;
    let first = opening_id(&mut conn).await;
    assert!(
        first.ends_with("-0-0"),
        "fresh channel starts at 0-0: {first}"
    );
    let got = events(&mut conn, 1).await;
    assert_eq!(got[0].data, "hello");
    assert_eq!(got[0].event, "message");
    assert_eq!(got[0].id, id, "publish returns the id subscribers see");
    app.stop().await;
}

#[tokio::test]
async fn events_keep_their_type_and_json_data() {
    let app = spawn_app().await;
    let mut conn = app.stream("/v1/channels/typed/events", None).await;
    let res = app
        .request(
            Method::POST,
            "/v1/channels/typed/events",
            &[("content-type", "application/json")],
            r#"{"data": {"n": 1, "s": "a\nb"}, "event": "update"}"#,
        )
        .await;
    assert_eq!(res.status, StatusCode::CREATED);
    let body = json(&res.body);
    assert_eq!(body["channel"], "typed");
    let got = events(&mut conn, 1).await;
    assert_eq!(got[0].event, "update");
    assert_eq!(got[0].data, r#"{"n":1,"s":"a\nb"}"#);
    app.stop().await;
}

#[tokio::test]
async fn multi_channel_stream_gets_every_channel_with_composite_ids() {
    let app = spawn_app().await;
    let mut conn = app
        .stream("/v1/events?channel=b&channels=a,c&channel=a", None)
        .await;
    app.publish("a", "on a").await;
    app.publish("zzz", "not subscribed").await;
    app.publish("c", "on c").await;
    let first = opening_id(&mut conn).await;
    assert_eq!(
        first.matches('.').count(),
        4,
        "epoch, checksum, three channels: {first}"
    );
    let got = events(&mut conn, 2).await;
    assert_eq!(got[0].data, "on a");
    assert_eq!(got[1].data, "on c");
    assert_ne!(got[0].id, got[1].id);
    assert!(got.iter().all(|e| e.id.matches('.').count() == 4));
    // Even one channel on /v1/events gets composite ids.
    let mut one = app.stream("/v1/events?channel=a", None).await;
    let id = opening_id(&mut one).await;
    assert_eq!(id.matches('.').count(), 2, "{id}");
    app.stop().await;
}

#[tokio::test]
async fn batch_publish_answers_ids_in_request_order() {
    let app = spawn_app().await;
    let mut a = app.stream("/v1/channels/a/events", None).await;
    let res = app
        .request(
            Method::POST,
            "/v1/publish",
            &[("content-type", "application/json")],
            r#"{"events": [{"channel": "a", "data": "1"}, {"channel": "b", "data": 2},
                           {"channel": "a", "data": "3", "event": "t"}]}"#,
        )
        .await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text());
    let ids = json(&res.body)["ids"].as_array().unwrap().clone();
    assert_eq!(ids.len(), 3);
    let got = events(&mut a, 2).await;
    assert_eq!(
        (got[0].id.as_str(), got[0].data.as_str()),
        (ids[0].as_str().unwrap(), "1")
    );
    assert_eq!(
        (got[1].id.as_str(), got[1].event.as_str()),
        (ids[2].as_str().unwrap(), "t")
    );
    app.stop().await;
}

#[tokio::test]
async fn an_invalid_event_rejects_the_whole_batch_and_names_its_index() {
    let app = spawn_app().await;
    let res = app
        .request(
            Method::POST,
            "/v1/publish",
            &[],
            r#"{"events": [{"channel": "ok", "data": 1}, {"channel": "bad name", "data": 2}]}"#,
        )
        .await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    let err = &json(&res.body)["error"];
    assert_eq!(err["code"], "invalid_channel");
    assert_eq!(err["index"], 1);
    assert!(err["message"].as_str().unwrap().contains("events[1]"));
    let history = app
        .request(Method::GET, "/v1/channels/ok/history", &[], "")
        .await;
    assert_eq!(
        json(&history.body)["events"].as_array().unwrap().len(),
        0,
        "nothing published"
    );
    app.stop().await;
}

#[tokio::test]
async fn form_and_text_bodies_publish_strings() {
    let app = spawn_app().await;
    let res = app
        .request(
            Method::POST,
            "/v1/channels/f/events",
            &[("content-type", "application/x-www-form-urlencoded")],
            "data=line+1%0Aline+2&event=note",
        )
        .await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text());
    let res = app
        .request(
            Method::POST,
            "/v1/channels/f/events?event=raw",
            &[("content-type", "text/plain; charset=utf-8")],
            "{not json}",
        )
        .await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text());
    let history = json(
        &app.request(Method::GET, "/v1/channels/f/history", &[], "")
            .await
            .body,
    );
    let evs = history["events"].as_array().unwrap();
    assert_eq!(evs[0]["data"], "line 1\nline 2");
    assert_eq!(evs[0]["event"], "note");
    assert_eq!(evs[1]["data"], "{not json}");
    assert_eq!(evs[1]["event"], "raw");
    app.stop().await;
}

#[tokio::test]
async fn history_pages_through_retained_events() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(app.publish("h", &format!("e{n}")).await);
    }
    let page = json(
        &app.request(Method::GET, "/v1/channels/h/history?limit=2", &[], "")
            .await
            .body,
    );
    assert_eq!(page["channel"], "h");
    let evs = page["events"].as_array().unwrap();
    assert_eq!(evs.len(), 2);
    assert_eq!(evs[0]["id"], ids[0].as_str());
    assert_eq!(evs[0]["data"], "e0");
    assert!(evs[0]["published_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(page["next_after"], ids[1].as_str());
    assert_eq!(page["has_more"], true);
    let next = format!("/v1/channels/h/history?after={}&limit=10", ids[1]);
    let page = json(&app.request(Method::GET, &next, &[], "").await.body);
    let data = history_data(&page);
    assert_eq!(data, ["e2", "e3", "e4"]);
    assert_eq!(page["has_more"], false);
    assert!(page["sync_required"].is_null());
    app.stop().await;
}

#[tokio::test]
async fn idempotency_key_makes_a_retry_safe() {
    let app = spawn_app().await;
    let send = |body: &'static str| {
        app.request(
            Method::POST,
            "/v1/channels/idem/events",
            &[("idempotency-key", "order-42")],
            body,
        )
    };
    let first = send(r#"{"data": "charge"}"#).await;
    let again = send(r#"{"data": "charge"}"#).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(json(&first.body)["id"], json(&again.body)["id"]);
    let history = json(
        &app.request(Method::GET, "/v1/channels/idem/history", &[], "")
            .await
            .body,
    );
    assert_eq!(history["events"].as_array().unwrap().len(), 1);
    let other = send(r#"{"data": "different"}"#).await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(json(&other.body)["error"]["code"], "idempotency_key_reused");
    app.stop().await;
}

#[tokio::test]
async fn health_and_readiness_on_both_listeners() {
    let app = spawn_app().await;
    let res = app.request(Method::GET, "/healthz", &[], "").await;
    assert_eq!(res.status, StatusCode::OK);
    let res = app.request(Method::GET, "/readyz", &[], "").await;
    assert_eq!(res.status, StatusCode::OK);
    let body = json(&res.body);
    assert_eq!(body["node_id"], "test-node");
    assert_eq!(body["broker"], "memory");
    let admin = format!("http://{}", app.admin.unwrap());
    let res = app.http.get(&format!("{admin}/readyz")).await.unwrap();
    assert_eq!(res.status, StatusCode::OK);
    let res = app
        .http
        .get(&format!("{admin}/v1/channels/a/history"))
        .await
        .unwrap();
    assert_eq!(
        res.status,
        StatusCode::NOT_FOUND,
        "the API is not on the admin port"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_demo_page_is_served() {
    let app = spawn_app().await;
    let res = HttpClient::new().get(&app.url("/")).await.unwrap();
    assert_eq!(res.status, StatusCode::OK);
    assert!(res.header("content-type").unwrap().starts_with("text/html"));
    assert!(res.text().contains("EventSource"));
    app.stop().await;
}
