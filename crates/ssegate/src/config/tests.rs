use std::time::Duration;

use ssegate_server::limits::{FileBudget, REDIS_EXTRA_FILES};

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

fn code_of(args: &[&str]) -> u8 {
    code(load_args(args)).0
}

/// docs/configuration.md has a row for every declared setting, with its declared default.
#[test]
fn every_setting_is_documented_with_its_default() {
    let doc = include_str!("../../../../docs/configuration.md");
    for (flag, env, default) in declared() {
        let row = format!("| `{flag}` / `{env}` | ");
        let Some(at) = doc.find(&row) else {
            panic!("docs/configuration.md lacks {row}");
        };
        if let Some(default) = default {
            let documented = &doc[at + row.len()..];
            assert!(
                documented.starts_with(&format!("`{default}`")),
                "docs/configuration.md gives {flag} another default than `{default}`"
            );
        }
    }
}

/// `Settings::default()` (what the tests build nodes from) is what the binary runs with
/// when nothing is set.
#[test]
fn the_binary_and_settings_default_agree() {
    let loaded = load_args(&["--node-id", "n"]).unwrap().settings;
    let default = Settings {
        node_id: "n".into(),
        ..Settings::default()
    };
    assert_eq!(format!("{loaded:?}"), format!("{default:?}"));
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
    assert_eq!(c.log.format, LogFormat::Human);
}

#[test]
fn invalid_values_exit_64_naming_the_setting() {
    let (code, msg) = code(load_args(&["--heartbeat-interval", "soon"]));
    assert_eq!(code, EXIT_USAGE);
    assert!(msg.contains("SSEGATE_HEARTBEAT_INTERVAL"), "{msg}");
    assert!(msg.contains("--heartbeat-interval"), "{msg}");
    for bad in [
        &["--history-max-len", "0"][..],
        &["--listen", "nowhere"],
        &["--no-such-flag"],
        &["--log-format", "xml"],
        &["--auth-jwt-secret", "too-short"],
        &["--publish-keys", "short"],
        &["--cors-origins", "example.com"],
        &["--trusted-proxies", "10.0.0.0/99"],
        &["--auth-jwt-public-key", "/nonexistent.pem"],
        &["--redis-url", "localhost:6379"],
        &["--redis-key-prefix", "a{b}"],
        &["--auth-cookie-name", "a b"],
        &["--node-id", "has space"],
        &["--max-body-size", "8192MiB"],
        &["--redis-sentinels", "127.0.0.1"],
        &["--redis-sentinels", "127.0.0.1:0"],
        &["--redis-master-name", ""],
        &["--publish-min-replicas", "1"],
        &["--publish-replica-timeout", "0s"],
    ] {
        assert_eq!(code_of(bad), EXIT_USAGE, "{bad:?}");
    }
}

#[test]
fn secrets_are_never_echoed() {
    for (args, secret) in [
        (
            &["--auth-jwt-secret", "too-short-secret"][..],
            "too-short-secret",
        ),
        (&["--publish-keys", "tiny-key"], "tiny-key"),
        (&["--redis-url", "http://:hunter2@x"], "hunter2"),
    ] {
        let (code, msg) = code(load_args(args));
        assert_eq!(code, EXIT_USAGE);
        assert!(!msg.contains(secret), "{msg}");
        assert!(msg.contains(&env_name(&args[0][2..])), "{msg}");
    }
}

/// Redis's share of the open files follows its shape: a cluster's two connections per
/// budgeted primary, and its publishes' own connections only when they `WAIT`.
#[test]
fn redis_connections_are_kept_out_of_the_public_share() {
    let total = |args: &[&str]| {
        let s = load_args(args).unwrap().settings;
        s.max_connections + s.max_request_connections
    };
    let Some(limit) = load_args(&[]).unwrap().settings.open_files_limit else {
        return;
    };
    if limit < 4096 {
        return; // below this the shares are clamped, not subtracted
    }
    let embedded = total(&[]);
    let one = total(&["--redis-url", "redis://127.0.0.1:6379"]);
    let cluster = total(&["--redis-cluster", "127.0.0.1:7000"]);
    let waiting = total(&[
        "--redis-cluster",
        "127.0.0.1:7000",
        "--publish-min-replicas",
        "1",
    ]);
    let pool = load_args(&["--redis-url", "redis://127.0.0.1:6379"])
        .unwrap()
        .settings
        .redis
        .expect("Redis")
        .pool_size;
    // Each pooled connection: its socket.
    assert_eq!(embedded - one, pool + REDIS_EXTRA_FILES);
    assert_eq!(
        embedded - cluster,
        2 * ssegate_broker::CLUSTER_PRIMARIES_BUDGETED + REDIS_EXTRA_FILES
    );
    assert_eq!(cluster - waiting, pool);
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

#[test]
fn help_exits_zero_and_lists_every_setting_with_its_default() {
    let (code, msg) = code(load_args(&["--help"]));
    assert_eq!(code, 0);
    for (flag, env, _) in declared() {
        assert!(msg.contains(&flag), "{flag}");
        assert!(msg.contains(&env), "{env}");
    }
    assert!(msg.contains("[default: 15s]"));
}

#[test]
fn file_values_apply_and_flags_win() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ssegate.toml");
    std::fs::write(
        &path,
        "heartbeat_interval = \"2s\"\nhistory_max_len = 50\nretry = \"1s\"\nlog_format = \"json\"\n",
    )
    .unwrap();
    let p = path.to_str().unwrap();
    let c = load_args(&["--config", p, "--retry", "5s"]).unwrap();
    assert_eq!(c.settings.heartbeat_interval, Duration::from_secs(2));
    assert_eq!(c.settings.history.max_len, 50);
    assert_eq!(c.settings.retry, Duration::from_secs(5));
    assert_eq!(c.log.format, LogFormat::Json);
    // A file value passes the flag's rule.
    std::fs::write(&path, "history_max_len = 0\n").unwrap();
    assert_eq!(code_of(&["--config", p]), EXIT_USAGE);
    std::fs::write(&path, "no_such_key = 1\n").unwrap();
    assert_eq!(code_of(&["--config", p]), EXIT_USAGE);
    std::fs::write(&path, "config = \"other.toml\"\n").unwrap();
    assert_eq!(code_of(&["--config", p]), EXIT_USAGE);
    std::fs::write(&path, "heartbeat_interval = [1]\n").unwrap();
    assert_eq!(code_of(&["--config", p]), EXIT_USAGE);
    assert_eq!(
        code_of(&["--config", "/nonexistent/ssegate.toml"]),
        EXIT_USAGE
    );
}

#[test]
fn sentinels_make_cluster_mode_and_carry_their_own_credentials() {
    let s = load_args(&[
        "--redis-sentinels",
        "10.0.0.1:26379, [::1]:26380",
        "--redis-sentinel-password",
        "s3cret",
        "--publish-min-replicas",
        "1",
    ])
    .unwrap()
    .settings;
    let redis = s.redis.expect("sentinels alone make cluster mode");
    assert_eq!(
        redis.sentinels,
        vec![("10.0.0.1".to_owned(), 26379), ("::1".to_owned(), 26380)]
    );
    assert_eq!(redis.master_name, "mymaster");
    assert_eq!(redis.sentinel_password.as_deref(), Some("s3cret"));
    assert!(redis.url.is_none());
    assert_eq!(redis.min_replicas, 1);
    assert_eq!(redis.replica_timeout, Duration::from_millis(500));
}
