"""The fine-tuning RayJob (templates/finetune-rayjob.yaml): off by default; when on, a RayJob with its own GPU worker
group runs `gemma-serving finetune` with the platform config and FinetuneSettings our own models accept, writes to
the model storage read-write, registers through the router Service; the serving pods mount the storage read-write
(and the head mounts it) once a registry is configured; every object validates; bad combinations fail to render."""

from __future__ import annotations

import functools
import json
import shlex

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml
from gemma_serving.config import parse_config
from gemma_serving.finetune.settings import parse_settings
from referencing import Registry, Resource

from tests.chart.chartlib import (
    KUBE_VERSION,
    REPO,
    SCHEMAS,
    _kube_definitions,
    find,
    objects,
    rayservice,
    render,
    validate_pod_template,
)

REGISTRY = "gs://my-project-gemma-models/adapters/gemma-3-4b-it"
ON = {
    "config": {"services": {"text": {"model": {"adapter_registry": REGISTRY}}}},
    "finetune": {"enabled": True, "adapter": "Support_v2", "adminKeySecret": {"name": "ft-admin", "key": "api-key"},
                 "settings": {"training": {"epochs": 5}, "lora": {"rank": 8}}},
}
#: The verbatim KubeRay RayCluster CRD, where the shared reference folder is present (not part of the project).
RAYCLUSTER_CRD = REPO.parent / "shared" / "reference" / "kuberay-crds" / "ray.io_rayclusters.yaml"


@functools.cache
def rayjob_validator() -> jsonschema.Draft202012Validator:
    rayservice_schema = yaml.safe_load((SCHEMAS / "rayservice-ray-v1.yaml").read_text())
    registry = (_kube_definitions() @ Registry()).with_resource(
        "https://ray.io/schemas/rayservice-v1.json", Resource.from_contents(rayservice_schema))
    return jsonschema.Draft202012Validator(yaml.safe_load((SCHEMAS / "rayjob-ray-v1.yaml").read_text()),
                                           registry=registry)


@functools.cache
def rendered_on() -> list[dict]:
    return objects(render(**ON))


def the_job(docs):
    (job,) = find(docs, "RayJob")
    return job


def pods(job):
    spec = job["spec"]["rayClusterSpec"]
    return [spec["headGroupSpec"]["template"], *(g["template"] for g in spec["workerGroupSpecs"])]


def models_volume(template):
    (volume,) = [v for v in template["spec"]["volumes"] if v["name"] == "models"]
    (mount,) = [m for c in template["spec"]["containers"] for m in c["volumeMounts"] if m["name"] == "models"]
    return volume, mount


def test_nothing_is_rendered_and_storage_stays_read_only_by_default(profile):
    docs = objects(render(profile))
    assert find(docs, "RayJob") == []
    spec = rayservice(docs)["spec"]["rayClusterConfig"]
    for group in spec["workerGroupSpecs"]:
        volumes = [v for v in group["template"]["spec"]["volumes"] if v["name"] == "models"]
        shared = [v.get("csi") or v.get("persistentVolumeClaim") for v in volumes]
        if any(shared):  # bucket or claim (huggingFace downloads into a pod-local emptyDir; none mounts nothing)
            volume, mount = models_volume(group["template"])
            assert mount["readOnly"] is True and shared[0]["readOnly"] is True


def test_the_job_and_its_objects_validate():
    docs = rendered_on()
    job = the_job(docs)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in rayjob_validator().iter_errors(job)]
    assert errors == []
    for template in pods(job):
        validate_pod_template(template)
    for kind in ("ConfigMap", "NetworkPolicy"):
        for obj in find(docs, kind, "-ft-support-v2"):
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    assert job["metadata"]["name"] == "gemma-gemma-serving-ft-support-v2"  # a DNS-1123 name from the adapter name


def test_the_entrypoint_runs_finetune_with_our_config_and_registers_through_the_router():
    docs = rendered_on()
    job = the_job(docs)
    args = shlex.split(job["spec"]["entrypoint"])
    assert args[:2] == ["gemma-serving", "finetune"]
    opts = {a: (b if not b.startswith("--") else None) for a, b in zip(args[2:], args[3:] + ["--"])
            if a.startswith("--")}
    assert opts["--adapter"] == "Support_v2" and opts["--dataset"].startswith("gs://")
    # The head Service KubeRay moves to the serving cluster (the router's ports ride on it).
    assert opts["--target"] == "gemma-gemma-serving-head-svc.gemma.svc:50051"
    assert "--overwrite" in opts and "--no-register" not in opts and "--replace" not in opts
    assert (opts["--config"], opts["--settings"]) == ("/etc/gemma-finetune/config.yaml",
                                                      "/etc/gemma-finetune/settings.yaml")
    head = rayservice(docs)["spec"]["rayClusterConfig"]["headGroupSpec"]["headService"]
    assert {p["name"] for p in head["spec"]["ports"]} >= {"grpc"}  # the port the target names
    assert job["spec"]["submissionMode"] == "HTTPMode" and job["spec"]["shutdownAfterJobFinishes"] is True
    (configmap,) = find(docs, "ConfigMap", "-ft-support-v2")
    config = parse_config(yaml.safe_load(configmap["data"]["config.yaml"]))  # the one config schema
    assert config.services["text"].model.adapter_registry == REGISTRY
    settings = parse_settings(yaml.safe_load(configmap["data"]["settings.yaml"]))
    assert (settings.training.epochs, settings.lora.rank, settings.lora.alpha) == (5, 8, 32)  # overrides + defaults
    w = settings.workers
    assert (w.num_workers, w.use_gpu, w.accelerator_type, w.storage_path) == (1, True, "nvidia-l4",
                                                                              "/models/finetune-runs")


def test_the_job_has_its_own_gpu_group_and_writes_to_the_model_storage():
    job = the_job(rendered_on())
    spec = job["spec"]["rayClusterSpec"]
    assert spec["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"
    (group,) = spec["workerGroupSpecs"]
    assert group["groupName"] == "finetune-nvidia-l4" and group["rayStartParams"]["num-gpus"] == "1"
    # KubeRay's convention (as for the serving groups): a quoted JSON string.
    assert json.loads(json.loads(group["rayStartParams"]["resources"])) == {"accelerator:nvidia-l4": 1}
    worker = group["template"]["spec"]
    assert worker["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert worker["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    for template in pods(job):
        volume, mount = models_volume(template)
        assert volume["csi"]["readOnly"] is False and mount["readOnly"] is False
        assert template["metadata"]["labels"]["app.kubernetes.io/name"] == "gemma-serving-finetune"  # not the PDBs'
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    (key,) = [e for e in head["env"] if e["name"] == "GEMMA_API_KEY"]
    assert key["valueFrom"]["secretKeyRef"] == {"name": "ft-admin", "key": "api-key"}


def test_a_registry_makes_the_serving_pods_mount_the_storage_read_write_head_included():
    spec = rayservice(rendered_on())["spec"]["rayClusterConfig"]
    for template in [spec["headGroupSpec"]["template"], *(g["template"] for g in spec["workerGroupSpecs"])]:
        volume, mount = models_volume(template)  # the head's router reads and writes the registry
        assert volume["csi"]["readOnly"] is False and mount["readOnly"] is False


@pytest.mark.parametrize(("values", "message"), [
    ({"finetune": {"enabled": True}}, "finetune.register needs config.services.text.model.adapter_registry|"
                                      "set config.services.text.model.adapter_registry"),
    ({"finetune": {"enabled": True, "register": False, "output": "gs://b/a"}, "modelStorage": {"type": "none"}},
     "finetune needs modelStorage"),
])
def test_inconsistent_finetune_values_fail_to_render(values, message):
    with pytest.raises(helm.HelmRenderError, match=message):
        render(**values)


def test_bad_finetune_values_are_refused_by_the_schema():
    with pytest.raises(helm.HelmValuesError, match="finetune"):
        render(**{"finetune": {"enabled": True, "adapter": "no spaces"}})
    with pytest.raises(helm.HelmValuesError, match="invalid propertyName 'optimizer'"):
        render(**{"finetune": {"settings": {"optimizer": {}}}})  # only lora, training, workers


def test_the_cluster_spec_validates_against_the_verbatim_kuberay_crd():
    if not RAYCLUSTER_CRD.is_file():
        pytest.skip(f"{RAYCLUSTER_CRD} is not here (a shared reference file, not part of the project)")
    crd = yaml.safe_load(RAYCLUSTER_CRD.read_text())
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = v1["schema"]["openAPIV3Schema"]["properties"]["spec"]
    jsonschema.Draft7Validator(schema).validate(the_job(rendered_on())["spec"]["rayClusterSpec"])
