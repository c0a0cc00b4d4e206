//! The node's pub/sub connection recovers from a refused re-subscribe.
//!
//! Redis can accept the connection and still refuse the `SUBSCRIBE` (here: an ACL that
//! takes the channel permissions away, as an operator's mistake or a managed service's
//! policy change would). A node that took that refusal for success would leave its streams
//! waiting for live events that never come, silently. The node must treat it as a failure,
//! reconnect with backoff, and once Redis accepts the subscription again catch every stream
//! up from its cursor.

use std::time::Duration;

use http::StatusCode;
use ssegate_client::HttpClient;

use crate::cluster::{cluster, publish, stream};
use crate::helpers::{WAIT, events};
use crate::redis_server::RedisServer;

#[tokio::test]
async fn streams_recover_after_redis_refused_the_re_subscribe() {
    let redis = RedisServer::start(false).await;
    let nodes = cluster(&redis, 2, &[]).await;
    let http = HttpClient::new();
    let mut sub = stream(&nodes[0], "/v1/channels/acl/events", None).await;
    let (status, _) = publish(&http, &nodes[1], "acl", "before").await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(events(&mut sub, 1).await[0].data, "before");

    // No channel may be subscribed (or published) any more; the node's pub/sub connection
    // is dropped, and every re-SUBSCRIBE is refused with NOPERM.
    redis
        .cmd(&["ACL", "SETUSER", "default", "resetchannels"])
        .await;
    redis.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    // Wait until the node has tried (and been refused) at least once: Redis counts the
    // denied subscriptions in its ACL log.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let log = redis.cmd(&["ACL", "LOG"]).await;
        if format!("{log:?}").contains("channel") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the node never re-subscribed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    redis
        .cmd(&["ACL", "SETUSER", "default", "allchannels"])
        .await;

    // Published once Redis allows it again, on the other node: the stream gets it (live
    // after the node's next reconnect, or from history on its catch-up).
    let (status, id) = publish(&http, &nodes[1], "acl", "after").await;
    assert_eq!(status, StatusCode::CREATED, "{id}");
    let got = events(&mut sub, 1).await.remove(0);
    assert_eq!((got.id.as_str(), got.data.as_str()), (id.as_str(), "after"));

    // And live delivery works again on that node for a channel it had never seen.
    let mut fresh = stream(&nodes[0], "/v1/channels/acl-new/events", None).await;
    let (status, id) = publish(&http, &nodes[1], "acl-new", "new").await;
    assert_eq!(status, StatusCode::CREATED, "{id}");
    assert_eq!(events(&mut fresh, 1).await[0].data, "new");
}

/// Redis checks permissions at every call a script makes, so an ACL that allows the
/// stream but not the channel stops the publish script after its `XADD`: the event is
/// stored, and the answer must be `504 publish_outcome_unknown`, never a `503` that tells
/// the publisher to send it again.
#[tokio::test]
async fn a_publish_the_acl_stops_after_its_write_is_outcome_unknown() {
    let redis = RedisServer::start(false).await;
    let nodes = cluster(&redis, 1, &[]).await;
    let http = HttpClient::new();
    redis
        .cmd(&["ACL", "SETUSER", "default", "resetchannels"])
        .await;
    let (status, body) = publish(&http, &nodes[0], "half", "stored").await;
    assert_eq!(status.as_u16(), 504, "{body}");
    let error = &crate::helpers::json(body.as_bytes())["error"];
    assert_eq!(error["code"], "publish_outcome_unknown", "{body}");
    assert_eq!(
        redis.cmd(&["XLEN", "ssegate:{half}:s"]).await,
        redis::Value::Int(1),
        "the script wrote the event before the ACL stopped it"
    );
    redis
        .cmd(&["ACL", "SETUSER", "default", "allchannels"])
        .await;
    let (status, body) = publish(&http, &nodes[0], "half", "next").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}
