"""Text generation end to end: gRPC client -> router -> Ray Serve text deployment -> vLLM."""

import time

import grpc
import pytest
from gemma_serving.api import inference_pb2 as pb
from gemma_serving.client import message

TEXT_MODEL = "gemma-3-tiny"


def request(max_tokens=16, text="Tell me a story about the sea.", **sampling):
    return pb.GenerateRequest(
        model=TEXT_MODEL, messages=[message(text)], sampling=pb.SamplingParams(max_tokens=max_tokens, **sampling)
    )


def test_unary_text_generation(stub):
    reply = stub.Generate(request(temperature=0.0), timeout=60)
    assert reply.model == TEXT_MODEL
    assert reply.finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)
    assert 1 <= reply.usage.completion_tokens <= 16
    assert reply.usage.prompt_tokens > 5  # chat template + prompt, counted by the engine
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert reply.text


def test_stream_matches_unary_for_greedy_decoding(stub):
    unary = stub.Generate(request(max_tokens=24, temperature=0.0), timeout=60)
    chunks = list(stub.GenerateStream(request(max_tokens=24, temperature=0.0), timeout=60))
    assert "".join(c.text for c in chunks) == unary.text
    assert chunks[-1].finish_reason == unary.finish_reason
    assert chunks[-1].usage.completion_tokens == unary.usage.completion_tokens
    assert len({c.request_id for c in chunks}) == 1


def test_stream_arrives_incrementally(stub):
    arrivals = [time.monotonic() for _ in stub.GenerateStream(request(max_tokens=64, temperature=1.0, seed=1),
                                                              timeout=60)]
    assert len(arrivals) > 1, "the answer must stream, not arrive as one message"


def test_seed_makes_sampling_reproducible(stub):
    a = stub.Generate(request(temperature=1.0, seed=7), timeout=60)
    b = stub.Generate(request(temperature=1.0, seed=7), timeout=60)
    assert a.text == b.text


def test_list_models(stub):
    models = {m.name: m for m in stub.ListModels(pb.ListModelsRequest(), timeout=10).models}
    assert set(models) == {"gemma-3-tiny", "gemma-3-tiny-vision", "gemma-3n-tiny"}
    assert models["gemma-3-tiny"].service == "text"
    assert pb.MODALITY_IMAGE in models["gemma-3-tiny-vision"].input_modalities
    assert pb.MODALITY_AUDIO in models["gemma-3n-tiny"].input_modalities
    assert models["gemma-3-tiny"].context_length == 2048


def test_prompt_longer_than_the_context_is_invalid_argument_from_the_engine(stub):
    # Passes the router's character limit but not the model's 2048-token context: the engine rejects it inside
    # the replica, and the error must cross Ray as INVALID_ARGUMENT with a clean message.
    with pytest.raises(grpc.RpcError) as info:
        stub.Generate(request(text="sea " * 3000), timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "gemma-3-tiny" in info.value.details()
    assert "Traceback" not in info.value.details() and "pid=" not in info.value.details()


def test_router_health_is_serving_once_services_are_ready(platform):
    from gemma_serving.local import router_serving

    deadline = time.monotonic() + 10
    while not router_serving(f"127.0.0.1:{platform[0]}") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert router_serving(f"127.0.0.1:{platform[0]}")
