"""scripts/cluster for real: it brings up Redis, three nodes and nginx (rendered from the
project's templates, with the TLS/HTTP2 listener), serves an event across nodes, survives a
SIGKILLed node and brings it back, and goes down leaving no process behind.

It runs on a non-default port range (so that it cannot clash with a developer's cluster on
8080) and in a temp state directory. SSEGATE_BIN, when set (scripts/test sets it to the
debug build), spares the script its own cargo build."""

import http.client
import json
import os
import selectors
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ROOT, require_tool, run

SCRIPT = ROOT / "scripts/cluster"
NODES = 3
DEADLINE_S = 20  # bound of any single wait


def port_free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def listening(port):
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def pick_base_port():
    """A base port whose whole range (nginx, nodes, admins, Redis, TLS) is free."""
    for base in range(28080, 40000, 97):
        ports = [base, base + 1000, base + 2000]
        ports += [base + k for k in range(1, NODES + 1)]
        ports += [base + 1000 + k for k in range(1, NODES + 1)]
        if all(port_free(p) for p in ports):
            return base
    pytest.fail("no free port range for the cluster")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    require_tool("redis-server", "apt-get install redis-server")
    require_tool("nginx", "apt-get install nginx")
    require_tool("curl", "apt-get install curl")
    state = tmp_path_factory.mktemp("cluster")
    base = pick_base_port()
    env = dict(
        os.environ,
        SSEGATE_CLUSTER_DIR=str(state),
        SSEGATE_CLUSTER_PORT=str(base),
        SSEGATE_CLUSTER_TLS_PORT=str(base + 2000),
        SSEGATE_CLUSTER_NODES=str(NODES),
    )

    def cli(*args, timeout=120):
        return run([str(SCRIPT), *args], env=env, cwd=ROOT, timeout=timeout)

    c = {"cli": cli, "state": state, "base": base, "tls": base + 2000}
    # May build ssegate first when SSEGATE_BIN is not set.
    up = cli("up", timeout=900)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield c
    finally:
        cli("down")


def node_port(c, k):
    return c["base"] + k


def admin_port(c, k):
    return c["base"] + 1000 + k


def get(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=DEADLINE_S)
    conn.request("GET", path)
    res = conn.getresponse()
    body = res.read()
    conn.close()
    return res, body


def publish(port, channel, data):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=DEADLINE_S)
    conn.request(
        "POST",
        f"/v1/channels/{channel}/events",
        body=json.dumps({"data": data}),
        headers={"Content-Type": "application/json"},
    )
    res = conn.getresponse()
    body = json.loads(res.read())
    conn.close()
    assert res.status == 201, body
    return body["id"]


class Stream:
    """An SSE stream read line by line, every read bounded by the socket timeout."""

    def __init__(self, port, path):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=DEADLINE_S)
        self.conn.request("GET", path, headers={"Accept": "text/event-stream"})
        self.res = self.conn.getresponse()
        assert self.res.status == 200
        assert self.res.getheader("Content-Type") == "text/event-stream"

    def line(self):
        raw = self.res.readline()
        assert raw, "the stream ended"
        return raw.decode().rstrip("\n")

    def opened(self):
        """Reads the opening frame (retry: and the id-only event)."""
        lines = []
        while True:
            line = self.line()
            if not line and any(l.startswith("id:") for l in lines):
                return
            lines.append(line)

    def next_data(self):
        """The data of the next event, skipping heartbeats and other lines."""
        while True:
            line = self.line()
            if line.startswith("data: "):
                return line.removeprefix("data: ")

    def close(self):
        self.conn.close()


def test_status_reports_everything_running(cluster):
    status = cluster["cli"]("status")
    assert status.returncode == 0, status.stdout + status.stderr
    for name in ["redis", "node1", "node2", "node3", "nginx"]:
        assert any(l.startswith(name) and "running" in l for l in status.stdout.splitlines()), (
            status.stdout
        )
    # Later commands reuse the settings "up" recorded: only the state directory is needed.
    bare = {k: v for k, v in os.environ.items() if not k.startswith("SSEGATE_CLUSTER_")}
    bare["SSEGATE_CLUSTER_DIR"] = str(cluster["state"])
    again = run([str(SCRIPT), "status"], env=bare, cwd=ROOT)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"http://127.0.0.1:{cluster['base']} https://127.0.0.1:{cluster['tls']}" in again.stdout
    # Each node is on the shared Redis and names itself.
    for k in range(1, NODES + 1):
        res, body = get(admin_port(cluster, k), "/readyz")
        ready = json.loads(body)
        assert res.status == 200 and ready["node_id"] == f"node{k}" and ready["broker"] == "redis"


def test_an_event_crosses_nodes_directly_and_through_nginx(cluster):
    on_node2 = Stream(node_port(cluster, 2), "/v1/channels/cross/events")
    via_nginx = Stream(cluster["base"], "/v1/channels/cross/events")
    on_node2.opened()
    via_nginx.opened()
    publish(node_port(cluster, 1), "cross", "from node1")
    assert on_node2.next_data() == "from node1"
    assert via_nginx.next_data() == "from node1"
    on_node2.close()
    via_nginx.close()
    # The demo page through nginx.
    res, body = get(cluster["base"], "/")
    assert res.status == 200 and b"EventSource" in body


def test_tls_listener_speaks_http2_and_streams(cluster):
    url = f"https://127.0.0.1:{cluster['tls']}"
    # -k: the certificate is the self-signed one the script made.
    version = run(["curl", "-sk", "--http2", "-o", "/dev/null", "-w", "%{http_version}", url + "/"])
    assert version.stdout == "2", version.stdout + version.stderr
    curl = subprocess.Popen(
        ["curl", "-skN", "--http2", "--max-time", str(DEADLINE_S), url + "/v1/channels/tls/events"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        lines = read_lines_until(curl.stdout, lambda l: l.startswith("id:"))
        publish(cluster["base"], "tls", "over h2")
        lines = read_lines_until(curl.stdout, lambda l: l == "data: over h2")
        assert lines[-1] == "data: over h2"
    finally:
        curl.kill()
        curl.wait()


def publish_with_origin(port, host, origin):
    """A browser's same-origin publish: Host and Origin as a browser sends them."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=DEADLINE_S)
    conn.request(
        "POST",
        "/v1/channels/origin/events",
        body=json.dumps({"data": "same origin"}),
        headers={"Content-Type": "application/json", "Host": host, "Origin": origin},
    )
    res = conn.getresponse()
    body = res.read()
    conn.close()
    return res.status, body


def test_same_origin_publish_through_nginx_keeps_the_port(cluster):
    # A page from http://localhost:PORT/ (the demo page) POSTs with that Origin; nginx must
    # hand the node the Host with its port, or the node's same-origin check says 403.
    base = cluster["base"]
    for host in [f"localhost:{base}", f"127.0.0.1:{base}"]:
        status, body = publish_with_origin(base, host, f"http://{host}")
        assert status == 201, body
    # Still a check: another port is another origin.
    status, body = publish_with_origin(base, f"localhost:{base}", f"http://localhost:{base + 1}")
    assert status == 403 and b"origin_not_allowed" in body, body
    # The same over the TLS listener (HTTP/2: the browser's :authority is the Host).
    tls = cluster["tls"]
    for flag, want in [("--http2", "2 201"), ("--http1.1", "1.1 201")]:
        result = run(
            ["curl", "-sk", flag, "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
             "-H", f"Origin: https://localhost:{tls}", "--resolve", f"localhost:{tls}:127.0.0.1",
             "-H", "Content-Type: application/json", "-d", '{"data": "same origin, TLS"}',
             f"https://localhost:{tls}/v1/channels/origin/events"]
        )
        assert result.stdout == want, result.stdout + result.stderr


def read_lines_until(pipe, done):
    """Lines from a pipe until `done(line)`, failing after DEADLINE_S."""
    sel = selectors.DefaultSelector()
    sel.register(pipe, selectors.EVENT_READ)
    deadline = time.monotonic() + DEADLINE_S
    lines = []
    while True:
        left = deadline - time.monotonic()
        assert left > 0 and sel.select(timeout=left), f"timed out; got {lines}"
        line = pipe.readline()
        assert line, f"the stream ended; got {lines}"
        lines.append(line.rstrip("\n"))
        if done(lines[-1]):
            return lines


def test_the_metrics_overlay_scrape_target_answers(cluster):
    # k8s/overlays/metrics points Prometheus at the admin port's /metrics.
    res, body = get(admin_port(cluster, 1), "/metrics")
    assert res.status == 200 and b"ssegate_connections_open" in body


def test_kill_and_start_a_node(cluster):
    cli = cluster["cli"]
    killed = cli("kill", "node2")
    assert killed.returncode == 0, killed.stderr
    status = cli("status")
    assert status.returncode != 0, "status says not everything runs"
    assert any(l.startswith("node2") and "stopped" in l for l in status.stdout.splitlines())
    # nginx moves connection attempts off the dead node.
    for i in range(4):
        s = Stream(cluster["base"], "/v1/channels/k/events")
        s.opened()
        publish(cluster["base"], "k", f"k{i}")
        assert s.next_data() == f"k{i}"
        s.close()
    assert cli("kill", "node9").returncode != 0, "unknown nodes are refused"
    started = cli("start", "node2")
    assert started.returncode == 0, started.stdout + started.stderr
    assert cli("status").returncode == 0
    res, _ = get(node_port(cluster, 2), "/readyz")
    assert res.status == 200


def live_processes_of(state):
    """Processes (not zombies) whose working directory or command line is in `state`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            stat = (proc / "stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                continue  # dead, merely not reaped yet
            cwd = os.readlink(proc / "cwd")
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if cwd == str(state) or cwd.startswith(str(state) + "/") or str(state) in cmdline:
            found.append(f"{proc.name}: {cmdline}")
    return found


def test_down_leaves_no_process_behind(cluster):
    # The last test that uses the cluster (pytest runs a module's tests in file order).
    assert live_processes_of(cluster["state"]), "the cluster's processes are found while up"
    down = cluster["cli"]("down", timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert live_processes_of(cluster["state"]) == []
    for port in [cluster["base"], cluster["tls"], cluster["base"] + 1000] + [
        node_port(cluster, k) for k in range(1, NODES + 1)
    ]:
        assert not listening(port), f"something still listens on {port}"
    status = cluster["cli"]("status")
    assert status.returncode != 0 and "running" not in status.stdout


def test_usage_is_printed_for_an_unknown_command():
    state = Path("/nonexistent/ssegate-cluster-usage-test")
    result = run([str(SCRIPT), "bogus"], env=dict(os.environ, SSEGATE_CLUSTER_DIR=str(state)))
    assert result.returncode == 2 and "scripts/cluster up" in result.stdout
    assert not state.exists(), "only up and start create the state directory"


def test_up_with_sentinel_follows_a_primary_crash(tmp_path):
    """`up --sentinel`: a primary, a replica and three sentinels; the nodes find the primary
    through the sentinels. A SIGKILL of the primary: a stream through nginx stays open and
    gets the events published once the replica is promoted; `start redis` brings the old
    primary back (the sentinels make it a replica); `down` leaves nothing behind."""
    require_tool("redis-server", "apt-get install redis-server")
    require_tool("nginx", "apt-get install nginx")
    base = pick_base_port()
    env = dict(
        os.environ,
        SSEGATE_CLUSTER_DIR=str(tmp_path / "cluster"),
        SSEGATE_CLUSTER_PORT=str(base),
        SSEGATE_CLUSTER_NODES="2",
    )
    env.pop("SSEGATE_CLUSTER_TLS_PORT", None)

    def cli(*args, timeout=120):
        return run([str(SCRIPT), *args], env=env, cwd=ROOT, timeout=timeout)

    up = cli("up", "--sentinel", timeout=900)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        status = cli("status")
        for name in ("redis-replica", "sentinel1", "sentinel2", "sentinel3"):
            assert f"{name}" in status.stdout and "running" in status.stdout, status.stdout
        stream = Stream(base, "/v1/channels/ha/events")
        publish(base, "ha", "before")
        assert stream.next_data() == "before"
        # The replica has everything before the crash (else the new primary would rightly
        # answer with sync-required: it lost data).
        synced = run(["redis-cli", "-p", str(base + 1000), "WAIT", "1", "5000"], cwd=ROOT)
        assert synced.stdout.strip() == "1", synced.stdout + synced.stderr
        assert cli("kill", "redis").returncode == 0
        # Publishing answers 503 until the sentinels promote the replica (bounded).
        deadline = time.monotonic() + 30
        while True:
            conn = http.client.HTTPConnection("127.0.0.1", base, timeout=DEADLINE_S)
            conn.request("POST", "/v1/channels/ha/events", body=json.dumps({"data": "after"}),
                         headers={"Content-Type": "application/json", "Idempotency-Key": "after"})
            res = conn.getresponse()
            res.read()
            conn.close()
            if res.status == 201:
                break
            assert res.status in (503, 504), res.status
            assert time.monotonic() < deadline, "publishing never resumed"
            time.sleep(0.2)
        assert stream.next_data() == "after", "the open stream followed the new primary"
        stream.close()
        assert cli("start", "redis").returncode == 0
    finally:
        down = cli("down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert "stopped" in cli("status").stdout
