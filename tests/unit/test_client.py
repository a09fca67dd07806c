import json
import time

import grpc
import pytest
from gemma_serving.client import prompts
from gemma_serving.client.retry import RetryPolicy
from gemma_serving.client.sdk import AsyncGemmaClient, GenerateResult, message
from gemma_serving.config import ServiceKind
from gemma_serving.errors import Overloaded


def _target(router):
    return f"127.0.0.1:{router[1].router.port}"


def _overload_first(engine, times, retry_after_s):
    original, calls = engine.generate, []

    async def generate(request, *, request_id):
        calls.append(time.monotonic())
        if len(calls) <= times:
            raise Overloaded("busy", retry_after_s=retry_after_s)
        async for chunk in original(request, request_id=request_id):
            yield chunk

    engine.generate = generate
    return calls


async def test_async_client_retries_overload_honouring_the_retry_delay(router):
    calls = _overload_first(router[1].engines[ServiceKind.TEXT], times=2, retry_after_s=0.3)
    async with AsyncGemmaClient(_target(router), retry=RetryPolicy(attempts=3)) as client:
        result = await client.generate_result("text-model", [message("hi")], max_tokens=2)
    assert isinstance(result, GenerateResult) and result.text == " word0 word1" and result.finish_reason == "length"
    assert len(calls) == 3 and calls[1] - calls[0] >= 0.28 and calls[2] - calls[1] >= 0.28


async def test_client_gives_up_after_its_attempts_and_never_retries_client_errors(router):
    calls = _overload_first(router[1].engines[ServiceKind.TEXT], times=5, retry_after_s=0.01)
    async with AsyncGemmaClient(_target(router), retry=RetryPolicy(attempts=2)) as client:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.generate("text-model", [message("hi")])
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and len(calls) == 2
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.generate("nope", [message("hi")])
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_async_stream_retries_before_the_first_chunk_only(router):
    calls = _overload_first(router[1].engines[ServiceKind.TEXT], times=1, retry_after_s=0.05)
    async with AsyncGemmaClient(_target(router)) as client:
        chunks = [c async for c in client.stream("text-model", [message("hi")], max_tokens=3)]
    assert "".join(c.text for c in chunks) == " word0 word1 word2" and len(calls) == 2


def test_prompt_helpers_build_valid_messages():
    weather = prompts.tool("get_weather", "Weather", {"city": {"type": "string"}})
    assert json.loads(weather.parameters_json)["required"] == ["city"]
    assert prompts.force("get_weather").function_name == "get_weather"
    assert prompts.tool_result("call_1", {"t": 20}).parts[0].text == '{"t": 20}'
    compared = prompts.compare_images([b"a", b"b"])[0]
    assert [p.WhichOneof("content") for p in compared.parts] == ["text", "image", "text", "image", "text"]
    system, user = prompts.multilingual("Plan a dinner", "Telugu", cultural_context="Andhra Pradesh")
    assert system.role == "system" and "Telugu" in system.parts[0].text and "Andhra Pradesh" in system.parts[0].text
