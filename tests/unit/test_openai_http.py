"""The OpenAI-compatible HTTP surface, driven by the official `openai` client (FakeEngine behind the pipeline)."""

import base64
import io
import json

import openai
import pytest
from gemma_serving.client.samples import sample_png, sample_wav
from gemma_serving.config import ServiceKind
from gemma_serving.router.openai_http import OpenAISurface, start_http_server


async def test_models_are_listed(client):
    c, _ = client
    models = {m.id: m async for m in c.models.list()}
    assert set(models) == {"text-model", "vision-model", "audio-model"}
    text = models["text-model"].model_extra
    assert text["max_model_len"] == 2048 and text["default_sampling"] == {"max_tokens": 64}


async def test_chat_completion_and_streaming(client):
    c, _ = client
    reply = await c.chat.completions.create(model="text-model", messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=3)
    assert reply.choices[0].message.content == " word0 word1 word2"
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 3
    stream = await c.chat.completions.create(model="text-model", messages=[{"role": "user", "content": "hi"}],
                                             max_tokens=4, stream=True, stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == " word0 word1 word2 word3"
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 4


async def test_image_data_url_reaches_the_vision_model(client):
    c, backend = client
    url = "data:image/png;base64," + base64.b64encode(sample_png()).decode()
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "what is it?"}]
    await c.chat.completions.create(model="vision-model", messages=[{"role": "user", "content": content}],
                                    max_tokens=2)
    assert backend.requests[-1].modalities() == {"image", "text"}


async def test_tools_come_back_as_openai_tool_calls(client):
    c, backend = client
    backend.engines[ServiceKind.TEXT].script = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    reply = await c.chat.completions.create(model="text-model", messages=[{"role": "user", "content": "w?"}],
                                            tools=tools, tool_choice="auto", max_tokens=100)
    call = reply.choices[0].message.tool_calls[0]
    assert reply.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}


async def test_completions_and_audio_endpoints(client):
    c, backend = client
    done = await c.completions.create(model="text-model", prompt="Once upon", max_tokens=2)
    assert done.choices[0].text == " word0 word1"
    text = await c.audio.transcriptions.create(model="audio-model", file=("a.wav", io.BytesIO(sample_wav())))
    assert text.text.startswith(" word0")
    assert backend.requests[-1].audio_task.task == "transcribe"
    await c.audio.translations.create(model="audio-model", file=("a.wav", io.BytesIO(sample_wav())))
    assert (backend.requests[-1].audio_task.task, backend.requests[-1].audio_task.target_language) == (
        "translate", "English")


@pytest.mark.parametrize(
    "kwargs,status,text",
    [
        (dict(model="nope"), 404, "available models"),
        (dict(model="text-model", max_tokens=0), 400, "max_tokens must be 1..100"),
        (dict(model="text-model", messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {
            "url": "https://example.com/cat.png"}}]}]), 400, "must be a data URL"),
        (dict(model="text-model", temperature=5), 400, "temperature must be 0..2"),
    ],
)
async def test_errors_use_openai_bodies_and_statuses(client, kwargs, status, text):
    c, _ = client
    kwargs.setdefault("messages", [{"role": "user", "content": "hi"}])
    with pytest.raises(openai.APIStatusError) as info:
        await c.chat.completions.create(**kwargs)
    assert info.value.status_code == status
    assert text in info.value.body["message"] and info.value.body["type"]


async def test_a_taken_http_port_fails_clearly_instead_of_hanging(client, config):
    import socket

    from gemma_serving.router.openai_http import OpenAISurface

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"router.http_port: cannot listen on 127.0.0.1:{port}"):
            await start_http_server(OpenAISurface(config, None).app(), "127.0.0.1", port)


async def test_health_follows_the_routers_verdict(router, config):
    import httpx

    stub, backend = router
    surface = OpenAISurface(config, backend.router.pipeline, backend.router.health)
    server, port = await start_http_server(surface.app(), "127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            reply = await http.get("/health")
            assert reply.status_code == 200 and reply.json()["status"] == "serving"
            assert reply.json()["services"]["text"] == "ready"
            backend.engines[ServiceKind.TEXT].healthy = False
            await backend.router.health.refresh()
            reply = await http.get("/health")
            assert reply.status_code == 503 and reply.json()["services"]["text"] == "unavailable"
            backend.engines[ServiceKind.TEXT].healthy = True
            await backend.router.health.drain()
            reply = await http.get("/health")
            assert reply.status_code == 503 and reply.json()["status"] == "draining"
    finally:
        server.should_exit = True
        await server.gemma_task
