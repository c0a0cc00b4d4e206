//! Token claims and channel patterns.
//!
//! ```json
//! {"sub": "alice", "exp": 1732179000, "nbf": 1732175400,
//!  "ssegate": {"subscribe": ["news", "user:{sub}:*"], "publish": ["news"]}}
//! ```
//!
//! A pattern matches whole channel names; `*` is allowed only as the last character and
//! matches any (possibly empty) rest; `{sub}` is replaced by the token's `sub` first. A
//! pattern with `*` anywhere else matches nothing (a typo must not widen access).

use serde::Deserialize;
use ssegate_core::ChannelName;

#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct Grants {
    #[serde(default)]
    pub(crate) subscribe: Vec<String>,
    #[serde(default)]
    pub(crate) publish: Vec<String>,
}

/// The claims ssegate reads (the JWT library checks `exp`, `nbf`, `aud`, `iss`).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Claims {
    #[serde(default)]
    pub(crate) sub: String,
    pub(crate) exp: u64,
    #[serde(default)]
    pub(crate) ssegate: Grants,
}

/// One compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Pattern {
    Exact(String),
    Prefix(String),
    Never,
}

impl Pattern {
    pub(crate) fn compile(raw: &str, sub: &str) -> Self {
        let expanded = raw.replace("{sub}", sub);
        match expanded.strip_suffix('*') {
            Some(prefix) if !prefix.contains('*') => Self::Prefix(prefix.to_owned()),
            Some(_) => Self::Never,
            None if expanded.contains('*') => Self::Never,
            None => Self::Exact(expanded),
        }
    }

    pub(crate) fn matches(&self, channel: &ChannelName) -> bool {
        match self {
            Self::Exact(name) => name == channel.as_str(),
            Self::Prefix(prefix) => channel.as_str().starts_with(prefix.as_str()),
            Self::Never => false,
        }
    }
}

/// What a verified token allows.
#[derive(Debug, Clone)]
pub struct Principal {
    pub(crate) subject: String,
    /// Unix seconds at which the token expires.
    pub(crate) expires_at: u64,
    pub(crate) subscribe: Vec<Pattern>,
    pub(crate) publish: Vec<Pattern>,
}

impl Principal {
    pub(crate) fn from_claims(c: Claims) -> Self {
        let compile = |list: &[String]| list.iter().map(|p| Pattern::compile(p, &c.sub)).collect();
        Self {
            subscribe: compile(&c.ssegate.subscribe),
            publish: compile(&c.ssegate.publish),
            subject: c.sub,
            expires_at: c.exp,
        }
    }

    pub(crate) fn may_subscribe(&self, channel: &ChannelName) -> bool {
        self.subscribe.iter().any(|p| p.matches(channel))
    }

    pub(crate) fn may_publish(&self, channel: &ChannelName) -> bool {
        self.publish.iter().any(|p| p.matches(channel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(s: &str) -> ChannelName {
        ChannelName::new(s).unwrap()
    }

    #[test]
    fn patterns_match_whole_names_with_a_suffix_star_and_sub() {
        let p = Pattern::compile("user:{sub}:*", "42");
        assert!(p.matches(&ch("user:42:inbox")));
        assert!(p.matches(&ch("user:42:")) || ChannelName::new("user:42:").is_ok());
        assert!(!p.matches(&ch("user:420:inbox")));
        assert!(!p.matches(&ch("user:4")));
        let exact = Pattern::compile("news", "x");
        assert!(exact.matches(&ch("news")));
        assert!(!exact.matches(&ch("news2")));
        assert!(!exact.matches(&ch("new")));
        assert!(Pattern::compile("*", "x").matches(&ch("anything")));
        assert_eq!(Pattern::compile("a*b", "x"), Pattern::Never);
        assert_eq!(Pattern::compile("*a*", "x"), Pattern::Never);
    }

    #[test]
    fn a_sub_cannot_widen_its_own_grant() {
        // A `sub` of "*" is substituted literally, not as a wildcard.
        let p = Pattern::compile("user:{sub}:inbox", "*");
        assert_eq!(p, Pattern::Never);
        let p = Pattern::compile("user:{sub}:*", "a*");
        assert_eq!(p, Pattern::Never);
    }
}
