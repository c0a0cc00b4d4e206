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

    /// The kind a [`DataKind::tag`] stands for; `None` for any other text (a store entry
    /// this version did not write).
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
    /// The data's text is longer than the node's event size limit (`413 event_too_large`).
    #[error("event data is {size} bytes, more than the limit of {limit} bytes")]
    TooLarge {
        /// Bytes of the data's text.
        size: usize,
        /// The limit it exceeded, in bytes.
        limit: usize,
    },
}

impl Data {
    /// The data of a publish, from the JSON text the publisher sent: a JSON string becomes
    /// its text; any other value keeps the publisher's text with the whitespace outside
    /// strings removed (compact). Nothing else changes: numbers keep their digits (also
    /// beyond `f64`, such as `123456789012345678901234567890`), objects their key order,
    /// strings their escapes. `raw` is valid JSON (serde_json checked it); on top of that,
    /// text with a lone UTF-16 surrogate escape (`"\ud800"`) is refused, as parsing into
    /// a [`serde_json::Value`] refused it: it is not Unicode text.
    pub fn from_raw_json(raw: &serde_json::value::RawValue) -> Result<Self, InvalidJson> {
        let text = raw.get().trim_start_matches(JSON_WS);
        if text.starts_with('"') {
            let s: String = serde_json::from_str(text).map_err(|e| InvalidJson(e.to_string()))?;
            return Ok(Self::text(s));
        }
        Ok(Self {
            kind: DataKind::Json,
            text: compact(text)?,
        })
    }

    /// A JSON string becomes its text; any other value is compact-serialised. A
    /// [`serde_json::Value`] has already lost what `f64` cannot hold and the key order;
    /// publishes go through [`Data::from_raw_json`].
    pub fn from_json(value: serde_json::Value) -> Self {
        match value {
            serde_json::Value::String(text) => Self::text(text),
            other => Self {
                kind: DataKind::Json,
                text: other.to_string(),
            },
        }
    }

    /// Text data (a JSON string, a form field, a `text/plain` body), framed as-is.
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

    /// How the data was given, so history answers it in the same JSON shape.
    pub fn kind(&self) -> DataKind {
        self.kind
    }

    /// The text that goes into the `data:` lines and into the store, unchanged.
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

    /// The data as a JSON value again. Lossy for numbers beyond `f64` and for key order:
    /// replies serialise [`Data`] itself, which writes the stored text unchanged.
    pub fn to_json(&self) -> serde_json::Value {
        match self.kind {
            DataKind::Text => serde_json::Value::String(self.text.clone()),
            DataKind::Json => serde_json::from_str(&self.text)
                .unwrap_or_else(|_| serde_json::Value::String(self.text.clone())),
        }
    }
}

/// JSON whitespace (RFC 8259): the only whitespace allowed outside strings.
const JSON_WS: &[char] = &[' ', '\t', '\n', '\r'];

/// Data that is not acceptable JSON text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidJson(pub String);

/// Removes the whitespace outside strings of valid JSON text, and refuses lone UTF-16
/// surrogate escapes. Everything else is copied as it is.
fn compact(json: &str) -> Result<String, InvalidJson> {
    let b = json.as_bytes();
    let mut out = String::with_capacity(b.len());
    // `json[run..i]` is copied when whitespace (ASCII, so a char boundary) ends it.
    let mut run = 0;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b' ' | b'\t' | b'\n' | b'\r' => {
                out.push_str(&json[run..i]);
                i += 1;
                run = i;
            }
            b'"' => i = string_end(b, i + 1)?,
            _ => i += 1,
        }
    }
    out.push_str(&json[run..]);
    Ok(out)
}

/// The index after the closing quote of the string whose contents start at `i`.
fn string_end(b: &[u8], mut i: usize) -> Result<usize, InvalidJson> {
    let lone = || InvalidJson("lone surrogate in a \\u escape".to_owned());
    // A high surrogate was just read: the next thing must be a `\u` low surrogate.
    let mut want_low = false;
    while let Some(&c) = b.get(i) {
        match c {
            b'\\' => {
                let unit = (b.get(i + 1) == Some(&b'u'))
                    .then(|| b.get(i + 2..i + 6))
                    .flatten()
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u16::from_str_radix(h, 16).ok());
                match unit {
                    Some(0xD800..=0xDBFF) if !want_low => want_low = true,
                    Some(0xDC00..=0xDFFF) if want_low => want_low = false,
                    Some(0xD800..=0xDFFF) => return Err(lone()),
                    _ if want_low => return Err(lone()),
                    _ => {}
                }
                i += if unit.is_some() { 6 } else { 2 };
            }
            _ if want_low => return Err(lone()),
            b'"' => return Ok(i + 1),
            _ => i += 1,
        }
    }
    Err(InvalidJson("unterminated string".to_owned()))
}

/// The data as a JSON value, as it was published: a string, or the stored JSON text
/// unchanged (through [`serde_json::value::RawValue`], so with serde_json's serializer
/// the text is written as it is). Stored text that is not JSON (a corrupt store) is
/// written as a string.
impl serde::Serialize for Data {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.kind {
            DataKind::Text => s.serialize_str(&self.text),
            DataKind::Json => {
                match serde_json::from_str::<&serde_json::value::RawValue>(&self.text) {
                    Ok(raw) => raw.serialize(s),
                    Err(_) => s.serialize_str(&self.text),
                }
            }
        }
    }
}

/// One event to publish, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// The channel it is published to.
    pub channel: ChannelName,
    /// The `event:` type subscribers see; `None` frames no `event:` line (`message`).
    pub event_type: Option<EventType>,
    /// The payload, already size-checked.
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

    fn raw(text: &str) -> Result<Data, InvalidJson> {
        let raw: &serde_json::value::RawValue = serde_json::from_str(text).unwrap();
        Data::from_raw_json(raw)
    }

    #[test]
    fn raw_json_keeps_the_publishers_text_compacted() {
        let d = raw(
            "{ \"z\" : 1,\n\t\"big\": 123456789012345678901234567890 , \"f\": 1.10,\r\n \"e\": 1E2,
               \"neg\": -0, \"tiny\": 1e-400, \"huge\": 1e400, \"s\": \" a \\u0041\\\" \\\\\",
               \"u\": \"\\ud83d\\ude00 é\", \"z\": [ null , true,false, {} , [ ] ] }",
        )
        .unwrap();
        assert_eq!(d.kind(), DataKind::Json);
        assert_eq!(
            d.as_str(),
            r#"{"z":1,"big":123456789012345678901234567890,"f":1.10,"e":1E2,"neg":-0,"tiny":1e-400,"huge":1e400,"s":" a \u0041\" \\","u":"\ud83d\ude00 é","z":[null,true,false,{},[]]}"#
        );
        // History writes the same text as the value.
        assert_eq!(serde_json::to_string(&d).unwrap(), d.as_str());
        #[derive(serde::Serialize)]
        struct Reply<'a> {
            data: &'a Data,
        }
        assert_eq!(
            serde_json::to_string(&Reply { data: &d }).unwrap(),
            format!(r#"{{"data":{}}}"#, d.as_str())
        );
        assert_eq!(raw("  7 ").unwrap().as_str(), "7");
        assert_eq!(raw("null").unwrap().as_str(), "null");
    }

    #[test]
    fn raw_json_strings_become_their_text() {
        let d = raw(r#""a\nb \u0041 \ud83d\ude00""#).unwrap();
        assert_eq!(d.kind(), DataKind::Text);
        assert_eq!(d.as_str(), "a\nb A \u{1f600}");
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"a\\nb A \u{1f600}\"");
    }

    #[test]
    fn lone_surrogates_are_refused() {
        for bad in [
            r#""\ud800""#,
            r#"["\ud800"]"#,
            r#"["\udc00"]"#,
            r#"["\ud800\u0041"]"#,
            r#"["\ud800\n"]"#,
            r#"["\ud800x"]"#,
            r#"["\ud800\ud800"]"#,
            r#"["\ude00\ud83d"]"#,
            r#"{"\ud800": 1}"#,
        ] {
            assert!(raw(bad).is_err(), "{bad}");
        }
        for good in [
            r#"["\ud83d\ude00"]"#,
            r#"["\uD83D\uDE00x"]"#,
            r#"["\\ud800"]"#,
        ] {
            assert_eq!(raw(good).unwrap().as_str(), good);
        }
    }

    #[test]
    fn stored_text_that_is_not_json_is_served_as_a_string() {
        let d = Data::from_stored(DataKind::Json, "{not json".into());
        assert_eq!(serde_json::to_string(&d).unwrap(), r#""{not json""#);
    }

    fn arb_json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "\\PC{0,12}|[ \"\\\\\n\t\u{0}-\u{1f}\u{2028}\u{1f600}]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec(("\\PC{0,6}", inner), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// Any JSON a `Value` can hold, sent pretty-printed, is stored as its compact form,
        /// and history writes that same text back.
        #[test]
        fn raw_json_is_the_compact_form(v in arb_json()) {
            let pretty = serde_json::to_string_pretty(&v).unwrap();
            let d = raw(&pretty).unwrap();
            let want = match &v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            proptest::prop_assert_eq!(d.as_str(), want.as_str());
            proptest::prop_assert_eq!(serde_json::to_string(&d).unwrap(), v.to_string());
        }
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
