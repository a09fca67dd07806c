"""Fuzz, part 4: callers that leave early -- short client deadlines and cancelled streams on valid small
requests."""

from __future__ import annotations

import grpc
from gemma_serving.api import inference_pb2 as pb
from gemma_serving.client.samples import sample_wav
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.integration.fuzz_calls import (
    CALL_TIMEOUT_S,
    FUZZ,
    RAN,
    SENT,
    call,
    leave_the_platform_ready,  # noqa: F401 (autouse module fixture)
)
from tests.integration.fuzz_media_strategies import PNG, audio_piece, image_piece
from tests.integration.fuzz_oracle import AUDIO_MODEL, EXHAUSTED, MODELS, OK, TEXT_MODEL, Case, build_case, text_piece
from tests.integration.fuzz_strategies import EDGE_TEXTS


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

