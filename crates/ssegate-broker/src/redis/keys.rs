//! The Redis key layout. Every key of a channel carries the channel name as its hash tag
//! (`{news}`), so a channel's stream, metadata, idempotency records and pub/sub channel
//! live in one slot and the same layout works on Redis Cluster.
//!
//! | key | type | what |
//! |---|---|---|
//! | `<prefix>:epoch` | string | the history store's epoch, created once with `SET NX` |
//! | `<prefix>:{<channel>}:s` | stream | the channel's history, entries `k` (data kind), `p` (published at, ms), `t` (type, when given), `tp` (traceparent, when traced), `d` (data) |
//! | `<prefix>:{<channel>}:m` | hash | `last` (newest id ever added), `del` (newest id trimmed or expired) |
//! | `<prefix>:{<channel>}:i:<key>` | string | an `Idempotency-Key` record: fingerprint and ids |
//! | `<prefix>:{<channel>}:live` | pub/sub channel | live events |
//! | `<prefix>:{#nodes}:<node id>` | string | a node's entry in the cluster view (JSON), with a short TTL; every entry in one slot (`#` is in no channel name) so that one `SCAN` finds them on Redis Cluster |

use ssegate_core::ChannelName;

#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    pub(crate) fn epoch(&self) -> String {
        format!("{}:epoch", self.prefix)
    }

    /// A node's entry in the cluster view (a tag no channel can have).
    pub(crate) fn node(&self, id: &str) -> String {
        format!("{}:{{#nodes}}:{id}", self.prefix)
    }

    pub(crate) fn node_pattern(&self) -> String {
        format!("{}:{{#nodes}}:*", self.prefix)
    }

    pub(crate) fn stream(&self, ch: &ChannelName) -> String {
        format!("{}:{{{ch}}}:s", self.prefix)
    }

    pub(crate) fn meta(&self, ch: &ChannelName) -> String {
        format!("{}:{{{ch}}}:m", self.prefix)
    }

    pub(crate) fn idempotency(&self, ch: &ChannelName, key: &str) -> String {
        format!("{}:{{{ch}}}:i:{key}", self.prefix)
    }

    pub(crate) fn live(&self, ch: &ChannelName) -> String {
        format!("{}:{{{ch}}}:live", self.prefix)
    }

    /// The channel of a pub/sub channel name made by [`Keys::live`].
    pub(crate) fn channel_of_live(&self, live: &str) -> Option<ChannelName> {
        let rest = live.strip_prefix(&self.prefix)?.strip_prefix(":{")?;
        let name = rest.strip_suffix("}:live")?;
        ChannelName::new(name).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_channel_key_shares_its_hash_tag() {
        let k = Keys::new("sg");
        let ch = ChannelName::new("user:42").unwrap();
        for key in [
            k.stream(&ch),
            k.meta(&ch),
            k.idempotency(&ch, "x"),
            k.live(&ch),
        ] {
            assert!(key.starts_with("sg:{user:42}:"), "{key}");
        }
        assert_eq!(k.channel_of_live(&k.live(&ch)), Some(ch));
        assert_eq!(k.channel_of_live("other:{a}:live"), None);
        assert_eq!(k.channel_of_live("sg:{a b}:live"), None);
    }
}
