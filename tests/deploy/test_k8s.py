"""The Kubernetes manifests: built with kustomize (`kubectl kustomize`, offline), validated
strictly against the Kubernetes OpenAPI schemas (kubernetes-validate bundles them), then
checked for the things a schema cannot see: probes on the right endpoints and ports, a
grace period that covers preStop + drain, selectors that match, an Ingress set up for SSE,
and a Redis that persists."""

import pytest
import kubernetes_validate

from conftest import ROOT, load_yaml_docs, parse_duration, require_tool, run

KUSTOMIZATIONS = ["k8s/base", "k8s/overlays/metrics", "k8s/overlays/redis-cluster"]
# The oldest Kubernetes the manifests promise to work on, and the newest schemas we have.
VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
# After the drain window the gateway gives remaining connections this long to finish.
SHUTDOWN_GRACE_S = 3


def build(path):
    kubectl = require_tool("kubectl", "its kustomize builds the manifests")
    result = run([kubectl, "kustomize", str(ROOT / path)])
    assert result.returncode == 0, result.stderr
    return load_yaml_docs(result.stdout)


@pytest.fixture(scope="module", params=KUSTOMIZATIONS)
def docs(request):
    return build(request.param)


def one(docs, kind, name=None):
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"one {kind} {name or ''}, found {len(found)}"
    return found[0]


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_is_valid_against_the_schemas(docs, version):
    for doc in docs:
        # strict: an unknown (e.g. misspelt or misplaced) field is an error, not ignored.
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_is_not_vacuous():
    deployment = one(build("k8s/base"), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[0], strict=True)


def on_redis_cluster(docs):
    return any(d["kind"] == "StatefulSet" and d["metadata"]["name"] == "redis-cluster" for d in docs)


def test_the_base_has_every_piece(docs):
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    if on_redis_cluster(docs):
        redis = [("StatefulSet", "redis-cluster"), ("Service", "redis-cluster-headless"),
                 ("Job", "redis-cluster-create"), ("PodDisruptionBudget", "redis-cluster")]
        # The base's single Redis is gone, not left running beside the cluster.
        assert not any(n in ("redis", "redis-headless") for _, n in kinds), kinds
    else:
        redis = [("StatefulSet", "redis"), ("Service", "redis")]
    for expected in [
        ("ConfigMap", None),
        ("Deployment", "ssegate"),
        ("Service", "ssegate"),
        ("Ingress", "ssegate"),
        ("HorizontalPodAutoscaler", "ssegate"),
        ("PodDisruptionBudget", "ssegate"),
        *redis,
    ]:
        assert any(k == expected[0] and (expected[1] is None or n == expected[1]) for k, n in kinds), expected


def gateway(docs):
    deployment = one(docs, "Deployment", "ssegate")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "ssegate"]
    return deployment, pod, container


def settings(docs, container):
    """The SSEGATE_* settings the container gets from its ConfigMap."""
    (ref,) = [e["configMapRef"]["name"] for e in container["envFrom"]]
    return one(docs, "ConfigMap", ref)["data"]


def test_deployment_replicas_probes_and_security(docs):
    deployment, pod, c = gateway(docs)
    assert deployment["spec"]["replicas"] == 3
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    env = settings(docs, c)
    assert env["SSEGATE_LISTEN"].endswith(f":{ports['http']}")
    assert env["SSEGATE_ADMIN_LISTEN"].endswith(f":{ports['admin']}")
    ready, live = c["readinessProbe"]["httpGet"], c["livenessProbe"]["httpGet"]
    assert ready["path"] == "/readyz" and live["path"] == "/healthz"
    assert ready["port"] in ports and live["port"] in ports
    # Security: non-root, read-only root filesystem, no privilege escalation, no caps.
    sc = c["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] and sc["runAsNonRoot"]
    assert pod["securityContext"]["runAsUser"] != 0
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    for kind in ["requests", "limits"]:
        assert {"cpu", "memory"} <= set(c["resources"][kind]), kind
    # A rolling update never goes below the wanted number of ready pods.
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def prestop_seconds(container):
    hook = container["lifecycle"]["preStop"]
    if "sleep" in hook:
        return hook["sleep"]["seconds"]
    command = hook["exec"]["command"]
    assert command[0].endswith("sleep"), command
    return float(command[1])


def test_grace_period_covers_prestop_and_drain(docs):
    _, pod, c = gateway(docs)
    env = settings(docs, c)
    drain = parse_duration(env["SSEGATE_DRAIN_WINDOW"])
    pre_stop = prestop_seconds(c)
    assert pre_stop >= 2, "long enough for endpoint removal to propagate"
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > pre_stop + drain + SHUTDOWN_GRACE_S, (
        f"grace {grace}s must exceed preStop {pre_stop}s + drain {drain}s + {SHUTDOWN_GRACE_S}s"
    )
    # Readiness notices a failing node well within the drain window.
    probe = c["readinessProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] <= drain


def test_heartbeat_is_well_inside_every_timeout(docs):
    _, _, c = gateway(docs)
    heartbeat = parse_duration(settings(docs, c)["SSEGATE_HEARTBEAT_INTERVAL"])
    annotations = one(docs, "Ingress", "ssegate")["metadata"]["annotations"]
    read_timeout = float(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"])
    assert read_timeout >= 3 * heartbeat, (read_timeout, heartbeat)


def test_ingress_is_set_up_for_sse(docs):
    ingress = one(docs, "Ingress", "ssegate")
    a = ingress["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    assert a[prefix + "proxy-buffering"] == "off"
    assert a[prefix + "proxy-http-version"] == "1.1"
    assert "error" in a[prefix + "proxy-next-upstream"].split()
    # No stickiness and no hiding of the pods behind the Service IP.
    assert not any(k.startswith(prefix + "affinity") or k.startswith(prefix + "session-cookie") for k in a)
    assert a.get(prefix + "service-upstream", "false") == "false"
    # The client's Host (with its port) reaches the pods: same-origin POSTs depend on it.
    assert prefix + "upstream-vhost" not in a
    # Everything goes to the gateway Service's http port.
    service = one(docs, "Service", "ssegate")
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == "ssegate"
            assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}


def test_selectors_match_the_pods(docs):
    deployment, pod, c = gateway(docs)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = one(docs, "Service", "ssegate")
    assert service["spec"].get("sessionAffinity", "None") == "None"
    for selector in [
        service["spec"]["selector"],
        deployment["spec"]["selector"]["matchLabels"],
        one(docs, "PodDisruptionBudget", "ssegate")["spec"]["selector"]["matchLabels"],
    ]:
        assert selector.items() <= labels.items(), selector
    container_ports = {p["name"] for p in c["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports
    hpa = one(docs, "HorizontalPodAutoscaler", "ssegate")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ssegate"}
    assert hpa["minReplicas"] >= 2 and hpa["maxReplicas"] > hpa["minReplicas"]
    pdb = one(docs, "PodDisruptionBudget", "ssegate")["spec"]
    assert pdb.get("maxUnavailable") == 1 or pdb.get("minAvailable", 0) < hpa["minReplicas"]


def test_redis_persists_and_is_what_the_gateway_uses(docs):
    if on_redis_cluster(docs):
        return check_redis_cluster(docs)
    sts = one(docs, "StatefulSet", "redis")
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    args = c["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    data = args[args.index("--dir") + 1]
    claims = {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
    assert any(m["mountPath"] == data and m["name"] in claims for m in c["volumeMounts"])
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    # SSEGATE_REDIS_URL names the redis Service and its port.
    _, _, gw = gateway(docs)
    url = settings(docs, gw)["SSEGATE_REDIS_URL"]
    service = one(docs, "Service", "redis")
    (port,) = service["spec"]["ports"]
    assert url == f"redis://{service['metadata']['name']}:{port['port']}"
    assert service["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()


def check_redis_cluster(docs):
    sts = one(docs, "StatefulSet", "redis-cluster")
    spec = sts["spec"]
    assert spec["replicas"] == 6, "3 primaries and a replica each"
    (c,) = spec["template"]["spec"]["containers"]
    args = c["args"]
    assert args[args.index("--cluster-enabled") + 1] == "yes"
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    # nodes.conf and the AOF on the pod's volume.
    data = args[args.index("--dir") + 1]
    assert args[args.index("--cluster-config-file") + 1].startswith(data + "/")
    claims = {t["metadata"]["name"] for t in spec["volumeClaimTemplates"]}
    assert any(m["mountPath"] == data and m["name"] in claims for m in c["volumeMounts"])
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    # Each pod announces the DNS name its headless Service gives it.
    headless = one(docs, "Service", spec["serviceName"])
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"]
    assert args[args.index("--cluster-announce-hostname") + 1] == f"$(POD_NAME).{spec['serviceName']}"
    assert args[args.index("--cluster-preferred-endpoint-type") + 1] == "hostname"
    assert {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in c["env"]}["POD_NAME"] == "metadata.name"
    # The seeds the gateways get are pods of that StatefulSet, on its client port.
    _, _, gw = gateway(docs)
    seeds = settings(docs, gw)["SSEGATE_REDIS_CLUSTER"].split(",")
    port = {p["name"]: p["containerPort"] for p in c["ports"]}["redis"]
    pods = {f"{sts['metadata']['name']}-{i}.{spec['serviceName']}:{port}" for i in range(spec["replicas"])}
    assert len(seeds) >= 3 and set(seeds) <= pods, seeds
    # The Job joins every pod, with one replica per primary, and leaves a formed cluster alone.
    job = one(docs, "Job", "redis-cluster-create")
    script = job["spec"]["template"]["spec"]["containers"][0]["command"][-1]
    assert "--cluster-replicas 1" in script and "cluster_state:ok" in script
    assert f"redis-cluster-$i.{spec['serviceName']}" in script and "for i in 0 1 2 3 4 5" in script
    pdb = one(docs, "PodDisruptionBudget", "redis-cluster")["spec"]
    assert pdb["maxUnavailable"] == 1
    assert pdb["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()


def test_the_metrics_overlay_marks_the_admin_port_for_scraping():
    docs = build("k8s/overlays/metrics")
    _, _, c = gateway(docs)
    deployment = one(docs, "Deployment", "ssegate")
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    admin = {p["name"]: p["containerPort"] for p in c["ports"]}["admin"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(admin)
    assert annotations["prometheus.io/path"] == "/metrics"
    service = one(docs, "Service", "ssegate-admin")
    assert service["spec"]["ports"][0]["targetPort"] == "admin"
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    # The admin port stays off the Ingress.
    ingress = one(docs, "Ingress", "ssegate")
    backends = {p["backend"]["service"]["name"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]}
    assert backends == {"ssegate"}
