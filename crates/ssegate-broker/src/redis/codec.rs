//! Turning Redis replies and pub/sub payloads into events. Everything here treats its input
//! as untrusted: a malformed reply is an error, never a panic.

use redis::Value;
use ssegate_core::{ChannelName, Data, DataKind, EntryId, Epoch, EventType};

use crate::event::StoredEvent;

/// A reply that does not have the expected shape.
#[derive(Debug, thiserror::Error)]
#[error("unexpected reply from Redis: {0}")]
pub(crate) struct BadReply(pub(crate) &'static str);

pub(crate) fn text(v: &Value) -> Result<&str, BadReply> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).map_err(|_| BadReply("not UTF-8")),
        Value::SimpleString(s) => Ok(s),
        Value::Okay => Ok("OK"),
        _ => Err(BadReply("expected a string")),
    }
}

pub(crate) fn int(v: &Value) -> Result<i64, BadReply> {
    match v {
        Value::Int(i) => Ok(*i),
        other => text(other)?
            .parse()
            .map_err(|_| BadReply("expected an integer")),
    }
}

pub(crate) fn array(v: &Value) -> Result<&[Value], BadReply> {
    match v {
        Value::Array(items) => Ok(items),
        Value::Nil => Ok(&[]),
        _ => Err(BadReply("expected an array")),
    }
}

pub(crate) fn entry_id(s: &str) -> Result<EntryId, BadReply> {
    s.parse().map_err(|_| BadReply("bad entry id"))
}

pub(crate) fn epoch(s: &str) -> Result<Epoch, BadReply> {
    s.parse().map_err(|_| BadReply("bad epoch"))
}

/// One stream entry `[id, [field, value, ...]]` as an event.
pub(crate) fn stream_entry(
    epoch: Epoch,
    channel: &ChannelName,
    prev: EntryId,
    entry: &Value,
) -> Result<StoredEvent, BadReply> {
    let parts = array(entry)?;
    let [id, fields] = parts else {
        return Err(BadReply("stream entry"));
    };
    let id = entry_id(text(id)?)?;
    let fields = array(fields)?;
    let (mut kind, mut published, mut typ, mut data, mut tp) = (None, 0u64, None, None, None);
    for pair in fields.chunks(2) {
        let [k, v] = pair else {
            return Err(BadReply("odd field list"));
        };
        match text(k)? {
            "k" => kind = DataKind::from_tag(text(v)?),
            "p" => published = text(v)?.parse().unwrap_or(0),
            "t" => typ = Some(EventType::new(text(v)?).map_err(|_| BadReply("bad type"))?),
            "d" => data = Some(text(v)?.to_owned()),
            "tp" => tp = Some(text(v)?),
            _ => {}
        }
    }
    let data = Data::from_stored(
        kind.ok_or(BadReply("entry without kind"))?,
        data.ok_or(BadReply("entry without data"))?,
    );
    Ok(StoredEvent::new(epoch, channel.clone(), id, prev, typ, data, published).with_trace(tp))
}

/// A live pub/sub payload (see the scripts module for its format).
pub(crate) fn live_message(channel: ChannelName, payload: &[u8]) -> Result<StoredEvent, BadReply> {
    let payload = std::str::from_utf8(payload).map_err(|_| BadReply("not UTF-8"))?;
    let mut it = payload.splitn(8, '\n');
    let mut next = || it.next().ok_or(BadReply("short live message"));
    let epoch = epoch(next()?)?;
    let id = entry_id(next()?)?;
    let prev = entry_id(next()?)?;
    let typ = match next()? {
        "" => None,
        t => Some(EventType::new(t).map_err(|_| BadReply("bad type"))?),
    };
    let kind = DataKind::from_tag(next()?).ok_or(BadReply("bad kind"))?;
    let published = next()?.parse().unwrap_or(0);
    let trace = next()?;
    let data = Data::from_stored(kind, next()?.to_owned());
    Ok(StoredEvent::new(epoch, channel, id, prev, typ, data, published).with_trace(Some(trace)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn live_messages_decode_with_data_last() {
        let ch = ChannelName::new("a").unwrap();
        let ev = live_message(
            ch.clone(),
            b"k3x9p2qa\n5-1\n5-0\nupd\nt\n99\n00-ab-cd-01\nline1\nline2",
        )
        .unwrap();
        assert_eq!((ev.id, ev.prev), (EntryId::new(5, 1), EntryId::new(5, 0)));
        assert_eq!(ev.event_type.unwrap().as_str(), "upd");
        assert_eq!(ev.data.as_str(), "line1\nline2");
        assert_eq!(ev.published_at_ms, 99);
        assert_eq!(ev.trace.as_deref(), Some("00-ab-cd-01"));
        let ev = live_message(ch.clone(), b"k3x9p2qa\n5-1\n0-0\n\nj\n1\n\n").unwrap();
        assert!(ev.event_type.is_none() && ev.trace.is_none());
        assert_eq!(ev.data.as_str(), "");
        for bad in [
            &b""[..],
            b"k3x9p2qa\n5-1",
            b"nope\n5-1\n0-0\n\nt\n1\n\nx",
            b"k3x9p2qa\n5-1\n0-0\n\nq\n1\n\nx",
        ] {
            assert!(live_message(ch.clone(), bad).is_err());
        }
    }

    #[test]
    fn stream_entries_decode_and_bad_ones_are_errors() {
        let ch = ChannelName::new("a").unwrap();
        let epoch: Epoch = "k3x9p2qa".parse().unwrap();
        let entry = Value::Array(vec![
            bulk("7-0"),
            Value::Array(vec![
                bulk("k"),
                bulk("j"),
                bulk("p"),
                bulk("12"),
                bulk("d"),
                bulk("{\"a\":1}"),
            ]),
        ]);
        let ev = stream_entry(epoch, &ch, EntryId::ZERO, &entry).unwrap();
        assert_eq!(ev.id, EntryId::new(7, 0));
        assert_eq!(ev.data.to_json(), serde_json_free_check());
        assert!(stream_entry(epoch, &ch, EntryId::ZERO, &Value::Nil).is_err());
        let no_data = Value::Array(vec![bulk("7-0"), Value::Array(vec![bulk("k"), bulk("t")])]);
        assert!(stream_entry(epoch, &ch, EntryId::ZERO, &no_data).is_err());
    }

    fn serde_json_free_check() -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("a".into(), 1.into());
        serde_json::Value::Object(m)
    }
}
