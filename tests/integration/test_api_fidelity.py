"""Issue 15 on the real platform (vLLM engines on the tiny checkpoints): every sampling parameter reaches vLLM,
logprobs and several choices come back on both surfaces, /v1/completions sends the raw prompt, per-response timing."""

import openai
import pytest
from gemma_serving.api import inference_pb2 as pb
from gemma_serving.client import message

MODEL = "gemma-3-tiny"
SEA = [{"role": "user", "content": "Tell me about the sea."}]


@pytest.fixture(scope="module")
def oai(platform):
    port = platform[1].http_port.remote().result()
    with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=120) as c:
        yield c


def _generate(stub, **sampling):
    request = pb.GenerateRequest(model=MODEL, messages=[message("Tell me about the sea.")],
                                 sampling=pb.SamplingParams(**sampling))
    return stub.Generate(request, timeout=120)


def test_every_sampling_parameter_is_accepted_by_vllm(stub):
    reply = _generate(stub, max_tokens=8, temperature=0.8, top_p=0.9, top_k=20, min_p=0.05, seed=3,
                      repetition_penalty=1.05, presence_penalty=0.5, frequency_penalty=0.5,
                      logprobs=True, top_logprobs=2, n=2, ignore_eos=True)
    assert len(reply.choices) == 2 and all(c.completion_tokens == 8 for c in reply.choices)  # ignore_eos
    assert all(len(c.logprobs) == 8 for c in reply.choices)


def test_a_seed_reproduces_sampling_and_a_stop_string_ends_the_text(stub):
    first, again = (_generate(stub, max_tokens=24, temperature=1.0, seed=11) for _ in range(2))
    assert first.text == again.text and first.text
    stop = first.text[len(first.text) // 2:][:3]
    if not stop.strip():
        pytest.skip("the sampled text has no usable stop string in its middle")
    cut = _generate(stub, max_tokens=24, temperature=1.0, seed=11, stop=[stop])
    assert cut.finish_reason == pb.FINISH_REASON_STOP and stop not in cut.text
    assert first.text.startswith(cut.text)


def test_grpc_logprobs_match_the_tokens_and_timing_is_reported(stub):
    reply = _generate(stub, max_tokens=12, temperature=0, logprobs=True, top_logprobs=3)
    assert len(reply.logprobs) == reply.usage.completion_tokens
    for t in reply.logprobs:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3
        assert t.top_logprobs[0].logprob >= t.logprob - 1e-4  # greedy: the sampled token is the most likely
    t = reply.timing
    assert 0 < t.time_to_first_token_seconds <= t.generation_seconds and t.HasField("queue_seconds")
    assert abs(t.tokens_per_second - reply.usage.completion_tokens / t.generation_seconds) < 1e-3


def test_choices_count_the_prompt_once_and_greedy_choices_are_refused_like_vllm(oai):
    import openai

    one = oai.chat.completions.create(model=MODEL, messages=SEA, max_tokens=10, temperature=0)
    # ignore_eos fixes each choice's length; seeds make the sampled choices reproducible.
    two = oai.chat.completions.create(model=MODEL, messages=SEA, max_tokens=10, temperature=0.8, seed=5, n=2,
                                      extra_body={"ignore_eos": True})
    assert [c.index for c in two.choices] == [0, 1]
    assert two.usage.prompt_tokens == one.usage.prompt_tokens and two.usage.completion_tokens == 20
    with pytest.raises(openai.BadRequestError, match="greedy"):  # vLLM's server refuses it too
        oai.chat.completions.create(model=MODEL, messages=SEA, max_tokens=10, temperature=0, n=2)


def test_completions_send_the_raw_prompt_with_echo_logprobs_and_streaming(oai):
    raw = oai.completions.create(model=MODEL, prompt="The sea is", max_tokens=6, temperature=0)
    templated = oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "The sea is"}],
                                            max_tokens=6, temperature=0)
    assert raw.usage.prompt_tokens < templated.usage.prompt_tokens  # no turn markers around the raw prompt
    echoed = oai.completions.create(model=MODEL, prompt="The sea is", max_tokens=6, temperature=0, echo=True)
    assert echoed.choices[0].text == "The sea is" + raw.choices[0].text
    scored = oai.completions.create(model=MODEL, prompt="The sea is", max_tokens=6, temperature=0, logprobs=2)
    assert len(scored.choices[0].logprobs.tokens) == scored.usage.completion_tokens
    chunks = list(oai.completions.create(model=MODEL, prompt="The sea is", max_tokens=6, temperature=0, stream=True,
                                         stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == raw.choices[0].text
    assert chunks[-1].usage.completion_tokens == raw.usage.completion_tokens
    assert chunks[-2].model_extra["timing"]["generation_seconds"] > 0


def test_chat_logprobs_stream_and_unknown_parameters(oai):
    reply = oai.chat.completions.create(model=MODEL, messages=SEA, max_tokens=6, temperature=0, logprobs=True,
                                        top_logprobs=2)
    assert len(reply.choices[0].logprobs.content) == reply.usage.completion_tokens
    assert reply.model_extra["timing"]["tokens_per_second"] > 0
    streamed = list(oai.chat.completions.create(model=MODEL, messages=SEA, max_tokens=6, temperature=0,
                                                logprobs=True, stream=True))
    tokens = [t for c in streamed if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [t.token for t in tokens] == [t.token for t in reply.choices[0].logprobs.content]
    with pytest.raises(openai.BadRequestError, match="unknown or unsupported parameter: best_of"):
        oai.chat.completions.create(model=MODEL, messages=SEA, max_tokens=2, extra_body={"best_of": 2})
