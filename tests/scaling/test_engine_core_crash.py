"""kill -9 of the vLLM engine-core process inside the live text replica, under load: open streams end UNAVAILABLE
within seconds, the router's health for text turns NOT_SERVING, Serve's health check of the replica fails so Serve
replaces it, and the service answers again. Times go to the summary.

Runs on the scaling app (tests/scaling/conftest.py) while text has one replica, before the load tests (file order).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.scaling.conftest import wait_for
from tests.scaling.load import TextLoad, text_request
from tests.session_facts import SESSION_FACTS

pytestmark = pytest.mark.slow


def engine_core_pid(replica_pid: int) -> int:
    """The vLLM engine-core process the replica spawned (its title is VLLM::EngineCore)."""
    import psutil

    children = psutil.Process(replica_pid).children(recursive=True)
    cores = [c for c in children if "EngineCor" in c.name() or "EngineCore" in " ".join(c.cmdline())]
    assert len(cores) == 1, [(c.pid, c.name(), c.cmdline()[:3]) for c in children]
    return cores[0].pid


def text_health(target: str) -> int | None:
    """The router's grpc.health.v1 status for the text service (None when the router does not answer)."""
    try:
        with grpc.insecure_channel(target) as channel:
            request = health_pb2.HealthCheckRequest(service="text")
            return health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status
    except grpc.RpcError:
        return None


async def test_engine_core_killed_under_load(view, stub, target):
    await wait_for(lambda: view.running("text") == 1 and len(view.replicas("text")) == 1, 300,
                   "one RUNNING text replica")
    [victim] = view.replicas("text")
    core = engine_core_pid(victim.pid)
    load = TextLoad(target, concurrency=4).start()
    await wait_for(lambda: sum(s.chunks for s in load.streams) > 8, 60, "streams with output")
    killed_at = time.monotonic()
    os.kill(core, signal.SIGKILL)
    open_at_kill = load.open_at(killed_at)
    await wait_for(lambda: all(s.ended is not None for s in open_at_kill), 30, "the open streams to end",
                   interval_s=0.05)
    streams_ended = max(s.ended for s in open_at_kill) - killed_at
    await load.stop()  # no new streams while the service recovers
    cut = [s for s in open_at_kill if s.code != "OK"]
    assert cut, "killing the engine core failed no open stream: the kill did not hit"
    assert {s.code for s in cut} == {"UNAVAILABLE"}, {s.code for s in cut}
    assert streams_ended < 5, f"streams took {streams_ended:.1f} s to end after the engine core died"

    await wait_for(lambda: text_health(target) == health_pb2.HealthCheckResponse.NOT_SERVING, 20,
                   "the router's text health to turn NOT_SERVING", interval_s=0.2)
    health_off = time.monotonic() - killed_at

    await wait_for(lambda: victim.name not in {r.name for r in view.replicas("text")}, 120,
                   "Serve to replace the replica whose engine died (its health check failing)")
    replaced = time.monotonic() - killed_at
    await wait_for(lambda: view.running("text") == 1, 300, "the replacement text replica RUNNING")
    running = time.monotonic() - killed_at
    answered = None
    while answered is None:
        try:
            reply = await stub.Generate(text_request(8), timeout=60)
            assert reply.usage.completion_tokens >= 1
            answered = time.monotonic() - killed_at
        except grpc.aio.AioRpcError:
            assert time.monotonic() - killed_at < 400, "text did not recover after its engine core died"
            await asyncio.sleep(1)
    await wait_for(lambda: text_health(target) == health_pb2.HealthCheckResponse.SERVING, 30,
                   "text health SERVING again")
    SESSION_FACTS["text engine core killed (kill -9) under 4 streams"] = (
        f"{len(cut)} of {len(open_at_kill)} open streams ended UNAVAILABLE within {streams_ended:.2f} s; "
        f"text health NOT_SERVING after {health_off:.1f} s; replica replaced after {replaced:.1f} s, "
        f"replacement RUNNING after {running:.1f} s, first answer after {answered:.1f} s"
    )
