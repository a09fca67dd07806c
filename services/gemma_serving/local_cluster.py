"""A multi-node Ray cluster on one host, for the scaling tests and `bench/scaling.py`.

One head and three worker nodes, each worker advertising one logical GPU and an accelerator resource the way the
Helm chart's GKE worker groups do (`accelerator:<gke-accelerator>`), so Serve places replicas exactly as it would on
a cluster: text on the `nvidia-l4` workers, audio on the `nvidia-h100-80gb` worker, routers on the head (which
advertises `gemma-router` like the chart's head pod). vLLM still runs on the CPU here, as on any CPU-only node.

`ClusterView` reads what the tests and the benchmark need: replicas per service (state, node), router metrics.
"""

from __future__ import annotations

import dataclasses
import os
import re
import urllib.request
from typing import Any

from gemma_serving.app import ACCELERATOR_RESOURCE_PREFIX, replica_states
from gemma_serving.config import ServingConfig, load_config, parse_config

L4, H100 = "nvidia-l4", "nvidia-h100-80gb"
#: Worker nodes by name: the accelerator each advertises.
WORKERS = {"l4-a": L4, "l4-b": L4, "h100-a": H100}
ROUTER_RESOURCE = "gemma-router"
_MIB = 2**20


def worker_args(name: str) -> dict[str, Any]:
    return {
        "num_cpus": 2,
        "num_gpus": 1,  # logical
        "resources": {f"{ACCELERATOR_RESOURCE_PREFIX}{WORKERS[name]}": 1},
        "object_store_memory": 256 * _MIB,
    }


@dataclasses.dataclass
class LocalCluster:
    cluster: Any  # ray.cluster_utils.Cluster
    nodes: dict[str, Any]  # worker name -> ray._private.node.Node

    def node_ids(self, accelerator: str | None = None) -> dict[str, str]:
        """Ray node id -> worker name, for live workers (optionally only those of one accelerator)."""
        return {n.node_id: name for name, n in self.nodes.items() if accelerator in (None, WORKERS[name])}

    def remove(self, name: str) -> None:
        """Kill a worker node abruptly (its raylet and every process on it)."""
        self.cluster.remove_node(self.nodes.pop(name), allow_graceful=False)

    def add(self, name: str) -> None:
        """Start a worker node (call from the main thread: Ray installs signal handlers)."""
        self.nodes[name] = self.cluster.add_node(wait=True, **worker_args(name))

    def shutdown(self) -> None:
        import ray

        ray.shutdown()
        self.cluster.shutdown()


def start_local_cluster() -> LocalCluster:
    """Start the head and the workers, and connect this process as the driver (~10 s)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "include_dashboard": False, "object_store_memory": 512 * _MIB,
                        "resources": {ROUTER_RESOURCE: 1000}},
    )
    nodes = {name: cluster.add_node(wait=False, **worker_args(name)) for name in WORKERS}
    cluster.wait_for_nodes()
    cluster.connect()
    return LocalCluster(cluster, nodes)


def pinned_config(app_name: str, *, text_max_replicas: int = 2, audio_max_replicas: int = 1,
                  target_ongoing_requests: float = 2, upscale_delay_s: float = 2, text_downscale_delay_s: float = 10,
                  audio_downscale_delay_s: float = 900) -> ServingConfig:
    """The local tiny models, text on L4 workers (1-N replicas), audio on the H100 worker (0-N), router on the head."""
    data = load_config().model_dump(mode="json")
    data["app_name"] = app_name
    data["router"].update(port=0, http_port=None, resources={ROUTER_RESOURCE: 0.001})
    data["telemetry"] = {"metrics_port": 0}
    del data["services"]["vision"]
    # Several engines share this host's cores: let the OS place their threads (vLLM pins to core 0 by default).
    cpu_env = {"VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    text = data["services"]["text"]
    text["model"]["adapters"] = []
    text["model"]["adapter_registry"] = None
    text["model"]["engine"]["max_num_seqs"] = 4  # requests queue in the engine under load
    for kind, accelerator, low, high, down in (("text", L4, 1, text_max_replicas, text_downscale_delay_s),
                                               ("audio", H100, 0, audio_max_replicas, audio_downscale_delay_s)):
        data["services"][kind]["deployment"].update(
            accelerator_type=accelerator, num_gpus=1, num_cpus=0.25, env=cpu_env, max_wait_for_replica_s=240,
            autoscaling={"min_replicas": low, "max_replicas": high, "target_ongoing_requests": target_ongoing_requests,
                         "upscale_delay_s": upscale_delay_s, "downscale_delay_s": down},
        )
    return parse_config(data)


@dataclasses.dataclass(frozen=True)
class Replica:
    name: str  # the actor's name in the "serve" namespace
    node_id: str
    pid: int


class ClusterView:
    """Replicas per service of one app, and its router's metrics."""

    def __init__(self, local: LocalCluster, app: str, metrics_port: int) -> None:
        self.local = local
        self.app = app
        self.metrics_port = metrics_port

    def replica_states(self) -> dict[str, dict[str, int]]:
        """Replica counts by state (RUNNING, STARTING, ...) per service, as Serve reports them."""
        return replica_states(self.app)

    def running(self, kind: str) -> int:
        return self.replica_states().get(kind, {}).get("RUNNING", 0)

    def replicas(self, kind: str) -> list[Replica]:
        """Live replica actors of a service (including ones still starting), with the node each runs on."""
        from ray._private import state  # the GCS actor table (the state API needs the dashboard)

        cls = f"ServeReplica:{self.app}:{kind}"
        return [
            Replica(a["Name"], a["Address"]["NodeID"], a["Pid"])
            for a in state.actors().values()
            if a["ActorClassName"] == cls and a["State"] == "ALIVE"
        ]

    def nodes_of(self, kind: str) -> set[str]:
        """Worker names hosting the service's live replicas ('other' for the head or an unknown node)."""
        names = self.local.node_ids()
        return {names.get(r.node_id, "other") for r in self.replicas(kind)}

    def kill(self, replica: Replica) -> None:
        import ray

        ray.kill(ray.get_actor(replica.name, namespace="serve"), no_restart=True)

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the router's Prometheus samples named `name` whose labels include `labels` (0 when none)."""
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).read().decode()
        total = 0.0
        for found, value in re.findall(rf"^{re.escape(name)}\{{(.*)\}} (\S+)$", text, re.MULTILINE):
            have = dict(re.findall(r'(\w+)="([^"]*)"', found))
            if all(have.get(k) == v for k, v in labels.items()):
                total += float(value)
        return total


def ray_metrics_urls() -> list[str]:
    """The metrics export endpoint of every live node of the connected Ray cluster: where Ray's metrics agent serves
    what replicas record with ray.util.metrics (vLLM's engine metrics among them); the chart scrapes the same port."""
    import ray

    return [f"http://{n['NodeManagerAddress']}:{n['MetricsExportPort']}/metrics" for n in ray.nodes() if n["Alive"]]


def engine_metrics_texts() -> list[str]:
    """The Prometheus text of every reachable node's metrics agent (a node that just went away is skipped)."""
    texts = []
    for url in ray_metrics_urls():
        try:
            texts.append(urllib.request.urlopen(url, timeout=10).read().decode())
        except OSError:
            continue
    return texts
