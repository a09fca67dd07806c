"""OpenAI-compatible JSON <-> domain types, for the HTTP surface. Structure only; limits are the pipeline's job."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import time
from typing import Any, AsyncIterator

from gemma_serving.engines.sampling import SAMPLING_PARAMS, check_value
from gemma_serving.engines.types import (
    AudioPart,
    Chunk,
    FinishReason,
    GenerationRequest,
    ImagePart,
    Message,
    ResponseFormat,
    ResponseTiming,
    Sampling,
    TextPart,
    TokenLogprob,
    Tool,
    ToolCall,
    ToolChoice,
)
from gemma_serving.errors import InvalidRequest, ReplicaGone
from gemma_serving.router import openai_models as om
from gemma_serving.router.timing import timing_json


def _bad(message: str, field: str) -> InvalidRequest:
    return InvalidRequest(message, field=field)


def _b64(data: str, where: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise _bad(f"{where} is not valid base64", where) from None


def _part(item: om.ContentPart, where: str):
    if isinstance(item, om.TextContent):
        return TextPart(item.text)
    if isinstance(item, om.ImageContent):
        url = item.image_url.url
        if not url.startswith("data:") or ";base64," not in url:
            raise _bad(f"{where}.image_url.url must be a data URL (data:image/png;base64,...); remote URLs are not "
                       "fetched", f"{where}.image_url.url")
        header, data = url.split(";base64,", 1)
        return ImagePart(_b64(data, f"{where}.image_url.url"), header.removeprefix("data:"))
    return AudioPart(_b64(item.input_audio.data, f"{where}.input_audio.data"), f"audio/{item.input_audio.format}")


def _message(item: om.ChatMessage, i: int) -> Message:
    where = f"messages[{i}]"
    content = item.content
    if content is None:
        parts: tuple = ()
    elif isinstance(content, str):
        parts = (TextPart(content),)
    else:
        parts = tuple(_part(p, f"{where}.content[{j}]") for j, p in enumerate(content))
    calls = tuple(ToolCall(c.id, c.function.name, c.function.arguments) for c in item.tool_calls or ())
    return Message(item.role, parts, calls, item.tool_call_id or "")


def _tools(body: om.ChatBody) -> tuple[tuple[Tool, ...], ToolChoice]:
    tools = tuple(Tool(t.function.name, t.function.description, t.function.parameters or {})
                  for t in body.tools or ())
    choice = body.tool_choice
    if isinstance(choice, om.NamedToolChoice):
        return tools, ToolChoice("function", choice.function.name)
    return tools, ToolChoice(choice or "auto")


def _response_format(body: om.ChatBody) -> ResponseFormat | None:
    fmt = body.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return ResponseFormat("json_object")
    if fmt.json_schema is None:
        raise _bad("response_format.json_schema is required for type json_schema", "response_format.json_schema")
    return ResponseFormat("json_schema", schema=fmt.json_schema.schema_)


def sampling_from(body: Any, *, skip: tuple[str, ...] = ()) -> Sampling:
    """The domain Sampling of a parsed body: each declared parameter (but `skip`) under its name or an OpenAI alias
    (the alias first, as OpenAI prefers max_completion_tokens over max_tokens)."""
    values = {}
    for p in SAMPLING_PARAMS:
        if p.name in skip:
            continue
        given = [getattr(body, name, None) for name in (*p.openai_names, p.name)]
        value = next((v for v in given if v is not None), None)
        values[p.name] = None if value is None else check_value(p, value, p.name)
    return Sampling(**values)


def chat_request(body: dict) -> tuple[GenerationRequest, om.ChatBody]:
    """The domain request for a /v1/chat/completions body, and the parsed body."""
    parsed = om.parse_body(om.ChatBody, body)
    tools, choice = _tools(parsed)
    request = GenerationRequest(parsed.model, tuple(_message(m, i) for i, m in enumerate(parsed.messages)),
                                sampling_from(parsed), tools=tools, tool_choice=choice,
                                response_format=_response_format(parsed))
    return request, parsed


def completion_request(body: dict) -> tuple[GenerationRequest, om.CompletionBody]:
    """The domain request for a /v1/completions body: the prompt goes to the model as is (no chat template)."""
    parsed = om.parse_body(om.CompletionBody, body)
    prompt = parsed.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise _bad(f"prompt must be a string or a list of one string, got a list of {len(prompt)}", "prompt")
        prompt = prompt[0]
    sampling = sampling_from(parsed, skip=om.COMPLETION_OWN_FIELDS)
    if parsed.logprobs is not None:
        if parsed.echo:
            raise _bad("echo with logprobs is not supported (prompt logprobs are not returned); drop one of them",
                       "logprobs")
        sampling = dataclasses.replace(sampling, logprobs=True, top_logprobs=parsed.logprobs)
    request = GenerationRequest(parsed.model, (Message("user", (TextPart(prompt),)),), sampling, raw_prompt=True)
    return request, parsed


#: OpenAI's finish_reason values. An aborted generation has none: openai_finish turns it into an error.
FINISH = {FinishReason.STOP: "stop", FinishReason.LENGTH: "length", FinishReason.TOOL_CALLS: "tool_calls",
          None: None}


async def openai_finish(stream: AsyncIterator[Chunk], *, named_tool: bool = False) -> AsyncIterator[Chunk]:
    """`stream` with finish reasons as OpenAI reports them: where the engine aborted the generation it raises
    ReplicaGone (503, retryable), as OpenAI has no finish_reason for it and "stop" would pass a cut-off answer as
    complete; a call forced by a named tool_choice (`named_tool`) finishes with "stop", as in OpenAI's API."""
    try:
        async for chunk in stream:
            if chunk.finish_reason is FinishReason.ABORT:
                raise ReplicaGone("the engine aborted the request before it finished; retry it")
            if named_tool and chunk.finish_reason is FinishReason.TOOL_CALLS:
                chunk = dataclasses.replace(chunk, finish_reason=FinishReason.STOP)
            yield chunk
    finally:
        await stream.aclose()


def usage(chunk: Chunk) -> dict:
    return usage_json(chunk.prompt_tokens, chunk.completion_tokens)


def usage_json(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def tool_calls_json(calls: tuple[ToolCall, ...]) -> list[dict]:
    return [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments_json}}
            for c in calls]


def _top(token: str, logprob: float) -> dict:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8", errors="replace"))}


def chat_logprobs(logprobs: tuple[TokenLogprob, ...]) -> dict | None:
    """OpenAI's chat `logprobs` object ({content: [...]}), or None when none were asked."""
    if not logprobs:
        return None
    return {"content": [{**_top(t.token, t.logprob), "top_logprobs": [_top(tok, lp) for tok, lp in t.top]}
                        for t in logprobs]}


def completion_logprobs(logprobs: tuple[TokenLogprob, ...], offset: int) -> dict | None:
    """OpenAI's legacy completions `logprobs` object; `offset` is where the first token starts in the text."""
    if not logprobs:
        return None
    offsets = []
    for t in logprobs:
        offsets.append(offset)
        offset += len(t.token)
    return {"tokens": [t.token for t in logprobs], "token_logprobs": [t.logprob for t in logprobs],
            "top_logprobs": [dict(t.top) for t in logprobs], "text_offset": offsets}


def chat_chunk(request_id: str, model: str, delta: dict, finish: str | None = None, usage_: dict | None = None,
               *, timing: ResponseTiming | None = None, logprobs: tuple[TokenLogprob, ...] = (), index: int = 0,
               no_choices: bool = False) -> str:
    """One chat.completion.chunk event's JSON (`index`: the choice, with n > 1; `no_choices`: the usage event)."""
    choice = {"index": index, "delta": delta, "logprobs": chat_logprobs(logprobs), "finish_reason": finish}
    body = {"id": f"chatcmpl-{request_id}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model, "choices": [] if no_choices else [choice]}
    if usage_ is not None:
        body["usage"] = usage_
    if timing is not None:
        body["timing"] = timing_json(timing)  # our extension, on the chunk with the finish reason
    return json.dumps(body, ensure_ascii=False)
