"""Typed configuration of gemma-serving, loaded from one YAML file.

The same schema drives the local CLI, the Ray Serve app builder and the Helm chart's serveConfigV2, so there is one
source of truth for every setting. Models are strict (`extra="forbid"`): a typo in a key is an error at load time.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from gemma_serving.engines.sampling import SAMPLING_PARAMS
from gemma_serving.errors import InvalidRequest
from gemma_serving.observability_config import HealthProbeSettings, QualitySettings, SaturationTargets
from gemma_serving.security_config import SecuritySettings


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServiceKind(str, Enum):
    """The three deployments; each accepts a fixed set of input modalities."""

    TEXT = "text"
    VISION = "vision"
    AUDIO = "audio"


#: Input modalities each service's models accept (output is always text).
SERVICE_MODALITIES: dict[ServiceKind, tuple[str, ...]] = {
    ServiceKind.TEXT: ("text",),
    ServiceKind.VISION: ("text", "image"),
    ServiceKind.AUDIO: ("text", "image", "audio"),
}


class EngineSettings(Strict):
    """vLLM engine settings we rely on, plus an explicit escape hatch for the rest."""

    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="Weight and activation precision passed to vLLM."
    )
    quantization: Literal["fp8", "awq", "gptq", "bitsandbytes", "compressed-tensors"] | None = Field(
        None,
        description="Weight quantization: fp8 halves weight memory on H100/L4 with small quality loss; awq/gptq need "
        "a pre-quantized checkpoint (4-bit, ~1/4 of bf16 memory, more quality loss); bitsandbytes quantizes at load "
        "(slower). None serves the checkpoint as is.",
    )
    kv_cache_dtype: Literal["auto", "fp8"] = Field(
        "auto", description="fp8 halves KV cache memory (more concurrent sequences) at a small quality cost."
    )
    max_model_len: int = Field(2048, gt=0, le=131072, description="Context length: prompt plus completion tokens.")
    max_num_seqs: int = Field(32, gt=0, le=1024, description="Most sequences the engine schedules in one step.")
    enforce_eager: bool = Field(True, description="Skip torch.compile / CUDA graphs (fast start, slower steps).")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="Fraction of GPU memory vLLM may use.")
    tensor_parallel_size: int = Field(1, ge=1, le=16, description="GPUs one replica shards the model over.")
    cpu_kv_cache_gib: int = Field(
        1, ge=1, le=512, description="KV cache size on CPU-only nodes (VLLM_CPU_KVCACHE_SPACE); ignored on GPUs."
    )
    max_loras: int = Field(
        2, ge=1, le=64, description="LoRA adapters one engine step can batch together (vLLM max_loras: adapter slots "
        "on the accelerator, LRU). Only used when the model has adapters."
    )
    max_cpu_loras: int = Field(
        4, ge=1, le=1024, description="LoRA adapters a replica keeps loaded (host memory), least recently used evicted "
        "beyond; also the per-replica bound of Ray Serve's adapter multiplexing. Must be >= max_loras."
    )
    max_lora_rank: Literal[1, 8, 16, 32, 64, 128, 256, 320, 512] = Field(
        16, description="Largest adapter rank the engine accepts (vLLM max_lora_rank); it sizes the adapter slots."
    )
    extra_args: dict[str, Any] = Field(
        default_factory=dict, description="Escape hatch: further vllm AsyncEngineArgs fields, passed through as is."
    )

    @model_validator(mode="after")
    def _lora_cache_holds_the_batch(self) -> EngineSettings:
        if self.max_cpu_loras < self.max_loras:
            raise ValueError("max_cpu_loras must be at least max_loras")
        return self


#: What an adapter name may look like (config adapters, registered adapters, fine-tuned adapters).
ADAPTER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


def _sampling_defaults_model() -> type[Strict]:
    """SamplingDefaults: one optional field per defaultable sampling parameter, bounds from its declaration."""
    fields: dict[str, Any] = {}
    for p in SAMPLING_PARAMS:
        if not p.defaultable:
            continue
        bounds = {}
        if p.low is not None and p.kind is not tuple:
            bounds["gt" if p.low_open else "ge"] = p.low
        if p.high is not None and not callable(p.high):
            bounds["le"] = p.high
        kind = list[str] if p.kind is tuple else p.kind
        unset = "" if p.engine_default is None else f" Unset: vLLM's {str(p.engine_default).lower()}."
        fields[p.name] = (Optional[kind], Field(None, description=f"{p.description} Allowed: {p.range_text()}."
                                                f"{unset}", **bounds))
    model = create_model("SamplingDefaults", __base__=Strict, **fields)
    model.__doc__ = ("Sampling a model uses when a request leaves a parameter unset (null: vLLM's default), e.g. "
                     "the Gemma guide's temperature 0.7, top_p 0.9, repetition_penalty 1.05.")
    return model


SamplingDefaults = _sampling_defaults_model()


class AdapterConfig(Strict):
    """A LoRA adapter of a model, chosen per request with GenerateRequest.adapter."""

    name: str = Field(..., pattern=ADAPTER_NAME_PATTERN, description="Name clients put in GenerateRequest.adapter.")
    source: str = Field(
        ...,
        min_length=1,
        description="PEFT adapter directory (adapter_config.json + adapter_model.safetensors): a local path; "
        "gs://<bucket>/<path>, read through the bucket's GCS FUSE mount (the Helm chart mounts "
        "modelStorage.gcsFuse.bucket at modelStorage.mountPath; GEMMA_SERVING_GCS_MOUNT, default /models); or "
        "tiny-lora://text for the locally built test adapter of tiny://text.",
    )


class ModelConfig(Strict):
    """One model served by a service."""

    name: str = Field(..., min_length=1, max_length=128, description="Name clients put in GenerateRequest.model.")
    source: str = Field(
        ...,
        min_length=1,
        description="Checkpoint: a local directory, or tiny://text | tiny://vision | tiny://gemma3n for the "
        "locally built random-weight test models.",
    )
    default_max_tokens: int = Field(256, gt=0, description="max_tokens used when a request leaves it unset.")
    max_output_tokens: int = Field(1024, gt=0, description="Largest max_tokens a request may ask for.")
    default_sampling: SamplingDefaults = Field(
        default_factory=SamplingDefaults,
        description="Sampling parameters applied when a request leaves them unset; reported in ListModels.",
    )
    engine: EngineSettings = Field(default_factory=EngineSettings, description="Engine settings for this model.")
    adapters: list[AdapterConfig] = Field(
        default_factory=list,
        max_length=256,
        description="LoRA adapters requests may select by name (text models only). Loaded into a replica on first "
        "use, bounded by engine.max_cpu_loras (LRU); requests for an adapter prefer replicas that have it loaded.",
    )
    adapter_registry: str | None = Field(
        None,
        min_length=1,
        description="Directory of this model's live adapter registry (text models only): a local path or "
        "gs://<bucket>/<path> through the GCS FUSE mount, shared by routers and replicas. Admins add and remove "
        "adapters at run time (Admin.RegisterAdapter / UnregisterAdapter, `gemma-serving adapters`); each is one "
        "JSON file under <dir>/.registry/, so registrations survive restarts. Fine-tuned adapters are written to "
        "<dir>/<name>/ by default. None: only `adapters` are served.",
    )

    @model_validator(mode="after")
    def _unique_adapter_names(self) -> ModelConfig:
        names = [a.name for a in self.adapters]
        if len(names) != len(set(names)):
            raise ValueError(f"adapter names must be unique within a model, got {names}")
        return self

    @model_validator(mode="after")
    def _token_limits_fit(self) -> ModelConfig:
        if self.default_max_tokens > self.max_output_tokens:
            raise ValueError("default_max_tokens must not exceed max_output_tokens")
        if self.max_output_tokens >= self.engine.max_model_len:
            raise ValueError("max_output_tokens must be smaller than engine.max_model_len")
        return self


class AutoscalingSettings(Strict):
    """Ray Serve autoscaling for one service."""

    min_replicas: int = Field(1, ge=0, le=1000, description="Replicas kept when idle (0 = scale to zero).")
    max_replicas: int = Field(1, ge=1, le=1000, description="Upper bound on replicas.")
    target_ongoing_requests: float = Field(8, gt=0, description="Ongoing requests per replica the autoscaler aims at.")
    upscale_delay_s: float = Field(10, ge=0, description="Sustained demand needed before adding replicas.")
    downscale_delay_s: float = Field(300, ge=0, description="Sustained idleness needed before removing replicas.")
    # Which signal scales the service (observability_config.py).
    policy: Literal["ongoing_requests", "engine_saturation"] = Field(
        "ongoing_requests",
        description="ongoing_requests: Serve's default (target_ongoing_requests per replica). engine_saturation: "
        "the engines' own KV-cache usage and waiting requests against `saturation` (a Ray Serve custom policy fed "
        "by each replica's record_autoscaling_stats); falls back to ongoing requests while no engine reports.",
    )
    saturation: SaturationTargets = Field(
        default_factory=SaturationTargets, description="Targets of the engine_saturation policy."
    )

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingSettings:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        return self


class DeploymentSettings(Strict):
    """Placement and concurrency of one service's Ray Serve deployment."""

    autoscaling: AutoscalingSettings = Field(default_factory=AutoscalingSettings, description="Replica autoscaling.")
    max_ongoing_requests: int = Field(64, gt=0, le=10000, description="Requests one replica runs at once.")
    max_queued_requests: int = Field(256, ge=-1, description="Requests queued per caller beyond that (-1 = unbounded).")
    num_cpus: float = Field(0.5, ge=0, description="Ray CPU bookkeeping per replica.")
    num_gpus: float = Field(0, ge=0, description="GPUs per replica (0 on CPU-only nodes).")
    accelerator_type: str | None = Field(
        None, description="GKE accelerator a replica must land on, e.g. nvidia-l4; None places anywhere."
    )
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables for the replica.")
    max_wait_for_replica_s: float = Field(
        300, gt=0, le=3600,
        description="Longest a request waits for its first output, which covers a replica starting (scale from "
        "zero, replacement after a crash) and queueing; then UNAVAILABLE with retry info. The request's deadline "
        "applies too.",
    )
    stream_flush_ms: float = Field(
        20, ge=0, le=1000,
        description="Adaptive coalescing on the token path: after a stream's first delta (sent at once), a replica "
        "sends that stream's deltas once per tick of this many ms (one clock for all its streams, so their deltas "
        "share one channel message per tick); the engine keeps generating meanwhile and its "
        "deltas are merged (fewer messages and router writes per token, CPU per token falls by the merge factor; "
        "ITL averages are unchanged). 0: every engine step's delta goes at once. Deltas of all in-flight requests "
        "ready in one event-loop pass always share one channel message per router.",
    )
    stream_flush_max_ms: float = Field(
        40, ge=0, le=1000,
        description="The widest the coalescing window grows (deployments/tick_window.py): while the engine's steps "
        "are slow against stream_flush_ms (a message would carry one token or two), the replica widens the window "
        "to about three engine steps, never past this, so a stream still shows tokens at least this often while "
        "the engine makes them. At or below stream_flush_ms: the window stays stream_flush_ms.",
    )
    direct_calls: bool = Field(
        True,
        description="Routers hand requests to a replica they chose as a signed message over TCP (deltas/calls.py) "
        "instead of a Ray Serve handle call (~2.7 ms of CPU per request less across router and replica). Serve's "
        "handle stays the path when no replica is known or all are at max_ongoing_requests (Serve queues and "
        "autoscales), for LoRA adapters (multiplexed routing) and for retries; replicas report their direct calls "
        "to the autoscaler. false: every request is a Serve handle call.",
    )
    health_probe: HealthProbeSettings = Field(
        default_factory=HealthProbeSettings, description="Short-generation health probe of each replica."
    )


class ServiceConfig(Strict):
    """One modality service: a model and how its deployment scales."""

    model: ModelConfig = Field(..., description="The model this service serves.")
    deployment: DeploymentSettings = Field(default_factory=DeploymentSettings, description="Ray Serve settings.")


class RequestLimits(Strict):
    """Input limits the router checks before any engine work."""

    max_messages: int = Field(64, gt=0, le=4096, description="Messages per request.")
    max_parts_per_message: int = Field(32, gt=0, le=1024, description="Parts per message.")
    max_text_chars: int = Field(200_000, gt=0, description="Total characters of text across all parts.")
    max_stop_sequences: int = Field(8, ge=0, le=64, description="Entries in sampling.stop.")
    max_stop_chars: int = Field(64, gt=0, description="Characters per stop string.")
    max_images: int = Field(4, ge=0, le=64, description="Images per request.")
    max_image_bytes: int = Field(10 * 2**20, gt=0, description="Encoded bytes per image.")
    max_image_pixels: int = Field(4096 * 4096, gt=0, description="Decoded pixels per image (decompression bombs).")
    max_audios: int = Field(2, ge=0, le=16, description="Audio clips per request.")
    max_audio_bytes: int = Field(10 * 2**20, gt=0, description="Encoded bytes per audio clip.")
    max_audio_seconds: float = Field(30, gt=0, description="Duration per audio clip (Gemma 3n handles 30 s).")
    max_tools: int = Field(32, ge=0, le=256, description="Tool definitions per request.")
    max_schema_chars: int = Field(20_000, gt=0, description="JSON text of one tool or response schema.")
    max_choices: int = Field(64, gt=0, le=4096, description="Options of a choice response format.")
    max_batch_size: int = Field(32, gt=0, le=1024, description="Requests in one GenerateBatch call.")
    max_http_body_bytes: int = Field(
        64 * 2**20, gt=0, le=2**31,
        description="Bytes of one HTTP request body (JSON or multipart); larger is refused with 413 before the rest "
        "is read. The default matches the gRPC message limit.",
    )
    max_json_depth: int = Field(64, ge=4, le=1000, description="Nesting depth of an HTTP request's JSON body.")


class RouterSettings(Strict):
    """The gRPC front door."""

    host: str = Field("127.0.0.1", description="Interface the gRPC server binds.")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port (0 picks a free one, for tests).")
    http_port: int | None = Field(
        8088,
        ge=0,
        le=65535,
        description="OpenAI-compatible HTTP port (0 picks a free one; null disables it). Not 8000 (Ray Serve's "
        "proxy) or 8080 (Ray's metrics export).",
    )
    http_plaintext_beside_tls: bool = Field(
        False,
        description="Serve the HTTP port without TLS although security.tls is set (only behind a proxy that "
        "terminates TLS and authenticates callers itself). Off: the HTTP port uses the same TLS / mTLS settings "
        "and client-certificate tenants as the gRPC port.",
    )
    http_keep_alive_s: float = Field(
        620, gt=0, le=3600,
        description="How long the HTTP port keeps an idle keep-alive connection open. Longer than the clients' and "
        "load balancers' own idle timeouts (GCP's Application Load Balancers keep backend connections 600 s), so "
        "the router is never the side that closes a connection a client is about to reuse (that race ends the "
        "client's next request with a connection reset). uvicorn's default is 5 s.",
    )
    num_replicas: int = Field(1, ge=1, le=64, description="Router replicas (they share the port via SO_REUSEPORT).")
    quota_sync_s: float = Field(
        1.0, gt=0, le=60,
        description="With several router replicas: how often each reports its per-tenant usage and learns the "
        "others' (router/quota_sync.py). Over N replicas a tenant can exceed a limit by at most what the other "
        "replicas admitted within one interval.",
    )
    num_cpus: float = Field(0.25, ge=0, description="Ray CPU bookkeeping per router replica.")
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources a router replica needs, e.g. {gemma-router: 0.001} to keep routers on "
        "the nodes that advertise it (the head pod, where the router Service points) and off GPU workers.",
    )
    max_concurrent_rpcs: int = Field(1024, gt=0, description="RPCs one router replica serves at once.")
    grace_period_s: float = Field(10, ge=0, le=600, description="Drain time for in-flight RPCs at shutdown.")
    drain_notice_s: float = Field(
        2, ge=0, le=120, description="Time health reports NOT_SERVING before new RPCs are refused at shutdown."
    )
    max_request_seconds: float = Field(
        600, gt=0, le=86400, description="Longest any request may run; caps (or stands in for) the client deadline."
    )
    delta_channel_port: int = Field(
        0, ge=0, le=65535,
        description="Port of the router's token-path channel (plain TCP) that replicas push deltas to; 0 picks a "
        "free one. Replicas reach it at this node's Ray address, so it must be open between pods, not outside.",
    )


class TelemetrySettings(Strict):
    """OpenTelemetry tracing and Prometheus metrics."""

    otlp_endpoint: str | None = Field(
        None, description="OTLP/gRPC collector, e.g. http://otel-collector:4317; unset means no trace export."
    )
    sampling_ratio: float = Field(0.1, ge=0, le=1, description="Share of new traces sampled (parents decide first).")
    service_name: str = Field("gemma-serving", min_length=1, description="service.name resource attribute.")
    export_delay_ms: int = Field(5000, gt=0, le=60000, description="Batch span export interval.")
    metrics_port: int = Field(9464, ge=0, le=65535, description="Prometheus scrape port of each router (0 = any).")
    # Engine metrics and quality scores (observability_config.py).
    engine_metrics: bool = Field(
        True,
        description="Export vLLM's own engine metrics (KV cache, queue, preemptions, TTFT/ITL as the engine sees "
        "them) and replica memory through Ray's metrics agent (ray_vllm_*, ray_gemma_serving_replica_*), labelled "
        "by service, model and replica. Off: no export; vLLM computes statistics only for a service whose "
        "autoscaling policy is engine_saturation (else none at all, no per-step stats work).",
    )
    quality: QualitySettings = Field(
        default_factory=QualitySettings, description="Sampled quality scores of finished answers (off by default)."
    )


class ServingConfig(Strict):
    """The whole platform: router, limits and the text / vision / audio services."""

    app_name: str = Field("gemma", pattern=r"^[a-z][a-z0-9-]*$", description="Ray Serve application name.")
    router: RouterSettings = Field(default_factory=RouterSettings, description="gRPC router.")
    limits: RequestLimits = Field(default_factory=RequestLimits, description="Request input limits.")
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings, description="Tracing and metrics.")
    security: SecuritySettings = Field(default_factory=SecuritySettings, description="Auth, tenants, TLS, safety.")
    services: dict[ServiceKind, ServiceConfig] = Field(..., description="Services by kind: text, vision, audio.")

    @model_validator(mode="after")
    def _unique_model_names(self) -> ServingConfig:
        names = [s.model.name for s in self.services.values()]
        if len(names) != len(set(names)):
            raise ValueError(f"model names must be unique across services, got {names}")
        if not self.services:
            raise ValueError("at least one service must be configured")
        with_adapters = [k.value for k, s in self.services.items()
                         if (s.model.adapters or s.model.adapter_registry) and k is not ServiceKind.TEXT]
        if with_adapters:
            raise ValueError(f"LoRA adapters are supported on the text service only, not on {', '.join(with_adapters)}")
        return self

    @model_validator(mode="after")
    def _judge_is_served(self) -> ServingConfig:
        judge = self.telemetry.quality.judge_model
        if judge is not None and self.service_for_model(judge) is None:
            raise ValueError(f"telemetry.quality.judge_model '{judge}' is not a served model")
        return self

    def service_for_model(self, model_name: str) -> ServiceKind | None:
        """The service serving `model_name`, or None."""
        for kind, service in self.services.items():
            if service.model.name == model_name:
                return kind
        return None


def default_config_path() -> Path:
    """The config that `gemma-serving up` uses when none is given: the tiny local models on CPU."""
    return Path(__file__).parent / "configs" / "local.yaml"


def parse_config(data: dict[str, Any]) -> ServingConfig:
    """Validate a config mapping; errors name every bad field."""
    try:
        return ServingConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise InvalidRequest(f"invalid config: {problems}") from None


def load_config(path: str | Path | None = None) -> ServingConfig:
    """Load and validate the YAML config at `path` (default: the local tiny-model config)."""
    path = Path(path) if path else default_config_path()
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise InvalidRequest(f"invalid config {path}: top level must be a mapping")
    return parse_config(data)
