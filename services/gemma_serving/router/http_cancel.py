"""Cancelling a non-streaming HTTP request when its client goes away (vLLM's own server does the same).

A streaming response notices a gone client when a write fails; a unary one writes only at the end, so without this
the engine would generate a whole answer nobody reads. `until_disconnect` runs the work beside a watch on the ASGI
receive channel and cancels the work (which aborts the engine request) on `http.disconnect`.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Awaitable, TypeVar

from starlette.requests import Request

from gemma_serving.errors import ClientCancelled

T = TypeVar("T")


async def _disconnected(http: Request) -> None:
    while (await http.receive())["type"] != "http.disconnect":
        pass


async def until_disconnect(http: Request, work: Awaitable[T]) -> T:
    """The result of `work`, or ClientCancelled (with `work` cancelled) once the client disconnects first."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(http))
    try:
        await asyncio.wait((task, watch), return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        watch.cancel()
    if task.cancelled():
        raise ClientCancelled("the client disconnected before the answer was complete")
    return task.result()
