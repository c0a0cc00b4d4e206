//! Broker errors, tagged by who is at fault so the HTTP layer can pick a status and a
//! metric label without looking inside.

/// Who caused an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The request was wrong (4xx).
    Client,
    /// The history store is unreachable or failing (503).
    Broker,
    /// A bug or an invariant broken here (500).
    Internal,
}

impl ssegate_core::metric_names::LabelValue for ErrorClass {
    const LABEL: &'static str = "class";
    const ALL: &'static [Self] = &[Self::Client, Self::Broker, Self::Internal];

    fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Broker => "broker",
            Self::Internal => "internal",
        }
    }
}

/// A broker operation, the `op` label of `ssegate_broker_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerOp {
    Publish,
    Read,
    Epoch,
    Ping,
    Pubsub,
    Announce,
}

impl ssegate_core::metric_names::LabelValue for BrokerOp {
    const LABEL: &'static str = "op";
    const ALL: &'static [Self] = &[
        Self::Publish,
        Self::Read,
        Self::Epoch,
        Self::Ping,
        Self::Pubsub,
        Self::Announce,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::Read => "read",
            Self::Epoch => "epoch",
            Self::Ping => "ping",
            Self::Pubsub => "pubsub",
            Self::Announce => "announce",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The store cannot be reached; the detail is for logs, never for replies.
    #[error("history store unavailable: {0}")]
    Unavailable(String),
    /// An idempotency key was reused for a different request.
    #[error("idempotency key was already used for a different request")]
    IdempotencyConflict,
    #[error("internal broker error: {0}")]
    Internal(String),
}

impl BrokerError {
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Unavailable(_) => ErrorClass::Broker,
            Self::IdempotencyConflict => ErrorClass::Client,
            Self::Internal(_) => ErrorClass::Internal,
        }
    }
}
