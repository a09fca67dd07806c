"""The scaling app on the session's multi-node cluster (gemma_serving.local_cluster): text pinned to the `nvidia-l4`
workers (one logical GPU per replica, 1-2 replicas), audio pinned to the `nvidia-h100-80gb` worker and scaled to zero
when idle (a long downscale delay keeps it through the text tests: the independence check), the router on the head.
Fast autoscaling delays so the tests see scale-up and scale-down within minutes."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from gemma_serving.api import inference_pb2_grpc as pb_grpc
from gemma_serving.local_cluster import ClusterView, pinned_config

from tests.session_facts import SESSION_FACTS

APP = "scaling"


@pytest.fixture(scope="package")
def scaling_platform(ray_cluster):
    """Deploy the scaling app; yields (router target, ClusterView). Text starts with one replica, audio with none."""
    from gemma_serving.app import build_app
    from ray import serve

    # Audio may ask for 2 replicas but only one H100 node exists: the second would stay pending.
    config = pinned_config(APP, text_max_replicas=2, audio_max_replicas=2)
    began = time.monotonic()
    handle = serve.run(build_app(config), name=APP, route_prefix=None)
    port = handle.port.remote().result()
    metrics_port = handle.metrics_port.remote().result()
    view = ClusterView(ray_cluster, APP, metrics_port)
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
