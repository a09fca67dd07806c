"""Small helpers the benchmark scripts share: the run clock, progress lines, a free port, the machine's description,
and putting a directory (bench/) on the import path of this process and of the Ray workers it starts."""

from __future__ import annotations

import os
import platform
import socket
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"


def now() -> float:
    return time.perf_counter()


#: When the run started (this module's first import): progress lines and wall times count from here.
STARTED = now()


def progress(msg: str) -> None:
    print(f"[{now() - STARTED:6.1f}s] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def share_on_path(directory: Path) -> None:
    """Put `directory` first on this process's import path and on the PYTHONPATH its children inherit (Ray's workers,
    hence Serve replicas, too: they import bench modules, such as engine factories, by name)."""
    sys.path.insert(0, str(directory))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(directory), os.environ.get("PYTHONPATH")]))


def package_version(dist: str) -> str | None:
    from importlib import metadata

    for name in (dist, f"{dist}-cpu"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def exit_stopping_ray(code: int = 0) -> None:
    """Stop Serve and Ray if this process started them, then exit at once (Ray's and vLLM's background threads can
    hold a normal exit). Without the stop, replicas' vLLM engine processes outlive an os._exit and keep eating CPU
    and memory under the next benchmark."""
    try:
        import ray

        if ray.is_initialized():
            from ray import serve

            serve.shutdown()
            ray.shutdown()
    except Exception as exc:  # noqa: BLE001 - exiting anyway
        progress(f"could not stop Ray cleanly: {type(exc).__name__}: {exc}")
    os._exit(code)
