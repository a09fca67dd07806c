"""The per-worker training function: LoRA SFT with peft and transformers.Trainer, written as a PEFT adapter.

`train_adapter` runs anywhere torch runs: in a Ray Train worker (`ray_job.py`, one process per worker, data
parallel when there are several) or in-process (unit tests). It reports each optimizer step (step, loss, ETA) to a
progress callback and writes `adapter_config.json` + `adapter_model.safetensors` (plus `training_report.json`) to
the job's output on the first worker. No prompt or answer text is ever logged.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gemma_serving.errors import InvalidRequest
from gemma_serving.finetune.dataset import IGNORE_INDEX, TokenizedConversation, load_conversations, tokenize_dataset
from gemma_serving.finetune.settings import FinetuneJob

log = logging.getLogger(__name__)

REPORT_FILE = "training_report.json"


@dataclass(frozen=True)
class StepProgress:
    """One optimizer step, as reported to the progress callback."""

    step: int
    total_steps: int
    loss: float
    epoch: float
    elapsed_s: float
    eta_s: float

    def line(self) -> str:
        """A one-line progress message."""
        return (f"step {self.step}/{self.total_steps}  loss {self.loss:.4f}  epoch {self.epoch:.2f}  "
                f"elapsed {self.elapsed_s:.1f} s  eta {self.eta_s:.1f} s")


@dataclass
class TrainingReport:
    """What a run did: the loss of every optimizer step, the time it took, where the adapter went."""

    adapter_dir: str
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    examples: int = 0
    trained_tokens: int = 0
    wall_s: float = 0.0
    device: str = "cpu"

    @property
    def loss_factor(self) -> float:
        """First logged loss over the last one (how far the loss fell)."""
        return self.losses[0] / max(self.losses[-1], 1e-12) if self.losses else 1.0


def local_path(source: str) -> Path:
    """A local path for a source string (gs://... maps to the GCS FUSE mount; tiny:// builds the test model)."""
    from gemma_serving.models import resolve_model_source

    return Path(resolve_model_source(source, progress=lambda msg: log.info("model build: %s", msg)))


class _Examples:
    """A map-style dataset over tokenized conversations (what Trainer's data loader indexes)."""

    def __init__(self, rows: Sequence[TokenizedConversation]) -> None:
        self._rows = rows

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return {"input_ids": self._rows[i].input_ids, "labels": self._rows[i].labels}


def pad_batch(pad_id: int) -> Callable[[list[dict[str, list[int]]]], dict[str, Any]]:
    """Collator: right-pad ids with `pad_id`, labels with IGNORE_INDEX, and build the attention mask."""
    import torch

    def collate(rows: list[dict[str, list[int]]]) -> dict[str, Any]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = [r["input_ids"] + [pad_id] * (width - len(r["input_ids"])) for r in rows]
        labels = [r["labels"] + [IGNORE_INDEX] * (width - len(r["labels"])) for r in rows]
        mask = [[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in rows]
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "attention_mask": torch.tensor(mask)}

    return collate


def _progress_callback(progress: Callable[[StepProgress], None], report: TrainingReport, began: float):
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        """Turns Trainer's per-step logs into StepProgress (and records the loss curve)."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs:
                return
            loss = float(logs["loss"])
            report.losses.append(loss)
            elapsed = time.monotonic() - began
            step, total = state.global_step, max(state.max_steps, 1)
            eta = elapsed / max(step, 1) * (total - step)
            progress(StepProgress(step, total, loss, float(state.epoch or 0.0), elapsed, eta))

    return ProgressCallback()


def train_adapter(job: FinetuneJob, progress: Callable[[StepProgress], None] | None = None) -> TrainingReport:
    """Fine-tune a LoRA adapter of `job.model_source` on `job.dataset` and write it to `job.output`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, Trainer, TrainingArguments

    began = time.monotonic()
    progress = progress or (lambda p: print(f"[finetune] {p.line()}", flush=True))
    output = local_path(job.output)
    if output.exists() and any(output.iterdir()) and not job.overwrite:
        raise InvalidRequest(f"adapter output {job.output} already exists; choose another or set overwrite")
    lora, training = job.settings.lora, job.settings.training
    model_dir = local_path(job.model_source)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    rows = tokenize_dataset(tokenizer, load_conversations(local_path(job.dataset)), training.max_length)
    cuda = torch.cuda.is_available()
    bf16 = training.precision == "bf16" or (training.precision == "auto" and cuda and torch.cuda.is_bf16_supported())
    torch.manual_seed(training.seed)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.bfloat16 if bf16 else torch.float32)
    model = get_peft_model(model, LoraConfig(
        r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias="none", task_type="CAUSAL_LM",
        target_modules=list(lora.target_modules),
    ))
    report = TrainingReport(adapter_dir=str(output), examples=len(rows), device="cuda" if cuda else "cpu",
                            trained_tokens=sum(sum(label != IGNORE_INDEX for label in r.labels) for r in rows))
    with tempfile.TemporaryDirectory(prefix="gemma-finetune-") as scratch:
        args = TrainingArguments(
            output_dir=scratch, per_device_train_batch_size=training.batch_size,
            gradient_accumulation_steps=training.gradient_accumulation_steps, num_train_epochs=training.epochs,
            learning_rate=training.learning_rate, warmup_steps=training.warmup_steps,
            lr_scheduler_type=training.lr_scheduler, weight_decay=training.weight_decay, bf16=bf16,
            gradient_checkpointing=training.gradient_checkpointing,
            # Non-reentrant checkpointing works with frozen base weights (no input-grad hook needed for LoRA).
            gradient_checkpointing_kwargs={"use_reentrant": False}, seed=training.seed, data_seed=training.seed,
            logging_steps=1, save_strategy="no", report_to=[], disable_tqdm=True, remove_unused_columns=False,
            dataloader_pin_memory=False, use_cpu=not cuda,
        )
        trainer = Trainer(model=model, args=args, train_dataset=_Examples(rows),
                          data_collator=pad_batch(tokenizer.pad_token_id or 0),
                          callbacks=[_progress_callback(progress, report, began)])
        trainer.remove_callback(PrinterCallback)  # it prints raw log dicts; progress lines replace it
        trainer.train()
        report.steps = trainer.state.global_step
        report.wall_s = time.monotonic() - began
        if trainer.is_world_process_zero():
            _save(model, output, job, report)
    return report


def _save(model: Any, output: Path, job: FinetuneJob, report: TrainingReport) -> None:
    """Write the PEFT adapter directory (safetensors) and the run's report next to it."""
    if output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True)
    model.save_pretrained(str(output), safe_serialization=True)
    config_file = output / "adapter_config.json"
    saved = json.loads(config_file.read_text(encoding="utf-8"))
    saved["base_model_name_or_path"] = job.model_name
    saved["target_modules"] = sorted(saved["target_modules"])  # peft writes a set: keep the bytes stable
    config_file.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    facts = {**asdict(report), "model": job.model_name, "adapter": job.adapter_name,
             "settings": job.settings.model_dump(mode="json")}
    (output / REPORT_FILE).write_text(json.dumps(facts, indent=2) + "\n", encoding="utf-8")
    log.info("adapter %s of %s written to %s (%d steps, loss %.4f -> %.4f)", job.adapter_name, job.model_name,
             output, report.steps, report.losses[0] if report.losses else 0, report.losses[-1] if report.losses else 0)
