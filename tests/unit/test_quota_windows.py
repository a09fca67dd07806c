"""Quota windows per tenant: requests and tokens per minute, hour and day, each enforced and reported by GetUsage and
/v1/usage."""

import httpx
import pytest
from gemma_serving.api import inference_pb2 as pb
from gemma_serving.errors import RateLimited
from gemma_serving.router.openai_http import OpenAISurface, start_http_server
from gemma_serving.router.quotas import KINDS, WINDOWS, TenantQuotas
from gemma_serving.security_config import TenantConfig

from tests.unit.test_tenancy import KEY_A, _stub, auth, req, security


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_every_window_has_tenant_settings():
    fields = TenantConfig.model_fields
    for kind in KINDS:
        for w in WINDOWS:
            assert w.field(kind) in fields and fields[w.field(kind)].description


def test_the_guides_100_requests_per_hour_outlast_the_minute_and_free_up_after_an_hour():
    clock, tenant = Clock(), TenantConfig(id="user-1", requests_per_hour=100)
    quotas = TenantQuotas(clock=clock)
    for i in range(100):
        quotas.admit(tenant)
        quotas.release(tenant)
        clock.now += 10  # 100 requests over 1000 s: no minute holds many
    with pytest.raises(RateLimited, match=r"user-1 exceeded requests_per_hour \(100\)") as info:
        quotas.admit(tenant)
    # The oldest request was at t=1000, it is now t=2000: it leaves the hour at t=4600 (up to a minute early).
    assert 2540 <= info.value.retry_after_s <= 2600
    clock.now += info.value.retry_after_s
    quotas.admit(tenant)  # the first requests have left the hour


def test_daily_token_quota_is_checked_beside_the_shorter_windows():
    clock = Clock()
    tenant = TenantConfig(id="t", tokens_per_minute=1000, tokens_per_day=1500)
    quotas = TenantQuotas(clock=clock)
    quotas.admit(tenant)
    quotas.charge(tenant, 900)
    clock.now += 120  # the minute window is empty again, the day holds 900
    quotas.admit(tenant)
    quotas.charge(tenant, 700)
    clock.now += 120
    with pytest.raises(RateLimited, match="exceeded tokens_per_day"):
        quotas.admit(tenant)
    day = {w.window: w for w in quotas.usage(tenant).windows}
    assert (day["minute"].tokens, day["hour"].tokens, day["day"].tokens) == (0, 1600, 1600)
    assert day["day"].tokens_limit == 1500 and day["hour"].tokens_limit is None


def test_router_replicas_split_every_window():
    quotas = TenantQuotas(share=0.5)
    usage = quotas.usage(TenantConfig(id="t", requests_per_hour=100, tokens_per_day=10))
    limits = {w.window: (w.requests_limit, w.tokens_limit) for w in usage.windows}
    assert limits == {"minute": (None, None), "hour": (50, None), "day": (None, 5)}


async def test_get_usage_and_v1_usage_report_every_window(make_router):
    from gemma_serving.config import parse_config

    from tests.unit.conftest import CONFIG

    overrides = security(requests_per_minute=10, requests_per_hour=3, tokens_per_day=10_000)
    router, _ = await make_router(overrides)
    channel, stub = await _stub(router)
    served = [await stub.Generate(req(max_tokens=5), metadata=auth(KEY_A)) for _ in range(3)]
    with pytest.raises(Exception, match="requests_per_hour"):
        await stub.Generate(req(), metadata=auth(KEY_A))
    usage = await stub.GetUsage(pb.GetUsageRequest(), metadata=auth(KEY_A))
    tokens = sum(r.usage.total_tokens for r in served)
    windows = {w.window: w for w in usage.windows}
    assert [w.window for w in usage.windows] == ["minute", "hour", "day"]
    assert windows["hour"].requests_in_window == 3 and windows["hour"].requests_remaining == 0
    assert windows["hour"].window_seconds == 3600 and 0 < windows["hour"].reset_in_ms <= 3_600_000
    assert windows["day"].tokens_in_window == tokens and windows["day"].tokens_remaining == 10_000 - tokens
    assert windows["day"].requests_remaining == -1 and windows["minute"].requests_remaining == 7
    assert usage.requests_in_window == 3 and usage.window_seconds == 60  # the top level stays the minute's
    await channel.close()

    surface = OpenAISurface(parse_config({**CONFIG, **overrides}), router.pipeline)
    server, port = await start_http_server(surface.app(), "127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            body = (await http.get("/v1/usage", headers=dict(auth(KEY_A)))).json()
    finally:
        server.should_exit = True
        await server.gemma_task
    by_window = {w["window"]: w for w in body["windows"]}
    assert by_window["hour"]["requests"] == 3 and by_window["hour"]["requests_limit"] == 3
    assert by_window["day"]["tokens"] == tokens and body["requests"] == 3 and body["window_seconds"] == 60
