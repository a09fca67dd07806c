"""Inside the engines, on the real platform (tiny models, real vLLM): vLLM's own metrics from every replica through
Ray's metrics agent with service / model / replica labels, replica memory, the engine load Serve's autoscaler reads,
the short-generation health probe, sampled quality scores (the tiny-lora adapter is sampled at 100 % in
conftest.py, the base model at 0 %) and the LLM-as-judge scorer against the served text model."""

from __future__ import annotations

import asyncio
import time

from gemma_serving.api import inference_pb2 as pb
from gemma_serving.client import message
from gemma_serving.config import ServiceKind
from gemma_serving.engines.types import Chunk, FinishReason, GenerationRequest, Message, Sampling, TextPart
from gemma_serving.local_cluster import engine_metrics_texts
from gemma_serving.router.backends import ServeHandleBackend
from gemma_serving.router.quality_scorers import Answer, JudgeScorer
from gemma_serving.telemetry import snapshot
from gemma_serving.telemetry.metrics import ENGINE_METRICS

TEXT_MODEL = "gemma-3-tiny"
MAY_STAY_ZERO = {"ray_vllm_num_preemptions_total", "ray_vllm_prefix_cache_hits_total"}


def engine_samples() -> snapshot.Samples:
    return snapshot.parse(engine_metrics_texts())


def generate(stub, n=3, **kwargs):
    request = pb.GenerateRequest(model=TEXT_MODEL, messages=[message("Tell me about the sea.")],
                                 sampling=pb.SamplingParams(max_tokens=16, temperature=0.0), **kwargs)
    return [stub.Generate(request, timeout=120) for _ in range(n)]


def wait_for_samples(predicate, timeout_s=120.0, what="engine metrics"):
    """Ray's agent exports what replicas recorded every few seconds: poll until `predicate(samples)` holds."""
    began = time.monotonic()
    while True:
        samples = engine_samples()
        if predicate(samples):
            return samples
        assert time.monotonic() - began < timeout_s, f"no {what} after {timeout_s:.0f} s"
        time.sleep(2)


def series(samples, name, **labels):
    return {dict(k[1]).get("ReplicaId", ""): v for k, v in samples.items()
            if k[0] == name and all(dict(k[1]).get(a) == b for a, b in labels.items())}


def test_vllm_metrics_of_every_service_reach_rays_metrics_agent_with_service_model_and_replica(stub):
    generate(stub)
    for model in ("gemma-3-tiny-vision", "gemma-3n-tiny"):  # every engine steps at least once (text-only prompts)
        stub.Generate(pb.GenerateRequest(model=model, messages=[message("Hello")],
                                         sampling=pb.SamplingParams(max_tokens=4)), timeout=120)
    text = {"service": "text", "model_name": TEXT_MODEL}

    def exported(samples):  # every service's engine has reported (replicas export on their own clocks)
        return series(samples, "ray_vllm_generation_tokens_total", **text) and all(
            series(samples, "ray_vllm_kv_cache_usage_perc", service=s)
            and series(samples, "ray_gemma_serving_replica_rss_bytes", service=s) for s in ("text", "vision", "audio"))

    samples = wait_for_samples(exported)
    for name, (kind, _help) in ENGINE_METRICS.items():
        # Ray exports a counter from its first non-zero increment: no preemption or prefix hit under this light load.
        if name.startswith("ray_vllm_") and name not in MAY_STAY_ZERO:
            sample = f"{name}_count" if kind == "histogram" else name
            found = series(samples, sample, **text)
            assert found, f"{sample} not exported for the text service"
            assert all(replica for replica in found), f"{sample} without a ReplicaId"
    assert sum(series(samples, "ray_vllm_generation_tokens_total", **text).values()) >= 3 * 16
    for service in ("text", "vision", "audio"):  # every replica exports, labelled by its service
        assert series(samples, "ray_vllm_kv_cache_usage_perc", service=service), service
        rss = series(samples, "ray_gemma_serving_replica_rss_bytes", service=service)
        assert rss and min(rss.values()) > 100 * 2**20, (service, rss)  # replica + engine core: > 100 MiB


def test_replicas_report_engine_load_for_the_autoscaler(stub, platform_config):
    from ray import serve

    generate(stub, n=1)
    stats = serve.get_deployment_handle("text", platform_config.app_name).record_autoscaling_stats.remote().result()
    # Its direct calls in flight too (they bypass Serve's own count of ongoing requests: deltas/calls.py).
    assert set(stats) == {"running", "waiting", "kv_cache_usage", "direct_in_flight"}
    assert 0.0 <= stats["kv_cache_usage"] <= 1.0 and stats["waiting"] >= 0 and stats["direct_in_flight"] == 0


def test_health_probe_times_a_short_generation_in_the_replica(stub, platform_config):
    from ray import serve

    handle = serve.get_deployment_handle("text", platform_config.app_name)
    report = handle.health_report.remote().result()
    deadline = time.monotonic() + 60
    while report["latency_s"] is None and time.monotonic() < deadline:  # the first call starts the first probe
        time.sleep(0.5)
        report = handle.health_report.remote().result()
    assert report["verdict"] == "ready" and 0 < report["latency_s"] < 5, report
    deadline = time.monotonic() + 30  # the router polls reports every few seconds; load from earlier tests fades
    while True:
        statuses = {m.name: m.status for m in stub.ListModels(pb.ListModelsRequest(), timeout=10).models}
        if set(statuses.values()) <= {pb.MODEL_STATUS_READY} or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert set(statuses.values()) <= {pb.MODEL_STATUS_READY}, statuses


def test_sampled_answers_of_the_adapter_get_scores_and_the_base_model_none(stub, platform):
    port = platform[1].metrics_port.remote().result()
    router = f"http://127.0.0.1:{port}/metrics"
    labels = {"service": "text", "model": TEXT_MODEL}

    def counts():
        samples = snapshot.parse([snapshot.scrape(router)])
        return {(dict(k[1])["adapter"], dict(k[1])["scorer"]): v for k, v in samples.items()
                if k[0] == "gemma_serving_quality_score_count" and all(dict(k[1]).get(a) == b
                                                                       for a, b in labels.items())}

    before = counts()
    generate(stub, n=3)  # the base model: sampled at 0 %
    json_format = pb.ResponseFormat(json_object=True)
    generate(stub, n=2, adapter="tiny-lora", response_format=json_format)
    deadline = time.monotonic() + 30
    while counts().get(("tiny-lora", "json_valid"), 0) < before.get(("tiny-lora", "json_valid"), 0) + 2:
        assert time.monotonic() < deadline, f"no json_valid scores for tiny-lora: {counts()}"
        time.sleep(0.5)
    after = counts()
    for scorer in ("length", "json_valid"):
        assert after[("tiny-lora", scorer)] - before.get(("tiny-lora", scorer), 0) == 2, scorer
    assert not any(adapter == "" for adapter, _ in after)  # nothing scored for the base model


def test_the_judge_grades_with_the_served_text_model(platform_config):
    from gemma_serving.deltas.subscriber import DeltaSubscriber
    from ray import serve

    async def grade() -> float:
        deltas = DeltaSubscriber("127.0.0.1", "127.0.0.1")  # the judge's answers come over the delta channel
        await deltas.start()
        try:
            backend = ServeHandleBackend({"text": serve.get_deployment_handle("text", platform_config.app_name)},
                                         deltas)
            ids = iter(range(1000))
            judge = JudgeScorer(lambda request: backend.stream(ServiceKind.TEXT, request, f"judge-test-{next(ids)}"),
                                TEXT_MODEL)
            question = GenerationRequest(model=TEXT_MODEL, messages=(Message("user", (TextPart("What is the sea?"),)),),
                                         sampling=Sampling(max_tokens=16))
            return await judge.score(Answer("text", question, "A large body of salt water.",
                                            Chunk("", 5, 7, FinishReason.STOP)))
        finally:
            await deltas.stop()

    score = asyncio.run(grade())
    assert score in {0.0, 0.25, 0.5, 0.75, 1.0}  # the reply is constrained to a grade, even from random weights
