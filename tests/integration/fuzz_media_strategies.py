"""Hypothesis strategies for the media of a fuzz request (images, audio clips: valid, at their edges, mutated,
lying headers, formats that are not allowed) and the media requests built from them (media_cases)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from gemma_serving.api import inference_pb2 as pb
from gemma_serving.client.samples import sample_png, sample_wav
from hypothesis import strategies as st

from tests.integration.fuzz_oracle import (
    ACCEPTS,
    INVALID,
    LIMITS,
    MODELS,
    SHORT_CLIP_S,
    Case,
    Piece,
    build_case,
    text_piece,
)
from tests.integration.fuzz_strategies import BAD_MODEL_NAMES, EDGE_TEXTS, conversations, samplings, text_pieces

# ---------------------------------------------------------------------------------------------------------------
# Strategies: images.

PNG = sample_png()
IMAGE_MODES = {"PNG": ["RGB", "RGBA", "L", "LA", "P", "1", "I;16"], "JPEG": ["RGB", "L", "CMYK"],
               "WEBP": ["RGB", "RGBA"], "GIF": ["P", "L", "RGB"], "BMP": ["RGB", "L", "P", "1"]}
OTHER_IMAGE_FORMATS = [("TIFF", "RGB"), ("ICO", "RGBA"), ("PPM", "RGB"), ("TGA", "RGB"), ("PCX", "RGB"),
                       ("SGI", "RGB")]
SIDES = [1, 2, 3, 7, 16, 33, 64, 257]
MAGIC = [b"\x89PNG\r\n\x1a\n", b"GIF89a", b"GIF87a", b"\xff\xd8\xff\xe0", b"BM", b"RIFF\x00\x00\x00\x00WEBPVP8 ",
         b"II*\x00", b"RIFF\x24\x00\x00\x00WAVEfmt ", b"fLaC", b"OggS", b"ID3\x04", b"\xff\xfb", b""]


def _encode_image(fmt: str, mode: str, size: tuple[int, int], seed: int, frames: int = 1) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    base = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
    img = base.convert(mode) if mode not in ("I;16", "I") else base.convert("L").convert(mode)
    out = io.BytesIO()
    kwargs = {}
    if frames > 1 and fmt in ("GIF", "WEBP", "PNG") and mode in ("RGB", "RGBA", "P", "L"):
        kwargs = {"save_all": True, "append_images": [img.rotate(90 * i) for i in range(1, frames)]}
    img.save(out, format=fmt, **kwargs)
    return out.getvalue()


def image_piece(data: bytes, label: str, *, valid: bool | None, mime: str = "") -> Piece:
    """valid=True: an allowed, decodable image within limits; False: breaks a rule; None: may go either way."""
    broken, doubtful = frozenset(), False
    if not data or len(data) > LIMITS.max_image_bytes or valid is False:
        broken = frozenset({INVALID})
    elif valid is None:
        doubtful = True
    return Piece(pb.Part(image=pb.Image(data=data, mime_type=mime)), f"{label} {len(data)} B", "image", broken,
                 doubtful)


def png_header(width: int, height: int, idat: bytes = b"") -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _mutate(data: bytes, draw, what: str) -> tuple[bytes, str]:
    how = draw(st.sampled_from(["truncate", "flip", "append", "splice"]))
    if how == "truncate":
        n = draw(st.integers(0, len(data) - 1))
        return data[:n], f"{what} truncated at {n}/{len(data)}"
    if how == "flip":
        buf = bytearray(data)
        positions = draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=8))
        for i in positions:
            buf[i] ^= draw(st.integers(1, 255))
        return bytes(buf), f"{what} with {len(positions)} bytes flipped"
    if how == "append":
        return data + draw(st.binary(min_size=1, max_size=256)), f"{what} + junk"
    cut = draw(st.integers(8, len(data) - 1))
    return data[:cut] + draw(st.binary(max_size=64)) + data[cut + 16:], f"{what} spliced at {cut}"


@st.composite
def image_pieces(draw, kinds: str = "any") -> Piece:
    """kinds: "valid" (allowed and decodable), "bad" (broken or doubtful), "any"."""
    mime = draw(st.sampled_from(["", "", "image/png", "image/jpeg", "audio/wav", "text/plain", "x" * 300, "🖼"]))
    bad = ["other-format", "random", "magic", "mutated", "mutated", "header-lie", "header-lie", "over-bytes", "empty"]
    what = draw(st.sampled_from({"valid": ["valid"] * 5 + ["extreme-size"], "bad": bad}.get(kinds,
                                ["valid"] * 3 + ["extreme-size"] + bad)))
    if what == "valid":
        fmt = draw(st.sampled_from(sorted(IMAGE_MODES)))
        mode = draw(st.sampled_from(IMAGE_MODES[fmt]))
        size = (draw(st.sampled_from(SIDES)), draw(st.sampled_from(SIDES)))
        frames = draw(st.sampled_from([1, 1, 1, 3]))
        data = _encode_image(fmt, mode, size, draw(st.integers(0, 2**16)), frames)
        return image_piece(data, f"{fmt} {mode} {size[0]}x{size[1]} x{frames}", valid=True, mime=mime)
    if what == "other-format":
        fmt, mode = draw(st.sampled_from(OTHER_IMAGE_FORMATS))
        return image_piece(_encode_image(fmt, mode, (16, 16), 1), f"{fmt} (format not allowed)", valid=False)
    if what == "random":
        return image_piece(draw(st.binary(min_size=1, max_size=2048)), "random bytes", valid=None, mime=mime)
    if what == "magic":
        magic = draw(st.sampled_from(MAGIC))
        return image_piece(magic + draw(st.binary(max_size=512)), f"{magic[:8]!r}+random", valid=None)
    if what == "mutated":
        fmt = draw(st.sampled_from(sorted(IMAGE_MODES)))
        src = PNG if fmt == "PNG" else _encode_image(fmt, IMAGE_MODES[fmt][0], (48, 32), 7)
        data, label = _mutate(src, draw, fmt)
        return image_piece(data, label, valid=None)
    if what == "header-lie":
        # The header claims a size; the pixels are not there. Too many pixels: refused from the header alone.
        w, h = draw(st.sampled_from([(4096, 4096), (4097, 4096), (1, 2**24), (2**24 + 1, 1), (100_000, 100_000),
                                     (2**31 - 1, 2**31 - 1), (13_000, 13_000), (0, 0), (1, 1)]))
        idat = draw(st.sampled_from([b"", zlib.compress(b"\x00" * 64), b"\x78\x9c" + b"\xff" * 32]))
        too_big = w * h > LIMITS.max_image_pixels
        return image_piece(png_header(w, h, idat), f"PNG header {w}x{h} without pixels",
                           valid=False if too_big else None)
    if what == "over-bytes":
        data = PNG + b"\x00" * (LIMITS.max_image_bytes + 1 - len(PNG))  # valid PNG + trailing junk, 1 B over
        return image_piece(data, "PNG 1 B over the byte limit", valid=False)
    if what == "extreme-size":
        choice = draw(st.sampled_from(["1x4096", "4096x1", "4096x4096 L"]))
        if choice == "4096x4096 L":
            from PIL import Image

            out = io.BytesIO()
            Image.new("L", (4096, 4096), 128).save(out, format="PNG")
            return image_piece(out.getvalue(), "PNG L 4096x4096 (exactly the pixel limit)", valid=True)
        w, h = map(int, choice.split("x"))
        return image_piece(_encode_image("PNG", "RGB", (w, h), 3), f"PNG {choice}", valid=True)
    return image_piece(b"", "empty image", valid=False, mime=mime)


# ---------------------------------------------------------------------------------------------------------------
# Strategies: audio.

WAV = sample_wav()
RATES = [8_000, 11_025, 16_000, 22_050, 44_100, 48_000, 96_000, 192_000]
BAD_RATES = [1_000, 7_999, 192_001, 384_000]
#: Clip durations; the usual ones first (hypothesis starts from the first entries), the shortest last.
SECONDS = [1.0, 0.25, 4.0, 0.06, 29.9, 30.0]
SHORT_SECONDS = [0.045, 0.039, 0.03, 0.01, 0.001]
BAD_SECONDS = [30.05, 31.0, 120.0]
AUDIO_CONTAINERS = {
    "WAV": ["PCM_16", "PCM_24", "PCM_32", "PCM_U8", "FLOAT", "DOUBLE", "ULAW", "ALAW", "IMA_ADPCM", "MS_ADPCM"],
    "FLAC": ["PCM_16", "PCM_24", "PCM_S8"],
    "OGG": ["VORBIS"],
    "MP3": ["MPEG_LAYER_III"],
}
OTHER_AUDIO_FORMATS = [("AIFF", "PCM_16"), ("AU", "PCM_16"), ("W64", "PCM_16"), ("RF64", "PCM_16"),
                       ("WAVEX", "PCM_16"), ("CAF", "PCM_16"), ("RAW", "PCM_16")]


def encode_audio(fmt: str, subtype: str, rate: int, frames: int, channels: int, signal: str, seed: int) -> bytes:
    import soundfile

    rng = np.random.default_rng(seed)
    t = np.arange(frames) / rate
    if signal == "sine":
        x = 0.3 * np.sin(2 * np.pi * 440 * t)
    elif signal == "noise":
        x = rng.uniform(-1, 1, frames)
    elif signal == "silence":
        x = np.zeros(frames)
    else:  # non-finite or huge samples: only float subtypes keep them
        x = np.full(frames, {"nan": np.nan, "inf": np.inf, "huge": 1e30}[signal])
    data = np.repeat(x[:, None], channels, axis=1).astype("float32")
    out = io.BytesIO()
    soundfile.write(out, data, rate, format=fmt, subtype=subtype)
    return out.getvalue()


def audio_piece(data: bytes, label: str, *, valid: bool | None, mime: str = "") -> Piece:
    """valid=True: decodable and within limits per the documented rules (its duration is re-read here);
    False: breaks a rule; None: may go either way."""
    import soundfile

    broken, doubtful = frozenset(), False
    if not data or len(data) > LIMITS.max_audio_bytes or valid is False:
        broken = frozenset({INVALID})
    elif valid is None:
        doubtful = True
    else:
        info = soundfile.info(io.BytesIO(data))
        label += f" ({info.format} {info.samplerate} Hz {info.duration:.3f} s)"
        if not (0 < info.duration <= LIMITS.max_audio_seconds and 8_000 <= info.samplerate <= 192_000):
            broken = frozenset({INVALID})
        elif info.duration < SHORT_CLIP_S:
            doubtful = True  # valid by the rules; the engine crashes on it today (BUG-1): OK or INVALID_ARGUMENT
            label += " [short clip: BUG-1]"
    return Piece(pb.Part(audio=pb.Audio(data=data, mime_type=mime)), f"{label} {len(data)} B", "audio", broken,
                 doubtful)


@st.composite
def audio_pieces(draw, kinds: str = "any") -> Piece:
    """kinds: "valid" (allowed by the rules, decodable), "bad" (broken, doubtful or beyond an edge), "any"."""
    mime = draw(st.sampled_from(["", "", "audio/wav", "audio/flac", "image/png", "x" * 300, "🔊"]))
    bad = ["edge", "edge", "other-format", "random", "magic", "mutated", "mutated", "header-lie", "empty"]
    what = draw(st.sampled_from({"valid": ["valid"], "bad": bad}.get(kinds, ["valid"] * 4 + bad)))
    if what in ("valid", "edge"):
        fmt = draw(st.sampled_from(sorted(AUDIO_CONTAINERS)))
        subtype = draw(st.sampled_from(AUDIO_CONTAINERS[fmt]))
        lossy = fmt in ("OGG", "MP3")
        rates = [r for r in RATES if r <= 48_000] if lossy else RATES
        rate = draw(st.sampled_from(rates + ([] if lossy else BAD_RATES) if what == "edge" else rates))
        seconds = draw(st.sampled_from(SECONDS + SHORT_SECONDS + BAD_SECONDS if what == "edge"
                                       else 3 * SECONDS + SHORT_SECONDS))
        channels = draw(st.sampled_from([1, 2] if lossy or subtype.endswith("ADPCM") else [1, 2, 3, 6]))
        signal = draw(st.sampled_from(["sine", "noise", "silence"]
                                      + (["nan", "inf", "huge"] if subtype in ("FLOAT", "DOUBLE") else [])))
        frames = max(1, round(seconds * rate))
        if frames * channels * 8 > 3 * LIMITS.max_audio_bytes:  # far over the byte limit: do not encode it all
            frames = (3 * LIMITS.max_audio_bytes) // (channels * 8)
        try:
            data = encode_audio(fmt, subtype, rate, frames, channels, signal, draw(st.integers(0, 2**16)))
        except (RuntimeError, ValueError) as exc:  # a combination libsndfile cannot write: send garbage instead
            return audio_piece(f"{fmt}/{subtype}/{rate}: {exc}".encode()[:64], "unwritable combination", valid=None)
        valid = True if signal in ("sine", "noise", "silence") else None  # non-finite samples: may be refused
        return audio_piece(data, f"{fmt}/{subtype} {channels}ch {signal} {seconds} s@{rate}", valid=valid, mime=mime)
    if what == "other-format":
        fmt, subtype = draw(st.sampled_from(OTHER_AUDIO_FORMATS))
        data = encode_audio(fmt, subtype, 16_000, 8_000, 1 if fmt != "WAVEX" else 3, "sine", 1)
        return audio_piece(data, f"{fmt} (format not allowed)", valid=False)
    if what == "random":
        return audio_piece(draw(st.binary(min_size=1, max_size=4096)), "random bytes", valid=None, mime=mime)
    if what == "magic":
        magic = draw(st.sampled_from(MAGIC))
        return audio_piece(magic + draw(st.binary(max_size=1024)), f"{magic[:8]!r}+random", valid=None)
    if what == "mutated":
        src = draw(st.sampled_from(["WAV", "FLAC", "OGG"]))
        data = WAV if src == "WAV" else encode_audio(src, AUDIO_CONTAINERS[src][0], 16_000, 16_000, 1, "sine", 2)
        data, label = _mutate(data, draw, src)
        return audio_piece(data, label, valid=None)
    if what == "header-lie":
        # A WAV header whose fields lie: rate, channels, bits, or a data size far beyond the file.
        rate = draw(st.sampled_from([0, 1, 16_000, 2**32 - 1]))
        channels = draw(st.sampled_from([0, 1, 2, 1024, 65_535]))
        bits = draw(st.sampled_from([0, 8, 16, 13, 64, 65_535]))
        size = draw(st.sampled_from([0, 4, 1000, 2**31, 2**32 - 1]))
        block = max(1, channels * bits // 8) & 0xFFFF
        fmt_chunk = struct.pack("<HHIIHH", 1, channels, rate, (rate * block) & 0xFFFFFFFF, block, bits)
        body = b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt_chunk + b"data" + struct.pack("<I", size)
        data = b"RIFF" + struct.pack("<I", (len(body) + 1000) & 0xFFFFFFFF) + body + bytes(1000)
        return audio_piece(data, f"WAV header rate={rate} ch={channels} bits={bits} data={size}", valid=None)
    return audio_piece(b"", "empty audio", valid=False, mime=mime)


# ---------------------------------------------------------------------------------------------------------------
# Requests with media.

PIECES = {"image": image_pieces, "audio": audio_pieces}


@st.composite
def media_cases(draw, modality: str) -> Case:
    """Requests with images (modality "image") or audio and images ("audio"). About 40% valid (1-2 well-formed
    media items to a model that takes them), 30% with one bad item or media the model does not take, 30% anything
    goes (every model, roles, several media, full-range sampling)."""
    mode = draw(st.sampled_from(["valid"] * 4 + ["fault"] * 3 + ["chaos"] * 3))
    takers = [m for m in MODELS if modality in ACCEPTS[m]]

    def media(kinds: str) -> Piece:
        if modality == "audio" and draw(st.integers(0, 3)) == 0:
            return draw(image_pieces(kinds))  # an image beside the clips (Gemma 3n takes both)
        return draw(PIECES[modality](kinds))

    text = text_piece(draw(st.sampled_from(EDGE_TEXTS[:6])))
    if mode == "chaos":
        model = draw(st.one_of(st.sampled_from(MODELS), st.sampled_from(BAD_MODEL_NAMES[:3])))
        if draw(st.booleans()):
            parts = st.one_of(PIECES[modality](), PIECES[modality](), image_pieces(), text_pieces())
            messages = draw(conversations(parts))
        else:
            n = draw(st.sampled_from([1, 2, 3, 5]))
            messages = [("user", draw(st.permutations([media("any") for _ in range(n)] + [text])))]
        return build_case(model, messages, draw(samplings()), draw(st.booleans()), " [chaos]")
    model = draw(st.sampled_from(takers))
    pieces = [media("valid") for _ in range(draw(st.integers(1, 2)))]
    label = ""
    if mode == "fault":
        if draw(st.integers(0, 4)) == 0:  # well-formed media to a model that does not take it
            model = draw(st.sampled_from([m for m in MODELS if modality not in ACCEPTS[m]]))
            label = " [fault: modality]"
        else:
            pieces[-1] = media("bad")
            label = " [fault: media]"
    sampling = draw(samplings(small=True))
    order = draw(st.permutations(pieces + [text]))
    messages = [("user", list(order))]
    if draw(st.integers(0, 4)) == 0:  # media earlier in the conversation: system and assistant turns
        messages = [("system", [draw(PIECES[modality]("valid"))]), ("user", [text_piece("a")]),
                    ("assistant", [text_piece("b")])] + messages
    return build_case(model, messages, sampling, draw(st.booleans()), label)

