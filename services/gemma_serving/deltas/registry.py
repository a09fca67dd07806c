"""Where routers find the replicas that take direct calls, and the secret that signs them: Ray's GCS key-value store.

Each replica that serves direct calls (deltas/calls.py) keeps one key, `<app>/<service>/<replica id>` -> its call
address and a heartbeat counter it bumps every `BEAT_S`; it deletes the key when it drains. Routers read the keys
every `BEAT_S` and use a replica only while its counter keeps moving (judged on the router's own clock: no clocks
are compared across hosts) and its connection is up. The app's signing secret is one more key, created once by
whichever process asks first.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

NAMESPACE = "gemma-serving-direct"
BEAT_S = 1.0
#: A replica whose heartbeat has not moved for this long is not routed to (it is dead or wedged; Serve replaces it).
STALE_AFTER_S = 5.0
#: ... and after this long its key is deleted (a crashed replica never withdraws it; a live one would write it again).
FORGET_AFTER_S = 60.0
#: The direct-call wire a replica speaks, in its announcement: routers use only replicas of their own (an upgrade
#: runs both for a while). 1 (no field): ZeroMQ; 2: length-framed TCP (deltas/calls.py).
CALL_PROTOCOL = 2


class KeyValueStore(Protocol):
    def put(self, key: str, value: bytes, overwrite: bool = True) -> None: ...

    def get(self, key: str) -> bytes | None: ...

    def delete(self, key: str) -> None: ...

    def keys(self, prefix: str) -> list[str]: ...


class RayKeyValueStore:
    """Ray's internal KV (the GCS): reachable from every process of the cluster, nothing else to run."""

    def put(self, key: str, value: bytes, overwrite: bool = True) -> None:
        from ray.experimental.internal_kv import _internal_kv_put

        _internal_kv_put(key, value, overwrite=overwrite, namespace=NAMESPACE)

    def get(self, key: str) -> bytes | None:
        from ray.experimental.internal_kv import _internal_kv_get

        return _internal_kv_get(key, namespace=NAMESPACE)

    def delete(self, key: str) -> None:
        from ray.experimental.internal_kv import _internal_kv_del

        _internal_kv_del(key, namespace=NAMESPACE)

    def keys(self, prefix: str) -> list[str]:
        from ray.experimental.internal_kv import _internal_kv_list

        return [k.decode() if isinstance(k, bytes) else k for k in _internal_kv_list(prefix, namespace=NAMESPACE)]


def shared_secret(store: KeyValueStore, app: str) -> bytes:
    """The app's call-signing secret (created on first use; every later caller reads the same one)."""
    key = f"{app}/secret"
    store.put(key, secrets.token_bytes(32), overwrite=False)
    value = store.get(key)
    if not value:
        raise RuntimeError("the direct-call secret could not be read from Ray's key-value store")
    return value


class ReplicaAnnouncement:
    """A replica's key: written every BEAT_S with a new counter until `withdraw`."""

    def __init__(self, store: KeyValueStore, app: str, service: str, replica_id: str, address: str) -> None:
        self._store, self._key, self._address = store, f"{app}/{service}/{replica_id}", address
        self._beat = 0
        self._task: asyncio.Task | None = None

    def _write(self) -> None:
        self._beat += 1
        self._store.put(self._key, json.dumps({"address": self._address, "beat": self._beat,
                                               "protocol": CALL_PROTOCOL}).encode())

    async def start(self) -> None:
        await asyncio.to_thread(self._write)
        self._task = asyncio.create_task(self._run(), name="direct-call-announcement")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(BEAT_S)
            try:
                await asyncio.to_thread(self._write)
            except Exception as exc:  # noqa: BLE001 - the GCS may be restarting; routers stop using us meanwhile
                log.debug("heartbeat not written: %s", type(exc).__name__)

    async def withdraw(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        await asyncio.to_thread(self._store.delete, self._key)


@dataclass
class _Seen:
    address: str
    beat: int
    moved_at: float  # router clock
    ours: bool = True  # speaks this router's CALL_PROTOCOL


class ReplicaDirectory:
    """A router's view of the replicas that take direct calls, per service; `refresh` re-reads the store."""

    def __init__(self, store: KeyValueStore, app: str, clock: Callable[[], float] = time.monotonic) -> None:
        self._store, self._prefix, self._clock = store, f"{app}/", clock
        self._seen: dict[str, dict[str, _Seen]] = {}

    def _read(self) -> dict[str, dict[str, tuple[str, int, bool]]]:
        found: dict[str, dict[str, tuple[str, int, bool]]] = {}
        for key in self._store.keys(self._prefix):
            parts = key[len(self._prefix):].split("/")
            if len(parts) != 2:
                continue  # the secret, or not ours
            raw = self._store.get(key)
            if raw is None:
                continue  # withdrawn between list and get
            try:
                value = json.loads(raw)
                # A replica of another version (an upgrade in progress) is tracked, so its key is forgotten like
                # any other, but never called: Serve routes to it.
                found.setdefault(parts[0], {})[parts[1]] = (str(value["address"]), int(value["beat"]),
                                                             value.get("protocol", 1) == CALL_PROTOCOL)
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
        return found

    async def refresh(self) -> None:
        found = await asyncio.to_thread(self._read)
        now = self._clock()
        seen: dict[str, dict[str, _Seen]] = {}
        forgotten: list[str] = []
        for service, replicas in found.items():
            before = self._seen.get(service, {})
            for replica_id, (address, beat, ours) in replicas.items():
                old = before.get(replica_id)
                moved = old is None or old.beat != beat or old.address != address
                entry = _Seen(address, beat, now if moved else old.moved_at, ours)
                if now - entry.moved_at > FORGET_AFTER_S:
                    forgotten.append(f"{self._prefix}{service}/{replica_id}")
                else:
                    seen.setdefault(service, {})[replica_id] = entry
        self._seen = seen
        for key in forgotten:
            log.info("deleting the announcement of a replica silent for %.0f s: %s", FORGET_AFTER_S, key)
            await asyncio.to_thread(self._store.delete, key)

    def _live(self, service: str) -> list[_Seen]:
        now = self._clock()
        return [s for s in self._seen.get(service, {}).values() if now - s.moved_at <= STALE_AFTER_S]

    def live(self, service: str) -> list[str]:
        """Call addresses of the service's replicas whose heartbeat moved within STALE_AFTER_S (of this protocol)."""
        return [s.address for s in self._live(service) if s.ours]

    def live_count(self, service: str) -> int:
        """The service's replicas whose heartbeat moved within STALE_AFTER_S, of any version."""
        return len(self._live(service))

    def all_addresses(self) -> set[str]:
        """Call addresses of every known replica of this protocol."""
        return {s.address for replicas in self._seen.values() for s in replicas.values() if s.ours}
