"""The nginx templates, read as text: the settings SSE depends on are where they must be.
(Their behaviour is tested for real in crates/ssegate/tests/it/lb.rs, in front of real
nodes; scripts/cluster and the Compose test run `nginx -t` on rendered copies.)"""

import re

from conftest import ROOT, parse_duration

NGINX = ROOT / "nginx"
DEFAULT_HEARTBEAT_S = 15


def directives(text):
    """Directive lines without comments, whitespace collapsed."""
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(" ".join(line.split()))
    return out


def block(text, opener):
    """The lines of the `{ ... }` block whose opening line starts with `opener`."""
    lines = directives(text)
    start = next(i for i, l in enumerate(lines) if l.startswith(opener) and l.endswith("{"))
    depth, body = 0, []
    for line in lines[start:]:
        depth += line.count("{") - line.count("}")
        body.append(line)
        if depth == 0:
            return body
    raise AssertionError(f"unterminated block {opener}")


def test_upstream_balances_by_connections_without_stickiness():
    upstream = block((NGINX / "ssegate.conf.template").read_text(), "upstream ssegate")
    assert "least_conn;" in upstream
    assert any(l.startswith("zone ") for l in upstream), "shared state across workers"
    assert any(l.startswith("keepalive ") for l in upstream)
    for sticky in ["ip_hash", "hash ", "sticky"]:
        assert not any(l.startswith(sticky) for l in upstream), sticky


def test_streams_are_unbuffered_uncompressed_and_outlive_heartbeats():
    proxy = (NGINX / "ssegate-proxy.conf").read_text()
    stream = block(proxy, "location ~ ^/v1/(channels/[^/]+/)?events$")
    for setting in ["proxy_buffering off;", "proxy_cache off;", "gzip off;"]:
        assert setting in stream, setting
    (timeout,) = [l.split()[1].rstrip(";") for l in stream if l.startswith("proxy_read_timeout")]
    assert parse_duration(timeout) >= 3 * DEFAULT_HEARTBEAT_S
    assert "proxy_next_upstream error timeout http_502 http_503;" in stream
    # Everywhere else a 5xx answer is not a node failure (see the file's comments).
    top = directives(proxy)
    assert "proxy_next_upstream error timeout;" in top
    assert "proxy_http_version 1.1;" in top and 'proxy_set_header Connection "";' in top
    for header in ["X-Forwarded-For", "X-Forwarded-Proto", "X-Real-IP"]:
        assert any(l.startswith(f"proxy_set_header {header} ") for l in top), header
    assert not any("non_idempotent" in l for l in top), "POSTs are not resent by nginx"
    # The nodes get the Host the browser sent, port included: their same-origin check
    # compares it with Origin ("http://localhost:8080"); nginx's $host has no port.
    assert "proxy_set_header Host $ssegate_host;" in top
    assert "proxy_set_header X-Forwarded-Host $ssegate_host;" in top
    assert not any(l.startswith("proxy_set_header") and "$host" in l for l in top)
    host_map = block((NGINX / "ssegate.conf.template").read_text(), "map $http_host $ssegate_host")
    assert "default $http_host;" in host_map and '"" $host;' in host_map
    # No location sets its own headers (that would drop the inherited ones).
    assert sum(l.startswith("proxy_set_header") for l in stream) == 0


def test_event_streams_are_never_gzip_compressed():
    conf = directives((NGINX / "ssegate.conf.template").read_text())
    (types,) = [l for l in conf if l.startswith("gzip_types")]
    assert "text/event-stream" not in types


def test_every_listener_proxies_the_same_way():
    for name in ["ssegate.conf.template", "ssegate-tls.conf.template"]:
        server = block((NGINX / name).read_text(), "server")
        assert "include ssegate-proxy.conf;" in server, name
    tls = block((NGINX / "ssegate-tls.conf.template").read_text(), "server")
    assert any(re.match(r"listen \S+ ssl http2;", l) for l in tls), "HTTP/2 for browsers"


def test_body_limit_matches_the_gateway_default():
    proxy = directives((NGINX / "ssegate-proxy.conf").read_text())
    assert "client_max_body_size 1m;" in proxy  # SSEGATE_MAX_BODY_SIZE's default, 1 MiB
    assert "error_page 413 @body_too_large;" in proxy


def test_reloads_do_not_keep_old_workers_forever():
    main = directives((NGINX / "nginx.conf.template").read_text())
    assert any(l.startswith("worker_shutdown_timeout ") for l in main)
    # The official image adds "daemon off;" itself: a second one would not start.
    assert not any(l.startswith("daemon ") or l.startswith("user ") for l in main)
