//! TLS to Redis: real `redis-server`s with a TLS port and a certificate from a CA made
//! here with openssl. A node given `rediss://` and the CA (`SSL_CERT_FILE`) publishes and
//! streams through it; a node that does not trust the CA publishes nothing; behind TLS
//! sentinels, a failover is followed as without TLS; a Redis Cluster whose nodes talk TLS
//! (to clients, to each other, to their replicas) is routed over TLS, and one that requires
//! a password is reached with the credentials of `SSEGATE_REDIS_URL` on every connection.

use std::path::{Path, PathBuf};
use std::process::Command;

use http::StatusCode;
use ssegate_client::HttpClient;

use crate::cluster::{nodes_on, publish, stream};
use crate::helpers::events;
use crate::redis_cluster::RedisCluster;
use crate::redis_server::{RedisServer, free_port};
use crate::sentinel::{Sentinels, nodes as sentinel_nodes, survives};

/// Runs openssl in `dir`, failing the test on an error.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed (scripts/test installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA named `name` (`name.pem`, `name.key`) in `dir`.
fn ca(dir: &Path, name: &str) {
    let (pem, key) = (format!("{name}.pem"), format!("{name}.key"));
    let subj = format!("/CN={name}");
    openssl(
        dir,
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &pem,
            "-days", "2", "-subj", &subj,
        ],
    );
}

/// A CA and a server certificate for `127.0.0.1` that it signed, in a directory that lives
/// as long as this does.
pub struct TlsFiles {
    pub ca: String,
    cert: String,
    key: String,
    dir: tempfile::TempDir,
}

impl TlsFiles {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        ca(d, "ca");
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "srv.key",
                "-out",
                "srv.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        );
        std::fs::write(d.join("ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "srv.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "srv.pem",
                "-days",
                "2",
                "-extfile",
                "ext",
            ],
        );
        let path = |f: &str| -> String { d.join(f).to_str().unwrap().to_owned() };
        Self {
            ca: path("ca.pem"),
            cert: path("srv.pem"),
            key: path("srv.key"),
            dir,
        }
    }

    /// The directory the files are in (for more of them).
    fn dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    /// `redis-server` arguments for a TLS port with this certificate; clients are not
    /// asked for one, and replication uses TLS too.
    pub fn server_args(&self, tls_port: u16) -> Vec<String> {
        [
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            &self.cert,
            "--tls-key-file",
            &self.key,
            "--tls-ca-cert-file",
            &self.ca,
            "--tls-auth-clients",
            "no",
            "--tls-replication",
            "yes",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// The same as sentinel configuration lines: a sentinel then listens for TLS, reaches
    /// the data nodes and the other sentinels over TLS, and announces its TLS port.
    pub fn sentinel_conf(&self, tls_port: u16) -> String {
        format!(
            "tls-port {tls_port}\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\n\
             tls-auth-clients no\ntls-replication yes\n",
            self.cert, self.key, self.ca
        )
    }
}

#[tokio::test]
async fn a_node_reaches_redis_over_tls_and_checks_its_certificate() {
    let files = TlsFiles::new();
    ca(&files.dir(), "other");
    let tls_port = free_port();
    let args = files.server_args(tls_port);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _redis = RedisServer::start_with(false, &args).await;
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let http = HttpClient::new();

    let nodes = nodes_on(
        ("SSEGATE_REDIS_URL", &url),
        1,
        &[("SSL_CERT_FILE", &files.ca)],
    )
    .await;
    let mut sub = stream(&nodes[0], "/v1/channels/tls/events", None).await;
    let (status, id) = publish(&http, &nodes[0], "tls", "over tls").await;
    assert_eq!(status, StatusCode::CREATED);
    let got = events(&mut sub, 1).await;
    assert_eq!(
        (got[0].id.as_str(), got[0].data.as_str()),
        (id.as_str(), "over tls")
    );

    // Another CA: the handshake fails, so nothing is published (and the node says so).
    let other = files.dir().join("other.pem");
    let other = other.to_str().unwrap();
    let untrusting = nodes_on(("SSEGATE_REDIS_URL", &url), 1, &[("SSL_CERT_FILE", other)]).await;
    let (status, _) = publish(&http, &untrusting[0], "tls", "refused").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

/// Sentinels and data nodes that speak only TLS to the nodes: the sentinels are asked over
/// TLS (`SSEGATE_REDIS_SENTINEL_TLS`), the primary they name is reached over TLS (the
/// URL's `rediss://`), and a failover loses nothing acknowledged.
#[tokio::test]
async fn behind_tls_sentinels_a_failover_loses_nothing_acknowledged() {
    let files = TlsFiles::new();
    let mut set = Sentinels::start_with(Some(&files)).await;
    let nodes = sentinel_nodes(
        &set,
        2,
        &[
            ("SSEGATE_REDIS_SENTINEL_TLS", "true"),
            ("SSEGATE_REDIS_URL", "rediss://unused"),
            ("SSL_CERT_FILE", &files.ca),
            ("SSEGATE_PUBLISH_MIN_REPLICAS", "1"),
            ("SSEGATE_PUBLISH_REPLICA_TIMEOUT", "500ms"),
        ],
    )
    .await;
    // Without the setting, the TLS-only sentinel ports do not answer: nothing is published.
    let plain = sentinel_nodes(
        &set,
        1,
        &[
            ("SSEGATE_REDIS_URL", "rediss://unused"),
            ("SSL_CERT_FILE", &files.ca),
        ],
    )
    .await;
    let (status, _) = publish(&HttpClient::new(), &plain[0], "ha", "refused").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    drop(plain);
    survives(&mut set, "ha", &nodes, 0, true, async |set| {
        let old = set.primary_port().await;
        set.failover().await;
        set.wait_promoted(old).await;
    })
    .await;
}

/// A Redis Cluster on TLS (`tls-cluster yes`: its bus and replication too; the slot map a
/// TLS client reads names the TLS ports): nodes given only TLS seeds, `rediss://` and the
/// CA publish to channels on every primary, and resume them on another node.
#[tokio::test]
async fn on_a_tls_redis_cluster_nodes_route_over_tls() {
    let files = TlsFiles::new();
    let tls_ports: Vec<u16> = (0..6).map(|_| free_port()).collect();
    let cluster = RedisCluster::start_with(|k| {
        let mut args = files.server_args(tls_ports[k]);
        args.extend(["--tls-cluster", "yes"].map(str::to_owned));
        args
    })
    .await;
    let seeds = format!("127.0.0.1:{},127.0.0.1:{}", tls_ports[0], tls_ports[1]);
    let nodes = nodes_on(
        ("SSEGATE_REDIS_CLUSTER", &seeds),
        2,
        &[
            ("SSEGATE_REDIS_URL", "rediss://127.0.0.1"),
            ("SSL_CERT_FILE", &files.ca),
        ],
    )
    .await;
    let http = HttpClient::new();
    // Channels on different primaries (the names hash to slots all over the map).
    let mut owners = std::collections::HashSet::new();
    for ch in ["a", "b", "c", "news", "user:1", "user:2"] {
        owners.insert(cluster.owner(&format!("ssegate:{{{ch}}}:s")).await);
        let mut sub = stream(&nodes[1], &format!("/v1/channels/{ch}/events"), None).await;
        let (status, id) = publish(&http, &nodes[0], ch, "over tls").await;
        assert_eq!(status, StatusCode::CREATED, "{ch}: {id}");
        let got = events(&mut sub, 1).await;
        assert_eq!(
            (got[0].id.as_str(), got[0].data.as_str()),
            (id.as_str(), "over tls")
        );
    }
    assert!(
        owners.len() >= 2,
        "the channels cover several primaries: {owners:?}"
    );
}

/// What the default user of the password-protected cluster may do: what `redis-cli
/// --cluster create` and the test's own look-ups need (`CLUSTER`, `INFO`, `PING`), no key
/// and no channel. The gateway's user `gw` may do everything, and replicas authenticate as
/// it to their primaries.
const ACL: &[&str] = &[
    "--user",
    "default",
    "on",
    "nopass",
    "resetkeys",
    "resetchannels",
    "-@all",
    "+cluster",
    "+info",
    "+ping",
    "--user",
    "gw",
    "on",
    ">secret",
    "~*",
    "&*",
    "+@all",
    "--masteruser",
    "gw",
    "--masterauth",
    "secret",
];

/// A Redis Cluster that requires a password: nodes given it in `SSEGATE_REDIS_URL` publish
/// (scripts routed to every primary) and stream (sharded subscriptions on every primary,
/// which the default user could not make); a node without it publishes nothing (`503`,
/// and no subscriber ever sees the event).
#[tokio::test]
async fn on_a_redis_cluster_with_a_password_every_connection_authenticates() {
    let cluster = RedisCluster::start_with(|_| ACL.iter().map(|a| (*a).to_owned()).collect()).await;
    let redis = ("SSEGATE_REDIS_CLUSTER", cluster.seeds());
    let redis = (redis.0, redis.1.as_str());
    let nodes = nodes_on(
        redis,
        2,
        &[("SSEGATE_REDIS_URL", "redis://gw:secret@127.0.0.1")],
    )
    .await;
    let outsider = nodes_on(redis, 1, &[("SSEGATE_NODE_ID", "outsider")]).await;
    let http = HttpClient::new();
    let mut owners = std::collections::HashSet::new();
    for ch in ["a", "b", "c", "news", "user:1", "user:2"] {
        owners.insert(cluster.owner(&format!("ssegate:{{{ch}}}:s")).await);
        let mut sub = stream(&nodes[1], &format!("/v1/channels/{ch}/events"), None).await;
        let (status, body) = publish(&http, &outsider[0], ch, "no password").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ch}: {body}");
        let (status, id) = publish(&http, &nodes[0], ch, "with password").await;
        assert_eq!(status, StatusCode::CREATED, "{ch}: {id}");
        let got = events(&mut sub, 1).await;
        assert_eq!(
            (got[0].id.as_str(), got[0].data.as_str()),
            (id.as_str(), "with password")
        );
    }
    assert!(
        owners.len() >= 2,
        "the channels cover several primaries: {owners:?}"
    );
}
