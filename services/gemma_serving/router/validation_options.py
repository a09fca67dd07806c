"""Validation of the optional request features: tools, tool choice, response format, audio tasks, adapters."""

from __future__ import annotations

import json
import re

from gemma_serving.config import SERVICE_MODALITIES, ServiceKind, ServingConfig
from gemma_serving.engines.types import GenerationRequest
from gemma_serving.errors import InvalidRequest
from gemma_serving.router.adapters import AdapterCatalog

_TOOL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")


def check_options(request: GenerationRequest, kind: ServiceKind, config: ServingConfig,
                  adapters: AdapterCatalog | None = None) -> None:
    """Raise InvalidRequest naming the field if a feature option is malformed or not available for the model.
    `adapters`: the router's catalog (configured + registered adapters); None checks the configured ones only."""
    _check_tools(request, config)
    _check_response_format(request, config)
    _check_audio_task(request, kind)
    if request.adapter:
        (adapters or AdapterCatalog(config)).check(request.adapter, kind)


def _check_schema(schema: dict, where: str, config: ServingConfig) -> None:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    size = len(json.dumps(schema))
    if size > config.limits.max_schema_chars:
        raise InvalidRequest(f"{where} must be at most {config.limits.max_schema_chars} characters of JSON, got {size}",
                             field=where)
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise InvalidRequest(f"{where} is not a valid JSON Schema: {exc.message[:200]}", field=where) from None


def _check_tools(request: GenerationRequest, config: ServingConfig) -> None:
    tools, choice = request.tools, request.tool_choice
    if len(tools) > config.limits.max_tools:
        raise InvalidRequest(f"tools may hold at most {config.limits.max_tools} tools, got {len(tools)}",
                             field="tools")
    names = set()
    for i, tool in enumerate(tools):
        if not _TOOL_NAME.match(tool.name):
            raise InvalidRequest(f"tools[{i}].name must match {_TOOL_NAME.pattern}, got '{tool.name[:64]}'",
                                 field=f"tools[{i}].name")
        if tool.name in names:
            raise InvalidRequest(f"tools[{i}].name '{tool.name}' is declared twice", field=f"tools[{i}].name")
        names.add(tool.name)
        _check_schema(tool.parameters, f"tools[{i}].parameters_json", config)
        if tool.parameters and tool.parameters.get("type", "object") != "object":
            raise InvalidRequest(f"tools[{i}].parameters_json must describe an object (type: object)",
                                 field=f"tools[{i}].parameters_json")
    if choice.mode in ("required", "function") and not tools:
        raise InvalidRequest(f"tool_choice {choice.mode} needs at least one tool in tools", field="tool_choice")
    if choice.mode == "function" and choice.function_name not in names:
        raise InvalidRequest(f"tool_choice.function_name '{choice.function_name[:64]}' is not one of the tools: "
                             f"{', '.join(sorted(names))}", field="tool_choice.function_name")
    if choice.mode in ("required", "function") and request.response_format is not None:
        raise InvalidRequest("response_format cannot be combined with a forced tool_choice", field="response_format")


def _check_response_format(request: GenerationRequest, config: ServingConfig) -> None:
    fmt = request.response_format
    if fmt is None:
        return
    if fmt.kind == "json_schema":
        _check_schema(fmt.schema or {}, "response_format.json_schema.schema_json", config)
    elif fmt.kind == "regex":
        if not fmt.pattern or len(fmt.pattern) > config.limits.max_schema_chars:
            raise InvalidRequest(f"response_format.regex must be 1..{config.limits.max_schema_chars} characters",
                                 field="response_format.regex")
        try:
            re.compile(fmt.pattern)
        except re.error as exc:
            raise InvalidRequest(f"response_format.regex does not compile: {exc}", field="response_format.regex")
    elif fmt.kind == "choice":
        n = len(fmt.choices)
        if not 1 <= n <= config.limits.max_choices or not all(fmt.choices):
            raise InvalidRequest(f"response_format.choice needs 1..{config.limits.max_choices} non-empty choices, "
                                 f"got {n}", field="response_format.choice.choices")


def _check_audio_task(request: GenerationRequest, kind: ServiceKind) -> None:
    task = request.audio_task
    if task is None:
        return
    if "audio" not in SERVICE_MODALITIES[kind]:
        raise InvalidRequest(f"audio_task needs an audio model; model {request.model} does not accept audio",
                             field="audio_task")
    if "audio" not in request.modalities():
        raise InvalidRequest("audio_task needs an audio part in the messages", field="audio_task")
    if task.task == "translate" and not 1 <= len(task.target_language.strip()) <= 64:
        raise InvalidRequest("audio_task.target_language must be 1..64 characters for TASK_TRANSLATE",
                             field="audio_task.target_language")
