"""Fuzz, part 6 (last): after every fuzz module, the platform still serves normal requests, with no engine request
left behind, and the fuzz modules together sent at least 500 requests."""

from __future__ import annotations

import time

from gemma_serving.api import inference_pb2 as pb
from gemma_serving.local import router_serving

from tests.integration.fuzz_calls import (
    RAN,
    check,
    leave_the_platform_ready,  # noqa: F401 (autouse module fixture)
    print_summary,
)
from tests.integration.fuzz_media_strategies import PNG, WAV, audio_piece, image_piece
from tests.integration.fuzz_oracle import AUDIO_MODEL, TEXT_MODEL, VISION_MODEL, build_case, text_piece


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
