"""Fuzz, part 2: text-only requests -- structure, roles, unicode, limits, model names and sampling."""

from __future__ import annotations

from gemma_serving.api import inference_pb2 as pb
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.integration.fuzz_calls import (
    FUZZ,
    RAN,
    check,
    leave_the_platform_ready,  # noqa: F401 (autouse module fixture)
)
from tests.integration.fuzz_oracle import INVALID, LIMITS, MODELS, Case, Piece, build_case, text_piece
from tests.integration.fuzz_strategies import (
    BAD_MODEL_NAMES,
    INT32,
    conversations,
    long_text_pieces,
    model_names,
    role_sequences,
    samplings,
    short_text,
    text_pieces,
    unicode_text,
    valid_roles,
)

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


@settings(FUZZ, max_examples=350)
@given(case=fuzz_cases())
def test_fuzz_text_structure_and_sampling(stub, case):
    RAN.add("text")
    check(stub, case, "text")

