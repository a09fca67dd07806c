"""Per-tenant quotas across router replicas: each replica reports its usage and learns the others' sum.

SO_REUSEPORT balances connections, not requests: a tenant on one HTTP/2 channel reaches one router replica, a tenant
with many channels reaches all of them. So no replica may hold a fixed share of a limit. Instead every replica admits
against the whole limit, counting its own usage (exact, in process) plus the other replicas' usage as last reported.
Every `router.quota_sync_s` each replica sends its per-tenant counts (requests and tokens in the window, open streams)
to one `QuotaExchange` (a Ray actor in the platform) and gets back the sum of the others'. The exchange is on the
control path only: admission never waits for it, and a lost exchange leaves each replica enforcing its own usage.

The guarantee, per tenant and limit: on one router replica, exact; over N replicas, usage never exceeds the limit by
more than what the other replicas admitted within one sync interval (plus the tokens of streams already running, as
with one replica). A replica not heard from for `STALE_AFTER_S` no longer counts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable

from gemma_serving.router.quotas import NOTHING, TenantCounts, TenantQuotas

log = logging.getLogger(__name__)

STALE_AFTER_S = 10.0

Publish = Callable[[str, dict[str, TenantCounts]], Awaitable[dict[str, TenantCounts]]]


class QuotaExchange:
    """Latest counts of every router replica; `publish` stores one replica's and returns the sum of the others'."""

    def __init__(self, *, clock=time.monotonic) -> None:
        self._clock = clock
        self._reports: dict[str, tuple[float, dict[str, TenantCounts]]] = {}

    def publish(self, replica: str, counts: dict[str, TenantCounts]) -> dict[str, TenantCounts]:
        now = self._clock()
        self._reports[replica] = (now, counts)
        others: dict[str, TenantCounts] = {}
        for name, (at, reported) in list(self._reports.items()):
            if now - at > STALE_AFTER_S:
                del self._reports[name]
            elif name != replica:
                for tenant, c in reported.items():
                    others[tenant] = others.get(tenant, NOTHING) + c
        return others


def local_publisher(exchange: QuotaExchange) -> Publish:
    """A publisher to an exchange in this process (tests; one process holding several routers)."""

    async def publish(replica: str, counts: dict[str, TenantCounts]) -> dict[str, TenantCounts]:
        return exchange.publish(replica, counts)

    return publish


def ray_publisher(app_name: str) -> Publish:
    """A publisher to the app's QuotaExchange Ray actor (created by the first router replica that asks)."""
    import ray

    actor = None

    async def publish(replica: str, counts: dict[str, TenantCounts]) -> dict[str, TenantCounts]:
        nonlocal actor
        if actor is None:
            actor = ray.remote(num_cpus=0)(QuotaExchange).options(
                name=f"{app_name}-quota-exchange", get_if_exists=True, lifetime="detached").remote()
        try:
            return await actor.publish.remote(replica, counts)
        except Exception:
            actor = None  # look it up (or create it) again next round
            raise

    return publish


async def sync_quotas(quotas: TenantQuotas, replica: str, publish: Publish, interval_s: float) -> None:
    """Report this replica's usage and take in the others', every `interval_s`, until cancelled."""
    last_heard = time.monotonic()
    while True:
        try:
            quotas.set_others(await publish(replica, quotas.local_counts()))
            last_heard = time.monotonic()
        except Exception as exc:
            log.warning("quota exchange failed: %s: %s", type(exc).__name__, exc)
            if time.monotonic() - last_heard > STALE_AFTER_S:  # count this replica alone until it answers again
                quotas.set_others({})
        await asyncio.sleep(interval_s)
