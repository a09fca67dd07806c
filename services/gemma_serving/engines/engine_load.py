"""EngineLoad: the latest scheduler statistics of a vLLM engine (running and waiting requests, KV-cache usage).

vLLM hands every engine step's SchedulerStats to its stat loggers (`AsyncLLM(stat_loggers=...)`, the documented
extension point); `EngineLoadTracker.stat_logger` is one that keeps only the last values, for the autoscaler and the
metrics snapshot. It costs one attribute write per engine step, nothing per token.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class EngineLoad:
    """What the engine's scheduler saw at its last step."""

    running: int
    waiting: int
    kv_cache_usage: float
    at: float

    def as_stats(self) -> dict[str, float]:
        """The numbers as Ray Serve custom autoscaling metrics (names used by `deployments/autoscaling.py`)."""
        return {k: float(v) for k, v in asdict(self).items() if k != "at"}


class EngineLoadTracker:
    """Holds the last EngineLoad of one engine; `stat_logger()` is the vLLM stat logger factory that feeds it."""

    def __init__(self) -> None:
        self.latest: EngineLoad | None = None

    def update(self, running: int, waiting: int, kv_cache_usage: float) -> None:
        self.latest = EngineLoad(running, waiting, kv_cache_usage, time.monotonic())

    def stat_logger(self) -> Any:
        """A vLLM per-engine stat logger factory (called with vllm_config, engine_index) that feeds this tracker."""
        from vllm.v1.metrics.loggers import StatLoggerBase

        tracker = self

        class EngineLoadLogger(StatLoggerBase):
            def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
                self.engine_index = engine_index

            def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0) -> None:
                if scheduler_stats is not None:
                    waiting = scheduler_stats.num_waiting_reqs + scheduler_stats.num_skipped_waiting_reqs
                    tracker.update(scheduler_stats.num_running_reqs, waiting, scheduler_stats.kv_cache_usage)

            def log_engine_initialized(self) -> None:
                pass

        return EngineLoadLogger
