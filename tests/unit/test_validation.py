import pytest
from gemma_serving.client.samples import sample_png, sample_wav
from gemma_serving.config import ServiceKind
from gemma_serving.engines.types import AudioPart, GenerationRequest, ImagePart, Message, Sampling, TextPart
from gemma_serving.errors import InvalidRequest, ModelNotFound
from gemma_serving.router.validation import validate_request


def req(*messages, model="text-model", **sampling):
    if not messages:
        messages = (Message("user", (TextPart("hello"),)),)
    return GenerationRequest(model, tuple(messages), Sampling(**sampling))


def user(*parts):
    return Message("user", tuple(parts))


def test_valid_request_gets_default_max_tokens(config):
    kind, out = validate_request(req(), config)
    assert kind is ServiceKind.TEXT and out.sampling.max_tokens == 64


def test_image_request_routes_to_vision(config):
    kind, _ = validate_request(req(user(ImagePart(sample_png(40, 40)), TextPart("what?")), model="vision-model"),
                               config)
    assert kind is ServiceKind.VISION


@pytest.mark.parametrize(
    "request_,error,match",
    [
        (req(model=""), InvalidRequest, "model is required; available models: text-model"),
        (req(model="gpt-4"), ModelNotFound, "'gpt-4' is not served here; available models: text-model, vision"),
        (GenerationRequest("text-model", (), Sampling()), InvalidRequest, r"messages must hold 1\.\.4 messages, got 0"),
        (req(*[user(TextPart("a"))] * 5), InvalidRequest, r"1\.\.4 messages, got 5"),
        (req(user(TextPart("   "))), InvalidRequest, r"messages\[0\]\.parts\[0\]\.text is empty"),
        (req(user()), InvalidRequest, r"messages\[0\]\.parts must hold 1\.\.32 parts, got 0"),
        (req(Message("robot", (TextPart("x"),))), InvalidRequest, "role must be one of system, user, assistant"),
        (req(Message("assistant", (TextPart("x"),))), InvalidRequest, "roles alternate user/assistant"),
        (req(user(TextPart("a")), Message("system", (TextPart("x"),))), InvalidRequest, "only as the first"),
        (req(user(TextPart("a")), Message("assistant", (TextPart("b"),))), InvalidRequest, "last message"),
        (req(max_tokens=0), InvalidRequest, r"max_tokens must be 1\.\.100 for model text-model, got 0"),
        (req(max_tokens=101), InvalidRequest, r"max_tokens must be 1\.\.100 for model text-model, got 101"),
        (req(temperature=2.5), InvalidRequest, r"temperature must be 0\.\.2, got 2\.5"),
        (req(temperature=float("nan")), InvalidRequest, "temperature must be"),
        (req(top_p=0.0), InvalidRequest, r"top_p must be in \(0, 1\]"),
        (req(top_k=-2), InvalidRequest, "top_k must be >= -1, got -2"),
        (req(min_p=1.5), InvalidRequest, r"min_p must be 0\.\.1, got 1\.5"),
        (req(repetition_penalty=0.0), InvalidRequest, r"repetition_penalty must be > 0, got 0\.0"),
        (req(presence_penalty=-2.5), InvalidRequest, r"presence_penalty must be -2\.\.2, got -2\.5"),
        (req(frequency_penalty=float("inf")), InvalidRequest, r"frequency_penalty must be -2\.\.2, got inf"),
        (req(top_logprobs=21), InvalidRequest, r"top_logprobs must be 0\.\.20, got 21"),
        (req(n=9), InvalidRequest, r"sampling\.n must be 1\.\.8, got 9"),
        (req(stop=("a",) * 9), InvalidRequest, "stop may hold at most 8 strings, got 9"),
        (req(stop=("",)), InvalidRequest, r"stop\[0\] must be 1\.\.64 characters"),
        (req(user(ImagePart(b"not an image"), TextPart("x")), model="vision-model"), InvalidRequest,
         r"parts\[0\]\.image\.data is not a decodable image; allowed formats: PNG"),
        (req(user(ImagePart(sample_png(200, 100)), TextPart("x")), model="vision-model"), InvalidRequest,
         "at most 10000 pixels, got 200x100"),
        (req(user(ImagePart(sample_png(10, 10)), ImagePart(sample_png(10, 10)), TextPart("x")), model="vision-model"),
         InvalidRequest, "at most 1 images, got 2"),
        (req(user(AudioPart(b"RIFF....WAVEjunk"), TextPart("x")), model="audio-model"), InvalidRequest,
         r"audio\.data is not decodable audio; allowed formats: WAV"),
        (req(user(AudioPart(sample_wav(seconds=3)), TextPart("x")), model="audio-model"), InvalidRequest,
         r"duration must be in \(0, 2\.0\] seconds, got 3\.00"),
        (req(user(ImagePart(sample_png(20, 20)), TextPart("x"))), InvalidRequest,
         "model text-model accepts text input only, got image; models that accept it: vision-model, audio-model"),
        (req(user(AudioPart(sample_wav()), TextPart("x")), model="vision-model"), InvalidRequest,
         "accepts text, image input only, got audio; models that accept it: audio-model"),
    ],
)
def test_bad_requests_say_what_is_wrong_and_what_is_allowed(config, request_, error, match):
    with pytest.raises(error, match=match):
        validate_request(request_, config)


def test_system_then_alternating_turns_are_accepted(config):
    messages = (
        Message("system", (TextPart("be brief"),)),
        user(TextPart("hi")),
        Message("assistant", (TextPart("hello"),)),
        user(TextPart("bye")),
    )
    validate_request(req(*messages), config)
