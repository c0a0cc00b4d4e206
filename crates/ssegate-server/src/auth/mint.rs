//! `POST /v1/tokens`: a backend, holding a publisher key, mints a short-lived subscribe
//! token for one of its users, which the browser then hands to `EventSource` (in the
//! cookie or `?token=`), because `EventSource` cannot send an `Authorization` header.
//!
//! Only publisher keys may mint (a token's own grants are not a licence to create others),
//! and only with an HS256 secret configured (ssegate signs with it).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use serde_json::{Value, json};

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
    if sub.is_empty() || sub.len() > 128 || !sub.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad("\"sub\" must be 1 to 128 visible ASCII characters"));
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
    use super::valid_pattern;

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
