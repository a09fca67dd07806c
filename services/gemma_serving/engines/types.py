"""Domain types that travel from the router through a deployment into an engine, and back as chunks.

Plain dataclasses: picklable across Ray processes, free of protobuf, gRPC and Ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Union

from gemma_serving.engines.sampling import Sampling  # derived from the sampling declarations


class FinishReason(str, Enum):
    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"
    TOOL_CALLS = "tool_calls"


@dataclass(frozen=True, slots=True)
class TextPart:
    text: str


@dataclass(frozen=True, slots=True)
class ImagePart:
    """An encoded image as the client sent it; the deployment decodes it."""

    data: bytes
    mime_type: str = ""


@dataclass(frozen=True, slots=True)
class AudioPart:
    """An encoded audio clip as the client sent it; the deployment decodes it."""

    data: bytes
    mime_type: str = ""


@dataclass(frozen=True, slots=True)
class DecodedImage:
    """An image ready for the engine (a PIL image in RGB)."""

    image: Any


@dataclass(frozen=True, slots=True)
class DecodedAudio:
    """Mono float32 samples at `sample_rate` (16 kHz for Gemma 3n)."""

    samples: Any
    sample_rate: int


Part = Union[TextPart, ImagePart, AudioPart, DecodedImage, DecodedAudio]


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments_json: str


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call; `parameters` is the JSON Schema of its arguments object."""

    name: str
    description: str
    parameters: dict


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """mode: auto | none | required | function (then `function_name`)."""

    mode: str = "auto"
    function_name: str = ""


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    """kind: json_schema (schema) | json_object | regex (pattern) | choice (choices)."""

    kind: str
    schema: dict | None = None
    pattern: str | None = None
    choices: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AudioTask:
    """Gemma 3n audio task: transcribe, or translate into `target_language`."""

    task: str
    target_language: str = ""


@dataclass(frozen=True, slots=True)
class Message:
    role: str
    parts: tuple[Part, ...]
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """What a client asked for, after validation. Media parts are encoded until a deployment decodes them."""

    model: str
    messages: tuple[Message, ...]
    sampling: Sampling
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = ToolChoice()
    response_format: ResponseFormat | None = None
    audio_task: AudioTask | None = None
    adapter: str = ""
    #: The one user message's text is the whole prompt, sent without the chat template (/v1/completions).
    raw_prompt: bool = False
    trace_context: dict[str, str] = field(default_factory=dict)
    #: Seconds the request may still take when the router sends it (the client's deadline capped by the server's
    #: maximum). A duration, not an instant: router and replica clocks are never compared.
    budget_s: float | None = None

    def modalities(self) -> set[str]:
        """Input modalities used by the request ("text", "image", "audio")."""
        kinds = {TextPart: "text", ImagePart: "image", DecodedImage: "image", AudioPart: "audio", DecodedAudio: "audio"}
        return {kinds[type(p)] for m in self.messages for p in m.parts}


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One generated token with its log probability and, with top_logprobs, the most likely alternatives."""

    token: str
    logprob: float
    #: (token, logprob) of the most likely tokens at this position, most likely first.
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class ResponseTiming:
    """How long a response took, measured at the router (the Gemma guide's generation_time, tokens_per_second)."""

    #: Between the router sending the request and a replica starting it (None if the replica did not say).
    queue_seconds: float | None
    #: From the router receiving the request to the first output reaching it.
    time_to_first_token_seconds: float
    #: From the router receiving the request to the last output reaching it.
    generation_seconds: float
    #: completion_tokens / generation_seconds.
    tokens_per_second: float


@dataclass(frozen=True, slots=True)
class Chunk:
    """Newly generated text since the previous chunk, with running token counts."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason | None = None
    #: Set on a stream's first chunk: seconds between the router sending the request and a replica starting it
    #: (the router's measure less the replica's own, so no clocks are compared).
    queue_seconds: float | None = None
    #: Set on the last chunk when the model called tools.
    tool_calls: tuple[ToolCall, ...] = ()
    #: Set by the router on the last chunk (router/timing.py).
    timing: ResponseTiming | None = None
    #: With sampling.logprobs: one entry per token of this chunk's text.
    logprobs: tuple[TokenLogprob, ...] = ()

    def merge(self, later: Chunk) -> Chunk:
        """One chunk equivalent to `self` followed by `later` (used to coalesce ready deltas)."""
        return Chunk(
            self.text + later.text, later.prompt_tokens, later.completion_tokens, later.finish_reason,
            self.queue_seconds, later.tool_calls, later.timing, self.logprobs + later.logprobs,
        )
