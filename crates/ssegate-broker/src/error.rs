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
    /// A publish that may or may not have been stored (504 `publish_outcome_unknown`).
    OutcomeUnknown,
}

impl ssegate_core::metric_names::LabelValue for ErrorClass {
    const LABEL: &'static str = "class";
    const ALL: &'static [Self] = &[
        Self::Client,
        Self::Broker,
        Self::Internal,
        Self::OutcomeUnknown,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Broker => "broker",
            Self::Internal => "internal",
            Self::OutcomeUnknown => "outcome_unknown",
        }
    }
}

/// A broker operation, the `op` label of `ssegate_broker_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerOp {
    /// The publish script.
    Publish,
    /// The read script (replay, catch-up, history).
    Read,
    /// Creating or reading the store's epoch.
    Epoch,
    /// The readiness check (`PING`).
    Ping,
    /// The pub/sub connection: connecting, (un)subscribing, receiving.
    Pubsub,
    /// The cluster view: refreshing, removing or listing node entries.
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

/// Why a broker operation failed. The detail is for logs; what a client is told
/// depends only on [`BrokerError::class`].
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The store cannot be reached; the detail is for logs, never for replies.
    #[error("history store unavailable: {0}")]
    Unavailable(String),
    /// Every connection to the store stayed busy for the whole timeout: the node has more
    /// work than its pool carries. Nothing was sent; the caller should come back later.
    #[error("every history store connection is busy: {0}")]
    Busy(String),
    /// An idempotency key was reused for a different request.
    #[error("idempotency key was already used for a different request")]
    IdempotencyConflict,
    /// A reply the broker cannot make sense of, or a broker that cannot be built (an
    /// invalid Redis URL): not the client's fault, and not cured by retrying.
    #[error("internal broker error: {0}")]
    Internal(String),
    /// The publish was sent but not confirmed: the broker did not answer in time, the
    /// connection broke before its reply, the reply made no sense, or fewer replicas
    /// than `SSEGATE_PUBLISH_MIN_REPLICAS` confirmed it in time. The events may be in the
    /// stream; a retry with the same `Idempotency-Key` is safe. `known` holds the ids
    /// the store gave, per event, when it answered for some (a batch over several Redis
    /// Cluster slots is written per slot).
    #[error("publish outcome unknown: {reason}")]
    OutcomeUnknown {
        /// The ids the store gave, when it answered.
        known: Option<KnownIds>,
        /// For logs.
        reason: String,
    },
}

/// The ids a publish got, per event in request order, where the store said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownIds {
    /// The epoch of the ids.
    pub epoch: ssegate_core::Epoch,
    /// Per event: its id, or `None` when the store did not say.
    pub ids: Vec<Option<ssegate_core::EntryId>>,
}

impl From<crate::Published> for KnownIds {
    fn from(p: crate::Published) -> Self {
        Self {
            epoch: p.epoch,
            ids: p.ids.into_iter().map(Some).collect(),
        }
    }
}

impl BrokerError {
    /// Who is at fault: picks the HTTP status (4xx, 503, 500) and the metric label.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Unavailable(_) | Self::Busy(_) => ErrorClass::Broker,
            Self::IdempotencyConflict => ErrorClass::Client,
            Self::Internal(_) => ErrorClass::Internal,
            Self::OutcomeUnknown { .. } => ErrorClass::OutcomeUnknown,
        }
    }
}
