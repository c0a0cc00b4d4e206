//! API errors: one JSON shape, one stable `code` per cause, the right status, and never
//! an internal detail in the reply (those go to the log).

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use ssegate_broker::{BrokerError, ErrorClass};
use ssegate_core::{CursorError, DataError, NameError};

use crate::body::Body;

/// An error answered to a client as `{"error": {"code", "message"}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The reply's status.
    pub status: StatusCode,
    /// Stable snake_case code, listed in `docs/api.md`.
    pub code: &'static str,
    /// For people: what went wrong, without internal detail.
    pub message: String,
    /// For batch publishes: which event was refused.
    pub index: Option<usize>,
    /// For 405: the methods the resource allows.
    pub allow: Option<&'static str>,
    /// For 401: ask for a bearer token.
    pub www_authenticate: bool,
    /// For 429 and 503: seconds to wait.
    pub retry_after: Option<u64>,
    /// Answer with `Connection: close` (HTTP/1.1): the rest of the request is not read.
    pub close: bool,
    /// For `504 publish_outcome_unknown`: the ids the events got, when the store said.
    pub ids: Option<Vec<Option<String>>>,
}

impl ApiError {
    /// An error with nothing but a status, a code and a message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            index: None,
            allow: None,
            www_authenticate: false,
            retry_after: None,
            close: false,
            ids: None,
        }
    }

    /// A `400` with this code.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// `404 not_found`: no route has this path.
    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such resource")
    }

    /// `405 method_not_allowed`, with `Allow: <allow>`.
    pub fn method_not_allowed(allow: &'static str) -> Self {
        Self {
            allow: Some(allow),
            ..Self::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("method not allowed; allowed: {allow}"),
            )
        }
    }

    /// Names the refused event of a batch, in the message and as `"index"`.
    pub fn at_index(mut self, index: usize) -> Self {
        self.message = format!("events[{index}]: {}", self.message);
        self.index = Some(index);
        self
    }

    /// The node has no room for the request now: `503 overloaded`, with `Retry-After`
    /// and `Connection: close`.
    pub fn overloaded(message: impl Into<String>) -> Self {
        Self {
            retry_after: Some(1),
            close: true,
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message)
        }
    }

    /// Who caused it (for logs and metrics).
    pub fn class(&self) -> ErrorClass {
        match self.status.as_u16() {
            // Too much traffic, not a broken broker.
            503 if self.code == "overloaded" => ErrorClass::Client,
            503 => ErrorClass::Broker,
            504 if self.code == "publish_outcome_unknown" => ErrorClass::OutcomeUnknown,
            500..=599 => ErrorClass::Internal,
            _ => ErrorClass::Client,
        }
    }

    /// The JSON reply with its headers (`Allow`, `WWW-Authenticate`, `Retry-After`,
    /// `Connection: close`) as the fields ask.
    pub fn into_response(self) -> Response<Body> {
        let mut error = serde_json::json!({ "code": self.code, "message": self.message });
        if let Some(i) = self.index {
            error["index"] = i.into();
        }
        if let Some(ids) = self.ids {
            error["ids"] = ids.into();
        }
        let body = serde_json::json!({ "error": error }).to_string();
        let mut res = Response::new(Body::full(Bytes::from(body)));
        *res.status_mut() = self.status;
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        res.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if self.www_authenticate {
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"ssegate\""),
            );
        }
        if let Some(secs) = self.retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.close {
            res.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(allow) = self.allow {
            res.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        res
    }
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        if let BrokerError::Busy(_) = e {
            // Nothing was sent: refused like any other overload.
            return Self::overloaded("every connection to the history store is busy; retry later");
        }
        match e.class() {
            ErrorClass::Client => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                e.to_string(),
            ),
            ErrorClass::Broker => {
                tracing::warn!(error = %e, "broker unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "broker_unavailable",
                    "the history store is unavailable; retry later",
                )
            }
            ErrorClass::OutcomeUnknown => {
                tracing::warn!(error = %e, "publish outcome unknown");
                let ids = match &e {
                    BrokerError::OutcomeUnknown { known: Some(k), .. } => Some(
                        k.ids
                            .iter()
                            .map(|id| {
                                id.map(|id| {
                                    ssegate_core::Position { epoch: k.epoch, id }.to_string()
                                })
                            })
                            .collect(),
                    ),
                    _ => None,
                };
                Self {
                    ids,
                    ..Self::new(
                        StatusCode::GATEWAY_TIMEOUT,
                        "publish_outcome_unknown",
                        "the publish was sent but not confirmed in time: the event may be stored; \
                         retry with the same Idempotency-Key",
                    )
                }
            }
            ErrorClass::Internal => {
                tracing::error!(error = %e, "internal broker error");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
        }
    }
}

/// A channel name from a request was refused.
pub fn channel_error(e: NameError) -> ApiError {
    ApiError::bad_request("invalid_channel", e.to_string())
}

/// An event type from a request was refused.
pub fn event_type_error(e: NameError) -> ApiError {
    ApiError::bad_request("invalid_event_type", e.to_string())
}

/// A cursor from a request was refused: `invalid_cursor` when it does not parse,
/// `cursor_mismatch` when it belongs to another kind of stream or channel set.
pub fn cursor_error(e: CursorError) -> ApiError {
    let code = match e {
        CursorError::Malformed => "invalid_cursor",
        _ => "cursor_mismatch",
    };
    ApiError::bad_request(code, e.to_string())
}

/// Event data over the size limit: `413 event_too_large`.
pub fn data_error(e: DataError) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "event_too_large",
        e.to_string(),
    )
}
