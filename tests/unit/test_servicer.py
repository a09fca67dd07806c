"""Router logic over real gRPC on loopback, with FakeEngine behind an in-process backend."""

import asyncio

import grpc
import pytest
from gemma_serving.api import inference_pb2 as pb
from gemma_serving.client import message
from gemma_serving.config import ServiceKind


def request(model="text-model", max_tokens=5, **kw):
    return pb.GenerateRequest(model=model, messages=[message("hello world")],
                              sampling=pb.SamplingParams(max_tokens=max_tokens, **kw))


async def test_unary_returns_text_finish_reason_and_usage(router):
    stub, _ = router
    reply = await stub.Generate(request())
    assert reply.text == " word0 word1 word2 word3 word4"
    assert reply.finish_reason == pb.FINISH_REASON_LENGTH
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (2, 5, 7)
    assert len(reply.request_id) == 32 and reply.model == "text-model"


async def test_stream_yields_incremental_chunks_and_usage_last(router):
    stub, _ = router
    chunks = [c async for c in stub.GenerateStream(request())]
    assert "".join(c.text for c in chunks) == " word0 word1 word2 word3 word4"
    assert len(chunks) > 1
    assert all(c.finish_reason == pb.FINISH_REASON_UNSPECIFIED for c in chunks[:-1])
    assert chunks[-1].finish_reason == pb.FINISH_REASON_LENGTH and chunks[-1].usage.completion_tokens == 5


async def test_list_models_reports_services_and_modalities(router):
    stub, _ = router
    models = {m.name: m for m in (await stub.ListModels(pb.ListModelsRequest())).models}
    assert set(models) == {"text-model", "vision-model", "audio-model"}
    assert list(models["audio-model"].input_modalities) == [pb.MODALITY_TEXT, pb.MODALITY_IMAGE, pb.MODALITY_AUDIO]
    assert models["text-model"].max_output_tokens == 100
    assert list(models["text-model"].adapters) == []


def with_tool_history(arguments_json: str, name: str = "get_weather") -> pb.GenerateRequest:
    """A conversation whose assistant turn echoes a tool call with these arguments."""
    call = pb.ToolCall(id="call-1", name=name, arguments_json=arguments_json)
    return pb.GenerateRequest(model="text-model", sampling=pb.SamplingParams(max_tokens=2), messages=[
        message("Weather in Paris?"), pb.Message(role="assistant", tool_calls=[call]),
        pb.Message(role="tool", tool_call_id="call-1", parts=[pb.Part(text="18 C")])])


@pytest.mark.parametrize(
    "req,code,match",
    [
        (request(model="nope"), grpc.StatusCode.NOT_FOUND, "available models"),
        (request(max_tokens=0), grpc.StatusCode.INVALID_ARGUMENT, "max_tokens must be 1..100"),
        (pb.GenerateRequest(model="text-model"), grpc.StatusCode.INVALID_ARGUMENT, "messages must hold"),
        (pb.GenerateRequest(model="text-model", messages=[pb.Message(role="user", parts=[pb.Part()])]),
         grpc.StatusCode.INVALID_ARGUMENT, r"messages[0].parts[0] is empty; set one of text, image, audio"),
        (with_tool_history('{"city": "Par'), grpc.StatusCode.INVALID_ARGUMENT,
         "messages[1].tool_calls[0].arguments_json is not valid JSON (13 characters)"),
        (with_tool_history('["Paris"]'), grpc.StatusCode.INVALID_ARGUMENT,
         "messages[1].tool_calls[0].arguments_json must be a JSON object, got list"),
        (with_tool_history("{}", name=""), grpc.StatusCode.INVALID_ARGUMENT,
         "messages[1].tool_calls[0].name is empty"),
    ],
)
async def test_bad_input_gets_a_clear_status_on_both_rpcs(router, req, code, match):
    stub, backend = router
    for call in (stub.Generate(req), _drain(stub.GenerateStream(req))):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == code
        assert match in info.value.details()
    assert backend.requests == []  # rejected before any engine work
    assert (await stub.Generate(request())).text  # and the server keeps serving


async def _drain(stream):
    return [c async for c in stream]


async def test_client_cancel_aborts_the_engine_request(router):
    stub, backend = router
    engine = backend.engines[ServiceKind.TEXT]
    call = stub.GenerateStream(request(max_tokens=100))
    await call.read()
    call.cancel()
    for _ in range(100):
        if engine.aborted and not engine.in_flight:
            break
        await asyncio.sleep(0.01)
    assert len(engine.aborted) == 1 and not engine.in_flight


async def test_deadline_ends_the_call_and_aborts_the_engine(router):
    stub, backend = router
    engine = backend.engines[ServiceKind.TEXT]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Generate(request(max_tokens=100), timeout=0.1)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    for _ in range(100):
        if engine.aborted and not engine.in_flight:
            break
        await asyncio.sleep(0.01)
    assert engine.aborted and not engine.in_flight


async def test_unexpected_failure_is_internal_with_only_a_request_id(router):
    stub, backend = router

    async def broken(*args, **kwargs):
        raise RuntimeError("secret internal detail")
        yield

    backend.engines[ServiceKind.TEXT].generate = broken
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Generate(request())
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in info.value.details() and "request id" in info.value.details()
    assert dict(info.value.trailing_metadata())["request-id"] in info.value.details()


def _details(error: grpc.aio.AioRpcError) -> dict:
    from google.rpc import error_details_pb2, status_pb2

    raw = dict(error.trailing_metadata())["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(raw)
    assert status.code == error.code().value[0] and status.message == error.details()
    found = {}
    for detail in status.details:
        for cls in (error_details_pb2.BadRequest, error_details_pb2.RetryInfo, error_details_pb2.RequestInfo):
            if detail.Is(cls.DESCRIPTOR):
                msg = cls()
                detail.Unpack(msg)
                found[cls.__name__] = msg
    return found


async def test_invalid_field_comes_back_as_a_bad_request_field_violation(router):
    stub, _ = router
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Generate(request(max_tokens=0))
    details = _details(info.value)
    violation = details["BadRequest"].field_violations[0]
    assert violation.field == "sampling.max_tokens" and "got 0" in violation.description
    assert len(details["RequestInfo"].request_id) == 32


async def test_overload_comes_back_with_retry_info(router):
    from gemma_serving.errors import Overloaded

    stub, backend = router

    async def full(*args, **kwargs):
        raise Overloaded("text service is at capacity", retry_after_s=1.5)
        yield

    backend.engines[ServiceKind.TEXT].generate = full
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Generate(request())
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    delay = _details(info.value)["RetryInfo"].retry_delay
    assert (delay.seconds, delay.nanos) == (1, 500_000_000)
    assert dict(info.value.trailing_metadata())["retry-after-ms"] == "1500"


async def test_server_side_maximum_request_time_aborts_with_deadline_exceeded(config):
    from gemma_serving.config import parse_config
    from gemma_serving.engines.fake import FakeEngine
    from gemma_serving.router.server import start_grpc_server

    from tests.unit.conftest import CONFIG, InProcessBackend, make_deployment

    capped = parse_config({**CONFIG, "router": {"port": 0, "max_request_seconds": 0.2}})
    engine = FakeEngine(step_delay_s=0.01)
    text = await make_deployment(ServiceKind.TEXT, capped.services[ServiceKind.TEXT], engine)
    capped = parse_config({**CONFIG, "router": {"port": 0, "max_request_seconds": 0.2},
                           "services": {"text": CONFIG["services"]["text"]}})
    router = await start_grpc_server(capped, await InProcessBackend.create({ServiceKind.TEXT: text}))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{router.port}") as channel:
        from gemma_serving.api import inference_pb2_grpc as pb_grpc

        with pytest.raises(grpc.aio.AioRpcError) as info:
            await pb_grpc.InferenceStub(channel).Generate(request(max_tokens=100), timeout=30)
    await router.drain_and_stop(0)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "deadline" in info.value.details()
    assert engine.aborted and not engine.in_flight
