//! Channel names and event types.
//!
//! Both use the alphabet `[A-Za-z0-9_.:-]`, which needs no escaping in a URL path, a
//! query string, a Redis key or an SSE field, so a name is the same bytes everywhere.
//!
//! A channel name is also a path segment (`/v1/channels/{channel}/events`), so it may not
//! be `.` or `..`: a proxy that normalises paths (RFC 3986 dot-segment removal) would route
//! `/v1/channels/../events` to `/v1/events`, another endpoint. Event types never appear in
//! a path (only in bodies, the `?event=` query and the SSE `event:` field), so `.` and `..`
//! remain valid event types.

use std::fmt;
use std::sync::Arc;

/// Longest channel name, in bytes (= characters: the alphabet is ASCII).
pub const MAX_CHANNEL_LEN: usize = 128;
/// Longest event type.
pub const MAX_EVENT_TYPE_LEN: usize = 64;

/// Event types the gateway itself sends; a publisher may not use them, or a client could
/// not tell a real gap signal from a published event.
pub const RESERVED_EVENT_TYPES: &[&str] = &["sync-required", "token-expired"];

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The empty string.
    #[error("{what} must not be empty")]
    Empty {
        /// What was named: `"channel name"` or `"event type"`.
        what: &'static str,
    },
    /// Longer than [`MAX_CHANNEL_LEN`] or [`MAX_EVENT_TYPE_LEN`].
    #[error("{what} is longer than {max} characters")]
    TooLong {
        /// What was named: `"channel name"` or `"event type"`.
        what: &'static str,
        /// The limit, in characters.
        max: usize,
    },
    /// A character outside `[A-Za-z0-9_.:-]`.
    #[error("{what} may only contain A-Z, a-z, 0-9, '_', '.', ':' and '-'")]
    BadChar {
        /// What was named: `"channel name"` or `"event type"`.
        what: &'static str,
    },
    /// A channel named `.` or `..` (see the module docs).
    #[error("{what} must not be \".\" or \"..\" (a path segment that proxies rewrite)")]
    DotSegment {
        /// What was named: `"channel name"` or `"event type"`.
        what: &'static str,
    },
    /// An event type in [`RESERVED_EVENT_TYPES`]; carries the type.
    #[error("event type {0:?} is reserved for the gateway")]
    Reserved(String),
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-')
}

fn check(s: &str, what: &'static str, max: usize) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty { what });
    }
    if s.len() > max {
        return Err(NameError::TooLong { what, max });
    }
    if !s.bytes().all(is_name_byte) {
        return Err(NameError::BadChar { what });
    }
    Ok(())
}

/// Whether `s` is one segment of a channel name: 1 to [`MAX_CHANNEL_LEN`] characters of
/// the name alphabet without the segment separator `:`.
pub fn is_segment(s: &str) -> bool {
    check(s, "segment", MAX_CHANNEL_LEN).is_ok() && !s.contains(':')
}

/// A validated channel name. Cheap to clone (shared), because every subscription, event
/// and hub entry refers to one.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

impl ChannelName {
    /// Validates a channel name: the alphabet, 1 to [`MAX_CHANNEL_LEN`] bytes, not a dot
    /// segment.
    pub fn new(s: &str) -> Result<Self, NameError> {
        check(s, "channel name", MAX_CHANNEL_LEN)?;
        if s == "." || s == ".." {
            return Err(NameError::DotSegment {
                what: "channel name",
            });
        }
        Ok(Self(Arc::from(s)))
    }

    /// The name as given (it needs no escaping anywhere, see the module docs).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl serde::Serialize for ChannelName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// A validated event type (the SSE `event:` field).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EventType(Arc<str>);

impl EventType {
    /// Validates a publisher-supplied type; reserved types are refused.
    pub fn new(s: &str) -> Result<Self, NameError> {
        check(s, "event type", MAX_EVENT_TYPE_LEN)?;
        if RESERVED_EVENT_TYPES.contains(&s) {
            return Err(NameError::Reserved(s.to_owned()));
        }
        Ok(Self(Arc::from(s)))
    }

    /// The type as it goes into the `event:` field.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_whole_alphabet() {
        assert!(ChannelName::new("user:42.news_feed-EU").is_ok());
        assert!(ChannelName::new(&"a".repeat(128)).is_ok());
        assert!(EventType::new(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn refuses_bad_names() {
        assert_eq!(
            ChannelName::new(""),
            Err(NameError::Empty {
                what: "channel name"
            })
        );
        assert!(matches!(
            ChannelName::new(&"a".repeat(129)),
            Err(NameError::TooLong { .. })
        ));
        for bad in ["a b", "a/b", "a%3Ab", "ü", "a\nb", "a,b", "*", "a\0"] {
            assert!(
                matches!(ChannelName::new(bad), Err(NameError::BadChar { .. })),
                "{bad:?}"
            );
        }
        assert!(matches!(
            EventType::new(&"a".repeat(65)),
            Err(NameError::TooLong { .. })
        ));
    }

    #[test]
    fn dot_segments_are_not_channel_names() {
        for dots in [".", ".."] {
            assert_eq!(
                ChannelName::new(dots),
                Err(NameError::DotSegment {
                    what: "channel name"
                }),
                "{dots:?}"
            );
            // Not path segments: event types keep the whole alphabet.
            assert!(EventType::new(dots).is_ok(), "{dots:?}");
        }
        for fine in ["...", ".a", "a.", "a..b", "..a", ".:", ":..", "_."] {
            assert!(ChannelName::new(fine).is_ok(), "{fine:?}");
        }
    }

    #[test]
    fn reserved_event_types_are_refused() {
        assert!(matches!(
            EventType::new("sync-required"),
            Err(NameError::Reserved(_))
        ));
        assert!(EventType::new("sync").is_ok());
    }
}
