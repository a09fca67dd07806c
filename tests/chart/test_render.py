"""Every profile renders, and every rendered object validates against its schema; the RayService has the shape
GKE + KubeRay need (worker group per accelerator, GPUs, /dev/shm, autoscaler, pinned image, drain timings)."""

import json

import kubernetes_validate
import pytest
import yaml

from tests.chart.chartlib import (
    find,
    objects,
    profile_values,
    rayservice,
    real_crds_available,
    render,
    validate_object,
    validate_pod_template,
)

ROUTER_SVC = "gemma-gemma-serving-head-svc"


def _pod_templates(rs):
    cluster = rs["spec"]["rayClusterConfig"]
    yield "head", cluster["headGroupSpec"]
    for group in cluster.get("workerGroupSpecs", []):
        yield group["groupName"], group


def _config(rs):
    serve = yaml.safe_load(rs["spec"]["serveConfigV2"])
    (app,) = serve["applications"]
    return app["args"]["config"]


def test_every_object_validates(profile):
    docs = objects(render(profile))
    sources = {validate_object(d) for d in docs}
    assert "kubernetes" in sources
    # The RayService: KubeRay 1.7.0's own CRD (plus the operator's Go-side rules) whenever shared/ is there.
    assert validate_object(rayservice(docs)) == ("kuberay-crd" if real_crds_available() else "crd-subset")
    for _, group in _pod_templates(rayservice(docs)):
        validate_pod_template(group["template"])


def test_optional_objects_validate():
    """Gateway, GRPCRoute, GKE policies, ServiceMonitor, every storage mode and upgrade strategy, all switched on."""
    strategies = ["NewCluster", "NewClusterWithIncrementalUpgrade", "None", "NewCluster"]
    for storage, strategy in zip(("gcsFuse", "pvc", "huggingFace", "none"), strategies, strict=True):
        docs = objects(
            render(
                ray={"upgradeStrategy": strategy},
                gateway={"enabled": True, "hostname": "gemma.example.com", "tls": {"secretName": "gemma-tls"}},
                monitoring={"serviceMonitor": {"enabled": True}},
                networkPolicy={"routerFrom": [{"namespaceSelector": {"matchLabels": {"team": "apps"}}}]},
                router={"apiKeys": {"secretName": "gemma-api-keys"}},
                modelStorage={"type": storage},
                serviceAccount={"gcpServiceAccount": "gemma-serving@my-project.iam.gserviceaccount.com"},
            )
        )
        kinds = {d["kind"] for d in docs}
        assert {"Gateway", "GRPCRoute", "HealthCheckPolicy", "GCPBackendPolicy", "ServiceMonitor"} <= kinds
        for d in docs:
            validate_object(d)
        for _, group in _pod_templates(rayservice(docs)):
            validate_pod_template(group["template"])


def test_schema_validation_catches_a_bad_object():
    """The object check can fail: a RayService worker group with a non-string rayStartParams value is refused."""
    rs = rayservice(objects(render()))
    rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["rayStartParams"]["num-gpus"] = 1
    with pytest.raises(AssertionError, match="rayStartParams"):
        validate_object(rs)
    (pdb,) = find(objects(render()), "PodDisruptionBudget", "-head")
    pdb["spec"]["minAvailablee"] = 1
    with pytest.raises(kubernetes_validate.ValidationError, match="minAvailablee"):
        validate_object(pdb)


def test_worker_group_per_accelerator(profile):
    rs = rayservice(objects(render(profile)))
    config = _config(rs)
    wanted = sorted({s["deployment"].get("accelerator_type") for s in config["services"].values()} - {None})
    groups = rs["spec"]["rayClusterConfig"].get("workerGroupSpecs", [])
    gpu_groups = [g for g in groups if g["groupName"].startswith("gpu-")]
    assert [g["groupName"] for g in gpu_groups] == [f"gpu-{a}" for a in wanted]
    for accel, group in zip(wanted, gpu_groups):
        pod = group["template"]["spec"]
        (container,) = pod["containers"]
        res = container["resources"]
        assert res["requests"] == res["limits"], "GPU node pods are Guaranteed: requests equal limits"
        gpus = res["limits"]["nvidia.com/gpu"]
        assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": accel}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        params = group["rayStartParams"]
        assert params["num-gpus"] == gpus
        # KubeRay's custom-resource format: a JSON object inside a quoted string.
        assert json.loads(json.loads(params["resources"])) == {f"accelerator:{accel}": int(gpus)}
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
        assert shm["emptyDir"]["medium"] == "Memory"
        assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
        assert group["template"]["metadata"]["labels"]["ai.gke.io/inference-server"] == "vllm"
        assert group["template"]["metadata"]["labels"]["ai.gke.io/model"]


def test_services_fit_their_worker_groups(profile):
    """What app.py asks Ray for (deployment_options) is what the groups advertise: accelerator resource, GPUs."""
    from gemma_serving.app import deployment_options
    from gemma_serving.config import parse_config

    rs = rayservice(objects(render(profile)))
    config = parse_config(_config(rs))
    groups = {g["groupName"]: g for g in rs["spec"]["rayClusterConfig"].get("workerGroupSpecs", [])}
    for kind, service in config.services.items():
        actor = deployment_options(kind, service)["ray_actor_options"]
        accel = service.deployment.accelerator_type
        if accel is None:
            assert (
                "cpu" in groups
                or float(rs["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]["num-cpus"])
                >= actor["num_cpus"]
            )
            continue
        params = groups[f"gpu-{accel}"]["rayStartParams"]
        advertised = json.loads(json.loads(params["resources"]))
        assert set(actor["resources"]) <= set(advertised)
        assert actor["num_gpus"] * service.model.engine.tensor_parallel_size <= float(params["num-gpus"])


def test_autoscaler_and_pinned_image(profile):
    rs = rayservice(objects(render(profile)))
    cluster = rs["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["rayVersion"] == "2.60.0"
    for _, group in _pod_templates(rs):
        for container in group["template"]["spec"]["containers"] + group["template"]["spec"].get("initContainers", []):
            repo, _, tag = container["image"].rpartition(":")
            assert repo and tag and tag != "latest"
    digest = "sha256:" + "a" * 64
    rs = rayservice(objects(render(profile, image={"digest": digest})))
    for _, group in _pod_templates(rs):
        assert group["template"]["spec"]["containers"][0]["image"].endswith("@" + digest)


@pytest.mark.parametrize("plaintext,protocol", [(False, "https"), (True, "http")])
def test_the_openai_port_speaks_https_under_tls_unless_explicitly_plaintext(plaintext, protocol):
    tls = {"cert_file": "/etc/gemma/tls/tls.crt", "key_file": "/etc/gemma/tls/tls.key"}
    docs = objects(render(config={"security": {"tls": tls},
                                  "router": {"http_port": 8088, "http_plaintext_beside_tls": plaintext}}))
    svc = rayservice(docs)["spec"]["rayClusterConfig"]["headGroupSpec"]["headService"]
    assert {p["name"]: p for p in svc["spec"]["ports"]}["openai-http"]["appProtocol"] == protocol


def test_router_ports_and_drain(profile):
    """The router's ports ride on the RayService's head Service (test_kuberay.py checks what KubeRay makes of it):
    gRPC with h2c (GKE's load balancer speaks HTTP/2 cleartext to it), the OpenAI surface with http."""
    docs = objects(render(profile))
    rs = rayservice(docs)
    config = _config(rs)
    router = config["router"]
    assert router["host"] == "0.0.0.0"
    assert not find(docs, "Service", "-router"), "no chart-owned router Service: KubeRay's head Service replaces it"
    head = rs["spec"]["rayClusterConfig"]["headGroupSpec"]
    svc = head["headService"]
    assert "name" not in svc["metadata"], "KubeRay refuses headService.metadata.name in a RayService"
    assert svc["spec"]["type"] == "ClusterIP"
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    port = ports["grpc"]
    assert port["port"] == port["targetPort"] == router["port"] and port["appProtocol"] == "kubernetes.io/h2c"
    if router.get("http_port") is not None:  # the OpenAI-compatible surface on the same router
        assert ports["openai-http"]["port"] == router["http_port"] and ports["openai-http"]["appProtocol"] == "http"
    else:
        assert set(ports) == {"grpc"}
    assert rs["spec"]["excludeHeadPodFromServeSvc"] is False  # the routers run on the head
    (container,) = head["template"]["spec"]["containers"]
    assert {"name": "serve", "containerPort": 8000} in container["ports"]  # Serve's proxy, health-checked by KubeRay
    # The router replicas are pinned to the head: it advertises the resource the serve config asks for.
    serve = yaml.safe_load(rs["spec"]["serveConfigV2"])
    (app,) = serve["applications"]
    assert "deployments" not in app  # placement comes from our config, not from Serve overrides
    pinned = app["args"]["config"]["router"]["resources"]
    assert pinned and set(pinned) <= set(json.loads(json.loads(head["rayStartParams"]["resources"])))
    # Drain: preStop covers drain_notice_s + grace_period_s, and the pod's grace period covers preStop.
    drain = router["drain_notice_s"] + router["grace_period_s"]
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"][-1]
    assert pre_stop.startswith("serve shutdown") and pre_stop.endswith(f"sleep {int(drain)}")
    assert head["template"]["spec"]["terminationGracePeriodSeconds"] > drain
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert probe in container


def test_drain_follows_the_router_config():
    rs = rayservice(objects(render(config={"router": {"grace_period_s": 120, "drain_notice_s": 10}})))
    spec = rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] == 145
    assert spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][-1].endswith("sleep 130")
    # Workers keep Ray up while the router drains (a whole cluster goes at once after an upgrade).
    for group in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        worker = group["template"]["spec"]
        assert worker["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][-1] == "sleep 130; ray stop"
        assert worker["terminationGracePeriodSeconds"] == 145


def test_workers_outlast_the_router_drain(profile):
    rs = rayservice(objects(render(profile)))
    router = _config(rs)["router"]
    drain = router.get("drain_notice_s", 2) + router.get("grace_period_s", 10)
    for group in rs["spec"]["rayClusterConfig"].get("workerGroupSpecs", []):
        worker = group["template"]["spec"]
        command = worker["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][-1]
        wait = int(command.split(";")[0].removeprefix("sleep "))
        assert wait >= drain and wait >= 30  # 30: the model replicas' graceful_shutdown_timeout_s (app.py)
        assert command.endswith("; ray stop") and worker["terminationGracePeriodSeconds"] > wait


def test_model_storage_modes():
    def worker_pod(**values):
        rs = rayservice(objects(render(**values)))
        return rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]

    gcs = worker_pod()
    vol = next(v for v in gcs["spec"]["volumes"] if v["name"] == "models")
    assert vol["csi"]["driver"] == "gcsfuse.csi.storage.gke.io"
    assert vol["csi"]["volumeAttributes"]["bucketName"] == "my-project-gemma-models"
    assert gcs["metadata"]["annotations"]["gke-gcsfuse/volumes"] == "true"

    pvc = worker_pod(modelStorage={"type": "pvc", "pvc": {"claimName": "weights"}})
    vol = next(v for v in pvc["spec"]["volumes"] if v["name"] == "models")
    assert vol["persistentVolumeClaim"] == {"claimName": "weights", "readOnly": True}

    hf = worker_pod(modelStorage={"type": "huggingFace"})
    (init,) = hf["spec"]["initContainers"]
    token = next(e for e in init["env"] if e["name"] == "HF_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "token"}
    assert "hf download google/gemma-3-4b-it --local-dir /models/gemma-3-4b-it" in init["args"][0]


def test_service_account_workload_identity():
    gsa = "gemma-serving@my-project.iam.gserviceaccount.com"
    docs = objects(render(serviceAccount={"gcpServiceAccount": gsa}))
    (sa,) = find(docs, "ServiceAccount")
    assert sa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"] == gsa
    for _, group in _pod_templates(rayservice(docs)):
        assert group["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]


def test_gateway_tls_and_api_keys():
    docs = objects(
        render(
            gateway={"enabled": True, "tls": {"secretName": "gemma-tls"}}, router={"apiKeys": {"secretName": "keys"}}
        )
    )
    (gw,) = find(docs, "Gateway")
    assert gw["spec"]["listeners"][0]["tls"]["certificateRefs"] == [{"kind": "Secret", "name": "gemma-tls"}]
    (route,) = find(docs, "GRPCRoute")
    assert route["spec"]["rules"][0]["backendRefs"] == [{"name": ROUTER_SVC, "port": 50051}]
    for policy in find(docs, "HealthCheckPolicy") + find(docs, "GCPBackendPolicy"):
        assert policy["spec"]["targetRef"] == {"group": "", "kind": "Service", "name": ROUTER_SVC}
    head = rayservice(docs)["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    assert {"name": "api-keys", "secret": {"secretName": "keys", "defaultMode": 0o400}} in head["volumes"]
    assert any(m["name"] == "api-keys" and m["readOnly"] for m in head["containers"][0]["volumeMounts"])


def test_operations_objects(profile):
    docs = objects(render(profile))
    rs = rayservice(docs)
    groups = [g["groupName"] for g in rs["spec"]["rayClusterConfig"].get("workerGroupSpecs", [])]
    pdbs = find(docs, "PodDisruptionBudget")
    assert len(pdbs) == 1 + len(groups)
    assert sorted(
        p["spec"]["selector"]["matchLabels"].get("ray.io/group")
        for p in pdbs
        if "ray.io/group" in p["spec"]["selector"]["matchLabels"]
    ) == sorted(groups)
    assert find(docs, "NetworkPolicy")
    wants_gmp = profile_values(profile).get("monitoring", {}).get("podMonitoring", {}).get("enabled", True)
    assert bool(find(docs, "PodMonitoring")) == wants_gmp
    (test_pod,) = [d for d in docs if d["kind"] == "Pod"]
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    port = _config(rs)["router"]["port"]
    assert f'grpc.insecure_channel("{ROUTER_SVC}:{port}")' in test_pod["spec"]["containers"][0]["command"][-1]


def test_otlp_endpoint_reaches_the_pods():
    endpoint = "http://otel-collector.observability:4317"
    rs = rayservice(objects(render(config={"telemetry": {"otlp_endpoint": endpoint}})))
    assert _config(rs)["telemetry"]["otlp_endpoint"] == endpoint
    for _, group in _pod_templates(rs):
        env = group["template"]["spec"]["containers"][0]["env"]
        assert {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": endpoint} in env
