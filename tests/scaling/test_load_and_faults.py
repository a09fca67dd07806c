"""Scale up under load, lose a replica mid-stream, scale down, lose a worker node: the text service on two L4
workers (real Serve, real vLLM). The tests run in order and share the load; recovery times go to the summary."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from tests.scaling.conftest import wait_for
from tests.scaling.load import TextLoad, text_request
from tests.session_facts import SESSION_FACTS

pytestmark = pytest.mark.slow

L4_NODES = {"l4-a", "l4-b"}


@pytest.fixture(scope="module")
async def load(target):
    """16 streaming clients on text (target_ongoing_requests 2: the autoscaler wants the maximum, 2 replicas)."""
    load = TextLoad(target, concurrency=16).start()
    yield load
    await load.stop()


async def test_text_scales_up_under_load_on_the_other_l4_node_without_scaling_audio(load, view):
    audio_before = view.running("audio")
    took = await wait_for(lambda: view.running("text") == 2, 300, "a second RUNNING text replica")
    SESSION_FACTS["text scale-up 1 -> 2 replicas under 16 streams (upscale_delay_s 2)"] = f"{took:.1f} s"
    assert view.nodes_of("text") == L4_NODES  # one logical GPU per L4 node: one replica on each
    assert view.running("audio") == audio_before  # services scale independently
    assert all(s.code == "OK" for s in load.streams if s.ended is not None)


async def test_killing_a_replica_mid_stream(load, view, stub):
    """Streams that had output end UNAVAILABLE promptly; those without output are retried on the other replica;
    new requests succeed throughout and Ray replaces the replica."""
    await asyncio.sleep(3)  # streams in flight on both replicas
    retries_before = view.metric("gemma_serving_retries_total", service="text")
    victim = view.replicas("text")[0]
    killed_at = time.monotonic()
    await asyncio.to_thread(view.kill, victim)
    reply = await stub.Generate(text_request(16), timeout=120)  # served by the surviving replica
    assert reply.usage.completion_tokens >= 1
    answered = time.monotonic() - killed_at
    # Serve's status still counts the dead replica for a moment: see it drop, then the replacement come up.
    await wait_for(lambda: view.running("text") < 2, 60, "Serve to notice the dead replica")
    await wait_for(lambda: view.running("text") == 2, 300, "a replacement text replica")
    replaced = time.monotonic() - killed_at
    assert victim.name not in {r.name for r in view.replicas("text")}
    open_at_kill = load.open_at(killed_at)
    await wait_for(lambda: all(s.ended is not None for s in open_at_kill), 60, "the streams open at the kill to end")
    failed = [s for s in load.streams if s.code != "OK"]
    assert failed, "killing a replica under load failed no stream: the kill did not hit"
    assert all(s.code == "UNAVAILABLE" for s in failed), {s.code for s in failed}
    assert all(s.started <= killed_at for s in failed)  # only streams caught by the kill
    assert all(s.chunks > 0 for s in failed), "a stream without output failed instead of being retried"
    slowest = max(s.ended - killed_at for s in failed)
    assert slowest < 15, f"a stream took {slowest:.1f} s to end after its replica died"
    retries = view.metric("gemma_serving_retries_total", service="text") - retries_before
    assert retries >= 1, "no request without output was retried"
    SESSION_FACTS["text replica killed under load"] = (
        f"{len(failed)} of {len(open_at_kill)} open streams ended UNAVAILABLE within {slowest:.1f} s, "
        f"{retries:.0f} retried, a new request answered after {answered:.1f} s, replacement RUNNING after "
        f"{replaced:.1f} s"
    )


async def test_text_scales_back_down_after_the_load(load, view):
    await load.stop()
    took = await wait_for(lambda: view.running("text") == 1 and len(view.replicas("text")) == 1, 180,
                          "text back to one replica")
    SESSION_FACTS["text scale-down 2 -> 1 after the load (downscale_delay_s 10)"] = f"{took:.1f} s"
    assert view.running("audio") == 1


async def test_losing_the_worker_node_of_the_text_replica(view, ray_cluster, stub, target):
    [replica] = view.replicas("text")
    lost = ray_cluster.node_ids()[replica.node_id]
    survivor = (L4_NODES - {lost}).pop()
    streams = TextLoad(target, concurrency=4).start()
    await asyncio.sleep(3)
    removed_at = time.monotonic()
    await asyncio.to_thread(ray_cluster.remove, lost)
    try:
        failures, answered = 0, None
        while answered is None:
            try:
                await stub.Generate(text_request(16), timeout=60)
                answered = time.monotonic() - removed_at
            except grpc.aio.AioRpcError:  # while the service recovers
                failures += 1
                assert time.monotonic() - removed_at < 300, "text did not recover after losing its node"
                await asyncio.sleep(1)
        running = await wait_for(lambda: view.running("text") == 1, 300, "text RUNNING again")
        # The GCS actor table may list the lost node's replica as alive a little longer than Serve counts it.
        await wait_for(lambda: view.nodes_of("text") == {survivor}, 120, f"text only on {survivor}")
        await streams.stop()
        cut = [s for s in streams.streams if s.code != "OK"]
        assert all(s.code == "UNAVAILABLE" for s in cut), {s.code for s in cut}
        assert all(s.ended - removed_at < 30 for s in cut)
        SESSION_FACTS[f"worker node {lost} lost"] = (
            f"{len(cut)} streams ended UNAVAILABLE, first answer after {answered:.1f} s ({failures} failed tries), "
            f"rescheduled on {survivor}, RUNNING after {running + answered:.1f} s"
        )
    finally:
        ray_cluster.add(lost)  # back to full strength (Ray's node start needs the main thread: signal handlers)
