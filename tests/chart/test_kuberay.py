"""The chart against KubeRay 1.7.0 itself: every rendered RayService (every profile, every upgrade strategy) passes
KubeRay's real CRDs as the API server applies them (strict fields, defaults, int-or-string, list keys, CEL), the
RayCluster the operator makes of it passes the RayCluster CRD, the operator's Go-side checks pass, and the Services
KubeRay builds from it send router traffic only to the head of the cluster whose Serve applications are RUNNING."""

import copy

import kubernetes_validate
import pytest

from tests.chart import crdschema, kuberay_rules, kuberay_sim
from tests.chart.chartlib import (
    CHART_DIR,
    KUBE_VERSION,
    KUBERAY_CRD_SHA256,
    KUBERAY_CRDS,
    KUBERAY_VERSION,
    find,
    kuberay_crd_validators,
    objects,
    raycluster_of,
    rayservice,
    real_crds_available,
    render,
    stored_rayservice,
    validate_object,
)

GATEWAY = {"enabled": True, "tls": {"secretName": "gemma-tls"}}
STRATEGIES = {
    "NewCluster": {},
    "None": {"ray": {"upgradeStrategy": "None"}},
    "NewClusterWithIncrementalUpgrade": {
        "ray": {"upgradeStrategy": "NewClusterWithIncrementalUpgrade"},
        "gateway": GATEWAY,
    },
}
needs_crds = pytest.mark.skipif(not real_crds_available(), reason=f"{KUBERAY_CRDS} absent: hand-written subset only")


@pytest.fixture(params=list(STRATEGIES))
def strategy(request) -> str:
    return request.param


def _rs(profile="values.yaml", strategy="NewCluster", **overrides):
    return rayservice(objects(render(profile, **{**STRATEGIES[strategy], **overrides})))


# ---- the real CRDs ---------------------------------------------------------------------------------------------


@needs_crds
def test_the_crds_are_kuberay_1_7_0_unmodified():
    for name, digest in KUBERAY_CRD_SHA256.items():
        assert crdschema.sha256(KUBERAY_CRDS / name) == digest, f"{name} is not KubeRay v{KUBERAY_VERSION}'s"
    assert f'gemma-serving/kuberay-version: "{KUBERAY_VERSION}"' in (CHART_DIR / "Chart.yaml").read_text()


@needs_crds
def test_every_rayservice_passes_the_real_crds(profile, strategy):
    rs = _rs(profile, strategy)
    validators = kuberay_crd_validators()
    stored, errors, notes = validators["ray.io/v1/RayService"].check(rs)
    assert not errors
    assert not [n for n in notes if "null dropped" in n], notes  # a null the API server would silently discard
    assert validate_object(rs) == "kuberay-crd"
    # What the operator then creates goes through the API server too.
    _, errors, notes = validators["ray.io/v1/RayCluster"].check(raycluster_of(stored))
    assert not errors and not [n for n in notes if "null dropped" in n]
    # Defaults the operator reads are there as the API server fills them in.
    for group in stored["spec"]["rayClusterConfig"].get("workerGroupSpecs", []):
        assert group["numOfHosts"] == 1
    head = stored["spec"]["rayClusterConfig"]["headGroupSpec"]
    assert all(p["protocol"] == "TCP" for p in head["template"]["spec"]["containers"][0]["ports"])
    assert all(p["protocol"] == "TCP" for p in head["headService"]["spec"]["ports"])
    if strategy == "NewClusterWithIncrementalUpgrade":
        assert stored["spec"]["upgradeStrategy"]["clusterUpgradeOptions"]["maxSurgePercent"] == 25


def _set(path, value):
    def mutate(rs):
        node = rs
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return mutate


HEAD = ["spec", "rayClusterConfig", "headGroupSpec"]
HEAD_CONTAINER = [*HEAD, "template", "spec", "containers", 0]
WORKER = ["spec", "rayClusterConfig", "workerGroupSpecs", 0]


@needs_crds
@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_set([*HEAD_CONTAINER, "imagePullPolicyy"], "Always"), "imagePullPolicyy"),  # strict: unknown field
        (_set([*HEAD, "headService", "spec", "portz"], []), "portz"),
        (_set(["spec", "serveConfig"], "x"), "serveConfig"),
        (_set([*WORKER, "rayStartParams", "num-gpus"], 1), "not of type 'string'"),
        (_set([*HEAD_CONTAINER, "resources", "limits", "cpu"], True), "cpu"),  # int-or-string quantity
        (_set([*HEAD_CONTAINER, "resources", "limits", "memory"], "16 GiB"), "does not match"),
        (_set([*HEAD, "headService", "spec", "ports", 0, "targetPort"], 1.5), "targetPort"),  # int-or-string
        (_set([*WORKER, "maxReplicas"], 2**31), "maximum"),  # int32
        (_set(["spec", "rayClusterDeletionDelaySeconds"], -1), "minimum"),
        (_set(["spec", "rayClusterConfig", "managedBy"], "someone-else"), "managedBy"),  # CEL
        (_set(["spec", "upgradeStrategy", "clusterUpgradeOptions"], {"gatewayClassName": "x"}), "intervalSeconds"),
        (_set(["metadata", "labelz"], {}), "labelz"),  # top-level metadata is the API server's ObjectMeta
        (_set(["status"], {"bogus": 1}), "bogus"),
    ],
)
def test_the_real_crd_check_refuses_what_the_api_server_refuses(mutate, message):
    rs = _rs(gateway=GATEWAY)
    mutate(rs)
    with pytest.raises(crdschema.CRDValidationError, match=message):
        validate_object(rs)


@needs_crds
def test_list_map_keys_are_checked_after_defaulting():
    """Two container ports 8000 — one with protocol TCP spelled out, one left to the default — are one key."""
    rs = _rs()
    ports = rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]
    ports.append({"name": "serve-again", "containerPort": 8000, "protocol": "TCP"})
    with pytest.raises(crdschema.CRDValidationError, match="Duplicate value"):
        validate_object(rs)


@needs_crds
def test_nulls_and_defaults_as_the_api_server_handles_them():
    validator = kuberay_crd_validators()["ray.io/v1/RayService"]
    rs = _rs()
    rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["idleTimeoutSeconds"] = None
    del rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"]
    stored, errors, notes = validator.check(rs)
    assert not errors
    assert any(n.endswith("idleTimeoutSeconds: null dropped") for n in notes)
    group = stored["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert "idleTimeoutSeconds" not in group and group["replicas"] == 0
    with pytest.raises(crdschema.CRDValidationError, match="null dropped"):
        validate_object(rs)  # the chart must not render a null the API server would silently drop


# ---- the operator's Go-side checks -----------------------------------------------------------------------------


def test_the_operator_accepts_every_rayservice(profile, strategy):
    stored = stored_rayservice(_rs(profile, strategy))
    kuberay_rules.validate_rayservice(stored)
    spec = stored["spec"]
    assert spec["upgradeStrategy"]["type"] in kuberay_rules.UPGRADE_TYPES
    for group in spec["rayClusterConfig"].get("workerGroupSpecs", []):
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def _drop_containers(rs, path):
    node = rs
    for key in path:
        node = node[key]
    node["template"]["spec"]["containers"] = []


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_set(["spec", "upgradeStrategy", "type"], "Recreate"), "Spec.UpgradeStrategy.Type value Recreate is invalid"),
        (_set(["spec", "upgradeStrategy", "type"], "IncrementalUpgrade"), "is invalid, valid options are"),
        (_set(["spec", "rayClusterDeletionDelaySeconds"], -5), "should be a non-negative integer"),
        (_set([*HEAD, "headService", "metadata", "name"], "router"), "headService.metadata.name should not be set"),
        (lambda rs: _drop_containers(rs, HEAD), "headGroupSpec should have at least one container"),
        (lambda rs: _drop_containers(rs, WORKER), "workerGroupSpec should have at least one container"),
        (_set([*WORKER, "minReplicas"], 9), "has minReplicas 9 greater than maxReplicas"),
        (_set([*WORKER, "minReplicas"], -1), "has negative minReplicas -1"),
        (_set([*WORKER, "maxReplicas"], -1), "has negative maxReplicas -1"),
        (_set([*WORKER, "resources"], {"GPU": "1"}), "should not be set in both rayStartParams and Resources"),
        (_set([*WORKER, "rayStartParams", "labels"], "a=b"), "rayStartParams\\['labels'\\] is not supported"),
        (_set([*WORKER, "labels"], {"bad key!": "x"}), "invalid label key"),
        (_set([*WORKER, "idleTimeoutSeconds"], 60), "idleTimeoutSeconds is set, but autoscaler v2 is not enabled"),
        (_set([*HEAD, "rayStartParams", "redis-username"], "u"), "cannot set redis username"),
        (_set([*HEAD_CONTAINER, "env"], [{"name": "RAY_REDIS_ADDRESS", "value": "r:6379"}]),
         "RAY_REDIS_ADDRESS is set which implicitly enables GCS fault tolerance"),
        (_set([*WORKER, "suspend"], True), "cannot be suspended"),
        (_set(["spec", "rayClusterConfig", "autoscalerOptions", "idleTimeoutSeconds"], -1), "must be non-negative"),
        (_set(["spec", "rayClusterConfig", "enableInTreeAutoscaling"], False),
         "Ray Autoscaler is required for NewClusterWithIncrementalUpgrade"),
        (_set(["spec", "upgradeStrategy", "clusterUpgradeOptions", "maxSurgePercent"], 101),
         "maxSurgePercent must be between 0 and 100"),
        (_set(["spec", "upgradeStrategy", "clusterUpgradeOptions", "stepSizePercent"], 50),
         "stepSizePercent must be less than or equal to maxSurgePercent"),
        (_set(["spec", "upgradeStrategy", "clusterUpgradeOptions", "intervalSeconds"], 0),
         "intervalSeconds must be greater than 0"),
        (_set(["spec", "upgradeStrategy", "clusterUpgradeOptions", "gatewayClassName"], ""),
         "gatewayClassName is required"),
        (lambda rs: rs["spec"]["upgradeStrategy"].pop("clusterUpgradeOptions"), "ClusterUpgradeOptions are required"),
        (_set(["metadata", "name"], "x" * 48), "no more than 47 characters"),
        (_set(["metadata", "name"], "1gemma"), "valid DNS1035 label"),
    ],
)
def test_the_operator_checks_refuse(mutate, message):
    rs = stored_rayservice(_rs(strategy="NewClusterWithIncrementalUpgrade"))
    rs = copy.deepcopy(rs)
    mutate(rs)
    with pytest.raises(kuberay_rules.KubeRayValidationError, match=message):
        kuberay_rules.validate_rayservice(rs)


def test_duplicate_worker_group_names_are_refused():
    rs = _rs("values-gemma3-12b.yaml")
    groups = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    groups[1]["groupName"] = groups[0]["groupName"]
    with pytest.raises(kuberay_rules.KubeRayValidationError, match="must be unique"):
        kuberay_rules.validate_rayservice(rs)


def test_incremental_options_only_count_with_the_feature_gate():
    """Without RayServiceIncrementalUpgrade on, the operator skips ValidateClusterUpgradeOptions."""
    rs = _rs(strategy="NewClusterWithIncrementalUpgrade")
    del rs["spec"]["upgradeStrategy"]["clusterUpgradeOptions"]
    kuberay_rules.validate_rayservice(rs, incremental_upgrade_gate=False)
    with pytest.raises(kuberay_rules.KubeRayValidationError):
        kuberay_rules.validate_rayservice(rs)


# ---- the Services KubeRay builds: router traffic follows the healthy cluster -----------------------------------


def _pods(rs):
    yield "head", kuberay_sim.head_pod_labels_when_serving(rs)
    for group in rs["spec"]["rayClusterConfig"].get("workerGroupSpecs", []):
        yield group["groupName"], kuberay_sim.pod_labels(rs, group["groupName"])


def test_router_traffic_goes_to_the_serving_clusters_head_only(profile, strategy):
    rs = stored_rayservice(_rs(profile, strategy))
    svc = kuberay_sim.head_service(rs)
    assert svc["metadata"]["name"] == "gemma-gemma-serving-head-svc"
    kubernetes_validate.validate(svc, KUBE_VERSION, strict=True)
    assert not kuberay_sim.service_problems(svc)
    selected = [name for name, labels in _pods(rs) if kuberay_sim.selects(svc, labels)]
    assert selected == ["head"], "the router's Service must reach the head pod, and nothing else"
    # The selector names the cluster: KubeRay moves it to the new cluster only once its Serve apps are RUNNING.
    assert svc["spec"]["selector"]["ray.io/cluster"] == kuberay_sim.cluster_name(rs)
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    config_router = _router_config(rs)
    assert ports["grpc"]["port"] == config_router["port"]
    assert ports["grpc"]["appProtocol"] == "kubernetes.io/h2c", "KubeRay's merge kept our appProtocol"
    if config_router.get("http_port") is not None:
        assert ports["openai-http"]["appProtocol"] == "http"
    assert ports["gcs-server"]["appProtocol"] == "tcp"  # KubeRay's own ports ride along


def _router_config(rs):
    import yaml

    (app,) = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"]
    return app["args"]["config"]["router"]


def test_why_not_the_serve_service(profile):
    """KubeRay's serve Service would carry only the ports named serve/serve-* as bare {name, port} and selects every
    worker pod (ray.io/serve is always "true" on workers): gRPC there would be balanced onto GPU workers where no
    router listens. It stays what it is, Serve's HTTP proxy on 8000, which does run on every node."""
    rs = stored_rayservice(_rs(profile))
    svc = kuberay_sim.serve_service(rs)
    assert [p["name"] for p in svc["spec"]["ports"]] == ["serve"]
    workers = [name for name, labels in _pods(rs) if name != "head" and kuberay_sim.selects(svc, labels)]
    assert workers == [g["groupName"] for g in rs["spec"]["rayClusterConfig"].get("workerGroupSpecs", [])]


def test_pod_labels_leave_kuberays_selectors_alone(profile):
    """KubeRay lets template labels override its own pod labels; the RayService head Service selects KubeRay's
    values (app.kubernetes.io/name=kuberay, created-by=kuberay-operator), so the templates must not set them."""
    rs = _rs(profile)
    cluster = rs["spec"]["rayClusterConfig"]
    templates = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster.get("workerGroupSpecs", [])]
    for template in templates:
        labels = template["metadata"]["labels"]
        assert not {"app.kubernetes.io/name", "app.kubernetes.io/created-by"} & set(labels)
        assert not [k for k in labels if k.startswith("ray.io/")]


def test_no_chart_service_selects_the_head_by_labels(profile):
    """The chart owns no Service for router traffic: nothing selects the head pod by the chart's labels alone
    (the optional headless metrics Service lists every Ray pod for scraping and carries no router port)."""
    docs = objects(render(profile, monitoring={"serviceMonitor": {"enabled": True}}, gateway=GATEWAY))
    rs = stored_rayservice(rayservice(docs))
    head = kuberay_sim.head_pod_labels_when_serving(rs)
    router = _router_config(rs)
    router_ports = {router["port"], router.get("http_port")} - {None}
    for svc in find(docs, "Service"):
        if kuberay_sim.selects(svc, head):
            assert svc["spec"].get("clusterIP") == "None"
            assert svc["metadata"]["labels"]["app.kubernetes.io/component"] == "metrics"
            assert not {p["port"] for p in svc["spec"]["ports"]} & router_ports


def test_router_ports_must_not_collide_with_head_ports():
    """KubeRay merges headService ports by name with the head container's; a number clash makes an invalid Service."""
    import helm_python as helm

    for port in (8000, 8265, 9464):
        with pytest.raises(helm.HelmRenderError, match="must not reuse a Ray head port"):
            render(config={"router": {"port": port}})
    with pytest.raises(helm.HelmRenderError, match="must not reuse a Ray head port"):
        render(config={"router": {"http_port": 6379}})


@pytest.mark.parametrize("key", ["app.kubernetes.io/name", "ray.io/serve", "app.kubernetes.io/instance"])
def test_pod_labels_cannot_take_over_kuberays(key):
    import helm_python as helm

    with pytest.raises(helm.HelmRenderError, match="podLabels must not set"):
        render(podLabels={key: "x"})


def test_the_operator_reaches_what_it_checks(profile):
    """The NetworkPolicy lets the KubeRay operator reach the dashboard (serveConfigV2, Serve status), the dashboard
    agent and Serve's proxy on the head (its /-/healthz sets the head's ray.io/serve label)."""
    (policy,) = find(objects(render(profile)), "NetworkPolicy")
    (rule,) = [r for r in policy["spec"]["ingress"]
               if any("namespaceSelector" in f and f["namespaceSelector"]["matchLabels"].get(
                   "kubernetes.io/metadata.name") == "kuberay-system" for f in r.get("from", []))]
    assert {p["port"] for p in rule["ports"]} == {8265, 52365, 8000}
    pods = policy["spec"]["podSelector"]["matchLabels"]
    rs = stored_rayservice(_rs(profile))
    assert all(pods.items() <= labels.items() for _, labels in _pods(rs)), "the policy covers every Ray pod"
