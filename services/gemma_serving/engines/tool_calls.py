"""Gemma 3 function calling by prompt: the tool prompt, the constraint that forces a call, and a robust parser.

Gemma 3 has no tool tokens: tools are described in the system turn and the model answers with a JSON object
`{"name": ..., "arguments": {...}}` (or a list of them). Models also write fenced blocks (```json, ```tool_code),
Python-style calls `name(a=1)`, and the Gemma guide's two formats: `{"function_name": ..., "parameters": {...}}`
and one `FUNCTION_CALL: name(args)` line per call. The parser accepts all of these and returns nothing when the text
is not (only) calls to declared tools.
"""

from __future__ import annotations

import ast
import json
import re
import uuid

from gemma_serving.engines.types import Tool, ToolCall, ToolChoice

_FENCE = re.compile(r"```(?:json|tool_code|tool_call|python)?\s*\n?(.*?)```", re.S)
#: One call per `FUNCTION_CALL:` line, as the guide's prompt asks ("list them separately").
_FUNCTION_CALL = re.compile(r"FUNCTION_CALL:[ \t]*(.+)")


def tools_prompt(tools: tuple[Tool, ...]) -> str:
    """The system-turn text that offers `tools` to a Gemma model."""
    specs = [{"name": t.name, "description": t.description, "parameters": t.parameters} for t in tools]
    return (
        "You can call functions. To call one, reply with only a JSON object of the form "
        '{"name": <function name>, "arguments": {<argument>: <value>, ...}} and nothing else. '
        "To call several, reply with a JSON list of such objects. If no function is needed, answer normally.\n"
        f"Functions:\n{json.dumps(specs, ensure_ascii=False)}"
    )


def forced_call_schema(tools: tuple[Tool, ...], choice: ToolChoice) -> dict | None:
    """JSON Schema that constrained decoding uses to force a call (None when the model may answer freely)."""
    if choice.mode == "function":
        chosen = [t for t in tools if t.name == choice.function_name]
    elif choice.mode == "required":
        chosen = list(tools)
    else:
        return None
    variants = [
        {
            "type": "object",
            "properties": {"name": {"const": t.name}, "arguments": t.parameters or {"type": "object"}},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in chosen
    ]
    return variants[0] if len(variants) == 1 else {"anyOf": variants}


def parse_tool_calls(text: str, tools: tuple[Tool, ...]) -> tuple[ToolCall, ...]:
    """Tool calls in a model's reply, or () if the reply is not (only) calls to declared tools."""
    names = {t.name for t in tools}
    for candidate in _candidates(text.strip()):
        calls = _calls_from(candidate, names)
        if calls:
            return calls
    return ()


def _candidates(text: str) -> list[str]:
    out = [text]
    out += [m.group(1).strip() for m in _FENCE.finditer(text)]
    calls = [m.group(1).strip() for m in _FUNCTION_CALL.finditer(text)]
    if calls:
        # Several calls become one Python list, so that all of them must parse.
        out.append(calls[0] if len(calls) == 1 else f"[{', '.join(calls)}]")
    return out


def _calls_from(candidate: str, names: set[str]) -> tuple[ToolCall, ...]:
    try:
        value = json.loads(candidate)
    except (json.JSONDecodeError, RecursionError):
        return _python_calls(candidate, names)
    items = value if isinstance(value, list) else [value]
    calls = []
    for item in items:
        if not isinstance(item, dict):
            return ()
        body = item["function"] if isinstance(item.get("function"), dict) else item  # OpenAI-style nesting
        name = body.get("name", body.get("function_name"))  # the guide's JSON format says function_name
        args = body.get("arguments", body.get("parameters", {}))
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                return ()
        if name not in names or not isinstance(args, dict):
            return ()
        calls.append(_call(name, args))
    return tuple(calls)


def _python_calls(candidate: str, names: set[str]) -> tuple[ToolCall, ...]:
    """`name(a=1, b="x")` calls, one per line or in a list; positional arguments are not allowed."""
    try:
        tree = ast.parse(candidate.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return ()
    nodes = tree.body.elts if isinstance(tree.body, (ast.List, ast.Tuple)) else [tree.body]
    calls = []
    for node in nodes:
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in names):
            return ()
        if node.args or any(k.arg is None for k in node.keywords):
            return ()
        try:
            args = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
        except (ValueError, SyntaxError, TypeError, RecursionError):
            return ()
        calls.append(_call(node.func.id, args))
    return tuple(calls)


def _call(name: str, args: dict) -> ToolCall:
    return ToolCall(id=f"call_{uuid.uuid4().hex[:12]}", name=name, arguments_json=json.dumps(args, ensure_ascii=False))
