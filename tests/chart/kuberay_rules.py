"""What the KubeRay 1.7.0 operator checks in Go before it reconciles a RayService, mirrored for the fields this chart
renders: `ValidateRayServiceMetadata`, `ValidateRayServiceSpec`, `ValidateRayClusterSpec` and
`ValidateClusterUpgradeOptions` (ray-operator/controllers/ray/utils/validation.go) and the RayCluster webhook's
unique worker group names (ray-operator/pkg/webhooks/v1/raycluster_webhook.go). The CRD schema cannot express these
(the CRD has no enum for `upgradeStrategy.type`, for one), so an API-server dry run does not catch them either: the
operator only records an event and does nothing. Messages are the operator's own.

The rules run on the object as the API server stores it (CRD defaults applied: `maxSurgePercent` 100,
`minReplicas` 0, `maxReplicas` 2147483647), as the operator sees it. Fields the chart never sets (GCS fault
tolerance, auth, history server, TLS, network policy, suspend) are still checked so that a values change which
starts setting them cannot slip through unnoticed.
"""

from __future__ import annotations

import re
from typing import Any

#: ray-operator/controllers/ray/utils/constant.go
MAX_RAYCLUSTER_NAME_LENGTH = 53  # 63 - len("-serve-svc")
MAX_RAYSERVICE_NAME_LENGTH = MAX_RAYCLUSTER_NAME_LENGTH - 6  # the cluster name appends "-xxxxx"
UPGRADE_TYPES = ("NewClusterWithIncrementalUpgrade", "NewCluster", "None")
RAY_FT_ENABLED = "ray.io/ft-enabled"
RAY_EXTERNAL_STORAGE_NS = "ray.io/external-storage-namespace"
INITIALIZING_TIMEOUT = "ray.io/initializing-timeout"
RAY_CONTAINER_INDEX = 0
DEFAULT_MAX_SURGE_PERCENT = 100  # CRD default of clusterUpgradeOptions.maxSurgePercent
DEFAULT_MIN_REPLICAS, DEFAULT_MAX_REPLICAS = 0, 2**31 - 1  # CRD defaults of workerGroupSpecs[].min/maxReplicas

_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_GO_DURATION = re.compile(r"^([0-9]*(\.[0-9]*)?(ns|us|µs|ms|s|m|h))+$")


class KubeRayValidationError(ValueError):
    """The operator would refuse to reconcile the object (message: the operator's)."""


def _env(container: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((e for e in container.get("env") or [] if e.get("name") == name), None)


def _containers(template: dict[str, Any]) -> list[dict[str, Any]]:
    return ((template or {}).get("spec") or {}).get("containers") or []


def is_autoscaling_enabled(spec: dict[str, Any]) -> bool:
    return spec.get("enableInTreeAutoscaling") is True


def is_autoscaling_v2_enabled(spec: dict[str, Any]) -> bool:
    return ((spec.get("autoscalerOptions") or {}).get("version")) == "v2"


def _is_dns1035_label(name: str) -> bool:
    return len(name) <= 63 and bool(_DNS1035.match(name))


def _is_qualified_name(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not all(_DNS1123_LABEL.match(p) for p in prefix.split("."))):
        return False
    return 0 < len(name) <= 63 and bool(_QUALIFIED_NAME.match(name))


def validate_rayservice_metadata(metadata: dict[str, Any]) -> None:
    name = metadata.get("name", "")
    if len(name) > MAX_RAYSERVICE_NAME_LENGTH:
        raise KubeRayValidationError(
            f"The RayService metadata is invalid: RayService name should be no more than "
            f"{MAX_RAYSERVICE_NAME_LENGTH} characters"
        )
    if not _is_dns1035_label(name):
        raise KubeRayValidationError(
            "The RayService metadata is invalid: RayService name should be a valid DNS1035 label"
        )
    timeout = (metadata.get("annotations") or {}).get(INITIALIZING_TIMEOUT)
    if timeout:
        ok = (_GO_DURATION.match(timeout) and not set(timeout) <= set("0.nsuµmh")) or (
            timeout.isdigit() and int(timeout) > 0
        )
        if not ok:
            raise KubeRayValidationError(
                f"The RayService metadata is invalid: RayService annotations is invalid: annotation "
                f"{INITIALIZING_TIMEOUT} has invalid format: {timeout}"
            )


def _validate_group_resources(group: str, params: dict[str, str], resources: dict[str, Any] | None) -> None:
    has_params = any(params.get(k) for k in ("num-cpus", "num-gpus", "memory", "resources"))
    if has_params and resources:
        raise KubeRayValidationError(
            f"resource fields should not be set in both rayStartParams and Resources for {group} group; "
            "please use only one"
        )


def _validate_group_labels(group: str, params: dict[str, str], labels: dict[str, str] | None) -> None:
    if "labels" in params:
        raise KubeRayValidationError(
            f"rayStartParams['labels'] is not supported for {group} group; please use the top-level Labels field "
            "instead"
        )
    for key, value in (labels or {}).items():
        if not _is_qualified_name(key):
            raise KubeRayValidationError(f"invalid label key for {group} group: '{key}'")
        if len(value) > 63 or not _LABEL_VALUE.match(value):
            raise KubeRayValidationError(f"invalid label value for key '{key}' in {group} group: '{value}'")


def validate_raycluster_spec(spec: dict[str, Any], annotations: dict[str, str] | None = None) -> None:
    """ValidateRayClusterSpec (the parts that apply to this chart's RayServices; first error wins, as in Go)."""
    annotations = annotations or {}
    head = spec["headGroupSpec"]
    head_containers = _containers(head.get("template"))
    if not head_containers:
        raise KubeRayValidationError("headGroupSpec should have at least one container")
    _validate_group_resources("Head", head.get("rayStartParams") or {}, head.get("resources"))
    _validate_group_labels("Head", head.get("rayStartParams") or {}, head.get("labels"))
    autoscaling = is_autoscaling_enabled(spec)
    head_container = head_containers[RAY_CONTAINER_INDEX]
    for group in spec.get("workerGroupSpecs") or []:
        name = group.get("groupName")
        if not _containers(group.get("template")):
            raise KubeRayValidationError("workerGroupSpec should have at least one container")
        if not autoscaling and ("minReplicas" not in group or "maxReplicas" not in group):
            raise KubeRayValidationError(
                f"worker group {name} must set both minReplicas and maxReplicas when autoscaling is disabled"
            )
        lo = group.get("minReplicas", DEFAULT_MIN_REPLICAS)
        hi = group.get("maxReplicas", DEFAULT_MAX_REPLICAS)
        if lo < 0:
            raise KubeRayValidationError(f"worker group {name} has negative minReplicas {lo}")
        if hi < 0:
            raise KubeRayValidationError(f"worker group {name} has negative maxReplicas {hi}")
        if lo > hi:
            raise KubeRayValidationError(f"worker group {name} has minReplicas {lo} greater than maxReplicas {hi}")
        _validate_group_resources(name, group.get("rayStartParams") or {}, group.get("resources"))
        _validate_group_labels(name, group.get("rayStartParams") or {}, group.get("labels"))
        idle = group.get("idleTimeoutSeconds")
        if idle is not None:
            if idle < 0:
                raise KubeRayValidationError(
                    f"worker group {name}: idleTimeoutSeconds must be non-negative, got {idle}"
                )
            v2_env = _env(head_container, "RAY_enable_autoscaler_v2")
            if not is_autoscaling_v2_enabled(spec) and not (v2_env and v2_env.get("value") in ("1", "true")):
                raise KubeRayValidationError(
                    f"worker group {name}: idleTimeoutSeconds is set, but autoscaler v2 is not enabled"
                )
        if group.get("priority"):
            raise KubeRayValidationError(
                f"worker group {name}: priority is set (needs Ray >= 2.56.0 and autoscaler v2; not used by this "
                "chart)"
            )
    ft = spec.get("gcsFaultToleranceOptions")
    if annotations.get(RAY_FT_ENABLED) and ft is not None:
        raise KubeRayValidationError(
            f"{RAY_FT_ENABLED} annotation and GcsFaultToleranceOptions are both set. Please use only "
            "GcsFaultToleranceOptions to configure GCS fault tolerance"
        )
    ft_enabled = ft is not None or annotations.get(RAY_FT_ENABLED) == "true"
    if not ft_enabled and _env(head_container, "RAY_REDIS_ADDRESS"):
        raise KubeRayValidationError(
            "RAY_REDIS_ADDRESS is set which implicitly enables GCS fault tolerance, but GcsFaultToleranceOptions "
            "is not set. Please set GcsFaultToleranceOptions to enable GCS fault tolerance"
        )
    if ft is not None:
        if (head.get("rayStartParams") or {}).get("redis-password"):
            raise KubeRayValidationError(
                "cannot set `redis-password` in rayStartParams when GcsFaultToleranceOptions is enabled - use "
                "GcsFaultToleranceOptions.RedisPassword instead"
            )
        for env in ("REDIS_PASSWORD", "RAY_REDIS_ADDRESS"):
            if _env(head_container, env):
                raise KubeRayValidationError(
                    f"cannot set `{env}` env var in head Pod when GcsFaultToleranceOptions is enabled"
                )
        if annotations.get(RAY_EXTERNAL_STORAGE_NS):
            raise KubeRayValidationError(
                "cannot set `ray.io/external-storage-namespace` annotation when GcsFaultToleranceOptions is enabled"
            )
    if (head.get("rayStartParams") or {}).get("redis-username") or _env(head_container, "REDIS_USERNAME"):
        raise KubeRayValidationError(
            "cannot set redis username in rayStartParams or environment variables - use "
            "GcsFaultToleranceOptions.RedisUsername instead"
        )
    suspended = [g.get("groupName") for g in spec.get("workerGroupSpecs") or [] if g.get("suspend")]
    if suspended:  # the RayJobDeletionPolicy gate is off by default, and the autoscaler refuses it regardless
        raise KubeRayValidationError(f"worker group {suspended[0]} cannot be suspended with Autoscaler enabled")
    v2_env = _env(head_container, "RAY_enable_autoscaler_v2")
    if not autoscaling and v2_env and v2_env.get("value") in ("1", "true"):
        raise KubeRayValidationError(
            f"environment variable RAY_enable_autoscaler_v2 cannot be set to '{v2_env['value']}' when "
            "enableInTreeAutoscaling is false. Please set enableInTreeAutoscaling: true to use autoscaler v2"
        )
    if autoscaling:
        if (spec.get("autoscalerOptions") or {}).get("version") is not None and v2_env:
            raise KubeRayValidationError(
                "both .spec.autoscalerOptions.version and head Pod env var RAY_enable_autoscaler_v2 are set, "
                "please only use the former"
            )
        if is_autoscaling_v2_enabled(spec):
            for label, template in [("head Pod", head.get("template"))] + [
                (f"worker group {g.get('groupName')}", g.get("template")) for g in spec.get("workerGroupSpecs") or []
            ]:
                policy = ((template or {}).get("spec") or {}).get("restartPolicy", "")
                if policy not in ("", "Never"):
                    raise KubeRayValidationError(
                        f"restartPolicy for {label} should be Never or unset when using autoscaler V2"
                    )
    idle = (spec.get("autoscalerOptions") or {}).get("idleTimeoutSeconds")
    if idle is not None and idle < 0:
        raise KubeRayValidationError(f"autoscalerOptions.idleTimeoutSeconds must be non-negative, got {idle}")
    auth = spec.get("authOptions") or {}
    if auth.get("mode") == "token" or auth.get("enableK8sTokenAuth"):
        raise KubeRayValidationError("authOptions is set (needs Ray >= 2.52.0; not used by this chart)")
    for field in ("historyServerOptions", "networkPolicy", "tlsOptions"):
        if spec.get(field) is not None:
            raise KubeRayValidationError(f"spec.{field} requires an operator feature gate (not used by this chart)")


def validate_cluster_upgrade_options(spec: dict[str, Any]) -> None:
    """ValidateClusterUpgradeOptions (NewClusterWithIncrementalUpgrade with the RayServiceIncrementalUpgrade gate)."""
    if not is_autoscaling_enabled(spec["rayClusterConfig"]):
        raise KubeRayValidationError("Ray Autoscaler is required for NewClusterWithIncrementalUpgrade")
    options = spec["upgradeStrategy"].get("clusterUpgradeOptions")
    if options is None:
        raise KubeRayValidationError("ClusterUpgradeOptions are required for NewClusterWithIncrementalUpgrade")
    surge = options.get("maxSurgePercent", DEFAULT_MAX_SURGE_PERCENT)
    if not 0 <= surge <= 100:
        raise KubeRayValidationError("maxSurgePercent must be between 0 and 100")
    step = options.get("stepSizePercent")
    if step is None or not 0 <= step <= 100:
        raise KubeRayValidationError("stepSizePercent must be between 0 and 100")
    if step > surge:
        raise KubeRayValidationError("stepSizePercent must be less than or equal to maxSurgePercent")
    interval = options.get("intervalSeconds")
    if interval is None or interval <= 0:
        raise KubeRayValidationError("intervalSeconds must be greater than 0")
    if not options.get("gatewayClassName"):
        raise KubeRayValidationError("gatewayClassName is required for NewClusterWithIncrementalUpgrade")


def validate_rayservice_spec(rayservice: dict[str, Any], *, incremental_upgrade_gate: bool = True) -> None:
    """ValidateRayServiceSpec; `incremental_upgrade_gate`: the operator's RayServiceIncrementalUpgrade feature gate."""
    spec = rayservice["spec"]
    cluster = spec["rayClusterConfig"]
    if (cluster.get("authOptions") or {}).get("enableK8sTokenAuth"):
        raise KubeRayValidationError(
            "The RayService spec is invalid: K8s token auth mode is currently not supported for RayService"
        )
    try:
        validate_raycluster_spec(cluster, rayservice["metadata"].get("annotations"))
    except KubeRayValidationError as exc:
        raise KubeRayValidationError(f"The RayService spec is invalid: {exc}") from None
    if ((cluster["headGroupSpec"].get("headService") or {}).get("metadata") or {}).get("name"):
        raise KubeRayValidationError(
            "The RayService spec is invalid: spec.rayClusterConfig.headGroupSpec.headService.metadata.name should "
            "not be set"
        )
    kind = (spec.get("upgradeStrategy") or {}).get("type")
    if kind is not None and kind not in UPGRADE_TYPES:
        raise KubeRayValidationError(
            f"The RayService spec is invalid: Spec.UpgradeStrategy.Type value {kind} is invalid, valid options are "
            "NewClusterWithIncrementalUpgrade, NewCluster, or None"
        )
    delay = spec.get("rayClusterDeletionDelaySeconds")
    if delay is not None and delay < 0:
        raise KubeRayValidationError(
            "The RayService spec is invalid: Spec.RayClusterDeletionDelaySeconds should be a non-negative integer, "
            f"got {delay}"
        )
    if incremental_upgrade_gate and kind == "NewClusterWithIncrementalUpgrade":
        try:
            validate_cluster_upgrade_options(spec)
        except KubeRayValidationError as exc:
            raise KubeRayValidationError(f"The RayService spec is invalid: {exc}") from None


def validate_worker_group_names(cluster_spec: dict[str, Any]) -> None:
    """The RayCluster webhook's validateWorkerGroups: worker group names must be unique."""
    seen = set()
    for group in cluster_spec.get("workerGroupSpecs") or []:
        if group["groupName"] in seen:
            raise KubeRayValidationError("worker group names must be unique")
        seen.add(group["groupName"])


def validate_rayservice(rayservice: dict[str, Any], *, incremental_upgrade_gate: bool = True) -> None:
    """Everything the operator checks in Go before it creates the RayCluster and its Services."""
    validate_rayservice_metadata(rayservice["metadata"])
    validate_rayservice_spec(rayservice, incremental_upgrade_gate=incremental_upgrade_gate)
    validate_worker_group_names(rayservice["spec"]["rayClusterConfig"])
