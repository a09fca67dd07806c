"""What the KubeRay 1.7.0 operator builds from a RayService, for the parts the router's traffic depends on: the labels
it puts on Ray pods (`labelPod` and `BuildPod` in ray-operator/controllers/ray/common/pod.go) and the Services it
creates (`BuildServiceForHeadPod`, `BuildHeadServiceForRayService`, `BuildServeService` in common/service.go).

Facts these mirror (KubeRay 1.7.0):
- pod labels: KubeRay's defaults (ray.io/cluster, ray.io/node-type, ray.io/group, ray.io/identifier, ray.io/is-ray-node,
  app.kubernetes.io/name=kuberay, app.kubernetes.io/created-by=kuberay-operator), then the template's labels win except
  for ray.io/node-type, ray.io/group and ray.io/cluster. For a RayService, ray.io/serve is "true" on every worker pod
  (always: workers are gated by their readiness probe) and starts "false" on the head, where the RayService
  controller sets it from the Serve proxy's /-/healthz on the head container's `serve` port.
- the RayService head Service `<rayservice>-head-svc` selects the active cluster's head with KubeRay's default head
  labels (no template labels are consulted); its ports are the head container's ports (plus Ray's defaults whose
  numbers are free) with appProtocol "tcp", merged by name into `headGroupSpec.headService.spec.ports` (KubeRay's
  wins on a name clash); the user's headService metadata, type and other fields are kept, labels replaced.
- the serve Service `<rayservice>-serve-svc` selects {ray.io/cluster, ray.io/serve: "true"}; its ports are the head
  container ports named `serve` or `serve-*` (kuberay#4558), rebuilt as bare {name, port}: no targetPort name, no
  appProtocol.
"""

from __future__ import annotations

import copy
from typing import Any

DEFAULT_PORTS = {"client": 10001, "gcs-server": 6379, "dashboard": 8265, "metrics": 8080, "serve": 8000}
DEFAULT_APP_PROTOCOL = "tcp"


def cluster_name(rayservice: dict[str, Any]) -> str:
    """A RayCluster name as KubeRay generates it (`<rayservice>-<5 random characters>`)."""
    return f"{rayservice['metadata']['name']}-abcde"


def pod_labels(rayservice: dict[str, Any], group: str | None) -> dict[str, str]:
    """Labels of a head (group None) or worker pod of `group` in the cluster KubeRay creates for the RayService."""
    cluster = rayservice["spec"]["rayClusterConfig"]
    name = cluster_name(rayservice)
    if group is None:
        template, node_type, group_name = cluster["headGroupSpec"]["template"], "head", "headgroup"
    else:
        spec = next(g for g in cluster.get("workerGroupSpecs", []) if g["groupName"] == group)
        template, node_type, group_name = spec["template"], "worker", group
    labels = {
        "ray.io/is-ray-node": "yes",
        "ray.io/cluster": name,
        "ray.io/node-type": node_type,
        "ray.io/group": group_name,
        "ray.io/identifier": f"{name}-{node_type}",
        "app.kubernetes.io/name": "kuberay",
        "app.kubernetes.io/created-by": "kuberay-operator",
    }
    for key, value in ((template.get("metadata") or {}).get("labels") or {}).items():
        if key not in ("ray.io/node-type", "ray.io/group", "ray.io/cluster"):
            labels[key] = value
    labels["ray.io/serve"] = "true" if node_type == "worker" else "false"
    return labels


def head_pod_labels_when_serving(rayservice: dict[str, Any]) -> dict[str, str]:
    """The head pod once the RayService controller found its Serve proxy healthy (excludeHeadPodFromServeSvc false)."""
    labels = pod_labels(rayservice, None)
    if not rayservice["spec"].get("excludeHeadPodFromServeSvc"):
        labels["ray.io/serve"] = "true"
    return labels


def _head_container(rayservice: dict[str, Any]) -> dict[str, Any]:
    return rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]


def head_container_ports(rayservice: dict[str, Any]) -> dict[str, int]:
    return {p.get("name") or f"{p['containerPort']}-port": p["containerPort"]
            for p in _head_container(rayservice).get("ports") or []}


def service_ports(rayservice: dict[str, Any]) -> dict[str, int]:
    """getServicePorts: the head container's ports plus Ray's default ports whose name and number are both free."""
    ports = head_container_ports(rayservice)
    used = set(ports.values())
    for name, number in DEFAULT_PORTS.items():
        if name not in ports and number not in used:
            ports[name] = number
            used.add(number)
    return ports


def head_service(rayservice: dict[str, Any]) -> dict[str, Any]:
    """`<rayservice>-head-svc` as KubeRay creates it for the active cluster."""
    name = cluster_name(rayservice)
    head = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]
    selector = {
        "ray.io/cluster": name,
        "ray.io/node-type": "head",
        "ray.io/identifier": f"{name}-head",
        "app.kubernetes.io/name": "kuberay",
        "app.kubernetes.io/created-by": "kuberay-operator",
    }
    defaults = [
        {"name": n, "port": p, "appProtocol": DEFAULT_APP_PROTOCOL} for n, p in service_ports(rayservice).items()
    ]
    custom = copy.deepcopy(head.get("headService") or {})
    spec = custom.get("spec") or {}
    by_name = {p["name"]: p for p in spec.get("ports") or [] if p.get("name")}
    by_name.update({p["name"]: p for p in defaults})
    unnamed = [p for p in spec.get("ports") or [] if not p.get("name")]
    spec["ports"] = [by_name[n] for n in sorted(by_name)] + unnamed
    spec["selector"] = selector
    spec.setdefault("type", head.get("serviceType") or "ClusterIP")
    if not custom:
        spec["clusterIP"] = "None"
        spec["publishNotReadyAddresses"] = True
    metadata = custom.get("metadata") or {}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": f"{rayservice['metadata']['name']}-head-svc",
            "namespace": rayservice["metadata"].get("namespace", "default"),
            "labels": {
                "ray.io/originated-from-cr-name": rayservice["metadata"]["name"],
                "ray.io/originated-from-crd": "RayService",
                "ray.io/node-type": "head",
                "ray.io/identifier": f"{rayservice['metadata']['name']}-head",
            },
            **({"annotations": metadata["annotations"]} if metadata.get("annotations") else {}),
        },
        "spec": spec,
    }


def serve_service(rayservice: dict[str, Any]) -> dict[str, Any]:
    """`<rayservice>-serve-svc` as KubeRay creates it (NewCluster/None: the RayService-level one)."""
    ports = [{"name": n, "port": p} for n, p in sorted(head_container_ports(rayservice).items())
             if n == "serve" or n.startswith("serve-")]
    custom = copy.deepcopy(rayservice["spec"].get("serveService") or {})
    spec = custom.get("spec") or {}
    spec["ports"] = ports or [{"name": p["name"], "port": p["port"]} for p in spec.get("ports", [])
                              if p.get("name") == "serve"][:1]
    spec["selector"] = {"ray.io/cluster": cluster_name(rayservice), "ray.io/serve": "true"}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": (custom.get("metadata") or {}).get("name") or f"{rayservice['metadata']['name']}-serve-svc"
        },
        "spec": spec,
    }


def selects(service: dict[str, Any], labels: dict[str, str]) -> bool:
    selector = service["spec"].get("selector") or {}
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def service_problems(service: dict[str, Any]) -> list[str]:
    """What the API server's Service validation refuses beyond the schema: duplicate port names or numbers."""
    problems = []
    names = [p.get("name") for p in service["spec"].get("ports", [])]
    keys = [(p["port"], p.get("protocol", "TCP")) for p in service["spec"].get("ports", [])]
    if len(names) != len(set(names)):
        problems.append(f"duplicate port names {names}")
    if len(keys) != len(set(keys)):
        problems.append(f"duplicate port numbers {keys}")
    return problems
