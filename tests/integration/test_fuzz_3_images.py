"""Fuzz, part 3: images (valid, at their edges, mutated, lying headers, formats not allowed) to every model."""

from __future__ import annotations

from hypothesis import given, settings

from tests.integration.fuzz_calls import (
    FUZZ,
    RAN,
    check,
    leave_the_platform_ready,  # noqa: F401 (autouse module fixture)
)
from tests.integration.fuzz_media_strategies import media_cases


@settings(FUZZ, max_examples=130)
@given(case=media_cases("image"))
def test_fuzz_images(stub, case):
    RAN.add("images")
    check(stub, case, "images")

