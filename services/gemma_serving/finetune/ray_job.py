"""Fine-tuning as a Ray Train job on the platform's Ray cluster.

`run_finetune` connects to the running cluster (the local `gemma-serving up` cluster, `RAY_ADDRESS`, or the
cluster of a KubeRay RayJob), starts a `TorchTrainer` whose workers run `train_adapter` (one GPU each where the
cluster has GPUs, CPUs elsewhere), and returns the first worker's TrainingReport. Each worker reports every
optimizer step through `ray.train.report` (step, loss, ETA); the first worker also prints it, which Ray forwards
to the driver's console.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from gemma_serving.errors import GemmaServingError
from gemma_serving.finetune.settings import FinetuneJob, WorkerSettings
from gemma_serving.finetune.training import StepProgress, TrainingReport


def scaling_options(workers: WorkerSettings, cluster_gpus: float) -> dict[str, Any]:
    """ray.train.ScalingConfig fields for `workers` on a cluster with `cluster_gpus` GPUs."""
    use_gpu = cluster_gpus >= 1 if workers.use_gpu == "auto" else workers.use_gpu
    options: dict[str, Any] = {
        "num_workers": workers.num_workers,
        "use_gpu": use_gpu,
        "resources_per_worker": {"CPU": workers.cpus_per_worker, **({"GPU": 1} if use_gpu else {})},
    }
    if workers.accelerator_type:
        # The chart's worker groups advertise accelerator:<type> (as for the serving replicas).
        options["resources_per_worker"][f"accelerator:{workers.accelerator_type}"] = 0.001
    return options


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    """What each Ray Train worker runs: `train_adapter`, reporting every step to Ray Train."""
    import ray.train

    from gemma_serving.finetune.training import train_adapter

    job = FinetuneJob.model_validate(config["job"])
    first = ray.train.get_context().get_world_rank() == 0

    def progress(step: StepProgress) -> None:
        # Every worker reports (Ray Train synchronises reports across workers); the first one prints.
        ray.train.report({"step": step.step, "total_steps": step.total_steps, "loss": step.loss,
                          "epoch": step.epoch, "eta_s": step.eta_s})
        if first:  # straight to stdout (Ray forwards it to the driver); Train's print patch would only log it
            sys.stdout.write(f"[finetune] {job.adapter_name}: {step.line()}\n")
            sys.stdout.flush()

    return asdict(train_adapter(job, progress))


#: Where Ray keeps the token of a token-authenticated cluster started on this machine.
RAY_TOKEN_FILE = Path.home() / ".ray" / "auth_token"


def use_local_ray_token() -> None:
    """Ray 2.60 starts local clusters with token authentication (the token in ~/.ray/auth_token): a driver joining one
    must say so (RAY_AUTH_MODE=token) before Ray's core library is loaded, or it sends no token and is refused."""
    if "RAY_AUTH_MODE" not in os.environ and RAY_TOKEN_FILE.is_file():
        os.environ["RAY_AUTH_MODE"] = "token"


def cluster_address(address: str | None = None) -> str:
    """Which Ray cluster to join: `address`, else RAY_ADDRESS (set inside a KubeRay RayJob), else the cluster of
    `gemma-serving up` on this machine, else Ray's own discovery ("auto": a `ray start` cluster)."""
    from gemma_serving.local import local_ray_address

    return address or os.environ.get("RAY_ADDRESS") or local_ray_address() or "auto"


def connect(address: str | None = None) -> None:
    """Join the running Ray cluster (see `cluster_address`) unless this process is connected already."""
    use_local_ray_token()
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address=cluster_address(address), logging_level="WARNING")


def run_finetune(job: FinetuneJob, *, address: str | None = None) -> TrainingReport:
    """Run `job` as a Ray Train job on the cluster and return the first worker's report."""
    import ray

    connect(address)
    return fit(job, scaling_options(job.settings.workers, ray.cluster_resources().get("GPU", 0)))


def fit(job: FinetuneJob, scaling: dict[str, Any]) -> TrainingReport:
    """Fit a TorchTrainer over `train_loop_per_worker` with ScalingConfig fields `scaling` (num_workers 0 is Ray
    Train's local mode: the function runs in this process, no cluster)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    name = f"finetune-{job.adapter_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"[finetune] {job.adapter_name}: Ray Train job {name}, {scaling['num_workers']} worker(s) on "
          f"{'GPU' if scaling.get('use_gpu') else 'CPU'}", flush=True)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": job.model_dump(mode="json")},
        scaling_config=ScalingConfig(**scaling),
        run_config=RunConfig(name=name, storage_path=job.settings.workers.storage_path),
    )
    result = trainer.fit()
    if result.error is not None or not result.return_value:
        raise GemmaServingError(f"fine-tuning job {name} failed: {type(result.error).__name__}")
    return TrainingReport(**result.return_value)
