"""Gemma capabilities end to end on vLLM: forced tool calls and response formats by constrained decoding (so even
random weights give valid output), Gemma 3n audio tasks, and batches."""

import json
import re

import jsonschema
from gemma_serving.api import inference_pb2 as pb
from gemma_serving.client import audio_part, message
from gemma_serving.client.samples import sample_wav

WEATHER_ARGS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Oslo", "Lima"]},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "unit", "days"],
    "additionalProperties": False,
}
TOOLS = [
    pb.Tool(name="get_weather", description="Weather forecast for a city", parameters_json=json.dumps(WEATHER_ARGS)),
    pb.Tool(name="get_time", description="Current time", parameters_json=json.dumps(
        {"type": "object", "properties": {"tz": {"type": "string", "enum": ["UTC", "CET"]}}, "required": ["tz"],
         "additionalProperties": False})),
]


def generate(stub, **kw):
    kw.setdefault("model", "gemma-3-tiny")
    kw.setdefault("messages", [message("What is the weather in Paris for the next 3 days?")])
    kw.setdefault("sampling", pb.SamplingParams(max_tokens=128, temperature=1.0, seed=3))
    return stub.Generate(pb.GenerateRequest(**kw), timeout=120)


def test_forced_function_call_is_schema_valid(stub):
    choice = pb.ToolChoice(mode=pb.ToolChoice.MODE_FUNCTION, function_name="get_weather")
    for seed in range(3):
        reply = generate(stub, tools=TOOLS, tool_choice=choice,
                         sampling=pb.SamplingParams(max_tokens=128, temperature=1.0, seed=seed))
        assert reply.finish_reason == pb.FINISH_REASON_TOOL_CALLS, reply.text
        (call,) = reply.tool_calls
        assert call.name == "get_weather"
        jsonschema.validate(json.loads(call.arguments_json), WEATHER_ARGS)


def test_required_tool_choice_calls_one_of_the_tools(stub):
    reply = generate(stub, tools=TOOLS, tool_choice=pb.ToolChoice(mode=pb.ToolChoice.MODE_REQUIRED))
    (call,) = reply.tool_calls
    assert call.name in {"get_weather", "get_time"}
    schema = WEATHER_ARGS if call.name == "get_weather" else json.loads(TOOLS[1].parameters_json)
    jsonschema.validate(json.loads(call.arguments_json), schema)


def test_json_schema_response_format_parses_against_the_schema(stub):
    schema = {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 20},
                                               "confidence": {"type": "number", "minimum": 0, "maximum": 1}},
              "required": ["answer", "confidence"], "additionalProperties": False}
    fmt = pb.ResponseFormat(json_schema=pb.JsonSchemaFormat(name="a", schema_json=json.dumps(schema)))
    for seed in range(3):
        reply = generate(stub, response_format=fmt, sampling=pb.SamplingParams(max_tokens=96, seed=seed))
        jsonschema.validate(json.loads(reply.text), schema)


def test_choice_and_regex_formats(stub):
    choice = generate(stub, response_format=pb.ResponseFormat(choice=pb.ChoiceFormat(choices=["yes", "no"])))
    assert choice.text in {"yes", "no"}
    regex = generate(stub, response_format=pb.ResponseFormat(regex=r"[0-9]{3}-[a-z]{2}"))
    assert re.fullmatch(r"[0-9]{3}-[a-z]{2}", regex.text)


def test_audio_transcription_and_translation_tasks(stub):
    clip = [message(audio_part(sample_wav(), "audio/wav"))]
    plain = stub.Generate(pb.GenerateRequest(model="gemma-3n-tiny", messages=clip,
                                             sampling=pb.SamplingParams(max_tokens=4)), timeout=120)
    for task in (pb.AudioTask(task=pb.AudioTask.TASK_TRANSCRIBE),
                 pb.AudioTask(task=pb.AudioTask.TASK_TRANSLATE, target_language="French")):
        reply = stub.Generate(pb.GenerateRequest(model="gemma-3n-tiny", messages=clip, audio_task=task,
                                                 sampling=pb.SamplingParams(max_tokens=4)), timeout=120)
        # The server added the task instruction to the prompt.
        assert reply.usage.prompt_tokens > plain.usage.prompt_tokens
        assert reply.usage.completion_tokens >= 1


def test_batch_of_mixed_requests(stub):
    ok = pb.GenerateRequest(model="gemma-3-tiny", messages=[message("hi")], sampling=pb.SamplingParams(max_tokens=4))
    audio = pb.GenerateRequest(model="gemma-3n-tiny", messages=[message(audio_part(sample_wav()), "Transcribe.")],
                               sampling=pb.SamplingParams(max_tokens=4))
    bad = pb.GenerateRequest(model="gemma-3-tiny", messages=[message("hi")], sampling=pb.SamplingParams(max_tokens=0))
    reply = stub.GenerateBatch(pb.GenerateBatchRequest(requests=[ok, audio, bad, ok]), timeout=120)
    kinds = [r.WhichOneof("result") for r in reply.results]
    assert kinds == ["response", "response", "error", "response"]
    assert reply.results[2].error.code == 3 and "max_tokens" in reply.results[2].error.message
