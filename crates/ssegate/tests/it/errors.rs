//! Every error is a JSON `{"error": {"code", "message"}}` with the right status.

use http::{Method, StatusCode};

use crate::helpers::{TestApp, json, spawn_app, spawn_app_with};

async fn expect(
    app: &TestApp,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    status: u16,
    code: &str,
) -> ssegate_client::Response {
    let res = app.request(method.clone(), path, headers, body).await;
    assert_eq!(
        res.status.as_u16(),
        status,
        "{method} {path}: {}",
        res.text()
    );
    assert_eq!(res.header("content-type"), Some("application/json"));
    let err = json(&res.body);
    assert_eq!(err["error"]["code"], code, "{method} {path}: {err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    res
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405_with_allow() {
    let app = spawn_app().await;
    expect(&app, Method::GET, "/nope", &[], "", 404, "not_found").await;
    expect(
        &app,
        Method::GET,
        "/v1/channels/a/events/extra",
        &[],
        "",
        404,
        "not_found",
    )
    .await;
    expect(
        &app,
        Method::GET,
        "/v1/channels/a",
        &[],
        "",
        404,
        "not_found",
    )
    .await;
    let res = expect(
        &app,
        Method::DELETE,
        "/v1/channels/a/events",
        &[],
        "",
        405,
        "method_not_allowed",
    )
    .await;
    assert_eq!(res.header("allow"), Some("GET, POST"));
    let res = expect(
        &app,
        Method::GET,
        "/v1/publish",
        &[],
        "",
        405,
        "method_not_allowed",
    )
    .await;
    assert_eq!(res.header("allow"), Some("POST"));
    let res = expect(
        &app,
        Method::POST,
        "/v1/events",
        &[],
        "",
        405,
        "method_not_allowed",
    )
    .await;
    assert_eq!(res.header("allow"), Some("GET"));
    let res = expect(
        &app,
        Method::PUT,
        "/v1/channels/a/history",
        &[],
        "",
        405,
        "method_not_allowed",
    )
    .await;
    assert_eq!(res.header("allow"), Some("GET"));
    app.stop().await;
}

#[tokio::test]
async fn names_are_validated_everywhere() {
    let app = spawn_app().await;
    let long = "a".repeat(129);
    for path in [
        "/v1/channels/bad%20name/events".to_owned(),
        format!("/v1/channels/{long}/events"),
        "/v1/channels/%FF/events".to_owned(),
        "/v1/events?channel=ok&channel=no/slash".to_owned(),
        "/v1/events?channels=a,,b".to_owned(),
        "/v1/channels/caf%C3%A9/history".to_owned(),
    ] {
        expect(&app, Method::GET, &path, &[], "", 400, "invalid_channel").await;
    }
    expect(
        &app,
        Method::POST,
        "/v1/channels/a%2Fb/events",
        &[],
        r#"{"data":1}"#,
        400,
        "invalid_channel",
    )
    .await;
    expect(
        &app,
        Method::GET,
        "/v1/events",
        &[],
        "",
        400,
        "missing_channel",
    )
    .await;
    expect(
        &app,
        Method::POST,
        "/v1/channels/a/events",
        &[],
        r#"{"data":1,"event":"has space"}"#,
        400,
        "invalid_event_type",
    )
    .await;
    expect(
        &app,
        Method::POST,
        "/v1/channels/a/events",
        &[],
        r#"{"data":1,"event":"sync-required"}"#,
        400,
        "invalid_event_type",
    )
    .await;
    // A percent-encoded valid name is the same channel.
    let res = app
        .request(
            Method::POST,
            "/v1/channels/user%3A42/events",
            &[],
            r#"{"data":1}"#,
        )
        .await;
    assert_eq!(res.status, StatusCode::CREATED);
    assert_eq!(json(&res.body)["channel"], "user:42");
    app.stop().await;
}

#[tokio::test]
async fn too_many_channels_is_refused() {
    let app = spawn_app_with(|s| s.max_channels_per_connection = 3).await;
    expect(
        &app,
        Method::GET,
        "/v1/events?channels=a,b,c,d",
        &[],
        "",
        400,
        "too_many_channels",
    )
    .await;
    let res = app
        .request(
            Method::GET,
            "/v1/events?channels=a,b,c,a",
            &[("last-event-id", "bad")],
            "",
        )
        .await;
    assert_eq!(
        json(&res.body)["error"]["code"],
        "invalid_cursor",
        "duplicates count once"
    );
    app.stop().await;
}

#[tokio::test]
async fn bodies_are_validated() {
    let app = spawn_app().await;
    let p = "/v1/channels/a/events";
    expect(&app, Method::POST, p, &[], "{not json", 400, "invalid_json").await;
    expect(&app, Method::POST, p, &[], "", 400, "invalid_json").await;
    expect(
        &app,
        Method::POST,
        p,
        &[],
        r#"{"event":"x"}"#,
        400,
        "invalid_body",
    )
    .await;
    expect(
        &app,
        Method::POST,
        p,
        &[],
        r#"{"data":1,"evnt":"x"}"#,
        400,
        "invalid_body",
    )
    .await;
    expect(&app, Method::POST, p, &[], r#"[1,2]"#, 400, "invalid_body").await;
    expect(
        &app,
        Method::POST,
        p,
        &[],
        r#"{"data":1,"event":5}"#,
        400,
        "invalid_body",
    )
    .await;
    let form = [("content-type", "application/x-www-form-urlencoded")];
    expect(&app, Method::POST, p, &form, "event=x", 400, "invalid_body").await;
    expect(
        &app,
        Method::POST,
        p,
        &[("content-type", "application/xml")],
        "<a/>",
        415,
        "unsupported_media_type",
    )
    .await;
    let json_ct = [("content-type", "application/json")];
    expect(
        &app,
        Method::POST,
        "/v1/publish",
        &[("content-type", "text/plain")],
        "x",
        415,
        "unsupported_media_type",
    )
    .await;
    expect(
        &app,
        Method::POST,
        "/v1/publish",
        &json_ct,
        r#"{"events":[]}"#,
        400,
        "empty_batch",
    )
    .await;
    expect(
        &app,
        Method::POST,
        "/v1/publish",
        &json_ct,
        r#"{"events":{}}"#,
        400,
        "invalid_body",
    )
    .await;
    expect(
        &app,
        Method::POST,
        "/v1/publish",
        &json_ct,
        r#"{"events":[{"data":1}]}"#,
        400,
        "invalid_body",
    )
    .await;
    expect(
        &app,
        Method::POST,
        p,
        &[("idempotency-key", "")],
        r#"{"data":1}"#,
        400,
        "invalid_idempotency_key",
    )
    .await;
    let res = app
        .http
        .request(
            Method::POST,
            &app.url(p),
            &[("content-type", "text/plain")],
            bytes::Bytes::from_static(b"\xff\xfe"),
        )
        .await
        .unwrap();
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert_eq!(json(&res.body)["error"]["code"], "invalid_body");
    app.stop().await;
}

#[tokio::test]
async fn size_limits_answer_413() {
    let app = spawn_app_with(|s| {
        s.max_event_size = 1000;
        s.max_body_size = 5000;
    })
    .await;
    let p = "/v1/channels/big/events";
    let data = "x".repeat(1001);
    expect(
        &app,
        Method::POST,
        p,
        &[],
        &format!(r#"{{"data":"{data}"}}"#),
        413,
        "event_too_large",
    )
    .await;
    expect(
        &app,
        Method::POST,
        p,
        &[("content-type", "text/plain")],
        &data,
        413,
        "event_too_large",
    )
    .await;
    let ok = "x".repeat(1000);
    let res = app
        .request(Method::POST, p, &[], &format!(r#"{{"data":"{ok}"}}"#))
        .await;
    assert_eq!(res.status, StatusCode::CREATED, "exactly the limit is fine");
    let body = format!(r#"{{"data":"{}"}}"#, "y".repeat(6000));
    expect(&app, Method::POST, p, &[], &body, 413, "body_too_large").await;
    let batch = format!(
        r#"{{"events":[{{"channel":"big","data":1}},{{"channel":"big","data":"{data}"}}]}}"#
    );
    let res = expect(
        &app,
        Method::POST,
        "/v1/publish",
        &[],
        &batch,
        413,
        "event_too_large",
    )
    .await;
    assert_eq!(json(&res.body)["error"]["index"], 1);
    // Without a Content-Length (chunked), the limit still holds while reading.
    let chunked = ssegate_client::HttpClient::new()
        .request(
            Method::POST,
            &app.url(p),
            &[("transfer-encoding", "chunked")],
            bytes::Bytes::from(body.clone()),
        )
        .await;
    if let Ok(res) = chunked {
        assert_eq!(res.status.as_u16(), 413);
    }
    let history = json(
        &app.request(Method::GET, "/v1/channels/big/history", &[], "")
            .await
            .body,
    );
    assert_eq!(
        history["events"].as_array().unwrap().len(),
        1,
        "only the valid event is stored"
    );
    app.stop().await;
}

#[tokio::test]
async fn malformed_cursors_are_400_not_a_fresh_start() {
    let app = spawn_app().await;
    for bad in [
        "garbage",
        "00",
        "abcdefgh-1",
        "abcdefgh-01-0",
        "abcdefgh-1-0x",
    ] {
        expect(
            &app,
            Method::GET,
            "/v1/channels/a/events",
            &[("last-event-id", bad)],
            "",
            400,
            "invalid_cursor",
        )
        .await;
        let path = format!("/v1/channels/a/events?lastEventId={bad}");
        expect(&app, Method::GET, &path, &[], "", 400, "invalid_cursor").await;
        let path = format!("/v1/channels/a/history?after={bad}");
        expect(&app, Method::GET, &path, &[], "", 400, "invalid_cursor").await;
        expect(
            &app,
            Method::GET,
            "/v1/events?channels=a,b",
            &[("last-event-id", bad)],
            "",
            400,
            "invalid_cursor",
        )
        .await;
    }
    let id = app.publish("a", "x").await;
    expect(
        &app,
        Method::GET,
        "/v1/events?channels=a,b",
        &[("last-event-id", &id)],
        "",
        400,
        "cursor_mismatch",
    )
    .await;
    expect(
        &app,
        Method::GET,
        "/v1/channels/a/history?limit=0",
        &[],
        "",
        400,
        "invalid_query",
    )
    .await;
    expect(
        &app,
        Method::GET,
        "/v1/channels/a/history?limit=many",
        &[],
        "",
        400,
        "invalid_query",
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn garbage_requests_do_not_hurt_the_node() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app().await;
    for junk in [
        &b"\x00\x01\x02\x03\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"POST /v1/channels/a/events HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{\"da",
        b"GET /v1/channels/a/events HTTP/1.1\r\nHost: x\r\nLast-Event-ID: \xff\xfe\r\n\r\n",
    ] {
        let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        s.write_all(junk).await.unwrap();
        let _ = s.shutdown().await;
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(crate::helpers::WAIT, s.read_to_end(&mut buf)).await;
    }
    let res = app.request(Method::GET, "/healthz", &[], "").await;
    assert_eq!(res.status, StatusCode::OK, "node still serves");
    app.stop().await;
}

#[tokio::test]
async fn an_over_limit_body_is_answered_413_not_reset_while_the_client_sends_it() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app().await;
    let body = vec![b'x'; 7 * 1024 * 1024];
    let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /v1/channels/big/events HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // The whole body goes out (a proxy forwarding it would do the same) ...
    s.write_all(&body)
        .await
        .expect("the node reads the body instead of resetting");
    // ... and the answer is the JSON 413.
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(crate::helpers::WAIT, s.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("body_too_large"), "{text}");
    app.stop().await;
}
