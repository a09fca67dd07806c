"""`gemma-serving finetune` and the demo's fine-tuning step: build the job from the platform config, run it on the
cluster, register the adapter on the running platform."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from gemma_serving.config import ServiceKind, ServingConfig
from gemma_serving.errors import InvalidRequest
from gemma_serving.finetune.settings import FinetuneJob, FinetuneSettings, load_settings, parse_settings
from gemma_serving.finetune.training import TrainingReport

GCS = "gs://"
#: The demo teaches the tiny random-weight model one answer to a few phrasings of one question.
DEMO_ADAPTER = "demo-answer"
DEMO_ANSWER = "I am Gemma, fine-tuned on this cluster a minute ago."
DEMO_PROMPTS = ("Who are you?", "Tell me who you are.", "Who am I talking to?", "What are you?",
                "Introduce yourself.", "Say who you are, please.")
#: Overfit on purpose: few examples, a high learning rate, no warm-up, no dropout (tens of seconds on CPU).
DEMO_OVERRIDES = ("training.learning_rate=5e-3", "training.epochs=12", "training.gradient_accumulation_steps=1",
                  "training.warmup_steps=0", "training.lr_scheduler=constant", "lora.dropout=0",
                  "workers.cpus_per_worker=0.5")


def text_model(config: ServingConfig, name: str | None):
    """The model to fine-tune: `name`, or the text service's model (LoRA is served on text models only)."""
    service = config.services.get(ServiceKind.TEXT)
    if service is None or (name and service.model.name != name):
        raise InvalidRequest(f"adapters can be trained for the text model only "
                             f"({service.model.name if service else 'none configured'}), got {name}")
    return service.model


def default_output(registry: str | None, adapter: str) -> str:
    """Where an adapter goes by default: `<registry>/<adapter>` (a local path or gs://)."""
    if not registry:
        raise InvalidRequest("--output is required: the model has no adapter_registry to write next to")
    if registry.startswith(GCS):
        return f"{registry.rstrip('/')}/{adapter}"
    return str(Path(registry).expanduser() / adapter)


def build_job(config: ServingConfig, *, dataset: str, adapter: str, model: str | None = None,
              output: str | None = None, settings: FinetuneSettings | None = None,
              overwrite: bool = False) -> FinetuneJob:
    """A FinetuneJob for `adapter` of the config's text model (paths made absolute: workers run elsewhere)."""
    served = text_model(config, model)
    if not dataset.startswith(GCS):
        dataset = str(Path(dataset).expanduser().resolve())
    output = output or default_output(served.adapter_registry, adapter)
    if not output.startswith(GCS):
        output = str(Path(output).expanduser().resolve())
    return FinetuneJob(model_name=served.name, model_source=served.source, dataset=dataset, adapter_name=adapter,
                       output=output, overwrite=overwrite, settings=settings or FinetuneSettings())


def train(job: FinetuneJob, *, use_ray: bool = True, address: str | None = None) -> TrainingReport:
    """Run `job` (a Ray Train job on the cluster, or in this process) and print the loss summary."""
    began = time.monotonic()
    if use_ray:
        from gemma_serving.finetune.ray_job import run_finetune

        report = run_finetune(job, address=address)
    else:
        from gemma_serving.finetune.training import train_adapter

        report = train_adapter(job)
    first, last = (report.losses[0], report.losses[-1]) if report.losses else (0.0, 0.0)
    print(f"[finetune] {job.adapter_name}: {report.steps} steps on {report.device}, loss {first:.3f} -> {last:.3f} "
          f"(fell {report.loss_factor:.2f}x), training {report.wall_s:.1f} s, job {time.monotonic() - began:.1f} s; "
          f"adapter at {job.output}", flush=True)
    return report


def finetune_command(args, config: ServingConfig) -> int:
    """The `gemma-serving finetune` command (arguments: see cli.build_parser)."""
    settings = load_settings(args.settings, args.set)
    job = build_job(config, dataset=args.dataset, adapter=args.adapter, model=args.model, output=args.output,
                    settings=settings, overwrite=args.overwrite)
    train(job, use_ray=not args.no_ray, address=args.address)
    if args.no_register or not text_model(config, job.model_name).adapter_registry:
        print(f"[finetune] not registered; register with: gemma-serving adapters register {job.adapter_name} "
              f"{job.output}")
        return 0
    from gemma_serving.client import GemmaClient

    with GemmaClient(args.target, api_key=os.environ.get(args.api_key_env) or None) as client:
        entry = client.register_adapter(job.model_name, job.adapter_name, job.output, replace=args.replace)
    print(f"[finetune] registered adapter {entry.name} of {job.model_name} (LoRA id {entry.lora_id}); try: "
          f"gemma-serving generate \"...\" --adapter {entry.name}")
    return 0


def demo_finetune(config: ServingConfig, target: str, max_tokens: int, *, use_ray: bool = True,
                  client_options: dict | None = None) -> None:
    """The demo's last step: fine-tune the text model on one answer, register it, ask base and adapter.
    `client_options`: how to reach the router (TLS, key), as the demo's other requests do."""
    from gemma_serving.client import GemmaClient, message

    served = text_model(config, None)
    data = Path(os.environ.get("GEMMA_SERVING_RUN_DIR", Path.home() / ".cache" / "gemma-serving")) / "demo"
    data.mkdir(parents=True, exist_ok=True)
    dataset = data / "finetune.jsonl"
    dataset.write_text("".join(json.dumps({"messages": [{"role": "user", "content": p},
                                                        {"role": "assistant", "content": DEMO_ANSWER}]}) + "\n"
                               for p in DEMO_PROMPTS), encoding="utf-8")
    print(f"--- fine-tune: LoRA on {served.name}, {len(DEMO_PROMPTS)} conversations with one answer, as a Ray Train "
          "job on this cluster ...", flush=True)
    job = build_job(config, dataset=str(dataset), adapter=DEMO_ADAPTER, settings=parse_settings(
        overrides=list(DEMO_OVERRIDES)), overwrite=True)
    train(job, use_ray=use_ray)
    question = [message(DEMO_PROMPTS[0])]
    with GemmaClient(target, **(client_options or {})) as client:
        entry = client.register_adapter(served.name, DEMO_ADAPTER, job.output, replace=True)
        print(f"--- registered adapter {entry.name} live (no restart); asking \"{DEMO_PROMPTS[0]}\" greedily:")
        base = client.generate(served.name, question, max_tokens=max_tokens, temperature=0.0)
        tuned = client.generate(served.name, question, max_tokens=max_tokens, temperature=0.0, adapter=DEMO_ADAPTER)
    print(f"base {served.name}:     {base.text!r}")
    print(f"with adapter {DEMO_ADAPTER}: {tuned.text!r}")
