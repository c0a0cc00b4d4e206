//! The event model: what a publisher sends and what the history keeps.

use crate::name::{ChannelName, EventType};

/// How the data of an event was given, so that history can hand it back in the same
/// JSON shape it was published in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataKind {
    /// A JSON string (or a form field, or a `text/plain` body): sent as-is.
    Text,
    /// Any other JSON value, kept compact-serialised.
    Json,
}

impl DataKind {
    /// One-letter tag used when an event is stored outside the process (Redis).
    pub fn tag(self) -> &'static str {
        match self {
            Self::Text => "t",
            Self::Json => "j",
        }
    }

    pub fn from_tag(tag: &str) -> Option<Self> {
        match tag {
            "t" => Some(Self::Text),
            "j" => Some(Self::Json),
            _ => None,
        }
    }
}

/// The data of an event, normalised for the wire: the text that goes into the `data:`
/// lines (line breaks are normalised only when framed, so history returns it unchanged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Data {
    kind: DataKind,
    text: String,
}

/// Data that cannot be published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    #[error("event data is {size} bytes, more than the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
}

impl Data {
    /// A JSON string becomes its text; any other value is compact-serialised.
    pub fn from_json(value: serde_json::Value) -> Self {
        match value {
            serde_json::Value::String(text) => Self::text(text),
            other => Self {
                kind: DataKind::Json,
                text: other.to_string(),
            },
        }
    }

    pub fn text(text: String) -> Self {
        Self {
            kind: DataKind::Text,
            text,
        }
    }

    /// Rebuilds data read back from a store. `text` must be what [`Data::as_str`] gave.
    pub fn from_stored(kind: DataKind, text: String) -> Self {
        Self { kind, text }
    }

    pub fn kind(&self) -> DataKind {
        self.kind
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Checks the size limit, which applies to the text that is framed.
    pub fn check_size(&self, limit: usize) -> Result<(), DataError> {
        if self.text.len() > limit {
            return Err(DataError::TooLarge {
                size: self.text.len(),
                limit,
            });
        }
        Ok(())
    }

    /// The data as a JSON value again (history responses).
    pub fn to_json(&self) -> serde_json::Value {
        match self.kind {
            DataKind::Text => serde_json::Value::String(self.text.clone()),
            DataKind::Json => serde_json::from_str(&self.text)
                .unwrap_or_else(|_| serde_json::Value::String(self.text.clone())),
        }
    }
}

/// One event to publish, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub channel: ChannelName,
    pub event_type: Option<EventType>,
    pub data: Data,
    /// W3C `traceparent` of the publish, when traced: stored with the event so that its
    /// deliveries on every node join the publisher's trace.
    pub trace: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strings_are_sent_as_is_and_values_compact() {
        assert_eq!(Data::from_json(json!("a\nb")).as_str(), "a\nb");
        assert_eq!(Data::from_json(json!("a\nb")).kind(), DataKind::Text);
        let v: serde_json::Value = serde_json::from_str("{ \"a\" : [1, 2 ] }").unwrap();
        let d = Data::from_json(v.clone());
        assert_eq!(d.as_str(), r#"{"a":[1,2]}"#);
        assert_eq!(d.to_json(), v);
        assert_eq!(Data::from_json(json!(null)).as_str(), "null");
        assert_eq!(Data::from_json(json!(12.5)).as_str(), "12.5");
    }

    #[test]
    fn size_limit_is_on_the_text() {
        let d = Data::text("x".repeat(10));
        assert!(d.check_size(10).is_ok());
        assert_eq!(
            d.check_size(9),
            Err(DataError::TooLarge { size: 10, limit: 9 })
        );
    }
}
