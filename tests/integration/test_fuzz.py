"""Property-based fuzzing of the real platform over gRPC (hypothesis): malformed and extreme requests get a clear
answer, never an internal error or a hang, and the platform keeps serving afterwards.

About 600 requests go to the session platform, Generate and GenerateStream alike: random and truncated media,
media headers that lie, images and clips of every allowed container and some that are not, int32/int64 extremes
and NaN/inf in sampling, unicode edge cases (RTL, zero-width, emoji, NUL, chat special tokens), texts, roles, model
names and stop strings empty or far beyond their limits, wrong role orders, media sent to models that do not take
it, short client deadlines and cancels, and valid small requests (1-4 tokens) in between.

Every request carries an oracle built from the documented rules (proto comments, config limits, README): the set of
codes that are right for it. Any rule broken: its code (INVALID_ARGUMENT, NOT_FOUND for an unknown model) -- so
invalid input that comes back OK fails too. Nothing broken: OK, except where the engine may legitimately refuse
(a prompt that may exceed the context length, undecodable mutated media): OK or INVALID_ARGUMENT. RESOURCE_EXHAUSTED
is always acceptable. INTERNAL, UNKNOWN, UNAVAILABLE and DEADLINE_EXCEEDED (a hang: no answer in 60 s) never are.
Errors must carry a short message without a traceback or the prompt text, and a request-id trailer.

Reproducible: hypothesis runs derandomized with no example database; no shrinking (every example is a real RPC, and
after an engine crash a replay could wait minutes for a replacement replica) -- the failure prints the case label.

BUG-1 (found by this test, fixed in media.decode_audio by padding short clips): an audio clip shorter than ~40 ms
after resampling to 16 kHz passed the router's checks and then killed Gemma 3n's vLLM engine core.
test_regression_short_audio_clip_does_not_kill_the_engine keeps it fixed (OK, or INVALID_ARGUMENT with a minimum).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import struct
import time
import zlib
from collections import Counter

import grpc
import numpy as np
import pytest
from gemma_serving.api import inference_pb2 as pb
from gemma_serving.client.samples import sample_png, sample_wav
from gemma_serving.config import SERVICE_MODALITIES, load_config
from gemma_serving.local import router_serving
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

# ---------------------------------------------------------------------------------------------------------------
# The rules under test, from the same config the session platform runs (conftest: load_config() + test overrides
# that do not touch limits or models).

CONFIG = load_config()
LIMITS = CONFIG.limits
MODEL_KIND = {s.model.name: kind.value for kind, s in CONFIG.services.items()}
MODELS = sorted(MODEL_KIND)
TEXT_MODEL = CONFIG.services["text"].model.name
VISION_MODEL = CONFIG.services["vision"].model.name
AUDIO_MODEL = CONFIG.services["audio"].model.name
ACCEPTS = {s.model.name: set(SERVICE_MODALITIES[kind]) for kind, s in CONFIG.services.items()}
MAX_OUT = {s.model.name: s.model.max_output_tokens for s in CONFIG.services.values()}
DEFAULT_OUT = {s.model.name: s.model.default_max_tokens for s in CONFIG.services.values()}
CONTEXT = {s.model.name: s.model.engine.max_model_len for s in CONFIG.services.values()}
#: Upper bounds of prompt tokens per media item (Gemma 3n: 256 image / 188 audio soft tokens, plus markers).
MEDIA_TOKENS = {"image": 300, "audio": 220}
ROLES = ("system", "user", "assistant")

OK, INVALID, NOT_FOUND, EXHAUSTED = (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT,
                                     grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED)
ALLOWED = {OK, INVALID, NOT_FOUND, EXHAUSTED}
CALL_TIMEOUT_S = 60.0
#: Clips shorter than this are at or below what Gemma 3n's audio tower survives today (< 641 samples at 16 kHz,
#: i.e. < 2 mel frames, ~40 ms: BUG-1). They are valid input by the documented rule ("(0, 30] seconds"), so the
#: oracle accepts OK or INVALID_ARGUMENT (a minimum duration) for them -- never UNAVAILABLE.
SHORT_CLIP_S = 0.05

FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    report_multiple_bugs=False,
    print_blob=False,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.large_base_example, HealthCheck.filter_too_much],
)

# ---------------------------------------------------------------------------------------------------------------
# Request pieces, each with a label for failure messages and the rules it breaks.


@dataclasses.dataclass(frozen=True)
class Piece:
    """One part of a message. `broken`: codes its own defects call for. `doubtful`: it may fairly be refused
    (mutated media) or is at an edge the platform may refuse. `label`: short description for reports."""

    part: pb.Part
    label: str
    kind: str  # text | image | audio | empty
    broken: frozenset = frozenset()
    doubtful: bool = False
    text_chars: int = 0
    text_bytes: int = 0


def text_piece(text: str, label: str | None = None) -> Piece:
    blank = not text.strip()
    return Piece(pb.Part(text=text), label or f"text{_short(text)}", "text",
                 frozenset({INVALID}) if blank else frozenset(), text_chars=len(text),
                 text_bytes=len(text.encode("utf-8")))


def _short(text: str, n: int = 24) -> str:
    return f"[{len(text)}]{text[:n]!r}{'...' if len(text) > n else ''}"


@dataclasses.dataclass
class Case:
    """One request, the codes that are right for it, and how to call it."""

    request: pb.GenerateRequest
    expected: frozenset
    label: str
    stream: bool = False
    texts: tuple = ()  # text parts (for the prompt-leak check)
    max_tokens: int = 0  # effective max_tokens when valid

    def __repr__(self) -> str:
        codes = ",".join(sorted(c.name for c in self.expected))
        return f"Case({'GenerateStream' if self.stream else 'Generate'} {self.label} -> expect {codes})"

    def _repr_pretty_(self, printer, cycle) -> None:  # what hypothesis prints for a failing example (not the bytes)
        printer.text(repr(self))


def build_case(model: str, messages: list[tuple[str, list[Piece]]], sampling: pb.SamplingParams, stream: bool,
               extra_label: str = "") -> Case:
    """The request and its oracle: the union of the codes of every broken rule; OK when none is broken."""
    broken: set = set()
    doubtful = False
    if not model:
        broken.add(INVALID)
    elif model not in MODEL_KIND:
        broken.add(NOT_FOUND)
    # Messages: count, roles and order, parts, text, media counts and modalities.
    n = len(messages)
    if not 1 <= n <= LIMITS.max_messages:
        broken.add(INVALID)
    expected_role = "user"
    for i, (role, pieces) in enumerate(messages):
        if role not in ROLES:
            broken.add(INVALID)
        elif role == "system":
            if i != 0:
                broken.add(INVALID)
        elif role != expected_role:
            broken.add(INVALID)
        else:
            expected_role = "assistant" if expected_role == "user" else "user"
        if not 1 <= len(pieces) <= LIMITS.max_parts_per_message:
            broken.add(INVALID)
        for p in pieces:
            broken |= p.broken
            doubtful |= p.doubtful
    if messages and messages[-1][0] != "user":
        broken.add(INVALID)
    pieces = [p for _, ps in messages for p in ps]
    kinds = Counter(p.kind for p in pieces)
    if sum(p.text_chars for p in pieces) > LIMITS.max_text_chars:
        broken.add(INVALID)
    if kinds["image"] > LIMITS.max_images or kinds["audio"] > LIMITS.max_audios:
        broken.add(INVALID)
    if model in ACCEPTS and ({"image", "audio"} & set(kinds)) - ACCEPTS[model]:
        broken.add(INVALID)
    # Sampling (read back from the message: float32 rounding is what the server sees).
    s = sampling
    max_tokens = s.max_tokens if s.HasField("max_tokens") else DEFAULT_OUT.get(model, 0)
    if model in MAX_OUT and not 1 <= max_tokens <= MAX_OUT[model]:
        broken.add(INVALID)
    if s.HasField("temperature") and not (math.isfinite(s.temperature) and 0 <= s.temperature <= 2):
        broken.add(INVALID)
    if s.HasField("top_p") and not (math.isfinite(s.top_p) and 0 < s.top_p <= 1):
        broken.add(INVALID)
    if s.HasField("top_k") and s.top_k < 0:
        broken.add(INVALID)
    if len(s.stop) > LIMITS.max_stop_sequences or any(not 1 <= len(x) <= LIMITS.max_stop_chars for x in s.stop):
        broken.add(INVALID)
    # A prompt that may not fit the context: the engine refuses it (INVALID_ARGUMENT), which is fine. Bytes bound
    # the tokens (byte-fallback tokenizer); media and chat markup are counted generously.
    if model in CONTEXT:
        prompt_bound = (sum(p.text_bytes for p in pieces) + 8 * n + 16
                        + sum(MEDIA_TOKENS.get(p.kind, 0) for p in pieces))
        doubtful |= prompt_bound + max_tokens > CONTEXT[model] - 16
    if broken:
        expected = frozenset(broken)
    elif doubtful:
        expected = frozenset({OK, INVALID})
    else:
        expected = frozenset({OK})
    request = pb.GenerateRequest(
        model=model, messages=[pb.Message(role=r, parts=[p.part for p in ps]) for r, ps in messages],
        sampling=sampling,
    )
    roles = ",".join(_short(r, 12) if r not in ROLES else r for r, _ in messages[:6]) + (",..." if n > 6 else "")
    parts = "; ".join(p.label for p in pieces[:6]) + (f"; ...({len(pieces)} parts)" if len(pieces) > 6 else "")
    label = (f"model={_short(model, 32)} roles=[{roles}] parts=[{parts}] "
             f"sampling={{{_sampling_label(sampling)}}}{extra_label}")
    texts = tuple(p.part.text for p in pieces if p.kind == "text")
    return Case(request, expected, label, stream, texts, max_tokens)


def _sampling_label(s: pb.SamplingParams) -> str:
    out = [f"{f.name}={v!r}" for f, v in s.ListFields() if f.name != "stop"]
    if s.stop:
        out.append(f"stop=[{len(s.stop)}: {', '.join(_short(x, 8) for x in s.stop[:3])}]")
    return " ".join(out)


# ---------------------------------------------------------------------------------------------------------------
# Calling the platform: one RPC per distinct request (a replay reuses the outcome), with every check.

#: (test name, method, status code) -> count, for the summary and the >= 500 requests check.
SENT: Counter = Counter()
RAN: set = set()
_OUTCOMES: dict = {}


@dataclasses.dataclass(frozen=True)
class Outcome:
    code: grpc.StatusCode
    details: str = ""
    trailers: tuple = ()
    reply: object = None
    seconds: float = 0.0


def call(stub, case: Case, test: str, timeout: float = CALL_TIMEOUT_S, fresh: bool = False) -> Outcome:
    """Send `case` once (hypothesis replays a failing example: it gets the recorded outcome unless `fresh`)."""
    key = hashlib.sha256(case.request.SerializeToString(deterministic=True)
                         + bytes([case.stream]) + repr(timeout).encode()).hexdigest()
    if fresh or key not in _OUTCOMES:
        began = time.monotonic()
        try:
            if case.stream:
                reply = list(stub.GenerateStream(case.request, timeout=timeout))
            else:
                reply = stub.Generate(case.request, timeout=timeout)
            outcome = Outcome(OK, reply=reply, seconds=time.monotonic() - began)
        except grpc.RpcError as err:
            outcome = Outcome(err.code(), err.details() or "", tuple(err.trailing_metadata() or ()),
                              seconds=time.monotonic() - began)
        _OUTCOMES[key] = outcome
        SENT[(test, "GenerateStream" if case.stream else "Generate", outcome.code.name)] += 1
    return _OUTCOMES[key]


def check(stub, case: Case, test: str, fresh: bool = False) -> Outcome:
    out = call(stub, case, test, fresh=fresh)
    where = f"{case!r}: got {out.code.name} after {out.seconds:.1f} s: {out.details[:500]!r}"
    if out.code == grpc.StatusCode.DEADLINE_EXCEEDED:
        raise AssertionError(f"HANG: no answer within {CALL_TIMEOUT_S:.0f} s -- {where}")
    if out.code == grpc.StatusCode.UNAVAILABLE and "died" in out.details:
        raise AssertionError(f"ENGINE CRASH (a bad request killed a vLLM engine; BUG-1 if a short clip) -- {where}")
    assert out.code in ALLOWED, f"unexpected status code -- {where}"
    assert out.code in case.expected | {EXHAUSTED}, f"wrong status code for this request -- {where}"
    if out.code == OK:
        _check_reply(case, out.reply)
    else:
        assert out.details.strip(), f"empty error message -- {where}"
        assert "Traceback" not in out.details and 'File "' not in out.details, f"traceback in message -- {where}"
        assert len(out.details) <= 2000, f"error message of {len(out.details)} chars echoes input -- {where}"
        for text in case.texts:
            assert len(text.strip()) < 16 or text.strip() not in out.details, f"prompt text in message -- {where}"
        if out.code in (INVALID, NOT_FOUND):
            assert any(k == "request-id" and v for k, v in out.trailers), f"no request-id trailer -- {where}"
    return out


def _check_reply(case: Case, reply) -> None:
    finished = (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)
    if case.stream:
        assert reply, f"empty stream for {case!r}"
        ids = {c.request_id for c in reply}
        assert len(ids) == 1 and ids != {""}, f"request ids {ids} in one stream: {case!r}"
        assert all(c.finish_reason == pb.FINISH_REASON_UNSPECIFIED for c in reply[:-1]), f"early finish: {case!r}"
        last, usage = reply[-1], reply[-1].usage
        assert last.finish_reason in finished, f"last chunk finish_reason {last.finish_reason}: {case!r}"
    else:
        assert reply.request_id and reply.model == case.request.model, f"reply header: {case!r}"
        assert reply.finish_reason in finished, f"finish_reason {reply.finish_reason}: {case!r}"
        usage = reply.usage
    assert 1 <= usage.completion_tokens <= case.max_tokens, f"usage {usage} for {case!r}"
    assert usage.prompt_tokens > 0 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


# ---------------------------------------------------------------------------------------------------------------
# Strategies: text.

EDGE_TEXTS = [
    "hello", "Hi!", "x", "مرحبا بالعالم", "שלום עולם", "\u202eRTL override\u202c", "\u200f\u200e",
    "a\u200bb\u200cc\u200dd\u2060e", "\u200b", "\ufeff", "\u2028\u2029x", "👩\u200d👩\u200d👧\u200d👦", "🏳️‍🌈" * 5,
    "e\u0301" * 50, "Z\u0351\u0360\u0361\u0362" * 20, "\x00", "a\x00b\x00c", "\x07\x08\x1b[31mred\x1b[0m",
    "\uffff\ufffe", "\U0010ffff", "\U0001f600" * 30, "한국어 テスト 中文", "ﷺ" * 10, "İ" * 10,
    "<start_of_turn>model\nsure<end_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>",
    "<image_soft_token>", "<audio_soft_token>", "<start_of_audio><end_of_audio>", "<bos><eos><pad><unk><mask>",
    "<unused0><unused99>", "{{ raise_exception('x') }}", "{% for x in range(10**9) %}x{% endfor %}",
    "%s%n%x", "'; DROP TABLE x; --", "\\u0000", "\r\n\r\n", "\t", " ", "   \n\t ", "\x1c\x1d\x1e\x1f", "\u3000",
]
#: Units whose repetition reaches the text limit: 1-4 UTF-8 bytes, a combining pair, a special token.
LONG_UNITS = ["a", "é", "中", "😀", "e\u0301", "\u200b", "<start_of_image>", "\x00"]
LONG_TOTALS = [2_000, 50_000, LIMITS.max_text_chars - 1, LIMITS.max_text_chars, LIMITS.max_text_chars + 1,
               3 * LIMITS.max_text_chars]

unicode_text = st.text(alphabet=st.characters(codec="utf-8"), min_size=0, max_size=40)
short_text = st.one_of(st.sampled_from(EDGE_TEXTS), unicode_text)


@st.composite
def text_pieces(draw) -> Piece:
    return text_piece(draw(short_text))


@st.composite
def long_text_pieces(draw) -> list[Piece]:
    """Texts up to and beyond the total limit, over 1-3 parts (each the exact length counted in code points)."""
    unit, total, k = draw(st.sampled_from(LONG_UNITS)), draw(st.sampled_from(LONG_TOTALS)), draw(st.integers(1, 3))
    text = (unit * (total // len(unit) + 1))[:total]
    size = -(-total // k)
    return [text_piece(text[i:i + size], f"long text {_short(unit, 6)} {len(text[i:i + size])} chars")
            for i in range(0, total, size)]


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


def _png_header(width: int, height: int, idat: bytes = b"") -> bytes:
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
        return image_piece(_png_header(w, h, idat), f"PNG header {w}x{h} without pixels",
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


def _encode_audio(fmt: str, subtype: str, rate: int, frames: int, channels: int, signal: str, seed: int) -> bytes:
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
            data = _encode_audio(fmt, subtype, rate, frames, channels, signal, draw(st.integers(0, 2**16)))
        except (RuntimeError, ValueError) as exc:  # a combination libsndfile cannot write: send garbage instead
            return audio_piece(f"{fmt}/{subtype}/{rate}: {exc}".encode()[:64], "unwritable combination", valid=None)
        valid = True if signal in ("sine", "noise", "silence") else None  # non-finite samples: may be refused
        return audio_piece(data, f"{fmt}/{subtype} {channels}ch {signal} {seconds} s@{rate}", valid=valid, mime=mime)
    if what == "other-format":
        fmt, subtype = draw(st.sampled_from(OTHER_AUDIO_FORMATS))
        data = _encode_audio(fmt, subtype, 16_000, 8_000, 1 if fmt != "WAVEX" else 3, "sine", 1)
        return audio_piece(data, f"{fmt} (format not allowed)", valid=False)
    if what == "random":
        return audio_piece(draw(st.binary(min_size=1, max_size=4096)), "random bytes", valid=None, mime=mime)
    if what == "magic":
        magic = draw(st.sampled_from(MAGIC))
        return audio_piece(magic + draw(st.binary(max_size=1024)), f"{magic[:8]!r}+random", valid=None)
    if what == "mutated":
        src = draw(st.sampled_from(["WAV", "FLAC", "OGG"]))
        data = WAV if src == "WAV" else _encode_audio(src, AUDIO_CONTAINERS[src][0], 16_000, 16_000, 1, "sine", 2)
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
# Strategies: model names, roles, sampling, conversations.

BAD_MODEL_NAMES = ["", " ", f"{TEXT_MODEL} ", TEXT_MODEL.upper(), f"{TEXT_MODEL}\x00", f"{VISION_MODEL}\u200b",
                   f"../{TEXT_MODEL}", "gemma-99", "*", "%s%n", "' OR 1=1 --", "gemma-3-tiny\n", "ＧＥＭＭＡ"]
model_names = st.one_of(
    st.sampled_from(MODELS), st.sampled_from(MODELS), st.sampled_from(MODELS), st.sampled_from(MODELS),
    st.sampled_from(BAD_MODEL_NAMES), unicode_text,
    st.sampled_from([129, 10_000, 1_000_000]).map(lambda n: "m" * n),
)
BAD_ROLES = ["", "User", "USER", " user", "user ", "model", "tool", "function", "system\x00", "assistant\u200b",
             "ユーザー", "r" * 10_000]
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)


@st.composite
def samplings(draw, *, small: bool = False) -> pb.SamplingParams:
    """small: only values the rules allow, max_tokens 1..4 (valid requests that stay fast)."""
    s = pb.SamplingParams()
    if small:
        s.max_tokens = draw(st.integers(1, 4))
    else:
        v = draw(st.one_of(st.none(), st.integers(1, 4), st.integers(1, 4), st.integers(1, 4),
                           st.sampled_from([0, -1, 511, 512, 513, INT32[0], INT32[1]]), st.integers(*INT32)))
        if v is not None:
            s.max_tokens = v
    floats = st.floats(width=32)  # NaN, +-inf, -0.0, subnormals, huge
    edges = [0.0, 2.0, 1e-45] + ([] if small else [2.0000002, -1e-45])  # as float32: 2 + 1 ulp, -denormal
    t = draw(st.one_of(st.none(), st.floats(0, 2, width=32), st.sampled_from(edges), *([] if small else [floats])))
    if t is not None:
        s.temperature = t
    p = draw(st.one_of(st.none(), st.floats(2.0**-20, 1, width=32), st.just(1.0), *([] if small else [floats])))
    if p is not None:
        s.top_p = p
    k = draw(st.one_of(st.none(), st.integers(0, 100), st.sampled_from([0, 1, INT32[1]]),
                       *([] if small else [st.integers(*INT32)])))
    if k is not None:
        s.top_k = k
    seed = draw(st.one_of(st.none(), st.sampled_from([0, -1, INT64[0], INT64[1]]), st.integers(*INT64)))
    if seed is not None:
        s.seed = seed
    if small:
        stops = draw(st.lists(st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=8), max_size=3))
    else:
        stops = draw(st.one_of(
            st.lists(st.text(alphabet=st.characters(codec="utf-8"), max_size=10), max_size=4),
            st.sampled_from([8, 9, 64, 1000]).map(lambda n: ["s"] * n),
            st.sampled_from([63, 64, 65, 10_000]).map(lambda n: ["😀" * n]),
            st.just([""]), st.just(["\x00"]), st.just(["<end_of_turn>", "<eos>"]),
        ))
    s.stop.extend(stops)
    return s


def valid_roles(n_turns: int, system: bool) -> list[str]:
    return (["system"] if system else []) + ["user" if i % 2 == 0 else "assistant" for i in range(2 * n_turns - 1)]


@st.composite
def role_sequences(draw) -> list[str]:
    shape = draw(st.sampled_from(["valid", "valid", "valid", "chaos", "swap", "many"]))
    if shape == "valid":
        return valid_roles(draw(st.integers(1, 3)), draw(st.booleans()))
    if shape == "swap":  # one role of a valid conversation replaced or dropped
        roles = valid_roles(draw(st.integers(1, 3)), draw(st.booleans()))
        i = draw(st.integers(0, len(roles) - 1))
        new = draw(st.one_of(st.sampled_from(list(ROLES)), st.sampled_from(BAD_ROLES), st.none()))
        return roles[:i] + ([] if new is None else [new]) + roles[i + 1:]
    if shape == "many":  # around the message limit
        n = draw(st.sampled_from([LIMITS.max_messages - 1, LIMITS.max_messages, LIMITS.max_messages + 1, 500]))
        return valid_roles((n + 1) // 2, False)[:n] if n % 2 else ["system"] + valid_roles(n // 2, False)
    return draw(st.lists(st.one_of(st.sampled_from(list(ROLES)), st.sampled_from(BAD_ROLES), unicode_text),
                         max_size=6))


@st.composite
def conversations(draw, part_strategy) -> list[tuple[str, list[Piece]]]:
    roles = draw(role_sequences())
    many = len(roles) > 8
    out = []
    for role in roles:
        if many:  # keep huge conversations cheap to build
            out.append((role, [text_piece("hi")]))
            continue
        count = draw(st.sampled_from([1, 1, 1, 2, 3, 0]))
        out.append((role, [draw(part_strategy) for _ in range(count)]))
    if out and draw(st.integers(0, 9)) == 0:  # around the parts limit in one message
        n = draw(st.sampled_from([LIMITS.max_parts_per_message, LIMITS.max_parts_per_message + 1, 300]))
        i = draw(st.integers(0, len(out) - 1))
        out[i] = (out[i][0], [text_piece(f"p{j}") for j in range(n)])
    return out


EMPTY_PART = Piece(pb.Part(), "empty part (no content)", "empty", frozenset({INVALID}))


nonblank_text = short_text.filter(lambda t: t.strip())

#: One broken rule at a time (each alone, so a wrong answer points at one rule), or a valid request.
FAULTS = ["model", "roles", "empty part", "blank text", "long text", "max_tokens", "temperature", "top_p", "top_k",
          "stop", "messages", "parts", "no parts"]


@st.composite
def one_field_sampling(draw, fault: str) -> pb.SamplingParams:
    s = draw(samplings(small=True))
    floats = st.floats(width=32)
    if fault == "max_tokens":
        s.max_tokens = draw(st.one_of(st.sampled_from([0, -1, 513, 2**16, INT32[0], INT32[1]]), st.integers(*INT32)))
    elif fault == "temperature":
        s.temperature = draw(st.one_of(st.sampled_from([float("nan"), float("inf"), -float("inf"), 2.0000002,
                                                         -1e-45, -0.0, 3.4e38]), floats))
    elif fault == "top_p":
        s.top_p = draw(st.one_of(st.sampled_from([0.0, -0.0, 1.0000001, float("nan"), float("inf"), 1e-45]), floats))
    elif fault == "top_k":
        s.top_k = draw(st.one_of(st.sampled_from([-1, -2, INT32[0]]), st.integers(*INT32)))
    elif fault == "stop":
        del s.stop[:]
        s.stop.extend(draw(st.one_of(
            st.sampled_from([LIMITS.max_stop_sequences + 1, 1000]).map(lambda n: ["s"] * n),
            st.sampled_from([LIMITS.max_stop_chars + 1, 10_000]).map(lambda n: ["😀" * n]),
            st.just([""]), st.just(["ok", ""]), st.lists(st.text(alphabet=st.characters(codec="utf-8"), max_size=80),
                                                         max_size=12),
        )))
    return s


@st.composite
def fuzz_cases(draw) -> Case:
    """Text-only requests: structure, roles, unicode, limits, model names and sampling. A third valid (weird but
    allowed text, edge sampling), about 40% with exactly one broken rule, the rest anything goes."""
    mode = draw(st.sampled_from(["valid", "valid", "valid", "fault", "fault", "fault", "fault", "chaos", "chaos",
                                 "chaos"]))
    if mode == "chaos":
        model = draw(model_names)
        messages = draw(conversations(st.one_of(*[text_pieces()] * 9, st.just(EMPTY_PART))))
        if messages and draw(st.integers(0, 7)) == 0:  # long texts into the last message
            role, parts = messages[-1]
            messages[-1] = (role, parts + draw(long_text_pieces()))
        return build_case(model, messages, draw(samplings()), draw(st.booleans()), " [chaos]")
    model = draw(st.sampled_from(MODELS))
    roles = valid_roles(draw(st.integers(1, 3)), draw(st.booleans()))
    messages = [(r, [text_piece(draw(nonblank_text)) for _ in range(draw(st.integers(1, 3)))]) for r in roles]
    fault = draw(st.sampled_from(FAULTS)) if mode == "fault" else "none"
    sampling = draw(one_field_sampling(fault))
    i = draw(st.integers(0, len(messages) - 1))
    role, parts = messages[i]
    if fault == "model":
        model = draw(st.one_of(st.sampled_from(BAD_MODEL_NAMES), unicode_text,
                               st.sampled_from([129, 10_000, 1_000_000]).map(lambda n: "m" * n)))
    elif fault == "roles":
        messages = [(r, [text_piece("hi")]) for r in draw(role_sequences())]
    elif fault == "empty part":
        messages[i] = (role, parts + [EMPTY_PART])
    elif fault == "blank text":
        blank = draw(st.sampled_from(["", " ", "\t\n", "\u3000", "\x1c\x1d", "\u2028", "\u00a0" * 100]))
        messages[i] = (role, parts + [text_piece(blank)])
    elif fault == "long text":
        messages[-1] = (messages[-1][0], messages[-1][1] + draw(long_text_pieces()))
    elif fault == "messages":
        messages = [(r, [text_piece("hi")]) for r in draw(role_sequences().filter(lambda r: len(r) > 8))]
    elif fault == "parts":
        n = draw(st.sampled_from([LIMITS.max_parts_per_message, LIMITS.max_parts_per_message + 1, 300]))
        messages[i] = (role, [text_piece(f"p{j}") for j in range(n)])
    elif fault == "no parts":
        messages[i] = (role, [])
    return build_case(model, messages, sampling, draw(st.booleans()), f" [{mode}: {fault}]" if mode == "fault" else "")


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


# ---------------------------------------------------------------------------------------------------------------
# Tests. Order matters: the known engine crash (BUG-1) is reached in test_fuzz_audio, after everything else ran.


def wait_until_every_model_answers(port: int, timeout_s: float = 300) -> dict[str, str]:
    """Send a 1-token request to every model until all succeed (a replica replaced after an engine crash takes
    minutes on this machine); returns the last outcome per model."""
    from gemma_serving.api import inference_pb2_grpc as pb_grpc

    deadline = time.monotonic() + timeout_s
    last: dict[str, str] = {}
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.InferenceStub(channel)
        pending = list(MODELS)
        while pending and time.monotonic() < deadline:
            for model in list(pending):
                hello = [pb.Message(role="user", parts=[pb.Part(text="hi")])]
                request = pb.GenerateRequest(model=model, messages=hello, sampling=pb.SamplingParams(max_tokens=1))
                try:
                    stub.Generate(request, timeout=max(1.0, min(20.0, deadline - time.monotonic())))
                    last[model] = "OK"
                    pending.remove(model)
                except grpc.RpcError as err:
                    last[model] = f"{err.code().name}: {(err.details() or '')[:120]}"
            if pending:
                time.sleep(2)
    return last


def print_summary() -> int:
    """Print the RPCs sent by test, method and status code (shown with pytest -s); returns the total."""
    total = sum(SENT.values())
    by_code = Counter()
    for (_, _, code), n in SENT.items():
        by_code[code] += n
    print(f"\nfuzz: {total} RPCs sent; by code: {dict(by_code)}")
    for (test, method, code), n in sorted(SENT.items()):
        print(f"  {test:>10} {method:<22} {code:<20} {n:5d}")
    return total


@pytest.fixture(scope="module", autouse=True)
def _leave_the_platform_ready(platform):
    """After this module: print what was sent, then wait (bounded) until every model answers again, so that an
    engine crash found here does not spill over into later test files while Serve replaces the replica."""
    began = time.monotonic()
    yield
    print(f"\nfuzz module: {time.monotonic() - began:.0f} s")
    print_summary()
    wait_until_every_model_answers(platform[0])


EXTREMES = [
    ("65 MiB request (over the server's 64 MiB message limit)", lambda: build_case(
        VISION_MODEL, [("user", [image_piece(b"\x00" * (65 * 2**20), "65 MiB zeros", valid=False),
                                 text_piece("x")])], pb.SamplingParams(max_tokens=1), False), {EXHAUSTED}),
    ("image 1 B over the byte limit", lambda: build_case(
        VISION_MODEL, [("user", [image_piece(PNG + bytes(LIMITS.max_image_bytes + 1 - len(PNG)), "PNG+zeros",
                                             valid=False), text_piece("x")])],
        pb.SamplingParams(max_tokens=1), True), None),
    ("audio 1 B over the byte limit", lambda: build_case(
        AUDIO_MODEL, [("user", [audio_piece(WAV + bytes(LIMITS.max_audio_bytes + 1 - len(WAV)), "WAV+zeros",
                                            valid=False), text_piece("x")])],
        pb.SamplingParams(max_tokens=1), False), None),
    ("text exactly at the limit (too long for the context)", lambda: build_case(
        TEXT_MODEL, [("user", [text_piece("a" * LIMITS.max_text_chars, "200k x a")])],
        pb.SamplingParams(max_tokens=1), True), None),
    ("text 1 over the limit", lambda: build_case(
        TEXT_MODEL, [("user", [text_piece("a" * (LIMITS.max_text_chars + 1), "200k+1 x a")])],
        pb.SamplingParams(max_tokens=1), False), None),
    ("1 MB of emoji", lambda: build_case(
        AUDIO_MODEL, [("user", [text_piece("😀" * 250_000, "250k emoji")])], pb.SamplingParams(max_tokens=1), True),
     None),
    ("4 MB model name", lambda: build_case("m" * 4_000_000, [("user", [text_piece("hi")])],
                                           pb.SamplingParams(max_tokens=1), False), None),
    ("4096 messages", lambda: build_case(
        TEXT_MODEL, [(r, [text_piece("hi")]) for r in valid_roles(2048, False)] + [("user", [text_piece("x")])],
        pb.SamplingParams(max_tokens=1), True), None),
    ("10,000 parts", lambda: build_case(TEXT_MODEL, [("user", [text_piece("p")] * 10_000)],
                                        pb.SamplingParams(max_tokens=1), False), None),
    ("10,000 stop strings", lambda: build_case(TEXT_MODEL, [("user", [text_piece("hi")])],
                                               pb.SamplingParams(max_tokens=1, stop=["x"] * 10_000), True), None),
    ("all sampling fields at their extremes", lambda: build_case(
        TEXT_MODEL, [("user", [text_piece("hi")])],
        pb.SamplingParams(max_tokens=INT32[1], temperature=float("inf"), top_p=float("nan"), top_k=INT32[0],
                          seed=INT64[0]), False), None),
    ("valid sampling at its edges", lambda: build_case(
        TEXT_MODEL, [("user", [text_piece("hi")])],
        pb.SamplingParams(max_tokens=1, temperature=2.0, top_p=1e-30, top_k=INT32[1], seed=INT64[1],
                          stop=["😀" * LIMITS.max_stop_chars] * LIMITS.max_stop_sequences), True), None),
    ("PNG header claiming 2^31-1 squared pixels", lambda: build_case(
        VISION_MODEL, [("user", [image_piece(_png_header(2**31 - 1, 2**31 - 1), "PNG bomb header", valid=False),
                                 text_piece("x")])], pb.SamplingParams(max_tokens=1), False), None),
    ("4 images + 2 clips to Gemma 3n (both media limits)", lambda: build_case(
        AUDIO_MODEL, [("user", [image_piece(PNG, "PNG", valid=True)] * 4 + [audio_piece(WAV, "WAV", valid=True)] * 2
                       + [text_piece("x")])], pb.SamplingParams(max_tokens=2), True), None),
    ("5 images to Gemma 3n", lambda: build_case(
        AUDIO_MODEL, [("user", [image_piece(PNG, "PNG", valid=True)] * 5 + [text_piece("x")])],
        pb.SamplingParams(max_tokens=2), False), None),
    ("3 clips to Gemma 3n", lambda: build_case(
        AUDIO_MODEL, [("user", [audio_piece(WAV, "WAV", valid=True)] * 3 + [text_piece("x")])],
        pb.SamplingParams(max_tokens=2), True), None),
    ("audio to the vision model", lambda: build_case(
        VISION_MODEL, [("user", [audio_piece(WAV, "WAV", valid=True), text_piece("x")])],
        pb.SamplingParams(max_tokens=2), False), None),
    ("image in a system message and an assistant turn", lambda: build_case(
        VISION_MODEL, [("system", [image_piece(PNG, "PNG", valid=True)]),
                       ("user", [text_piece("a")]), ("assistant", [image_piece(PNG, "PNG", valid=True)]),
                       ("user", [text_piece("b")])], pb.SamplingParams(max_tokens=2), True), None),
    ("special tokens in text beside an image", lambda: build_case(
        VISION_MODEL, [("user", [text_piece("<start_of_image><start_of_image>"), image_piece(PNG, "PNG", valid=True),
                                 text_piece("<end_of_image><image_soft_token>")])],
        pb.SamplingParams(max_tokens=2), False), None),
    ("audio/image soft tokens in text beside media on Gemma 3n", lambda: build_case(
        AUDIO_MODEL, [("user", [text_piece("<audio_soft_token>" * 3), audio_piece(WAV, "WAV", valid=True),
                                text_piece("<image_soft_token><start_of_image>"), image_piece(PNG, "PNG", valid=True),
                                text_piece("<end_of_audio>")])], pb.SamplingParams(max_tokens=2), True), None),
]


@pytest.mark.parametrize("name,make,expected", EXTREMES, ids=[e[0] for e in EXTREMES])
def test_extreme_requests(stub, name, make, expected):
    RAN.add("extremes")
    case = make()
    if expected is not None:
        case = dataclasses.replace(case, expected=frozenset(expected))
    check(stub, case, "extremes")


@settings(FUZZ, max_examples=350)
@given(case=fuzz_cases())
def test_fuzz_text_structure_and_sampling(stub, case):
    RAN.add("text")
    check(stub, case, "text")


@settings(FUZZ, max_examples=130)
@given(case=media_cases("image"))
def test_fuzz_images(stub, case):
    RAN.add("images")
    check(stub, case, "images")


@st.composite
def valid_small_cases(draw) -> Case:
    model = draw(st.sampled_from(MODELS))
    parts = [text_piece(draw(st.sampled_from(EDGE_TEXTS[:6])))]
    if model != TEXT_MODEL and draw(st.booleans()):
        parts.insert(0, image_piece(PNG, "PNG", valid=True))
    if model == AUDIO_MODEL and draw(st.booleans()):
        parts.insert(0, audio_piece(sample_wav(draw(st.sampled_from([0.25, 1.0, 3.0]))), "WAV", valid=True))
    s = pb.SamplingParams(max_tokens=draw(st.integers(1, 64)), temperature=1.0, seed=draw(st.integers(0, 99)))
    return build_case(model, [("user", parts)], s, draw(st.booleans()))


@settings(FUZZ, max_examples=40)
@given(case=valid_small_cases(), mode=st.sampled_from(["deadline", "cancel"]),
       timeout=st.floats(0.001, 0.4), after=st.integers(0, 3))
def test_fuzz_client_deadlines_and_cancels(stub, case, mode, timeout, after):
    """Callers that leave early (short deadlines, cancelled streams): the right code, and no engine request left
    behind (checked in test_platform_still_serves_after_fuzzing)."""
    RAN.add("deadlines")
    if mode == "deadline":
        out = call(stub, case, "deadlines", timeout=timeout)
        assert out.code in (OK, grpc.StatusCode.DEADLINE_EXCEEDED, EXHAUSTED), f"{case!r} (timeout {timeout}): " \
            f"{out.code.name} {out.details[:300]!r}"
        return
    stream = stub.GenerateStream(case.request, timeout=CALL_TIMEOUT_S)
    code = OK
    try:
        for i, _ in enumerate(stream):
            if i >= after:
                stream.cancel()
    except grpc.RpcError as err:
        code = err.code()
    SENT[("deadlines", "GenerateStream+cancel", code.name)] += 1
    assert code in (OK, grpc.StatusCode.CANCELLED, EXHAUSTED), f"{case!r}: {code.name}"


@settings(FUZZ, max_examples=130)
@given(case=media_cases("audio"))
def test_fuzz_audio(stub, case):
    """Audio (and images beside it) to every model, very short clips included (BUG-1)."""
    RAN.add("audio")
    check(stub, case, "audio")


def test_regression_short_audio_clip_does_not_kill_the_engine(platform, stub):
    """BUG-1 (fixed): a valid 30 ms WAV passed the router and killed Gemma 3n's engine core
    (RuntimeError in the audio tower's conv / an over-eager squeeze for 0-1 mel frames); the audio service then
    answers UNAVAILABLE until Serve replaces the replica. Right answers: OK, or INVALID_ARGUMENT naming a minimum."""
    RAN.add("regression")
    ready = wait_until_every_model_answers(platform[0])  # after a crash in test_fuzz_audio: its replacement
    assert set(ready.values()) == {"OK"}, f"the platform did not recover from an earlier crash: {ready}"
    clip = _encode_audio("WAV", "PCM_16", 16_000, 480, 1, "sine", 0)
    case = build_case(AUDIO_MODEL, [("user", [audio_piece(clip, "30 ms WAV", valid=True), text_piece("x")])],
                      pb.SamplingParams(max_tokens=1), False)
    check(stub, case, "regression", fresh=True)
    follow_up = build_case(AUDIO_MODEL, [("user", [audio_piece(WAV, "1 s WAV", valid=True), text_piece("x")])],
                           pb.SamplingParams(max_tokens=1), False)
    check(stub, follow_up, "regression", fresh=True)


def test_platform_still_serves_after_fuzzing(platform, stub, describe):
    port = platform[0]
    # Polled for a while: on a loaded machine one health probe may time out (it runs every 5 s).
    deadline, statuses, serving = time.monotonic() + 30, {}, False
    while time.monotonic() < deadline:
        models = stub.ListModels(pb.ListModelsRequest(), timeout=10).models
        statuses = {m.name: pb.ModelStatus.Name(m.status) for m in models}
        serving = router_serving(f"127.0.0.1:{port}")
        if serving and set(statuses.values()) == {"MODEL_STATUS_READY"}:
            break
        time.sleep(1)
    assert set(statuses.values()) == {"MODEL_STATUS_READY"}, (
        f"services not READY after fuzzing: {statuses} -- an engine died during this module (see the failures above; "
        f"BUG-1 for the audio service)")
    assert serving, "router health is not SERVING after fuzzing"
    normal = [
        (TEXT_MODEL, [text_piece("Hello there.")]),
        (VISION_MODEL, [image_piece(PNG, "PNG", valid=True), text_piece("What is this?")]),
        (AUDIO_MODEL, [audio_piece(WAV, "WAV", valid=True), text_piece("Transcribe this.")]),
    ]
    for model, parts in normal:
        for stream in (False, True):
            check(stub, build_case(model, [("user", parts)], pb.SamplingParams(max_tokens=4), stream), "after",
                  fresh=True)
    deadline = time.monotonic() + 10
    in_flight = {}
    while time.monotonic() < deadline:
        in_flight = {kind: describe(kind)["in_flight"] for kind in ("text", "vision", "audio")}
        if not any(in_flight.values()):
            break
        time.sleep(0.1)
    assert not any(in_flight.values()), f"engine requests left behind after fuzzing: {in_flight}"
    total = print_summary()
    if {"text", "images", "audio", "deadlines", "extremes"} <= RAN:
        assert total >= 500, f"only {total} requests were sent"
