//! The binary's configuration surface: `--help`, exit status 64, precedence.

use std::process::Command;

use crate::helpers::{bin, spawn_process};

#[test]
fn help_lists_every_contract_setting_with_its_default() {
    let out = Command::new(bin()).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for (flag, env, default) in [
        ("--listen", "SSEGATE_LISTEN", "0.0.0.0:8080"),
        ("--admin-listen", "SSEGATE_ADMIN_LISTEN", "0.0.0.0:9090"),
        ("--redis-url", "SSEGATE_REDIS_URL", "unset"),
        ("--node-id", "SSEGATE_NODE_ID", "unset"),
        ("--heartbeat-interval", "SSEGATE_HEARTBEAT_INTERVAL", "15s"),
        ("--retry", "SSEGATE_RETRY", "3s"),
        ("--history-max-len", "SSEGATE_HISTORY_MAX_LEN", "10000"),
        ("--history-max-age", "SSEGATE_HISTORY_MAX_AGE", "1h"),
        ("--drain-window", "SSEGATE_DRAIN_WINDOW", "10s"),
        ("--max-connections", "SSEGATE_MAX_CONNECTIONS", "unset"),
        ("--auth-jwt-secret", "SSEGATE_AUTH_JWT_SECRET", "unset"),
        ("--publish-keys", "SSEGATE_PUBLISH_KEYS", "unset"),
        ("--cors-origins", "SSEGATE_CORS_ORIGINS", "unset"),
        ("--config", "SSEGATE_CONFIG", "unset"),
    ] {
        let line_start = help.find(flag).unwrap_or_else(|| panic!("{flag} missing"));
        let entry = &help[line_start..];
        let entry = &entry[..entry.find("\n  -").unwrap_or(entry.len())];
        let entry = entry.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(entry.contains(env), "{flag}: {entry}");
        assert!(
            entry.contains(&format!("[default: {default}]")),
            "{flag}: {entry}"
        );
    }
}

#[test]
fn invalid_configuration_exits_64_with_a_clear_message() {
    for (args, env, needle) in [
        (vec!["--retry", "fast"], vec![], "SSEGATE_RETRY"),
        (
            vec![],
            vec![("SSEGATE_HISTORY_MAX_LEN", "-1")],
            "SSEGATE_HISTORY_MAX_LEN",
        ),
        (vec!["--bogus"], vec![], "--bogus"),
        (
            vec![],
            vec![("SSEGATE_CONFIG", "/nonexistent.toml")],
            "/nonexistent.toml",
        ),
        (
            vec![],
            vec![("SSEGATE_AUTH_JWT_SECRET", "short-secret")],
            "SSEGATE_AUTH_JWT_SECRET",
        ),
    ] {
        let out = Command::new(bin())
            .env_clear()
            .envs(env)
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[tokio::test]
async fn flags_beat_environment_beats_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ssegate.toml");
    std::fs::write(
        &file,
        "node_id = \"from-file\"\nretry = \"7s\"\nheartbeat_interval = \"9s\"\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let node = spawn_process(&[
        ("SSEGATE_CONFIG", file),
        ("SSEGATE_NODE_ID", "from-env"),
        ("SSEGATE_RETRY_JITTER", "0s"),
    ])
    .await;
    let client = ssegate_client::HttpClient::new();
    let ready = client.get(&node.url("/readyz")).await.unwrap();
    assert!(
        ready.text().contains("\"node_id\":\"from-env\""),
        "env beats the file"
    );
    assert!(
        node.stderr().contains("node{id=from-env}"),
        "log lines carry the node id: {}",
        node.stderr()
    );
    let mut conn = ssegate_client::Connection::open(
        &node.url("/v1/channels/c/events"),
        &ssegate_client::ConnectOptions::default(),
    )
    .await
    .unwrap();
    crate::helpers::opening_id(&mut conn).await;
    assert_eq!(
        conn.retry_ms(),
        Some(7000),
        "the file applies where nothing overrides it"
    );
}
