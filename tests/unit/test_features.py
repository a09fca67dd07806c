"""Tools, response formats, audio tasks and batches through the router (real gRPC, FakeEngine)."""

import json

import grpc
import pytest
from gemma_serving.api import inference_pb2 as pb
from gemma_serving.client import audio_part, message
from gemma_serving.client.samples import sample_wav
from gemma_serving.config import ServiceKind

WEATHER = pb.Tool(name="get_weather", description="weather",
                  parameters_json=json.dumps({"type": "object", "properties": {"city": {"type": "string"}}}))


def request(**kw):
    kw.setdefault("model", "text-model")
    kw.setdefault("messages", [message("weather in Paris?")])
    kw.setdefault("sampling", pb.SamplingParams(max_tokens=100))
    return pb.GenerateRequest(**kw)


async def test_a_reply_that_calls_a_tool_comes_back_as_a_structured_call(router):
    stub, backend = router
    backend.engines[ServiceKind.TEXT].script = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    reply = await stub.Generate(request(tools=[WEATHER]))
    assert reply.finish_reason == pb.FINISH_REASON_TOOL_CALLS and reply.text == ""
    assert [(c.name, json.loads(c.arguments_json)) for c in reply.tool_calls] == [("get_weather", {"city": "Paris"})]
    chunks = [c async for c in stub.GenerateStream(request(tools=[WEATHER]))]
    assert chunks[-1].tool_calls[0].name == "get_weather"
    # The engine was offered the tools in the request it received.
    assert backend.engines[ServiceKind.TEXT].seen[-1].tools[0].name == "get_weather"


async def test_plain_text_reply_with_tools_offered_stays_text(router):
    stub, backend = router
    backend.engines[ServiceKind.TEXT].script = "It is sunny."
    reply = await stub.Generate(request(tools=[WEATHER]))
    assert reply.text == "It is sunny." and not reply.tool_calls and reply.finish_reason == pb.FINISH_REASON_STOP


async def test_tool_results_continue_the_conversation(router):
    stub, backend = router
    backend.engines[ServiceKind.TEXT].script = "Sunny in Paris."
    call = pb.ToolCall(id="call_1", name="get_weather", arguments_json='{"city": "Paris"}')
    messages = [message("weather in Paris?"), pb.Message(role="assistant", tool_calls=[call]),
                pb.Message(role="tool", tool_call_id="call_1", parts=[pb.Part(text='{"sky": "clear"}')])]
    reply = await stub.Generate(request(tools=[WEATHER], messages=messages))
    assert reply.text == "Sunny in Paris."
    seen = backend.engines[ServiceKind.TEXT].seen[-1]
    assert [m.role for m in seen.messages] == ["user", "assistant", "tool"]


BAD = [
    (dict(tools=[pb.Tool(name="bad name!", parameters_json="{}")]), "tools[0].name must match"),
    (dict(tools=[pb.Tool(name="f", parameters_json="{not json")]), "tools[0].parameters_json is not valid JSON"),
    (dict(tools=[pb.Tool(name="f", parameters_json='{"type": 12}')]), "is not a valid JSON Schema"),
    (dict(tools=[WEATHER, WEATHER]), "declared twice"),
    (dict(tool_choice=pb.ToolChoice(mode=pb.ToolChoice.MODE_REQUIRED)), "needs at least one tool"),
    (dict(tools=[WEATHER], tool_choice=pb.ToolChoice(mode=pb.ToolChoice.MODE_FUNCTION, function_name="nope")),
     "function_name 'nope' is not one of the tools: get_weather"),
    (dict(response_format=pb.ResponseFormat(json_schema=pb.JsonSchemaFormat(schema_json='{"type": "nonsense"}'))),
     "not a valid JSON Schema"),
    (dict(response_format=pb.ResponseFormat(regex="(unclosed")), "response_format.regex does not compile"),
    (dict(response_format=pb.ResponseFormat(choice=pb.ChoiceFormat())), "needs 1..64 non-empty choices, got 0"),
    (dict(audio_task=pb.AudioTask(task=pb.AudioTask.TASK_TRANSCRIBE)), "needs an audio model"),
    (dict(model="audio-model", audio_task=pb.AudioTask(task=pb.AudioTask.TASK_TRANSCRIBE)),
     "needs an audio part"),
    (dict(model="audio-model", messages=[message(audio_part(sample_wav()), "x")],
          audio_task=pb.AudioTask(task=pb.AudioTask.TASK_TRANSLATE)), "target_language must be 1..64"),
    (dict(adapter="my-lora"), "adapter 'my-lora' is not configured"),
    (dict(messages=[pb.Message(role="tool", parts=[pb.Part(text="x")])]), "role must be 'user'"),
]


@pytest.mark.parametrize("fields,text", BAD, ids=[b[1][:40] for b in BAD])
async def test_bad_feature_options_are_invalid_argument(router, fields, text):
    stub, backend = router
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Generate(request(**fields))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert text in info.value.details()
    assert backend.requests == []


async def test_audio_task_reaches_the_engine(router):
    stub, backend = router
    task = pb.AudioTask(task=pb.AudioTask.TASK_TRANSLATE, target_language="French")
    await stub.Generate(request(model="audio-model", messages=[message(audio_part(sample_wav()))], audio_task=task))
    seen = backend.engines[ServiceKind.AUDIO].seen[-1]
    assert (seen.audio_task.task, seen.audio_task.target_language) == ("translate", "French")


async def test_batch_answers_every_item_in_order_and_fails_items_alone(router):
    stub, _ = router
    batch = pb.GenerateBatchRequest(requests=[
        request(sampling=pb.SamplingParams(max_tokens=2)),
        request(model="nope"),
        request(sampling=pb.SamplingParams(max_tokens=3)),
    ])
    reply = await stub.GenerateBatch(batch)
    assert [r.index for r in reply.results] == [0, 1, 2]
    assert reply.results[0].response.text == " word0 word1"
    assert reply.results[1].error.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert "available models" in reply.results[1].error.message
    assert reply.results[2].response.usage.completion_tokens == 3
    streamed = [r async for r in stub.GenerateBatchStream(batch)]
    assert sorted(r.index for r in streamed) == [0, 1, 2]


async def test_batch_size_is_limited(router):
    stub, _ = router
    for n in (0, 33):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GenerateBatch(pb.GenerateBatchRequest(requests=[request()] * n))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and f"got {n}" in info.value.details()
