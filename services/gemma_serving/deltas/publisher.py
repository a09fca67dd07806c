"""The replica's end of the channel: deltas of all in-flight requests, batched per router, one message per pass,
over one TCP connection per router (plain asyncio streams on the replica's event loop, no I/O thread)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict

from gemma_serving.deltas.links import OutboundLink
from gemma_serving.deltas.wire import Delta, error_fields, framed
from gemma_serving.engines.types import Chunk

log = logging.getLogger(__name__)

#: Routers a replica keeps a connection open to (least recently used closed beyond): routers come and go on redeploys.
MAX_ROUTERS = 64
#: Bytes waiting for one router (in the connection's buffer, or while it connects) before messages are dropped: a
#: router that stopped reading. Its streams then fail on their own (deadline, the call's end without its tail).
MAX_BUFFERED_BYTES = 64 << 20
#: After a failed connection attempt, messages for that router are dropped for this long before the next attempt (a
#: router that is gone: no connection attempt per engine step).
RECONNECT_AFTER_S = 1.0


class DeltaPublisher:
    """Batches deltas per router address and sends each batch as one message.

    A flush is scheduled once per event-loop pass (`loop.call_soon`), so every request's delta of one engine step
    (vLLM wakes all of them in the same pass) leaves in one message.
    """

    def __init__(self) -> None:
        self._links: OrderedDict[str, _RouterLink] = OrderedDict()
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
                link = self._link(address)
            except ValueError as exc:  # not a router's channel address (only routers send them; never expected)
                log.warning("dropped %d deltas: %s", len(batch), exc)
                continue
            link.send(framed(batch))

    def _link(self, address: str) -> _RouterLink:
        loop = asyncio.get_running_loop()
        link = self._links.get(address)
        if link is not None and link.loop is loop:
            self._links.move_to_end(address)
            return link
        if link is not None:  # made on another event loop (tests run one per test): that loop's transport is gone
            link.close()
        link = self._links[address] = _RouterLink(address, loop)
        while len(self._links) > MAX_ROUTERS:
            _, old = self._links.popitem(last=False)
            old.close()
        return link

    def close(self) -> None:
        if self._batches:
            self.flush()
        for link in self._links.values():
            link.close()
        self._links.clear()


class _RouterLink(OutboundLink):
    """The connection to one router: messages written in order, held while it (re)connects, dropped (with one
    warning per episode) when the router cannot be reached or stopped reading."""

    def __init__(self, address: str, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(address, loop)
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._failed_at = float("-inf")
        self._dropped = 0

    def send(self, message: bytes) -> None:
        transport = self.transport
        if transport is not None:
            if transport.get_write_buffer_size() + len(message) <= MAX_BUFFERED_BYTES:
                transport.write(message)
                return
            self._drop(1, "it stopped reading")
            return
        if self.loop.time() - self._failed_at < RECONNECT_AFTER_S:
            self._drop(1, "it cannot be reached")
            return
        if self._held_bytes + len(message) > MAX_BUFFERED_BYTES:
            self._drop(1, "it is not connected yet")
            return
        self._held.append(message)
        self._held_bytes += len(message)
        self._start_connecting("delta-channel-connect")

    def _connect_failed(self, exc: OSError) -> None:
        self._failed_at = self.loop.time()
        self._drop(len(self._held), f"it cannot be reached ({type(exc).__name__})")
        self._held, self._held_bytes = [], 0

    def _connected(self) -> None:
        if self._dropped:
            log.info("delta channel to router %s open again after %d dropped messages", self.address, self._dropped)
            self._dropped = 0
        held, self._held, self._held_bytes = self._held, [], 0
        if held:
            self.transport.write(b"".join(held))

    def _drop(self, messages: int, why: str) -> None:
        if not self._dropped:
            log.warning("dropping delta messages for router %s: %s (its streams fail on their own)", self.address,
                        why)
        self._dropped += messages


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
