"""Helpers for the chart tests: render deploy/helm/gemma-serving with Helm's own Go SDK (helm-python-sdk) and
validate what it renders (Kubernetes schemas from kubernetes-validate; CRD schemas kept beside these tests)."""

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

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "deploy" / "helm" / "gemma-serving"
SCHEMAS = Path(__file__).parent / "schemas"
#: Kubernetes minor version the objects are validated against (GKE regular channel).
KUBE_VERSION = "1.33.0"
PROFILES = ["values.yaml", *sorted(p.name for p in CHART_DIR.glob("values-*.yaml"))]
RELEASE, NAMESPACE = "gemma", "gemma"


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


def validate_object(obj: dict[str, Any]) -> str:
    """Validate one rendered object; returns which schema source checked it. Raises on any violation."""
    key = f"{obj['apiVersion']}/{obj['kind']}"
    validators = crd_validators()
    if key in validators:
        errors = sorted(validators[key].iter_errors(obj), key=lambda e: list(e.absolute_path))
        if errors:
            raise AssertionError(
                f"{key} {obj['metadata']['name']}: "
                + "; ".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}" for e in errors[:5])
            )
        return "crd-subset"
    kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    return "kubernetes"


def validate_pod_template(template: dict[str, Any]) -> None:
    """A pod template embedded in a custom resource, against the real PodTemplateSpec schema (strict)."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": template.get("metadata", {}), "spec": template["spec"]}
    kubernetes_validate.validate(pod, KUBE_VERSION, strict=True)


def load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))
