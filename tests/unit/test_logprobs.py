"""Log probabilities (sampling.logprobs / top_logprobs): from vLLM's per-token maps to gRPC (per chunk and in the
unary response) and to OpenAI's chat and legacy completions shapes, streamed and not."""

import math

from gemma_serving.api import inference_pb2 as pb
from gemma_serving.client import message
from gemma_serving.engines.vllm import token_logprobs


def test_vllm_logprob_maps_become_the_sampled_token_and_the_top_alternatives_by_rank():
    from vllm.logprobs import Logprob

    maps = [
        {7: Logprob(-0.5, 2, " b"), 3: Logprob(-0.1, 1, " a"), 9: Logprob(-3.0, 3, " c")},
        {4: Logprob(-float("inf"), 40, " z"), 5: Logprob(-0.01, 1, "!")},
    ]
    out = token_logprobs([7, 4], maps, top=2)
    assert (out[0].token, out[0].logprob, out[0].top) == (" b", -0.5, ((" a", -0.1), (" b", -0.5)))
    assert out[1].logprob == -9999.0 and out[1].top == (("!", -0.01), (" z", -9999.0))  # JSON has no -inf
    assert token_logprobs([7], maps[:1], top=0)[0].top == ()


def _request(**sampling):
    return pb.GenerateRequest(model="text-model", messages=[message("hi")], sampling=pb.SamplingParams(**sampling))


async def test_grpc_returns_one_logprob_per_token_per_chunk_and_all_of_them_unary(router):
    stub, _ = router
    reply = await stub.Generate(_request(max_tokens=4, logprobs=True, top_logprobs=2))
    assert [t.token for t in reply.logprobs] == [" word0", " word1", " word2", " word3"]
    assert all(len(t.top_logprobs) == 2 and t.top_logprobs[0].token == t.token for t in reply.logprobs)
    assert math.isclose(reply.logprobs[1].logprob, -0.2, rel_tol=1e-6)
    chunks = [c async for c in stub.GenerateStream(_request(max_tokens=3, logprobs=True))]
    assert sum(len(c.logprobs) for c in chunks) == 3
    assert all("".join(t.token for t in c.logprobs) == c.text for c in chunks)
    plain = await stub.Generate(_request(max_tokens=2))
    assert len(plain.logprobs) == 0


async def test_openai_chat_logprobs_unary_and_streamed(client):
    c, _ = client
    hi = [{"role": "user", "content": "hi"}]
    reply = await c.chat.completions.create(model="text-model", messages=hi, max_tokens=3, logprobs=True,
                                            top_logprobs=2)
    content = reply.choices[0].logprobs.content
    assert [t.token for t in content] == [" word0", " word1", " word2"]
    assert content[0].bytes == list(b" word0") and [a.token for a in content[0].top_logprobs] == [" word0", "alt1"]
    plain = await c.chat.completions.create(model="text-model", messages=hi, max_tokens=1)
    assert plain.choices[0].logprobs is None
    stream = await c.chat.completions.create(model="text-model", messages=hi, max_tokens=3, logprobs=True,
                                             stream=True)
    streamed = [t.token for ch in [ch async for ch in stream] if ch.choices and ch.choices[0].logprobs
                for t in ch.choices[0].logprobs.content]
    assert streamed == [" word0", " word1", " word2"]


async def test_openai_completions_logprobs_in_the_legacy_shape(client):
    c, _ = client
    done = await c.completions.create(model="text-model", prompt="Once", max_tokens=3, logprobs=2)
    lp = done.choices[0].logprobs
    assert lp.tokens == [" word0", " word1", " word2"] and lp.text_offset == [0, 6, 12]
    assert len(lp.token_logprobs) == 3 and lp.top_logprobs[0] == {" word0": lp.token_logprobs[0], "alt1": -1.1}
    stream = await c.completions.create(model="text-model", prompt="Once", max_tokens=2, logprobs=0, stream=True)
    offsets = [o for ch in [ch async for ch in stream] if ch.choices and ch.choices[0].logprobs
               for o in ch.choices[0].logprobs.text_offset]
    assert offsets == [0, 6]
    import openai
    import pytest

    with pytest.raises(openai.BadRequestError, match="echo with logprobs is not supported"):
        await c.completions.create(model="text-model", prompt="Once", max_tokens=2, logprobs=1, echo=True)
