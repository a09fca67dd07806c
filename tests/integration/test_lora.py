"""LoRA adapters end to end: gRPC client -> router -> Serve (adapter as the multiplexed model id) -> text replica
-> vLLM with the tiny peft-built adapter (configs/local.yaml: `tiny-lora` on gemma-3-tiny)."""

import grpc
import pytest
from gemma_serving.api import inference_pb2 as pb
from gemma_serving.client import message

TEXT_MODEL = "gemma-3-tiny"
ADAPTER = "tiny-lora"


def request(adapter="", max_tokens=32, seed=7, text="Tell me a story about the sea."):
    return pb.GenerateRequest(model=TEXT_MODEL, messages=[message(text)], adapter=adapter,
                              sampling=pb.SamplingParams(max_tokens=max_tokens, temperature=1.0, seed=seed))


@pytest.fixture(scope="module", autouse=True)
def built_adapter():
    # The replica builds it on first use too; building here keeps that out of the first request's time.
    from gemma_serving.models import resolve_model_source

    return resolve_model_source("tiny-lora://text", progress=lambda msg: print(f"[build-models] {msg}", flush=True))


@pytest.fixture(scope="module")
def base_and_adapter(stub, describe):
    before = describe("text")["adapters"]["loads"].get(ADAPTER, 0)
    base = stub.Generate(request(), timeout=120)
    adapted = stub.Generate(request(ADAPTER), timeout=120)
    return base, adapted, before


def test_adapter_and_base_give_different_text_for_the_same_seed(base_and_adapter):
    base, adapted, _ = base_and_adapter
    assert base.text and adapted.text
    assert adapted.text != base.text
    assert adapted.model == TEXT_MODEL


def test_second_adapter_request_is_served_from_the_loaded_adapter(stub, describe, base_and_adapter):
    _, adapted, before = base_and_adapter
    after_first = describe("text")["adapters"]
    assert after_first["multiplexing"] == "serve"  # the replica reports its adapters to Serve's router
    assert ADAPTER in after_first["loaded"]
    assert after_first["loads"][ADAPTER] == before + 1  # loaded on demand by the first request, once
    again = stub.Generate(request(ADAPTER), timeout=60)
    assert again.text == adapted.text  # same seed, same adapter
    chunks = list(stub.GenerateStream(request(ADAPTER), timeout=60))
    assert "".join(c.text for c in chunks) == adapted.text
    assert describe("text")["adapters"]["loads"][ADAPTER] == before + 1  # not loaded again


def test_base_requests_batched_with_adapter_requests_stay_base(stub, base_and_adapter):
    base, adapted, _ = base_and_adapter
    # Sent together so the engine batches base and adapter requests in the same steps.
    calls = [stub.Generate.future(request(ADAPTER if i % 2 else ""), timeout=120) for i in range(6)]
    texts = [c.result().text for c in calls]
    assert texts == [base.text, adapted.text] * 3


def test_unknown_adapter_is_invalid_argument_naming_the_configured_ones(stub):
    with pytest.raises(grpc.RpcError) as info:
        stub.Generate(request("no-such-adapter"), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "adapter 'no-such-adapter' is not configured for model gemma-3-tiny; configured adapters: tiny-lora" \
        in info.value.details()


def test_adapters_on_a_model_without_any_are_invalid_argument(stub):
    req = pb.GenerateRequest(model="gemma-3-tiny-vision", messages=[message("hi")], adapter=ADAPTER)
    with pytest.raises(grpc.RpcError) as info:
        stub.Generate(req, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "this model has no adapters" in info.value.details()


def test_list_models_names_the_adapters(stub):
    models = {m.name: m for m in stub.ListModels(pb.ListModelsRequest(), timeout=10).models}
    assert list(models["gemma-3-tiny"].adapters) == [ADAPTER]
    assert list(models["gemma-3n-tiny"].adapters) == []
