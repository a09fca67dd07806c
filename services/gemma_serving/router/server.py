"""The router: a grpc.aio server running inside a Ray Serve replica, in front of the services' handles.

Why not Serve's native gRPC proxy: it adds a hop (proxy -> router replica -> service replica) that costs latency and
streamed throughput, and it swallowed client cancellation in one of three runs (README, Design). Our server takes the
client's connection directly in the router replica; replicas share the port via SO_REUSEPORT, and KubeRay exposes it
like any container port.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry import trace

from gemma_serving.api import admin_pb2 as admin_pb
from gemma_serving.api import admin_pb2_grpc as admin_grpc
from gemma_serving.api import inference_pb2 as pb
from gemma_serving.api import inference_pb2_grpc as pb_grpc
from gemma_serving.config import ServingConfig
from gemma_serving.deltas.registry import RayKeyValueStore
from gemma_serving.deltas.subscriber import DeltaSubscriber
from gemma_serving.router.admin import AdminServicer
from gemma_serving.router.backends import Backend, ServeHandleBackend
from gemma_serving.router.direct_routes import DirectRoutes
from gemma_serving.router.health import INFERENCE_SERVICE, ServiceHealth
from gemma_serving.router.http_tls import http_tls_options
from gemma_serving.router.interceptors import InferenceInterceptor
from gemma_serving.router.openai_http import OpenAISurface, start_http_server
from gemma_serving.router.pipeline import InferencePipeline
from gemma_serving.router.quality import with_quality_sampling
from gemma_serving.router.quota_sync import ray_publisher, sync_quotas
from gemma_serving.router.servicer import InferenceServicer
from gemma_serving.router.tls import server_credentials
from gemma_serving.telemetry.metrics import RouterMetrics
from gemma_serving.telemetry.tracing import build_tracer_provider

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 2**20
MAX_METADATA_BYTES = 16 * 2**10


@dataclass
class RouterServer:
    server: grpc.aio.Server
    port: int
    health: ServiceHealth
    _probing: asyncio.Task
    metrics: RouterMetrics
    pipeline: InferencePipeline

    async def drain_and_stop(self, grace_s: float, notice_s: float = 0.0) -> None:
        """Graceful drain: health NOT_SERVING first (for `notice_s`, so load balancers stop sending), then refuse
        new RPCs (UNAVAILABLE) while in-flight ones finish for up to `grace_s`, then stop."""
        await self.health.drain()
        self._probing.cancel()
        await asyncio.sleep(notice_s)
        await self.server.stop(grace_s)


async def start_grpc_server(
    config: ServingConfig,
    backend: Backend,
    *,
    health_interval_s: float = 5.0,
    tracer: trace.Tracer | None = None,
    metrics: RouterMetrics | None = None,
) -> RouterServer:
    """Start the Inference, grpc.health.v1 and reflection services on the configured address."""
    metrics = metrics or RouterMetrics()
    tracer = tracer or trace.NoOpTracerProvider().get_tracer(__name__)
    # Sampled answers are scored off the token path; unsampled requests get the backend's own stream.
    pipeline = InferencePipeline(config, with_quality_sampling(config, backend, metrics), tracer=tracer,
                                 metrics=metrics)
    server = grpc.aio.server(
        interceptors=[InferenceInterceptor(pipeline.authenticate)],
        options=[
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # Headers beyond this are refused by gRPC itself (oversized metadata never reaches our code).
            ("grpc.max_metadata_size", MAX_METADATA_BYTES),
        ],
        maximum_concurrent_rpcs=config.router.max_concurrent_rpcs,
    )
    health_servicer = health.aio.HealthServicer()
    service_health = ServiceHealth(config, backend.probe, health_servicer, interval_s=health_interval_s,
                                   metrics=metrics)
    pb_grpc.add_InferenceServicer_to_server(InferenceServicer(config, pipeline, service_health), server)
    admin_grpc.add_AdminServicer_to_server(AdminServicer(pipeline.tenancy, pipeline.adapters), server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (pb.DESCRIPTOR.services_by_name["Inference"].full_name, health.SERVICE_NAME, reflection.SERVICE_NAME,
             admin_pb.DESCRIPTOR.services_by_name["Admin"].full_name)
    reflection.enable_server_reflection(names, server)
    assert names[0] == INFERENCE_SERVICE
    address = f"{config.router.host}:{config.router.port}"
    tls = config.security.tls
    port = server.add_secure_port(address, server_credentials(tls)) if tls else server.add_insecure_port(address)
    if port == 0:
        raise RuntimeError(f"could not bind {config.router.host}:{config.router.port}")
    await service_health.publish()
    await server.start()
    probing = asyncio.create_task(service_health.run())
    return RouterServer(server, port, service_health, probing, metrics, pipeline)


async def start_openai_server(config: ServingConfig, router: RouterServer):
    """The OpenAI-compatible HTTP surface over the router's pipeline on `router.http_port`, with the gRPC port's TLS
    / mTLS settings (unless `router.http_plaintext_beside_tls`); returns (uvicorn server, bound port)."""
    app = OpenAISurface(config, router.pipeline, router.health).app()
    tls_options = http_tls_options(config.security.tls, plaintext_beside_tls=config.router.http_plaintext_beside_tls)
    return await start_http_server(app, config.router.host, config.router.http_port,
                                   {**tls_options, "timeout_keep_alive": config.router.http_keep_alive_s})


class RouterDeployment:
    """Ray Serve replica that owns a grpc.aio server; wrapped with `serve.deployment` by the app builder."""

    async def __init__(self, config: dict, handles: dict) -> None:
        self._config = ServingConfig.model_validate(config)
        telemetry = self._config.telemetry
        self._tracer_provider = build_tracer_provider(telemetry, component="router")
        metrics = RouterMetrics()
        waits = {kind: s.deployment.max_wait_for_replica_s for kind, s in self._config.services.items()}
        self._metrics_port = metrics.serve(self._config.router.host, telemetry.metrics_port)
        # The token path: replicas push deltas to this subscriber at this node's Ray address (reachable from every
        # node of the cluster, like Ray's own ports).
        import ray

        node_ip = ray.util.get_node_ip_address()
        self._deltas = DeltaSubscriber(node_ip, node_ip, self._config.router.delta_channel_port)
        await self._deltas.start()
        direct_services = {k for k, s in self._config.services.items() if s.deployment.direct_calls}
        self._direct = None
        if direct_services:  # requests to replicas that have room go without a Serve handle call
            from ray import serve

            self._direct = await DirectRoutes.create(RayKeyValueStore(), serve.get_replica_context().app_name,
                                                     direct_services)
        self._router = await start_grpc_server(
            self._config,
            ServeHandleBackend(
                handles,
                self._deltas,
                max_wait_for_replica_s=waits,
                on_retry=lambda kind: metrics.retries.labels(kind.value).inc(),
                direct=self._direct.start if self._direct is not None else None,
            ),
            tracer=self._tracer_provider.get_tracer(__name__),
            metrics=metrics,
        )
        self._replica_counts = asyncio.create_task(_track_replicas(self._config, metrics, self._router.health,
                                                                   direct=self._direct))
        self._quota_sync = None
        if self._config.router.num_replicas > 1:
            self._quota_sync = asyncio.create_task(sync_quotas(
                self._router.pipeline.tenancy.quotas, uuid.uuid4().hex, ray_publisher(self._config.app_name),
                self._config.router.quota_sync_s))
        self._http, self._http_port = None, None
        if self._config.router.http_port is not None:
            self._http, self._http_port = await start_openai_server(self._config, self._router)
        log.info("gRPC router on %s:%d, metrics on :%d", self._config.router.host, self._router.port,
                 self._metrics_port)

    async def port(self) -> int:
        """The bound port (useful when the config asked for port 0)."""
        return self._router.port

    async def http_port(self) -> int | None:
        """The bound OpenAI-compatible HTTP port (None when disabled)."""
        return self._http_port

    async def metrics_port(self) -> int:
        """The bound Prometheus scrape port."""
        return self._metrics_port

    async def check_health(self) -> None:
        """Serve health check: the replica is healthy while its server runs."""

    async def __del__(self) -> None:
        router = getattr(self, "_router", None)
        if router is not None:
            self._replica_counts.cancel()
            if self._quota_sync is not None:
                self._quota_sync.cancel()
            if self._http is not None:
                self._http.should_exit = True  # uvicorn stops accepting, then lets open requests finish
            await router.drain_and_stop(self._config.router.grace_period_s, self._config.router.drain_notice_s)
            if self._direct is not None:
                self._direct.close()
            await self._deltas.stop()
            shutdown = getattr(self._tracer_provider, "shutdown", None)
            if shutdown is not None:  # flush spans still in the batch
                shutdown()


async def _track_replicas(config: ServingConfig, metrics: RouterMetrics, service_health: ServiceHealth,
                          interval_s: float = 5.0, direct: DirectRoutes | None = None) -> None:
    """Publish running replicas per service as gemma_serving_replicas, and tell the health of services that scale
    to zero whether they have a replica.

    A service with direct calls counts the replicas live in `direct`'s directory (which the router re-reads every
    second for routing anyway); only other services need Ray Serve's status. That read cost the idle router ~2.5 ms
    of CPU per second (measured: Serve builds and pickles every deployment's config for it), so it is skipped when
    every service takes direct calls.
    """
    from gemma_serving.app import replica_states

    counted = direct.services if direct is not None else set()
    while True:
        try:
            states = {}
            if any(kind not in counted for kind in config.services):
                states = await asyncio.to_thread(replica_states, config.app_name)
            for kind in config.services:
                running = direct.replicas(kind) if kind in counted else states.get(kind.value, {}).get("RUNNING", 0)
                metrics.replicas.labels(kind.value).set(running)
                await service_health.observe_replicas(kind, running)
        except Exception as exc:  # metrics must never take the router down
            log.warning("could not read replica counts: %s: %s", type(exc).__name__, exc)
        await asyncio.sleep(interval_s)
