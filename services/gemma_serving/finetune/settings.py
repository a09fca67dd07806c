"""Typed fine-tuning settings: LoRA, training and Ray Train workers.

Defaults are the Gemma guide's LoRA SFT recipe (r 16, alpha 32, dropout 0.1, the seven attention/MLP projections,
lr 2e-5, batch 2 x 8 accumulation, 3 epochs, 100 warm-up steps, max length 2048). Every value is overridable from a
YAML file (`gemma-serving finetune --settings`) or dotted overrides (`--set training.epochs=30`).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gemma_serving.config import ADAPTER_NAME_PATTERN
from gemma_serving.errors import InvalidRequest

GUIDE_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoraSettings(_Strict):
    """The LoRA adapter's shape (peft LoraConfig)."""

    rank: int = Field(16, ge=1, le=512, description="LoRA rank r; must not exceed the engine's max_lora_rank.")
    alpha: float = Field(32, gt=0, description="LoRA alpha; the update is scaled by alpha / rank.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout on the LoRA input during training.")
    target_modules: tuple[str, ...] = Field(
        GUIDE_TARGET_MODULES, min_length=1, description="Module names that get LoRA layers (attention and MLP)."
    )


class TrainingSettings(_Strict):
    """The optimisation (transformers TrainingArguments)."""

    learning_rate: float = Field(2e-5, gt=0, le=1, description="Peak learning rate (AdamW).")
    batch_size: int = Field(2, ge=1, le=1024, description="Conversations per device per step.")
    gradient_accumulation_steps: int = Field(8, ge=1, le=1024, description="Steps accumulated per optimizer step.")
    epochs: float = Field(3, gt=0, le=10000, description="Passes over the dataset.")
    warmup_steps: int = Field(100, ge=0, description="Linear learning-rate warm-up (optimizer steps).")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "linear", description="Learning-rate schedule after warm-up."
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_length: int = Field(2048, ge=16, le=131072, description="Tokens per conversation; longer ones are cut.")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="auto: bf16 on GPUs that support it, fp32 on CPU."
    )
    gradient_checkpointing: bool = Field(False, description="Trade compute for activation memory (large models).")
    seed: int = Field(0, ge=0, description="Seed of LoRA initialisation, dropout and data order.")


class WorkerSettings(_Strict):
    """Where the Ray Train job runs."""

    num_workers: int = Field(1, ge=1, le=256, description="Training workers (data parallel, one device each).")
    use_gpu: bool | Literal["auto"] = Field(
        "auto", description="auto: one GPU per worker when the cluster has GPUs; false trains on CPUs."
    )
    cpus_per_worker: float = Field(1, ge=0, description="Ray CPU bookkeeping per worker.")
    accelerator_type: str | None = Field(
        None, description="GKE accelerator the workers must land on (e.g. nvidia-l4); None places anywhere."
    )
    storage_path: str | None = Field(
        None, description="Ray Train run storage (a shared path on multi-node clusters); None: Ray's default."
    )


class FinetuneSettings(_Strict):
    """Everything a fine-tuning run takes besides the model, the dataset and the adapter name."""

    lora: LoraSettings = Field(default_factory=LoraSettings, description="Adapter shape.")
    training: TrainingSettings = Field(default_factory=TrainingSettings, description="Optimisation.")
    workers: WorkerSettings = Field(default_factory=WorkerSettings, description="Ray Train placement.")


def parse_settings(data: dict[str, Any] | None = None, overrides: list[str] = ()) -> FinetuneSettings:
    """Validate settings from a mapping plus `key.path=value` overrides (values parsed as YAML scalars)."""
    merged: dict[str, Any] = copy.deepcopy(data or {})
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise InvalidRequest(f"override must look like section.field=value, got '{item[:80]}'")
        *sections, leaf = key.strip().split(".")
        node = merged
        for section in sections:
            node = node.setdefault(section, {})
            if not isinstance(node, dict):
                raise InvalidRequest(f"override {key}: {section} is not a section")
        node[leaf] = yaml.safe_load(raw)
    try:
        return FinetuneSettings.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise InvalidRequest(f"invalid fine-tuning settings: {problems}") from None


def load_settings(path: str | Path | None = None, overrides: list[str] = ()) -> FinetuneSettings:
    """Settings from the YAML file at `path` (or the defaults) with `overrides` applied on top."""
    data: dict[str, Any] = {}
    if path:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, dict):
            raise InvalidRequest(f"invalid fine-tuning settings {path}: top level must be a mapping")
    return parse_settings(data, overrides)


class FinetuneJob(_Strict):
    """One fine-tuning run: which model, which data, which adapter, where it goes, how it trains."""

    model_name: str = Field(..., min_length=1, description="The served model the adapter is for (config name).")
    model_source: str = Field(
        ..., min_length=1, description="Its checkpoint (a local path, gs://... through the GCS FUSE mount, tiny://).",
    )
    dataset: str = Field(..., min_length=1, description="JSONL conversations: a local path or gs://... (mount).")
    adapter_name: str = Field(
        ..., pattern=ADAPTER_NAME_PATTERN, description="Name the adapter is registered under."
    )
    output: str = Field(
        ..., min_length=1, description="Adapter directory to write: a local path or gs://<bucket>/<path> (mount)."
    )
    overwrite: bool = Field(False, description="Replace an existing adapter directory at `output`.")
    settings: FinetuneSettings = Field(default_factory=FinetuneSettings, description="LoRA, training, workers.")
