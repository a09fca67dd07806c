"""OpenAI-compatible JSON <-> domain types, for the HTTP surface. Structure only; limits are the pipeline's job."""

from __future__ import annotations

import base64
import binascii
import json
import time
from typing import Any

from gemma_serving.engines.types import (
    AudioPart,
    Chunk,
    FinishReason,
    GenerationRequest,
    ImagePart,
    Message,
    ResponseFormat,
    Sampling,
    TextPart,
    Tool,
    ToolCall,
    ToolChoice,
)
from gemma_serving.errors import InvalidRequest


def _bad(message: str, field: str) -> InvalidRequest:
    return InvalidRequest(message, field=field)


def _b64(data: str, where: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise _bad(f"{where} is not valid base64", where) from None


def _part(item: Any, where: str):
    if not isinstance(item, dict):
        raise _bad(f"{where} must be an object", where)
    kind = item.get("type")
    if kind == "text":
        return TextPart(str(item.get("text", "")))
    if kind == "image_url":
        url = (item.get("image_url") or {}).get("url", "")
        if not isinstance(url, str) or not url.startswith("data:") or ";base64," not in url:
            raise _bad(f"{where}.image_url.url must be a data URL (data:image/png;base64,...); remote URLs are not "
                       "fetched", f"{where}.image_url.url")
        header, data = url.split(";base64,", 1)
        return ImagePart(_b64(data, f"{where}.image_url.url"), header.removeprefix("data:"))
    if kind == "input_audio":
        audio = item.get("input_audio") or {}
        return AudioPart(_b64(str(audio.get("data", "")), f"{where}.input_audio.data"),
                         f"audio/{audio.get('format', '')}")
    raise _bad(f"{where}.type must be text, image_url or input_audio, got {str(kind)[:32]!r}", f"{where}.type")


def _message(item: Any, i: int) -> Message:
    where = f"messages[{i}]"
    if not isinstance(item, dict):
        raise _bad(f"{where} must be an object", where)
    content = item.get("content")
    if content is None:
        parts: tuple = ()
    elif isinstance(content, str):
        parts = (TextPart(content),)
    elif isinstance(content, list):
        parts = tuple(_part(p, f"{where}.content[{j}]") for j, p in enumerate(content))
    else:
        raise _bad(f"{where}.content must be a string or a list of parts", f"{where}.content")
    calls = tuple(
        ToolCall(str(c.get("id", "")), str((c.get("function") or {}).get("name", "")),
                 str((c.get("function") or {}).get("arguments", "{}")))
        for c in item.get("tool_calls") or () if isinstance(c, dict)
    )
    return Message(str(item.get("role", "")), parts, calls, str(item.get("tool_call_id", "")))


def _tools(body: dict) -> tuple[tuple[Tool, ...], ToolChoice]:
    tools = []
    for i, t in enumerate(body.get("tools") or ()):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(fn, dict):
            raise _bad(f"tools[{i}] must be {{type: function, function: {{...}}}}", f"tools[{i}]")
        params = fn.get("parameters") or {}
        if not isinstance(params, dict):
            raise _bad(f"tools[{i}].function.parameters must be an object", f"tools[{i}].function.parameters")
        tools.append(Tool(str(fn.get("name", "")), str(fn.get("description", "")), params))
    choice = body.get("tool_choice", "auto")
    if isinstance(choice, dict):
        return tuple(tools), ToolChoice("function", str((choice.get("function") or {}).get("name", "")))
    if choice not in ("auto", "none", "required"):
        raise _bad("tool_choice must be auto, none, required or {type: function, function: {name}}", "tool_choice")
    return tuple(tools), ToolChoice(choice)


def _response_format(body: dict) -> ResponseFormat | None:
    fmt = body.get("response_format")
    if fmt is None or fmt.get("type") == "text":
        return None
    if fmt.get("type") == "json_object":
        return ResponseFormat("json_object")
    if fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise _bad("response_format.json_schema.schema must be an object", "response_format.json_schema.schema")
        return ResponseFormat("json_schema", schema=schema)
    raise _bad("response_format.type must be text, json_object or json_schema", "response_format.type")


def _number(body: dict, key: str, kind: type):
    value = body.get(key)
    if value is None:
        return None
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not numeric or (kind is int and not float(value).is_integer()):
        raise _bad(f"{key} must be a{'n integer' if kind is int else ' number'}, got {str(value)[:32]}", key)
    return kind(value)


def sampling_from(body: dict) -> Sampling:
    stop = body.get("stop") or ()
    stop = (stop,) if isinstance(stop, str) else tuple(str(s) for s in stop)
    max_tokens = _number(body, "max_completion_tokens", int) or _number(body, "max_tokens", int)
    ignore_eos = body.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise _bad(f"ignore_eos must be true or false, got {str(ignore_eos)[:32]}", "ignore_eos")
    return Sampling(max_tokens, _number(body, "temperature", float), _number(body, "top_p", float),
                    _number(body, "top_k", int), _number(body, "seed", int), stop, ignore_eos)


def chat_request(body: dict) -> GenerationRequest:
    """The domain request for a /v1/chat/completions body."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise _bad("messages must be a list", "messages")
    tools, choice = _tools(body)
    return GenerationRequest(str(body.get("model", "")), tuple(_message(m, i) for i, m in enumerate(messages)),
                             sampling_from(body), tools=tools, tool_choice=choice,
                             response_format=_response_format(body))


def completion_request(body: dict) -> GenerationRequest:
    """The domain request for a /v1/completions body: the prompt is sent as one user turn."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise _bad("prompt must be a string (or a list of one string)", "prompt")
    return GenerationRequest(str(body.get("model", "")), (Message("user", (TextPart(prompt),)),), sampling_from(body))


#: ABORT (the engine stopped the request before it finished) is "abort", as vLLM's own OpenAI server reports it:
#: never "stop", which would pass a cut-off answer off as complete.
FINISH = {FinishReason.STOP: "stop", FinishReason.LENGTH: "length", FinishReason.ABORT: "abort",
          FinishReason.TOOL_CALLS: "tool_calls", None: None}


def usage(chunk: Chunk) -> dict:
    return {"prompt_tokens": chunk.prompt_tokens, "completion_tokens": chunk.completion_tokens,
            "total_tokens": chunk.prompt_tokens + chunk.completion_tokens}


def tool_calls_json(calls: tuple[ToolCall, ...]) -> list[dict]:
    return [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments_json}}
            for c in calls]


def chat_completion(request_id: str, model: str, text: str, last: Chunk) -> dict:
    message: dict = {"role": "assistant", "content": text if not last.tool_calls else None}
    if last.tool_calls:
        message["tool_calls"] = tool_calls_json(last.tool_calls)
    return {"id": f"chatcmpl-{request_id}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "message": message, "finish_reason": FINISH[last.finish_reason]}],
            "usage": usage(last)}


def chat_chunk(request_id: str, model: str, delta: dict, finish: str | None = None, usage_: dict | None = None) -> str:
    body = {"id": f"chatcmpl-{request_id}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage_ is not None:
        body["usage"] = usage_
    return json.dumps(body, ensure_ascii=False)
