"""Three health states: the replica's short-generation probe (FakeEngine) and what the router makes of it: ready,
degraded (slow: gRPC health SERVING, DEGRADED in ListModels, /health and the state metric) and not serving."""

from __future__ import annotations

import asyncio

import grpc
import httpx
import pytest
from gemma_serving.api import inference_pb2 as pb
from gemma_serving.api import inference_pb2_grpc as pb_grpc
from gemma_serving.config import ServiceKind, parse_config
from gemma_serving.deployments.health_probe import EngineProbe, ProbeVerdict
from gemma_serving.engines.fake import FakeEngine
from gemma_serving.errors import Overloaded
from gemma_serving.observability_config import HealthProbeSettings
from gemma_serving.router.health import ServiceHealth, ServiceState
from gemma_serving.router.openai_http import OpenAISurface, start_http_server
from gemma_serving.router.server import start_grpc_server
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests.unit.conftest import CONFIG, InProcessBackend, make_deployment

PROBE = {"interval_s": 0.05, "max_tokens": 4, "degraded_after_s": 0.1, "timeout_s": 2}
SERVING = health_pb2.HealthCheckResponse.SERVING


async def report_when(probe: EngineProbe, verdict: str, timeout: float = 3.0):
    """Poll the probe's report (as the router does) until it has `verdict`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        report = probe.report()
        if report is not None and report.verdict == verdict:
            return report
        assert asyncio.get_running_loop().time() < deadline, f"no {verdict} report, last {report}"
        await asyncio.sleep(0.02)


async def test_probe_times_a_short_generation_on_the_engine():
    engine = FakeEngine(step_delay_s=0.001)
    probe = EngineProbe(engine, "m", HealthProbeSettings(**PROBE))
    assert probe.report() is None  # the first call starts a probe and does not wait for it
    report = await report_when(probe, ProbeVerdict.READY)
    assert report.latency_s < 0.1
    assert engine.seen[-1].sampling.max_tokens == 4 and engine.seen[-1].sampling.temperature == 0.0
    engine.step_delay_s = 0.05  # 4 tokens now take 0.2 s > degraded_after_s
    report = await report_when(probe, ProbeVerdict.DEGRADED)
    assert report.latency_s > 0.1
    engine.healthy = False
    assert (await report_when(probe, ProbeVerdict.FAILING)).error == "EngineDead"
    probe.stop()


async def test_a_report_never_waits_for_the_probe_and_probes_are_spaced():
    engine = FakeEngine(step_delay_s=0.5)  # 2 s per probe generation
    probe = EngineProbe(engine, "m", HealthProbeSettings(**{**PROBE, "interval_s": 30, "timeout_s": 5}))
    loop = asyncio.get_running_loop()
    began = loop.time()
    for _ in range(20):
        probe.report()
        await asyncio.sleep(0.01)
    assert loop.time() - began < 0.5
    assert probe.probes == 1  # one probe in flight, none started beside it
    await asyncio.sleep(0.15)
    report = probe.report()  # still running after degraded_after_s: degraded at once
    assert report.verdict == ProbeVerdict.DEGRADED and report.error == "probe still running"
    probe.stop()


class ReportingBackend(InProcessBackend):
    """The router's probe asks the replica for its probe report, as ServeHandleBackend does through Serve."""

    async def probe(self, kind):
        return await self.deployments[kind].health_report()


async def start_reporting_router():
    services = {k: {**v, "deployment": {"health_probe": PROBE}} for k, v in CONFIG["services"].items()}
    config = parse_config({**CONFIG, "services": services})
    deployments = {kind: await make_deployment(kind, s, FakeEngine(step_delay_s=0.001))
                   for kind, s in config.services.items()}
    backend = await ReportingBackend.create(deployments)
    router = await start_grpc_server(config, backend, health_interval_s=0.05)
    return config, router, backend


async def until(predicate, timeout=3.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.03)


async def test_slow_probes_make_a_service_degraded_but_serving_and_a_dead_engine_not_serving():
    config, router, backend = await start_reporting_router()
    http, port = await start_http_server(OpenAISurface(config, router.pipeline, router.health).app(), "127.0.0.1", 0)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{router.port}")
    stub, health_stub = pb_grpc.InferenceStub(channel), health_pb2_grpc.HealthStub(channel)

    async def model_status():
        return {m.service: m.status for m in (await stub.ListModels(pb.ListModelsRequest())).models}

    async def grpc_status(name):
        return (await health_stub.Check(health_pb2.HealthCheckRequest(service=name))).status

    def state_metric(state):
        return router.metrics.registry.get_sample_value("gemma_serving_service_state",
                                                        {"service": "text", "state": state})

    try:
        await until(lambda: _eq(model_status(), {"text": pb.MODEL_STATUS_READY, "vision": pb.MODEL_STATUS_READY,
                                                 "audio": pb.MODEL_STATUS_READY}))
        assert state_metric("ready") == 1 and state_metric("degraded") == 0
        backend.engines[ServiceKind.TEXT].step_delay_s = 0.05  # a 4-token probe takes 0.2 s > 0.1 s
        await until(lambda: _eq(_text(model_status()), pb.MODEL_STATUS_DEGRADED))
        assert await grpc_status("text") == SERVING and await grpc_status("") == SERVING
        assert state_metric("degraded") == 1 and state_metric("ready") == 0
        assert router.metrics.registry.get_sample_value("gemma_serving_health_probe_seconds",
                                                        {"service": "text"}) > 0.1
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            reply = await client.get("/health")
            assert reply.status_code == 200
            assert reply.json() == {"status": "degraded", "services": {"text": "degraded", "vision": "ready",
                                                                       "audio": "ready"}}
            backend.engines[ServiceKind.TEXT].healthy = False
            await until(lambda: _eq(_text(model_status()), pb.MODEL_STATUS_UNAVAILABLE))
            assert await grpc_status("text") == health_pb2.HealthCheckResponse.NOT_SERVING
            assert (await client.get("/health")).status_code == 503
            backend.engines[ServiceKind.TEXT].healthy = True
            backend.engines[ServiceKind.TEXT].step_delay_s = 0.001
            await until(lambda: _eq(_text(model_status()), pb.MODEL_STATUS_READY))
            assert (await client.get("/health")).json()["status"] == "serving"
    finally:
        await channel.close()
        http.should_exit = True
        await http.gemma_task
        await router.drain_and_stop(0)


async def _eq(awaitable, expected):
    return await awaitable == expected


async def _text(awaitable):
    return (await awaitable)["text"]


@pytest.mark.parametrize("failure,first,later", [
    (Overloaded("queue full"), ServiceState.DEGRADED, ServiceState.DEGRADED),
    (TimeoutError(), ServiceState.DEGRADED, ServiceState.UNAVAILABLE),
])
async def test_unanswered_or_refused_probes_of_a_ready_service_mean_degraded(failure, first, later):
    services = {"text": {**CONFIG["services"]["text"], "deployment": {"health_probe": {**PROBE, "timeout_s": 0.3}}}}
    answer = {"fail": False}

    async def probe(kind):
        if answer["fail"]:
            raise failure
        return {"verdict": "ready", "latency_s": 0.01}

    service_health = ServiceHealth(parse_config({**CONFIG, "services": services}), probe, health.aio.HealthServicer())
    await service_health.refresh()
    assert service_health.states[ServiceKind.TEXT] is ServiceState.READY
    answer["fail"] = True
    await service_health.refresh()
    assert service_health.states[ServiceKind.TEXT] is first and service_health.serving()
    await asyncio.sleep(0.35)  # past health_probe.timeout_s without an answer
    await service_health.refresh()
    assert service_health.states[ServiceKind.TEXT] is later


async def test_a_running_probe_is_not_a_user_request_in_flight():
    from gemma_serving.config import ServiceConfig

    service = ServiceConfig.model_validate({"model": {"name": "m", "source": "/m"},
                                            "deployment": {"health_probe": PROBE}})
    engine = FakeEngine(step_delay_s=0.2)
    deployment = await make_deployment(ServiceKind.TEXT, service, engine)
    assert (await deployment.health_report())["verdict"] == ProbeVerdict.READY  # starts the first probe
    await asyncio.sleep(0.05)
    assert len(engine.in_flight) == 1  # the probe's generation is in the engine
    assert (await deployment.describe())["in_flight"] == 0
    deployment._probe.stop()


async def test_no_answer_keeps_a_starting_or_broken_service_where_it_is():
    async def silent(kind):
        raise TimeoutError

    service_health = ServiceHealth(parse_config(CONFIG), silent, health.aio.HealthServicer())
    await service_health.refresh()
    assert service_health.states[ServiceKind.TEXT] is ServiceState.STARTING
    service_health.states[ServiceKind.TEXT] = ServiceState.UNAVAILABLE
    await service_health.refresh()
    assert service_health.states[ServiceKind.TEXT] is ServiceState.UNAVAILABLE
