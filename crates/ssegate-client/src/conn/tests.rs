use std::convert::Infallible;

use http_body_util::Full;
use hyper::service::service_fn;
use tokio::net::TcpListener;

use super::*;
use crate::test_server::{Reply, dead_url, serve, sse, status};

fn ev(id: &str, data: &str) -> Item {
    Item::Event(Event {
        id: id.to_owned(),
        event: "message".to_owned(),
        data: data.to_owned(),
    })
}

#[tokio::test]
async fn items_arrive_in_order() {
    let mut server = serve(
        "/events?topic=a",
        vec![sse(
            ": hello\n\nretry: 50\nid: 1\ndata: one\n\nid: 2\n\ndata: two\n\ndata: cut",
        )],
    )
    .await;
    let mut conn = Connection::open(&server.url, &ConnectOptions::default())
        .await
        .unwrap();
    assert_eq!(conn.status(), StatusCode::OK);
    assert_eq!(conn.version(), Version::HTTP_11);
    assert_eq!(conn.headers()["content-type"], "text/event-stream");

    let mut items = Vec::new();
    while let Some(item) = conn.next_item().await.unwrap() {
        items.push(item);
    }
    assert_eq!(
        items,
        vec![
            Item::Comment(" hello".to_owned()),
            Item::Retry(50),
            ev("1", "one"),
            Item::LastEventId("2".to_owned()),
            ev("2", "two"),
        ]
    );
    assert_eq!(conn.last_event_id(), "2");
    assert_eq!(conn.retry_ms(), Some(50));
    assert_eq!(conn.next_item().await.unwrap(), None);

    let req = server.next_request().await;
    assert_eq!(req.request_line(), "GET /events?topic=a HTTP/1.1");
}

#[tokio::test]
async fn request_headers() {
    let mut server = serve("/e", vec![sse("data: x\n\n")]).await;
    let opts = ConnectOptions {
        last_event_id: Some("42".to_owned()),
        headers: vec![("x-tenant".to_owned(), "t1".to_owned())],
        ..ConnectOptions::default()
    };
    let mut conn = Connection::open(&server.url, &opts).await.unwrap();
    let req = server.next_request().await;
    assert_eq!(req.header("accept"), Some("text/event-stream"));
    assert_eq!(req.header("cache-control"), Some("no-cache"));
    assert_eq!(req.header("last-event-id"), Some("42"));
    assert_eq!(req.header("x-tenant"), Some("t1"));
    let host = server
        .url
        .trim_start_matches("http://")
        .trim_end_matches("/e");
    assert_eq!(req.header("host"), Some(host));

    // The seeded ID carries over to events without an `id:` field.
    let event = conn.next_event().await.unwrap().unwrap();
    assert_eq!(event.id, "42");
    assert_eq!(conn.next_event().await.unwrap(), None);
}

#[tokio::test]
async fn empty_last_event_id_is_not_sent() {
    let mut server = serve("/e", vec![sse("")]).await;
    let opts = ConnectOptions {
        last_event_id: Some(String::new()),
        ..ConnectOptions::default()
    };
    let _conn = Connection::open(&server.url, &opts).await.unwrap();
    assert_eq!(server.next_request().await.header("last-event-id"), None);
}

#[tokio::test]
async fn raw_chunks_are_exact_and_feed_the_parser() {
    let body = "data: a\n\ndata: b\n\n";
    let server = serve(
        "/e",
        vec![Reply::Raw(vec![
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n".to_vec(),
            body.as_bytes().to_vec(),
        ])],
    )
    .await;
    let mut conn = Connection::open(&server.url, &ConnectOptions::default())
        .await
        .unwrap();
    let mut raw = Vec::new();
    while let Some(chunk) = conn.next_raw().await.unwrap() {
        raw.extend_from_slice(&chunk);
    }
    assert_eq!(raw, body.as_bytes());
    assert_eq!(conn.next_item().await.unwrap(), Some(ev("", "a")));
    assert_eq!(conn.next_item().await.unwrap(), Some(ev("", "b")));
    assert_eq!(conn.next_item().await.unwrap(), None);
}

#[tokio::test]
async fn error_body_can_be_read() {
    let json = r#"{"error":"not_found"}"#;
    let server = serve(
        "/e",
        vec![status("404 Not Found", "application/json", json)],
    )
    .await;
    let conn = Connection::open(&server.url, &ConnectOptions::default())
        .await
        .unwrap();
    assert_eq!(conn.status(), StatusCode::NOT_FOUND);
    assert_eq!(conn.read_to_end_body().await.unwrap(), json.as_bytes());
}

#[tokio::test]
async fn invalid_urls_are_rejected() {
    let opts = ConnectOptions::default();
    for url in [
        "https://localhost/x",
        "localhost:80/x",
        "/x",
        "http:///x",
        "not a url",
    ] {
        let err = Connection::open(url, &opts).await.unwrap_err();
        assert!(matches!(err, Error::InvalidUrl(_)), "{url}: {err:?}");
    }
    let bad_header = ConnectOptions {
        headers: vec![("bad header".to_owned(), "v".to_owned())],
        ..ConnectOptions::default()
    };
    let err = Connection::open("http://127.0.0.1:1/", &bad_header)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidHeader(_)), "{err:?}");
}

#[test]
fn url_parts() {
    let t = parse_url("http://[::1]:8080/a/b?c=d").unwrap();
    assert_eq!((t.host.as_str(), t.port), ("::1", 8080));
    assert_eq!(t.authority, "[::1]:8080");
    assert_eq!(t.path, "/a/b?c=d");
    let t = parse_url("http://example.test").unwrap();
    assert_eq!((t.host.as_str(), t.port), ("example.test", 80));
    assert_eq!(t.path, "/");
}

#[tokio::test]
async fn refused_connection_is_a_connect_error() {
    let err = Connection::open(&dead_url().await, &ConnectOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connect(_)), "{err:?}");
}

#[tokio::test]
async fn silent_server_times_out() {
    let server = serve("/e", vec![Reply::Hang]).await;
    let opts = ConnectOptions {
        connect_timeout: Duration::from_millis(100),
        ..ConnectOptions::default()
    };
    let err = Connection::open(&server.url, &opts).await.unwrap_err();
    assert!(matches!(err, Error::Timeout), "{err:?}");
}

#[tokio::test]
async fn overlong_line_is_an_error() {
    let long = format!(
        "data: {}\n\n",
        "x".repeat(super::super::parser::DEFAULT_MAX_LINE)
    );
    let server = serve("/e", vec![sse(&format!("data: ok\n\n{long}"))]).await;
    let mut conn = Connection::open(&server.url, &ConnectOptions::default())
        .await
        .unwrap();
    assert_eq!(conn.next_item().await.unwrap(), Some(ev("", "ok")));
    let err = conn.next_item().await.unwrap_err();
    assert!(matches!(err, Error::LineTooLong), "{err:?}");
}

#[tokio::test]
async fn http2_prior_knowledge() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/h2?x=1", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let service = service_fn(|req: http::Request<Incoming>| async move {
            let body = format!(
                "data: {} {} {}\n\n",
                req.uri(),
                req.headers()["accept"].to_str().unwrap(),
                req.headers()["last-event-id"].to_str().unwrap(),
            );
            let response = http::Response::builder()
                .header("content-type", "text/event-stream")
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            Ok::<_, Infallible>(response)
        });
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), service)
            .await
            .unwrap();
    });
    let opts = ConnectOptions {
        protocol: Protocol::Http2,
        last_event_id: Some("7".to_owned()),
        ..ConnectOptions::default()
    };
    let mut conn = Connection::open(&url, &opts).await.unwrap();
    assert_eq!(conn.version(), Version::HTTP_2);
    assert_eq!(conn.status(), StatusCode::OK);
    let event = conn.next_event().await.unwrap().unwrap();
    assert_eq!(event.data, format!("{url} text/event-stream 7"));
    assert_eq!(event.id, "7");
    assert_eq!(conn.next_event().await.unwrap(), None);
}
