"""Per-service health, reflection and graceful drain of the router (real gRPC, FakeEngine)."""

import asyncio

import grpc
from gemma_serving.api import inference_pb2 as pb
from gemma_serving.client import message
from gemma_serving.config import ServiceKind
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


async def status_of(channel, name):
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=name))
    return reply.status


async def wait_for(predicate, timeout=3.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_a_dead_engine_turns_its_service_not_serving_and_back(router):
    stub, backend = router
    channel = backend.channel
    for name in ("", "gemma.serving.v1.Inference", "text", "vision", "audio"):
        await wait_for(lambda name=name: _is(channel, name, SERVING))
    backend.engines[ServiceKind.TEXT].healthy = False
    await wait_for(lambda: _is(channel, "text", NOT_SERVING))
    assert await status_of(channel, "vision") == SERVING
    assert await status_of(channel, "") == NOT_SERVING
    models = {m.name: m.status for m in (await stub.ListModels(pb.ListModelsRequest())).models}
    assert models == {"text-model": pb.MODEL_STATUS_UNAVAILABLE, "vision-model": pb.MODEL_STATUS_READY,
                      "audio-model": pb.MODEL_STATUS_READY}
    backend.engines[ServiceKind.TEXT].healthy = True
    await wait_for(lambda: _is(channel, "text", SERVING))
    await wait_for(lambda: _is(channel, "", SERVING))


async def _is(channel, name, status):
    return await status_of(channel, name) == status


async def test_server_reflection_lists_the_services(router):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    _, backend = router
    stub = reflection_pb2_grpc.ServerReflectionStub(backend.channel)
    replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    async for reply in replies:
        names = {s.name for s in reply.list_services_response.service}
        break
    assert {"gemma.serving.v1.Inference", "grpc.health.v1.Health"} <= names


async def test_drain_finishes_in_flight_streams_and_refuses_new_calls(router):
    stub, backend = router
    req = pb.GenerateRequest(model="text-model", messages=[message("hi")], sampling=pb.SamplingParams(max_tokens=60))
    stream = stub.GenerateStream(req)
    first = await stream.read()
    drain = asyncio.create_task(backend.router.drain_and_stop(10, notice_s=0.5))
    await wait_for(lambda: _is(backend.channel, "", NOT_SERVING), timeout=0.4)

    async def refused():
        try:
            await stub.Generate(req, timeout=5)
            return False
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE
            return True

    await wait_for(refused)
    rest = []
    while (chunk := await stream.read()) is not grpc.aio.EOF:
        rest.append(chunk)
    assert rest[-1].finish_reason == pb.FINISH_REASON_LENGTH
    assert first.text + "".join(c.text for c in rest) == "".join(f" word{i}" for i in range(60))
    await drain


async def test_a_scale_to_zero_service_follows_its_replica_count():
    from gemma_serving.config import parse_config
    from gemma_serving.router.health import ServiceHealth, ServiceState
    from grpc_health.v1 import health

    from tests.unit.conftest import CONFIG

    data = {**CONFIG, "services": {**CONFIG["services"]}}
    data["services"]["audio"] = {**CONFIG["services"]["audio"],
                                 "deployment": {"autoscaling": {"min_replicas": 0, "max_replicas": 1}}}
    probed = []

    async def probe(kind):
        probed.append(kind)

    service_health = ServiceHealth(parse_config(data), probe, health.aio.HealthServicer())
    await service_health.refresh()
    assert ServiceKind.AUDIO not in probed  # a probe would wake it
    assert service_health.states[ServiceKind.AUDIO] is ServiceState.SCALED_TO_ZERO
    await service_health.observe_replicas(ServiceKind.AUDIO, 1)
    assert service_health.states[ServiceKind.AUDIO] is ServiceState.READY
    await service_health.observe_replicas(ServiceKind.TEXT, 0)  # probed services keep their probe's verdict
    assert service_health.states[ServiceKind.TEXT] is ServiceState.READY
    await service_health.observe_replicas(ServiceKind.AUDIO, 0)
    assert service_health.states[ServiceKind.AUDIO] is ServiceState.SCALED_TO_ZERO
