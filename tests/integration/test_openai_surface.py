"""The OpenAI-compatible surface on the real platform, with the official openai client."""

import base64
import io
import json

import jsonschema
import openai
import pytest
from gemma_serving.client.samples import sample_png, sample_wav


@pytest.fixture(scope="module")
def oai(platform):
    port = platform[1].http_port.remote().result()
    with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=120) as c:
        yield c


def test_chat_unary_and_streaming_agree_for_greedy_decoding(oai):
    kwargs = dict(model="gemma-3-tiny", messages=[{"role": "user", "content": "Tell me about the sea."}],
                  max_tokens=16, temperature=0)
    unary = oai.chat.completions.create(**kwargs)
    stream = oai.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == unary.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == unary.usage.completion_tokens


def test_image_as_data_url(oai):
    url = "data:image/png;base64," + base64.b64encode(sample_png()).decode()
    reply = oai.chat.completions.create(model="gemma-3-tiny-vision", max_tokens=4, messages=[
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                     {"type": "text", "text": "Describe it."}]}])
    assert reply.usage.prompt_tokens > 20 and reply.usage.completion_tokens >= 1


def test_forced_tool_call_and_json_schema(oai):
    params = {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]}},
              "required": ["city"], "additionalProperties": False}
    reply = oai.chat.completions.create(
        model="gemma-3-tiny", max_tokens=64, messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": params}}],
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    call = reply.choices[0].message.tool_calls[0]
    jsonschema.validate(json.loads(call.function.arguments), params)
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    reply = oai.chat.completions.create(
        model="gemma-3-tiny", max_tokens=32, messages=[{"role": "user", "content": "Is it ok?"}],
        response_format={"type": "json_schema", "json_schema": {"name": "r", "schema": schema}})
    jsonschema.validate(json.loads(reply.choices[0].message.content), schema)


def test_audio_transcription_and_models(oai):
    text = oai.audio.transcriptions.create(model="gemma-3n-tiny", file=("clip.wav", io.BytesIO(sample_wav())))
    assert isinstance(text.text, str)
    assert {m.id for m in oai.models.list()} == {"gemma-3-tiny", "gemma-3-tiny-vision", "gemma-3n-tiny"}


def test_errors_match_grpc_semantics(oai):
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="gemma-99", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model="gemma-3-tiny", messages=[{"role": "user", "content": "x"}],
                                    max_tokens=100000)
    assert info.value.body["param"] == "sampling.max_tokens"


def test_ignore_eos_gives_exactly_max_tokens_as_benchmark_tools_expect(oai):
    for _ in range(3):
        reply = oai.chat.completions.create(model="gemma-3-tiny", messages=[{"role": "user", "content": "Hi"}],
                                            max_tokens=48, temperature=1.0, extra_body={"ignore_eos": True})
        assert reply.usage.completion_tokens == 48 and reply.choices[0].finish_reason == "length"
    with pytest.raises(openai.BadRequestError, match="ignore_eos"):
        oai.chat.completions.create(model="gemma-3-tiny", messages=[{"role": "user", "content": "Hi"}],
                                    max_tokens=4, extra_body={"ignore_eos": "yes"})
