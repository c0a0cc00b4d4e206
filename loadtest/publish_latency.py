#!/usr/bin/env python3
"""Publish latency with and without SSEGATE_PUBLISH_MIN_REPLICAS, in one run.

Starts a Redis primary and a replica on loopback, then for each setting a fresh gateway
node on them, and sends N sequential publishes over one keep-alive connection, timing each
(client side: request written to 201 read). Prints p50 / p90 / p99 / mean per setting and
the ratio, plus the node's own mean from ssegate_publish_duration_seconds (request
received to broker acknowledged). Everything stays on 127.0.0.1 and stops by itself.

Usage: loadtest/publish_latency.py SSEGATE_BINARY [N]   (N = 2000 publishes per setting)
"""

import http.client
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, deadline_s=20):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def redis(port, tmp, *extra):
    return subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "yes", "--appendfsync", "everysec", "--dir", tmp, *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def node(binary, redis_port, env_extra):
    port, admin = free_port(), free_port()
    env = dict(os.environ, SSEGATE_LISTEN=f"127.0.0.1:{port}", SSEGATE_ADMIN_LISTEN=f"127.0.0.1:{admin}",
               SSEGATE_REDIS_URL=f"redis://127.0.0.1:{redis_port}", SSEGATE_LOG="warn", **env_extra)
    proc = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port, admin


def measure(port, n, label):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    times = []
    for i in range(n + 50):
        body = json.dumps({"data": f"{label}-{i}"})
        t0 = time.perf_counter()
        conn.request("POST", "/v1/channels/lat/events", body=body,
                     headers={"Content-Type": "application/json"})
        res = conn.getresponse()
        res.read()
        dt = time.perf_counter() - t0
        if res.status != 201:
            raise SystemExit(f"{label}: publish {i} answered {res.status}")
        if i >= 50:  # warm-up
            times.append(dt * 1000)
    conn.close()
    return times


def node_mean_ms(admin):
    conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    s = float(re.search(r"^ssegate_publish_duration_seconds_sum (\S+)", text, re.M).group(1))
    c = float(re.search(r"^ssegate_publish_duration_seconds_count (\S+)", text, re.M).group(1))
    return s / c * 1000


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def main():
    binary = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        p1, p2 = free_port(), free_port()
        primary = redis(p1, a)
        wait_port(p1)
        replica = redis(p2, b, "--replicaof", "127.0.0.1", str(p1))
        wait_port(p2)
        # The replica's first full sync: until the primary reports it online.
        end = time.monotonic() + 20
        while b"state=online" not in subprocess.run(
                ["redis-cli", "-p", str(p1), "INFO", "replication"], capture_output=True).stdout:
            if time.monotonic() > end:
                raise SystemExit("the replica never came online")
            time.sleep(0.05)
        rows = []
        try:
            for label, extra in [("min_replicas=0", {}), ("min_replicas=1", {"SSEGATE_PUBLISH_MIN_REPLICAS": "1"})]:
                proc, port, admin = node(binary, p1, extra)
                try:
                    times = measure(port, n, label)
                    rows.append((label, pct(times, 0.5), pct(times, 0.9), pct(times, 0.99),
                                 statistics.mean(times), node_mean_ms(admin)))
                finally:
                    proc.terminate()
                    proc.wait(timeout=20)
        finally:
            for p in (replica, primary):
                p.terminate()
                p.wait(timeout=20)
    print(f"{n} sequential publishes per setting, one keep-alive connection, primary + 1 replica on loopback")
    print("| setting | p50 ms | p90 ms | p99 ms | mean ms | node's mean ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:.3f} | {r[2]:.3f} | {r[3]:.3f} | {r[4]:.3f} | {r[5]:.3f} |")
    print(f"ratio of means (min_replicas=1 / 0): {rows[1][4] / rows[0][4]:.2f}")


if __name__ == "__main__":
    main()
