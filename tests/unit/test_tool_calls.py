import json

import pytest
from gemma_serving.engines.tool_calls import forced_call_schema, parse_tool_calls, tools_prompt
from gemma_serving.engines.types import Tool, ToolChoice

WEATHER = Tool("get_weather", "Current weather", {"type": "object", "properties": {"city": {"type": "string"}},
                                                   "required": ["city"]})
TIME = Tool("get_time", "Current time", {"type": "object", "properties": {"tz": {"type": "string"}}})
TOOLS = (WEATHER, TIME)


@pytest.mark.parametrize(
    "text,expected",
    [
        ('{"name": "get_weather", "arguments": {"city": "Paris"}}', [("get_weather", {"city": "Paris"})]),
        ('  {"name":"get_weather","parameters":{"city":"Oslo"}}\n', [("get_weather", {"city": "Oslo"})]),
        ('```json\n{"name": "get_time", "arguments": {"tz": "UTC"}}\n```', [("get_time", {"tz": "UTC"})]),
        ('Sure! ```tool_code\nget_weather(city="Rome")\n```', [("get_weather", {"city": "Rome"})]),
        ("FUNCTION_CALL: get_weather(city='Lima')", [("get_weather", {"city": "Lima"})]),
        ('[{"name": "get_weather", "arguments": {"city": "A"}}, {"name": "get_time", "arguments": {}}]',
         [("get_weather", {"city": "A"}), ("get_time", {})]),
        ('{"name": "get_weather", "arguments": "{\\"city\\": \\"Kyiv\\"}"}', [("get_weather", {"city": "Kyiv"})]),
        ('{"type": "function", "function": {"name": "get_time", "arguments": {"tz": "CET"}}}',
         [("get_time", {"tz": "CET"})]),
        ('```python\n[get_time(tz="UTC"), get_weather(city="B")]\n```',
         [("get_time", {"tz": "UTC"}), ("get_weather", {"city": "B"})]),
        ('{"name": "get_weather", "arguments": {"city": "Zürich 🌧"}}', [("get_weather", {"city": "Zürich 🌧"})]),
        # The Gemma guide's JSON format (function_name + parameters), alone, fenced and as a list.
        ('{"function_name": "get_weather", "parameters": {"city": "Tokyo"}}', [("get_weather", {"city": "Tokyo"})]),
        ('```json\n{"function_name": "get_time", "parameters": {"tz": "JST"}}\n```', [("get_time", {"tz": "JST"})]),
        ('[{"function_name": "get_weather", "parameters": {"city": "A"}}, {"function_name": "get_time", '
         '"parameters": {}}]', [("get_weather", {"city": "A"}), ("get_time", {})]),
        # The guide's FUNCTION_CALL lines: several calls in one reply, with prose around them.
        ('FUNCTION_CALL: get_weather(city="Tokyo")\nFUNCTION_CALL: get_time(tz="Asia/Tokyo")',
         [("get_weather", {"city": "Tokyo"}), ("get_time", {"tz": "Asia/Tokyo"})]),
        ('I will check both.\n\nFUNCTION_CALL: get_weather(city="Oslo")\n  FUNCTION_CALL: get_weather(city="Bergen")\n'
         'Done.', [("get_weather", {"city": "Oslo"}), ("get_weather", {"city": "Bergen"})]),
    ],
)
def test_real_looking_calls_are_parsed(text, expected):
    calls = parse_tool_calls(text, TOOLS)
    assert [(c.name, json.loads(c.arguments_json)) for c in calls] == expected
    assert all(c.id.startswith("call_") for c in calls)


@pytest.mark.parametrize(
    "text",
    [
        "The weather in Paris is sunny.",
        '{"name": "delete_everything", "arguments": {}}',  # not a declared tool
        '{"name": "get_weather", "arguments": {"city": "Paris"}',  # truncated JSON
        '{"name": "get_weather", "arguments": ["Paris"]}',  # arguments not an object
        '{"name": "get_weather", "arguments": "not json"}',
        '[{"name": "get_weather", "arguments": {}}, "oops"]',
        "get_weather('Paris')",  # positional arguments
        "get_weather(city=open('/etc/passwd').read())",  # not a literal: never evaluated
        "__import__('os').system('id')",
        "```json\n{broken\n```",
        "",
        "[" * 5000,
        '{"name": ' * 3000,
        '{"function_name": "delete_everything", "parameters": {}}',  # the guide's format, undeclared tool
        'FUNCTION_CALL: get_weather(city="A")\nFUNCTION_CALL: rm_rf(path="/")',  # one call is not declared
        'FUNCTION_CALL: get_weather(city="A")\nFUNCTION_CALL: get_time(tz=',  # the second call is cut off
    ],
)
def test_malformed_or_foreign_output_is_not_a_call(text):
    assert parse_tool_calls(text, TOOLS) == ()


def test_prompt_lists_every_tool_with_its_schema():
    prompt = tools_prompt(TOOLS)
    assert '"name": "get_weather"' in prompt and '"required": ["city"]' in prompt and "get_time" in prompt


def test_forced_schemas():
    one = forced_call_schema(TOOLS, ToolChoice("function", "get_weather"))
    assert one["properties"]["name"] == {"const": "get_weather"}
    assert one["properties"]["arguments"] == WEATHER.parameters
    assert len(forced_call_schema(TOOLS, ToolChoice("required"))["anyOf"]) == 2
    assert forced_call_schema(TOOLS, ToolChoice("auto")) is None
