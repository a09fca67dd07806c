"""The live LoRA adapter registry of one model, kept in storage so every router and replica sees the same one.

Each registered adapter is one small JSON file, ``<registry>/.registry/<name>.json`` (name, PEFT source, LoRA id,
time), written atomically (temporary file + rename). One file per adapter means registrations never rewrite each
other, a registration survives any process restart, and unregistering is deleting a file. The registry directory is
a local path or ``gs://<bucket>/<path>`` read through the GCS FUSE mount (``models.build``).

LoRA ids (vLLM's ``lora_int_id``) of configured adapters are their position in ``model.adapters`` (1..256); a
registration draws a fresh random id from 1000 up, kept for as long as it is registered, so every replica uses the
same id for it, and registering a name again (new weights) gives a new id that no replica confuses with the old.

Readers cache the listing for ``refresh_s`` seconds: a registration made through one router is visible to the
others (and gone from them after unregistering) within that time.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from gemma_serving.config import ADAPTER_NAME_PATTERN
from gemma_serving.errors import AlreadyExists, InvalidRequest, ModelNotFound

log = logging.getLogger(__name__)

ENTRIES_DIR = ".registry"
FIRST_REGISTERED_ID = 1000
MAX_LORA_ID = 2**31 - 1
DEFAULT_REFRESH_S = 2.0
_NAME = re.compile(ADAPTER_NAME_PATTERN)


@dataclass(frozen=True)
class RegisteredAdapter:
    """One registration: the adapter's name, PEFT source, LoRA id and when it was registered (unix seconds)."""

    name: str
    source: str
    lora_id: int
    registered_at: float


def storage_path(location: str) -> Path:
    """The local path of a registry or adapter location (gs://<bucket>/<path> maps to the GCS FUSE mount)."""
    from gemma_serving.models import resolve_model_source

    return Path(resolve_model_source(location, progress=lambda msg: log.info("model build: %s", msg)))


def check_adapter_dir(source: str, max_rank: int) -> Path:
    """The local directory of the PEFT LoRA adapter at `source`; InvalidRequest if it is missing or too large."""
    path = storage_path(source)
    config_file = path / "adapter_config.json"
    if not config_file.is_file():
        raise InvalidRequest(f"source {source[:200]} holds no adapter_config.json (expected a PEFT adapter "
                             "directory)", field="source")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidRequest(f"adapter_config.json of {source[:200]} is unreadable: {type(exc).__name__}",
                             field="source") from None
    if config.get("peft_type") != "LORA":
        raise InvalidRequest(f"adapter at {source[:200]} is not a LoRA adapter (peft_type {config.get('peft_type')})",
                             field="source")
    rank = int(config.get("r") or 0)
    if not 1 <= rank <= max_rank:
        raise InvalidRequest(f"adapter rank must be 1..{max_rank} (the engine's max_lora_rank), got {rank}",
                             field="source")
    if not any((path / f).is_file() for f in ("adapter_model.safetensors", "adapter_model.bin")):
        raise InvalidRequest(f"adapter at {source[:200]} has no adapter_model.safetensors", field="source")
    return path


class AdapterRegistry:
    """Registered adapters of one model in the directory `location` (see the module docstring)."""

    def __init__(self, location: str, *, refresh_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.location = location
        self._dir = storage_path(location) / ENTRIES_DIR
        self._refresh_s = DEFAULT_REFRESH_S if refresh_s is None else refresh_s
        self._clock = clock
        self._cache: dict[str, RegisteredAdapter] = {}
        self._read_at = float("-inf")

    def entries(self) -> dict[str, RegisteredAdapter]:
        """Registered adapters by name (the cached listing, re-read once it is `refresh_s` old)."""
        if not self.is_fresh():
            self._cache = self._read_all()
            self._read_at = self._clock()
        return self._cache

    def is_fresh(self) -> bool:
        """Whether the cached listing is younger than `refresh_s` (entries() would not touch storage)."""
        return self._clock() - self._read_at < self._refresh_s

    def get(self, name: str) -> RegisteredAdapter | None:
        """The registration of `name` from the cached listing, or None."""
        return self.entries().get(name)

    def read(self, name: str) -> RegisteredAdapter | None:
        """The registration of `name` read from storage now (no cache), or None."""
        if not _NAME.match(name):
            return None
        return self._read_file(self._dir / f"{name}.json")

    def register(self, name: str, source: str, *, replace: bool = False,
                 reserved_ids: Iterable[int] = ()) -> RegisteredAdapter:
        """Record adapter `name` at `source` with a fresh LoRA id; AlreadyExists if registered (unless `replace`)."""
        if not _NAME.match(name):
            raise InvalidRequest(f"adapter name must match {ADAPTER_NAME_PATTERN}, got '{name[:64]}'", field="name")
        current = self._read_all()
        if name in current and not replace:
            raise AlreadyExists(f"adapter '{name}' is already registered (from {current[name].source}); unregister "
                                "it first or register with replace", field="name")
        taken = {e.lora_id for e in current.values()} | set(reserved_ids)
        lora_id = _fresh_id()
        while lora_id in taken:
            lora_id = _fresh_id()
        entry = RegisteredAdapter(name, source, lora_id, time.time())
        self._dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self._dir)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(asdict(entry), f)
        os.replace(tmp, self._dir / f"{name}.json")
        self._cache = {**self._cache, name: entry}
        return entry

    def unregister(self, name: str) -> RegisteredAdapter:
        """Remove the registration of `name`; ModelNotFound if it is not registered."""
        entry = self.read(name)
        if entry is None:
            raise ModelNotFound(f"adapter '{name[:64]}' is not registered in {self.location}", field="name")
        (self._dir / f"{name}.json").unlink(missing_ok=True)
        self._cache = {k: v for k, v in self._cache.items() if k != name}
        return entry

    def _read_all(self) -> dict[str, RegisteredAdapter]:
        try:
            files = sorted(p for p in self._dir.iterdir() if p.suffix == ".json" and not p.name.startswith("."))
        except FileNotFoundError:
            return {}
        entries = (self._read_file(p) for p in files)
        return {e.name: e for e in entries if e is not None}

    def _read_file(self, path: Path) -> RegisteredAdapter | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            entry = RegisteredAdapter(str(data["name"]), str(data["source"]), int(data["lora_id"]),
                                      float(data["registered_at"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("adapter registry entry %s is unreadable (%s); ignored", path, type(exc).__name__)
            return None
        return entry if entry.name == path.stem else None


def _fresh_id() -> int:
    return FIRST_REGISTERED_ID + secrets.randbelow(MAX_LORA_ID - FIRST_REGISTERED_ID)
