"""What the scaling tests read from the cluster: replicas per service (state, node, pid), router metrics, kills."""

from __future__ import annotations

import re
import urllib.request
from dataclasses import dataclass


@dataclass(frozen=True)
class Replica:
    name: str  # the actor's name in the "serve" namespace
    node_id: str
    pid: int


class ClusterView:
    def __init__(self, test_cluster, app: str, metrics_port: int) -> None:
        self.test_cluster = test_cluster
        self.app = app
        self.metrics_port = metrics_port

    def running(self, kind: str) -> int:
        """RUNNING replicas of a service, as Serve reports them."""
        from ray import serve

        app = serve.status().applications.get(self.app)
        deployment = app.deployments.get(kind) if app else None
        return deployment.replica_states.get("RUNNING", 0) if deployment else 0

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
        names = self.test_cluster.node_ids()
        return {names.get(r.node_id, "other") for r in self.replicas(kind)}

    def kill(self, replica: Replica) -> None:
        import ray

        ray.kill(ray.get_actor(replica.name, namespace="serve"), no_restart=True)

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the router's Prometheus samples named `name` whose labels include `labels` (0 when none)."""
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).read().decode()
        total = 0.0
        for found, value in re.findall(rf"^{re.escape(name)}\{{(.*)\}} (\S+)$", text, re.M):
            have = dict(re.findall(r'(\w+)="([^"]*)"', found))
            if all(have.get(k) == v for k, v in labels.items()):
                total += float(value)
        return total
