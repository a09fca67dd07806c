"""Per-tenant quotas (requests and tokens per minute, concurrent streams) and fair admission under saturation.

Each router replica admits against the tenant's whole limit, counting its own usage plus what the other router
replicas last reported (`router/quota_sync.py`, every `router.quota_sync_s`, off the token path): a tenant on one
HTTP/2 channel (one replica) gets its whole quota, and one spread over many replicas gets no more than its quota
plus what the other replicas admitted since their last report. Tokens are charged as they stream; a tenant over its
token budget is refused new requests until the window frees up (a running stream is not cut).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict, deque
from dataclasses import dataclass

from gemma_serving.errors import Overloaded, RateLimited
from gemma_serving.security_config import TenantConfig

WINDOW_S = 60.0


@dataclass(frozen=True)
class UsageSnapshot:
    tenant: str
    requests: int
    tokens: int
    requests_limit: int | None
    tokens_limit: int | None
    concurrent: int
    concurrent_limit: int | None
    reset_in_s: float


class _Window:
    """Amounts in the last WINDOW_S seconds."""

    def __init__(self) -> None:
        self.events: deque[tuple[float, int]] = deque()
        self.total = 0

    def prune(self, now: float) -> None:
        while self.events and now - self.events[0][0] >= WINDOW_S:
            self.total -= self.events.popleft()[1]

    def add(self, now: float, amount: int) -> None:
        # Tokens are charged per streamed chunk: charges within one second share an entry, so a window holds at most
        # ~60 entries however many chunks stream.
        if self.events and now - self.events[-1][0] < 1.0:
            at, held = self.events[-1]
            self.events[-1] = (at, held + amount)
        else:
            self.events.append((now, amount))
        self.total += amount

    def reset_in(self, now: float) -> float:
        return WINDOW_S - (now - self.events[0][0]) if self.events else 0.0


@dataclass(frozen=True)
class TenantCounts:
    """One replica's (or the others' summed) usage of a tenant: requests and tokens in the window, streams open."""

    requests: int = 0
    tokens: int = 0
    concurrent: int = 0

    def __add__(self, other: TenantCounts) -> TenantCounts:
        return TenantCounts(self.requests + other.requests, self.tokens + other.tokens,
                            self.concurrent + other.concurrent)


NOTHING = TenantCounts()


class TenantQuotas:
    """Admission against each tenant's quotas, counting this replica's usage plus the other router replicas' last
    reported usage (`set_others`); `share` scales the limits (1.0: the whole limit)."""

    def __init__(self, *, share: float = 1.0, clock=time.monotonic) -> None:
        self._share = share
        self._clock = clock
        self._requests: dict[str, _Window] = defaultdict(_Window)
        self._tokens: dict[str, _Window] = defaultdict(_Window)
        self._concurrent: dict[str, int] = defaultdict(int)
        self._others: dict[str, TenantCounts] = {}

    def local_counts(self) -> dict[str, TenantCounts]:
        """This replica's usage per tenant (what it reports to the other replicas)."""
        now = self._clock()
        counts = {}
        for tenant in set(self._requests) | set(self._tokens) | set(self._concurrent):
            requests, tokens = self._requests[tenant], self._tokens[tenant]
            requests.prune(now)
            tokens.prune(now)
            counts[tenant] = TenantCounts(requests.total, tokens.total, self._concurrent[tenant])
        return counts

    def set_others(self, others: dict[str, TenantCounts]) -> None:
        """The other router replicas' summed usage per tenant, as last reported."""
        self._others = others

    def _limit(self, value: int | None) -> int | None:
        return None if value is None else max(1, math.floor(value * self._share))

    def admit(self, tenant: TenantConfig) -> None:
        """Count a new request or raise RateLimited saying which limit was hit and when to retry."""
        now = self._clock()
        requests, tokens = self._requests[tenant.id], self._tokens[tenant.id]
        requests.prune(now)
        tokens.prune(now)
        rpm, tpm, streams = (self._limit(tenant.requests_per_minute), self._limit(tenant.tokens_per_minute),
                             self._limit(tenant.max_concurrent_streams))
        others = self._others.get(tenant.id, NOTHING)
        if rpm is not None and requests.total + others.requests >= rpm:
            raise RateLimited(f"tenant {tenant.id} exceeded requests_per_minute ({rpm})",
                              retry_after_s=max(requests.reset_in(now), 1.0 if others.requests else 0.1))
        if tpm is not None and tokens.total + others.tokens >= tpm:
            raise RateLimited(f"tenant {tenant.id} exceeded tokens_per_minute ({tpm})",
                              retry_after_s=max(tokens.reset_in(now), 1.0 if others.tokens else 0.1))
        if streams is not None and self._concurrent[tenant.id] + others.concurrent >= streams:
            raise RateLimited(f"tenant {tenant.id} reached max_concurrent_streams ({streams})", retry_after_s=1.0)
        requests.add(now, 1)
        self._concurrent[tenant.id] += 1

    def charge(self, tenant: TenantConfig, tokens: int) -> None:
        if tokens > 0:
            self._tokens[tenant.id].add(self._clock(), tokens)

    def release(self, tenant: TenantConfig) -> None:
        self._concurrent[tenant.id] -= 1

    def usage(self, tenant: TenantConfig) -> UsageSnapshot:
        now = self._clock()
        requests, tokens = self._requests[tenant.id], self._tokens[tenant.id]
        requests.prune(now)
        tokens.prune(now)
        others = self._others.get(tenant.id, NOTHING)
        return UsageSnapshot(tenant.id, requests.total + others.requests, tokens.total + others.tokens,
                             self._limit(tenant.requests_per_minute), self._limit(tenant.tokens_per_minute),
                             self._concurrent[tenant.id] + others.concurrent,
                             self._limit(tenant.max_concurrent_streams),
                             max(requests.reset_in(now), tokens.reset_in(now)))


class FairShare:
    """Once a service is more than half full, no tenant may hold more than an equal share of its capacity.

    `capacity` is this router replica's part of each service: the replicas' ongoing slots divided among the router
    replicas, plus the router's own queue (Serve's max_queued_requests is per caller)."""

    def __init__(self, capacity: dict[str, int]) -> None:
        self._capacity = capacity
        self._in_flight: dict[str, dict[str, int]] = {s: defaultdict(int) for s in capacity}

    def admit(self, service: str, tenant: str) -> None:
        held = self._in_flight[service]
        total, capacity = sum(held.values()), self._capacity[service]
        if total >= capacity // 2:
            active = {t for t, n in held.items() if n > 0} | {tenant}
            share = max(1, capacity // len(active))
            if held[tenant] >= share:
                raise Overloaded(f"the {service} service is saturated; tenant {tenant} holds its fair share "
                                 f"({share} of {capacity} slots)", retry_after_s=1.0)
        held[tenant] += 1

    def release(self, service: str, tenant: str) -> None:
        self._in_flight[service][tenant] -= 1
