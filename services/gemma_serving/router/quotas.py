"""Per-tenant quotas (requests and tokens per minute, hour and day; concurrent streams) and fair admission under
saturation.

Each router replica admits against the tenant's whole limit in every window, counting its own usage plus what the
other router replicas last reported (`router/quota_sync.py`, every `router.quota_sync_s`, off the token path): a
tenant on one HTTP/2 channel (one replica) gets its whole quota, and one spread over many replicas gets no more than
its quota plus what the other replicas admitted since their last report. Tokens are charged as they stream; a tenant
over its token budget is refused new requests until the window frees up (a running stream is not cut).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict, deque
from dataclasses import dataclass

from gemma_serving.errors import Overloaded, RateLimited
from gemma_serving.security_config import TenantConfig


@dataclass(frozen=True)
class QuotaWindow:
    """A sliding quota window: the tenant settings `requests_per_<name>` and `tokens_per_<name>` limit it."""

    name: str
    seconds: float

    def field(self, kind: str) -> str:
        """The TenantConfig field of `kind` ("requests" or "tokens") in this window, e.g. requests_per_hour."""
        return f"{kind}_per_{self.name}"


#: Every window a tenant's quotas may use (the Gemma guide's example: 100 requests per hour per user).
WINDOWS = (QuotaWindow("minute", 60.0), QuotaWindow("hour", 3600.0), QuotaWindow("day", 86400.0))
KINDS = ("requests", "tokens")
WINDOW_S = WINDOWS[0].seconds  # the window GetUsage's top-level fields report, as before the longer windows


@dataclass(frozen=True)
class WindowUsage:
    """A tenant's use of one window, over all router replicas (None: unlimited)."""

    window: str
    seconds: float
    requests: int
    tokens: int
    requests_limit: int | None
    tokens_limit: int | None
    #: When the oldest charge in the window expires (0 when empty).
    reset_in_s: float


@dataclass(frozen=True)
class UsageSnapshot:
    tenant: str
    concurrent: int
    concurrent_limit: int | None
    #: One entry per window in WINDOWS order (minute, hour, day).
    windows: tuple[WindowUsage, ...]


class _Window:
    """Amounts charged in the last `seconds`, kept in at most ~60 buckets of seconds/60 each: a charge leaves the
    window up to one bucket early (1 s of a minute, 1 min of an hour, 24 min of a day), never late."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._bucket = seconds / 60
        self.events: deque[tuple[float, int]] = deque()
        self.total = 0

    def prune(self, now: float) -> None:
        while self.events and now - self.events[0][0] >= self.seconds:
            self.total -= self.events.popleft()[1]

    def add(self, now: float, amount: int) -> None:
        # Tokens are charged per streamed chunk: charges within one bucket share an entry.
        if self.events and now - self.events[-1][0] < self._bucket:
            at, held = self.events[-1]
            self.events[-1] = (at, held + amount)
        else:
            self.events.append((now, amount))
        self.total += amount

    def reset_in(self, now: float) -> float:
        return self.seconds - (now - self.events[0][0]) if self.events else 0.0


class _TenantWindows:
    """One tenant's requests and tokens in every window."""

    def __init__(self) -> None:
        self.windows = {(kind, w.name): _Window(w.seconds) for kind in KINDS for w in WINDOWS}

    def prune(self, now: float) -> None:
        for window in self.windows.values():
            window.prune(now)

    def add(self, kind: str, now: float, amount: int) -> None:
        for w in WINDOWS:
            self.windows[(kind, w.name)].add(now, amount)


@dataclass(frozen=True)
class TenantCounts:
    """One replica's (or the others' summed) usage of a tenant: requests and tokens in each window (WINDOWS order),
    streams open."""

    requests: tuple[int, ...] = (0,) * len(WINDOWS)
    tokens: tuple[int, ...] = (0,) * len(WINDOWS)
    concurrent: int = 0

    def __add__(self, other: TenantCounts) -> TenantCounts:
        return TenantCounts(tuple(map(sum, zip(self.requests, other.requests))),
                            tuple(map(sum, zip(self.tokens, other.tokens))), self.concurrent + other.concurrent)

    def of(self, kind: str, index: int) -> int:
        return (self.requests if kind == "requests" else self.tokens)[index]


NOTHING = TenantCounts()


class TenantQuotas:
    """Admission against each tenant's quotas, counting this replica's usage plus the other router replicas' last
    reported usage (`set_others`); `share` scales the limits (1.0: the whole limit)."""

    def __init__(self, *, share: float = 1.0, clock=time.monotonic) -> None:
        self._share = share
        self._clock = clock
        self._tenants: dict[str, _TenantWindows] = defaultdict(_TenantWindows)
        self._concurrent: dict[str, int] = defaultdict(int)
        self._others: dict[str, TenantCounts] = {}

    def local_counts(self) -> dict[str, TenantCounts]:
        """This replica's usage per tenant (what it reports to the other replicas)."""
        now = self._clock()
        counts = {}
        for tenant in set(self._tenants) | set(self._concurrent):
            held = self._tenants[tenant]
            held.prune(now)
            counts[tenant] = TenantCounts(
                tuple(held.windows[("requests", w.name)].total for w in WINDOWS),
                tuple(held.windows[("tokens", w.name)].total for w in WINDOWS), self._concurrent[tenant])
        return counts

    def set_others(self, others: dict[str, TenantCounts]) -> None:
        """The other router replicas' summed usage per tenant, as last reported."""
        self._others = others

    def _scaled(self, value: int | None) -> int | None:
        return None if value is None else max(1, math.floor(value * self._share))

    def _limit(self, tenant: TenantConfig, kind: str, window: QuotaWindow) -> int | None:
        return self._scaled(getattr(tenant, window.field(kind)))

    def admit(self, tenant: TenantConfig) -> None:
        """Count a new request or raise RateLimited saying which limit was hit and when to retry."""
        now = self._clock()
        held = self._tenants[tenant.id]
        held.prune(now)
        others = self._others.get(tenant.id, NOTHING)
        for kind in KINDS:
            for i, w in enumerate(WINDOWS):
                limit, window = self._limit(tenant, kind, w), held.windows[(kind, w.name)]
                elsewhere = others.of(kind, i)
                if limit is not None and window.total + elsewhere >= limit:
                    retry = max(window.reset_in(now), 1.0 if elsewhere else 0.1)
                    raise RateLimited(f"tenant {tenant.id} exceeded {w.field(kind)} ({limit}); "
                                      f"retry in {math.ceil(retry)} s", retry_after_s=retry)
        streams = self._scaled(tenant.max_concurrent_streams)
        if streams is not None and self._concurrent[tenant.id] + others.concurrent >= streams:
            raise RateLimited(f"tenant {tenant.id} reached max_concurrent_streams ({streams})", retry_after_s=1.0)
        held.add("requests", now, 1)
        self._concurrent[tenant.id] += 1

    def charge(self, tenant: TenantConfig, tokens: int) -> None:
        if tokens > 0:
            self._tenants[tenant.id].add("tokens", self._clock(), tokens)

    def release(self, tenant: TenantConfig) -> None:
        self._concurrent[tenant.id] -= 1

    def usage(self, tenant: TenantConfig) -> UsageSnapshot:
        now = self._clock()
        held = self._tenants[tenant.id]
        held.prune(now)
        others = self._others.get(tenant.id, NOTHING)
        windows = []
        for i, w in enumerate(WINDOWS):
            requests, tokens = held.windows[("requests", w.name)], held.windows[("tokens", w.name)]
            windows.append(WindowUsage(w.name, w.seconds, requests.total + others.requests[i],
                                       tokens.total + others.tokens[i],
                                       self._limit(tenant, "requests", w), self._limit(tenant, "tokens", w),
                                       max(requests.reset_in(now), tokens.reset_in(now))))
        return UsageSnapshot(tenant.id, self._concurrent[tenant.id] + others.concurrent,
                             self._scaled(tenant.max_concurrent_streams), tuple(windows))


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
