//! CORS. `SSEGATE_CORS_ORIGINS` lists the origins allowed to call the API from a browser:
//! exact (`https://app.example.com`) or a wildcard subdomain (`https://*.example.com`,
//! which does not match the bare domain). Same-origin requests (the `Origin`'s host and
//! port are exactly the request's `Host`; behind a proxy that is the `Host` it passes on,
//! which must be the client's, port included: `X-Forwarded-Host` is not read) and requests
//! without `Origin` (curl, backends) are always allowed; any other origin gets
//! `403 origin_not_allowed`. Allowed origins get credentials support (cookies
//! reach `EventSource` with `withCredentials`) and `Vary: Origin`.

use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};

use crate::body::Body;
use crate::error::ApiError;

/// Request headers a cross-origin caller may send.
const ALLOWED_HEADERS: &str =
    "authorization, content-type, idempotency-key, last-event-id, traceparent";

#[derive(Debug, Clone, PartialEq, Eq)]
enum OriginPattern {
    Exact(String),
    /// `scheme://*.` + suffix: any subdomain of suffix.
    Subdomains {
        scheme: String,
        suffix: String,
    },
}

/// An entry of the origins list that is not an origin.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    /// Not `scheme://host`.
    #[error("{0:?} is not an origin like https://app.example.com")]
    NotAnOrigin(String),
    /// A `*` anywhere but a leading `*.`.
    #[error("{0:?}: '*' only as '*.' prefix")]
    Wildcard(String),
}

/// The configured CORS policy.
#[derive(Debug, Clone, Default)]
pub struct Cors {
    origins: Vec<OriginPattern>,
}

impl Cors {
    /// Parses a comma-separated list of origins.
    pub fn parse(list: &str) -> Result<Self, OriginError> {
        let mut origins = Vec::new();
        for raw in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let raw = raw.trim_end_matches('/').to_ascii_lowercase();
            let Some((scheme, host)) = raw.split_once("://") else {
                return Err(OriginError::NotAnOrigin(raw));
            };
            if !matches!(scheme, "http" | "https") || host.is_empty() || host.contains('/') {
                return Err(OriginError::NotAnOrigin(raw));
            }
            match host.strip_prefix("*.") {
                Some(suffix) if !suffix.is_empty() && !suffix.contains('*') => {
                    origins.push(OriginPattern::Subdomains {
                        scheme: scheme.to_owned(),
                        suffix: format!(".{suffix}"),
                    });
                }
                _ if host.contains('*') => return Err(OriginError::Wildcard(raw)),
                _ => origins.push(OriginPattern::Exact(raw.clone())),
            }
        }
        Ok(Self { origins })
    }

    /// Whether any origin is allowed: without one, no CORS headers are ever sent and
    /// the API is same-origin only.
    pub fn is_configured(&self) -> bool {
        !self.origins.is_empty()
    }

    fn allows(&self, origin: &str) -> bool {
        let origin = origin.to_ascii_lowercase();
        self.origins.iter().any(|p| match p {
            OriginPattern::Exact(o) => *o == origin,
            OriginPattern::Subdomains { scheme, suffix } => origin
                .strip_prefix(scheme.as_str())
                .and_then(|r| r.strip_prefix("://"))
                .is_some_and(|host| host.ends_with(suffix.as_str()) && host.len() > suffix.len()),
        })
    }

    /// Checks a request's `Origin`: `Ok(Some(origin))` when CORS headers are due,
    /// `Ok(None)` for same-origin and non-browser requests.
    pub fn check(&self, headers: &HeaderMap) -> Result<Option<HeaderValue>, ApiError> {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(None);
        };
        let text = origin.to_str().unwrap_or_default();
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let same = host.is_some_and(|h| {
            text.split_once("://")
                .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(h))
        });
        if same {
            return Ok(None);
        }
        if self.allows(text) {
            return Ok(Some(origin.clone()));
        }
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "this origin may not call the API (see SSEGATE_CORS_ORIGINS)",
        ))
    }

    /// Adds the CORS headers to a response for an allowed origin.
    pub fn decorate(&self, res: &mut Response<Body>, origin: Option<HeaderValue>) {
        let h = res.headers_mut();
        if self.is_configured() {
            h.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        if let Some(origin) = origin {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
            h.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static("retry-after"),
            );
        }
    }

    /// The answer to a preflight `OPTIONS` from an allowed origin.
    pub fn preflight(&self, headers: &HeaderMap, origin: HeaderValue) -> Response<Body> {
        let method_ok = headers
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|m| m.to_str().ok())
            .and_then(|m| m.parse::<Method>().ok())
            .is_some_and(|m| m == Method::GET || m == Method::POST);
        let mut res = Response::new(Body::empty());
        *res.status_mut() = if method_ok {
            StatusCode::NO_CONTENT
        } else {
            StatusCode::FORBIDDEN
        };
        let h = res.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOWED_HEADERS),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        self.decorate(&mut res, Some(origin));
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: &str, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, origin.parse().unwrap());
        h.insert(header::HOST, host.parse().unwrap());
        h
    }

    #[test]
    fn exact_and_subdomain_origins() {
        let c = Cors::parse("https://app.example.com, https://*.example.org").unwrap();
        assert!(
            c.check(&headers("https://app.example.com", "gw"))
                .unwrap()
                .is_some()
        );
        assert!(
            c.check(&headers("https://a.b.example.org", "gw"))
                .unwrap()
                .is_some()
        );
        assert!(
            c.check(&headers("https://example.org", "gw")).is_err(),
            "bare domain"
        );
        assert!(
            c.check(&headers("http://app.example.com", "gw")).is_err(),
            "scheme counts"
        );
        assert!(c.check(&headers("https://evil-example.org", "gw")).is_err());
        assert!(
            c.check(&headers("https://app.example.com.evil.io", "gw"))
                .is_err()
        );
        assert!(
            c.check(&headers("http://gw:8080", "gw:8080"))
                .unwrap()
                .is_none(),
            "same origin"
        );
        assert!(
            Cors::default()
                .check(&headers("http://localhost:8080", "localhost"))
                .is_err(),
            "the port is part of the origin: a proxy must pass Host on with it (nginx: $http_host)"
        );
        let mut forwarded = headers("http://other.io:8080", "gw:8080");
        forwarded.insert("x-forwarded-host", "other.io:8080".parse().unwrap());
        assert!(
            Cors::default().check(&forwarded).is_err(),
            "X-Forwarded-Host is not believed"
        );
        assert!(
            c.check(&HeaderMap::new()).unwrap().is_none(),
            "no Origin: not a browser"
        );
        assert!(Cors::parse("app.example.com").is_err());
        assert!(Cors::parse("https://a*.example.com").is_err());
        assert!(
            Cors::default()
                .check(&headers("https://x.io", "gw"))
                .is_err(),
            "unset: same-origin only"
        );
    }
}
