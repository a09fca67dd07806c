"""Autoscaling on the engines' own saturation signal, the DEGRADED health state under that load, and a metrics
snapshot of the loaded platform (real Serve, real vLLM on the tiny text model, two L4 worker nodes)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from gemma_serving.api import inference_pb2 as pb
from gemma_serving.api import inference_pb2_grpc as pb_grpc
from gemma_serving.local_cluster import engine_metrics_texts
from gemma_serving.telemetry import snapshot

from tests.saturation.conftest import APP, DEGRADED_AFTER_S, KV_TARGET
from tests.scaling.conftest import wait_for
from tests.scaling.load import TextLoad
from tests.session_facts import SESSION_FACTS

pytestmark = pytest.mark.slow


def text_load_stats() -> dict:
    from ray import serve

    return serve.get_deployment_handle("text", APP).record_autoscaling_stats.remote().result()


def grpc_health(target: str, service: str) -> int:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                         timeout=10).status


def model_status(target: str) -> int:
    """The text service's status in ListModels."""
    with grpc.insecure_channel(target) as channel:
        models = pb_grpc.InferenceStub(channel).ListModels(pb.ListModelsRequest(), timeout=10).models
    return {m.service: m.status for m in models}["text"]


async def test_a_load_that_fills_the_kv_cache_scales_text_up_degraded_but_serving(saturation_platform):
    from grpc_health.v1 import health_pb2

    target, view, _config = saturation_platform
    assert view.running("text") == 1
    load = TextLoad(target, concurrency=12, max_tokens=200).start()
    try:
        peak = {"kv": 0.0}

        def kv_full() -> bool:
            stats = text_load_stats()
            peak["kv"] = max(peak["kv"], stats.get("kv_cache_usage", 0.0))
            return peak["kv"] > KV_TARGET

        await wait_for(kv_full, 120, f"the text engine's KV cache above {KV_TARGET:.0%}")
        # Slow probe generations behind the full cache: DEGRADED in ListModels while gRPC health stays SERVING.
        took = await wait_for(lambda: model_status(target) == pb.MODEL_STATUS_DEGRADED, 120,
                              "text DEGRADED under the load")
        SESSION_FACTS["text DEGRADED after the KV cache filled"] = f"{took:.1f} s"
        assert view.metric("gemma_serving_health_probe_seconds", service="text") > DEGRADED_AFTER_S
        assert view.metric("gemma_serving_service_state", service="text", state="degraded") == 1
        assert grpc_health(target, "text") == grpc_health(target, "") == health_pb2.HealthCheckResponse.SERVING
        took = await wait_for(lambda: view.running("text") == 2, 300, "a second RUNNING text replica")
        SESSION_FACTS[f"text 1 -> 2 replicas on KV-cache usage (peak {peak['kv']:.0%}, target {KV_TARGET:.0%}, "
                      "ongoing-requests target 1000)"] = f"{took:.1f} s"
        # 12 streams against an ongoing-requests target of 1000: Serve's default policy would have kept 1 replica.
        await asyncio.sleep(20)  # let engine and router metrics of the loaded platform reach Ray's agent
        samples = snapshot.parse([snapshot.scrape(f"http://127.0.0.1:{view.metrics_port}/metrics"),
                                  *engine_metrics_texts()])
        text = snapshot.summarize(samples)["text"]
        SESSION_FACTS["metrics snapshot of the loaded platform"] = "\n" + snapshot.format_table({"text": text})
        assert text["requests"] > 0 and text["engine"]["kv_cache_usage"] is not None
        assert text["engine"]["replicas_reporting"] >= 1 and text["replicas"] == 2
    finally:
        await load.stop()
    assert all(s.code == "OK" for s in load.streams if s.ended is not None)
    took = await wait_for(lambda: model_status(target) == pb.MODEL_STATUS_READY, 120,
                          "text READY after the load")
    SESSION_FACTS["text READY again after the load"] = f"{took:.1f} s"

