"""Small asyncio helpers shared by the replica's waits."""

from __future__ import annotations

import asyncio


def resolve(future: asyncio.Future) -> None:
    """Set `future`'s result to None unless it is already done (a timer callback that may race a cancel)."""
    if not future.done():
        future.set_result(None)
