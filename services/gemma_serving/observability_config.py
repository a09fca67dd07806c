"""Typed configuration of what the platform observes about itself: engine metrics, the engine-saturation autoscaling
signal, the short-generation health probe and sampled quality scoring. Part of the one config file."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SaturationTargets(_Strict):
    """What the `engine_saturation` autoscaling policy aims at per replica (vLLM's own scheduler statistics)."""

    kv_cache_usage: float = Field(
        0.8, gt=0, le=1,
        description="Mean KV-cache usage (0..1, vLLM's kv_cache_usage_perc) the replicas should run at; above it "
        "the service scales up in proportion.",
    )
    waiting_requests: float = Field(
        2, gt=0,
        description="Requests waiting in an engine's scheduler (admitted by Serve, not yet running) per replica "
        "the service tolerates; above it the service scales up in proportion.",
    )


class HealthProbeSettings(_Strict):
    """The replica's short generation probe: timed on the engine directly, so it never queues behind user requests
    at Serve; slower than `degraded_after_s` is DEGRADED (still serving), failing is NOT_SERVING."""

    enabled: bool = Field(True, description="Probe with a short generation (off: health is the engine check only).")
    interval_s: float = Field(10, gt=0, le=3600, description="Least time between two probes of one replica.")
    max_tokens: int = Field(4, ge=1, le=64, description="Tokens the probe generates (greedy, from a fixed prompt).")
    degraded_after_s: float = Field(
        5, gt=0, le=600,
        description="A probe slower than this marks the service DEGRADED (the Gemma guide's 5 s for a short "
        "generation); also applies to a probe still running after this long.",
    )
    timeout_s: float = Field(
        60, gt=0, le=3600, description="A probe still running after this long counts as failed (NOT_SERVING)."
    )

    @model_validator(mode="after")
    def _timeout_after_threshold(self) -> HealthProbeSettings:
        if self.timeout_s <= self.degraded_after_s:
            raise ValueError("timeout_s must be larger than degraded_after_s")
        return self


class QualitySettings(_Strict):
    """Sampled quality scores of live answers, computed off the token path after a request finished."""

    sample_ratio: float = Field(
        0, ge=0, le=1, description="Share of finished answers scored (0 = off, and costs nothing per request)."
    )
    sample_ratio_by_model: dict[str, float] = Field(
        default_factory=dict,
        description="Per-model (or 'model:adapter') share overriding sample_ratio, e.g. {gemma-3-4b-it:tiny-lora: 1}.",
    )
    scorers: list[Literal["repetition", "length", "blocked_terms", "json_valid", "judge"]] = Field(
        default_factory=lambda: ["repetition", "length", "blocked_terms", "json_valid"],
        description="Scorers run on each sampled answer. 'judge' asks a served model to grade the answer (costs a "
        "generation per sample).",
    )
    blocked_terms: list[str] = Field(
        default_factory=list, description="Case-insensitive terms the blocked_terms scorer counts in answers."
    )
    judge_model: str | None = Field(
        None, description="Served model that grades answers for the 'judge' scorer (required when it is listed)."
    )
    judge_max_tokens: int = Field(8, ge=1, le=64, description="Tokens the judge may answer with (a 1-5 grade).")
    queue_size: int = Field(
        256, ge=1, le=100_000, description="Sampled answers waiting for scoring; beyond it new samples are dropped."
    )

    @model_validator(mode="after")
    def _judge_needs_a_model(self) -> QualitySettings:
        if "judge" in self.scorers and not self.judge_model:
            raise ValueError("the 'judge' scorer needs judge_model")
        bad = {k: v for k, v in self.sample_ratio_by_model.items() if not 0 <= v <= 1}
        if bad:
            raise ValueError(f"sample_ratio_by_model values must be 0..1, got {bad}")
        return self

    def ratio_for(self, model: str, adapter: str = "") -> float:
        """The sampling share of answers of `model` (with `adapter`, when one was used)."""
        if adapter and f"{model}:{adapter}" in self.sample_ratio_by_model:
            return self.sample_ratio_by_model[f"{model}:{adapter}"]
        return self.sample_ratio_by_model.get(model, self.sample_ratio)
