//! `POST /v1/tokens`: a backend, holding a publisher key, mints a short-lived subscribe
//! token for one of its users, which the browser then hands to `EventSource` (in the
//! cookie or `?token=`), because `EventSource` cannot send an `Authorization` header.
//!
//! Only publisher keys may mint (a token's own grants are not a licence to create others),
//! and only with an HS256 secret configured (ssegate signs with it). The `sub` must be a
//! single channel-name segment (`invalid_sub` otherwise), the only kind `{sub}` expands to.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use serde_json::{Value, json};

use super::claims::{MAX_SUB_LEN, is_sub_segment};
use super::{Auth, Publisher, unauthorized};
use crate::error::ApiError;

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_body", message)
}

/// A grant pattern must be a channel name, optionally with `{sub}` and a final `*`.
fn valid_pattern(p: &str) -> bool {
    let bare = p.replace("{sub}", "x");
    let bare = bare.strip_suffix('*').unwrap_or(&bare);
    bare.is_empty() && p.ends_with('*') || ssegate_core::ChannelName::new(bare).is_ok()
}

/// Validates the request and signs the token.
pub(crate) fn mint(auth: &Auth, publisher: &Publisher, body: &[u8]) -> Result<Value, ApiError> {
    if !matches!(publisher, Publisher::Key) {
        return Err(unauthorized("minting needs a publisher key"));
    }
    let Some(signer) = auth.signer() else {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "minting_not_configured",
            "minting tokens needs SSEGATE_AUTH_JWT_SECRET",
        ));
    };
    let req: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!("request body is not valid JSON: {e}"),
        )
    })?;
    let sub = req["sub"].as_str().unwrap_or_default();
    if !is_sub_segment(sub) {
        // Never mint a token whose `{sub}` grants would match nothing (or, read carelessly,
        // too much): see `claims`.
        return Err(ApiError::bad_request(
            "invalid_sub",
            format!(
                "\"sub\" must be 1 to {MAX_SUB_LEN} characters of A-Z, a-z, 0-9, '_', '.' and '-' \
                 (a single channel-name segment: no ':' or '*')"
            ),
        ));
    }
    let Some(patterns) = req["subscribe"].as_array().filter(|a| !a.is_empty()) else {
        return Err(bad(
            "\"subscribe\" must be a non-empty array of channel patterns",
        ));
    };
    let mut subscribe = Vec::new();
    for p in patterns {
        match p.as_str() {
            Some(p) if valid_pattern(p) => subscribe.push(p.to_owned()),
            _ => {
                return Err(bad(
                    "a pattern is a channel name, with {sub} and a final * allowed",
                ));
            }
        }
    }
    let max = auth.settings().mint_max_ttl;
    let ttl = match req.get("ttl").and_then(Value::as_str) {
        None => max,
        Some(t) => humantime::parse_duration(t)
            .ok()
            .filter(|d| !d.is_zero() && *d <= max)
            .ok_or_else(|| {
                bad(format!(
                    "\"ttl\" must be a duration up to {}",
                    humantime::format_duration(max)
                ))
            })?,
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let exp = now + ttl.as_secs().max(1);
    let mut claims = json!({
        "sub": sub,
        "iat": now,
        "nbf": now,
        "exp": exp,
        "ssegate": { "subscribe": subscribe },
    });
    if let Some(aud) = &auth.settings().audience {
        claims["aud"] = aud.clone().into();
    }
    if let Some(iss) = &auth.settings().issuer {
        claims["iss"] = iss.clone().into();
    }
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    let token = jsonwebtoken::encode(&header, &claims, signer).map_err(|e| {
        tracing::error!(error = %e, "cannot sign a token");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    })?;
    Ok(json!({ "token": token, "sub": sub, "expires_at": exp }))
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::{mint, valid_pattern};
    use crate::auth::{Auth, AuthSettings, Publisher};

    fn minter() -> Auth {
        Auth::build(AuthSettings {
            jwt_secret: Some("an-hs256-secret-of-at-least-32-bytes!".into()),
            ..AuthSettings::default()
        })
        .unwrap()
    }

    #[test]
    fn only_a_single_name_segment_is_minted_as_sub() {
        let auth = minter();
        let body = |sub: serde_json::Value| {
            serde_json::json!({ "sub": sub, "subscribe": ["user:{sub}:*", "news"] }).to_string()
        };
        for ok in ["alice", "42", "a.b-c_D", &"x".repeat(128)] {
            let minted = mint(&auth, &Publisher::Key, body(ok.into()).as_bytes()).unwrap();
            assert_eq!(minted["sub"], ok);
        }
        let too_long = "x".repeat(129);
        let refused = [
            "*", "bo*", "*bob", "bob:x", ":", "", "a b", "a@b.c", "auth0|1", "{sub}", "é",
            &too_long,
        ];
        for sub in refused.map(serde_json::Value::from).into_iter().chain([
            serde_json::Value::Null,
            42.into(),
            serde_json::json!(["bob"]),
        ]) {
            let e = mint(&auth, &Publisher::Key, body(sub.clone()).as_bytes()).unwrap_err();
            assert_eq!(
                (e.status, e.code),
                (StatusCode::BAD_REQUEST, "invalid_sub"),
                "{sub}"
            );
            assert!(e.message.contains("\"sub\""), "{sub}: {}", e.message);
        }
        // A missing `sub` too.
        let e = mint(&auth, &Publisher::Key, br#"{"subscribe": ["news"]}"#).unwrap_err();
        assert_eq!(e.code, "invalid_sub");
    }

    #[test]
    fn patterns() {
        for ok in ["news", "user:{sub}:*", "*", "a.b-c_d:*"] {
            assert!(valid_pattern(ok), "{ok}");
        }
        for bad in ["", "a b", "a*b", "**", "user:{sub}*x", "{sub}/x"] {
            assert!(!valid_pattern(bad), "{bad}");
        }
    }
}
