//! Targets (base URLs of gateway nodes), the URL shapes of each flavor of server, and the
//! loopback-only rule.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// Which kind of server is measured; decides the URL shapes and the publish body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Flavor {
    /// ssegate: `GET|POST /v1/channels/{ch}/events`, JSON `{"data": "..."}`.
    Ssegate,
    /// nchan as set up by `loadtest/peers/nchan`: `GET /sub/{ch}`, `POST /pub/{ch}` raw data.
    Nchan,
    /// The tutorial-style Node.js server of `loadtest/peers/node` (same shapes as nchan).
    Node,
    /// `ssegate-loadtest floor`: the cheapest possible server (same shapes as nchan).
    Floor,
}

impl Flavor {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Ssegate => "ssegate",
            Self::Nchan => "nchan",
            Self::Node => "node",
            Self::Floor => "floor",
        }
    }

    /// Path of a channel's event stream.
    pub(crate) fn subscribe_path(self, base: &str, channel: &str) -> String {
        match self {
            Self::Ssegate => format!("{base}/v1/channels/{channel}/events"),
            Self::Nchan | Self::Node | Self::Floor => format!("{base}/sub/{channel}"),
        }
    }

    /// Path to publish one event to a channel.
    pub(crate) fn publish_path(self, base: &str, channel: &str) -> String {
        match self {
            Self::Ssegate => format!("{base}/v1/channels/{channel}/events"),
            Self::Nchan | Self::Node | Self::Floor => format!("{base}/pub/{channel}"),
        }
    }

    /// Content type and body of a publish carrying `data`.
    pub(crate) fn publish_body(self, data: &str) -> (&'static str, String) {
        match self {
            Self::Ssegate => (
                "application/json",
                serde_json::json!({ "data": data }).to_string(),
            ),
            Self::Nchan | Self::Node | Self::Floor => ("text/plain", data.to_owned()),
        }
    }

    /// Whether the server honours `Idempotency-Key`, so a failed publish may be retried.
    pub(crate) fn idempotent_publish(self) -> bool {
        matches!(self, Self::Ssegate)
    }

    /// Whether a stream counts as live only once its first id-only frame arrived (ssegate
    /// sends one at once; a refused stream carries only `retry:`). Otherwise the response
    /// headers are enough.
    pub(crate) fn live_on_first_id(self) -> bool {
        matches!(self, Self::Ssegate)
    }
}

/// One node: where to connect and what to put in the `Host` header and paths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Target {
    /// The base URL as given, without a trailing slash.
    pub(crate) url: String,
    pub(crate) addr: SocketAddr,
    /// `host:port` for the `Host` header.
    pub(crate) authority: String,
    /// Path prefix of the base URL (empty or starting with `/`).
    pub(crate) base_path: String,
}

impl Target {
    /// Parses `http://127.x.y.z:port[/prefix]`; anything outside 127.0.0.0/8 is refused.
    pub(crate) fn parse(url: &str) -> anyhow::Result<Self> {
        let url = url.trim_end_matches('/');
        let rest = url
            .strip_prefix("http://")
            .with_context(|| format!("{url:?}: only http:// targets are supported"))?;
        let (authority, base_path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>().with_context(|| format!("{url:?}: port"))?,
            ),
            None => (authority, 80),
        };
        let ip: IpAddr = if host == "localhost" {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            host.parse()
                .with_context(|| format!("{url:?}: the host must be a loopback IP address"))?
        };
        if !is_loopback(ip) {
            bail!("{url:?}: refusing a target outside 127.0.0.0/8 (loopback only)");
        }
        Ok(Self {
            url: url.to_owned(),
            addr: SocketAddr::new(ip, port),
            authority: authority.to_owned(),
            base_path: base_path.to_owned(),
        })
    }

    pub(crate) fn subscribe_path(&self, flavor: Flavor, channel: &str) -> String {
        flavor.subscribe_path(&self.base_path, channel)
    }

    pub(crate) fn publish_url(&self, flavor: Flavor, channel: &str) -> String {
        flavor.publish_path(&self.url, channel)
    }
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.octets()[0] == 127,
        IpAddr::V6(_) => false,
    }
}

/// Parses every target, refusing an empty list.
pub(crate) fn parse_all(urls: &[String]) -> anyhow::Result<Vec<Target>> {
    if urls.is_empty() {
        bail!("give at least one --target http://127.0.0.1:PORT");
    }
    urls.iter().map(|u| Target::parse(u)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_only() {
        let t = Target::parse("http://127.0.0.2:8080/").unwrap();
        assert_eq!(t.addr.to_string(), "127.0.0.2:8080");
        assert_eq!(t.authority, "127.0.0.2:8080");
        assert_eq!(
            t.subscribe_path(Flavor::Ssegate, "c"),
            "/v1/channels/c/events"
        );
        let t = Target::parse("http://localhost:81/x").unwrap();
        assert_eq!(t.subscribe_path(Flavor::Nchan, "c"), "/x/sub/c");
        assert_eq!(
            t.publish_url(Flavor::Nchan, "c"),
            "http://localhost:81/x/pub/c"
        );
        assert!(Target::parse("http://10.0.0.1:80").is_err());
        assert!(Target::parse("http://example.com:80").is_err());
        assert!(Target::parse("https://127.0.0.1:80").is_err());
        assert!(Target::parse("http://[::1]:80").is_err());
    }
}
