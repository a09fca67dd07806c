"""Build and cache the tiny Gemma checkpoints; resolve ``tiny://`` model sources.

Builds are deterministic (fixed seeds, fixed corpus), idempotent (a marker file holds a
build-version string; a checkpoint with another version is rebuilt) and safe when several
processes ask at once (an ``fcntl`` lock per model, build into a temp dir, atomic rename).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path

TINY_SCHEME = "tiny://"
MODEL_NAMES = ("text", "vision", "gemma3n")
#: ``tiny-lora://text``: a tiny PEFT LoRA adapter for the tiny text model (built into ``<cache>/text-lora``).
TINY_LORA_SCHEME = "tiny-lora://"
ADAPTER_NAMES = ("text",)
#: ``gs://<bucket>/<path>`` sources are read through the bucket's GCS FUSE mount (the Helm chart mounts
#: ``modelStorage.gcsFuse.bucket`` at ``modelStorage.mountPath``, /models by default): ``<mount>/<path>``.
GCS_SCHEME = "gs://"
GCS_MOUNT_ENV = "GEMMA_SERVING_GCS_MOUNT"
DEFAULT_GCS_MOUNT = "/models"
MARKER_FILE = ".gemma-serving-build"
# Bump when anything that changes the bytes of a built checkpoint changes.
BUILD_REVISION = "tiny-gemma-1"


def default_cache_dir() -> Path:
    """Return ``$GEMMA_SERVING_MODEL_CACHE`` or ``~/.cache/gemma-serving/models``."""
    env = os.environ.get("GEMMA_SERVING_MODEL_CACHE")
    return Path(env).expanduser() if env else Path("~/.cache/gemma-serving/models").expanduser()


def build_version() -> str:
    """Return the version string stored in each checkpoint's marker file."""
    import transformers

    return f"{BUILD_REVISION} transformers={transformers.__version__}"


def _builder(name: str) -> Callable[..., Path]:
    if name == "text":
        from .text import build_text as fn
    elif name == "vision":
        from .vision import build_vision as fn
    elif name == "gemma3n":
        from .gemma3n import build_gemma3n as fn
    elif name == "text-lora":
        from .lora import build_text_lora as fn
    else:
        raise ValueError(f"unknown tiny model {name!r}; expected one of {MODEL_NAMES}")
    return fn


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _is_current(model_dir: Path, version: str) -> bool:
    marker = model_dir / MARKER_FILE
    try:
        return marker.read_text(encoding="utf-8").strip() == version
    except OSError:
        return False


def build_model(
    name: str, cache_dir: Path | None = None, progress: Callable[[str], None] = print
) -> Path:
    """Build tiny model ``name`` into ``cache_dir/name`` unless an up-to-date build exists."""
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    builder = _builder(name)
    target = cache_dir / name
    version = build_version()
    if _is_current(target, version):
        return target
    with _locked(cache_dir / f".{name}.lock"):
        if _is_current(target, version):  # another process built it while we waited
            progress(f"{name}: already built at {target}")
            return target
        progress(f"{name}: building tiny checkpoint into {target}")
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=cache_dir))
        try:
            builder(tmp, progress=progress)
            (tmp / MARKER_FILE).write_text(version + "\n", encoding="utf-8")
            if target.exists():
                stale = Path(tempfile.mkdtemp(prefix=f".{name}.old-", dir=cache_dir))
                os.replace(target, stale / name)
                shutil.rmtree(stale, ignore_errors=True)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        progress(f"{name}: done ({_size_mb(target):.1f} MB)")
    return target


def _size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def build_models(
    cache_dir: Path | None = None,
    names: Iterable[str] = MODEL_NAMES,
    progress: Callable[[str], None] = print,
) -> dict[str, Path]:
    """Build (or reuse) the named tiny checkpoints; return ``{name: checkpoint_dir}``."""
    return {name: build_model(name, cache_dir, progress) for name in names}


def resolve_model_source(
    source: str, cache_dir: Path | None = None, progress: Callable[[str], None] = print
) -> Path:
    """Map ``tiny://text|vision|gemma3n`` to a built checkpoint dir, ``tiny-lora://text`` to a built LoRA adapter
    dir, ``gs://<bucket>/<path>`` to ``<GCS FUSE mount>/<path>``; other strings to a local path."""
    if source.startswith(TINY_SCHEME):
        return build_model(source[len(TINY_SCHEME):].strip("/"), cache_dir, progress)
    if source.startswith(TINY_LORA_SCHEME):
        name = source[len(TINY_LORA_SCHEME):].strip("/")
        if name not in ADAPTER_NAMES:
            raise ValueError(f"unknown tiny adapter {name!r}; expected one of {ADAPTER_NAMES}")
        return build_model(f"{name}-lora", cache_dir, progress)
    if source.startswith(GCS_SCHEME):
        _bucket, _, path = source[len(GCS_SCHEME):].partition("/")
        return Path(os.environ.get(GCS_MOUNT_ENV, DEFAULT_GCS_MOUNT)) / path.strip("/")
    return Path(source).expanduser()
