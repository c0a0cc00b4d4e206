//! Token claims and channel patterns.
//!
//! ```json
//! {"sub": "alice", "exp": 1732179000, "nbf": 1732175400,
//!  "ssegate": {"subscribe": ["news", "user:{sub}:*"], "publish": ["news"]}}
//! ```
//!
//! A pattern matches whole channel names; `*` is allowed only as the last character of the
//! pattern as written and matches any (possibly empty) rest. A pattern with `*` anywhere
//! else matches nothing (a typo must not widen access).
//!
//! `{sub}` stands for the token's `sub`, and only when that is a single name segment
//! ([`is_sub_segment`]: 1 to 128 characters of `[A-Za-z0-9_.-]`). The pattern is compiled
//! structurally: its literal parts and `{sub}` placeholders are split apart, and the final
//! `*` is read from the raw pattern alone, so a `*` in `sub` can never act as a wildcard.
//! A `sub` that is not a segment makes every pattern containing `{sub}` match nothing
//! (fail closed): a `*` there would otherwise widen the grant, and a `:` would let
//! `sub: "bob:x"` reach into `bob`'s `user:{sub}:*`. Patterns without `{sub}` do not
//! depend on `sub` at all.

use serde::Deserialize;
use ssegate_core::ChannelName;

/// The placeholder for the token's `sub` in a pattern.
const SUB: &str = "{sub}";

/// Longest `sub` that may stand for `{sub}` (a channel name's maximum).
pub(crate) const MAX_SUB_LEN: usize = ssegate_core::name::MAX_CHANNEL_LEN;

/// Whether `sub` may stand for `{sub}`: 1 to [`MAX_SUB_LEN`] characters of
/// `[A-Za-z0-9_.-]`, the channel-name alphabet without the segment separator `:` (and, as
/// channel names, without `*`).
pub(crate) fn is_sub_segment(sub: &str) -> bool {
    ssegate_core::name::is_segment(sub)
}

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
    /// Compiles `raw` for a token whose subject is `sub` (see the module docs).
    pub(crate) fn compile(raw: &str, sub: &str) -> Self {
        // The wildcard is the last character of the pattern as written, never of `sub`.
        let (body, wildcard) = match raw.strip_suffix('*') {
            Some(body) => (body, true),
            None => (raw, false),
        };
        // The literal parts around the `{sub}` placeholders: more than one means `{sub}`.
        let literals: Vec<&str> = body.split(SUB).collect();
        if literals.iter().any(|l| l.contains('*')) {
            return Self::Never;
        }
        if literals.len() > 1 && !is_sub_segment(sub) {
            return Self::Never;
        }
        // `sub` is a segment here (or absent), so it adds no `*` and no `:`.
        let name = literals.join(sub);
        if wildcard {
            Self::Prefix(name)
        } else {
            Self::Exact(name)
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
    /// The one place grants are compiled, for every token source (HS256, RS256/ES256, JWKS)
    /// and for subscribe and publish grants alike.
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

    fn allows(raw: &str, sub: &str, channel: &str) -> bool {
        Pattern::compile(raw, sub).matches(&ch(channel))
    }

    /// What a pattern means when `{sub}` is read literally: the text `sub` in place of the
    /// placeholder, and a wildcard only where the raw pattern itself ends in `*`. Written
    /// independently of [`Pattern::compile`] as the reference it must never exceed.
    fn literal_allows(raw: &str, sub: &str, channel: &str) -> bool {
        match raw.strip_suffix('*') {
            Some(body) if !body.contains('*') => channel.starts_with(&body.replace(SUB, sub)),
            Some(_) => false,
            None if raw.contains('*') => false,
            None => channel == raw.replace(SUB, sub),
        }
    }

    #[test]
    fn patterns_match_whole_names_with_a_suffix_star_and_sub() {
        let p = Pattern::compile("user:{sub}:*", "42");
        assert!(p.matches(&ch("user:42:inbox")));
        assert!(p.matches(&ch("user:42:")));
        assert!(!p.matches(&ch("user:420:inbox")));
        assert!(!p.matches(&ch("user:4")));
        let exact = Pattern::compile("news", "x");
        assert!(exact.matches(&ch("news")));
        assert!(!exact.matches(&ch("news2")));
        assert!(!exact.matches(&ch("new")));
        assert!(Pattern::compile("*", "x").matches(&ch("anything")));
        assert_eq!(Pattern::compile("a*b", "x"), Pattern::Never);
        assert_eq!(Pattern::compile("*a*", "x"), Pattern::Never);
        assert_eq!(Pattern::compile("**", "x"), Pattern::Never);
        assert_eq!(Pattern::compile("a*{sub}", "x"), Pattern::Never);
        assert_eq!(Pattern::compile("a*{sub}*", "x"), Pattern::Never);
    }

    #[test]
    fn a_segment_sub_expands_everywhere_it_appears() {
        assert_eq!(
            Pattern::compile("user:{sub}:*", "alice"),
            Pattern::Prefix("user:alice:".into())
        );
        assert_eq!(
            Pattern::compile("{sub}", "bob"),
            Pattern::Exact("bob".into())
        );
        assert_eq!(
            Pattern::compile("{sub}*", "bob"),
            Pattern::Prefix("bob".into())
        );
        assert_eq!(
            Pattern::compile("dm:{sub}:{sub}", "a.b-c_9"),
            Pattern::Exact("dm:a.b-c_9:a.b-c_9".into())
        );
        assert_eq!(
            Pattern::compile("user:{sub}", "A"),
            Pattern::Exact("user:A".into())
        );
        let long = "x".repeat(MAX_SUB_LEN);
        assert_eq!(
            Pattern::compile("{sub}", &long),
            Pattern::Exact(long.clone())
        );
    }

    #[test]
    fn only_single_name_segments_stand_for_sub() {
        for ok in [
            "bob",
            "42",
            "a.b",
            "a-b",
            "a_b",
            "A",
            "-",
            ".",
            "..",
            "x".repeat(128).as_str(),
        ] {
            assert!(is_sub_segment(ok), "{ok:?}");
        }
        let too_long = "x".repeat(129);
        for bad in [
            "",
            "*",
            "bo*",
            "*bob",
            "bob:x",
            ":",
            "bob:",
            "a b",
            "a@b.c",
            "auth0|1",
            "{sub}",
            "é",
            "bob\n",
            "a/b",
            "%2A",
            too_long.as_str(),
        ] {
            assert!(!is_sub_segment(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_sub_with_a_star_never_widens_a_grant() {
        // Issue 12.1: `*` as `sub` read `user:bob`, `bo*` read every `user:bo...`, and
        // `{sub}` alone granted every channel.
        for victim in ["user:bob", "user:bongo", "user:*", "user:", "user:bo"] {
            if let Ok(c) = ChannelName::new(victim) {
                assert!(!Pattern::compile("user:{sub}", "*").matches(&c), "{victim}");
                assert!(
                    !Pattern::compile("user:{sub}", "bo*").matches(&c),
                    "{victim}"
                );
            }
        }
        for victim in ["news", "user:bob", "anything", "a"] {
            assert!(!allows("{sub}", "*", victim), "{victim}");
            assert!(!allows("{sub}*", "*", victim), "{victim}");
        }
        for (raw, sub) in [
            ("user:{sub}", "*"),
            ("user:{sub}", "bo*"),
            ("user:{sub}:*", "*"),
            ("user:{sub}:*", "a*"),
            ("user:{sub}:inbox", "*"),
            ("{sub}", "*"),
            ("{sub}*", "**"),
            ("{sub}:*", "*"),
        ] {
            assert_eq!(Pattern::compile(raw, sub), Pattern::Never, "{raw} / {sub}");
        }
    }

    #[test]
    fn a_sub_with_a_colon_cannot_reach_into_another_subs_channels() {
        // `bob:x` must not read what `bob`'s `user:{sub}:*` grants.
        assert!(allows("user:{sub}:*", "bob", "user:bob:x:inbox"));
        assert!(!allows("user:{sub}:*", "bob:x", "user:bob:x:inbox"));
        assert!(!allows("user:{sub}", "bob:inbox", "user:bob:inbox"));
        assert!(!allows("{sub}", "user:bob", "user:bob"));
        for (raw, sub) in [
            ("user:{sub}:*", "bob:x"),
            ("user:{sub}", "bob:"),
            ("{sub}", ":"),
            ("{sub}*", "user:"),
        ] {
            assert_eq!(Pattern::compile(raw, sub), Pattern::Never, "{raw} / {sub}");
        }
    }

    #[test]
    fn any_other_sub_fails_closed_and_patterns_without_sub_do_not_care() {
        let too_long = "x".repeat(MAX_SUB_LEN + 1);
        for sub in [
            "",
            " ",
            "a b",
            "a@b.c",
            "auth0|1",
            "{sub}",
            "é",
            too_long.as_str(),
        ] {
            for raw in ["user:{sub}:*", "{sub}", "{sub}*", "x{sub}"] {
                assert_eq!(
                    Pattern::compile(raw, sub),
                    Pattern::Never,
                    "{raw} / {sub:?}"
                );
            }
            assert_eq!(Pattern::compile("news", sub), Pattern::Exact("news".into()));
            assert_eq!(
                Pattern::compile("user:*", sub),
                Pattern::Prefix("user:".into())
            );
            assert_eq!(Pattern::compile("*", sub), Pattern::Prefix(String::new()));
        }
    }

    /// Raw patterns the exhaustive and random checks combine with every `sub`.
    const PATTERNS: &[&str] = &[
        "*",
        "news",
        "user:*",
        "user:{sub}",
        "user:{sub}:*",
        "user:{sub}*",
        "user:{sub}:inbox",
        "{sub}",
        "{sub}*",
        "{sub}:*",
        "{sub}:{sub}",
        "a{sub}b",
        "dm:{sub}:{sub}:*",
        "a*{sub}",
        "{sub}*:x",
        "**",
        "{sub",
        "{sub}}",
    ];

    /// Channels worth asking about for `raw` and `sub`: fixed ones, and those the literal
    /// reading of the pattern (and the old, substitute-then-interpret reading) would allow.
    fn candidates(raw: &str, sub: &str) -> Vec<ChannelName> {
        let mut out: Vec<String> = [
            "news",
            "a",
            "b",
            "bo",
            "bob",
            "x",
            "user:bob",
            "user:bo",
            "user:bongo",
            "user:bob:x",
            "user:bob:x:inbox",
            "user:bob:inbox",
            "user:",
            "user::",
            "bob:bob",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        for who in [sub, "bob", "bo", "b"] {
            let expanded = raw.replace(SUB, who);
            let stem = expanded.trim_end_matches('*').replace('*', "");
            for tail in ["", "z", ":z", "x:inbox", ":x:inbox"] {
                out.push(format!("{stem}{tail}"));
                out.push(format!("{expanded}{tail}"));
            }
        }
        out.iter()
            .filter_map(|c| ChannelName::new(c).ok())
            .collect()
    }

    /// The properties every `(pattern, sub, channel)` must have.
    fn check(raw: &str, sub: &str) {
        let compiled = Pattern::compile(raw, sub);
        let has_sub = raw.contains(SUB);
        for channel in candidates(raw, sub) {
            let got = compiled.matches(&channel);
            let literal = literal_allows(raw, sub, channel.as_str());
            let ctx = format!("{raw:?} sub {sub:?} channel {:?}", channel.as_str());
            // Never more than the literal reading: a `*` from `sub` is no wildcard.
            assert!(!got || literal, "{ctx}: wider than literal");
            if !has_sub {
                // Independent of `sub`.
                assert_eq!(got, literal, "{ctx}");
                assert_eq!(compiled, Pattern::compile(raw, "someone"), "{ctx}");
            } else if is_sub_segment(sub) {
                // A segment `sub` means exactly its literal reading.
                assert_eq!(got, literal, "{ctx}");
            } else {
                // Fail closed: no `*`, no `:`, nothing outside the segment alphabet.
                assert!(!got, "{ctx}: a non-segment sub matched");
            }
            if has_sub && got {
                assert!(!sub.contains('*') && !sub.contains(':'), "{ctx}");
            }
        }
    }

    #[test]
    fn every_short_sub_over_a_hostile_alphabet_obeys_the_rule() {
        // Every `sub` up to 3 characters over an alphabet with the characters that matter.
        let alphabet = ['b', 'o', '*', ':', '.', '{'];
        let mut subs = vec![String::new()];
        let mut layer = vec![String::new()];
        for _ in 0..3 {
            layer = layer
                .iter()
                .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                .collect();
            subs.extend(layer.iter().cloned());
        }
        subs.extend(["{sub}", "bob:x", "a b", "a@b", "x".repeat(129).as_str()].map(str::to_owned));
        for sub in &subs {
            for raw in PATTERNS {
                check(raw, sub);
            }
        }
    }

    #[test]
    fn random_subs_and_patterns_obey_the_rule() {
        // A seeded random search (the crate has no proptest): random `sub`s and patterns
        // built from literal pieces, placeholders and stars.
        let mut rng = fastrand::Rng::with_seed(0x5eed_0012);
        let sub_chars = b"ab*:._-{}|@ Z9";
        let pieces = ["user", ":", "{sub}", "*", "b", "bo", "x", "{", "}"];
        for _ in 0..20_000 {
            let len = rng.usize(0..6);
            let sub: String = (0..len)
                .map(|_| char::from(sub_chars[rng.usize(..sub_chars.len())]))
                .collect();
            let n = rng.usize(1..5);
            let raw: String = (0..n).map(|_| pieces[rng.usize(..pieces.len())]).collect();
            check(&raw, &sub);
        }
    }

    #[test]
    fn subscribe_and_publish_grants_follow_the_same_rule() {
        let principal = |sub: &str| {
            Principal::from_claims(Claims {
                sub: sub.into(),
                exp: 0,
                ssegate: Grants {
                    subscribe: vec!["user:{sub}".into(), "user:{sub}:*".into(), "news".into()],
                    publish: vec!["user:{sub}".into(), "user:{sub}:*".into(), "{sub}".into()],
                },
            })
        };
        let bob = principal("bob");
        for c in ["user:bob", "user:bob:inbox"] {
            assert!(bob.may_subscribe(&ch(c)), "{c}");
            assert!(bob.may_publish(&ch(c)), "{c}");
        }
        assert!(bob.may_publish(&ch("bob")));
        for sub in ["*", "bo*", "bob:x", "", "user:bob"] {
            let p = principal(sub);
            for c in ["user:bob", "user:bob:x:inbox", "user:bongo", "bob", "news"] {
                assert!(!p.may_publish(&ch(c)), "{sub:?} publishes {c}");
                assert_eq!(p.may_subscribe(&ch(c)), c == "news", "{sub:?} reads {c}");
            }
        }
    }
}
