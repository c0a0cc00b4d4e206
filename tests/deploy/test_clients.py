"""Python SSE clients as docs/clients.md tells to use them (the snippets of
tests/deploy/clients/, which docs/clients.md shows verbatim) against scripts/cluster
(Redis, three nodes, nginx in front) while a publisher goes on and nodes are drained,
SIGKILLed and started again: every event exactly once, in order, no sync-required.
httpx-sse and sseclient-py, each with the reconnect loop it needs."""

import http.client
import json
import sys
import threading
import time
import uuid

from conftest import ROOT
from test_cluster_script import DEADLINE_S, cluster  # noqa: F401 (the fixture)

sys.path.insert(0, str(ROOT / "tests/deploy/clients"))
import httpx_sse_follow  # noqa: E402
import pytest  # noqa: E402
import sseclient  # noqa: E402
import sseclient_follow  # noqa: E402


def publish_until_created(port, channel, data):
    """Retries with the same Idempotency-Key until 201: nodes restarting is the point."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request(
                "POST",
                f"/v1/channels/{channel}/events",
                body=json.dumps({"data": data}),
                headers={"Content-Type": "application/json", "Idempotency-Key": f"{channel}-{data}"},
            )
            status = conn.getresponse().status
            conn.close()
            if status == 201:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{data} was never published")


class Recorder:
    def __init__(self):
        self.got, self.syncs, self.opens = [], [], 0
        self.opened = threading.Event()

    def on_open(self):
        self.opens += 1
        self.opened.set()


@pytest.mark.parametrize("client", [httpx_sse_follow, sseclient_follow], ids=["httpx-sse", "sseclient-py"])
def test_python_clients_keep_every_event_through_drains_and_kills(cluster, client):  # noqa: F811
    port = cluster["base"]
    channel = f"py-{uuid.uuid4().hex[:8]}"
    url = f"http://127.0.0.1:{port}/v1/channels/{channel}/events"
    done = threading.Event()
    clients = [Recorder() for _ in range(3)]
    for rec in clients:
        threading.Thread(
            target=client.follow,
            args=(url, lambda d, _id, r=rec: r.got.append(d), rec.syncs.append),
            kwargs={"on_open": rec.on_open, "stop": done.is_set},
            daemon=True,
        ).start()
    for rec in clients:
        assert rec.opened.wait(DEADLINE_S), "a client never opened"

    published, stop = [], threading.Event()

    def publisher():
        i = 0
        while not stop.is_set():
            publish_until_created(port, channel, f"e{i}")
            published.append(f"e{i}")
            i += 1
            time.sleep(0.05)

    pub = threading.Thread(target=publisher)
    pub.start()
    try:
        for how, node in [("stop", "node1"), ("kill", "node2"), ("stop", "node3"), ("kill", "node1")]:
            for step in (how, "start"):
                done_ = cluster["cli"](step, node)
                log = cluster["state"] / "logs" / f"{node}.log"
                tail = log.read_text()[-3000:] if log.exists() else ""
                assert done_.returncode == 0, f"{step} {node}: {done_.stderr}\n{node}.log:\n{tail}"
    finally:
        stop.set()
        pub.join()
    publish_until_created(port, channel, "last")
    published.append("last")
    deadline = time.monotonic() + DEADLINE_S
    while not all("last" in c.got for c in clients):
        assert time.monotonic() < deadline, "a client never got the last event"
        time.sleep(0.05)
    done.set()
    for k, c in enumerate(clients):
        assert c.syncs == [], f"client {k}: nothing was lost to announce"
        assert c.got == published, f"client {k}: every event exactly once, in order"
    assert any(c.opens > 1 for c in clients), "the faults reached the clients"


def test_sseclient_py_never_sees_the_opening_id():
    """What docs/clients.md says of it: a frame without data is not dispatched, so the id
    of the frame a stream opens with is lost (the next event without an id has none)."""
    frames = [b"id: e1-5-0\n\n", b": hb\n\n", b"data: x\n\n"]
    events = list(sseclient.SSEClient(iter(frames)).events())
    assert [(e.id, e.data) for e in events] == [(None, "x")]


@pytest.mark.parametrize("snippet", ["httpx_sse_follow.py", "sseclient_follow.py"])
def test_docs_show_the_python_snippets_verbatim(snippet):
    doc = (ROOT / "docs/clients.md").read_text()
    text = (ROOT / "tests/deploy/clients" / snippet).read_text()
    assert text in doc, f"docs/clients.md lacks tests/deploy/clients/{snippet} as it is"
