"""Fuzz, part 5: audio clips (and images beside them) to every model, very short clips included; run after every
other fuzz module.

BUG-1 (found by this test, fixed in media.decode_audio by padding short clips): an audio clip shorter than ~40 ms
after resampling to 16 kHz passed the router's checks and then killed Gemma 3n's vLLM engine core.
test_regression_short_audio_clip_does_not_kill_the_engine keeps it fixed (OK, or INVALID_ARGUMENT with a minimum).
"""

from __future__ import annotations

from gemma_serving.api import inference_pb2 as pb
from hypothesis import given, settings

from tests.integration.fuzz_calls import (
    FUZZ,
    RAN,
    check,
    leave_the_platform_ready,  # noqa: F401 (autouse module fixture)
    wait_until_every_model_answers,
)
from tests.integration.fuzz_media_strategies import WAV, audio_piece, encode_audio, media_cases
from tests.integration.fuzz_oracle import AUDIO_MODEL, build_case, text_piece


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
    clip = encode_audio("WAV", "PCM_16", 16_000, 480, 1, "sine", 0)
    case = build_case(AUDIO_MODEL, [("user", [audio_piece(clip, "30 ms WAV", valid=True), text_piece("x")])],
                      pb.SamplingParams(max_tokens=1), False)
    check(stub, case, "regression", fresh=True)
    follow_up = build_case(AUDIO_MODEL, [("user", [audio_piece(WAV, "1 s WAV", valid=True), text_piece("x")])],
                           pb.SamplingParams(max_tokens=1), False)
    check(stub, follow_up, "regression", fresh=True)

