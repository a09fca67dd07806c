"""What the router design benchmark runs: the shared engine (FakeEngine with an event log), design A (an ingress
deployment behind Serve's native gRPC proxy) and design C (a plain grpc.aio server over the engine in-process, in a
subprocess); design B is the platform's own `build_app`. Also the constants the designs and the client share."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bench_common import BENCH_DIR, share_on_path
from gemma_serving.api import inference_pb2 as pb
from gemma_serving.config import ServiceKind, ServingConfig, parse_config
from gemma_serving.engines.fake import FakeEngine
from gemma_serving.engines.types import Chunk, GenerationRequest

MODEL = "t"
STREAM_TOKENS = 32
LONG_TOKENS = 10_000
CANCEL_STEP_DELAY_S = 0.001  # a 10,000-token stream then runs >= 10 s unless aborted
CANCEL_WAIT_S = 5.0
CANCEL_ATTEMPTS = 3

CONFIG: dict[str, Any] = {
    "router": {"port": 0},
    "services": {
        "text": {
            "model": {
                "name": MODEL,
                "source": "/nope",
                "default_max_tokens": STREAM_TOKENS,
                "max_output_tokens": LONG_TOKENS,
                "engine": {"max_model_len": 2 * LONG_TOKENS},
            },
            "deployment": {"num_cpus": 0.1},
        }
    },
}


# --------------------------------------------------------------------------------------------------------------
# Engine (runs inside the text replica for A and B, inside the baseline server process for C)


def append_line(path: str, line: str) -> None:
    """Event log shared by processes (tiny appends; only the cancel test writes)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


class BenchEngine(FakeEngine):
    """FakeEngine with step_delay_s=0, except long requests (cancel test) step every CANCEL_STEP_DELAY_S.

    Long requests log `<event> <request_id> <unix time>` lines (start / aborted / done) to `log_path`.
    """

    def __init__(self, log_path: str) -> None:
        super().__init__(step_delay_s=0.0)
        self.log_path = log_path

    def _log(self, event: str, request_id: str) -> None:
        append_line(self.log_path, f"{event} {request_id} {time.time():.6f}")

    async def generate(self, request: GenerationRequest, *, request_id: str) -> AsyncIterator[Chunk]:
        long = request.sampling.max_tokens >= LONG_TOKENS
        # Only the cancel test sends long requests, and it sends them alone.
        self.step_delay_s = CANCEL_STEP_DELAY_S if long else 0.0
        if long:
            self._log("start", request_id)
        gen = super().generate(request, request_id=request_id)
        try:
            async for chunk in gen:
                yield chunk
        finally:
            await gen.aclose()
            if long:
                self._log("aborted" if request_id in self.aborted else "done", request_id)


def make_engine_factory(log_path: str):
    def factory(kind, model, path):
        return BenchEngine(log_path)

    return factory


def read_events(log_path: str) -> dict[str, dict[str, float]]:
    events: dict[str, dict[str, float]] = {}
    try:
        with open(log_path, encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3:
                    events.setdefault(parts[1], {})[parts[0]] = float(parts[2])
    except FileNotFoundError:
        pass
    return events


# --------------------------------------------------------------------------------------------------------------
# Design A: ingress deployment behind Serve's native gRPC proxy


class ServeGrpcIngress:
    """Serve gRPC ingress: method names are the gRPC method names; same work as our InferenceServicer."""

    async def __init__(self, config: dict, handles: dict, log_path: str) -> None:
        import ray
        from gemma_serving.deltas.subscriber import DeltaSubscriber
        from gemma_serving.router.backends import ServeHandleBackend

        self._config = ServingConfig.model_validate(config)
        node_ip = ray.util.get_node_ip_address()
        deltas = DeltaSubscriber(node_ip, node_ip)  # the platform's token path, as in RouterDeployment
        await deltas.start()
        self._backend = ServeHandleBackend(handles, deltas)
        self._log_path = log_path

    def _validated(self, request: pb.GenerateRequest):
        from gemma_serving.api.convert import request_from_pb
        from gemma_serving.router.validation import validate_request

        return validate_request(request_from_pb(request), self._config)

    async def Generate(self, request: pb.GenerateRequest) -> pb.GenerateResponse:
        from gemma_serving.api.convert import response_to_pb

        request_id = uuid.uuid4().hex
        kind, domain = self._validated(request)
        texts, last = [], None
        async for chunk in self._backend.stream(kind, domain, request_id):
            texts.append(chunk.text)
            last = chunk
        return response_to_pb("".join(texts), last, request_id, request.model)

    async def GenerateStream(self, request: pb.GenerateRequest) -> AsyncIterator[pb.GenerateChunk]:
        from gemma_serving.api.convert import chunk_to_pb

        request_id = uuid.uuid4().hex
        kind, domain = self._validated(request)
        stream = self._backend.stream(kind, domain, request_id)
        try:
            async for chunk in stream:
                yield chunk_to_pb(chunk, request_id)
        except (asyncio.CancelledError, GeneratorExit) as exc:
            # Records whether the proxy passed the client's cancel on to this replica (cancel test only).
            if domain.sampling.max_tokens >= LONG_TOKENS:
                append_line(self._log_path, f"ingress_{type(exc).__name__} {request_id} {time.time():.6f}")
            raise
        finally:
            await stream.aclose()

    async def ListModels(self, request: pb.ListModelsRequest) -> pb.ListModelsResponse:
        return pb.ListModelsResponse()


def build_design_a(config: ServingConfig, engine_factory, log_path: str):
    from gemma_serving.app import deployment_options
    from gemma_serving.deployments.modality import ModalityDeployment
    from ray import serve

    service = config.services[ServiceKind.TEXT]
    text = serve.deployment(ModalityDeployment).options(**deployment_options(ServiceKind.TEXT, service))
    text_app = text.bind(
        "text", service.model_dump(mode="json"), engine_factory=engine_factory, checkpoint_resolver=Path
    )
    ingress = serve.deployment(ServeGrpcIngress).options(
        name="ingress",
        # Same settings as our router deployment (Serve's default of 5 would throttle everything behind it).
        max_ongoing_requests=config.router.max_concurrent_rpcs,
        ray_actor_options={"num_cpus": config.router.num_cpus},
    )
    return ingress.bind(config.model_dump(mode="json"), {"text": text_app}, log_path)


# --------------------------------------------------------------------------------------------------------------
# Design C: plain grpc.aio server, engine in-process (run as a subprocess: `--c-server LOG_PATH`)


class EngineBackend:
    """Calls the engine in-process (as tests/unit/conftest.py does)."""

    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine

    async def probe(self, kind: ServiceKind) -> None:
        await self.engine.check_health()

    async def stream(self, kind: ServiceKind, request: GenerationRequest, request_id: str) -> AsyncIterator[Chunk]:
        async for chunk in self.engine.generate(request, request_id=request_id):
            yield chunk


async def c_server_main(log_path: str) -> None:
    from gemma_serving.router.server import start_grpc_server

    started = await start_grpc_server(parse_config(CONFIG), EngineBackend(BenchEngine(log_path)))
    # The return type has changed across versions: a (server, port, ...) tuple, or an object with both.
    server, port = started[:2] if isinstance(started, tuple) else (started.server, started.port)
    print(f"PORT {port}", flush=True)
    # Run until the parent closes our stdin.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop(0)


def start_design_c(log_path: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        # router_design.py --c-server runs c_server_main in the subprocess.
        [sys.executable, str(BENCH_DIR / "router_design.py"), "--c-server", log_path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        proc.kill()
        raise RuntimeError(f"baseline server did not start: {line!r}")
    return proc, int(line.split()[1])


# --------------------------------------------------------------------------------------------------------------
# Serve's gRPC proxy pickles requests: the generated pb classes' module name must be importable


def install_pb_pickle_shim(workdir: Path) -> None:
    """Alias gemma.serving.v1.inference_pb2 -> gemma_serving.api.inference_pb2 here and in Ray workers."""
    pkg = workdir / "pbshim" / "gemma" / "serving" / "v1"
    pkg.mkdir(parents=True)
    for d in (pkg.parent.parent, pkg.parent, pkg):
        (d / "__init__.py").write_text("")
    (pkg / "inference_pb2.py").write_text(
        "import sys\nimport gemma_serving.api.inference_pb2 as _m\nsys.modules[__name__] = _m\n"
    )
    share_on_path(workdir / "pbshim")

