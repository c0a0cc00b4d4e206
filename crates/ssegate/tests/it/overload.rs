//! Overload is refused, never misreported (DESIGN.md, delivery semantics): a node driven
//! past what it can carry refuses publishes before any work (`503 overloaded` with
//! `Retry-After`), and every publish answered with an error is not in the stream, except
//! those answered `504 publish_outcome_unknown`, which may be.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use ssegate_client::HttpClient;
use tokio::task::JoinSet;

use crate::cluster::nodes_on;
use crate::helpers::{TestProcess, json};
use crate::redis_server::RedisServer;

const PUBLISHES: usize = 300;

/// One publish of `data` to channel `ov`: its status and error code.
async fn publish(http: &HttpClient, url: &str, data: &str) -> (StatusCode, Option<String>) {
    let body = Bytes::from(serde_json::json!({ "data": data }).to_string());
    let res = http
        .request(
            Method::POST,
            url,
            &[("content-type", "application/json")],
            body,
        )
        .await
        .expect("the node answers every publish, if only with a refusal");
    let code = (!res.status.is_success()).then(|| {
        let has_retry_after = res.headers.contains_key(http::header::RETRY_AFTER);
        let code = json(&res.body)["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            code != "overloaded" || has_retry_after,
            "an overload refusal says when to come back"
        );
        code
    });
    (res.status, code)
}

/// Every event of channel `ov`, through the history endpoint, page by page.
async fn stored(http: &HttpClient, node: &TestProcess) -> HashSet<String> {
    let mut all = HashSet::new();
    let mut after = String::new();
    loop {
        let url = node.url(&format!("/v1/channels/ov/history?limit=1000&after={after}"));
        let page = json(&http.get(&url).await.unwrap().body);
        let events = page["events"].as_array().cloned().unwrap_or_default();
        all.extend(
            events
                .iter()
                .filter_map(|e| e["data"].as_str().map(str::to_owned)),
        );
        match page["next_after"].as_str() {
            Some(next) if !events.is_empty() => after = next.to_owned(),
            _ => return all,
        }
    }
}

/// A burst of publishes, far more at once than the node takes (16 in flight, 2 Redis
/// connections), while Redis holds every write for a second (`CLIENT PAUSE WRITE`): the
/// node refuses what it cannot start, times out what it sent, and says which is which.
#[tokio::test]
async fn past_saturation_every_error_but_outcome_unknown_was_not_published() {
    let redis = RedisServer::start(false).await;
    let nodes = nodes_on(
        ("SSEGATE_REDIS_URL", &redis.url()),
        1,
        &[
            ("SSEGATE_MAX_PUBLISHES_IN_FLIGHT", "16"),
            ("SSEGATE_REDIS_POOL_SIZE", "2"),
            ("SSEGATE_REDIS_TIMEOUT", "300ms"),
        ],
    )
    .await;
    let http = HttpClient::new();
    let url = nodes[0].url("/v1/channels/ov/events");
    // The channel exists and the node has its connections before the burst.
    assert_eq!(publish(&http, &url, "warm").await.0, StatusCode::CREATED);

    let mut burst = JoinSet::new();
    for i in 0..PUBLISHES {
        let (http, url) = (http.clone(), url.clone());
        burst.spawn(async move {
            // Spread over about the second of the pause and a little after it.
            tokio::time::sleep(Duration::from_millis((i as u64 * 4) % 1300)).await;
            let data = format!("p{i}");
            let answer = publish(&http, &url, &data).await;
            (data, answer)
        });
        if i == 0 {
            let _: redis::Value = redis.cmd(&["CLIENT", "PAUSE", "1000", "WRITE"]).await;
        }
    }
    let mut answers = Vec::new();
    while let Some(done) = burst.join_next().await {
        answers.push(done.unwrap());
    }
    // The paused scripts have run by now (the pause is over); the store is final.
    let _: redis::Value = redis.cmd(&["CLIENT", "UNPAUSE"]).await;
    let stored = stored(&http, &nodes[0]).await;

    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for (data, (status, code)) in &answers {
        let code = code.clone().unwrap_or_else(|| "created".into());
        *counts
            .entry(format!("{} {code}", status.as_u16()))
            .or_default() += 1;
        match code.as_str() {
            "created" => assert!(
                stored.contains(data),
                "{data} was acknowledged but is not stored"
            ),
            "publish_outcome_unknown" => {}
            "overloaded" | "broker_unavailable" => assert!(
                !stored.contains(data),
                "{data} was answered {status} {code} but was published ({counts:?})"
            ),
            other => panic!("{data}: unexpected answer {status} {other}"),
        }
    }
    // The burst did reach saturation, and the node still got work done.
    let n = |k: &str| counts.get(k).copied().unwrap_or(0);
    assert!(n("503 overloaded") > 0, "never saturated: {counts:?}");
    assert!(n("201 created") > 0, "nothing got through: {counts:?}");
    eprintln!("answers: {counts:?}");
}
