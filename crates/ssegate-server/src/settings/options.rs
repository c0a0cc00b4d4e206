//! Every setting of a node, declared once.
//!
//! [`Options`] is the one declaration: each field is a setting, its doc comment is the
//! help line, `default_value` its default, `value_parser` the rule a value must follow.
//! Everything else reads it: the binary's flags, `SSEGATE_*` variables and TOML keys
//! (derived from the field name by [`env_name`] and [`file_key`]), `--help`, the test that
//! docs/configuration.md lists every setting with its default, and
//! [`crate::Settings::default`], which is what the binary runs with when nothing is set (so
//! tests and the binary cannot disagree about a default).
//!
//! A rule that concerns one value is its `value_parser` here; a rule across settings, or
//! one whose value must not be echoed (secrets), is in [`crate::Settings::from_options`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Command, FromArgMatches};

use crate::cors::Cors;
use crate::limits::Cidr;

/// Why one value is not valid; clap prints it after the setting's name and the value.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    /// Not a duration like `500ms`.
    #[error("expected a duration like 500ms, 15s or 1h")]
    Duration(#[source] humantime::DurationError),
    /// A duration of zero where time must pass.
    #[error("must be more than zero")]
    Zero,
    /// Not a size like `64KiB`.
    #[error("expected a size like 65536, 64KiB or 1MiB")]
    Size,
    /// Not a whole number of at least one.
    #[error("expected a whole number of at least 1")]
    Count,
    /// Not an address like `0.0.0.0:9090`, nor `off`.
    #[error("expected an address like 0.0.0.0:9090, or off")]
    Listen(#[source] std::net::AddrParseError),
    /// Any other rule, stated.
    #[error("{0}")]
    Rule(&'static str),
    /// An origin of the CORS list.
    #[error(transparent)]
    Origin(#[from] crate::cors::OriginError),
    /// An address range of a list.
    #[error(transparent)]
    Cidr(#[from] crate::limits::CidrError),
}

/// An address to listen on, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionalListen(pub Option<SocketAddr>);

/// The node's settings as given (flags, environment, file), each checked on its own.
///
/// Field names are the settings' names: `heartbeat_interval` is `--heartbeat-interval`,
/// `SSEGATE_HEARTBEAT_INTERVAL` and the file key `heartbeat_interval`.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Settings")]
pub struct Options {
    /// Public listener: API, streams, demo page, /healthz, /readyz
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Admin listener (/healthz, /readyz, /metrics, /v1/stats, /v1/cluster); 'off' to disable
    #[arg(long, default_value = "0.0.0.0:9090", value_parser = listen_or_off)]
    pub admin_listen: OptionalListen,
    /// Redis URL for cluster mode (redis://[user:password@]host:port/db, rediss://... for TLS); with --redis-sentinels only its credentials, db and TLS count; unset (and no sentinels): the embedded in-memory broker
    #[arg(long)]
    pub redis_url: Option<String>,
    /// Sentinels (host:port,host:port,...) through which the Redis primary is found and followed through failovers
    #[arg(long, value_parser = host_ports)]
    pub redis_sentinels: Option<HostPorts>,
    /// Seed nodes (host:port,host:port,...) of a Redis Cluster: commands routed by slot, live events over sharded pub/sub (Redis 7+); SSEGATE_REDIS_URL then only carries credentials and TLS
    #[arg(long, value_parser = host_ports)]
    pub redis_cluster: Option<HostPorts>,
    /// The primary's name at the sentinels
    #[arg(long, default_value = "mymaster", value_parser = short_name)]
    pub redis_master_name: String,
    /// Username at the sentinels (their ACL is apart from the data nodes'); unset: none
    #[arg(long)]
    pub redis_sentinel_username: Option<String>,
    /// Password at the sentinels; unset: none
    #[arg(long)]
    pub redis_sentinel_password: Option<String>,
    /// Reach the sentinels over TLS (their certificate checked like the data nodes': system roots or SSL_CERT_FILE); the data nodes' TLS is the URL's (rediss://)
    #[arg(long, default_value = "false", value_parser = on_off)]
    pub redis_sentinel_tls: bool,
    /// Redis connections for commands (pub/sub has its own)
    #[arg(long, default_value = "16", value_parser = count)]
    pub redis_pool_size: usize,
    /// Prefix of every Redis key
    #[arg(long, default_value = "ssegate", value_parser = key_prefix)]
    pub redis_key_prefix: String,
    /// Timeout of one Redis command (and of getting a connection)
    #[arg(long, default_value = "2s", value_parser = positive_duration)]
    pub redis_timeout: Duration,
    /// Replicas that must have a publish before it is acknowledged (Redis WAIT); 0: the primary alone
    #[arg(long, default_value = "0")]
    pub publish_min_replicas: u32,
    /// How long a publish waits for those replicas; past it, 504 publish_outcome_unknown
    #[arg(long, default_value = "500ms", value_parser = positive_duration)]
    pub publish_replica_timeout: Duration,
    /// This node's id in logs and /readyz; unset: a random UUID
    #[arg(long, value_parser = short_name)]
    pub node_id: Option<String>,
    /// Comment heartbeat on idle streams
    #[arg(long, default_value = "15s", value_parser = positive_duration)]
    pub heartbeat_interval: Duration,
    /// Base of the retry: sent to clients
    #[arg(long, default_value = "3s", value_parser = duration)]
    pub retry: Duration,
    /// Random extra on top of --retry, so reconnects spread out
    #[arg(long, default_value = "2s", value_parser = duration)]
    pub retry_jitter: Duration,
    /// Events kept per channel
    #[arg(long, default_value = "10000", value_parser = count)]
    pub history_max_len: usize,
    /// Events older than this expire
    #[arg(long, default_value = "1h", value_parser = positive_duration)]
    pub history_max_age: Duration,
    /// Embedded broker only: bytes of history this node keeps, all channels together; past it the oldest events are evicted (a trim)
    #[arg(long, default_value = "256MiB", value_parser = size)]
    pub memory_history_max_bytes: usize,
    /// Events a subscriber may fall behind live before it is caught up from history
    #[arg(long, default_value = "512", value_parser = count)]
    pub live_backlog: usize,
    /// The same in bytes of frames (a channel's live ring holds at most this much)
    #[arg(long, default_value = "1MiB", value_parser = size)]
    pub live_backlog_bytes: usize,
    /// On SIGTERM, streams are closed spread over this window
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub drain_window: Duration,
    /// Concurrent streams per node; unset: the open-files limit minus the request and admin connections and a reserve
    #[arg(long, value_parser = count)]
    pub max_connections: Option<usize>,
    /// Public connections that are not streams (requests, idle keep-alive); at the cap the listener stops accepting; unset: a quarter of the public descriptors, 16 to 1024
    #[arg(long, value_parser = count)]
    pub max_request_connections: Option<usize>,
    /// Connections on the admin listener; its descriptors are kept back from the public listener
    #[arg(long, default_value = "64", value_parser = count)]
    pub max_admin_connections: usize,
    /// Channels one multi-channel stream may name
    #[arg(long, default_value = "64", value_parser = count)]
    pub max_channels_per_connection: usize,
    /// Largest event data (413 past it)
    #[arg(long, default_value = "64KiB", value_parser = size)]
    pub max_event_size: usize,
    /// Largest request body, e.g. a batch (413 past it)
    #[arg(long, default_value = "1MiB", value_parser = body_size)]
    pub max_body_size: usize,
    /// Bytes of request bodies a node holds at once (503 overloaded past it, before reading)
    #[arg(long, default_value = "64MiB", value_parser = size)]
    pub max_body_bytes_in_flight: usize,
    /// Time a client has to send a request body after its head (408 past it)
    #[arg(long, default_value = "10s", value_parser = positive_duration)]
    pub body_read_timeout: Duration,
    /// How long an Idempotency-Key is remembered
    #[arg(long, default_value = "24h", value_parser = positive_duration)]
    pub idempotency_ttl: Duration,
    /// Embedded broker only: bytes of Idempotency-Key records kept (and at most 100000 keys); past it the oldest are forgotten
    #[arg(long, default_value = "32MiB", value_parser = size)]
    pub memory_idempotency_max_bytes: usize,
    /// How often a node refreshes its cluster-view entry (it expires after three)
    #[arg(long, default_value = "2s", value_parser = positive_duration)]
    pub cluster_announce_interval: Duration,
    /// Time a client has to send its request headers
    #[arg(long, default_value = "10s", value_parser = positive_duration)]
    pub header_read_timeout: Duration,
    /// HS256 secret (32+ bytes) for JWTs; setting any auth-jwt option turns subscriber auth on
    #[arg(long)]
    pub auth_jwt_secret: Option<String>,
    /// PEM file with the RS256 or ES256 public key of JWTs
    #[arg(long)]
    pub auth_jwt_public_key: Option<PathBuf>,
    /// JWKS file with the public keys of JWTs (chosen by kid)
    #[arg(long)]
    pub auth_jwks_file: Option<PathBuf>,
    /// Required JWT aud claim; unset: not checked
    #[arg(long)]
    pub auth_audience: Option<String>,
    /// Required JWT iss claim; unset: not checked
    #[arg(long)]
    pub auth_issuer: Option<String>,
    /// Cookie that carries a subscriber's JWT
    #[arg(long, default_value = "ssegate_token", value_parser = cookie_name)]
    pub auth_cookie_name: String,
    /// Longest lifetime of a token minted by POST /v1/tokens
    #[arg(long, default_value = "15m", value_parser = positive_duration)]
    pub auth_token_max_ttl: Duration,
    /// Comma-separated publisher keys (16+ characters, or sha256:<hex> of one); set: publishers must authenticate
    #[arg(long)]
    pub publish_keys: Option<String>,
    /// Comma-separated origins allowed from browsers (https://app.example.com, https://*.example.com); unset: same-origin only
    #[arg(long, value_parser = cors)]
    pub cors_origins: Option<Cors>,
    /// Comma-separated addresses/CIDRs whose X-Forwarded-For is believed
    #[arg(long, value_parser = cidrs)]
    pub trusted_proxies: Option<Cidrs>,
    /// Streams per subject (token sub, else client IP); 0: no limit
    #[arg(long, default_value = "0")]
    pub max_connections_per_subject: usize,
    /// New streams per second per node; 0: no limit
    #[arg(long, default_value = "0")]
    pub max_new_connections_per_second: u32,
    /// Publish requests per second per node (429 past it); 0: no limit
    #[arg(long, default_value = "0")]
    pub max_publishes_per_second: u32,
    /// Publish requests a node works on at once (503 overloaded past it, before reading)
    #[arg(long, default_value = "256", value_parser = count)]
    pub max_publishes_in_flight: usize,
}

/// Settings whose value is a secret: never echoed, in `--help` or in an error.
pub const SECRET_SETTINGS: &[&str] = &[
    "auth_jwt_secret",
    "publish_keys",
    "redis_url",
    "redis_sentinel_password",
];

impl Options {
    /// What a node runs with when nothing is set: every declared default.
    pub fn defaults() -> Self {
        let cmd = Self::augment_args(Command::new("ssegate"));
        // No environment is attached here, so this cannot fail: every default parses.
        let matches = cmd
            .try_get_matches_from(["ssegate"])
            .unwrap_or_else(|e| unreachable!("a declared default does not parse: {e}"));
        Self::from_arg_matches(&matches)
            .unwrap_or_else(|e| unreachable!("a declared default does not parse: {e}"))
    }
}

/// `SSEGATE_` and the setting's name in capitals: `SSEGATE_HEARTBEAT_INTERVAL`.
pub fn env_name(id: &str) -> String {
    format!("SSEGATE_{}", id.replace('-', "_").to_ascii_uppercase())
}

/// The setting's TOML key: `heartbeat_interval`.
pub fn file_key(id: &str) -> String {
    id.replace('-', "_")
}

/// `15s`, `500ms`, `0s`.
pub fn duration(s: &str) -> Result<Duration, ValueError> {
    humantime::parse_duration(s.trim()).map_err(ValueError::Duration)
}

fn positive_duration(s: &str) -> Result<Duration, ValueError> {
    let d = duration(s)?;
    if d.is_zero() {
        return Err(ValueError::Zero);
    }
    Ok(d)
}

fn count(s: &str) -> Result<usize, ValueError> {
    match s.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(ValueError::Count),
    }
}

/// `65536`, `64KiB`, `64kb`, `1MiB`, `1M`: powers of 1024 (a size limit is about memory).
pub fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num.parse().ok()?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(mult).filter(|&v| v > 0)
}

fn size(s: &str) -> Result<usize, ValueError> {
    parse_size(s).ok_or(ValueError::Size)
}

/// The largest body: its share of the body budget must fit in a `u32`.
const MAX_BODY_SIZE: usize = u32::MAX as usize;

fn body_size(s: &str) -> Result<usize, ValueError> {
    match size(s)? {
        n if n > MAX_BODY_SIZE => Err(ValueError::Rule("must be less than 4 GiB")),
        n => Ok(n),
    }
}

/// `true`/`false` (also `on`/`off`, `yes`/`no`, `1`/`0`): a TOML file's booleans and the
/// usual spellings of an environment variable.
fn on_off(s: &str) -> Result<bool, ValueError> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "on" | "yes" | "1" => Ok(true),
        "false" | "off" | "no" | "0" => Ok(false),
        _ => Err(ValueError::Rule("expected true or false")),
    }
}

fn listen_or_off(s: &str) -> Result<OptionalListen, ValueError> {
    match s.trim() {
        "off" => Ok(OptionalListen(None)),
        addr => addr
            .parse()
            .map(|a| OptionalListen(Some(a)))
            .map_err(ValueError::Listen),
    }
}

/// `host:port,host:port,...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPorts(pub Vec<(String, u16)>);

fn host_ports(s: &str) -> Result<HostPorts, ValueError> {
    const RULE: &str = "expected host:port,host:port,...";
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (host, port) = part.rsplit_once(':').ok_or(ValueError::Rule(RULE))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port: u16 = port.parse().map_err(|_| ValueError::Rule(RULE))?;
        if host.is_empty() || port == 0 || !host.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ValueError::Rule(RULE));
        }
        out.push((host.to_owned(), port));
    }
    if out.is_empty() {
        return Err(ValueError::Rule(RULE));
    }
    Ok(HostPorts(out))
}

/// `s`, when it is 1 to `max` bytes and every byte is `allowed`; else `rule`.
fn text_of(
    s: &str,
    max: usize,
    allowed: fn(u8) -> bool,
    rule: &'static str,
) -> Result<String, ValueError> {
    if !s.is_empty() && s.len() <= max && s.bytes().all(allowed) {
        Ok(s.to_owned())
    } else {
        Err(ValueError::Rule(rule))
    }
}

/// A node id or a sentinel's primary name.
fn short_name(s: &str) -> Result<String, ValueError> {
    text_of(
        s,
        128,
        |b| b.is_ascii_graphic(),
        "must be 1 to 128 visible ASCII characters",
    )
}

fn key_prefix(s: &str) -> Result<String, ValueError> {
    text_of(
        s,
        usize::MAX,
        |b| b.is_ascii_graphic() && b != b'{' && b != b'}',
        "must be visible ASCII without braces",
    )
}

fn cookie_name(s: &str) -> Result<String, ValueError> {
    text_of(
        s,
        usize::MAX,
        |b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-',
        "a cookie name of A-Z, a-z, 0-9, '_' and '-'",
    )
}

fn cors(s: &str) -> Result<Cors, ValueError> {
    Cors::parse(s).map_err(ValueError::from)
}

/// A comma-separated list of address ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cidrs(pub Vec<Cidr>);

fn cidrs(s: &str) -> Result<Cidrs, ValueError> {
    s.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(Cidr::parse)
        .collect::<Result<Vec<_>, _>>()
        .map(Cidrs)
        .map_err(ValueError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("65536"), Some(65536));
        assert_eq!(parse_size("64KiB"), Some(65536));
        assert_eq!(parse_size("1MiB"), Some(1 << 20));
        assert_eq!(parse_size("1m"), Some(1 << 20));
        assert_eq!(parse_size("0"), None);
        assert_eq!(parse_size("1GB"), None);
        assert_eq!(parse_size("x"), None);
    }

    #[test]
    fn booleans() {
        for yes in ["true", "ON", " yes", "1"] {
            assert_eq!(on_off(yes).ok(), Some(true), "{yes}");
        }
        for no in ["false", "Off", "no ", "0"] {
            assert_eq!(on_off(no).ok(), Some(false), "{no}");
        }
        assert!(on_off("maybe").is_err() && on_off("").is_err());
    }

    #[test]
    fn every_default_parses() {
        let o = Options::defaults();
        assert_eq!(o.heartbeat_interval, Duration::from_secs(15));
        assert_eq!(
            o.admin_listen.0,
            Some(SocketAddr::from(([0, 0, 0, 0], 9090)))
        );
        assert!(o.redis_url.is_none() && o.trusted_proxies.is_none());
    }

    #[test]
    fn secret_settings_exist() {
        let cmd = Options::augment_args(Command::new("t"));
        for id in SECRET_SETTINGS {
            assert!(cmd.get_arguments().any(|a| a.get_id() == id), "{id}");
        }
    }
}
