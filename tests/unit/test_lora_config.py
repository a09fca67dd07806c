"""LoRA adapters in the config, the vLLM engine arguments they produce, and adapter source resolution."""

from pathlib import Path

import pytest
from gemma_serving.config import ModelConfig, ServiceKind, load_config, parse_config
from gemma_serving.engines.vllm import engine_args
from gemma_serving.errors import InvalidRequest
from gemma_serving.models import resolve_model_source


def services(text_model: dict, **others) -> dict:
    return {"services": {"text": {"model": {"name": "t", "source": "/m/t", **text_model}}, **others}}


def model(adapters=(), **engine) -> ModelConfig:
    return ModelConfig.model_validate({"name": "m", "source": "/m", "adapters": list(adapters), "engine": engine})


A = {"name": "support-v2", "source": "/adapters/support"}
B = {"name": "legal.v1", "source": "gs://bucket/adapters/legal"}


def test_adapters_are_configured_per_model_with_lora_engine_settings():
    config = parse_config(services({"adapters": [A, B], "engine": {"max_loras": 1, "max_cpu_loras": 3,
                                                                   "max_lora_rank": 64}}))
    text = config.services[ServiceKind.TEXT].model
    assert [(a.name, a.source) for a in text.adapters] == [("support-v2", A["source"]), ("legal.v1", B["source"])]
    assert (text.engine.max_loras, text.engine.max_cpu_loras, text.engine.max_lora_rank) == (1, 3, 64)
    assert parse_config(services({})).services[ServiceKind.TEXT].model.adapters == []


@pytest.mark.parametrize("text_model,others,match", [
    ({"adapters": [A, A]}, {}, "adapter names must be unique"),
    ({"adapters": [{"name": "bad name", "source": "/a"}]}, {}, "adapters.0.name"),
    ({"adapters": [{"name": "x", "source": ""}]}, {}, "adapters.0.source"),
    ({"adapters": [{"name": "x", "source": "/a", "rank": 8}]}, {}, "adapters.0.rank"),
    ({"engine": {"max_loras": 4, "max_cpu_loras": 2}}, {}, "max_cpu_loras must be at least max_loras"),
    ({"engine": {"max_lora_rank": 12}}, {}, "engine.max_lora_rank"),
    ({}, {"vision": {"model": {"name": "v", "source": "/m/v", "adapters": [A]}}}, "text service only, not on vision"),
])
def test_bad_adapter_config_is_refused_naming_the_field(text_model, others, match):
    with pytest.raises(InvalidRequest, match=match):
        parse_config(services(text_model, **others))


def test_no_adapters_leaves_lora_off():
    args = engine_args(model(), "/ckpt", accepts=("text",), cpu=True)
    assert not any("lora" in key for key in args)


def test_adapters_enable_lora_with_the_configured_bounds_on_gpu():
    args = engine_args(model([A, B], max_loras=1, max_cpu_loras=3, max_lora_rank=32), "/ckpt", accepts=("text",))
    assert {k: v for k, v in args.items() if "lora" in k} == {
        "enable_lora": True, "max_loras": 1, "max_cpu_loras": 3, "max_lora_rank": 32}


def test_cpu_keeps_one_adapter_slot_free_so_base_requests_stay_base():
    # vLLM's CPU LoRA ops apply the last slot's adapter to base-model tokens once all slots are full: with one slot
    # more than adapters, the last slot is never filled.
    args = engine_args(model([A, B], max_loras=1, max_cpu_loras=2), "/ckpt", accepts=("text",), cpu=True)
    assert (args["max_loras"], args["max_cpu_loras"]) == (3, 3)
    args = engine_args(model([A], max_loras=4, max_cpu_loras=8), "/ckpt", accepts=("text",), cpu=True)
    assert (args["max_loras"], args["max_cpu_loras"]) == (4, 8)


def test_escape_hatch_still_wins_over_lora_settings():
    args = engine_args(model([A], extra_args={"max_loras": 7, "max_cpu_loras": 7}), "/ckpt", accepts=("text",))
    assert (args["max_loras"], args["max_cpu_loras"]) == (7, 7)


def test_local_config_serves_a_tiny_adapter_on_the_text_model():
    config = load_config()
    text = config.services[ServiceKind.TEXT].model
    assert [(a.name, a.source) for a in text.adapters] == [("tiny-lora", "tiny-lora://text")]
    assert all(not s.model.adapters for k, s in config.services.items() if k is not ServiceKind.TEXT)


def test_bucket_sources_resolve_below_the_gcs_fuse_mount(monkeypatch, tmp_path):
    monkeypatch.delenv("GEMMA_SERVING_GCS_MOUNT", raising=False)
    assert resolve_model_source("gs://my-bucket/adapters/legal/") == Path("/models/adapters/legal")
    monkeypatch.setenv("GEMMA_SERVING_GCS_MOUNT", str(tmp_path))
    assert resolve_model_source("gs://my-bucket/adapters/legal") == tmp_path / "adapters" / "legal"
    assert resolve_model_source(str(tmp_path / "local")) == tmp_path / "local"


def test_unknown_tiny_adapter_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="unknown tiny adapter 'vision'"):
        resolve_model_source("tiny-lora://vision", tmp_path)
