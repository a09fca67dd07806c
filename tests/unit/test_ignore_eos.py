"""`ignore_eos` (vLLM's extension, sent by benchmark tools) from both surfaces down to vLLM's SamplingParams."""

from pathlib import Path

import pytest
from gemma_serving.api import inference_pb2 as pb
from gemma_serving.api.convert import request_from_pb
from gemma_serving.client import message
from gemma_serving.config import ModelConfig
from gemma_serving.engines.types import GenerationRequest, Message, Sampling, TextPart
from gemma_serving.engines.vllm import VllmEngine
from gemma_serving.errors import InvalidRequest
from gemma_serving.router.openai_convert import sampling_from


@pytest.mark.parametrize("given,expected", [({"ignore_eos": True}, True), ({}, False)])
def test_grpc_requests_carry_it(given, expected):
    req = pb.GenerateRequest(model="m", messages=[message("hi")], sampling=pb.SamplingParams(max_tokens=4, **given))
    assert request_from_pb(req).sampling.ignore_eos is expected


def test_openai_bodies_carry_it_and_reject_non_booleans():
    assert sampling_from({"ignore_eos": True}).ignore_eos is True
    assert sampling_from({}).ignore_eos is False
    with pytest.raises(InvalidRequest, match="ignore_eos must be true or false") as info:
        sampling_from({"ignore_eos": "yes"})
    assert info.value.field == "ignore_eos"


@pytest.mark.parametrize("ignore_eos", [True, False])
def test_vllm_sampling_params_get_it(ignore_eos):
    engine = VllmEngine(ModelConfig.model_validate({"name": "m", "source": "/m"}), Path("/m"))
    request = GenerationRequest("m", (Message("user", (TextPart("hi"),)),),
                                Sampling(max_tokens=8, ignore_eos=ignore_eos))
    assert engine._sampling_params(request).ignore_eos is ignore_eos
