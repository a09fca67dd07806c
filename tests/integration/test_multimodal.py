"""Image+text (Gemma 3 vision) and audio+text (Gemma 3n) end to end on vLLM."""

import pytest
from gemma_serving.api import inference_pb2 as pb
from gemma_serving.client import audio_part, image_part, message
from gemma_serving.client.samples import sample_png, sample_wav


def generate(stub, model, *parts, max_tokens=12):
    req = pb.GenerateRequest(model=model, messages=[message(*parts)],
                             sampling=pb.SamplingParams(max_tokens=max_tokens, temperature=0.0))
    return stub.Generate(req, timeout=180)


def test_image_and_text_on_gemma3_vision(stub):
    reply = generate(stub, "gemma-3-tiny-vision", image_part(sample_png(), "image/png"), "Describe this image.")
    text_only = generate(stub, "gemma-3-tiny-vision", "Describe this image.")
    assert reply.usage.completion_tokens >= 1
    # The image becomes image soft tokens in the prompt: far more prompt tokens than the text alone.
    assert reply.usage.prompt_tokens >= text_only.usage.prompt_tokens + 8


def test_audio_and_text_on_gemma3n(stub):
    reply = generate(stub, "gemma-3n-tiny", audio_part(sample_wav(), "audio/wav"), "Transcribe this audio.")
    text_only = generate(stub, "gemma-3n-tiny", "Transcribe this audio.")
    assert reply.usage.completion_tokens >= 1
    assert reply.usage.prompt_tokens > text_only.usage.prompt_tokens  # audio soft tokens


def test_stereo_44k_audio_is_resampled_server_side(stub):
    import io

    import numpy as np
    import soundfile

    t = np.arange(44100) / 44100
    stereo = np.stack([np.sin(2 * np.pi * 300 * t), np.sin(2 * np.pi * 500 * t)], axis=1).astype("float32") * 0.2
    buf = io.BytesIO()
    soundfile.write(buf, stereo, 44100, format="FLAC")
    reply = generate(stub, "gemma-3n-tiny", audio_part(buf.getvalue()), "Transcribe this audio.")
    assert reply.usage.completion_tokens >= 1


@pytest.mark.slow
def test_image_audio_and_text_in_one_message_on_gemma3n(stub):
    reply = generate(stub, "gemma-3n-tiny", image_part(sample_png()), audio_part(sample_wav()),
                     "What do you see and hear?", max_tokens=4)
    assert reply.usage.completion_tokens >= 1
