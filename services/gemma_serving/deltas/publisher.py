"""The replica's end of the channel: deltas of all in-flight requests, batched per router, one message per pass."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict

import zmq

from gemma_serving.deltas.wire import ENCODER, Delta, error_fields
from gemma_serving.engines.types import Chunk

log = logging.getLogger(__name__)

#: Routers a replica keeps a socket open to (least recently used closed beyond): routers come and go on redeploys.
MAX_ROUTERS = 64
#: Messages queued per router before sends fail (a router that stopped reading); each holds one engine step.
SEND_HIGH_WATER_MARK = 100_000


class DeltaPublisher:
    """Batches deltas per router address and sends each batch as one message.

    A flush is scheduled once per event-loop pass (`loop.call_soon`), so every request's delta of one engine step
    (vLLM wakes all of them in the same pass) leaves in one message.
    """

    def __init__(self) -> None:
        # pyzmq's shared context: a context of our own would block the garbage collector (Context.__del__ waits for
        # its sockets) when a replica object goes away without close().
        self._context = zmq.Context.instance()
        self._sockets: OrderedDict[str, zmq.Socket] = OrderedDict()
        self._batches: dict[str, list[Delta]] = {}
        self._soon = False

    def sink(self, address: str, stream: int) -> StreamSink:
        """The sender of one request's deltas."""
        return StreamSink(self, address, stream)

    def put(self, address: str, delta: Delta) -> None:
        batch = self._batches.get(address)
        if batch is None:
            self._batches[address] = batch = []
        batch.append(delta)
        if not self._soon:
            self._soon = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Send every pending batch now (one message per router)."""
        self._soon = False
        batches, self._batches = self._batches, {}
        for address, batch in batches.items():
            try:
                self._socket(address).send(ENCODER.encode(batch), zmq.NOBLOCK)
            except zmq.ZMQError as exc:  # zmq.Again: that router stopped reading; its calls fail on their own
                log.warning("could not send %d deltas to router %s: %s", len(batch), address, exc)

    def _socket(self, address: str) -> zmq.Socket:
        sock = self._sockets.get(address)
        if sock is not None:
            self._sockets.move_to_end(address)
            return sock
        sock = self._context.socket(zmq.PUSH)
        sock.setsockopt(zmq.SNDHWM, SEND_HIGH_WATER_MARK)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(address)
        self._sockets[address] = sock
        while len(self._sockets) > MAX_ROUTERS:
            _, old = self._sockets.popitem(last=False)
            old.close()
        return sock

    def close(self) -> None:
        if self._batches:
            self.flush()
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()


class StreamSink:
    """One request's deltas to one router stream: the first carries the replica time, the last the end flag."""

    __slots__ = ("_publisher", "_address", "_stream", "_began", "_sent", "_ended", "_counts")

    def __init__(self, publisher: DeltaPublisher, address: str, stream: int) -> None:
        self._publisher, self._address, self._stream = publisher, address, stream
        self._began = time.monotonic()
        self._sent = self._ended = False
        self._counts = (0, 0)

    def send(self, chunk: Chunk) -> None:
        first = not self._sent
        finish = chunk.finish_reason
        self._ended = finish is not None
        delta = Delta(self._stream, chunk.text, chunk.prompt_tokens, chunk.completion_tokens,
                      None if finish is None else finish.value,
                      time.monotonic() - self._began if first else None, self._ended,
                      [(t.token, t.logprob, t.top) for t in chunk.logprobs] if chunk.logprobs else None)
        self._sent = True
        self._counts = (chunk.prompt_tokens, chunk.completion_tokens)
        self._publisher.put(self._address, delta)

    def fail(self, error: BaseException) -> None:
        """End the stream with `error` (a direct call's failure: deltas/calls.py)."""
        if not self._ended:
            self._ended = True
            self._publisher.put(self._address, Delta(self._stream, "", *self._counts, end=True,
                                                     error=error_fields(error)))

    def end(self) -> None:
        """Mark the stream complete (a no-op when its last chunk already carried a finish reason)."""
        if not self._ended:
            self._ended = True
            first = not self._sent
            self._publisher.put(self._address, Delta(self._stream, "", *self._counts,
                                                     replica_s=time.monotonic() - self._began if first else None,
                                                     end=True))
