"""OpenAI response bodies and streamed events for one or several choices (sampling.n): chat completions (unary and,
for n > 1, streamed; one choice streams through openai_http's `_sse`) and legacy text completions."""

from __future__ import annotations

import time
from typing import AsyncIterator

from gemma_serving.engines.types import Chunk
from gemma_serving.router.choices import combined_timing, combined_usage
from gemma_serving.router.openai_convert import (
    FINISH,
    chat_chunk,
    chat_logprobs,
    completion_logprobs,
    tool_calls_json,
    usage_json,
)
from gemma_serving.router.timing import timing_json


def _usage(lasts: list[Chunk]) -> dict:
    return usage_json(*combined_usage(lasts))


def _with_timing(body: dict, lasts: list[Chunk]) -> dict:
    """`body` with our `timing` extension object (over all choices) when the choices were timed."""
    timing = combined_timing(lasts)
    if timing is not None:
        body["timing"] = timing_json(timing)
    return body


def chat_completion(request_id: str, model: str, choices: list[tuple[str, Chunk]]) -> dict:
    """A chat.completion body: one entry per (text, last chunk) choice."""
    out = []
    for i, (text, last) in enumerate(choices):
        message: dict = {"role": "assistant", "content": text if not last.tool_calls else None}
        if last.tool_calls:
            message["tool_calls"] = tool_calls_json(last.tool_calls)
        out.append({"index": i, "message": message, "logprobs": chat_logprobs(last.logprobs),
                    "finish_reason": FINISH[last.finish_reason]})
    lasts = [last for _, last in choices]
    return _with_timing({"id": f"chatcmpl-{request_id}", "object": "chat.completion", "created": int(time.time()),
                         "model": model, "choices": out, "usage": _usage(lasts)}, lasts)


def text_completion(request_id: str, model: str, choices: list[tuple[str, Chunk]], echo: str) -> dict:
    """A text_completion body; each choice's text follows the echoed prompt when echo was asked."""
    out = [{"index": i, "text": echo + text, "logprobs": completion_logprobs(last.logprobs, len(echo)),
            "finish_reason": FINISH[last.finish_reason]} for i, (text, last) in enumerate(choices)]
    lasts = [last for _, last in choices]
    return _with_timing({"id": f"cmpl-{request_id}", "object": "text_completion", "created": int(time.time()),
                         "model": model, "choices": out, "usage": _usage(lasts)}, lasts)


async def completion_events(pairs: AsyncIterator[tuple[int, Chunk]], first: tuple[int, Chunk] | None,
                            request_id: str, model: str, include_usage: bool, echo: str) -> AsyncIterator[dict]:
    """The events of a streamed text completion from (choice index, chunk) pairs: text deltas (each choice's first
    after the echoed prompt), the finish reason (and timing) on each choice's last, then with include_usage one
    event with usage and no choices."""
    head = {"id": f"cmpl-{request_id}", "object": "text_completion", "created": int(time.time()), "model": model}
    offsets: dict[int, int] = {}
    lasts: dict[int, Chunk] = {}
    pair = first
    while pair is not None:
        i, chunk = pair
        prefix = echo if i not in offsets else ""
        offset = offsets.get(i, len(echo))
        finish = FINISH[chunk.finish_reason]
        if chunk.text or prefix or finish:
            event = {**head, "choices": [{"index": i, "text": prefix + chunk.text, "finish_reason": finish,
                                          "logprobs": completion_logprobs(chunk.logprobs, offset)}]}
            yield _with_timing(event, [chunk]) if finish else event
        offsets[i], lasts[i] = offset + len(chunk.text), chunk
        pair = await anext(pairs, None)
    if include_usage and lasts:
        yield {**head, "choices": [], "usage": _usage([lasts[i] for i in sorted(lasts)])}


async def chat_choice_events(pairs: AsyncIterator[tuple[int, Chunk]], first: tuple[int, Chunk] | None,
                             request_id: str, model: str, include_usage: bool) -> AsyncIterator[str]:
    """chat.completion.chunk events (JSON) for several choices: each choice opens with the assistant role, then
    its deltas and its finish reason, tagged with its index; then with include_usage the usage over all."""
    lasts: dict[int, Chunk] = {}
    pair = first
    while pair is not None:
        i, chunk = pair
        if i not in lasts:
            yield chat_chunk(request_id, model, {"role": "assistant", "content": ""}, index=i)
        delta: dict = {"content": chunk.text} if chunk.text else {}
        if chunk.tool_calls:
            delta["tool_calls"] = [dict(c, index=k) for k, c in enumerate(tool_calls_json(chunk.tool_calls))]
        finish = FINISH[chunk.finish_reason]
        if delta or finish or chunk.logprobs:
            yield chat_chunk(request_id, model, delta, finish, timing=chunk.timing, logprobs=chunk.logprobs,
                             index=i)
        lasts[i] = chunk
        pair = await anext(pairs, None)
    if include_usage and lasts:
        yield chat_chunk(request_id, model, {}, None, _usage([lasts[i] for i in sorted(lasts)]), no_choices=True)
