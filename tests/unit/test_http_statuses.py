"""Statuses on the OpenAI surface: an aborted answer is "abort", never "stop"; an unexpected ValueError is a 500 with
only the request id (never a 400 echoing it); a bad form number is a 400 naming the field; background failures are
logged with their message, not only their type name."""

import asyncio
import io
import logging

import httpx
import pytest
from gemma_serving.client.samples import sample_wav
from gemma_serving.config import ServiceKind, parse_config
from gemma_serving.engines.types import Chunk, FinishReason
from gemma_serving.router.server import start_openai_server

from tests.unit.conftest import CONFIG

OVERRIDES = {"router": {"port": 0, "http_port": 0}}
CHAT = {"model": "text-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


@pytest.fixture
async def http(make_router):
    router, backend = await make_router(OVERRIDES)
    server, port = await start_openai_server(parse_config({**CONFIG, **OVERRIDES}), router)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        yield client, backend
    server.should_exit = True
    await server.gemma_task


async def _aborting(request, *, request_id):
    yield Chunk(" cut", 1, 1, None)
    yield Chunk(" off", 1, 2, FinishReason.ABORT)


async def test_an_aborted_answer_is_never_stop(http):
    """OpenAI has no finish reason for an engine abort: a cut-off answer is a retryable 503 (an error event once the
    stream has started), never passed off as complete with "stop"."""
    client, backend = http
    backend.engines[ServiceKind.TEXT].generate = _aborting
    reply = await client.post("/v1/chat/completions", json=CHAT)
    assert reply.status_code == 503 and reply.json()["error"]["code"] == "ReplicaGone"
    async with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as stream:
        events = [line async for line in stream.aiter_lines() if line.startswith("data: {")]
        status = stream.status_code
    # Both deltas arrive merged here, so the abort is known before the stream starts (503); mid-stream it would be
    # an error event.
    assert status == 503 or '"error"' in events[-1]
    assert not any('"finish_reason": "stop"' in e for e in events)
    done = await client.post("/v1/completions", json={"model": "text-model", "prompt": "x"})
    assert done.status_code == 503


async def test_an_unexpected_value_error_is_a_500_with_only_the_request_id(http):
    client, backend = http

    async def broken(request, *, request_id):
        raise ValueError("secret internal detail")
        yield

    backend.engines[ServiceKind.AUDIO].generate = broken
    reply = await client.post("/v1/audio/transcriptions", data={"model": "audio-model"},
                              files={"file": ("a.wav", io.BytesIO(sample_wav()))})
    assert reply.status_code == 500
    message = reply.json()["error"]["message"]
    assert "secret" not in message and reply.headers["x-request-id"] in message


async def test_a_bad_form_number_is_a_400_naming_the_field(http):
    client, _ = http
    reply = await client.post("/v1/audio/transcriptions", data={"model": "audio-model", "temperature": "hot"},
                              files={"file": ("a.wav", io.BytesIO(sample_wav()))})
    assert reply.status_code == 400
    assert reply.json()["error"]["param"] == "temperature"
    assert reply.json()["error"]["message"] == "temperature must be a number, got 'hot'"


async def test_replica_count_failures_are_logged_with_their_message(monkeypatch, caplog, config):
    from gemma_serving import app
    from gemma_serving.router.server import _track_replicas
    from gemma_serving.telemetry.metrics import RouterMetrics

    def unreachable(app_name):
        raise RuntimeError("serve controller unreachable")

    monkeypatch.setattr(app, "replica_states", unreachable)
    with caplog.at_level(logging.WARNING):
        task = asyncio.create_task(_track_replicas(config, RouterMetrics(), None, interval_s=0.01))
        await asyncio.sleep(0.05)
        task.cancel()
    assert "could not read replica counts: RuntimeError: serve controller unreachable" in caplog.text


class _Announced:
    """What _track_replicas reads of DirectRoutes: its services and their live replicas."""

    def __init__(self, counts):
        self.counts = counts
        self.services = set(counts)

    def replicas(self, kind):
        return self.counts[kind]


async def _tracked(config, direct):
    from gemma_serving.router.server import _track_replicas
    from gemma_serving.telemetry.metrics import RouterMetrics

    class Health:
        def __init__(self):
            self.seen = {}

        async def observe_replicas(self, kind, running):
            self.seen[kind] = running

    metrics, health = RouterMetrics(), Health()
    task = asyncio.create_task(_track_replicas(config, metrics, health, interval_s=0.01, direct=direct))
    await asyncio.sleep(0.05)
    task.cancel()
    gauge = {k: metrics.replicas.labels(k.value)._value.get() for k in config.services}
    return gauge, health.seen


async def test_services_with_direct_calls_count_announced_replicas_without_reading_serve_status(monkeypatch,
                                                                                               config):
    from gemma_serving import app

    reads = []
    monkeypatch.setattr(app, "replica_states", lambda name: reads.append(name) or {})
    counts = {kind: i + 1 for i, kind in enumerate(config.services)}
    gauge, seen = await _tracked(config, _Announced(counts))
    assert gauge == {k: float(v) for k, v in counts.items()} and seen == counts
    assert reads == []  # Serve's status (~ms of CPU per read) is not needed


async def test_services_without_direct_calls_still_count_from_serve_status(monkeypatch, config):
    from gemma_serving import app

    reads = []
    first, *rest = config.services
    assert rest  # a service without direct calls
    monkeypatch.setattr(app, "replica_states",
                        lambda name: reads.append(name) or {k.value: {"RUNNING": 3} for k in rest})
    gauge, seen = await _tracked(config, _Announced({first: 2}))
    assert gauge == {first: 2.0, **{k: 3.0 for k in rest}} and reads
