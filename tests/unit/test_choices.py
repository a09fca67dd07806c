"""Several choices per request (sampling.n) on both surfaces: one engine request per choice (seed + index), usage
with the prompt once, every choice returned, streamed choices tagged with their index."""

import pytest
from gemma_serving.api import inference_pb2 as pb
from gemma_serving.client import message
from gemma_serving.engines.types import GenerationRequest, Message, Sampling, TextPart
from gemma_serving.errors import InvalidRequest
from gemma_serving.router.choices import choice_requests

HI = [{"role": "user", "content": "hi"}]


def _domain(**sampling):
    return GenerationRequest("m", (Message("user", (TextPart("hi"),)),), Sampling(**sampling))


def test_each_choice_is_a_request_seeded_like_vllms_child_requests():
    requests = choice_requests(_domain(n=3, seed=10, temperature=0.8))
    assert [r.sampling.seed for r in requests] == [10, 11, 12]
    assert all(r.sampling.n is None and r.sampling.temperature == 0.8 for r in requests)
    assert [r.sampling.seed for r in choice_requests(_domain(n=2))] == [None, None]
    assert choice_requests(_domain(seed=2**63 - 1, n=2))[1].sampling.seed == -(2**63)  # wraps within int64
    single = _domain(n=1)
    assert choice_requests(single) == (single,)
    with pytest.raises(InvalidRequest, match=r"sampling.n must be 1\.\.8, got 9"):
        choice_requests(_domain(n=9))
    with pytest.raises(InvalidRequest, match="greedy sampling"):  # as vLLM's server: the choices would be equal
        choice_requests(_domain(n=2, temperature=0))


async def test_grpc_returns_every_choice_and_streams_them_by_index(router):
    stub, backend = router
    request = pb.GenerateRequest(model="text-model", messages=[message("hi there")],
                                 sampling=pb.SamplingParams(max_tokens=3, n=3, seed=5))
    reply = await stub.Generate(request)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert all(c.text == " word0 word1 word2" and c.completion_tokens == 3 for c in reply.choices)
    assert reply.text == reply.choices[0].text and reply.finish_reason == pb.FINISH_REASON_LENGTH
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (2, 9, 11)
    assert reply.timing.tokens_per_second > 0
    assert sorted(r.sampling.seed for r in backend.requests[-3:]) == [5, 6, 7]
    chunks = [c async for c in stub.GenerateStream(request)]
    for index in range(3):
        mine = [c for c in chunks if c.index == index]
        assert "".join(c.text for c in mine) == " word0 word1 word2"
        assert mine[-1].finish_reason == pb.FINISH_REASON_LENGTH and mine[-1].usage.completion_tokens == 3
    plain = await stub.Generate(pb.GenerateRequest(model="text-model", messages=[message("hi")],
                                                   sampling=pb.SamplingParams(max_tokens=2)))
    assert len(plain.choices) == 0


async def test_openai_chat_and_completions_return_n_choices(client):
    c, _ = client
    reply = await c.chat.completions.create(model="text-model", messages=HI, max_tokens=2, n=2)
    assert [ch.index for ch in reply.choices] == [0, 1]
    assert all(ch.message.content == " word0 word1" and ch.finish_reason == "length" for ch in reply.choices)
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (1, 4)
    done = await c.completions.create(model="text-model", prompt="Once upon", max_tokens=2, n=3, echo=True)
    assert [ch.text for ch in done.choices] == ["Once upon word0 word1"] * 3 and done.usage.completion_tokens == 6


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
async def test_openai_streams_tag_each_choice_and_end_with_usage_over_all(client, endpoint):
    c, _ = client
    common = dict(model="text-model", max_tokens=3, n=2, stream=True, stream_options={"include_usage": True})
    if endpoint == "chat":
        stream = await c.chat.completions.create(messages=HI, **common)
    else:
        stream = await c.completions.create(prompt="Once", **common)
    chunks = [ch async for ch in stream]
    for index in (0, 1):
        mine = [ch.choices[0] for ch in chunks if ch.choices and ch.choices[0].index == index]
        text = "".join((m.delta.content or "") if endpoint == "chat" else m.text for m in mine)
        assert text == " word0 word1 word2" and mine[-1].finish_reason == "length"
        if endpoint == "chat":
            assert mine[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6


async def test_a_client_leaving_a_streamed_multi_choice_request_aborts_every_choice(router):
    import asyncio

    from gemma_serving.config import ServiceKind

    stub, backend = router
    engine = backend.engines[ServiceKind.TEXT]
    call = stub.GenerateStream(pb.GenerateRequest(model="text-model", messages=[message("hi")],
                                                  sampling=pb.SamplingParams(max_tokens=90, n=3)))
    await call.read()
    call.cancel()
    for _ in range(100):
        if len(engine.aborted) >= 3:
            break
        await asyncio.sleep(0.02)
    assert sorted(a.rsplit("-", 1)[1] for a in engine.aborted) == ["0", "1", "2"]
    assert not engine.in_flight
