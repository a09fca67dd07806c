import pytest
from gemma_serving.config import ModelConfig, parse_config
from gemma_serving.engines.vllm import engine_args
from gemma_serving.errors import InvalidRequest


def model(**engine):
    return ModelConfig.model_validate({"name": "m", "source": "/m", "engine": engine})


def test_typed_settings_reach_the_engine_and_the_escape_hatch_wins():
    args = engine_args(model(dtype="bfloat16", quantization="fp8", kv_cache_dtype="fp8", max_num_seqs=8,
                             extra_args={"max_num_seqs": 4, "seed": 1}), "/ckpt", accepts=("text", "image"))
    assert (args["dtype"], args["quantization"], args["kv_cache_dtype"]) == ("bfloat16", "fp8", "fp8")
    assert args["max_num_seqs"] == 4 and args["seed"] == 1
    assert args["limit_mm_per_prompt"] == {"image": 4}
    assert "limit_mm_per_prompt" not in engine_args(model(), "/ckpt", accepts=("text",))


@pytest.mark.parametrize("field,value", [("quantization", "int3"), ("dtype", "float8"), ("kv_cache_dtype", "int8")])
def test_unknown_precisions_are_rejected(field, value):
    with pytest.raises(InvalidRequest, match=f"engine.{field}"):
        parse_config({"services": {"text": {"model": {"name": "m", "source": "/m", "engine": {field: value}}}}})
