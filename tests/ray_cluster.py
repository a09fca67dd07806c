"""The test session's Ray cluster: one head and three worker nodes on this host, each worker advertising one logical
GPU and an accelerator resource the way GKE worker groups do (`accelerator:<gke-accelerator>`).

Integration tests place services anywhere; the scaling tests pin text to the `nvidia-l4` nodes and audio to the
`nvidia-h100-80gb` node, kill replicas and nodes, and add nodes back.
"""

from __future__ import annotations

import dataclasses
import os

from gemma_serving.app import ACCELERATOR_RESOURCE_PREFIX

L4, H100 = "nvidia-l4", "nvidia-h100-80gb"
#: Worker nodes by name: the accelerator each advertises.
WORKERS = {"l4-a": L4, "l4-b": L4, "h100-a": H100}
_MIB = 2**20
#: Measured facts (engine start, scale-up and recovery times), printed in pytest's terminal summary.
SESSION_FACTS: dict[str, str] = {}


def worker_args(name: str) -> dict:
    accelerator = WORKERS[name]
    return {
        "num_cpus": 2,
        "num_gpus": 1,  # logical: vLLM still runs on the CPU here, as on any CPU-only node
        "resources": {f"{ACCELERATOR_RESOURCE_PREFIX}{accelerator}": 1, f"node:{name}": 1},
        "object_store_memory": 256 * _MIB,
    }


@dataclasses.dataclass
class TestCluster:
    cluster: object  # ray.cluster_utils.Cluster
    nodes: dict  # worker name -> ray._private.node.Node

    def node_ids(self, accelerator: str | None = None) -> dict[str, str]:
        """Ray node id -> worker name, for live workers (optionally only those of one accelerator)."""
        return {n.node_id: name for name, n in self.nodes.items() if accelerator in (None, WORKERS[name])}

    def remove(self, name: str) -> None:
        """Kill a worker node abruptly (its raylet and every process on it)."""
        self.cluster.remove_node(self.nodes.pop(name), allow_graceful=False)

    def add(self, name: str) -> None:
        self.nodes[name] = self.cluster.add_node(wait=True, **worker_args(name))


def start_cluster() -> TestCluster:
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        # The head advertises `gemma-router` like the chart's head pod: routers stay off the workers we kill.
        head_node_args={"num_cpus": 2, "include_dashboard": False, "object_store_memory": 512 * _MIB,
                        "resources": {"gemma-router": 1000}},
    )
    nodes = {name: cluster.add_node(wait=False, **worker_args(name)) for name in WORKERS}
    cluster.wait_for_nodes()
    cluster.connect()
    return TestCluster(cluster, nodes)
