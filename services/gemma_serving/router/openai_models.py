"""Typed request bodies of the OpenAI-compatible surface (pydantic v2, extra="forbid").

A parameter we do not know or do not support is a 400 that names it, never silently ignored; the few harmless ones
official clients and SDKs send (`user`, `parallel_tool_calls`, an empty `logit_bias`, ...) are accepted. The
sampling fields are derived from the sampling declarations (engines/sampling.py), so a new sampling parameter
appears here without an edit. Ranges are checked later by the router's validation, with the model's limits.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, create_model

from gemma_serving.engines.sampling import SAMPLING_PARAMS, SamplingParam
from gemma_serving.errors import InvalidRequest


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class TextContent(_Body):
    type: Literal["text"] = Field(description="A text part.")
    text: str = Field(description="The text.")


class ImageUrl(_Body):
    url: str = Field(description="A data URL (data:image/png;base64,...); remote URLs are not fetched.")
    detail: Optional[Literal["auto", "low", "high"]] = Field(None, description="Accepted and ignored (Gemma's "
                                                             "image encoder has one resolution).")


class ImageContent(_Body):
    type: Literal["image_url"] = Field(description="An image part.")
    image_url: ImageUrl = Field(description="The image.")


class InputAudio(_Body):
    data: str = Field(description="Base64 of the encoded audio (WAV, FLAC, OGG).")
    format: str = Field("", description="Container format, e.g. wav.")


class AudioContent(_Body):
    type: Literal["input_audio"] = Field(description="An audio part.")
    input_audio: InputAudio = Field(description="The audio.")


ContentPart = Annotated[Union[TextContent, ImageContent, AudioContent], Field(discriminator="type")]


class FunctionCall(_Body):
    name: str = Field(description="The called function.")
    arguments: str = Field("{}", description="Its arguments object as JSON text.")


class ToolCallIn(_Body):
    id: str = Field("", description="The call id, echoed by the tool message that answers it.")
    type: Literal["function"] = Field("function", description="Always function.")
    function: FunctionCall = Field(description="The call.")
    index: Optional[int] = Field(None, description="Accepted and ignored (kept by clients that assembled a stream).")


class ChatMessage(_Body):
    """One message. Clients send earlier assistant replies back as they got them, so the reply-only fields of
    OpenAI's and vLLM's responses are accepted here and ignored (audio and function_call only when null)."""

    role: str = Field(description="system, user, assistant or tool.")
    content: Union[str, list[ContentPart], None] = Field(None, description="Text, or a list of parts.")
    name: Optional[str] = Field(None, description="Accepted and ignored (participant name).")
    tool_calls: Optional[list[ToolCallIn]] = Field(None, description="On an assistant message: the calls it made.")
    tool_call_id: Optional[str] = Field(None, description="On a tool message: the call it answers.")
    refusal: Optional[str] = Field(None, description="Accepted and ignored (an echoed reply's refusal).")
    annotations: Optional[list[Any]] = Field(None, description="Accepted and ignored (an echoed reply's).")
    reasoning: Optional[str] = Field(None, description="Accepted and ignored (vLLM's reasoning output, echoed).")
    reasoning_content: Optional[str] = Field(None, description="Accepted and ignored (older name of reasoning).")
    audio: None = Field(None, description="Only null: audio replies are not produced here.")
    function_call: None = Field(None, description="Only null: the legacy function call; use tool_calls.")


class FunctionDef(_Body):
    name: str = Field(description="Function name.")
    description: str = Field("", description="What it does, for the model.")
    parameters: Optional[dict[str, Any]] = Field(None, description="JSON Schema of its arguments object.")
    strict: Optional[bool] = Field(None, description="Accepted; calls are checked against declared tools anyway.")


class ToolDef(_Body):
    type: Literal["function"] = Field(description="Always function.")
    function: FunctionDef = Field(description="The function.")


class NamedFunction(_Body):
    name: str = Field(description="The function the model must call.")


class NamedToolChoice(_Body):
    type: Literal["function"] = Field(description="Always function.")
    function: NamedFunction = Field(description="The function.")


class JsonSchemaSpec(_Body):
    name: str = Field("", description="Schema name (informational).")
    description: Optional[str] = Field(None, description="Informational.")
    schema_: dict[str, Any] = Field(alias="schema", description="The JSON Schema the output must match.")
    strict: Optional[bool] = Field(None, description="Accepted; the output always matches the schema.")


class ResponseFormatIn(_Body):
    type: Literal["text", "json_object", "json_schema"] = Field(description="Output constraint.")
    json_schema: Optional[JsonSchemaSpec] = Field(None, description="For type json_schema.")


class StreamOptions(_Body):
    include_usage: bool = Field(False, description="Send one last chunk with usage and no choices.")


def _sampling_field(p: SamplingParam):
    kind: Any = {bool: StrictBool, tuple: Union[str, list[str]]}.get(p.kind, p.kind)
    return Optional[kind], Field(None, description=f"{p.description} Allowed: {p.range_text()}.")


def _with_sampling(name: str, base: type[_Body], *, skip: tuple[str, ...] = ()) -> type[_Body]:
    """`base` plus one optional field per declared sampling parameter (and per OpenAI alias) not in `skip`."""
    fields = {}
    for p in SAMPLING_PARAMS:
        if p.name in skip:
            continue
        for field_name in (p.name, *p.openai_names):
            fields[field_name] = _sampling_field(p)
    return create_model(name, __base__=base, __doc__=base.__doc__, **fields)


class _CommonBody(_Body):
    model: str = Field("", description="Model name as listed by /v1/models.")
    stream: bool = Field(False, description="Stream server-sent events.")
    stream_options: Optional[StreamOptions] = Field(None, description="With stream: include_usage.")
    # Harmless fields that official clients and SDKs send; accepted and ignored (or refused when not a no-op).
    user: Optional[str] = Field(None, description="Accepted and ignored (the tenant comes from the API key).")
    logit_bias: Optional[dict[str, float]] = Field(None, description="Only null or {} (not supported otherwise).")
    metadata: Optional[dict[str, str]] = Field(None, description="Accepted and ignored.")
    store: Optional[bool] = Field(None, description="Only null or false (nothing is stored).")
    service_tier: Optional[Literal["auto", "default"]] = Field(None, description="Accepted and ignored.")


class _ChatBody(_CommonBody):
    """A /v1/chat/completions body."""

    messages: list[ChatMessage] = Field(description="The conversation.")
    tools: Optional[list[ToolDef]] = Field(None, description="Functions the model may call.")
    tool_choice: Union[Literal["auto", "none", "required"], NamedToolChoice, None] = Field(
        None, description="auto (default with tools), none, required, or a named function.")
    response_format: Optional[ResponseFormatIn] = Field(None, description="Output constraint.")
    parallel_tool_calls: Optional[bool] = Field(None, description="Accepted; several calls may always be returned.")


class _CompletionBody(_CommonBody):
    """A /v1/completions body (the prompt is sent to the model as is, without the chat template)."""

    prompt: Union[str, list[str]] = Field(description="The prompt text (or a list of one string).")
    echo: bool = Field(False, description="Return the prompt before the completion.")
    suffix: Optional[str] = Field(None, description="Not supported (Gemma has no fill-in-the-middle); only null.")
    logprobs: Optional[int] = Field(None, ge=0, le=20, description="Log probabilities of the sampled token and "
                                    "this many alternatives per token (0..20).")


ChatBody = _with_sampling("ChatBody", _ChatBody)
# Completions' `logprobs` is an integer (OpenAI's legacy shape): it sets both logprobs and top_logprobs.
COMPLETION_OWN_FIELDS = ("logprobs", "top_logprobs")
CompletionBody = _with_sampling("CompletionBody", _CompletionBody, skip=COMPLETION_OWN_FIELDS)


def parse_body(model: type[_Body], body: Any) -> Any:
    """`body` as `model`, or InvalidRequest naming the unknown parameters or the first malformed field."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    try:
        parsed = model.model_validate(body)
    except ValidationError as exc:
        raise _invalid(exc) from None
    _refuse_non_noops(parsed)
    return parsed


_TYPES = {"str", "int", "float", "bool", "list", "dict", "none"}


def _field_path(loc: tuple) -> str:
    """The field path of an error location without the union members pydantic names in it: types (`str`),
    model names (`NamedToolChoice`) and part tags (`image_url` before the field `image_url`)."""
    path: list[str] = []
    for part in loc:
        text = str(part)
        if isinstance(part, str) and (not part.isidentifier() or part in _TYPES or part[0].isupper()):
            continue
        if path and path[-1] == f".{text}":
            continue
        path.append(f"[{part}]" if isinstance(part, int) else f".{part}")
    return "".join(path).removeprefix(".")


def _invalid(exc: ValidationError) -> InvalidRequest:
    errors = exc.errors()
    unknown = [".".join(str(p) for p in e["loc"]) for e in errors if e["type"] == "extra_forbidden"]
    if unknown:
        return InvalidRequest(f"unknown or unsupported parameter{'s' if len(unknown) > 1 else ''}: "
                              f"{', '.join(unknown)}", field=unknown[0])
    # A union reports one error per member it tried; the deepest is the most telling (a list's bad item rather
    # than "not a string").
    first = max(errors, key=lambda e: len(e["loc"]))
    where = _field_path(first["loc"])
    got = repr(first.get("input"))[:40] if first["type"] != "missing" else "nothing"
    return InvalidRequest(f"{where}: {first['msg']}, got {got}", field=where or None)


def _refuse_non_noops(parsed: Any) -> None:
    if parsed.stream_options is not None and not parsed.stream:
        raise InvalidRequest("stream_options is allowed only with stream: true", field="stream_options")
    if parsed.logit_bias:
        raise InvalidRequest("logit_bias is not supported; send null or {}", field="logit_bias")
    if parsed.store:
        raise InvalidRequest("store is not supported (nothing is stored); send null or false", field="store")
    if getattr(parsed, "suffix", None):
        raise InvalidRequest("suffix is not supported: Gemma has no fill-in-the-middle mode; send null",
                             field="suffix")
