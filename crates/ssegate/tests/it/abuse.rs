//! A real node under hostile traffic: secrets stay out of its logs, a connection flood past
//! its limit does not hurt the subscribers it has, and slow header senders are cut.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use ssegate_client::{ConnectOptions, Connection, HttpClient, Item};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

use crate::helpers::{WAIT, events, spawn_process};

const SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!";
const KEY: &str = "publisher-key-for-the-log-test-42";

fn token(sub: &str, exp_offset: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = serde_json::json!({ "sub": sub, "exp": now + exp_offset,
        "ssegate": { "subscribe": ["news"], "publish": ["news"] } });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn tokens_and_keys_never_reach_logs_metrics_or_errors() {
    let node = spawn_process(&[
        ("SSEGATE_LOG", "debug"),
        ("SSEGATE_AUTH_JWT_SECRET", SECRET),
        ("SSEGATE_PUBLISH_KEYS", KEY),
    ])
    .await;
    let http = HttpClient::new();
    let good = token("logtest", 600);
    let expired = token("logtest", -600);
    let forged = format!("{}x", &good[..good.len() - 1]);
    let mut secrets = vec![
        good.clone(),
        expired.clone(),
        forged.clone(),
        KEY.to_owned(),
    ];
    // Every way a credential can arrive, valid or not.
    for t in [&good, &expired, &forged] {
        for (path, headers) in [
            (
                "/v1/channels/news/history".to_owned(),
                vec![("authorization", format!("Bearer {t}"))],
            ),
            (
                "/v1/channels/news/history".to_owned(),
                vec![("cookie", format!("ssegate_token={t}"))],
            ),
            (format!("/v1/channels/news/history?token={t}"), vec![]),
            (format!("/v1/channels/secret/history?token={t}"), vec![]),
            (format!("/v1/nope?token={t}"), vec![]),
        ] {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let res = http
                .request(http::Method::GET, &node.url(&path), &h, Bytes::new())
                .await
                .unwrap();
            for s in &secrets {
                assert!(
                    !res.text().contains(s.as_str()),
                    "a reply echoed a credential"
                );
            }
        }
    }
    let mut stream = Connection::open(
        &node.url(&format!("/v1/channels/news/events?token={good}")),
        &ConnectOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        stream.status(),
        StatusCode::OK,
        "the token opens the stream"
    );
    for auth in [
        format!("Bearer {KEY}"),
        format!("Bearer {good}"),
        "Bearer wrong-key-0123456789".into(),
    ] {
        let _ = http
            .request(
                http::Method::POST,
                &node.url("/v1/channels/news/events"),
                &[
                    ("authorization", auth.as_str()),
                    ("content-type", "application/json"),
                ],
                Bytes::from_static(br#"{"data":"x"}"#),
            )
            .await
            .unwrap();
    }
    let _ = events(&mut stream, 2).await;
    let admin = node.admin.unwrap();
    let metrics = http
        .get(&format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text();
    secrets.push(SECRET.to_owned());
    let log = node.stderr();
    assert!(
        log.contains("request refused"),
        "debug logging was on: {log}"
    );
    for s in &secrets {
        assert!(!log.contains(s.as_str()), "the log holds a credential");
        assert!(
            !metrics.contains(s.as_str()),
            "the metrics hold a credential"
        );
    }
}

#[tokio::test]
async fn a_flood_of_connections_past_the_limit_leaves_subscribers_whole() {
    const SUBSCRIBERS: usize = 5;
    const ATTEMPTS: usize = 5_000;
    const EVENTS: usize = 100;
    let node = spawn_process(&[("SSEGATE_MAX_CONNECTIONS", "10")]).await;
    let mut subs = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let c = Connection::open(
            &node.url("/v1/channels/f/events"),
            &ConnectOptions::default(),
        )
        .await
        .unwrap();
        subs.push(c);
    }
    // 5,000 raw connection attempts, 250 in flight at a time, each reading its answer.
    let addr = node.addr;
    let flood = tokio::spawn(async move {
        let mut set = JoinSet::new();
        let (mut ok, mut told_to_retry) = (0usize, 0usize);
        for i in 0..ATTEMPTS {
            if set.len() >= 250 {
                if let Some(Ok((o, r))) = set.join_next().await {
                    ok += o;
                    told_to_retry += r;
                }
            }
            set.spawn(async move {
                let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
                    return (0, 0);
                };
                let req = format!(
                    "GET /v1/channels/f{}/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                    i % 7
                );
                if s.write_all(req.as_bytes()).await.is_err() {
                    return (0, 0);
                }
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                let read = tokio::time::timeout(Duration::from_secs(3), async {
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        got.extend_from_slice(&buf[..n]);
                    }
                })
                .await;
                let text = String::from_utf8_lossy(&got);
                let retry_only = read.is_ok()
                    && text.starts_with("HTTP/1.1 200")
                    && text.contains("retry: ")
                    && !text.contains("id: ");
                (
                    usize::from(text.starts_with("HTTP/1.1 200")),
                    usize::from(retry_only),
                )
            });
        }
        while let Some(Ok((o, r))) = set.join_next().await {
            ok += o;
            told_to_retry += r;
        }
        (ok, told_to_retry)
    });
    // Meanwhile, publishing goes on.
    let http = HttpClient::new();
    for i in 0..EVENTS {
        let res = http
            .post(
                &node.url("/v1/channels/f/events"),
                "application/json",
                Bytes::from(format!("{{\"data\":\"{i}\"}}")),
            )
            .await
            .unwrap();
        assert_eq!(res.status, StatusCode::CREATED);
    }
    let (answered, retry_only) = tokio::time::timeout(Duration::from_secs(120), flood)
        .await
        .unwrap()
        .unwrap();
    assert!(
        answered > ATTEMPTS / 2,
        "the node kept answering: {answered} of {ATTEMPTS}"
    );
    assert!(
        retry_only > 0,
        "past the limit, attempts were told to retry"
    );
    for c in &mut subs {
        let got: Vec<usize> = events(c, EVENTS)
            .await
            .iter()
            .map(|e| e.data.parse().unwrap())
            .collect();
        assert_eq!(
            got,
            (0..EVENTS).collect::<Vec<_>>(),
            "no event lost for existing subscribers"
        );
    }
    let ready = http.get(&node.url("/readyz")).await.unwrap();
    assert_eq!(ready.status, StatusCode::OK);
}

#[tokio::test]
async fn slow_header_senders_are_cut() {
    let node = spawn_process(&[("SSEGATE_HEADER_READ_TIMEOUT", "1s")]).await;
    let mut slow = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    slow.write_all(b"GET /v1/channels/s/events HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    // Never finish the headers: the node closes the connection on its own.
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match slow.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert_eq!(closed, Ok(true), "a slowloris connection is cut");
    // And a normal client is served meanwhile.
    let mut c = Connection::open(
        &node.url("/v1/channels/s/events"),
        &ConnectOptions::default(),
    )
    .await
    .unwrap();
    assert!(matches!(c.next_item().await.unwrap(), Some(Item::Retry(_))));
}
