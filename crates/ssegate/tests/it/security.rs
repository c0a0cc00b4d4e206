//! Authentication, authorization, CORS and limits, against real nodes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Method, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use ssegate_client::{ConnectOptions, Connection, Item};
use ssegate_server::auth::{AuthSettings, PublishKey};
use ssegate_server::cors::Cors;

use crate::helpers::{TestApp, WAIT, built, json, next_item, opening_id, spawn_app_with};

const SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!";
const AUDIENCE: &str = "ssegate-test";
const PUBLISHER_KEY: &str = "publisher-key-for-tests-0001";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn key_file(name: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/keys/");
    std::fs::read_to_string(format!("{path}{name}")).unwrap()
}

/// Claims granting `subscribe` and `publish` patterns, valid for an hour.
fn claims(sub: &str, subscribe: &[&str], publish: &[&str]) -> Value {
    json!({ "sub": sub, "aud": AUDIENCE, "exp": now() + 3600, "nbf": now() - 10,
            "ssegate": { "subscribe": subscribe, "publish": publish } })
}

fn hs256(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn signed(claims: &Value, alg: Algorithm, pem: &str, kid: Option<&str>) -> String {
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
        _ => EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

fn auth(tweak: impl FnOnce(&mut AuthSettings)) -> AuthSettings {
    let mut a = AuthSettings {
        jwt_secret: Some(SECRET.into()),
        audience: Some(AUDIENCE.into()),
        publish_keys: vec![PublishKey::parse(PUBLISHER_KEY).unwrap()],
        ..AuthSettings::default()
    };
    tweak(&mut a);
    a
}

async fn secured() -> TestApp {
    spawn_app_with(|s| s.auth = built(auth(|_| {}))).await
}

/// Status and error code of a GET with headers.
async fn get(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> (StatusCode, String) {
    let res = app.request(Method::GET, path, headers, "").await;
    let code = if res.status == StatusCode::OK {
        String::new()
    } else {
        json(&res.body)["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    (res.status, code)
}

async fn open_with(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> Connection {
    let opts = ConnectOptions {
        headers: headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..ConnectOptions::default()
    };
    Connection::open(&app.url(path), &opts).await.unwrap()
}

#[tokio::test]
async fn hs256_tokens_are_checked_for_signature_time_audience_and_channels() {
    let app = secured().await;
    let good = hs256(&claims("alice", &["news", "user:{sub}:*"], &[]), SECRET);
    let bearer = format!("Bearer {good}");
    // Accepted in each place a browser or client can put it.
    let mut c = open_with(
        &app,
        "/v1/channels/news/events",
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(c.status(), StatusCode::OK);
    opening_id(&mut c).await;
    let cookie = format!("theme=dark; ssegate_token={good}");
    let c = open_with(
        &app,
        "/v1/channels/user:alice:inbox/events",
        &[("cookie", &cookie)],
    )
    .await;
    assert_eq!(c.status(), StatusCode::OK);
    let c = open_with(
        &app,
        &format!("/v1/events?channels=news,user:alice:x&token={good}"),
        &[],
    )
    .await;
    assert_eq!(c.status(), StatusCode::OK);
    assert_eq!(
        get(
            &app,
            "/v1/channels/news/history",
            &[("authorization", &bearer)]
        )
        .await
        .0,
        StatusCode::OK
    );

    let refused = [
        ("missing", String::new()),
        (
            "expired",
            hs256(
                &json!({"sub": "a", "aud": AUDIENCE, "exp": now() - 60, "ssegate": {"subscribe": ["news"]}}),
                SECRET,
            ),
        ),
        (
            "not yet valid",
            hs256(
                &json!({"sub": "a", "aud": AUDIENCE, "exp": now() + 600, "nbf": now() + 300, "ssegate": {"subscribe": ["news"]}}),
                SECRET,
            ),
        ),
        (
            "wrong signature",
            hs256(
                &claims("a", &["news"], &[]),
                "another-secret-of-at-least-32-bytes!!",
            ),
        ),
        (
            "wrong audience",
            hs256(
                &json!({"sub": "a", "aud": "someone-else", "exp": now() + 600, "ssegate": {"subscribe": ["news"]}}),
                SECRET,
            ),
        ),
        (
            "no exp",
            hs256(
                &json!({"sub": "a", "aud": AUDIENCE, "ssegate": {"subscribe": ["news"]}}),
                SECRET,
            ),
        ),
        ("garbage", "not.a.token".to_owned()),
    ];
    for (why, token) in &refused {
        let headers: Vec<(&str, String)> = if token.is_empty() {
            vec![]
        } else {
            vec![("authorization", format!("Bearer {token}"))]
        };
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let res = app
            .request(Method::GET, "/v1/channels/news/events", &headers, "")
            .await;
        assert_eq!(res.status, StatusCode::UNAUTHORIZED, "{why}");
        assert_eq!(json(&res.body)["error"]["code"], "unauthorized", "{why}");
        assert!(
            res.header("www-authenticate")
                .unwrap()
                .starts_with("Bearer"),
            "{why}"
        );
        assert!(
            !token.is_empty() && !res.text().contains(token.as_str()) || token.is_empty(),
            "{why}: token echoed"
        );
    }
    // A valid token that does not cover every channel is 403.
    for path in [
        "/v1/channels/other/events",
        "/v1/events?channels=news,other",
        "/v1/channels/user:bob:inbox/events",
        "/v1/channels/other/history",
    ] {
        assert_eq!(
            get(&app, path, &[("authorization", &bearer)]).await,
            (StatusCode::FORBIDDEN, "forbidden".into()),
            "{path}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn rs256_es256_and_jwks_tokens_are_verified_with_their_public_keys() {
    let rsa = key_file("rsa_private.pem");
    let ec = key_file("ec_private.pem");
    let other = key_file("other_rsa_private.pem");
    let c = claims("carol", &["news"], &[]);
    let cases: [(&str, AuthSettings, String, String); 3] = [
        (
            "RS256 PEM",
            auth(|a| {
                a.jwt_secret = None;
                a.jwt_public_key_pem = Some(key_file("rsa_public.pem"));
            }),
            signed(&c, Algorithm::RS256, &rsa, None),
            signed(&c, Algorithm::RS256, &other, None),
        ),
        (
            "ES256 PEM",
            auth(|a| {
                a.jwt_secret = None;
                a.jwt_public_key_pem = Some(key_file("ec_public.pem"));
            }),
            signed(&c, Algorithm::ES256, &ec, None),
            signed(&c, Algorithm::RS256, &rsa, None),
        ),
        (
            "JWKS",
            auth(|a| {
                a.jwt_secret = None;
                a.jwks_json = Some(key_file("jwks.json"));
            }),
            signed(&c, Algorithm::ES256, &ec, Some("ec-1")),
            signed(&c, Algorithm::RS256, &other, Some("rsa-1")),
        ),
    ];
    for (mode, settings, good, bad) in cases {
        let app = spawn_app_with(|s| s.auth = built(settings)).await;
        let ok = format!("Bearer {good}");
        assert_eq!(
            get(&app, "/v1/channels/news/history", &[("authorization", &ok)])
                .await
                .0,
            StatusCode::OK,
            "{mode}"
        );
        let nok = format!("Bearer {bad}");
        assert_eq!(
            get(
                &app,
                "/v1/channels/news/history",
                &[("authorization", &nok)]
            )
            .await
            .0,
            StatusCode::UNAUTHORIZED,
            "{mode}"
        );
        let hs = format!("Bearer {}", hs256(&c, SECRET));
        assert_eq!(
            get(&app, "/v1/channels/news/history", &[("authorization", &hs)])
                .await
                .0,
            StatusCode::UNAUTHORIZED,
            "{mode}: HS256 is not accepted without the secret"
        );
        app.stop().await;
    }
    // The RS256 key of the JWKS works too.
    let app = spawn_app_with(|s| {
        s.auth = built(auth(|a| {
            a.jwt_secret = None;
            a.jwks_json = Some(key_file("jwks.json"));
        }))
    })
    .await;
    let t = format!(
        "Bearer {}",
        signed(&c, Algorithm::RS256, &rsa, Some("rsa-1"))
    );
    assert_eq!(
        get(&app, "/v1/channels/news/history", &[("authorization", &t)])
            .await
            .0,
        StatusCode::OK
    );
    app.stop().await;
}

#[tokio::test]
async fn a_stream_ends_with_token_expired_when_its_token_does() {
    let app = secured().await;
    let short = hs256(
        &json!({"sub": "dave", "aud": AUDIENCE, "exp": now() + 2, "ssegate": {"subscribe": ["news"]}}),
        SECRET,
    );
    let mut c = open_with(
        &app,
        "/v1/channels/news/events",
        &[("authorization", &format!("Bearer {short}"))],
    )
    .await;
    assert_eq!(c.status(), StatusCode::OK);
    opening_id(&mut c).await;
    let key = format!("Bearer {PUBLISHER_KEY}");
    let res = app
        .request(
            Method::POST,
            "/v1/channels/news/events",
            &[("authorization", &key)],
            r#"{"data":"before"}"#,
        )
        .await;
    assert_eq!(res.status, StatusCode::CREATED);
    let mut seen = Vec::new();
    while let Some(item) = next_item(&mut c).await {
        if let Item::Event(e) = item {
            seen.push(e.event);
        }
    }
    assert_eq!(
        seen,
        ["message", "token-expired"],
        "the last frame says why, then the stream ends"
    );
    app.stop().await;
}

#[tokio::test]
async fn publishers_need_a_key_or_a_token_with_publish_grants() {
    let hashed = {
        use sha2_free::hex_sha256;
        format!("sha256:{}", hex_sha256("a-second-publisher-key-xyz"))
    };
    let app = spawn_app_with(|s| {
        s.auth = built(auth(|a| {
            a.publish_keys.push(PublishKey::parse(&hashed).unwrap())
        }));
    })
    .await;
    let app = &app;
    let post = |auth: Option<String>, path: &'static str, body: &'static str| async move {
        let headers: Vec<(&str, String)> = auth.into_iter().map(|a| ("authorization", a)).collect();
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let res = app.request(Method::POST, path, &h, body).await;
        let code = json(&res.body)["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        (res.status.as_u16(), code)
    };
    let p = "/v1/channels/news/events";
    let d = r#"{"data":1}"#;
    assert_eq!(post(None, p, d).await, (401, "unauthorized".into()));
    assert_eq!(
        post(Some("Bearer wrong-key-of-some-length".into()), p, d).await,
        (401, "unauthorized".into())
    );
    assert_eq!(
        post(Some(format!("Bearer {PUBLISHER_KEY}")), p, d).await.0,
        201
    );
    assert_eq!(
        post(Some("Bearer a-second-publisher-key-xyz".into()), p, d)
            .await
            .0,
        201,
        "a key configured as its hash"
    );
    let token = format!("Bearer {}", hs256(&claims("svc", &[], &["news"]), SECRET));
    assert_eq!(post(Some(token.clone()), p, d).await.0, 201);
    assert_eq!(
        post(Some(token.clone()), "/v1/channels/other/events", d).await,
        (403, "forbidden".into())
    );
    let batch = r#"{"events":[{"channel":"news","data":1},{"channel":"other","data":2}]}"#;
    let res = app
        .request(
            Method::POST,
            "/v1/publish",
            &[("authorization", &token)],
            batch,
        )
        .await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    assert_eq!(json(&res.body)["error"]["index"], 1);
    let subscriber_token = format!("Bearer {}", hs256(&claims("eve", &["news"], &[]), SECRET));
    assert_eq!(
        post(Some(subscriber_token), p, d).await,
        (403, "forbidden".into()),
        "subscribe grants do not publish"
    );
}

mod sha2_free {
    //! The SHA-256 of a key, computed the way an operator would (`sha256sum`), to test
    //! keys configured by hash without the test linking the same code it tests.
    pub fn hex_sha256(s: &str) -> String {
        let out = std::process::Command::new("sha256sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(s.as_bytes())?;
                c.wait_with_output()
            })
            .unwrap();
        String::from_utf8(out.stdout).unwrap()[..64].to_owned()
    }
}

#[tokio::test]
async fn a_backend_mints_short_lived_subscribe_tokens_for_browsers() {
    let app = secured().await;
    let key = format!("Bearer {PUBLISHER_KEY}");
    let body = r#"{"sub": "frank", "subscribe": ["user:{sub}:*", "news"], "ttl": "2m"}"#;
    let res = app
        .request(Method::POST, "/v1/tokens", &[("authorization", &key)], body)
        .await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text());
    let minted = json(&res.body);
    let token = minted["token"].as_str().unwrap();
    assert!(minted["expires_at"].as_u64().unwrap() <= now() + 120);
    let path = format!("/v1/channels/user:frank:feed/events?token={token}");
    assert_eq!(open_with(&app, &path, &[]).await.status(), StatusCode::OK);
    let path = format!("/v1/channels/user:grace:feed/history?token={token}");
    assert_eq!(get(&app, &path, &[]).await.0, StatusCode::FORBIDDEN);
    // Only a publisher key mints, within the maximum lifetime.
    let res = app.request(Method::POST, "/v1/tokens", &[], body).await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    let user = format!("Bearer {token}");
    let res = app
        .request(
            Method::POST,
            "/v1/tokens",
            &[("authorization", &user)],
            body,
        )
        .await;
    assert_eq!(
        res.status,
        StatusCode::UNAUTHORIZED,
        "a subscribe token cannot mint"
    );
    let long = r#"{"sub": "frank", "subscribe": ["news"], "ttl": "2h"}"#;
    let res = app
        .request(Method::POST, "/v1/tokens", &[("authorization", &key)], long)
        .await;
    assert_eq!(json(&res.body)["error"]["code"], "invalid_body");
    let wide = r#"{"sub": "frank", "subscribe": ["a*b"]}"#;
    let res = app
        .request(Method::POST, "/v1/tokens", &[("authorization", &key)], wide)
        .await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    app.stop().await;
}

#[tokio::test]
async fn cors_allows_listed_origins_and_refuses_others() {
    let app = spawn_app_with(|s| {
        s.cors = Cors::parse("https://app.example.com,https://*.example.org").unwrap()
    })
    .await;
    // Preflight for a publish from an allowed origin.
    let res = app
        .request(
            Method::OPTIONS,
            "/v1/channels/news/events",
            &[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "POST"),
                (
                    "access-control-request-headers",
                    "content-type, idempotency-key",
                ),
            ],
            "",
        )
        .await;
    assert_eq!(res.status, StatusCode::NO_CONTENT);
    assert_eq!(
        res.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(res.header("access-control-allow-credentials"), Some("true"));
    assert!(
        res.header("access-control-allow-methods")
            .unwrap()
            .contains("POST")
    );
    assert!(
        res.header("access-control-allow-headers")
            .unwrap()
            .contains("idempotency-key")
    );
    assert!(res.header("vary").unwrap().contains("Origin"));
    // The actual requests.
    let res = app
        .request(
            Method::POST,
            "/v1/channels/news/events",
            &[
                ("origin", "https://a.example.org"),
                ("content-type", "application/json"),
            ],
            r#"{"data":1}"#,
        )
        .await;
    assert_eq!(res.status, StatusCode::CREATED);
    assert_eq!(
        res.header("access-control-allow-origin"),
        Some("https://a.example.org")
    );
    let c = open_with(
        &app,
        "/v1/channels/news/events",
        &[("origin", "https://app.example.com")],
    )
    .await;
    assert_eq!(c.status(), StatusCode::OK);
    assert_eq!(
        c.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    // Refused origins, for preflights, publishes and streams alike.
    for (method, path) in [
        (Method::OPTIONS, "/v1/channels/news/events"),
        (Method::POST, "/v1/channels/news/events"),
        (Method::GET, "/v1/channels/news/events"),
    ] {
        let res = app
            .request(
                method.clone(),
                path,
                &[
                    ("origin", "https://evil.example.com"),
                    ("access-control-request-method", "POST"),
                ],
                r#"{"data":1}"#,
            )
            .await;
        assert_eq!(res.status, StatusCode::FORBIDDEN, "{method}");
        assert_eq!(json(&res.body)["error"]["code"], "origin_not_allowed");
        assert!(res.header("access-control-allow-origin").is_none());
    }
    // Same-origin (the demo page) needs no listing.
    let host = app.addr.to_string();
    let origin = format!("http://{host}");
    let res = app
        .request(
            Method::POST,
            "/v1/channels/news/events",
            &[("origin", &origin), ("host", &host)],
            r#"{"data":1}"#,
        )
        .await;
    assert_eq!(res.status, StatusCode::CREATED);
    app.stop().await;
}

#[tokio::test]
async fn every_limit_refuses_the_next_connection_the_documented_way() {
    // Per subject: a third stream for alice is told to retry; bob is not affected.
    let app = spawn_app_with(|s| {
        s.auth = built(auth(|_| {}));
        s.max_connections_per_subject = 2;
        s.max_publishes_per_second = 3;
    })
    .await;
    let alice = format!("Bearer {}", hs256(&claims("alice", &["*"], &[]), SECRET));
    let bob = format!("Bearer {}", hs256(&claims("bob", &["*"], &[]), SECRET));
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut c = open_with(&app, "/v1/channels/a/events", &[("authorization", &alice)]).await;
        opening_id(&mut c).await;
        open.push(c);
    }
    let mut third = open_with(&app, "/v1/channels/a/events", &[("authorization", &alice)]).await;
    assert_eq!(
        third.status(),
        StatusCode::OK,
        "a 200, so that browsers retry"
    );
    assert!(matches!(next_item(&mut third).await, Some(Item::Retry(_))));
    assert!(next_item(&mut third).await.is_none(), "and nothing else");
    let mut other = open_with(&app, "/v1/channels/a/events", &[("authorization", &bob)]).await;
    assert!(matches!(next_item(&mut other).await, Some(Item::Retry(_))));
    assert!(
        matches!(next_item(&mut other).await, Some(Item::LastEventId(_))),
        "bob gets a real stream"
    );
    // Publishes past the node's rate: 429 with Retry-After.
    let key = format!("Bearer {PUBLISHER_KEY}");
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let res = app
            .request(
                Method::POST,
                "/v1/channels/a/events",
                &[("authorization", &key)],
                r#"{"data":1}"#,
            )
            .await;
        if res.status == StatusCode::TOO_MANY_REQUESTS {
            assert!(res.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
            assert_eq!(json(&res.body)["error"]["code"], "rate_limited");
        }
        statuses.push(res.status.as_u16());
    }
    assert!(
        statuses.contains(&429) && statuses[0] == 201,
        "{statuses:?}"
    );
    app.stop().await;

    // Node cap and new-connection rate, without auth: IP subjects, X-Forwarded-For only
    // from trusted proxies.
    let app = spawn_app_with(|s| {
        s.max_connections = 3;
        s.max_connections_per_subject = 1;
        s.trusted_proxies = vec![ssegate_server::limits::Cidr::parse("127.0.0.1").unwrap()];
    })
    .await;
    let mut held = Vec::new();
    for ip in ["1.1.1.1", "2.2.2.2", "3.3.3.3"] {
        let mut c = open_with(&app, "/v1/channels/b/events", &[("x-forwarded-for", ip)]).await;
        assert!(matches!(next_item(&mut c).await, Some(Item::Retry(_))));
        assert!(
            matches!(next_item(&mut c).await, Some(Item::LastEventId(_))),
            "{ip} gets a stream"
        );
        held.push(c);
    }
    let mut capped = open_with(
        &app,
        "/v1/channels/b/events",
        &[("x-forwarded-for", "4.4.4.4")],
    )
    .await;
    assert!(matches!(next_item(&mut capped).await, Some(Item::Retry(_))));
    assert!(
        next_item(&mut capped).await.is_none(),
        "the node is at its cap"
    );
    drop(held.pop());
    // Same client IP twice (through the trusted proxy): the second is refused.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut again = loop {
        // The node notices the dropped stream asynchronously; wait for its slot.
        let mut c = open_with(
            &app,
            "/v1/channels/b/events",
            &[("x-forwarded-for", "1.1.1.1")],
        )
        .await;
        assert!(matches!(next_item(&mut c).await, Some(Item::Retry(_))));
        let next = next_item(&mut c).await;
        if next.is_none() {
            break c;
        }
        assert!(tokio::time::Instant::now() < deadline);
    };
    assert!(next_item(&mut again).await.is_none());
    let health = app.request(Method::GET, "/readyz", &[], "").await;
    assert_eq!(
        health.status,
        StatusCode::OK,
        "refusals leave the node healthy"
    );
    app.stop().await;

    let app = spawn_app_with(|s| s.max_new_connections_per_second = 5).await;
    let mut refused = 0;
    for _ in 0..10 {
        let mut c = open_with(&app, "/v1/channels/c/events", &[]).await;
        assert!(matches!(next_item(&mut c).await, Some(Item::Retry(_))));
        if tokio::time::timeout(Duration::from_secs(5), next_item(&mut c))
            .await
            .unwrap()
            .is_none()
        {
            refused += 1;
        }
    }
    assert!(refused >= 4, "a burst of 10 at 5/s: {refused} refused");
    app.stop().await;
}

/// Issue 12.1: what a token may read of `channel`, as (stream status, history status).
async fn reads(app: &TestApp, token: &str, channel: &str) -> (u16, u16) {
    let bearer = format!("Bearer {token}");
    let headers = [("authorization", bearer.as_str())];
    let stream = open_with(app, &format!("/v1/channels/{channel}/events"), &headers).await;
    let history = get(app, &format!("/v1/channels/{channel}/history"), &headers).await;
    (stream.status().as_u16(), history.0.as_u16())
}

/// Issue 12.1: the status of a publish to `channel` with `token`.
async fn publishes(app: &TestApp, token: &str, channel: &str) -> u16 {
    let bearer = format!("Bearer {token}");
    let res = app
        .request(
            Method::POST,
            &format!("/v1/channels/{channel}/events"),
            &[("authorization", &bearer)],
            r#"{"data":1}"#,
        )
        .await;
    res.status.as_u16()
}

#[tokio::test]
async fn a_star_in_sub_never_acts_as_a_wildcard() {
    // Issue 12.1: `{sub}` was substituted before the final `*` was read, so a `sub` ending
    // in `*` turned `user:{sub}` into `user:*` (and `{sub}` into `*`).
    let app = secured().await;
    let token = |sub: &str, grants: &[&str]| hs256(&claims(sub, grants, grants), SECRET);
    // The grants work for a real subject.
    let bob = token("bob", &["user:{sub}", "{sub}"]);
    assert_eq!(reads(&app, &bob, "user:bob").await, (200, 200));
    assert_eq!(reads(&app, &bob, "bob").await, (200, 200));
    assert_eq!(publishes(&app, &bob, "user:bob").await, 201);

    let cases: [(&str, &[&str], &[&str]); 4] = [
        ("*", &["user:{sub}"], &["user:bob", "user:alice", "user:bo"]),
        (
            "bo*",
            &["user:{sub}"],
            &["user:bob", "user:bongo", "user:bo"],
        ),
        ("*", &["{sub}"], &["news", "user:bob", "bob", "anything"]),
        (
            "*",
            &["{sub}*", "user:{sub}:*"],
            &["news", "user:bob:inbox"],
        ),
    ];
    for (sub, grants, victims) in cases {
        let t = token(sub, grants);
        for victim in victims {
            let why = format!("sub {sub:?}, grants {grants:?}, channel {victim}");
            assert_eq!(reads(&app, &t, victim).await, (403, 403), "{why}");
            assert_eq!(publishes(&app, &t, victim).await, 403, "{why}: publish");
        }
        let bearer = format!("Bearer {t}");
        let path = format!("/v1/events?channels={}", victims.join(","));
        let c = open_with(&app, &path, &[("authorization", &bearer)]).await;
        assert_eq!(c.status(), StatusCode::FORBIDDEN, "sub {sub:?}: {path}");
    }
    // Patterns without `{sub}` do not depend on it.
    let star = token("*", &["news", "feed:*"]);
    assert_eq!(reads(&app, &star, "news").await, (200, 200));
    assert_eq!(reads(&app, &star, "feed:x").await, (200, 200));
    assert_eq!(reads(&app, &star, "user:bob").await, (403, 403));
    app.stop().await;
}

#[tokio::test]
async fn a_colon_in_sub_cannot_reach_into_another_subjects_channels() {
    // Issue 12.1: `sub: "bob:x"` with `user:{sub}:*` read `user:bob:x:inbox`, which is
    // `bob`'s (his `user:{sub}:*` covers it).
    let app = secured().await;
    let grants = ["user:{sub}:*", "user:{sub}"];
    let bob = hs256(&claims("bob", &grants, &grants), SECRET);
    assert_eq!(reads(&app, &bob, "user:bob:x:inbox").await, (200, 200));
    assert_eq!(publishes(&app, &bob, "user:bob:x:inbox").await, 201);
    for (sub, victim) in [
        ("bob:x", "user:bob:x:inbox"),
        ("bob:x", "user:bob:x"),
        ("bob:inbox", "user:bob:inbox"),
    ] {
        let t = hs256(&claims(sub, &grants, &grants), SECRET);
        assert_eq!(reads(&app, &t, victim).await, (403, 403), "{sub} {victim}");
        assert_eq!(publishes(&app, &t, victim).await, 403, "{sub} {victim}");
    }
    app.stop().await;
}

#[tokio::test]
async fn identity_provider_tokens_follow_the_same_sub_rule() {
    // Issue 12.1 for RS256, ES256 and JWKS tokens: one set of claims code for every source.
    let rsa = key_file("rsa_private.pem");
    let ec = key_file("ec_private.pem");
    let grants = ["user:{sub}", "{sub}", "user:{sub}:*"];
    let sign: [(&str, AuthSettings, Algorithm, &str, Option<&str>); 4] = [
        (
            "RS256 PEM",
            auth(|a| {
                a.jwt_secret = None;
                a.jwt_public_key_pem = Some(key_file("rsa_public.pem"));
            }),
            Algorithm::RS256,
            &rsa,
            None,
        ),
        (
            "ES256 PEM",
            auth(|a| {
                a.jwt_secret = None;
                a.jwt_public_key_pem = Some(key_file("ec_public.pem"));
            }),
            Algorithm::ES256,
            &ec,
            None,
        ),
        (
            "JWKS RS256",
            auth(|a| {
                a.jwt_secret = None;
                a.jwks_json = Some(key_file("jwks.json"));
            }),
            Algorithm::RS256,
            &rsa,
            Some("rsa-1"),
        ),
        (
            "JWKS ES256",
            auth(|a| {
                a.jwt_secret = None;
                a.jwks_json = Some(key_file("jwks.json"));
            }),
            Algorithm::ES256,
            &ec,
            Some("ec-1"),
        ),
    ];
    for (mode, settings, alg, pem, kid) in sign {
        let app = spawn_app_with(|s| s.auth = built(settings)).await;
        let token = |sub: &str| signed(&claims(sub, &grants, &grants), alg, pem, kid);
        let bob = token("bob");
        assert_eq!(reads(&app, &bob, "user:bob").await, (200, 200), "{mode}");
        for (sub, victim) in [
            ("*", "user:bob"),
            ("bo*", "user:bob"),
            ("*", "news"),
            ("bob:x", "user:bob:x:inbox"),
        ] {
            let t = token(sub);
            let why = format!("{mode}: sub {sub:?}, channel {victim}");
            assert_eq!(reads(&app, &t, victim).await, (403, 403), "{why}");
            assert_eq!(publishes(&app, &t, victim).await, 403, "{why}: publish");
        }
        app.stop().await;
    }
}

#[tokio::test]
async fn minting_refuses_a_sub_that_is_not_a_single_name_segment() {
    // Issue 12.1: `POST /v1/tokens` minted `sub: "*"`, whose `user:{sub}` then read
    // `user:bob`.
    let app = secured().await;
    let key = format!("Bearer {PUBLISHER_KEY}");
    let mint = |sub: Value| {
        let body = json!({ "sub": sub, "subscribe": ["user:{sub}", "user:{sub}:*", "{sub}"] });
        let app = &app;
        let key = &key;
        async move {
            app.request(
                Method::POST,
                "/v1/tokens",
                &[("authorization", key)],
                &body.to_string(),
            )
            .await
        }
    };
    let res = mint("bob".into()).await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.text());
    let token = json(&res.body)["token"].as_str().unwrap().to_owned();
    assert_eq!(reads(&app, &token, "user:bob").await, (200, 200));
    assert_eq!(reads(&app, &token, "user:bobby").await, (403, 403));

    let too_long = "x".repeat(129);
    for sub in [
        "*",
        "bo*",
        "bob:x",
        ":",
        "",
        "a b",
        "a@b.example",
        "{sub}",
        too_long.as_str(),
    ] {
        let res = mint(sub.into()).await;
        assert_eq!(
            res.status,
            StatusCode::BAD_REQUEST,
            "{sub:?}: {}",
            res.text()
        );
        assert_eq!(res.header("content-type"), Some("application/json"));
        let body = json(&res.body);
        assert_eq!(body["error"]["code"], "invalid_sub", "{sub:?}");
        assert!(body.get("token").is_none(), "{sub:?}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("\"sub\""),
            "{sub:?}: {body}"
        );
    }
    let res = mint(Value::Null).await;
    assert_eq!(json(&res.body)["error"]["code"], "invalid_sub");
    app.stop().await;
}
