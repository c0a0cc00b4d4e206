//! Shared test plumbing: spawning nodes and talking to them.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use ssegate_client::{ConnectOptions, Connection, Event, HttpClient, Item};
use ssegate_server::{App, Settings};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

/// Upper bound for any single wait in a test: a hang fails instead of blocking CI.
pub const WAIT: Duration = Duration::from_secs(20);

pub struct TestApp {
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub http: HttpClient,
    /// The node's shared state, for waiting on its stream count.
    pub state: std::sync::Arc<ssegate_server::state::AppState>,
    shutdown: Option<oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<()>>,
}

/// Settings for a test node: loopback, both listeners (public and admin) on port 0, short
/// timings.
pub fn test_settings() -> Settings {
    Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: Some("127.0.0.1:0".parse().unwrap()),
        node_id: "test-node".into(),
        retry: Duration::from_millis(100),
        retry_jitter: Duration::from_millis(50),
        drain_window: Duration::from_millis(200),
        ..Settings::default()
    }
}

/// The authenticator of `settings`, for `Settings::auth` (built once, as the binary does).
pub fn built(
    settings: ssegate_server::auth::AuthSettings,
) -> std::sync::Arc<ssegate_server::auth::Auth> {
    std::sync::Arc::new(ssegate_server::auth::Auth::build(settings).expect("usable auth settings"))
}

/// Starts a node in this process with the default test settings changed by `tweak`.
pub async fn spawn_app_with(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = test_settings();
    tweak(&mut settings);
    let app = App::build(settings).await.expect("node starts");
    let addr = app.local_addr().unwrap();
    let admin = app.admin_addr();
    let state = app.state().clone();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        app.run(async {
            let _ = rx.await;
        })
        .await;
    });
    TestApp {
        addr,
        admin,
        http: HttpClient::new(),
        state,
        shutdown: Some(tx),
        task: Some(task),
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Publishes JSON `{"data": data}` to a channel and returns the event id.
    pub async fn publish(&self, channel: &str, data: &str) -> String {
        let body = serde_json::json!({ "data": data }).to_string();
        let res = self
            .http
            .post(
                &self.url(&format!("/v1/channels/{channel}/events")),
                "application/json",
                Bytes::from(body),
            )
            .await
            .unwrap();
        assert_eq!(res.status, StatusCode::CREATED, "{}", res.text());
        json(&res.body)["id"].as_str().unwrap().to_owned()
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> ssegate_client::Response {
        self.http
            .request(
                method,
                &self.url(path),
                headers,
                Bytes::from(body.to_owned()),
            )
            .await
            .unwrap()
    }

    /// Opens a stream; `last_id` is sent as `Last-Event-ID`.
    pub async fn stream(&self, path: &str, last_id: Option<&str>) -> Connection {
        let opts = ConnectOptions {
            last_event_id: last_id.map(str::to_owned),
            ..ConnectOptions::default()
        };
        let conn = Connection::open(&self.url(path), &opts).await.unwrap();
        assert_eq!(conn.status(), StatusCode::OK);
        conn
    }

    /// Stops the node (drain included) and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
        }
    }
}

pub fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

/// The `data` of each event of a history page, in order.
pub fn history_data(page: &serde_json::Value) -> Vec<&str> {
    let events = page["events"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    events.iter().filter_map(|e| e["data"].as_str()).collect()
}

/// The next item of a stream, failing the test on a hang.
pub async fn next_item(conn: &mut Connection) -> Option<Item> {
    tokio::time::timeout(WAIT, conn.next_item())
        .await
        .expect("stream stalled")
        .expect("stream failed")
}

/// The next `n` events of a stream (skipping comments and id-only frames).
pub async fn events(conn: &mut Connection, n: usize) -> Vec<Event> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match next_item(conn).await {
            Some(Item::Event(e)) => out.push(e),
            Some(_) => {}
            None => panic!("stream ended after {} of {n} events", out.len()),
        }
    }
    out
}

/// Reads the opening frame (`retry:` + id-only event) and returns the announced id.
///
/// Only for tests that assert on the opening frame itself (the id echoes the cursor, is
/// the current position, `retry:` comes first) or need its id as a value. Never use it
/// as a synchronisation point: a stream starts at its response head (see "Delivery
/// guarantees" in docs/api.md), [`TestApp::stream`] and `Connection::open` return once the
/// head has arrived, and no real client waits for this frame (a browser's `EventSource`
/// only reports `open`). Publish right after the head; [`events`] skips the id-only
/// frame later.
pub async fn opening_id(conn: &mut Connection) -> String {
    let mut saw_retry = false;
    loop {
        match next_item(conn).await {
            Some(Item::Retry(_)) => saw_retry = true,
            Some(Item::LastEventId(id)) => {
                assert!(saw_retry, "retry: comes first");
                return id;
            }
            other => panic!("unexpected opening item {other:?}"),
        }
    }
}

/// A real `ssegate` process.
pub struct TestProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub stderr_path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ssegate")
}

/// Starts the binary with `env` (on loopback port 0) and waits for its ready line.
pub async fn spawn_process(env: &[(&str, &str)]) -> TestProcess {
    spawn_process_under(&[], env).await
}

/// [`spawn_process`], run through `wrapper` (a program and its arguments that execs the
/// binary, e.g. `prlimit --nofile=256:256 --`), so that the process keeps its pid.
pub async fn spawn_process_under(wrapper: &[&str], env: &[(&str, &str)]) -> TestProcess {
    let dir = tempfile::tempdir().unwrap();
    let stderr_path = dir.path().join("stderr.log");
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let mut cmd = match wrapper.split_first() {
        Some((program, args)) => {
            let mut cmd = Command::new(program);
            cmd.args(args).arg(bin());
            cmd
        }
        None => Command::new(bin()),
    };
    cmd.env_clear()
        .env("SSEGATE_LISTEN", "127.0.0.1:0")
        .env("SSEGATE_ADMIN_LISTEN", "127.0.0.1:0")
        .env("SSEGATE_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    tokio::time::timeout(WAIT, BufReader::new(stdout).read_line(&mut line))
        .await
        .expect("ready line in time")
        .unwrap();
    let parse = |key: &str| -> Option<SocketAddr> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|v| v.parse().ok())
    };
    let Some(addr) = parse("http=") else {
        let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        let _ = child.start_kill();
        panic!("no ready line, got {line:?}; stderr:\n{log}");
    };
    TestProcess {
        child,
        addr,
        admin: parse("admin="),
        stderr_path,
        _dir: dir,
    }
}

impl TestProcess {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn signal(&self, sig: &str) {
        let pid = self.pid().to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("process still running")
    }

    /// Descriptors the process holds now.
    pub fn open_files(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map_or(0, Iterator::count)
    }

    /// Resident memory of the process in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Waits (bounded) for the process to exit and returns its status.
    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("process exits in time")
            .unwrap()
    }
}

/// Reads up to the next event, collecting the reasons of any `sync-required` before it.
pub async fn sync_reasons_then_event(conn: &mut Connection) -> (Vec<String>, Event) {
    let mut reasons = Vec::new();
    loop {
        match next_item(conn).await {
            Some(Item::Event(e)) if e.event == "sync-required" => {
                let data = json(e.data.as_bytes());
                reasons.push(data["reason"].as_str().unwrap_or_default().to_owned());
            }
            Some(Item::Event(e)) => return (reasons, e),
            Some(_) => {}
            None => panic!("stream ended before an event"),
        }
    }
}

/// Publishes one batch (`POST /v1/publish`) of `events` (`{"channel", "data"}` objects) to
/// a node and returns their ids; anything but `201` fails the test, with the node's log.
pub async fn publish_batch(node: &TestProcess, events: Vec<serde_json::Value>) -> Vec<String> {
    let body = serde_json::json!({ "events": events }).to_string();
    let res = HttpClient::new()
        .post(
            &node.url("/v1/publish"),
            "application/json",
            Bytes::from(body),
        )
        .await
        .unwrap();
    assert_eq!(
        res.status,
        StatusCode::CREATED,
        "{}\n{}",
        res.text(),
        node.stderr()
    );
    json(&res.body)["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}
