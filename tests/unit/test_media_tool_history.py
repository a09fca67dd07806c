"""A media request keeps its tool history: decoding images rebuilds parts only, so an assistant message's tool_calls
and a tool message's tool_call_id reach the engine (over real gRPC to the vision FakeEngine)."""

from gemma_serving.api import inference_pb2 as pb
from gemma_serving.client import image_part, message
from gemma_serving.client.samples import sample_png
from gemma_serving.config import ServiceKind

WEATHER = pb.Tool(name="get_weather", description="Weather for a city", parameters_json='{"type": "object"}')


async def test_image_conversation_with_prior_tool_calls_reaches_the_engine_whole(router):
    stub, backend = router
    call = pb.ToolCall(id="call-1", name="get_weather", arguments_json='{"city": "Paris"}')
    conversation = [
        message(image_part(sample_png()), "What is the weather where this photo was taken?"),
        pb.Message(role="assistant", tool_calls=[call]),
        pb.Message(role="tool", tool_call_id="call-1", parts=[pb.Part(text="18 C, sunny")]),
    ]
    await stub.Generate(pb.GenerateRequest(model="vision-model", messages=conversation, tools=[WEATHER],
                                           sampling=pb.SamplingParams(max_tokens=2)))
    seen = backend.engines[ServiceKind.VISION].seen[-1]
    first, assistant, tool = seen.messages
    assert [(c.id, c.name, c.arguments_json) for c in assistant.tool_calls] == [
        ("call-1", "get_weather", '{"city": "Paris"}')]
    assert tool.role == "tool" and tool.tool_call_id == "call-1"
    assert type(first.parts[0]).__name__ == "DecodedImage"  # the image was decoded on the way
