"""docker-compose.yml, validated by Debian's docker-compose (1.29: `config` works offline,
without an engine), then checked for what the cluster needs: Redis with AOF on a volume,
three distinct gateway nodes on that Redis, nginx in front on 8080 with the project's own
templates, health checks everywhere and start-up ordered by health. The nginx templates are
then rendered exactly as the nginx container renders them and checked with `nginx -t`."""

import re
import shutil

import pytest
import yaml

from conftest import ROOT, nginx_test, parse_duration, render_template, require_tool, run

NODES = ["node1", "node2", "node3"]


@pytest.fixture(scope="module")
def compose():
    """The configuration as docker-compose resolves it (anchors merged, paths absolute)."""
    exe = require_tool("docker-compose", "apt-get install docker-compose")
    quiet = run([exe, "config", "-q"], cwd=ROOT)
    assert quiet.returncode == 0, quiet.stderr
    full = run([exe, "config"], cwd=ROOT)
    assert full.returncode == 0, full.stderr
    return yaml.safe_load(full.stdout)


def volumes_of(service):
    """(source, target) of each volume, in either of compose's notations."""
    out = []
    for v in service.get("volumes", []):
        if isinstance(v, str):
            parts = v.split(":")
            out.append((parts[0], parts[1]))
        else:
            out.append((v.get("source"), v["target"]))
    return out


MONITORING = {"prometheus", "grafana"}
SENTINEL = {"redis-replica", "sentinel1", "sentinel2", "sentinel3"}
REDIS_CLUSTER = {f"redis-cluster{i}" for i in range(1, 7)}


def test_services(compose):
    assert set(compose["services"]) == {
        "redis", "nginx", *NODES, *MONITORING, *SENTINEL, *REDIS_CLUSTER, "redis-cluster-init"
    }
    for name in MONITORING:
        assert compose["services"][name].get("profiles") == ["monitoring"], name
    for name in SENTINEL:
        assert compose["services"][name].get("profiles") == ["sentinel"], name
    for name in [*REDIS_CLUSTER, "redis-cluster-init"]:
        assert compose["services"][name].get("profiles") == ["redis-cluster"], name


def test_the_redis_cluster_profile_forms_a_cluster_the_nodes_can_use(compose):
    services = compose["services"]
    volumes = compose.get("volumes", {})
    for name in REDIS_CLUSTER:
        node = services[name]
        script = " ".join(node["command"])
        assert "--cluster-enabled yes" in script, script
        # Reached by name: a container's IP changes when it restarts.
        assert node["hostname"] == name
        assert "--cluster-preferred-endpoint-type hostname" in script, script
        assert "--appendonly yes" in script and "--maxmemory-policy noeviction" in script
        # nodes.conf (the node's identity in the cluster) survives a restart.
        mounts = dict((target, source) for source, target in volumes_of(node))
        assert mounts.get("/data") in volumes, name
    init = services["redis-cluster-init"]
    script = " ".join(init["command"])
    # 3 primaries, one replica each; a formed cluster is left alone.
    assert "--cluster create" in script and "--cluster-replicas 1" in script, script
    assert all(f"{name}:6379" in script for name in REDIS_CLUSTER), script
    assert script.index("cluster_state:ok") < script.index("--cluster create"), script
    assert set(init["depends_on"]) == REDIS_CLUSTER
    assert "cluster_state:ok" in " ".join(init["healthcheck"]["test"])
    for node in NODES:
        # Empty unless the profile's variable is set (the top of the file shows it).
        assert "SSEGATE_REDIS_CLUSTER" in services[node]["environment"]
    usage = (ROOT / "docker-compose.yml").read_text()
    seeds = re.search(r"SSEGATE_REDIS_CLUSTER=(\S+)", usage).group(1).split(",")
    assert seeds and all(s.split(":")[0] in REDIS_CLUSTER and s.endswith(":6379") for s in seeds), seeds


def test_the_sentinel_profile_watches_redis_and_the_nodes_can_follow_it(compose):
    services = compose["services"]
    replica = services["redis-replica"]["command"]
    assert replica[:3] == ["redis-server", "--replicaof", "redis"], replica
    for name in ("sentinel1", "sentinel2", "sentinel3"):
        script = " ".join(services[name]["command"])
        assert "sentinel monitor mymaster redis 6379 2" in script, script
        assert "--sentinel" in script
    for node in NODES:
        env = services[node]["environment"]
        # Empty unless the sentinel profile's variable is set: empty counts as unset.
        assert "SSEGATE_REDIS_SENTINELS" in env, env


def test_prometheus_scrapes_every_node_and_grafana_shows_the_dashboard(compose):
    prom = yaml.safe_load((ROOT / "deploy/monitoring/prometheus.yml").read_text())
    targets = {t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    admin = {f"{node}:9090" for node in NODES}
    assert targets == admin, targets
    assert all(job["metrics_path"] == "/metrics" for job in prom["scrape_configs"])
    grafana = compose["services"]["grafana"]
    mounts = {target: source for source, target in volumes_of(grafana)}
    assert str(mounts["/var/lib/grafana/dashboards"]).endswith("docs/grafana")
    # Every metric the dashboard queries exists (names live in one Rust module).
    import json
    names = set(re.findall(r'"(ssegate_[a-z_]+)"', (ROOT / "crates/ssegate-core/src/metric_names.rs").read_text()))
    dashboard = json.loads((ROOT / "docs/grafana/ssegate-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {re.sub(r"_(bucket|count|sum)$", "", m) for e in exprs for m in re.findall(r"ssegate_[a-z_]+", e)}
    assert used and used <= names, used - names


def test_every_service_has_a_health_check(compose):
    for name, service in compose["services"].items():
        check = service.get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), name
        assert parse_duration(check["interval"]) <= 10, f"{name}: slow to become healthy"


def test_redis_persists_to_a_named_volume_with_aof(compose):
    redis = compose["services"]["redis"]
    assert redis["image"].startswith("redis:7"), redis["image"]
    command = redis["command"]
    command = command if isinstance(command, list) else command.split()
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    mounts = dict((target, source) for source, target in volumes_of(redis))
    assert mounts.get("/data") in compose.get("volumes", {}), "a named volume at /data"


def test_nodes_share_redis_and_are_distinct(compose):
    ids = []
    for name in NODES:
        node = compose["services"][name]
        assert node["build"]["context"] == str(ROOT), "built from the repository's Dockerfile"
        env = node["environment"]
        assert env["SSEGATE_REDIS_URL"] == "redis://redis:6379"
        ids.append(env["SSEGATE_NODE_ID"])
        assert node["depends_on"]["redis"]["condition"] == "service_healthy"
        assert "/healthz" in " ".join(node["healthcheck"]["test"])
        # Docker must wait for the drain before it resorts to SIGKILL.
        drain = parse_duration(env.get("SSEGATE_DRAIN_WINDOW", "10s"))
        assert parse_duration(node["stop_grace_period"]) > drain + 3
        assert node["ulimits"]["nofile"]["soft"] >= 65536
        assert not node.get("ports"), "nodes are reached through nginx"
    assert ids == NODES, "one distinct node id per node"


def test_nginx_fronts_every_node_on_8080(compose):
    nginx = compose["services"]["nginx"]
    ports = nginx["ports"]
    published = [
        (int(p["published"]), int(p["target"])) if isinstance(p, dict) else
        tuple(int(x) for x in p.split(":")[-2:])
        for p in ports
    ]
    assert (8080, 8080) in published, ports
    for name in NODES:
        assert nginx["depends_on"][name]["condition"] == "service_healthy"
    upstreams = nginx["environment"]["SSEGATE_LB_UPSTREAMS"]
    # max_fails=0: a node is never marked failed (see nginx/ssegate.conf.template).
    assert re.findall(r"server (\w+):8080 max_fails=0;", upstreams) == NODES
    # The project's templates, not a config of its own.
    mounted = {target: source for source, target in volumes_of(nginx)}
    assert mounted["/etc/nginx/templates/nginx.conf.template"] == str(ROOT / "nginx/nginx.conf.template")
    assert mounted["/etc/nginx/templates/ssegate.conf.template"] == str(ROOT / "nginx/ssegate.conf.template")
    assert mounted["/etc/nginx/ssegate-proxy.conf"] == str(ROOT / "nginx/ssegate-proxy.conf")
    assert nginx["environment"]["NGINX_ENVSUBST_OUTPUT_DIR"] == "/etc/nginx"
    assert nginx["environment"]["SSEGATE_LB_LISTEN"] == "8080"


def test_the_nginx_container_config_renders_and_is_valid(compose, tmp_path):
    """Renders the mounted templates with the container's environment, as the image's
    entrypoint does, and has nginx check the result. Only what cannot exist here is
    changed: the node hostnames (resolved by Docker's DNS) become 127.0.0.1, and the
    container's /var and /dev paths become temp paths."""
    env = dict(compose["services"]["nginx"]["environment"])
    env["SSEGATE_LB_UPSTREAMS"] = re.sub(r"node\d", "127.0.0.1", env["SSEGATE_LB_UPSTREAMS"])
    env["SSEGATE_LB_RUN_DIR"] = str(tmp_path / "run")
    env["SSEGATE_LB_ERROR_LOG"] = str(tmp_path / "error.log")
    env["SSEGATE_LB_ACCESS_LOG"] = str(tmp_path / "access.log")
    (tmp_path / "run").mkdir()
    conf = tmp_path / "conf"
    conf.mkdir()
    for source, target in volumes_of(compose["services"]["nginx"]):
        text = (ROOT / source).read_text() if not source.startswith("/") else open(source).read()
        if target.startswith("/etc/nginx/templates/"):
            name = target.removeprefix("/etc/nginx/templates/").removesuffix(".template")
            (conf / name).write_text(render_template(text, env))
        else:
            shutil.copy(source, conf / target.removeprefix("/etc/nginx/"))
    result = nginx_test(conf, tmp_path / "run")
    assert result.returncode == 0, result.stderr
