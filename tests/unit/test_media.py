import io

import numpy as np
import pytest
from gemma_serving.client.samples import sample_png, sample_wav
from gemma_serving.config import RequestLimits
from gemma_serving.errors import InvalidRequest
from gemma_serving.media import decode_audio, decode_image, inspect_audio, inspect_image
from PIL import Image


def test_image_header_is_read_without_decoding():
    info = inspect_image(sample_png(30, 20), RequestLimits())
    assert (info.format, info.width, info.height) == ("PNG", 30, 20)


def test_decompression_bomb_is_rejected_from_the_header():
    # A 20000x20000 PNG compresses to a few hundred KB but would decode to 1.2 GB.
    out = io.BytesIO()
    Image.new("1", (20000, 20000)).save(out, format="PNG")
    with pytest.raises(InvalidRequest, match="at most 16777216 pixels, got far more"):
        inspect_image(out.getvalue(), RequestLimits())
    with pytest.raises(InvalidRequest, match="at most 100 pixels, got 20x20"):
        inspect_image(sample_png(20, 20), RequestLimits(max_image_pixels=100))


def test_oversized_image_bytes_are_rejected():
    with pytest.raises(InvalidRequest, match="at most 10 bytes"):
        inspect_image(sample_png(), RequestLimits(max_image_bytes=10))


def test_disallowed_image_format_is_rejected():
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, format="TIFF")
    with pytest.raises(InvalidRequest, match="format TIFF is not allowed"):
        inspect_image(out.getvalue(), RequestLimits())


def test_decode_image_gives_rgb():
    assert decode_image(sample_png(12, 10)).mode == "RGB"


def test_audio_is_resampled_to_16k_mono():
    info = inspect_audio(sample_wav(seconds=0.5, rate=22050), RequestLimits())
    assert (info.format, info.sample_rate) == ("WAV", 22050)
    samples, rate = decode_audio(sample_wav(seconds=0.5, rate=22050))
    assert rate == 16000 and samples.dtype == np.float32 and samples.ndim == 1
    assert abs(len(samples) - 8000) <= 2


def test_truncated_audio_is_rejected():
    with pytest.raises(InvalidRequest, match="not decodable audio"):
        inspect_audio(sample_wav()[:30], RequestLimits())


def test_very_short_clips_are_padded_to_a_quarter_second():
    # A 30 ms clip killed vLLM's Gemma 3n engine (found by the fuzz test): the server pads it with silence.
    samples, rate = decode_audio(sample_wav(seconds=0.03, rate=8000))
    assert rate == 16000 and len(samples) == 4000 and not samples[1000:].any()
