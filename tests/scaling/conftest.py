"""The scaling app on the session's multi-node cluster: text pinned to the `nvidia-l4` workers (one logical GPU per
replica, 1-2 replicas), audio pinned to the `nvidia-h100-80gb` worker and scaled to zero when idle, the router pinned
to the head. Fast autoscaling delays so the tests see scale-up and scale-down within minutes."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from gemma_serving.api import inference_pb2_grpc as pb_grpc
from gemma_serving.config import load_config, parse_config

from tests.ray_cluster import H100, L4
from tests.scaling.cluster_view import ClusterView

APP = "scaling"


def scaling_config():
    data = load_config().model_dump(mode="json")
    data["app_name"] = APP
    data["router"].update(port=0, http_port=None, resources={"gemma-router": 0.001})
    data["telemetry"] = {"metrics_port": 0}
    del data["services"]["vision"]
    # Several text engines share this host's two cores: let the OS place their threads (vLLM pins to core 0).
    cpu_env = {"VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    text = data["services"]["text"]
    text["model"]["adapters"] = []
    text["model"]["engine"]["max_num_seqs"] = 4  # requests queue in the engine: some have no output when killed
    text["deployment"].update(
        accelerator_type=L4, num_gpus=1, num_cpus=0.25, env=cpu_env, max_wait_for_replica_s=240,
        autoscaling={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2, "upscale_delay_s": 2,
                     "downscale_delay_s": 10},
    )
    data["services"]["audio"]["deployment"].update(
        accelerator_type=H100, num_gpus=1, num_cpus=0.25, env=cpu_env, max_wait_for_replica_s=240,
        # Zero when idle; the long downscale delay keeps the replica through the text tests (independence check).
        autoscaling={"min_replicas": 0, "max_replicas": 2, "target_ongoing_requests": 2, "upscale_delay_s": 2,
                     "downscale_delay_s": 900},
    )
    return parse_config(data)


@pytest.fixture(scope="package")
def scaling_platform(ray_cluster):
    """Deploy the scaling app; yields (router target, ClusterView). Text starts with one replica, audio with none."""
    from gemma_serving.app import build_app
    from ray import serve

    config = scaling_config()
    began = time.monotonic()
    handle = serve.run(build_app(config), name=APP, route_prefix=None)
    port = handle.port.remote().result()
    metrics_port = handle.metrics_port.remote().result()
    view = ClusterView(ray_cluster, APP, metrics_port)
    from tests.ray_cluster import SESSION_FACTS

    SESSION_FACTS["scaling app ready (router + 1 text engine)"] = f"{time.monotonic() - began:.1f} s"
    yield f"127.0.0.1:{port}", view
    serve.delete(APP)


@pytest.fixture(scope="package")
def target(scaling_platform):
    return scaling_platform[0]


@pytest.fixture(scope="package")
def view(scaling_platform):
    return scaling_platform[1]


@pytest.fixture
async def stub(target):
    async with grpc.aio.insecure_channel(target) as channel:
        yield pb_grpc.InferenceStub(channel)


async def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 0.5) -> float:
    """Poll `predicate` (sync, run in a thread) until true; returns the seconds it took."""
    began = time.monotonic()
    while not await asyncio.to_thread(predicate):
        if time.monotonic() - began > timeout_s:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        await asyncio.sleep(interval_s)
    return time.monotonic() - began
