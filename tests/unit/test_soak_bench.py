"""bench/soak.py's pieces without Ray: the OpenAI client (SSE, status mapping), the tenants' config, the router
memory rule, the summaries and checks, and a short soak on both surfaces as three tenants against an in-process
router (FakeEngines behind)."""

import json
import os
import sys
from pathlib import Path

import httpx
import pytest
from gemma_serving.config import parse_config
from gemma_serving.router import openai_convert as oc
from gemma_serving.router.auth import Authenticator, Credentials
from gemma_serving.router.openai_http import OpenAISurface, start_http_server

from tests.unit.conftest import CONFIG

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from soak import ALLOWED, checks_of, summarize
from soak_clients import (
    SURFACES,
    Call,
    LoadSettings,
    OpenAICaller,
    Tally,
    build_requests,
    http_code,
    plan_clients,
    read_sse,
    run_load,
)
from soak_memory import MIB, RouterMemory, memory_flat
from soak_platform import NO_AUTH, Tenant, make_tenants, soak_config, with_tenants

MODELS = {"text": "text-model", "vision": "vision-model", "audio": "audio-model"}
TENANT = Tenant("tenant-0", "gsk_abcd_secret")


def captured_stream(finish: str = "length") -> list[str]:
    """What the router's chat stream sends (its own event builder): role, text, finish, usage, [DONE]."""
    usage = oc.usage_json(7, 3)
    events = [oc.chat_chunk("r1", "text-model", {"role": "assistant", "content": ""}),
              oc.chat_chunk("r1", "text-model", {"content": " word0 word1"}),
              oc.chat_chunk("r1", "text-model", {"content": " word2"}, finish),
              oc.chat_chunk("r1", "text-model", {}, None, usage, no_choices=True)]
    lines = []
    for event in events:
        lines += [f"data: {event}", ""]
    return lines + ["data: [DONE]", ""]


def test_sse_stream_with_finish_and_usage_is_ok():
    tally = Tally()
    done = [read_sse(tally, line) for line in captured_stream()]
    tally.check_finished()
    assert done[-2] and not any(done[:-2])
    assert tally.code == "OK" and tally.finish_reason == "FINISH_REASON_LENGTH"
    assert (tally.chunks, tally.completion_tokens, tally.prompt_tokens) == (3, 3, 7)
    assert tally.first_chunk_s is not None


def test_sse_without_a_finish_reason_or_with_an_error_event_is_unexpected():
    tally = Tally()
    for line in captured_stream(finish=None):
        read_sse(tally, line)
    tally.check_finished()
    assert tally.code == "BAD_STREAM" and tally.code not in ALLOWED
    error = Tally()
    read_sse(error, "data: " + json.dumps({"error": {"type": "server_error", "code": "ReplicaGone", "message": "x"}}))
    assert error.code == "STREAM_ERROR" and "ReplicaGone" in error.details
    limited = Tally()
    read_sse(limited, "data: " + json.dumps({"error": {"type": "rate_limit_error", "code": "RateLimited"}}))
    assert limited.code == "RESOURCE_EXHAUSTED"


def test_http_429_is_the_allowed_refusal_and_other_statuses_are_unexpected():
    assert http_code(429) == "RESOURCE_EXHAUSTED" and http_code(429) in ALLOWED
    assert http_code(500) == "HTTP_500" and http_code(500) not in ALLOWED
    assert http_code(401) == "HTTP_401"


def _caller(handler) -> OpenAICaller:
    return OpenAICaller("http://router", TENANT, transport=httpx.MockTransport(handler))


async def test_openai_caller_streams_with_the_tenants_key_and_maps_statuses():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append((request.url.path, request.headers["authorization"], body))
        status = {"refuse": 429, "crash": 500}.get(body["messages"][0]["content"], 200)
        if status != 200:
            return httpx.Response(status, json={"error": {"message": "no"}})
        return httpx.Response(200, text="\n".join(captured_stream("stop")),
                              headers={"content-type": "text/event-stream"})

    caller = _caller(handler)
    request = build_requests(MODELS, max_tokens=4)["openai"]["text"][0]
    ok = await caller.call(request, timeout_s=5)
    assert ok.code == "OK" and ok.finish_reason == "FINISH_REASON_STOP" and ok.completion_tokens == 3
    path, authorization, body = seen[0]
    assert path == "/v1/chat/completions" and authorization == "Bearer gsk_abcd_secret"
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    refused = await caller.call({**request, "messages": [{"role": "user", "content": "refuse"}]}, timeout_s=5)
    crashed = await caller.call({**request, "messages": [{"role": "user", "content": "crash"}]}, timeout_s=5)
    assert refused.code == "RESOURCE_EXHAUSTED" and crashed.code == "HTTP_500" and '"no"' in crashed.details
    await caller.close()


async def test_openai_caller_calls_a_stream_cut_before_done_bad():
    caller = _caller(lambda request: httpx.Response(200, text="\n".join(captured_stream()[:6])))
    tally = await caller.call(build_requests(MODELS, 4)["openai"]["text"][0], timeout_s=5)
    assert tally.code == "BAD_STREAM" and "[DONE]" in tally.details
    await caller.close()


def test_openai_requests_carry_media_as_data_urls_and_input_audio():
    requests = build_requests(MODELS, max_tokens=4)
    vision = requests["openai"]["vision"][0]["messages"][0]["content"]
    audio = requests["openai"]["audio"][0]["messages"][0]["content"]
    assert vision[0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert audio[0]["type"] == "input_audio" and audio[0]["input_audio"]["format"] == "wav"
    assert requests["grpc"]["audio"][0].model == "audio-model"


def test_the_soak_config_turns_api_key_auth_on_with_n_tenants_one_of_them_tight():
    tenants = make_tenants(3, clients=64)
    config = soak_config(None, tenants)
    assert config.security.auth == "api_key"
    assert [t.id for t in config.security.tenants] == ["tenant-0", "tenant-1", "tenant-2"]
    assert [t.max_concurrent_streams for t in config.security.tenants] == [None, None, 10]  # 21 clients, half
    assert all(t.requests_per_minute >= 100_000 for t in config.security.tenants)
    assert config.router.port == 0 and config.router.http_port == 0 and config.telemetry.metrics_port == 0
    authenticator = Authenticator(config.security)
    for tenant in tenants:
        assert authenticator.authenticate(Credentials(tenant.headers["authorization"])).id == tenant.id
    assert tenants[0].api_key not in json.dumps(tenants[0].describe())


def test_no_tenants_keeps_auth_off():
    tenants = make_tenants(0, clients=8)
    assert tenants == [NO_AUTH] and NO_AUTH.headers == {}
    assert soak_config(None, tenants).security.auth == "disabled"


def test_clients_split_over_surfaces_and_every_tenant_uses_both():
    tenants = make_tenants(3, clients=12)
    clients = plan_clients(12, SURFACES, tenants)
    assert sum(c.surface == "grpc" for c in clients) == 6
    for tenant in tenants:
        assert sorted(c.surface for c in clients if c.tenant == tenant) == ["grpc", "grpc", "openai", "openai"]
    assert {c.surface for c in plan_clients(4, ("openai",), tenants)} == {"openai"}


def test_the_router_memory_flat_rule():
    assert memory_flat(100, 142) and not memory_flat(100, 142.5)  # after warm-up x 1.10 + 32 MiB
    assert memory_flat(1000, 1132) and not memory_flat(1000, 1133)


class _Rss:
    def __init__(self, mib: list[float]) -> None:
        self.mib = mib

    def memory_info(self):
        return type("Info", (), {"rss": self.mib.pop(0) * MIB})()


@pytest.mark.parametrize("end, ok", [(140, True), (200, False)])
def test_router_memory_reports_start_warmup_end_and_checks_growth(end, ok):
    memory = RouterMemory([os.getpid()])
    memory.sample()  # a real RSS of this process
    assert memory.samples[0][1] > 10
    memory._procs = [_Rss([90, 100, 120, end])]
    memory.sample()
    memory.mark_warm()
    memory.sample()
    memory.sample()
    report = memory.report()
    assert (report["after_warmup"], report["end"], len(report["samples"])) == (100, end, 5)
    assert report["max"] == max(report["start"], 120, end)
    assert memory.check()["ok"] is ok and not memory.check().get("skipped")
    skipped = RouterMemory([], skipped="no Ray connection")
    assert skipped.sample() is None and skipped.report() == {"skipped": "no Ray connection"}
    assert skipped.check()["skipped"] and skipped.check()["ok"]


def _call(surface, tenant, code, kind="text", tokens=4):
    return Call(surface, tenant, kind, code, 0.0, 0.5, 0.1, 3, tokens if code == "OK" else 0, 5,
                "FINISH_REASON_LENGTH" if code == "OK" else "FINISH_REASON_UNSPECIFIED")


def test_summaries_per_surface_and_tenant_and_the_checks():
    calls = [_call("grpc", "tenant-0", "OK"), _call("openai", "tenant-0", "OK", kind="vision"),
             _call("openai", "tenant-1", "RESOURCE_EXHAUSTED"), _call("openai", "tenant-1", "HTTP_500")]
    summary = summarize(calls, wall_s=2.0)
    assert summary["by_surface"]["grpc"]["ok"] == 1 and summary["by_surface"]["openai"]["requests"] == 3
    assert summary["by_tenant"]["tenant-1"]["codes"] == {"RESOURCE_EXHAUSTED": 1, "HTTP_500": 1}
    assert summary["by_service"]["vision"]["ok"] == 1 and summary["unexpected"] == 1
    report = {"summary": summary, "leak_check": {"skipped": "no Ray"}}
    checks = {c["name"]: c for c in checks_of(report, SURFACES, ("tenant-1", 2), RouterMemory([], skipped="x"))}
    assert not checks["only OK and RESOURCE_EXHAUSTED"]["ok"] and "HTTP_500" in checks[
        "only OK and RESOURCE_EXHAUSTED"]["detail"]
    assert checks["some calls succeeded on every surface"]["ok"] and checks["tight tenant refused"]["ok"]
    assert checks["no leaked engine requests"]["skipped"] and checks["router memory flat"]["skipped"]
    only_grpc = {c["name"]: c for c in checks_of({"summary": summarize(calls[2:], 2.0), "leak_check": {
        "in_flight": {"text": 1}, "waited_s": 1, "ok": False}}, SURFACES, None, RouterMemory([], skipped="x"))}
    assert not only_grpc["some calls succeeded on every surface"]["ok"]
    assert not only_grpc["no leaked engine requests"]["ok"] and "tight tenant refused" not in only_grpc


async def test_a_short_soak_on_both_surfaces_as_three_tenants(make_router):
    tenants = make_tenants(3, clients=12)
    overrides = with_tenants(CONFIG, tenants)
    router, _ = await make_router({"security": overrides["security"]}, step_delay_s=0.02)
    surface = OpenAISurface(parse_config(overrides), router.pipeline)
    server, http_port = await start_http_server(surface.app(), "127.0.0.1", 0)
    memory = RouterMemory([os.getpid()])  # the router runs in this process here
    try:
        calls, load = await run_load(
            {"grpc": f"127.0.0.1:{router.port}", "openai": f"http://127.0.0.1:{http_port}"},
            plan_clients(12, SURFACES, tenants), build_requests(MODELS, max_tokens=4),
            LoadSettings(seconds=1.5, mix={"text": 2, "vision": 1, "audio": 1}, progress_every=0.5,
                         warmup_seconds=0.5), memory)
    finally:
        server.should_exit = True
        await server.gemma_task
    summary = summarize(calls, load["wall_s"])
    assert summary["unexpected"] == 0, summary["unexpected_samples"]
    assert {s: summary["by_surface"][s]["ok"] > 0 for s in SURFACES} == {"grpc": True, "openai": True}
    assert set(summary["by_tenant"]) == {"tenant-0", "tenant-1", "tenant-2"}
    assert all(summary["by_service"][kind]["ok"] for kind in ("text", "vision", "audio"))
    # tenant-2 may hold 2 of its 4 clients' streams: refused on both surfaces' shared quota, the others never.
    assert summary["by_tenant"]["tenant-2"]["codes"].get("RESOURCE_EXHAUSTED", 0) > 0
    assert "RESOURCE_EXHAUSTED" not in summary["by_tenant"]["tenant-0"]["codes"]
    assert summary["by_surface"]["openai"]["completion_tokens"] > 0
    report = memory.report()
    assert report["after_warmup"] is not None and len(report["samples"]) >= 3 and load["progress"]
