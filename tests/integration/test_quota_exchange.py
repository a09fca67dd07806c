"""Quotas across router replicas through the real QuotaExchange Ray actor (the one router replicas share): two
replicas' TenantQuotas, each syncing with `ray_publisher`, enforce one tenant's limits together. Only the actor runs
(zero CPUs); no engines."""

from __future__ import annotations

import asyncio

import pytest
from gemma_serving.errors import RateLimited
from gemma_serving.router.quota_sync import ray_publisher, sync_quotas
from gemma_serving.router.quotas import TenantQuotas
from gemma_serving.security_config import TenantConfig

APP = "quota-exchange-test"
TENANT = TenantConfig(id="team-a", requests_per_minute=4)


async def test_two_router_replicas_share_one_tenants_limits_through_ray(ray_cluster):
    import ray

    replicas = [TenantQuotas(), TenantQuotas()]
    syncs = [asyncio.create_task(sync_quotas(q, f"router-{i}", ray_publisher(APP), 0.05))
             for i, q in enumerate(replicas)]
    try:
        a, b = replicas
        for _ in range(3):  # one channel: all on replica a (each request admitted, then finished)
            a.admit(TENANT)
            a.release(TENANT)
        await asyncio.sleep(1.0)  # a reported, b heard
        b.admit(TENANT)  # the 4th request of the minute, on the other replica
        b.release(TENANT)
        await asyncio.sleep(1.0)
        for quotas in (a, b):
            with pytest.raises(RateLimited, match="requests_per_minute \\(4\\)"):
                quotas.admit(TENANT)
        assert a.usage(TENANT).windows[0].requests == b.usage(TENANT).windows[0].requests == 4
    finally:
        for task in syncs:
            task.cancel()
        ray.kill(ray.get_actor(f"{APP}-quota-exchange"))
