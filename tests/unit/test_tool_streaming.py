"""Replies to requests that offer tools stream: prose at once, calls on the last chunk once known."""

from __future__ import annotations

import json

import pytest
from gemma_serving.engines.types import Chunk, FinishReason, Tool
from gemma_serving.router.tool_streaming import reply_start, stream_with_tool_calls

TOOLS = (Tool("get_weather", "Weather for a city", {"type": "object", "properties": {"city": {"type": "string"}}}),)


async def _chunks(pieces: list[str], closed: list | None = None):
    try:
        for i, text in enumerate(pieces):
            yield Chunk(text, 5, i + 1, FinishReason.STOP if i == len(pieces) - 1 else None)
    finally:
        if closed is not None:
            closed.append(True)


async def _run(pieces: list[str]) -> list[Chunk]:
    return [c async for c in stream_with_tool_calls(_chunks(pieces), TOOLS)]


async def test_prose_streams_chunk_by_chunk_from_the_first_token():
    out = await _run(["The", " sky", " is", " blue."])
    assert [c.text for c in out] == ["The", " sky", " is", " blue."]
    assert out[-1].finish_reason is FinishReason.STOP and not out[-1].tool_calls


async def test_a_json_call_arrives_as_tool_calls_on_the_last_chunk_without_text():
    out = await _run(['{"name": "get_', 'weather", "arguments": ', '{"city": "Paris"}}'])
    assert len(out) == 1 and out[0].text == "" and out[0].finish_reason is FinishReason.TOOL_CALLS
    assert out[0].tool_calls[0].name == "get_weather"
    assert json.loads(out[0].tool_calls[0].arguments_json) == {"city": "Paris"}
    assert out[0].completion_tokens == 3


async def test_prose_before_a_fenced_call_streams_and_the_call_follows():
    out = await _run(["Sure", ", checking.", "\n`", '``json\n{"name": "get_weather", "arguments": {}}\n```'])
    assert "".join(c.text for c in out) == "Sure, checking.\n"
    assert out[0].text == "Sure"  # not held back
    assert out[-1].tool_calls and out[-1].finish_reason is FinishReason.TOOL_CALLS


async def test_text_that_only_looked_like_a_call_is_delivered_whole_at_the_end():
    out = await _run(["{not", " json at", " all"])
    assert "".join(c.text for c in out) == "{not json at all"
    assert out[-1].finish_reason is FinishReason.STOP and not out[-1].tool_calls


async def test_a_python_style_call_of_a_declared_tool_is_held_and_parsed():
    out = await _run(["get_wea", "ther(city=", "'Oslo')"])
    assert [c.text for c in out] == [""] and out[0].tool_calls[0].name == "get_weather"


@pytest.mark.parametrize("text,verdict", [
    ("", None), ("  ", None), ("{", True), ("[", True), ("```", True), ("FUNC", None), ("FUNCTION_CALL:", True),
    ("get", None), ("get_weather", None), ("get_weather (", True), ("get the", False), ("Hello", False),
])
def test_reply_start(text, verdict):
    assert reply_start(text, ("get_weather",)) is verdict


async def test_closing_early_closes_the_engine_stream():
    closed = []
    stream = stream_with_tool_calls(_chunks(["a", "b", "c"], closed), TOOLS)
    assert (await anext(stream)).text == "a"
    await stream.aclose()
    assert closed == [True]
