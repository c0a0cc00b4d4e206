"""Shared plumbing of the deployment tests (run by scripts/test with pytest).

These tests check the deployment artifacts mechanically, without Docker or a Kubernetes
cluster (neither is available where the tests run): the Dockerfile is parsed and linted,
docker-compose.yml is validated by docker-compose itself, the Kubernetes manifests are built
with kustomize and validated against the Kubernetes schemas, the nginx templates are
rendered and checked by nginx, and scripts/cluster is run for real.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def run(cmd, **kw):
    """Runs a command (bounded in time), returning the CompletedProcess; never raises on a
    non-zero exit, so that tests can show its output in their assertion."""
    kw.setdefault("timeout", 120)
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def require_tool(name, hint):
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed ({hint}); scripts/test installs it")
    return path


def parse_duration(text):
    """Seconds of a human duration as the gateway takes them: 500ms, 15s, 10m, 1h."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*", str(text))
    assert m, f"not a duration: {text!r}"
    value, unit = float(m.group(1)), m.group(2)
    return value * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def render_template(text, values):
    """Replaces ${NAME} like envsubst (the official nginx image) and scripts/cluster do,
    and insists that no SSEGATE_LB_ variable is left over."""
    for name, value in values.items():
        text = text.replace("${" + name + "}", value)
    left = re.findall(r"\$\{SSEGATE_LB_[A-Z_]+\}", text)
    assert not left, f"unreplaced template variables: {left}"
    return text


def nginx_test(conf_dir, run_dir):
    """`nginx -t` on a rendered config directory; returns the CompletedProcess."""
    require_tool("nginx", "apt-get install nginx")
    return run(
        [
            "nginx", "-t", "-q",
            "-p", str(run_dir),
            "-c", str(Path(conf_dir) / "nginx.conf"),
            "-e", str(Path(run_dir) / "error.log"),
        ]
    )


def load_yaml_docs(text):
    return [d for d in yaml.safe_load_all(text) if d]
