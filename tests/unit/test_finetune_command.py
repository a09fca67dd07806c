"""The `gemma-serving finetune` and `adapters` commands without Ray: a job from the platform config (defaults next
to the registry), in-process training (--no-ray), registration through a real in-process router, and the Ray Train
scaling options."""

from __future__ import annotations

import asyncio
import copy
import json

import grpc
import pytest
import yaml
from gemma_serving.api import inference_pb2 as pb
from gemma_serving.api import inference_pb2_grpc as pb_grpc
from gemma_serving.cli import main
from gemma_serving.config import ServiceKind, parse_config
from gemma_serving.errors import InvalidRequest
from gemma_serving.finetune.command import build_job, default_output
from gemma_serving.finetune.ray_job import scaling_options
from gemma_serving.finetune.settings import WorkerSettings

from tests.unit.conftest import CONFIG, start_router
from tests.unit.test_finetune_training import ANSWER, OVERFIT, PROMPTS
from tests.unit.test_live_adapters import RegistryFakeEngine


def platform(tmp_path, model_source="/m/t"):
    data = copy.deepcopy(CONFIG)
    data["router"]["http_port"] = None
    data["services"]["text"]["model"].update(source=model_source, adapter_registry=str(tmp_path / "registry"))
    return data


def test_job_defaults_to_the_text_model_and_a_directory_next_to_the_registry(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job = build_job(parse_config(platform(tmp_path)), dataset="data.jsonl", adapter="a1")
    assert (job.model_name, job.model_source) == ("text-model", "/m/t")
    assert job.dataset == str(tmp_path / "data.jsonl")  # absolute: workers do not share our working directory
    assert job.output == str(tmp_path / "registry" / "a1")
    assert default_output("gs://bucket/adapters/", "a1") == "gs://bucket/adapters/a1"
    with pytest.raises(InvalidRequest, match="adapters can be trained for the text model only"):
        build_job(parse_config(platform(tmp_path)), dataset="d", adapter="a", model="vision-model")
    with pytest.raises(InvalidRequest, match="--output is required"):
        default_output(None, "a")


def test_scaling_uses_gpus_when_the_cluster_has_them_and_the_accelerator_resource():
    assert scaling_options(WorkerSettings(), cluster_gpus=0) == {
        "num_workers": 1, "use_gpu": False, "resources_per_worker": {"CPU": 1}}
    on_gpus = scaling_options(WorkerSettings(num_workers=2, accelerator_type="nvidia-l4"), cluster_gpus=4)
    assert on_gpus["use_gpu"] is True and on_gpus["num_workers"] == 2
    assert on_gpus["resources_per_worker"] == {"CPU": 1, "GPU": 1, "accelerator:nvidia-l4": 0.001}
    assert scaling_options(WorkerSettings(use_gpu=False), cluster_gpus=4)["use_gpu"] is False


async def test_finetune_command_trains_in_process_and_adapters_register_serves_it(tmp_path, capsys):
    import torch
    from gemma_serving.models.build import build_model

    torch.set_num_threads(1)
    model_dir = build_model("text", tmp_path / "models", lambda _: None)
    data = platform(tmp_path, str(model_dir))
    config_file = tmp_path / "platform.yaml"
    config_file.write_text(yaml.safe_dump(data))
    dataset = tmp_path / "data.jsonl"
    dataset.write_text("".join(json.dumps({"messages": [{"role": "user", "content": p},
                                                        {"role": "assistant", "content": ANSWER}]}) + "\n"
                               for p in PROMPTS))
    settings = tmp_path / "ft.yaml"
    settings.write_text("training: {epochs: 2}\n")
    args = ["finetune", "--config", str(config_file), "--dataset", str(dataset), "--adapter", "secret",
            "--settings", str(settings), *[f"--set={o}" for o in OVERFIT if "epochs" not in o], "--no-ray",
            "--no-register"]
    assert await asyncio.to_thread(main, args) == 0
    out = capsys.readouterr().out
    assert "[finetune] step 4/4" in out and "secret: 4 steps on cpu, loss" in out
    adapter = tmp_path / "registry" / "secret"
    assert (adapter / "adapter_model.safetensors").is_file()

    router, backend = await start_router(parse_config(data), lambda: RegistryFakeEngine())
    target = f"127.0.0.1:{router.port}"
    try:
        assert await asyncio.to_thread(main, ["adapters", "register", "secret", str(adapter), "--target", target]) == 0
        assert "registered adapter secret of text-model" in capsys.readouterr().out
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.InferenceStub(channel)
            await stub.Generate(pb.GenerateRequest(model="text-model", adapter="secret",
                                                   messages=[pb.Message(role="user", parts=[pb.Part(text="hi")])]))
        assert backend.engines[ServiceKind.TEXT].events[0][:2] == ("load", "secret")
        assert await asyncio.to_thread(main, ["adapters", "list", "--target", target]) == 0
        assert "text-model: secret" in capsys.readouterr().out
        assert await asyncio.to_thread(main, ["adapters", "unregister", "secret", "--target", target]) == 0
        assert await asyncio.to_thread(main, ["adapters", "unregister", "secret", "--target", target]) == 1
        assert "error: NOT_FOUND: adapter 'secret' is not registered" in capsys.readouterr().err
    finally:
        await router.drain_and_stop(0)


def test_the_ray_train_job_runs_in_ray_trains_local_mode_and_returns_the_report(tmp_path, capsys):
    # Ray Train's local mode (num_workers 0) runs the real TorchTrainer, ray.train.report and get_context in this
    # process, without a cluster: the same worker function and result path as on the cluster.
    pytest.importorskip("ray.train", reason="ray[train] is not installed", exc_type=ImportError)
    import torch
    from gemma_serving.finetune.ray_job import fit
    from gemma_serving.models.build import build_model

    torch.set_num_threads(1)
    dataset = tmp_path / "data.jsonl"
    dataset.write_text(json.dumps({"messages": [{"role": "user", "content": "q"},
                                                {"role": "assistant", "content": ANSWER}]}) + "\n")
    job = build_job(parse_config(platform(tmp_path, str(build_model("text", tmp_path / "m", lambda _: None)))),
                    dataset=str(dataset), adapter="w", settings=None)
    job = job.model_copy(update={"settings": job.settings.model_validate(
        {"training": {"epochs": 3, "gradient_accumulation_steps": 1, "warmup_steps": 0},
         "workers": {"storage_path": str(tmp_path / "runs")}})})
    report = fit(job, {"num_workers": 0})
    assert report.steps == 3 and len(report.losses) == 3
    assert (tmp_path / "registry" / "w" / "adapter_model.safetensors").is_file()
    out = capsys.readouterr().out
    assert "Ray Train job finetune-w-" in out and "[finetune] w: step 3/3" in out


def test_the_job_joins_the_given_cluster_then_ray_address_then_the_local_platform(tmp_path, monkeypatch):
    import os

    from gemma_serving.finetune.ray_job import cluster_address
    from gemma_serving.local import RAY_ADDRESS_FILE

    monkeypatch.setenv("GEMMA_SERVING_RUN_DIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cluster_address() == "auto"  # no platform running here
    (tmp_path / RAY_ADDRESS_FILE).write_text("10.0.0.5:6379\n")
    (tmp_path / "serve.pid").write_text(str(os.getpid()))  # a live process stands in for `gemma-serving serve`
    assert cluster_address() == "10.0.0.5:6379"
    monkeypatch.setenv("RAY_ADDRESS", "ray-head:6379")
    assert cluster_address() == "ray-head:6379"
    assert cluster_address("other:6379") == "other:6379"


async def test_the_demo_step_trains_registers_and_asks_base_and_adapter(tmp_path, monkeypatch, capsys):
    # The flow of `gemma-serving demo`'s last step against a real in-process router (training in-process here;
    # the demo itself runs it as a Ray Train job). FakeEngine does not apply adapters: the learning itself is
    # proven by test_finetune_training.py and tests/integration/test_finetune.py.
    import torch
    from gemma_serving.finetune.command import DEMO_ADAPTER, DEMO_PROMPTS, demo_finetune
    from gemma_serving.models.build import build_model

    torch.set_num_threads(1)
    monkeypatch.setenv("GEMMA_SERVING_RUN_DIR", str(tmp_path / "run"))
    config = parse_config(platform(tmp_path, str(build_model("text", tmp_path / "m", lambda _: None))))
    router, backend = await start_router(config, lambda: RegistryFakeEngine())
    try:
        await asyncio.to_thread(demo_finetune, config, f"127.0.0.1:{router.port}", 8, use_ray=False)
    finally:
        await router.drain_and_stop(0)
    engine = backend.engines[ServiceKind.TEXT]
    assert engine.events[0][:2] == ("load", DEMO_ADAPTER)
    assert [r.adapter for r in engine.seen] == ["", DEMO_ADAPTER]
    assert all(r.sampling.temperature == 0.0 for r in engine.seen)
    out = capsys.readouterr().out
    assert f"registered adapter {DEMO_ADAPTER} live" in out and "base text-model:" in out
    assert f"with adapter {DEMO_ADAPTER}:" in out
    lines = (tmp_path / "run" / "demo" / "finetune.jsonl").read_text().splitlines()
    assert [json.loads(line)["messages"][0]["content"] for line in lines] == list(DEMO_PROMPTS)
