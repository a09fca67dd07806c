"""Validate custom resources against a CustomResourceDefinition's openAPIV3Schema the way the Kubernetes API server
does on create with strict field validation (`kubectl apply --validate=strict`, Helm 3.14+'s server-side checks):

1. nulls in fields that are not `nullable` are dropped (the API server prunes them before defaulting),
2. `default`s are filled in wherever the enclosing object is present (so `protocol: TCP`, `maxSurgePercent: 100`
   and friends exist when the rules below run, as they do for the operator),
3. the object is checked against the schema closed to unknown fields (strict validation reports what the API
   server would otherwise prune), with `x-kubernetes-int-or-string`, `x-kubernetes-preserve-unknown-fields`,
   `nullable` and the int32/int64 `format`s meaning what they mean to the API server,
4. `x-kubernetes-list-type: map` keys and `set` items must be unique, and the CEL rules
   (`x-kubernetes-validations`) the KubeRay CRDs carry are evaluated (transition rules such as
   `self == oldSelf` only apply to updates and are reported, not checked, on create).

Top-level `metadata` is the API server's own ObjectMeta (the CRD only says `type: object`): it is checked against
the real Kubernetes ObjectMeta schema passed in by the caller.
"""

from __future__ import annotations

import copy
import hashlib
import re
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)


class CRDValidationError(AssertionError):
    """The API server would refuse the object (message lists the first problems)."""


def load_crd(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def served_schema(crd: dict[str, Any], version: str) -> dict[str, Any]:
    (entry,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    assert entry["served"], f"{crd['metadata']['name']} does not serve {version}"
    return entry["schema"]["openAPIV3Schema"]


# ---- 1 + 2: null pruning and defaulting ---------------------------------------------------------------------------


def _is_int_or_string(schema: dict[str, Any]) -> bool:
    return bool(schema.get("x-kubernetes-int-or-string"))


def apply_defaults(obj: Any, schema: dict[str, Any], path: str = "", notes: list[str] | None = None) -> Any:
    """Return a copy of `obj` with the API server's null pruning and defaulting applied; `notes` collects what was
    dropped (a null the API server would silently discard is a rendering bug worth reporting)."""
    notes = [] if notes is None else notes
    obj = copy.deepcopy(obj)
    _default(obj, schema, path, notes)
    return obj


def _default(value: Any, schema: dict[str, Any], path: str, notes: list[str]) -> None:
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key in list(value):
            sub = props.get(key)
            if sub is None and isinstance(schema.get("additionalProperties"), dict):
                sub = schema["additionalProperties"]
            if value[key] is None and sub is not None and not sub.get("nullable"):
                notes.append(f"{path}/{key}: null dropped")
                del value[key]
        for key, sub in props.items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
        for key, item in value.items():
            sub = props.get(key)
            if sub is None and isinstance(schema.get("additionalProperties"), dict):
                sub = schema["additionalProperties"]
            if sub is not None:
                _default(item, sub, f"{path}/{key}", notes)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        items = schema["items"]
        for i, item in enumerate(value):
            _default(item, items, f"{path}/{i}", notes)


# ---- 3: the structural schema as a closed JSON Schema --------------------------------------------------------------


def to_json_schema(schema: dict[str, Any], *, object_meta_ref: str | None = None, top: bool = True) -> dict[str, Any]:
    """Translate an OpenAPI v3 structural schema into a JSON Schema (draft 2020-12) closed to unknown fields."""
    out: dict[str, Any] = {}
    for key in ("enum", "pattern", "minimum", "maximum", "minLength", "maxLength", "minItems", "maxItems",
                "minProperties", "maxProperties", "uniqueItems", "multipleOf", "required", "exclusiveMinimum",
                "exclusiveMaximum"):
        if key in schema:
            out[key] = schema[key]
    preserve = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
    kind = schema.get("type")
    if _is_int_or_string(schema):
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        kind = None
    elif "anyOf" in schema:
        out["anyOf"] = [to_json_schema(s, top=False) for s in schema["anyOf"]]
    for key in ("allOf", "oneOf"):
        if key in schema:
            out[key] = [to_json_schema(s, top=False) for s in schema[key]]
    if "not" in schema:
        out["not"] = to_json_schema(schema["not"], top=False)
    if kind is not None:
        out["type"] = [kind, "null"] if schema.get("nullable") else kind
        if kind == "integer":
            bounds = {"int32": INT32, "int64": INT64}.get(schema.get("format", ""))
            if bounds is not None:
                lo, hi = bounds
                out["minimum"] = max(out.get("minimum", lo), lo)
                out["maximum"] = min(out.get("maximum", hi), hi)
    if kind == "object" or "properties" in schema or "additionalProperties" in schema:
        props = {k: to_json_schema(v, top=False) for k, v in schema.get("properties", {}).items()}
        if top and object_meta_ref is not None:
            props["metadata"] = {"$ref": object_meta_ref}
        out["properties"] = props
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            out["additionalProperties"] = to_json_schema(extra, top=False)
        elif extra is True or preserve:
            out["additionalProperties"] = True
        else:  # the API server prunes (strict validation: refuses) every field the schema does not name
            out["additionalProperties"] = False
    if isinstance(schema.get("items"), dict):
        out["items"] = to_json_schema(schema["items"], top=False)
    if kind is None and schema.get("nullable"):
        out = {"anyOf": [out, {"type": "null"}]}
    return out


# ---- 4: list types and CEL -----------------------------------------------------------------------------------------

_SELF_IN = re.compile(r"^self in \[(.*)\]$")


def _cel(rule: str, value: Any) -> bool | None:
    """Evaluate the CEL rule forms the KubeRay CRDs use; None for transition rules (updates only)."""
    rule = rule.strip()
    if "oldSelf" in rule:
        return None
    match = _SELF_IN.match(rule)
    if match:
        allowed = [s.strip().strip("'\"") for s in match.group(1).split(",")]
        return value in allowed
    raise CRDValidationError(f"CEL rule not understood by this test helper: {rule!r} (teach crdschema._cel)")


def structural_checks(value: Any, schema: dict[str, Any], path: str = "", transition_rules: list[str] | None = None
                      ) -> list[str]:
    """Errors from list-map/set uniqueness and CEL rules (on a defaulted object)."""
    errors: list[str] = []
    transition_rules = [] if transition_rules is None else transition_rules
    for rule in schema.get("x-kubernetes-validations", []):
        verdict = _cel(rule["rule"], value)
        if verdict is None:
            transition_rules.append(f"{path or '/'}: {rule['rule']}")
        elif not verdict:
            errors.append(f"{path or '/'}: {rule.get('message', rule['rule'])}")
    if isinstance(value, list):
        list_type = schema.get("x-kubernetes-list-type")
        if list_type == "map":
            keys = schema.get("x-kubernetes-list-map-keys", [])
            seen = set()
            for i, item in enumerate(value):
                key = tuple(item.get(k) if isinstance(item, dict) else None for k in keys)
                if key in seen:
                    errors.append(f"{path}/{i}: Duplicate value: {dict(zip(keys, key))}")
                seen.add(key)
        elif list_type == "set":
            seen_items = []
            for i, item in enumerate(value):
                if item in seen_items:
                    errors.append(f"{path}/{i}: Duplicate value: {item!r}")
                seen_items.append(item)
        if isinstance(schema.get("items"), dict):
            for i, item in enumerate(value):
                errors += structural_checks(item, schema["items"], f"{path}/{i}", transition_rules)
    elif isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            if sub is not None:
                errors += structural_checks(item, sub, f"{path}/{key}", transition_rules)
    return errors


class CRDValidator:
    """One served version of one CRD, ready to check objects."""

    def __init__(self, crd: dict[str, Any], version: str, registry: Registry, object_meta_ref: str):
        self.group = crd["spec"]["group"]
        self.kind = crd["spec"]["names"]["kind"]
        self.version = version
        self.schema = served_schema(crd, version)
        closed = {"$schema": "https://json-schema.org/draft/2020-12/schema",
                  **to_json_schema(self.schema, object_meta_ref=object_meta_ref)}
        closed["required"] = sorted(set(closed.get("required", [])) | {"apiVersion", "kind", "metadata"})
        closed["properties"]["apiVersion"] = {"const": f"{self.group}/{version}"}
        closed["properties"]["kind"] = {"const": self.kind}
        self._validator = jsonschema.Draft202012Validator(closed, registry=registry, format_checker=None)

    def check(self, obj: dict[str, Any]) -> tuple[dict[str, Any], list[str], list[str]]:
        """(the object as stored after defaulting, errors, notes). Notes: dropped nulls and skipped
        transition rules."""
        notes: list[str] = []
        stored = apply_defaults(obj, self.schema, notes=notes)
        errors = [f"{'/'.join(map(str, e.absolute_path)) or '/'}: {e.message[:300]}"
                  for e in sorted(self._validator.iter_errors(stored), key=lambda e: list(map(str, e.absolute_path)))]
        transitions: list[str] = []
        errors += structural_checks(stored, self.schema, transition_rules=transitions)
        return stored, errors, notes + [f"transition rule (updates only): {t}" for t in transitions]

    def validate(self, obj: dict[str, Any]) -> dict[str, Any]:
        stored, errors, _ = self.check(obj)
        if errors:
            raise CRDValidationError(f"{self.kind} {obj.get('metadata', {}).get('name')}: " + "; ".join(errors[:8]))
        return stored
