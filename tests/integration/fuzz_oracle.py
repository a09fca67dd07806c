"""The status oracle of the fuzz tests (tests/integration/test_fuzz_*.py): the documented rules (proto comments,
config limits, README) turned into the set of status codes that are right for each request.

About 600 requests go to the session platform, Generate and GenerateStream alike: random and truncated media,
media headers that lie, images and clips of every allowed container and some that are not, int32/int64 extremes
and NaN/inf in sampling, unicode edge cases (RTL, zero-width, emoji, NUL, chat special tokens), texts, roles, model
names and stop strings empty or far beyond their limits, wrong role orders, media sent to models that do not take
it, short client deadlines and cancels, and valid small requests (1-4 tokens) in between.

Every request carries an oracle built from the documented rules: the set of codes that are right for it. Any rule
broken: its code (INVALID_ARGUMENT, NOT_FOUND for an unknown model) -- so invalid input that comes back OK fails
too. Nothing broken: OK, except where the engine may legitimately refuse (a prompt that may exceed the context
length, undecodable mutated media): OK or INVALID_ARGUMENT. RESOURCE_EXHAUSTED is always acceptable. INTERNAL,
UNKNOWN, UNAVAILABLE and DEADLINE_EXCEEDED (a hang: no answer in 60 s) never are. Errors must carry a short message
without a traceback or the prompt text, and a request-id trailer (fuzz_calls.check).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter

import grpc
from gemma_serving.api import inference_pb2 as pb
from gemma_serving.config import SERVICE_MODALITIES, load_config

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
#: Clips shorter than this are at or below what Gemma 3n's audio tower survives today (< 641 samples at 16 kHz,
#: i.e. < 2 mel frames, ~40 ms: BUG-1). They are valid input by the documented rule ("(0, 30] seconds"), so the
#: oracle accepts OK or INVALID_ARGUMENT (a minimum duration) for them -- never UNAVAILABLE.
SHORT_CLIP_S = 0.05


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
    return Piece(pb.Part(text=text), label or f"text{abbreviate(text)}", "text",
                 frozenset({INVALID}) if blank else frozenset(), text_chars=len(text),
                 text_bytes=len(text.encode("utf-8")))


def abbreviate(text: str, n: int = 24) -> str:
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
    if s.HasField("top_k") and s.top_k < -1:  # 0 and -1 disable top-k, as in vLLM
        broken.add(INVALID)
    for name, low, high, low_open in (("min_p", 0, 1, False), ("repetition_penalty", 0, math.inf, True),
                                      ("presence_penalty", -2, 2, False), ("frequency_penalty", -2, 2, False)):
        value = getattr(s, name)
        above = value > low if low_open else value >= low
        if s.HasField(name) and not (math.isfinite(value) and above and value <= high):
            broken.add(INVALID)
    if s.HasField("top_logprobs") and not (0 <= s.top_logprobs <= 20 and (s.top_logprobs == 0 or s.logprobs)):
        broken.add(INVALID)
    if s.HasField("n") and not 1 <= s.n <= 8:
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
    roles = ",".join(abbreviate(r, 12) if r not in ROLES else r for r, _ in messages[:6]) + (",..." if n > 6 else "")
    parts = "; ".join(p.label for p in pieces[:6]) + (f"; ...({len(pieces)} parts)" if len(pieces) > 6 else "")
    label = (f"model={abbreviate(model, 32)} roles=[{roles}] parts=[{parts}] "
             f"sampling={{{_sampling_label(sampling)}}}{extra_label}")
    texts = tuple(p.part.text for p in pieces if p.kind == "text")
    return Case(request, expected, label, stream, texts, max_tokens)


def _sampling_label(s: pb.SamplingParams) -> str:
    out = [f"{f.name}={v!r}" for f, v in s.ListFields() if f.name != "stop"]
    if s.stop:
        out.append(f"stop=[{len(s.stop)}: {', '.join(abbreviate(x, 8) for x in s.stop[:3])}]")
    return " ".join(out)

