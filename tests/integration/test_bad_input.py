"""Bad input over the real platform: a clear status and message, and the server keeps serving."""

import grpc
import pytest
from gemma_serving.api import inference_pb2 as pb
from gemma_serving.client import audio_part, image_part, message
from gemma_serving.client.samples import sample_png

OK = [message("hello")]


def req(model="gemma-3-tiny", messages=OK, **sampling):
    return pb.GenerateRequest(model=model, messages=messages, sampling=pb.SamplingParams(**sampling))


CASES = [
    ("no messages", req(messages=[]), grpc.StatusCode.INVALID_ARGUMENT, "messages must hold 1..64 messages, got 0"),
    ("empty text", req(messages=[message("")]), grpc.StatusCode.INVALID_ARGUMENT,
     "messages[0].parts[0].text is empty"),
    ("unknown model", req(model="gemma-99"), grpc.StatusCode.NOT_FOUND,
     "model 'gemma-99' is not served here; available models: gemma-3-tiny, gemma-3-tiny-vision, gemma-3n-tiny"),
    ("max_tokens 0", req(max_tokens=0), grpc.StatusCode.INVALID_ARGUMENT,
     "sampling.max_tokens must be 1..512 for model gemma-3-tiny, got 0"),
    ("max_tokens too big", req(max_tokens=513), grpc.StatusCode.INVALID_ARGUMENT,
     "sampling.max_tokens must be 1..512 for model gemma-3-tiny, got 513"),
    ("image that is not an image", req("gemma-3-tiny-vision", [message(image_part(b"GIF89a-not-really"), "x")]),
     grpc.StatusCode.INVALID_ARGUMENT, "image.data is not a decodable image; allowed formats: PNG, JPEG"),
    ("undecodable audio", req("gemma-3n-tiny", [message(audio_part(b"\x00" * 4000), "x")]),
     grpc.StatusCode.INVALID_ARGUMENT, "audio.data is not decodable audio; allowed formats: WAV"),
    ("image to the text-only model", req(messages=[message(image_part(sample_png()), "x")]),
     grpc.StatusCode.INVALID_ARGUMENT,
     "model gemma-3-tiny accepts text input only, got image; models that accept it: gemma-3-tiny-vision"),
]


@pytest.mark.parametrize("name,request_,code,text", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_rejected_clearly_and_the_server_keeps_serving(stub, name, request_, code, text):
    for call in (stub.Generate, lambda r, timeout: list(stub.GenerateStream(r, timeout=timeout))):
        with pytest.raises(grpc.RpcError) as info:
            call(request_, timeout=30)
        assert info.value.code() == code, info.value.details()
        assert text in info.value.details()
    assert stub.Generate(req(max_tokens=2), timeout=60).usage.completion_tokens >= 1
