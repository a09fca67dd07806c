"""Request validation in the router: every limit is checked here, before any engine work.

Each error names the field, what is allowed and what was sent (never the prompt text itself).
"""

from __future__ import annotations

import dataclasses
import json

from gemma_serving.config import SERVICE_MODALITIES, ServiceKind, ServingConfig
from gemma_serving.engines.sampling import resolve as resolve_sampling
from gemma_serving.engines.types import AudioPart, GenerationRequest, ImagePart, Sampling, TextPart
from gemma_serving.errors import GemmaServingError, InvalidRequest, ModelNotFound
from gemma_serving.media import inspect_audio, inspect_image
from gemma_serving.router.adapters import AdapterCatalog
from gemma_serving.router.validation_options import check_options

ROLES = ("system", "user", "assistant", "tool")


def validate_request(request: GenerationRequest, config: ServingConfig,
                     adapters: AdapterCatalog | None = None) -> tuple[ServiceKind, GenerationRequest]:
    """The service that will serve `request`, and the request with sampling defaults filled in (`adapters`: the
    router's adapter catalog, with registered adapters; None checks configured adapters only)."""
    kind = _service(request.model, config)
    _check_messages(request, config)
    if request.raw_prompt and (len(request.messages) != 1 or len(request.messages[0].parts) != 1
                               or not isinstance(request.messages[0].parts[0], TextPart)):
        raise InvalidRequest("a raw prompt is one user message of one text part", field="prompt")
    _check_modalities(request, kind, config)
    check_options(request, kind, config, adapters)
    sampling = _check_sampling(request.sampling, kind, config)
    return kind, dataclasses.replace(request, sampling=sampling)


def _service(model: str, config: ServingConfig) -> ServiceKind:
    names = ", ".join(s.model.name for s in config.services.values())
    if not model:
        raise InvalidRequest(f"model is required; available models: {names}", field="model")
    kind = config.service_for_model(model)
    if kind is None:
        raise ModelNotFound(f"model '{model[:128]}' is not served here; available models: {names}", field="model")
    return kind


def _check_messages(request: GenerationRequest, config: ServingConfig) -> None:
    limits = config.limits
    n = len(request.messages)
    if not 1 <= n <= limits.max_messages:
        raise InvalidRequest(f"messages must hold 1..{limits.max_messages} messages, got {n}", field="messages")
    text_chars = images = audios = 0
    expected = "user"
    for i, message in enumerate(request.messages):
        where = f"messages[{i}]"
        if message.role not in ROLES:
            raise InvalidRequest(
                f"{where}.role must be one of {', '.join(ROLES)}, got '{message.role[:32]}'", field=f"{where}.role"
            )
        if message.role == "system":
            if i != 0:
                raise InvalidRequest(
                    f"{where}.role: a system message is allowed only as the first message", field=f"{where}.role"
                )
        elif message.role == "tool" and i > 0 and request.messages[i - 1].role in ("assistant", "tool"):
            expected = "assistant"  # tool results answer the assistant's calls, in the user's place
            if not request.messages[i - 1].tool_calls and request.messages[i - 1].role == "assistant":
                raise InvalidRequest(f"{where}: a tool message must follow an assistant message with tool_calls",
                                     field=f"{where}.role")
        elif message.role != expected:
            raise InvalidRequest(
                f"{where}.role must be '{expected}': after an optional system message, roles alternate "
                f"user/assistant starting with user (tool results may stand in for a user turn)",
                field=f"{where}.role",
            )
        else:
            expected = "assistant" if expected == "user" else "user"
        if message.tool_calls and message.role != "assistant":
            raise InvalidRequest(f"{where}.tool_calls are allowed on assistant messages only",
                                 field=f"{where}.tool_calls")
        _check_tool_calls(message.tool_calls, where)
        min_parts = 0 if message.tool_calls else 1
        if not min_parts <= len(message.parts) <= limits.max_parts_per_message:
            raise InvalidRequest(
                f"{where}.parts must hold {min_parts}..{limits.max_parts_per_message} parts, "
                f"got {len(message.parts)}",
                field=f"{where}.parts",
            )
        for j, part in enumerate(message.parts):
            field = f"{where}.parts[{j}]"
            if isinstance(part, TextPart):
                if not part.text.strip():
                    raise InvalidRequest(
                        f"{field}.text is empty; send non-blank text or omit the part", field=f"{field}.text"
                    )
                text_chars += len(part.text)
            elif isinstance(part, ImagePart):
                images += 1
                inspect_image(part.data, limits, field=f"{field}.image")
            elif isinstance(part, AudioPart):
                audios += 1
                inspect_audio(part.data, limits, field=f"{field}.audio")
    if request.messages[-1].role not in ("user", "tool"):
        raise InvalidRequest("the last message must have role 'user' or 'tool'", field=f"messages[{n - 1}].role")
    if text_chars > limits.max_text_chars:
        raise InvalidRequest(
            f"total text must be at most {limits.max_text_chars} characters, got {text_chars}", field="messages"
        )
    if images > limits.max_images:
        raise InvalidRequest(f"a request may carry at most {limits.max_images} images, got {images}", field="messages")
    if audios > limits.max_audios:
        raise InvalidRequest(
            f"a request may carry at most {limits.max_audios} audio clips, got {audios}", field="messages"
        )


def _check_tool_calls(calls, where: str) -> None:
    """Each echoed tool call names its function and carries a JSON object as arguments (the prompt shows them)."""
    for k, call in enumerate(calls):
        field = f"{where}.tool_calls[{k}]"
        if not call.name:
            raise InvalidRequest(f"{field}.name is empty; name the function that was called", field=f"{field}.name")
        try:
            arguments = json.loads(call.arguments_json)
        except (ValueError, RecursionError):
            raise InvalidRequest(f"{field}.arguments_json is not valid JSON ({len(call.arguments_json)} characters); "
                                 "send the arguments object as JSON text", field=f"{field}.arguments_json") from None
        if not isinstance(arguments, dict):
            raise InvalidRequest(f"{field}.arguments_json must be a JSON object, got {type(arguments).__name__}",
                                 field=f"{field}.arguments_json")


def _check_modalities(request: GenerationRequest, kind: ServiceKind, config: ServingConfig) -> None:
    accepts = SERVICE_MODALITIES[kind]
    extra = sorted(request.modalities() - set(accepts))
    if extra:
        able = [s.model.name for k, s in config.services.items() if set(extra) <= set(SERVICE_MODALITIES[k])]
        hint = f"; models that accept it: {', '.join(able)}" if able else ""
        raise InvalidRequest(
            f"model {request.model} accepts {', '.join(accepts)} input only, got {', '.join(extra)}{hint}",
            field="messages",
        )


def _check_sampling(s: Sampling, kind: ServiceKind, config: ServingConfig) -> Sampling:
    model = config.services[kind].model
    resolved = resolve_sampling(s, model.default_sampling, model, config.limits)
    if resolved.n is not None and resolved.n > 1:
        # Surfaces split such a request into one per choice (router/choices.py); one that did not would silently
        # answer with one choice.
        raise GemmaServingError(f"sampling.n={resolved.n} reached validation; it must be split into choices first")
    if resolved.top_logprobs and not resolved.logprobs:
        raise InvalidRequest(f"sampling.top_logprobs needs sampling.logprobs true, got top_logprobs "
                             f"{resolved.top_logprobs} without it", field="sampling.top_logprobs")
    return resolved
