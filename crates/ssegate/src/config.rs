//! Settings from flags, `SSEGATE_*` environment variables and an optional TOML file.
//!
//! Strength: flags > environment > file > defaults. The environment overrides the file,
//! the usual rule for twelve-factor services, so that a deployment can override one value
//! of a config file baked into an image or a ConfigMap (see docs/configuration.md).
//!
//! Every setting is described once, in [`SETTINGS`]: its flag, its variable, its file key,
//! its default and its help. `ssegate --help` and the docs are written from that table.
//! An invalid value, an unknown flag or an unknown file key exits with status 64
//! (`EX_USAGE`) and a message that names the setting.

use std::collections::HashMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::time::Duration;

use clap::{Arg, ArgAction, Command};
use ssegate_broker::{HistoryConfig, RedisConfig};
use ssegate_server::Settings;
use ssegate_server::auth::{Auth, AuthSettings, PublishKey};
use ssegate_server::cors::Cors;
use ssegate_server::limits::{Cidr, FileBudget, REDIS_EXTRA_FILES};

use crate::telemetry::{LogFormat, LogSettings};

/// `EX_USAGE` from sysexits.h.
pub const EXIT_USAGE: u8 = 64;

/// One setting: `--name`, `SSEGATE_NAME`, file key `name` (with `_`).
#[derive(Debug)]
pub struct Spec {
    /// The flag's name without `--`; the variable and file key are derived from it.
    pub name: &'static str,
    /// The default as written in a flag; empty: unset, or worked out at start.
    pub default: &'static str,
    /// One line for `--help` and the docs table.
    pub help: &'static str,
}

/// Every setting, with its default as text.
#[rustfmt::skip]
pub const SETTINGS: &[Spec] = &[
    Spec { name: "listen", default: "0.0.0.0:8080", help: "Public listener: API, streams, demo page, /healthz, /readyz" },
    Spec { name: "admin-listen", default: "0.0.0.0:9090", help: "Admin listener (/healthz, /readyz); 'off' to disable" },
    Spec { name: "redis-url", default: "", help: "Redis URL for cluster mode (redis://host:port/db); unset: the embedded in-memory broker" },
    Spec { name: "redis-pool-size", default: "16", help: "Redis connections for commands (pub/sub has its own)" },
    Spec { name: "redis-key-prefix", default: "ssegate", help: "Prefix of every Redis key" },
    Spec { name: "redis-timeout", default: "2s", help: "Timeout of one Redis command (and of getting a connection)" },
    Spec { name: "node-id", default: "", help: "This node's id in logs and /readyz; unset: a random UUID" },
    Spec { name: "heartbeat-interval", default: "15s", help: "Comment heartbeat on idle streams" },
    Spec { name: "retry", default: "3s", help: "Base of the retry: sent to clients" },
    Spec { name: "retry-jitter", default: "2s", help: "Random extra on top of --retry, so reconnects spread out" },
    Spec { name: "history-max-len", default: "10000", help: "Events kept per channel" },
    Spec { name: "history-max-age", default: "1h", help: "Events older than this expire" },
    Spec { name: "memory-history-max-bytes", default: "256MiB", help: "Embedded broker only: bytes of history this node keeps, all channels together; past it the oldest events are evicted (a trim)" },
    Spec { name: "live-backlog", default: "512", help: "Events a subscriber may fall behind live before it is caught up from history" },
    Spec { name: "live-backlog-bytes", default: "1MiB", help: "The same in bytes of frames (a channel's live ring holds at most this much)" },
    Spec { name: "drain-window", default: "10s", help: "On SIGTERM, streams are closed spread over this window" },
    Spec { name: "max-connections", default: "", help: "Concurrent streams per node; unset: the open-files limit minus the request and admin connections and a reserve" },
    Spec { name: "max-request-connections", default: "", help: "Public connections that are not streams (requests, idle keep-alive); at the cap the listener stops accepting; unset: a quarter of the public descriptors, 16 to 1024" },
    Spec { name: "max-admin-connections", default: "64", help: "Connections on the admin listener; its descriptors are kept back from the public listener" },
    Spec { name: "max-channels-per-connection", default: "64", help: "Channels one multi-channel stream may name" },
    Spec { name: "max-event-size", default: "64KiB", help: "Largest event data (413 past it)" },
    Spec { name: "max-body-size", default: "1MiB", help: "Largest request body, e.g. a batch (413 past it)" },
    Spec { name: "max-body-bytes-in-flight", default: "64MiB", help: "Bytes of request bodies a node holds at once (503 overloaded past it, before reading)" },
    Spec { name: "body-read-timeout", default: "10s", help: "Time a client has to send a request body after its head (408 past it)" },
    Spec { name: "idempotency-ttl", default: "24h", help: "How long an Idempotency-Key is remembered" },
    Spec { name: "memory-idempotency-max-bytes", default: "32MiB", help: "Embedded broker only: bytes of Idempotency-Key records kept (and at most 100000 keys); past it the oldest are forgotten" },
    Spec { name: "cluster-announce-interval", default: "2s", help: "How often a node refreshes its cluster-view entry (it expires after three)" },
    Spec { name: "header-read-timeout", default: "10s", help: "Time a client has to send its request headers" },
    Spec { name: "log-format", default: "human", help: "Log format: human or json" },
    Spec { name: "log", default: "info", help: "Log filter (tracing EnvFilter syntax)" },
    Spec { name: "auth-jwt-secret", default: "", help: "HS256 secret (32+ bytes) for JWTs; setting any auth-jwt option turns subscriber auth on" },
    Spec { name: "auth-jwt-public-key", default: "", help: "PEM file with the RS256 or ES256 public key of JWTs" },
    Spec { name: "auth-jwks-file", default: "", help: "JWKS file with the public keys of JWTs (chosen by kid)" },
    Spec { name: "auth-audience", default: "", help: "Required JWT aud claim; unset: not checked" },
    Spec { name: "auth-issuer", default: "", help: "Required JWT iss claim; unset: not checked" },
    Spec { name: "auth-cookie-name", default: "ssegate_token", help: "Cookie that carries a subscriber's JWT" },
    Spec { name: "auth-token-max-ttl", default: "15m", help: "Longest lifetime of a token minted by POST /v1/tokens" },
    Spec { name: "publish-keys", default: "", help: "Comma-separated publisher keys (16+ characters, or sha256:<hex> of one); set: publishers must authenticate" },
    Spec { name: "cors-origins", default: "", help: "Comma-separated origins allowed from browsers (https://app.example.com, https://*.example.com); unset: same-origin only" },
    Spec { name: "trusted-proxies", default: "", help: "Comma-separated addresses/CIDRs whose X-Forwarded-For is believed" },
    Spec { name: "max-connections-per-subject", default: "0", help: "Streams per subject (token sub, else client IP); 0: no limit" },
    Spec { name: "max-new-connections-per-second", default: "0", help: "New streams per second per node; 0: no limit" },
    Spec { name: "max-publishes-per-second", default: "0", help: "Publish requests per second per node (429 past it); 0: no limit" },
];

/// The loaded configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The node's settings, for `App::build`.
    pub settings: Settings,
    /// How to log, for `telemetry::init`.
    pub log: LogSettings,
}

/// Loading stopped: print `message` and exit with `code` (0 for `--help`).
#[derive(Debug)]
pub enum ConfigError {
    /// Print `message`, then exit with `code`.
    Exit {
        /// 0 after `--help`, 64 (`EXIT_USAGE`) for a bad setting.
        code: u8,
        /// The text to print, ending in a newline.
        message: String,
    },
}

fn usage(message: impl Into<String>) -> ConfigError {
    ConfigError::Exit {
        code: EXIT_USAGE,
        message: format!("ssegate: {}\n", message.into()),
    }
}

fn env_name(name: &str) -> String {
    format!("SSEGATE_{}", name.replace('-', "_").to_ascii_uppercase())
}

fn file_key(name: &str) -> String {
    name.replace('-', "_")
}

fn command() -> Command {
    let mut cmd = Command::new("ssegate")
        .version(env!("CARGO_PKG_VERSION"))
        .about("A horizontally scaled Server-Sent Events gateway")
        .after_help(
            "Every setting is a flag, an environment variable and a key of the --config TOML \
             file (flags > environment > file > default). Durations: 500ms, 15s, 1h. \
             Sizes: 65536, 64KiB, 1MiB.",
        )
        .arg(
            Arg::new("config")
                .long("config")
                .env("SSEGATE_CONFIG")
                .value_name("FILE")
                .help("TOML file with settings (keys like heartbeat_interval) [default: none]"),
        );
    for spec in SETTINGS {
        let default = if spec.default.is_empty() {
            "unset"
        } else {
            spec.default
        };
        cmd = cmd.arg(
            Arg::new(spec.name)
                .long(spec.name)
                .env(env_name(spec.name))
                .value_name("VALUE")
                .action(ArgAction::Set)
                .hide_env_values(spec.name.contains("secret") || spec.name.contains("keys"))
                .help(format!("{} [default: {default}]", spec.help)),
        );
    }
    cmd
}

/// Reads the settings from `args`, the environment and the file.
pub fn load(
    args: impl IntoIterator<Item = impl Into<OsString> + Clone>,
) -> Result<Config, ConfigError> {
    let matches = command().try_get_matches_from(args).map_err(|e| {
        let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
        ConfigError::Exit {
            code,
            message: e.render().to_string(),
        }
    })?;
    let file = match matches.get_one::<String>("config") {
        Some(path) => read_file(path)?,
        None => HashMap::new(),
    };
    let mut raw = HashMap::new();
    for spec in SETTINGS {
        let value = matches
            .get_one::<String>(spec.name)
            .cloned()
            .or_else(|| file.get(&file_key(spec.name)).cloned())
            .unwrap_or_else(|| spec.default.to_owned());
        raw.insert(spec.name, value);
    }
    from_raw(&raw)
}

fn read_file(path: &str) -> Result<HashMap<String, String>, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| usage(format!("cannot read config file {path}: {e}")))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| usage(format!("config file {path} is not valid TOML: {e}")))?;
    let mut out = HashMap::new();
    for (key, value) in table {
        if !SETTINGS.iter().any(|s| file_key(s.name) == key) {
            return Err(usage(format!(
                "config file {path}: unknown setting {key:?}"
            )));
        }
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => {
                return Err(usage(format!(
                    "config file {path}: {key} must be a string or a number, not {}",
                    other.type_str()
                )));
            }
        };
        out.insert(key, text);
    }
    Ok(out)
}

struct Raw<'a>(&'a HashMap<&'static str, String>);

impl Raw<'_> {
    fn text(&self, name: &str) -> &str {
        self.0.get(name).map_or("", String::as_str)
    }

    fn fail(&self, name: &str, why: impl std::fmt::Display) -> ConfigError {
        usage(format!(
            "invalid {} (--{name}) {:?}: {why}",
            env_name(name),
            self.text(name)
        ))
    }

    /// Like [`Raw::fail`] but without echoing the value (for secrets).
    fn fail_quiet(&self, name: &str, why: impl std::fmt::Display) -> ConfigError {
        usage(format!("invalid {} (--{name}): {why}", env_name(name)))
    }

    fn addr(&self, name: &str) -> Result<SocketAddr, ConfigError> {
        self.text(name).parse().map_err(|e| self.fail(name, e))
    }

    fn duration(&self, name: &str) -> Result<Duration, ConfigError> {
        humantime::parse_duration(self.text(name)).map_err(|e| self.fail(name, e))
    }

    fn positive_duration(&self, name: &str) -> Result<Duration, ConfigError> {
        let d = self.duration(name)?;
        if d.is_zero() {
            return Err(self.fail(name, "must be more than zero"));
        }
        Ok(d)
    }

    fn count(&self, name: &str) -> Result<usize, ConfigError> {
        match self.text(name).parse::<usize>() {
            Ok(0) => Err(self.fail(name, "must be at least 1")),
            Ok(n) => Ok(n),
            Err(e) => Err(self.fail(name, e)),
        }
    }

    fn number<T: std::str::FromStr>(&self, name: &str) -> Result<T, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        self.text(name).parse().map_err(|e| self.fail(name, e))
    }

    fn size(&self, name: &str) -> Result<usize, ConfigError> {
        parse_size(self.text(name))
            .ok_or_else(|| self.fail(name, "expected a size like 65536, 64KiB or 1MiB"))
    }
}

fn list(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn read_file_setting(r: &Raw<'_>, name: &str) -> Result<Option<String>, ConfigError> {
    match r.text(name) {
        "" => Ok(None),
        path => std::fs::read_to_string(path)
            .map(Some)
            .map_err(|e| r.fail(name, format!("cannot read {path}: {e}"))),
    }
}

fn auth_settings(r: &Raw<'_>) -> Result<AuthSettings, ConfigError> {
    let text = |name: &str| Some(r.text(name).to_owned()).filter(|s| !s.is_empty());
    let publish_keys = list(r.text("publish-keys"))
        .map(PublishKey::parse)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| r.fail_quiet("publish-keys", e))?;
    let cookie = r.text("auth-cookie-name");
    if cookie.is_empty()
        || !cookie
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(r.fail(
            "auth-cookie-name",
            "a cookie name of A-Z, a-z, 0-9, '_' and '-'",
        ));
    }
    let secret = text("auth-jwt-secret");
    if secret.as_ref().is_some_and(|s| s.len() < 32) {
        return Err(r.fail_quiet("auth-jwt-secret", "must be at least 32 bytes"));
    }
    let settings = AuthSettings {
        jwt_secret: secret,
        jwt_public_key_pem: read_file_setting(r, "auth-jwt-public-key")?,
        jwks_json: read_file_setting(r, "auth-jwks-file")?,
        audience: text("auth-audience"),
        issuer: text("auth-issuer"),
        cookie_name: cookie.to_owned(),
        publish_keys,
        mint_max_ttl: r.positive_duration("auth-token-max-ttl")?,
        ..AuthSettings::default()
    };
    // Build it once here so that a bad key is a configuration error (exit 64).
    Auth::build(settings.clone()).map_err(|e| usage(format!("invalid auth configuration: {e}")))?;
    Ok(settings)
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

/// The open-files limit, with the soft limit raised to the hard one first.
fn open_files_limit() -> usize {
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    usize::try_from(limit).unwrap_or(usize::MAX)
}

/// The largest body: its share of the body budget must fit in a `u32`.
const MAX_BODY_SIZE: usize = u32::MAX as usize;

fn from_raw(raw: &HashMap<&'static str, String>) -> Result<Config, ConfigError> {
    let r = Raw(raw);
    let auth = auth_settings(&r)?;
    let cors = Cors::parse(r.text("cors-origins")).map_err(|e| r.fail("cors-origins", e))?;
    let trusted_proxies = list(r.text("trusted-proxies"))
        .map(Cidr::parse)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| r.fail("trusted-proxies", e))?;
    let admin_listen = match r.text("admin-listen") {
        "off" | "" => None,
        _ => Some(r.addr("admin-listen")?),
    };
    let node_id = match r.text("node-id") {
        "" => uuid::Uuid::new_v4().to_string(),
        id if id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()) => id.to_owned(),
        _ => return Err(r.fail("node-id", "must be 1 to 128 visible ASCII characters")),
    };
    let redis = match r.text("redis-url") {
        "" => None,
        url if url.starts_with("redis://")
            || url.starts_with("rediss://")
            || url.starts_with("unix://") =>
        {
            let prefix = r.text("redis-key-prefix");
            if prefix.is_empty()
                || !prefix
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}')
            {
                return Err(r.fail("redis-key-prefix", "must be visible ASCII without braces"));
            }
            Some(RedisConfig {
                url: url.to_owned(),
                pool_size: r.count("redis-pool-size")?,
                key_prefix: prefix.to_owned(),
                timeout: r.positive_duration("redis-timeout")?,
            })
        }
        _ => return Err(r.fail("redis-url", "expected redis://host:port[/db]")),
    };
    // The open-files limit is shared out: streams + request connections + admin
    // connections + Redis + a reserve (see `FileBudget`).
    let open_files = open_files_limit();
    let max_admin_connections = r.count("max-admin-connections")?;
    let files = FileBudget::new(
        open_files,
        admin_listen.map_or(0, |_| max_admin_connections),
        redis
            .as_ref()
            .map_or(0, |c: &RedisConfig| c.pool_size + REDIS_EXTRA_FILES),
    );
    let max_request_connections = match r.text("max-request-connections") {
        "" => files.default_request_connections(),
        _ => r.count("max-request-connections")?,
    };
    let max_connections = match r.text("max-connections") {
        "" => files.default_streams(max_request_connections),
        _ => r.count("max-connections")?,
    };
    let max_body_size = r.size("max-body-size")?;
    let max_body_bytes_in_flight = r.size("max-body-bytes-in-flight")?;
    if max_body_bytes_in_flight < max_body_size.max(64 * 1024) {
        return Err(r.fail(
            "max-body-bytes-in-flight",
            "must be at least max-body-size (and 64KiB), or no such body could be taken",
        ));
    }
    if max_body_size > MAX_BODY_SIZE {
        return Err(r.fail("max-body-size", "must be less than 4 GiB"));
    }
    let log_format = match r.text("log-format") {
        "human" => LogFormat::Human,
        "json" => LogFormat::Json,
        _ => return Err(r.fail("log-format", "expected human or json")),
    };
    let settings = Settings {
        listen: r.addr("listen")?,
        admin_listen,
        node_id,
        heartbeat_interval: r.positive_duration("heartbeat-interval")?,
        retry: r.duration("retry")?,
        retry_jitter: r.duration("retry-jitter")?,
        drain_window: r.duration("drain-window")?,
        max_connections,
        max_channels_per_connection: r.count("max-channels-per-connection")?,
        max_event_size: r.size("max-event-size")?,
        max_body_size,
        max_body_bytes_in_flight,
        body_read_timeout: r.positive_duration("body-read-timeout")?,
        max_request_connections,
        max_admin_connections,
        open_files_limit: Some(open_files),
        header_read_timeout: r.positive_duration("header-read-timeout")?,
        cluster_announce_interval: r.positive_duration("cluster-announce-interval")?,
        history: HistoryConfig {
            max_len: r.count("history-max-len")?,
            max_age: r.positive_duration("history-max-age")?,
            max_bytes: r.size("memory-history-max-bytes")?,
            live_backlog: r.count("live-backlog")?,
            live_backlog_bytes: r.size("live-backlog-bytes")?,
            idempotency_ttl: r.positive_duration("idempotency-ttl")?,
            idempotency_max_bytes: r.size("memory-idempotency-max-bytes")?,
            ..HistoryConfig::default()
        },
        redis,
        auth,
        cors,
        trusted_proxies,
        max_connections_per_subject: r.number("max-connections-per-subject")?,
        max_new_connections_per_second: r.number("max-new-connections-per-second")?,
        max_publishes_per_second: r.number("max-publishes-per-second")?,
        ..Settings::default()
    };
    Ok(Config {
        settings,
        log: LogSettings {
            format: log_format,
            filter: r.text("log").to_owned(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_args(args: &[&str]) -> Result<Config, ConfigError> {
        let mut all = vec!["ssegate"];
        all.extend_from_slice(args);
        load(all)
    }

    fn code(r: Result<Config, ConfigError>) -> (u8, String) {
        match r {
            Err(ConfigError::Exit { code, message }) => (code, message),
            Ok(_) => panic!("expected an error"),
        }
    }

    #[test]
    fn every_setting_is_documented() {
        let doc = include_str!("../../../docs/configuration.md");
        for spec in SETTINGS {
            let row = format!("`--{}` / `{}`", spec.name, env_name(spec.name));
            assert!(doc.contains(&row), "docs/configuration.md lacks {row}");
        }
    }

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
    fn flags_parse_and_defaults_apply() {
        let c = load_args(&["--listen", "127.0.0.1:0", "--heartbeat-interval", "250ms"]).unwrap();
        assert_eq!(c.settings.listen.to_string(), "127.0.0.1:0");
        assert_eq!(c.settings.heartbeat_interval, Duration::from_millis(250));
        assert_eq!(c.settings.retry, Duration::from_secs(3));
        assert_eq!(c.settings.history.max_len, 10_000);
        assert_eq!(c.settings.history.max_bytes, 256 << 20);
        assert_eq!(c.settings.history.live_backlog_bytes, 1 << 20);
        assert_eq!(c.settings.history.idempotency_max_bytes, 32 << 20);
        assert_eq!(c.settings.max_event_size, 64 * 1024);
        assert!(!c.settings.node_id.is_empty());
    }

    #[test]
    fn invalid_values_exit_64_naming_the_setting() {
        let (code, msg) = code(load_args(&["--heartbeat-interval", "soon"]));
        assert_eq!(code, EXIT_USAGE);
        assert!(msg.contains("SSEGATE_HEARTBEAT_INTERVAL"), "{msg}");
        assert_eq!(code_of(&["--history-max-len", "0"]), EXIT_USAGE);
        assert_eq!(code_of(&["--listen", "nowhere"]), EXIT_USAGE);
        assert_eq!(code_of(&["--no-such-flag"]), EXIT_USAGE);
        assert_eq!(code_of(&["--log-format", "xml"]), EXIT_USAGE);
        assert_eq!(code_of(&["--auth-jwt-secret", "too-short"]), EXIT_USAGE);
        assert_eq!(code_of(&["--publish-keys", "short"]), EXIT_USAGE);
        assert_eq!(code_of(&["--cors-origins", "example.com"]), EXIT_USAGE);
        assert_eq!(code_of(&["--trusted-proxies", "10.0.0.0/99"]), EXIT_USAGE);
        assert_eq!(
            code_of(&["--auth-jwt-public-key", "/nonexistent.pem"]),
            EXIT_USAGE
        );
        assert_eq!(code_of(&["--redis-url", "localhost:6379"]), EXIT_USAGE);
    }

    #[test]
    fn body_and_descriptor_bounds_default_and_validate() {
        let s = load_args(&[]).unwrap().settings;
        assert_eq!(s.body_read_timeout, Duration::from_secs(10));
        assert_eq!(s.max_body_bytes_in_flight, 64 << 20);
        assert_eq!(s.max_admin_connections, 64);
        let limit = s.open_files_limit.expect("the open-files limit is known");
        let files = FileBudget::new(limit, s.max_admin_connections, 0);
        if limit >= 1024 {
            assert_eq!(
                s.max_connections + s.max_request_connections + files.reserve,
                limit,
                "streams + request connections + reserve share the open-files limit"
            );
        }
        let s = load_args(&[
            "--max-connections",
            "100",
            "--max-request-connections",
            "10",
            "--body-read-timeout",
            "2s",
        ])
        .unwrap()
        .settings;
        assert_eq!((s.max_connections, s.max_request_connections), (100, 10));
        assert_eq!(s.body_read_timeout, Duration::from_secs(2));
        // A budget that could never take the largest body, a zero deadline or cap.
        assert_eq!(
            code_of(&["--max-body-bytes-in-flight", "512KiB"]),
            EXIT_USAGE
        );
        assert_eq!(code_of(&["--body-read-timeout", "0s"]), EXIT_USAGE);
        assert_eq!(code_of(&["--max-request-connections", "0"]), EXIT_USAGE);
        assert_eq!(code_of(&["--max-admin-connections", "0"]), EXIT_USAGE);
    }

    fn code_of(args: &[&str]) -> u8 {
        code(load_args(args)).0
    }

    #[test]
    fn help_exits_zero_and_lists_every_setting_with_its_default() {
        let (code, msg) = code(load_args(&["--help"]));
        assert_eq!(code, 0);
        for spec in SETTINGS {
            assert!(msg.contains(&format!("--{}", spec.name)), "{}", spec.name);
            assert!(msg.contains(&env_name(spec.name)), "{}", spec.name);
        }
        assert!(msg.contains("[default: 15s]"));
    }

    #[test]
    fn file_values_apply_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ssegate.toml");
        std::fs::write(
            &path,
            "heartbeat_interval = \"2s\"\nhistory_max_len = 50\nretry = \"1s\"\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let c = load_args(&["--config", p, "--retry", "5s"]).unwrap();
        assert_eq!(c.settings.heartbeat_interval, Duration::from_secs(2));
        assert_eq!(c.settings.history.max_len, 50);
        assert_eq!(c.settings.retry, Duration::from_secs(5));
        std::fs::write(&path, "no_such_key = 1\n").unwrap();
        assert_eq!(code_of(&["--config", p]), EXIT_USAGE);
        std::fs::write(&path, "heartbeat_interval = [1]\n").unwrap();
        assert_eq!(code_of(&["--config", p]), EXIT_USAGE);
        assert_eq!(
            code_of(&["--config", "/nonexistent/ssegate.toml"]),
            EXIT_USAGE
        );
    }
}
