"""The soak's platform: its config (every port free, API-key tenants), starting and stopping it in this process the
way tests/integration/conftest.py does, and the leak check on its services.

Tenants (`--tenants N`, default 3): tenant-0 .. tenant-{N-1}, each with a fresh API key (only the salted hash goes
into the config) and quotas far above what a soak sends (`GENEROUS`: the windows are counted, never hit). Client i
belongs to tenant i % N. The last tenant may hold only half of its clients' streams at once (`max_concurrent_streams`,
at least 1), so its clients are refused RESOURCE_EXHAUSTED (HTTP 429) as they call back to back: the quota path is
exercised under load, and those refusals are the expected kind. N = 0 keeps auth off (every caller is 'default').
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from bench_common import free_port
from gemma_serving.config import ServingConfig, load_config, parse_config
from gemma_serving.router.auth import new_api_key

KINDS = ("text", "vision", "audio")
#: Quotas of every soak tenant: far above a soak of minutes, so they are accounted but not what refuses calls.
GENEROUS = {"requests_per_minute": 1_000_000, "tokens_per_minute": 100_000_000}


@dataclass(frozen=True)
class Tenant:
    id: str
    api_key: str | None = None  # None: auth is off, or the platform at --target needs no key
    key_hash: str | None = None  # set for the tenants this script configures
    max_concurrent_streams: int | None = None  # the tight tenant's cap

    @property
    def headers(self) -> dict[str, str]:
        """What this tenant sends: `authorization: Bearer <key>` (gRPC metadata and HTTP alike), or nothing."""
        return {"authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def config(self) -> dict:
        """The tenant's entry under security.tenants."""
        streams = {"max_concurrent_streams": self.max_concurrent_streams} if self.max_concurrent_streams else {}
        return {"id": self.id, "api_key_hashes": [self.key_hash], **GENEROUS, **streams}

    def describe(self) -> dict:
        """For the report: never the key."""
        return {"id": self.id, "authenticated": self.api_key is not None,
                "max_concurrent_streams": self.max_concurrent_streams}


NO_AUTH = Tenant("default")


def tenant_index(client: int, tenants: int) -> int:
    """The tenant client number `client` belongs to (round-robin)."""
    return client % max(1, tenants)


def make_tenants(n: int, clients: int) -> list[Tenant]:
    """`n` tenants with fresh keys and generous quotas, the last one tight (module docstring); n = 0: NO_AUTH."""
    tenants = []
    for i in range(n):
        key, key_hash = new_api_key()
        own = sum(1 for c in range(clients) if tenant_index(c, n) == i)
        tenants.append(Tenant(f"tenant-{i}", key, key_hash, max(1, own // 2) if i == n - 1 else None))
    return tenants or [NO_AUTH]


def external_tenants(api_keys: list[str]) -> list[Tenant]:
    """--target: one tenant per given key (key-1, key-2, ...; quotas are the platform's), or NO_AUTH."""
    return [Tenant(f"key-{i + 1}", key) for i, key in enumerate(api_keys)] or [NO_AUTH]


def with_tenants(data: dict, tenants: list[Tenant]) -> dict:
    """The config mapping `data` with API-key auth on for `tenants` (unchanged when none has a key hash)."""
    configured = [t.config() for t in tenants if t.key_hash]
    if not configured:
        return data
    return {**data, "security": {**data.get("security", {}), "auth": "api_key", "tenants": configured}}


def with_free_ports(node):
    """`node` with every listening port (gRPC, HTTP, metrics, ...) set to 0 = a free one: another platform on this
    box may hold the defaults."""
    if isinstance(node, dict):
        return {key: 0 if key.endswith("port") and isinstance(value, int) and not isinstance(value, bool)
                else with_free_ports(value) for key, value in node.items()}
    if isinstance(node, list):
        return [with_free_ports(item) for item in node]
    return node


def soak_config(path: str | None, tenants: list[Tenant]) -> ServingConfig:
    """The config at `path` (default: the local tiny-model one) on free ports, with `tenants`."""
    return parse_config(with_tenants(with_free_ports(load_config(path).model_dump(mode="json")), tenants))


def start_platform(config: ServingConfig) -> tuple[int, int, float]:
    """Ray + Serve + the app in this process; returns (gRPC port, HTTP port, seconds it took)."""
    import ray
    from gemma_serving.app import build_app
    from gemma_serving.models import build_models
    from ray import serve

    began = time.monotonic()
    build_models(progress=lambda msg: print(f"[build-models] {msg}", flush=True))
    ray.init(address="local", num_cpus=os.cpu_count() or 2, include_dashboard=False, logging_level="WARNING")
    serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
    print("deploying the app (Ray Serve + 3 vLLM engines; minutes on a small CPU box) ...", flush=True)
    handle = serve.run(build_app(config), name=config.app_name, route_prefix=None)
    return handle.port.remote().result(), handle.http_port.remote().result(), time.monotonic() - began


def stop_platform() -> None:
    import ray
    from ray import serve

    if not ray.is_initialized():
        return
    try:
        serve.shutdown()
    finally:
        ray.shutdown()


def describe_all(app_name: str) -> dict[str, dict]:
    from ray import serve

    return {kind: serve.get_deployment_handle(kind, app_name).describe.remote().result(timeout_s=30)
            for kind in KINDS}


def leak_check(app_name: str, wait_s: float) -> dict:
    """Poll every service's in-flight engine requests until all are 0 (or `wait_s` passes)."""
    began = time.monotonic()
    while True:
        in_flight = {kind: fact["in_flight"] for kind, fact in describe_all(app_name).items()}
        if not any(in_flight.values()) or time.monotonic() - began > wait_s:
            return {"in_flight": in_flight, "waited_s": round(time.monotonic() - began, 2),
                    "ok": not any(in_flight.values())}
        time.sleep(0.2)
