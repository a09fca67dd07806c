"""Per-tenant quotas with router.num_replicas: 2 (two real routers, one quota exchange between them): a tenant on one
channel gets its whole quota, one spread over both replicas gets no more than its quota in total."""

import asyncio

import grpc
import pytest
from gemma_serving.router.quota_sync import QuotaExchange, local_publisher, sync_quotas

from tests.unit.test_tenancy import KEY_A, _code, _stub, auth, req, security

SYNC_S = 0.02


@pytest.fixture
async def two_routers(make_router):
    async def start(**quotas):
        exchange = QuotaExchange()
        routers = [(await make_router({"router": {"port": 0, "num_replicas": 2}, **security(**quotas)},
                                      step_delay_s=0.02))[0] for _ in range(2)]
        syncs = [asyncio.create_task(sync_quotas(r.pipeline.tenancy.quotas, f"router-{i}", local_publisher(exchange),
                                                 SYNC_S)) for i, r in enumerate(routers)]
        stubs = [await _stub(r) for r in routers]
        started.append((syncs, stubs))
        return [stub for _, stub in stubs]

    started = []
    yield start
    for syncs, stubs in started:
        for task in syncs:
            task.cancel()
        for channel, _ in stubs:
            await channel.close()


async def _generate(stub):
    code, details = await _code(stub.Generate(req(max_tokens=1), metadata=auth(KEY_A)))
    await asyncio.sleep(10 * SYNC_S)  # the other replica hears of it (a few sync rounds, on a busy box too)
    return code, details


async def test_a_tenant_on_one_channel_gets_its_whole_quota(two_routers):
    a, _ = await two_routers(requests_per_minute=6)
    codes = [(await _generate(a))[0] for _ in range(7)]
    assert codes == [grpc.StatusCode.OK] * 6 + [grpc.StatusCode.RESOURCE_EXHAUSTED]


async def test_a_tenant_spread_over_both_replicas_gets_its_quota_in_total(two_routers):
    a, b = await two_routers(requests_per_minute=6)
    plan = [a] + [b] * 4 + [a, a, b]  # uneven, as connections land
    results = [await _generate(stub) for stub in plan]
    assert [code for code, _ in results] == [grpc.StatusCode.OK] * 6 + [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
    assert "requests_per_minute (6)" in results[-1][1]


async def test_concurrent_streams_are_capped_across_replicas(two_routers):
    a, b = await two_routers(max_concurrent_streams=2)
    streams = [stub.GenerateStream(req(max_tokens=100), metadata=auth(KEY_A)) for stub in (a, b)]
    for stream in streams:
        await stream.read()  # admitted and streaming
    await asyncio.sleep(10 * SYNC_S)
    for stub in (a, b):
        code, details = await _code(stub.Generate(req(max_tokens=1), metadata=auth(KEY_A)))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_concurrent_streams (2)" in details
    streams[0].cancel()
    await asyncio.sleep(10 * SYNC_S)
    assert (await _code(b.Generate(req(max_tokens=1), metadata=auth(KEY_A))))[0] == grpc.StatusCode.OK
    streams[1].cancel()


def test_a_silent_replica_stops_counting():
    now = [0.0]
    exchange = QuotaExchange(clock=lambda: now[0])
    from gemma_serving.router.quotas import TenantCounts

    exchange.publish("r1", {"team-a": TenantCounts((5, 5, 5), (100, 100, 100), 1)})
    assert exchange.publish("r2", {})["team-a"] == TenantCounts((5, 5, 5), (100, 100, 100), 1)
    now[0] = 11.0
    assert exchange.publish("r2", {}) == {}


def test_fair_share_judges_each_routers_part_of_the_capacity():
    from gemma_serving.config import parse_config
    from gemma_serving.errors import Overloaded
    from gemma_serving.router.tenancy import Tenancy

    from tests.unit.conftest import CONFIG

    services = {**CONFIG["services"], "text": {**CONFIG["services"]["text"], "deployment": {
        "max_ongoing_requests": 8, "max_queued_requests": 0, "autoscaling": {"max_replicas": 1}}}}
    fair = Tenancy(parse_config({**CONFIG, "router": {"num_replicas": 2}, "services": services})).fair
    # This router's part: 8 slots / 2 routers = 4; past half of it, two active tenants get 2 each.
    fair.admit("text", "team-a")
    fair.admit("text", "team-a")
    fair.admit("text", "team-b")
    with pytest.raises(Overloaded, match="fair share \\(2 of 4 slots\\)"):
        fair.admit("text", "team-a")
