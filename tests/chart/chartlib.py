"""Helpers for the chart tests: render deploy/helm/gemma-serving with Helm's own Go SDK (helm-python-sdk) and
validate what it renders: Kubernetes schemas from kubernetes-validate; the RayService (and the RayCluster the operator
makes of it) against KubeRay 1.7.0's own CRDs in ../shared/reference/kuberay-crds when that directory exists (else
the hand-written subset in schemas/), then the operator's Go-side checks (kuberay_rules); the other custom resources
against the hand-written subsets in schemas/crds.yaml."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml
from referencing import Registry, Resource

from tests.chart import crdschema, kuberay_rules

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "deploy" / "helm" / "gemma-serving"
SCHEMAS = Path(__file__).parent / "schemas"
#: Kubernetes minor version the objects are validated against (GKE regular channel).
KUBE_VERSION = "1.33.0"
PROFILES = ["values.yaml", *sorted(p.name for p in CHART_DIR.glob("values-*.yaml"))]
RELEASE, NAMESPACE = "gemma", "gemma"
#: KubeRay's CRDs, verbatim (data for the tests, never copied into this repository): CI puts shared/ beside the clone.
KUBERAY_CRDS = REPO.parent / "shared" / "reference" / "kuberay-crds"
KUBERAY_VERSION = "1.7.0"
#: sha256 of ray.io_rayservices.yaml / ray.io_rayclusters.yaml at KubeRay v1.7.0 (their README lists them).
KUBERAY_CRD_SHA256 = {
    "ray.io_rayservices.yaml": "0a8fc325e6e22b9231c1f282b309555e2ecf94227ca20a03df3d1d9a403907ab",
    "ray.io_rayclusters.yaml": "c44704442eef0c6721ad40c1d66782c8bd3fdab9d3344306a5820910a679baa1",
}
OBJECT_META = "https://kubernetes.io/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


def real_crds_available() -> bool:
    return all((KUBERAY_CRDS / name).is_file() for name in KUBERAY_CRD_SHA256)


@functools.cache
def chart() -> helm.Chart:
    return helm.Chart.load(str(CHART_DIR))


def profile_values(profile: str) -> dict[str, Any]:
    """User values of a profile (the default values.yaml is the chart's own defaults: no user values)."""
    if profile == "values.yaml":
        return {}
    return helm.values_from_yaml((CHART_DIR / profile).read_text(encoding="utf-8"))


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def render(profile: str = "values.yaml", **overrides: Any) -> dict[str, str]:
    """Template path -> rendered text for a profile plus overrides (nested dicts merge)."""
    values = deep_merge(profile_values(profile), overrides)
    return chart().render(values, name=RELEASE, namespace=NAMESPACE)


def objects(rendered: dict[str, str], *, include_tests: bool = True) -> list[dict[str, Any]]:
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt") or (not include_tests and "/tests/" in path):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def find(docs: list[dict[str, Any]], kind: str, name_suffix: str = "") -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]


def rayservice(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (rs,) = find(docs, "RayService")
    return rs


# ---- schema validation ----------------------------------------------------------------------------------------


@functools.cache
def _kube_definitions() -> Resource:
    data = kubernetes_validate.utils.schema_contents(
        f"kubernetes-json-schema/v{KUBE_VERSION}-local-strict/_definitions.json", KUBE_VERSION
    )
    return Resource.from_contents(data)


@functools.cache
def kuberay_crd_validators() -> dict[str, crdschema.CRDValidator]:
    """apiVersion/Kind -> validator from KubeRay's real CRDs (only when ../shared/reference/kuberay-crds exists)."""
    registry = _kube_definitions() @ Registry()
    out = {}
    for name in KUBERAY_CRD_SHA256:
        validator = crdschema.CRDValidator(crdschema.load_crd(KUBERAY_CRDS / name), "v1", registry, OBJECT_META)
        out[f"{validator.group}/{validator.version}/{validator.kind}"] = validator
    return out


@functools.cache
def crd_validators() -> dict[str, jsonschema.Draft202012Validator]:
    """apiVersion/Kind -> validator for the custom resources (hand-written CRD subsets, see the schema files)."""
    registry = _kube_definitions() @ Registry()
    schemas = {"ray.io/v1/RayService": yaml.safe_load((SCHEMAS / "rayservice-ray-v1.yaml").read_text())}
    crds = yaml.safe_load((SCHEMAS / "crds.yaml").read_text())
    shared = crds.pop("$defs")
    for key, schema in crds.items():
        schemas[key] = {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema, "$defs": shared}
    return {
        key: jsonschema.Draft202012Validator(schema, registry=registry, format_checker=None)
        for key, schema in schemas.items()
    }


def raycluster_of(rayservice: dict[str, Any]) -> dict[str, Any]:
    """The RayCluster the operator creates for a RayService (it goes through the same API server)."""
    from tests.chart.kuberay_sim import cluster_name

    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": cluster_name(rayservice), "namespace": rayservice["metadata"].get("namespace", NAMESPACE)},
        "spec": rayservice["spec"]["rayClusterConfig"],
    }


def stored_rayservice(obj: dict[str, Any]) -> dict[str, Any]:
    """The RayService as the API server stores it (real CRD defaults applied), or as rendered without the CRDs."""
    if not real_crds_available():
        return obj
    return kuberay_crd_validators()["ray.io/v1/RayService"].validate(obj)


def _subset_errors(key: str, obj: dict[str, Any]) -> None:
    errors = sorted(crd_validators()[key].iter_errors(obj), key=lambda e: list(e.absolute_path))
    if errors:
        raise AssertionError(
            f"{key} {obj['metadata']['name']}: "
            + "; ".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}" for e in errors[:5])
        )


def validate_object(obj: dict[str, Any]) -> str:
    """Validate one rendered object; returns which schema source checked it. Raises on any violation. A RayService
    is checked as the API server would (real CRD when available), then as the operator would (Go-side rules), and
    the RayCluster the operator makes of it against the RayCluster CRD."""
    key = f"{obj['apiVersion']}/{obj['kind']}"
    if key == "ray.io/v1/RayService" and real_crds_available():
        validators = kuberay_crd_validators()
        stored, errors, notes = validators[key].check(obj)
        dropped = [n for n in notes if "null dropped" in n]
        if errors or dropped:
            raise crdschema.CRDValidationError(f"{key} {obj['metadata']['name']}: " + "; ".join((errors + dropped)[:8]))
        kuberay_rules.validate_rayservice(stored)
        validators["ray.io/v1/RayCluster"].validate(raycluster_of(stored))
        return "kuberay-crd"
    if key in crd_validators():
        _subset_errors(key, obj)
        if key == "ray.io/v1/RayService":
            kuberay_rules.validate_rayservice(obj)
        return "crd-subset"
    kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    return "kubernetes"


def validate_pod_template(template: dict[str, Any]) -> None:
    """A pod template embedded in a custom resource, against the real PodTemplateSpec schema (strict)."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": template.get("metadata", {}), "spec": template["spec"]}
    kubernetes_validate.validate(pod, KUBE_VERSION, strict=True)


def load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))
