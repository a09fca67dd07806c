"""Closed-loop streaming load on the text service, recording what happened to every stream."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import grpc
from gemma_serving.api import inference_pb2 as pb
from gemma_serving.api import inference_pb2_grpc as pb_grpc
from gemma_serving.client import message

TEXT_MODEL = "gemma-3-tiny"


def text_request(max_tokens: int = 96) -> pb.GenerateRequest:
    return pb.GenerateRequest(model=TEXT_MODEL, messages=[message("Tell me a long story about the sea.")],
                              sampling=pb.SamplingParams(max_tokens=max_tokens, temperature=1.0))


@dataclass
class Stream:
    started: float
    chunks: int = 0
    ended: float | None = None
    code: str = "OK"


class TextLoad:
    """`concurrency` clients, each streaming one request after another until stopped."""

    def __init__(self, target: str, concurrency: int, max_tokens: int = 96) -> None:
        self._target, self._concurrency, self._max_tokens = target, concurrency, max_tokens
        self.streams: list[Stream] = []
        self._stopping = False
        self._tasks: list[asyncio.Task] = []

    async def _client(self, stub) -> None:
        while not self._stopping:
            s = Stream(time.monotonic())
            self.streams.append(s)
            try:
                async for _ in stub.GenerateStream(text_request(self._max_tokens), timeout=300):
                    s.chunks += 1
            except grpc.aio.AioRpcError as exc:
                s.code = exc.code().name
            s.ended = time.monotonic()

    async def _run(self) -> None:
        async with grpc.aio.insecure_channel(self._target) as channel:
            stub = pb_grpc.InferenceStub(channel)
            await asyncio.gather(*(self._client(stub) for _ in range(self._concurrency)))

    def start(self) -> TextLoad:
        self._tasks.append(asyncio.create_task(self._run()))
        return self

    async def stop(self, timeout_s: float = 120) -> None:
        """Let running streams finish (they must, within the timeout) and stop issuing new ones."""
        self._stopping = True
        await asyncio.wait_for(asyncio.gather(*self._tasks), timeout_s)

    def ended_between(self, t0: float, t1: float) -> list[Stream]:
        return [s for s in self.streams if s.ended is not None and t0 <= s.ended <= t1]

    def open_at(self, t: float) -> list[Stream]:
        return [s for s in self.streams if s.started <= t and (s.ended is None or s.ended > t)]
