"""Per-response timing (queue time, time to first token, generation time, tokens per second) on the last chunk and
the unary response: gRPC fields, and the OpenAI surface's `timing` extension."""

import math

from gemma_serving.api import inference_pb2 as pb
from gemma_serving.client import message

STEP_S = 0.005  # the FakeEngine's delay per token in the router fixture


def _check(timing, completion_tokens: int) -> None:
    assert 0 <= timing["queue_seconds"] <= timing["time_to_first_token_seconds"]
    assert timing["time_to_first_token_seconds"] <= timing["generation_seconds"]
    assert timing["generation_seconds"] >= completion_tokens * STEP_S * 0.9
    assert math.isclose(timing["tokens_per_second"], completion_tokens / timing["generation_seconds"], rel_tol=1e-3)


def _pb_timing(t: pb.ResponseTiming) -> dict:
    assert t.HasField("queue_seconds")
    return {"queue_seconds": t.queue_seconds, "time_to_first_token_seconds": t.time_to_first_token_seconds,
            "generation_seconds": t.generation_seconds, "tokens_per_second": t.tokens_per_second}


async def test_grpc_response_and_last_chunk_carry_timing(router):
    stub, _ = router
    request = pb.GenerateRequest(model="text-model", messages=[message("hi")], sampling=pb.SamplingParams(max_tokens=6))
    reply = await stub.Generate(request)
    _check(_pb_timing(reply.timing), 6)
    chunks = [c async for c in stub.GenerateStream(request)]
    assert [c.HasField("timing") for c in chunks] == [False] * (len(chunks) - 1) + [True]
    _check(_pb_timing(chunks[-1].timing), chunks[-1].usage.completion_tokens)


async def test_openai_responses_and_final_chunks_carry_the_timing_extension(client):
    c, _ = client
    reply = await c.chat.completions.create(model="text-model", messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=5)
    _check(reply.model_extra["timing"], 5)
    stream = await c.chat.completions.create(model="text-model", messages=[{"role": "user", "content": "hi"}],
                                             max_tokens=5, stream=True)
    chunks = [ch async for ch in stream]
    timed = [ch for ch in chunks if (ch.model_extra or {}).get("timing")]
    assert len(timed) == 1 and timed[0].choices[0].finish_reason == "length"
    _check(timed[0].model_extra["timing"], 5)
    done = await c.completions.create(model="text-model", prompt="Once", max_tokens=4)
    _check(done.model_extra["timing"], 4)


async def test_completions_stream_timing_is_on_the_finishing_chunk(client):
    c, _ = client
    chunks = [ch async for ch in await c.completions.create(model="text-model", prompt="Once", max_tokens=3,
                                                            stream=True)]
    assert [bool((ch.model_extra or {}).get("timing")) for ch in chunks] == [False, False, True]
