"""Conversion between the wire types (gemma.serving.v1) and the domain types. Limits are checked elsewhere."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from gemma_serving.api import inference_pb2 as pb
from gemma_serving.engines.sampling import SAMPLING_PARAMS
from gemma_serving.engines.types import (
    AudioPart,
    AudioTask,
    Chunk,
    FinishReason,
    GenerationRequest,
    ImagePart,
    Message,
    Part,
    ResponseFormat,
    ResponseTiming,
    Sampling,
    TextPart,
    TokenLogprob,
    Tool,
    ToolCall,
    ToolChoice,
)
from gemma_serving.errors import InvalidRequest

_FINISH_TO_PB = {
    None: pb.FINISH_REASON_UNSPECIFIED,
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.ABORT: pb.FINISH_REASON_ABORT,
}
_FINISH_TO_PB[FinishReason.TOOL_CALLS] = pb.FINISH_REASON_TOOL_CALLS
MODALITY_TO_PB = {"text": pb.MODALITY_TEXT, "image": pb.MODALITY_IMAGE, "audio": pb.MODALITY_AUDIO}
_TOOL_CHOICE_MODES = {
    pb.ToolChoice.MODE_UNSPECIFIED: "auto",
    pb.ToolChoice.MODE_AUTO: "auto",
    pb.ToolChoice.MODE_NONE: "none",
    pb.ToolChoice.MODE_REQUIRED: "required",
    pb.ToolChoice.MODE_FUNCTION: "function",
}
_AUDIO_TASKS = {pb.AudioTask.TASK_TRANSCRIBE: "transcribe", pb.AudioTask.TASK_TRANSLATE: "translate"}


def _part(part: pb.Part, where: str) -> Part:
    which = part.WhichOneof("content")
    if which == "text":
        return TextPart(part.text)
    if which == "image":
        return ImagePart(part.image.data, part.image.mime_type)
    if which == "audio":
        return AudioPart(part.audio.data, part.audio.mime_type)
    raise InvalidRequest(f"{where} is empty; set one of text, image, audio")


def _json(text: str, where: str) -> dict:
    try:
        value = json.loads(text) if text else {}
    except (json.JSONDecodeError, RecursionError):
        raise InvalidRequest(f"{where} is not valid JSON", field=where) from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"{where} must be a JSON object", field=where)
    return value


def _tool_calls(calls) -> tuple[ToolCall, ...]:
    return tuple(ToolCall(c.id, c.name, c.arguments_json) for c in calls)


def _response_format(fmt: pb.ResponseFormat) -> ResponseFormat | None:
    which = fmt.WhichOneof("format")
    if which == "json_schema":
        schema = _json(fmt.json_schema.schema_json, "response_format.json_schema.schema_json")
        return ResponseFormat("json_schema", schema=schema)
    if which == "json_object":
        return ResponseFormat("json_object") if fmt.json_object else None
    if which == "regex":
        return ResponseFormat("regex", pattern=fmt.regex)
    if which == "choice":
        return ResponseFormat("choice", choices=tuple(fmt.choice.choices))
    return None


def request_from_pb(req: pb.GenerateRequest) -> GenerationRequest:
    """The domain request (structure only: limits and defaults are the router's validation)."""
    messages = [
        Message(
            m.role,
            tuple(_part(p, f"messages[{i}].parts[{j}]") for j, p in enumerate(m.parts)),
            _tool_calls(m.tool_calls),
            m.tool_call_id,
        )
        for i, m in enumerate(req.messages)
    ]
    tools = tuple(
        Tool(t.name, t.description, _json(t.parameters_json, f"tools[{i}].parameters_json"))
        for i, t in enumerate(req.tools)
    )
    audio_task = None
    if req.audio_task.task != pb.AudioTask.TASK_UNSPECIFIED:
        audio_task = AudioTask(_AUDIO_TASKS[req.audio_task.task], req.audio_task.target_language)
    return GenerationRequest(
        req.model,
        tuple(messages),
        sampling_from_pb(req.sampling),
        tools=tools,
        tool_choice=ToolChoice(_TOOL_CHOICE_MODES[req.tool_choice.mode], req.tool_choice.function_name),
        response_format=_response_format(req.response_format),
        audio_task=audio_task,
        adapter=req.adapter,
    )


def sampling_from_pb(s: pb.SamplingParams) -> Sampling:
    """The domain Sampling: every declared parameter from the proto field of the same name (unset stays None)."""
    values = {}
    for p in SAMPLING_PARAMS:
        if p.kind is tuple:
            values[p.name] = tuple(getattr(s, p.name)) or None
        elif s.HasField(p.name):
            values[p.name] = getattr(s, p.name)
    return Sampling(**values)


def sampling_to_pb(values: Mapping[str, Any]) -> pb.SamplingParams:
    """SamplingParams holding the set (not None) values of `values` by parameter name (e.g. a model's defaults)."""
    return pb.SamplingParams(**{p.name: values[p.name] for p in SAMPLING_PARAMS if values.get(p.name) is not None})


def usage_pb(chunk: Chunk) -> pb.Usage:
    return pb.Usage(
        prompt_tokens=chunk.prompt_tokens,
        completion_tokens=chunk.completion_tokens,
        total_tokens=chunk.prompt_tokens + chunk.completion_tokens,
    )


def _tool_calls_pb(calls: tuple[ToolCall, ...]) -> list[pb.ToolCall]:
    return [pb.ToolCall(id=c.id, name=c.name, arguments_json=c.arguments_json) for c in calls]


def timing_pb(timing: ResponseTiming | None) -> pb.ResponseTiming | None:
    if timing is None:
        return None
    out = pb.ResponseTiming(time_to_first_token_seconds=timing.time_to_first_token_seconds,
                            generation_seconds=timing.generation_seconds, tokens_per_second=timing.tokens_per_second)
    if timing.queue_seconds is not None:
        out.queue_seconds = timing.queue_seconds
    return out


def logprobs_pb(logprobs: tuple[TokenLogprob, ...]) -> list[pb.TokenLogprob]:
    return [pb.TokenLogprob(token=t.token, logprob=t.logprob,
                            top_logprobs=[pb.TopLogprob(token=tok, logprob=lp) for tok, lp in t.top])
            for t in logprobs]


def chunk_to_pb(chunk: Chunk, request_id: str) -> pb.GenerateChunk:
    out = pb.GenerateChunk(request_id=request_id, text=chunk.text)
    if chunk.logprobs:
        out.logprobs.extend(logprobs_pb(chunk.logprobs))
    if chunk.finish_reason is not None:
        out.finish_reason = _FINISH_TO_PB[chunk.finish_reason]
        out.usage.CopyFrom(usage_pb(chunk))
        out.tool_calls.extend(_tool_calls_pb(chunk.tool_calls))
        if chunk.timing is not None:
            out.timing.CopyFrom(timing_pb(chunk.timing))
    return out


def response_to_pb(text: str, last: Chunk, request_id: str, model: str) -> pb.GenerateResponse:
    return pb.GenerateResponse(
        request_id=request_id,
        model=model,
        text=text,
        finish_reason=_FINISH_TO_PB[last.finish_reason],
        usage=usage_pb(last),
        tool_calls=_tool_calls_pb(last.tool_calls),
        timing=timing_pb(last.timing),
        logprobs=logprobs_pb(last.logprobs),
    )


def choices_response_to_pb(choices: list[tuple[str, Chunk]], request_id: str, model: str,
                           usage: tuple[int, int], timing: ResponseTiming | None) -> pb.GenerateResponse:
    """The response to a request with several choices: choice 0 at the top level, all of them in `choices`,
    `usage` as (prompt tokens, completion tokens) over all choices."""
    text, last = choices[0]
    out = response_to_pb(text, last, request_id, model)
    out.usage.CopyFrom(pb.Usage(prompt_tokens=usage[0], completion_tokens=usage[1], total_tokens=sum(usage)))
    out.ClearField("timing")
    if timing is not None:
        out.timing.CopyFrom(timing_pb(timing))
    out.choices.extend(
        pb.Choice(index=i, text=t, finish_reason=_FINISH_TO_PB[c.finish_reason],
                  tool_calls=_tool_calls_pb(c.tool_calls), logprobs=logprobs_pb(c.logprobs),
                  completion_tokens=c.completion_tokens)
        for i, (t, c) in enumerate(choices)
    )
    return out
