//! TLS to Redis: a real `redis-server` with a TLS port and a certificate from a CA made
//! here with openssl. A node given `rediss://` and the CA (`SSL_CERT_FILE`) publishes and
//! streams through it; a node that does not trust the CA publishes nothing.

use std::path::Path;
use std::process::Command;

use http::StatusCode;
use ssegate_client::HttpClient;

use crate::cluster::{nodes_on, publish, stream};
use crate::helpers::events;
use crate::redis_server::{RedisServer, free_port};

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

#[tokio::test]
async fn a_node_reaches_redis_over_tls_and_checks_its_certificate() {
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path();
    ca(dir, "ca");
    ca(dir, "other");
    openssl(
        dir,
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
    std::fs::write(dir.join("ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        dir,
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
    let path = |f: &str| dir.join(f).to_str().unwrap().to_owned();
    let tls_port = free_port().to_string();
    let _redis = RedisServer::start_with(
        false,
        &[
            "--tls-port",
            &tls_port,
            "--tls-cert-file",
            &path("srv.pem"),
            "--tls-key-file",
            &path("srv.key"),
            "--tls-ca-cert-file",
            &path("ca.pem"),
            "--tls-auth-clients",
            "no",
        ],
    )
    .await;
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let http = HttpClient::new();

    let ca_file = path("ca.pem");
    let nodes = nodes_on(
        ("SSEGATE_REDIS_URL", &url),
        1,
        &[("SSL_CERT_FILE", &ca_file)],
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
    let other = path("other.pem");
    let untrusting = nodes_on(("SSEGATE_REDIS_URL", &url), 1, &[("SSL_CERT_FILE", &other)]).await;
    let (status, _) = publish(&http, &untrusting[0], "tls", "refused").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}
