"""Small synthetic media for the demo and tests: no files to download or commit."""

from __future__ import annotations

import io


def sample_png(width: int = 96, height: int = 64) -> bytes:
    """A PNG of a colour gradient with a square in it."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height))
    img.putdata([(x * 255 // width, y * 255 // height, 128) for y in range(height) for x in range(width)])
    ImageDraw.Draw(img).rectangle((width // 4, height // 4, width // 2, height // 2), fill=(250, 250, 20))
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def sample_wav(seconds: float = 1.0, rate: int = 22_050, hz: float = 440.0) -> bytes:
    """A WAV of a sine tone (deliberately not 16 kHz, so the server's resampling is exercised)."""
    import numpy as np
    import soundfile

    t = np.arange(int(seconds * rate)) / rate
    out = io.BytesIO()
    soundfile.write(out, (0.3 * np.sin(2 * np.pi * hz * t)).astype("float32"), rate, format="WAV")
    return out.getvalue()
