use super::*;
use crate::test_server::{Reply, dead_url, serve, sse, status};

fn ev(id: &str, data: &str) -> Event {
    Event {
        id: id.to_owned(),
        event: "message".to_owned(),
        data: data.to_owned(),
    }
}

fn short(urls: Vec<String>) -> EventSource {
    EventSource::new(urls, ConnectOptions::default())
        .with_retry_override(Some(Duration::from_millis(5)))
}

async fn expect_open(source: &mut EventSource, url: &str) {
    match source.next().await.unwrap() {
        SourceItem::Open { url: got, status } => {
            assert_eq!(got, url);
            assert_eq!(status, StatusCode::OK);
        }
        other => panic!("expected Open, got {other:?}"),
    }
}

#[tokio::test]
async fn reconnect_resends_last_event_id_and_honours_retry() {
    let mut server = serve(
        "/events",
        vec![
            sse("retry: 50\n\nid: 1\ndata: a\n\nid: 7\n\n"),
            sse("data: b\n\nid: 8\ndata: c\n\n"),
        ],
    )
    .await;
    let mut source = EventSource::new(vec![server.url.clone()], ConnectOptions::default());
    let url = server.url.clone();

    expect_open(&mut source, &url).await;
    let first = server.next_request().await;
    assert_eq!(first.header("last-event-id"), None);
    assert_eq!(
        source.next().await.unwrap(),
        SourceItem::Item(Item::Retry(50))
    );
    assert_eq!(source.next_event().await.unwrap(), ev("1", "a"));
    assert_eq!(
        source.next().await.unwrap(),
        SourceItem::Item(Item::LastEventId("7".to_owned()))
    );
    assert_eq!(source.last_event_id(), "7");
    // Taken before the close is seen, so the reconnect must come after it + 50ms.
    let closed_at = Instant::now();
    assert_eq!(source.next().await.unwrap(), SourceItem::Closed);
    assert_eq!(source.retry_delay(), Duration::from_millis(50));

    expect_open(&mut source, &url).await;
    let second = server.next_request().await;
    assert_eq!(second.header("last-event-id"), Some("7"));
    assert!(
        second.at >= (closed_at + Duration::from_millis(50)).into_std(),
        "reconnected before the retry delay"
    );
    assert_eq!(source.reconnects(), 1);

    // The ID persists into the new stream until it sends a new one.
    assert_eq!(source.next_event().await.unwrap(), ev("7", "b"));
    assert_eq!(source.next_event().await.unwrap(), ev("8", "c"));
    assert_eq!(source.last_event_id(), "8");
}

#[tokio::test]
async fn initial_last_event_id_is_sent() {
    let mut server = serve("/e", vec![sse("data: x\n\n")]).await;
    let opts = ConnectOptions {
        last_event_id: Some("41".to_owned()),
        ..ConnectOptions::default()
    };
    let mut source = EventSource::new(vec![server.url.clone()], opts);
    assert_eq!(source.next_event().await.unwrap(), ev("41", "x"));
    assert_eq!(
        server.next_request().await.header("last-event-id"),
        Some("41")
    );
}

#[tokio::test]
async fn round_robin_skips_a_dead_url() {
    let dead = dead_url().await;
    let mut server = serve("/e", vec![sse("id: 1\ndata: a\n\n"), sse("data: b\n\n")]).await;
    let live = server.url.clone();
    let mut source = short(vec![dead, live.clone()]);

    expect_open(&mut source, &live).await;
    assert_eq!(source.reconnects(), 1);
    assert!(matches!(source.last_error(), Some(Error::Connect(_))));
    assert_eq!(source.next_event().await.unwrap(), ev("1", "a"));
    assert_eq!(source.next().await.unwrap(), SourceItem::Closed);

    // Next turn: the dead URL again, then the live one.
    expect_open(&mut source, &live).await;
    assert_eq!(source.reconnects(), 3);
    server.next_request().await;
    assert_eq!(
        server.next_request().await.header("last-event-id"),
        Some("1")
    );
    assert_eq!(source.next_event().await.unwrap(), ev("1", "b"));
}

#[tokio::test]
async fn max_reconnects_gives_up() {
    let mut source = short(vec![dead_url().await]).with_max_reconnects(2);
    let err = source.next().await.unwrap_err();
    assert!(matches!(err, Error::TooManyReconnects(2)), "{err:?}");
    assert_eq!(source.reconnects(), 2);
    assert!(matches!(source.next().await, Err(Error::Closed)));
}

#[tokio::test]
async fn server_errors_are_retried() {
    let server = serve(
        "/e",
        vec![
            status("503 Service Unavailable", "text/plain", "busy"),
            sse("data: ok\n\n"),
        ],
    )
    .await;
    let mut source = short(vec![server.url.clone()]);
    expect_open(&mut source, &server.url).await;
    assert!(matches!(
        source.last_error(),
        Some(Error::Status(StatusCode::SERVICE_UNAVAILABLE))
    ));
    assert_eq!(source.next_event().await.unwrap(), ev("", "ok"));
}

#[tokio::test]
async fn client_errors_close_the_source() {
    let server = serve("/e", vec![status("404 Not Found", "text/plain", "no")]).await;
    let mut source = short(vec![server.url.clone()]);
    let err = source.next().await.unwrap_err();
    assert!(
        matches!(err, Error::Status(StatusCode::NOT_FOUND)),
        "{err:?}"
    );
    assert!(matches!(source.next().await, Err(Error::Closed)));
}

#[tokio::test]
async fn wrong_content_type_closes_the_source() {
    let server = serve("/e", vec![status("200 OK", "application/json", "{}")]).await;
    let mut source = short(vec![server.url.clone()]);
    let err = source.next().await.unwrap_err();
    match err {
        Error::NotEventStream(ct) => assert_eq!(ct.as_deref(), Some("application/json")),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn content_type_parameters_are_accepted() {
    let server = serve(
        "/e",
        vec![Reply::Raw(vec![
            b"HTTP/1.1 200 OK\r\nContent-Type: Text/Event-Stream; charset=utf-8\r\n\r\ndata: x\n\n"
                .to_vec(),
        ])],
    )
    .await;
    let mut source = short(vec![server.url.clone()]);
    assert_eq!(source.next_event().await.unwrap(), ev("", "x"));
}

#[tokio::test]
async fn no_urls_is_an_error() {
    let mut source = short(Vec::new());
    assert!(matches!(source.next().await, Err(Error::InvalidUrl(_))));
}
