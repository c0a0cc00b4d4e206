//! Authentication and authorization (off unless configured).
//!
//! - **Subscribers** present a JWT: `Authorization: Bearer`, else the cookie (default
//!   `ssegate_token`, which `EventSource` sends), else `?token=` (for short-lived tokens
//!   only: URLs end up in proxy logs; ssegate itself never logs a query string). Its
//!   `ssegate.subscribe` patterns must cover every requested channel (else 403), and the
//!   stream ends at the token's `exp` after an `event: token-expired` frame.
//! - **Publishers** present a static key from `SSEGATE_PUBLISH_KEYS` or a JWT whose
//!   `ssegate.publish` patterns cover every channel they publish to.
//! - Tokens: HS256 with `SSEGATE_AUTH_JWT_SECRET`, RS256/ES256 with a PEM public key, or
//!   any of those from a JWKS file (chosen by `kid`). `exp` is required; `nbf`, and `aud` /
//!   `iss` when configured, are checked.
//! - Errors never contain the token, and nothing here logs one.
//!
//! # Layout
//!
//! - `claims`: the claims, channel patterns and [`Principal`].
//! - `keys`: hashed publisher keys.
//! - `mint`: `POST /v1/tokens`.

mod claims;
mod keys;
pub(crate) mod mint;

use std::time::Duration;

use http::{HeaderMap, StatusCode, header};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Validation, errors::ErrorKind};
use ssegate_core::ChannelName;

pub use claims::Principal;
pub use keys::PublishKey;

use crate::error::ApiError;
use crate::query::Query;

/// Why the auth settings cannot be used; each names the setting to change.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    /// The HS256 secret is too short to be one.
    #[error("the JWT secret must be at least 32 bytes")]
    ShortSecret,
    /// A private key where the public key belongs.
    #[error(
        "the JWT public key file holds a private key: give the public key only (a node only verifies tokens)"
    )]
    PrivateKey,
    /// Not a PEM key of a kind we verify.
    #[error("the JWT public key is neither an RSA nor an EC PEM key")]
    NotPublicKey,
    /// The JWKS document does not parse.
    #[error("the JWKS file is not valid: {0}")]
    Jwks(#[source] serde_json::Error),
    /// A key of the JWKS document cannot be used.
    #[error("a JWKS key cannot be used: {0}")]
    JwksKey(#[source] jsonwebtoken::errors::Error),
    /// A JWKS key's algorithm is not one we verify.
    #[error("unsupported JWKS algorithm {0}")]
    JwksAlgorithm(String),
}

impl AuthConfigError {
    /// The setting to change.
    pub fn setting(&self) -> &'static str {
        match self {
            Self::ShortSecret => "auth_jwt_secret",
            Self::PrivateKey | Self::NotPublicKey => "auth_jwt_public_key",
            Self::Jwks(_) | Self::JwksKey(_) | Self::JwksAlgorithm(_) => "auth_jwks_file",
        }
    }
}

/// Auth settings, as configured.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// HS256 secret: verifies tokens, and signs the ones `POST /v1/tokens` mints.
    pub jwt_secret: Option<String>,
    /// A PEM public key (RSA for RS256, EC P-256 for ES256).
    pub jwt_public_key_pem: Option<String>,
    /// A JWKS document (keys chosen by `kid`).
    pub jwks_json: Option<String>,
    /// The `aud` a token must carry; `None`: not checked.
    pub audience: Option<String>,
    /// The `iss` a token must carry; `None`: not checked.
    pub issuer: Option<String>,
    /// The cookie a subscriber's token is read from when there is no `Authorization`
    /// header (`EventSource` cannot set headers, but it sends cookies).
    pub cookie_name: String,
    /// Static publisher keys. With any key (or any JWT key) configured, every publish
    /// must present a key or a token with publish grants; with none, anyone may publish.
    pub publish_keys: Vec<PublishKey>,
    /// Longest lifetime of a minted subscribe token.
    pub mint_max_ttl: Duration,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
}

impl Default for AuthSettings {
    /// The declared defaults (see [`crate::settings::Options`]): auth off.
    fn default() -> Self {
        crate::Settings::default().auth.settings().clone()
    }
}

struct Verifier {
    kid: Option<String>,
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
}

/// The configured authenticator.
pub struct Auth {
    verifiers: Vec<Verifier>,
    signer: Option<EncodingKey>,
    settings: AuthSettings,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("jwt", &!self.verifiers.is_empty())
            .field("publish_keys", &self.settings.publish_keys.len())
            .finish_non_exhaustive()
    }
}

/// Who is publishing.
#[derive(Debug)]
pub(crate) enum Publisher {
    /// Auth is off for publishers.
    Anyone,
    /// A static publisher key: every channel.
    Key,
    Token(Principal),
}

impl Publisher {
    pub(crate) fn may_publish(&self, channel: &ChannelName) -> bool {
        match self {
            Self::Anyone | Self::Key => true,
            Self::Token(p) => p.may_publish(channel),
        }
    }
}

pub(crate) fn unauthorized(message: &str) -> ApiError {
    let mut e = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message);
    e.www_authenticate = true;
    e
}

pub(crate) fn forbidden(channel: &ChannelName) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!("the token does not grant channel {:?}", channel.as_str()),
    )
}

impl Auth {
    /// Builds the authenticator; an unusable key is a configuration error.
    pub fn build(settings: AuthSettings) -> Result<Self, AuthConfigError> {
        let mut verifiers = Vec::new();
        let mut signer = None;
        if let Some(secret) = &settings.jwt_secret {
            if secret.len() < 32 {
                return Err(AuthConfigError::ShortSecret);
            }
            verifiers.push(Verifier {
                kid: None,
                key: DecodingKey::from_secret(secret.as_bytes()),
                algorithms: vec![Algorithm::HS256],
            });
            signer = Some(EncodingKey::from_secret(secret.as_bytes()));
        }
        if let Some(pem) = &settings.jwt_public_key_pem {
            // The verifying library takes a private key too (it derives the public half),
            // so a mistaken file would work and put a key that can sign any token on every
            // node. Refuse it, whatever its form (PKCS#1, PKCS#8, SEC1, encrypted).
            if pem.contains("PRIVATE KEY-----") {
                return Err(AuthConfigError::PrivateKey);
            }
            let v = if let Ok(key) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
                Verifier {
                    kid: None,
                    key,
                    algorithms: vec![Algorithm::RS256],
                }
            } else if let Ok(key) = DecodingKey::from_ec_pem(pem.as_bytes()) {
                Verifier {
                    kid: None,
                    key,
                    algorithms: vec![Algorithm::ES256],
                }
            } else {
                return Err(AuthConfigError::NotPublicKey);
            };
            verifiers.push(v);
        }
        if let Some(json) = &settings.jwks_json {
            let set: JwkSet = serde_json::from_str(json).map_err(AuthConfigError::Jwks)?;
            for jwk in &set.keys {
                let key = DecodingKey::from_jwk(jwk).map_err(AuthConfigError::JwksKey)?;
                let algorithms = match jwk.common.key_algorithm {
                    Some(a) => vec![
                        format!("{a:?}")
                            .parse::<Algorithm>()
                            .map_err(|_| AuthConfigError::JwksAlgorithm(format!("{a:?}")))?,
                    ],
                    None => vec![Algorithm::RS256, Algorithm::ES256],
                };
                verifiers.push(Verifier {
                    kid: jwk.common.key_id.clone(),
                    key,
                    algorithms,
                });
            }
        }
        Ok(Self {
            verifiers,
            signer,
            settings,
        })
    }

    /// Whether subscribers (and token publishers) need a JWT.
    pub fn jwt_enabled(&self) -> bool {
        !self.verifiers.is_empty()
    }

    fn publishers_checked(&self) -> bool {
        self.jwt_enabled() || !self.settings.publish_keys.is_empty()
    }

    /// Verifies a token.
    pub(crate) fn verify(&self, token: &str) -> Result<Principal, ApiError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| unauthorized("the token is malformed"))?;
        let candidates = self.verifiers.iter().filter(|v| {
            v.algorithms.contains(&header.alg)
                && (v.kid.is_none() || header.kid.is_none() || v.kid == header.kid)
        });
        let mut last = unauthorized("the token is signed with an unknown key or algorithm");
        for v in candidates {
            let mut validation = Validation::new(header.alg);
            validation.leeway = self.settings.leeway.as_secs();
            validation.validate_nbf = true;
            validation.set_required_spec_claims(&["exp"]);
            match &self.settings.audience {
                Some(aud) => validation.set_audience(&[aud]),
                None => validation.validate_aud = false,
            }
            if let Some(iss) = &self.settings.issuer {
                validation.set_issuer(&[iss]);
            }
            match jsonwebtoken::decode::<claims::Claims>(token, &v.key, &validation) {
                Ok(data) => return Ok(Principal::from_claims(data.claims)),
                Err(e) => {
                    last = unauthorized(match e.kind() {
                        ErrorKind::ExpiredSignature => "the token has expired",
                        ErrorKind::ImmatureSignature => "the token is not valid yet",
                        ErrorKind::InvalidAudience => "the token is for another audience",
                        ErrorKind::InvalidIssuer => "the token is from another issuer",
                        ErrorKind::InvalidSignature => "the token's signature is invalid",
                        ErrorKind::MissingRequiredClaim(_) => "the token lacks a required claim",
                        _ => "the token is invalid",
                    });
                    // A wrong signature may just be the wrong key of several: try the next.
                    if !matches!(e.kind(), ErrorKind::InvalidSignature) {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }

    /// The subscriber's principal: `None` when auth is off.
    pub(crate) fn subscriber(
        &self,
        headers: &HeaderMap,
        query: &Query,
    ) -> Result<Option<Principal>, ApiError> {
        if !self.jwt_enabled() {
            return Ok(None);
        }
        let token = bearer(headers)
            .or_else(|| cookie(headers, &self.settings.cookie_name))
            .or_else(|| {
                query
                    .get("token")
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
            })
            .ok_or_else(|| unauthorized("a token is required"))?;
        self.verify(&token).map(Some)
    }

    /// The publisher: a key, a token, or anyone when publishers are not checked.
    pub(crate) fn publisher(&self, headers: &HeaderMap) -> Result<Publisher, ApiError> {
        if !self.publishers_checked() {
            return Ok(Publisher::Anyone);
        }
        let presented = bearer(headers).ok_or_else(|| unauthorized("a credential is required"))?;
        if self
            .settings
            .publish_keys
            .iter()
            .any(|k| k.matches(&presented))
        {
            return Ok(Publisher::Key);
        }
        if !self.jwt_enabled() {
            return Err(unauthorized("the publisher key is not valid"));
        }
        self.verify(&presented).map(Publisher::Token)
    }

    /// What it was built from.
    pub fn settings(&self) -> &AuthSettings {
        &self.settings
    }

    pub(crate) fn signer(&self) -> Option<&EncodingKey> {
        self.signer.as_ref()
    }
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_owned())
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, v)| *k == name && !v.is_empty())
        .map(|(_, v)| v.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_key_is_refused_where_a_public_key_belongs() {
        let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/../ssegate/tests/it/keys/");
        for (file, ok) in [
            ("rsa_public.pem", true),
            ("ec_public.pem", true),
            ("rsa_private.pem", false),
            ("ec_private.pem", false),
        ] {
            let pem = std::fs::read_to_string(format!("{keys}{file}")).unwrap();
            let built = Auth::build(AuthSettings {
                jwt_public_key_pem: Some(pem),
                ..AuthSettings::default()
            });
            match built {
                Ok(_) => assert!(ok, "{file} was taken"),
                Err(e) => {
                    assert!(!ok, "{file}: {e}");
                    assert!(matches!(e, AuthConfigError::PrivateKey), "{e}");
                }
            }
        }
    }
}
