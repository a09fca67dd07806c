"""Fuzz, part 1: hand-made extreme requests (message-size limit, every limit exactly at and one over its edge,
sampling fields at their extremes, media beside special tokens)."""

from __future__ import annotations

import dataclasses

import pytest
from gemma_serving.api import inference_pb2 as pb

from tests.integration.fuzz_calls import (
    RAN,
    check,
    leave_the_platform_ready,  # noqa: F401 (autouse module fixture)
)
from tests.integration.fuzz_media_strategies import PNG, WAV, audio_piece, image_piece, png_header
from tests.integration.fuzz_oracle import (
    AUDIO_MODEL,
    EXHAUSTED,
    LIMITS,
    TEXT_MODEL,
    VISION_MODEL,
    build_case,
    text_piece,
)
from tests.integration.fuzz_strategies import INT32, INT64, valid_roles

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
        VISION_MODEL, [("user", [image_piece(png_header(2**31 - 1, 2**31 - 1), "PNG bomb header", valid=False),
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

