"""Running the platform on this machine.

`serve_forever` (the `gemma-serving serve` command) owns an in-process Ray instance with the Serve app on it and runs
until SIGTERM. `up` starts that command in the background and returns once the router serves; `down` stops it. One
process owns the cluster, so nothing is left behind when it ends.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc

from gemma_serving.api import inference_pb2 as pb
from gemma_serving.api import inference_pb2_grpc as pb_grpc
from gemma_serving.client.connection import Connection
from gemma_serving.config import ServingConfig

#: In run_dir(): the GCS address of the Ray cluster `serve_forever` owns.
RAY_ADDRESS_FILE = "ray_address"


def run_dir() -> Path:
    """Where the background platform keeps its pid file and log."""
    path = Path(os.environ.get("GEMMA_SERVING_RUN_DIR", Path.home() / ".cache" / "gemma-serving" / "run"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def serve_forever(config: ServingConfig) -> None:
    """Start Ray in this process, deploy the app, and block until SIGTERM/SIGINT."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    from gemma_serving.app import build_app

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    began = time.monotonic()
    ray.init(include_dashboard=False, logging_level="WARNING")
    address_file = run_dir() / RAY_ADDRESS_FILE
    # Other drivers on this machine (`gemma-serving finetune`, the demo) join this cluster through it.
    address_file.write_text(ray.get_runtime_context().gcs_address)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": 8000})
        print(f"deploying app '{config.app_name}' (engines load in 30-100 s on CPU) ...", flush=True)
        serve.run(build_app(config), name=config.app_name, route_prefix=None)
        target = f"{config.router.host}:{config.router.port}"
        print(f"gemma-serving is up on {target} after {time.monotonic() - began:.0f} s", flush=True)
        stop.wait()
        print("shutting down ...", flush=True)
        serve.shutdown()
    finally:
        address_file.unlink(missing_ok=True)
        ray.shutdown()


def local_ray_address() -> str | None:
    """The GCS address of the background platform's Ray cluster, while it runs (None otherwise)."""
    path = run_dir() / RAY_ADDRESS_FILE
    if _pid() is None or not path.is_file():
        return None
    return path.read_text().strip() or None


def router_serving(connection: Connection | str, timeout_s: float = 2.0) -> bool:
    """Whether the router's standard gRPC health check answers SERVING (over the connection's TLS, with its key; a
    plain "host:port" means plaintext without a key)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if isinstance(connection, str):
        connection = Connection(connection)
    try:
        with connection.channel() as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s,
                                                              metadata=connection.metadata)
            return reply.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


def _pid() -> int | None:
    try:
        pid = int((run_dir() / "serve.pid").read_text())
        os.kill(pid, 0)
        return pid
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None


def _claim_pid_file() -> Path:
    """Create the pid file exclusively (holding this process's pid until the platform's replaces it), so that two
    `up`s never start two platforms; a stale file (its process gone) is replaced."""
    path = run_dir() / "serve.pid"
    if path.exists() and _pid() is None:
        path.unlink(missing_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        raise RuntimeError(f"a platform is already starting or running (pid file {path}); run `gemma-serving "
                           "status`, or `gemma-serving down` first") from None
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return path


def up(config: ServingConfig, config_path: Path, connection: Connection, *, timeout_s: float = 900) -> None:
    """Start `gemma-serving serve` in the background; return once the router serves (or raise with its log).

    Refuses to start a second platform: one already running here (serving or still starting), or anything already
    serving on the configured address. A platform that does not come up in time is stopped, not orphaned."""
    target = connection.target
    pid = _pid()
    if pid is not None:
        if router_serving(connection):
            print(f"gemma-serving is already up on {target} (pid {pid})")
            return
        raise RuntimeError(f"a platform is already running (pid {pid}) but {target} is not serving yet; wait and "
                           "run `gemma-serving status`, or `gemma-serving down` first")
    if router_serving(connection):
        raise RuntimeError(f"something not started from {run_dir()} already serves on {target}; stop it first")
    pid_file = _claim_pid_file()
    log_path = run_dir() / "serve.log"
    try:
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "gemma_serving.cli", "serve", "--config", str(config_path)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
    except BaseException:
        pid_file.unlink(missing_ok=True)
        raise
    pid_file.write_text(str(proc.pid))
    print(f"starting gemma-serving (pid {proc.pid}, log {log_path}) ...", flush=True)
    began = time.monotonic()
    while not router_serving(connection):
        if proc.poll() is not None:
            pid_file.unlink(missing_ok=True)
            tail = "".join(log_path.read_text().splitlines(keepends=True)[-20:])
            raise RuntimeError(f"gemma-serving exited with code {proc.returncode}; log tail:\n{tail}")
        if time.monotonic() - began > timeout_s:
            down()
            raise TimeoutError(f"router at {target} not serving after {timeout_s:.0f} s, so the platform was "
                               f"stopped; see {log_path}")
        time.sleep(1)
    print(f"gemma-serving is up on {target} after {time.monotonic() - began:.0f} s", flush=True)


def down(timeout_s: float = 60, connection: Connection | None = None) -> None:
    """Stop the background platform (SIGTERM, then SIGKILL of its process group after `timeout_s`); with
    `connection`, say so if something still serves on its address afterwards."""
    pid = _pid()
    if pid is None:
        print("gemma-serving is not running")
        if connection is not None and router_serving(connection):
            print(f"note: something not started from {run_dir()} serves on {connection.target}")
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _pid() is not None and time.monotonic() < deadline:
        time.sleep(0.5)
    if _pid() is not None:
        os.killpg(pid, signal.SIGKILL)
    (run_dir() / "serve.pid").unlink(missing_ok=True)
    print("gemma-serving stopped")
    if connection is not None and router_serving(connection):
        print(f"note: something still serves on {connection.target}")


def status(connection: Connection) -> int:
    """Print whether the platform runs and what it serves; returns an exit code."""
    target = connection.target
    pid = _pid()
    print(f"process: {'pid ' + str(pid) if pid else 'not running'}")
    if not router_serving(connection):
        print(f"router {target}: not serving")
        return 1
    print(f"router {target}: SERVING{' (TLS)' if connection.tls else ''}")
    with connection.channel() as channel:
        models = pb_grpc.InferenceStub(channel).ListModels(pb.ListModelsRequest(), timeout=5,
                                                           metadata=connection.metadata).models
    for m in models:
        kinds = ", ".join(pb.Modality.Name(x).removeprefix("MODALITY_").lower() for x in m.input_modalities)
        print(f"  {m.name}: service={m.service} inputs={kinds} context={m.context_length}")
    return 0
