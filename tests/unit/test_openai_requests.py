"""OpenAI request fidelity: typed bodies (unknown parameters are a 400 naming them, harmless client fields pass),
/v1/completions as OpenAI and vLLM define it (raw prompt, echo, suffix, streaming, include_usage), finish reasons."""

import openai
import pytest
from gemma_serving.engines.types import Chunk, FinishReason
from gemma_serving.errors import ReplicaGone
from gemma_serving.router.openai_convert import openai_finish

HI = [{"role": "user", "content": "hi"}]


async def _status_error(call):
    with pytest.raises(openai.APIStatusError) as info:
        await call
    return info.value


@pytest.mark.parametrize("extra,named", [
    ({"best_of": 2}, "best_of"),
    ({"functions": [], "frobnicate": True}, "functions, frobnicate"),
    ({"stream_options": {"include_usage": True, "continuous_usage_stats": True}},
     "stream_options.continuous_usage_stats"),
    ({"add_generation_prompt": False}, "add_generation_prompt"),  # a vLLM extension we do not serve
])
async def test_unknown_or_unsupported_parameters_are_a_400_naming_them(client, extra, named):
    c, _ = client
    error = await _status_error(c.chat.completions.create(model="text-model", messages=HI, max_tokens=2,
                                                          extra_body=extra))
    assert error.status_code == 400
    assert error.body["message"].endswith(named) and "unknown or unsupported parameter" in error.body["message"]
    assert error.body["param"] == named.split(",")[0] and error.body["type"] == "invalid_request_error"


async def test_harmless_fields_that_clients_send_are_accepted(client):
    c, _ = client
    reply = await c.chat.completions.create(model="text-model", messages=HI, max_tokens=2, user="u-1", n=1,
                                            parallel_tool_calls=True, logit_bias={}, store=False, metadata={},
                                            presence_penalty=0, frequency_penalty=0, service_tier="auto")
    assert reply.choices[0].finish_reason == "length"


@pytest.mark.parametrize("kwargs,param,text", [
    (dict(logit_bias={"42": 5}), "logit_bias", "logit_bias is not supported"),
    (dict(store=True), "store", "store is not supported"),
    (dict(top_p=0), "sampling.top_p", "top_p must be in (0, 1], got 0"),
    (dict(repetition_penalty=-1), "sampling.repetition_penalty", "repetition_penalty must be > 0"),
    (dict(n=9), "sampling.n", "sampling.n must be 1..8, got 9"),
    (dict(stream_options={"include_usage": True}), "stream_options", "stream_options is allowed only with stream"),
    (dict(messages=[{"role": "user", "content": [{"type": "video", "video": "x"}]}]), "messages[0].content[0]",
     "messages[0].content[0]: Input tag 'video' found using 'type' does not match any of the expected tags"),
    (dict(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
     "messages[0].content[0].image_url.url", "messages[0].content[0].image_url.url: Field required"),
])
async def test_bad_values_are_a_400_naming_field_range_and_value(client, kwargs, param, text):
    c, _ = client
    kwargs = {"messages": HI, "max_tokens": 2, **kwargs}
    extra = {k: kwargs.pop(k) for k in ("repetition_penalty",) if k in kwargs}
    error = await _status_error(c.chat.completions.create(model="text-model", extra_body=extra, **kwargs))
    assert error.status_code == 400 and text in error.body["message"]
    assert error.body["param"].startswith(param)


async def test_completions_send_the_raw_prompt_without_the_chat_template(client):
    c, backend = client
    done = await c.completions.create(model="text-model", prompt="Once upon", max_tokens=2)
    assert done.object == "text_completion" and done.choices[0].text == " word0 word1"
    assert backend.requests[-1].raw_prompt is True
    assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens == 2 + 2
    await c.chat.completions.create(model="text-model", messages=HI, max_tokens=1)
    assert backend.requests[-1].raw_prompt is False


async def test_completions_echo_and_suffix(client):
    c, _ = client
    done = await c.completions.create(model="text-model", prompt="Once upon", max_tokens=2, echo=True)
    assert done.choices[0].text == "Once upon word0 word1"
    error = await _status_error(c.completions.create(model="text-model", prompt="def f(", suffix="return x",
                                                     max_tokens=2))
    assert error.status_code == 400 and error.body["param"] == "suffix" and "fill-in-the-middle" in str(error.body)
    error = await _status_error(c.completions.create(model="text-model", prompt=["a", "b"], max_tokens=2))
    assert error.status_code == 400 and "list of 2" in error.body["message"]


async def test_completions_stream_with_echo_and_usage(client):
    c, _ = client
    stream = await c.completions.create(model="text-model", prompt="Once upon", max_tokens=3, stream=True,
                                        echo=True, stream_options={"include_usage": True})
    chunks = [ch async for ch in stream]
    with_text = [ch for ch in chunks if ch.choices]
    assert with_text[0].choices[0].text.startswith("Once upon")
    assert "".join(ch.choices[0].text for ch in with_text) == "Once upon word0 word1 word2"
    assert [ch.choices[0].finish_reason for ch in with_text] == [None, None, "length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 3
    assert all(ch.object == "text_completion" and ch.id == chunks[0].id for ch in chunks)
    plain = await c.completions.create(model="text-model", prompt="x", max_tokens=2, stream=True)
    assert all(ch.usage is None for ch in [ch async for ch in plain])  # usage only when asked


async def test_an_aborted_generation_is_an_error_not_a_stop():
    async def aborted():
        yield Chunk("partial", 3, 1)
        yield Chunk("", 3, 1, FinishReason.ABORT)

    stream = openai_finish(aborted())
    assert (await anext(stream)).text == "partial"
    with pytest.raises(ReplicaGone, match="aborted"):
        await anext(stream)


def test_vllm_engine_sends_a_raw_prompt_tokenized_as_vllms_completions_endpoint_does():
    from pathlib import Path

    from gemma_serving.config import ModelConfig
    from gemma_serving.engines.types import GenerationRequest, Message, Sampling, TextPart
    from gemma_serving.engines.vllm import VllmEngine
    from gemma_serving.models.tokenizer import build_tokenizer

    engine = VllmEngine(ModelConfig.model_validate({"name": "m", "source": "/m"}), Path("/m"))
    engine._tokenizer = tokenizer = build_tokenizer()
    messages = (Message("user", (TextPart("Once upon"),)),)
    raw = engine._prompt(GenerationRequest("m", messages, Sampling(4), raw_prompt=True))["prompt"]
    # generate() tokenizes without special tokens; vLLM's /v1/completions tokenizes the prompt with them.
    assert tokenizer(raw, add_special_tokens=False).input_ids == tokenizer("Once upon").input_ids
    chat = engine._prompt(GenerationRequest("m", messages, Sampling(4)))["prompt"]
    assert "<start_of_turn>user" in chat and "<start_of_turn>" not in raw


async def test_a_call_forced_by_a_named_tool_choice_finishes_with_stop_as_in_openai(client):
    from gemma_serving.config import ServiceKind

    c, backend = client
    backend.engines[ServiceKind.TEXT].script = '{"name": "get_weather", "arguments": {"city": "Oslo"}}'
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    named = {"type": "function", "function": {"name": "get_weather"}}
    for choice, finish in ((named, "stop"), ("required", "tool_calls"), ("auto", "tool_calls")):
        reply = await c.chat.completions.create(model="text-model", messages=HI, tools=tools, tool_choice=choice,
                                                max_tokens=100)
        assert reply.choices[0].message.tool_calls[0].function.name == "get_weather"
        assert reply.choices[0].finish_reason == finish, choice


async def test_an_assistant_reply_sent_back_as_received_is_accepted(client):
    c, _ = client
    echoed = {"role": "assistant", "content": "Hello.", "refusal": None, "annotations": [], "audio": None,
              "function_call": None, "tool_calls": None, "reasoning": None}
    reply = await c.chat.completions.create(model="text-model", max_tokens=2,
                                            messages=[*HI, echoed, {"role": "user", "content": "And?"}])
    assert reply.choices[0].finish_reason == "length"
    error = await _status_error(c.chat.completions.create(model="text-model", max_tokens=2, messages=[
        *HI, {**echoed, "audio": {"id": "audio_1"}}, {"role": "user", "content": "And?"}]))
    assert error.status_code == 400 and error.body["param"] == "messages[1].audio"
