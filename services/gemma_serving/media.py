"""Inspecting and decoding client media.

The router calls the cheap `inspect_*` functions (headers only: format, pixels, duration) to reject bad input before
any engine work; a deployment calls `decode_*` to produce what the engine takes. Decompression bombs are caught by
checking the pixel count from the header before any pixel is decoded.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from gemma_serving.config import RequestLimits
from gemma_serving.errors import InvalidRequest

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
AUDIO_FORMATS = ("WAV", "FLAC", "OGG", "MP3")
#: Gemma 3n's audio encoder takes 16 kHz mono.
AUDIO_SAMPLE_RATE = 16_000
#: Clips shorter than ~40 ms crash vLLM's Gemma 3n audio path (the engine dies: found by the fuzz test), so short
#: clips are padded with silence to a quarter second.
MIN_AUDIO_SAMPLES = AUDIO_SAMPLE_RATE // 4


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int


@dataclass(frozen=True)
class AudioInfo:
    format: str
    sample_rate: int
    channels: int
    seconds: float


def inspect_image(data: bytes, limits: RequestLimits, *, field: str = "image") -> ImageInfo:
    """Read the image header and check it against the limits; raises InvalidRequest naming `field`."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise InvalidRequest(f"{field}.data is empty; send an encoded image ({', '.join(IMAGE_FORMATS)})", field=field)
    if len(data) > limits.max_image_bytes:
        raise InvalidRequest(
            f"{field}.data must be at most {limits.max_image_bytes} bytes, got {len(data)}", field=field
        )
    try:
        with Image.open(io.BytesIO(data)) as img:
            info = ImageInfo(img.format or "", img.width, img.height)
    except Image.DecompressionBombError:  # PIL's own guard fires on headers far beyond any sane limit
        raise InvalidRequest(
            f"{field} must have at most {limits.max_image_pixels} pixels, got far more", field=field
        ) from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise InvalidRequest(
            f"{field}.data is not a decodable image; allowed formats: {', '.join(IMAGE_FORMATS)}",
            field=field,
        ) from None
    if info.format not in IMAGE_FORMATS:
        raise InvalidRequest(
            f"{field} format {info.format} is not allowed; allowed: {', '.join(IMAGE_FORMATS)}", field=field
        )
    if info.width * info.height > limits.max_image_pixels:
        raise InvalidRequest(
            f"{field} must have at most {limits.max_image_pixels} pixels, got {info.width}x{info.height}",
            field=field,
        )
    return info


def decode_image(data: bytes) -> object:
    """Decode an (already inspected) image to an RGB PIL image."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError):
        raise InvalidRequest("image data could not be decoded (truncated or corrupt)") from None


def inspect_audio(data: bytes, limits: RequestLimits, *, field: str = "audio") -> AudioInfo:
    """Read the audio header and check it against the limits; raises InvalidRequest naming `field`."""
    import soundfile

    if not data:
        raise InvalidRequest(f"{field}.data is empty; send an encoded clip ({', '.join(AUDIO_FORMATS)})", field=field)
    if len(data) > limits.max_audio_bytes:
        raise InvalidRequest(
            f"{field}.data must be at most {limits.max_audio_bytes} bytes, got {len(data)}", field=field
        )
    try:
        raw = soundfile.info(io.BytesIO(data))
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError):
        raise InvalidRequest(
            f"{field}.data is not decodable audio; allowed formats: {', '.join(AUDIO_FORMATS)}",
            field=field,
        ) from None
    info = AudioInfo(raw.format, int(raw.samplerate), int(raw.channels), float(raw.duration))
    if info.format not in AUDIO_FORMATS:
        raise InvalidRequest(
            f"{field} format {info.format} is not allowed; allowed: {', '.join(AUDIO_FORMATS)}", field=field
        )
    if not 0 < info.seconds <= limits.max_audio_seconds:
        raise InvalidRequest(
            f"{field} duration must be in (0, {limits.max_audio_seconds}] seconds, got {info.seconds:.2f}",
            field=field,
        )
    if not 8_000 <= info.sample_rate <= 192_000:
        raise InvalidRequest(f"{field} sample rate must be 8000..192000 Hz, got {info.sample_rate}", field=field)
    return info


def decode_audio(data: bytes) -> tuple[object, int]:
    """Decode an (already inspected) clip to mono float32 samples at 16 kHz."""
    import numpy as np
    import soundfile
    import soxr

    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, ValueError):
        raise InvalidRequest("audio data could not be decoded (truncated or corrupt)") from None
    mono = samples.mean(axis=1)
    if rate != AUDIO_SAMPLE_RATE:
        mono = soxr.resample(mono, rate, AUDIO_SAMPLE_RATE)
    if len(mono) < MIN_AUDIO_SAMPLES:
        mono = np.pad(mono, (0, MIN_AUDIO_SAMPLES - len(mono)))
    return np.ascontiguousarray(mono, dtype=np.float32), AUDIO_SAMPLE_RATE
