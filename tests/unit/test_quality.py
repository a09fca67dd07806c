"""Sampled quality scores: the built-in scorers, sampling that costs nothing at 0 %, scores with the right labels
through a real router (FakeEngine), the LLM-as-judge scorer against a served model, and a bounded queue."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from gemma_serving.api import inference_pb2 as pb
from gemma_serving.api import inference_pb2_grpc as pb_grpc
from gemma_serving.client import message
from gemma_serving.config import ServiceKind, parse_config
from gemma_serving.engines.fake import FakeEngine
from gemma_serving.engines.types import (
    Chunk,
    FinishReason,
    GenerationRequest,
    Message,
    ResponseFormat,
    Sampling,
    TextPart,
)
from gemma_serving.observability_config import QualitySettings
from gemma_serving.router.quality import QualityMonitor, QualitySampledBackend, with_quality_sampling
from gemma_serving.router.quality_scorers import (
    Answer,
    JudgeScorer,
    blocked_terms_scorer,
    json_valid_score,
    length_score,
    repetition_score,
)
from gemma_serving.telemetry.metrics import RouterMetrics

from tests.unit.conftest import CONFIG, start_router


def answer(text, *, finish=FinishReason.STOP, fmt=None, max_tokens=16, prompt="What is the sea?"):
    request = GenerationRequest(model="text-model", messages=(Message("user", (TextPart(prompt),)),),
                                sampling=Sampling(max_tokens=max_tokens), response_format=fmt)
    return Answer("text", request, text, Chunk("", 3, 5, finish))


def test_repetition_scores_loops_low_and_varied_text_high():
    assert repetition_score(answer("the sea is blue and the wind is cold tonight")) == 1.0
    assert repetition_score(answer("the sea the sea the sea the sea the sea the sea")) < 0.4
    assert repetition_score(answer("too short")) is None


def test_length_scores_cut_off_and_empty_answers_zero():
    assert length_score(answer("done.")) == 1.0
    assert length_score(answer("and then", finish=FinishReason.LENGTH)) == 0.0
    assert length_score(answer("   ")) == 0.0


def test_blocked_terms_count_whole_words_case_insensitively():
    scorer = blocked_terms_scorer(["secret"])
    assert scorer._function(answer("The SECRET is out")) == 0.0
    assert scorer._function(answer("secretary work")) == 1.0
    assert blocked_terms_scorer([])._function(answer("anything")) is None


def test_json_validity_applies_only_when_json_was_requested():
    schema = ResponseFormat("json_schema", schema={"type": "object", "required": ["city"],
                                                   "properties": {"city": {"type": "string"}}})
    assert json_valid_score(answer('{"city": "Paris"}', fmt=schema)) == 1.0
    assert json_valid_score(answer('{"town": "Paris"}', fmt=schema)) == 0.0
    assert json_valid_score(answer('{"city": ', fmt=schema)) == 0.0
    assert json_valid_score(answer("[1]", fmt=ResponseFormat("json_object"))) == 0.0
    assert json_valid_score(answer('{"a": 1}')) is None


class RecordingScorer:
    name = "recording"

    def __init__(self):
        self.seen = []

    async def score(self, a):
        self.seen.append(a)
        return 0.5


async def test_zero_sampling_returns_the_backends_own_stream_and_queues_nothing(config):
    backend = object()
    assert with_quality_sampling(config, backend, RouterMetrics()) is backend  # nothing configured: not wrapped
    scorer = RecordingScorer()
    monitor = QualityMonitor(QualitySettings(sample_ratio=1, sample_ratio_by_model={"text-model": 0}), [scorer],
                             RouterMetrics())
    engine_backend = FakeStreams()
    sampled = QualitySampledBackend(engine_backend, monitor)
    request = answer("x").request
    stream = sampled.stream(ServiceKind.TEXT, request, "r1")
    assert stream is engine_backend.last  # the inner stream object itself: no per-chunk wrapper
    assert [c.text async for c in stream] == ["a", "b"]
    await asyncio.sleep(0)
    assert monitor.queue.qsize() == 0 and scorer.seen == [] and monitor._worker is None


class FakeStreams:
    """A backend whose streams are plain async generators, remembered so identity can be checked."""

    def stream(self, kind, request, request_id):
        async def chunks():
            yield Chunk("a", 1, 1)
            yield Chunk("b", 1, 2, FinishReason.STOP)

        self.last = chunks()
        return self.last

    async def probe(self, kind):
        return None


async def test_a_full_queue_drops_and_counts_samples():
    metrics = RouterMetrics()
    monitor = QualityMonitor(QualitySettings(sample_ratio=1, queue_size=1), [RecordingScorer()], metrics)
    monitor.queue.put_nowait(answer("first"))  # nobody consumes: the queue stays full
    monitor.submit(answer("second"))
    assert metrics.registry.get_sample_value("gemma_serving_quality_samples_dropped_total",
                                             {"service": "text"}) == 1


async def wait_for_samples(metrics, labels, count, timeout=3.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while (metrics.registry.get_sample_value("gemma_serving_quality_score_count", labels) or 0) < count:
        assert asyncio.get_running_loop().time() < deadline, f"no {count} scores for {labels}"
        await asyncio.sleep(0.02)


async def test_sampled_answers_are_scored_with_model_adapter_and_scorer_labels_and_no_text():
    config = parse_config({**CONFIG, "telemetry": {"quality": {"sample_ratio": 1,
                                                               "scorers": ["repetition", "length"]}}})
    router, backend = await start_router(config)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{router.port}")
    try:
        stub = pb_grpc.InferenceStub(channel)
        for _ in range(3):
            await stub.Generate(pb.GenerateRequest(model="text-model", messages=[message("hello there")],
                                                   sampling=pb.SamplingParams(max_tokens=8)))
        labels = {"service": "text", "model": "text-model", "adapter": ""}
        await wait_for_samples(router.metrics, {**labels, "scorer": "repetition"}, 3)
        await wait_for_samples(router.metrics, {**labels, "scorer": "length"}, 3)
        # FakeEngine words are distinct (" word0 word1 ..."): no repetition; 8 of 8 tokens: cut at max_tokens.
        get = router.metrics.registry.get_sample_value
        assert get("gemma_serving_quality_score_sum", {**labels, "scorer": "repetition"}) == pytest.approx(3.0)
        assert get("gemma_serving_quality_score_sum", {**labels, "scorer": "length"}) == 0.0
        for family in router.metrics.registry.collect():
            for sample in family.samples:
                assert not any("word" in str(v) or "hello" in str(v) for v in sample.labels.values())
    finally:
        await channel.close()
        await router.drain_and_stop(0)


async def test_the_judge_asks_a_served_model_and_its_grade_becomes_the_score():
    config = parse_config({**CONFIG, "telemetry": {"quality": {
        "sample_ratio_by_model": {"vision-model": 1}, "scorers": ["judge"], "judge_model": "text-model"}}})
    # Every engine answers "4": the judge (text-model) grades the vision answer 4 of 5.
    router, backend = await start_router(config, lambda: FakeEngine(script="4"))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{router.port}")
    try:
        await pb_grpc.InferenceStub(channel).Generate(pb.GenerateRequest(
            model="vision-model", messages=[message("Describe the sea.")], sampling=pb.SamplingParams(max_tokens=4)))
        labels = {"service": "vision", "model": "vision-model", "adapter": "", "scorer": "judge"}
        await wait_for_samples(router.metrics, labels, 1)
        assert router.metrics.registry.get_sample_value("gemma_serving_quality_score_sum", labels) == 0.75
        judged = backend.engines[ServiceKind.TEXT].seen[-1]
        assert "Describe the sea." in judged.messages[0].parts[0].text and "Grade:" in judged.messages[0].parts[0].text
        assert judged.response_format.kind == "choice" and judged.response_format.choices == ("1", "2", "3", "4", "5")
        # The judge's own generation is not sampled (text-model has no share).
        assert router.metrics.registry.get_sample_value("gemma_serving_quality_score_count",
                                                        {**labels, "service": "text", "model": "text-model"}) is None
    finally:
        await channel.close()
        await router.drain_and_stop(0)


async def test_judge_without_a_grade_records_nothing():
    async def generate(request):
        yield Chunk("I cannot grade this", 1, 1, FinishReason.STOP)

    assert await JudgeScorer(generate, "text-model").score(answer("x")) is None


def test_judge_needs_a_served_model():
    from gemma_serving.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="judge_model"):
        parse_config({**CONFIG, "telemetry": {"quality": {"scorers": ["judge"]}}})
    with pytest.raises(InvalidRequest, match="not a served model"):
        parse_config({**CONFIG, "telemetry": {"quality": {"scorers": ["judge"], "judge_model": "nope"}}})
