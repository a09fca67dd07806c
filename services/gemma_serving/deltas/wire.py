"""What one delta looks like on the channel: a msgspec struct encoded as a msgpack array; a channel message is a list
of deltas, framed on the TCP stream by a 4-byte big-endian length.

msgpack, not pickle: the router decodes whatever reaches its channel port, and a typed decoder refuses anything that
is not a list of deltas instead of executing it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import msgspec

from gemma_serving.engines.types import Chunk, FinishReason, TokenLogprob
from gemma_serving.errors import GemmaServingError, InternalError, named

log = logging.getLogger(__name__)


class Delta(msgspec.Struct, array_like=True, gc=False):
    """New output of one stream since its previous delta."""

    #: The router-chosen stream id (random 63-bit, a capability: only the router and the replica know it).
    stream: int
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish: str | None = None
    #: Seconds from the replica accepting the call to this delta (first delta only): the router derives queue time
    #: from it without comparing clocks across hosts.
    replica_s: float | None = None
    #: The stream's last delta.
    end: bool = False
    #: With sampling.logprobs: (token, logprob, ((alternative, logprob), ...)) per token of `text`.
    logprobs: list[tuple[str, float, list[tuple[str, float]]]] | None = None
    #: A call that failed on the replica (direct calls, deltas/calls.py): (error class name, message, field,
    #: retry_after_s) of a platform error; the stream's last delta.
    error: tuple[str, str, str | None, float | None] | None = None


ENCODER = msgspec.msgpack.Encoder()


def error_fields(exc: BaseException) -> tuple[str, str, str | None, float | None]:
    """What a replica sends of a failed call: a platform error's class and details; anything else is internal
    (its text stays in the replica's log, never on the wire)."""
    if isinstance(exc, GemmaServingError):
        return type(exc).__name__, exc.message, exc.field, exc.retry_after_s
    return InternalError.__name__, "the service failed to generate a response", None, None


def error_from_fields(fields: tuple[str, str, str | None, float | None]) -> GemmaServingError:
    """The platform error a failed call's delta stands for (InternalError for a class this side does not know)."""
    name, message, field, retry_after_s = fields
    return named(name)(message, field=field, retry_after_s=retry_after_s)


#: The largest channel message a router reads (one engine step of every stream bound for it, logprobs included); a
#: longer length prefix is not a sender of ours, and its connection is closed.
MAX_MESSAGE_BYTES = 64 << 20
_LENGTH = 4


def frame(body: bytes) -> bytes:
    """One message as it goes on a TCP stream: its length, then its body."""
    return len(body).to_bytes(_LENGTH, "big") + body


def framed(batch: list[Delta]) -> bytes:
    """One channel message as it goes on the stream: its length, then the msgpack list of deltas."""
    return frame(ENCODER.encode(batch))


class FrameReader:
    """Splits a TCP byte stream into messages (channel messages' msgpack bodies, or direct calls: deltas/calls.py)."""

    __slots__ = ("_buffer", "limit", "refused")

    def __init__(self, limit: int = MAX_MESSAGE_BYTES) -> None:
        self._buffer = bytearray()
        self.limit = limit
        #: The length prefix above `limit` that stopped this reader (nothing after it can be framed).
        self.refused: int | None = None

    def feed(self, data: bytes) -> list[bytes | memoryview]:
        """The messages `data` completes (none once `refused` is set)."""
        if self.refused is not None:
            return []
        if not self._buffer and len(data) >= _LENGTH:  # the usual case: whole messages, nothing carried over
            size = int.from_bytes(data[:_LENGTH], "big")
            if size + _LENGTH == len(data) and size <= self.limit:
                return [memoryview(data)[_LENGTH:]]
        buffer = self._buffer
        buffer += data
        messages, offset, end = [], 0, len(buffer)
        while end - offset >= _LENGTH:
            size = int.from_bytes(buffer[offset:offset + _LENGTH], "big")
            if size > self.limit:
                self.refused = size
                buffer.clear()
                return messages
            if end - offset - _LENGTH < size:
                break
            messages.append(bytes(buffer[offset + _LENGTH:offset + _LENGTH + size]))
            offset += _LENGTH + size
        del buffer[:offset]
        return messages


class FramedConnection(asyncio.Protocol):
    """A server's end of one peer's connection: its byte stream split into messages, each handed to `receive` at
    once. A length prefix above `limit` is not a peer of ours: nothing after it can be framed, so it is closed."""

    def __init__(self, receive: Callable[[bytes | memoryview], None], connections: set[asyncio.Transport],
                 limit: int, what: str) -> None:
        self._receive, self._connections, self._what = receive, connections, what
        self._reader = FrameReader(limit)
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self._transport = transport
        self._connections.add(transport)

    def data_received(self, data: bytes) -> None:
        reader, receive = self._reader, self._receive
        for message in reader.feed(data):
            receive(message)
        if reader.refused is not None:
            log.warning("closed a %s connection from %s: a message of %d bytes (at most %d)", self._what,
                        self._transport.get_extra_info("peername"), reader.refused, reader.limit)
            self._transport.close()

    def connection_lost(self, exc) -> None:
        self._connections.discard(self._transport)


def decoder() -> msgspec.msgpack.Decoder:
    """A decoder of one channel message (a batch of deltas); raises msgspec errors on anything else."""
    return msgspec.msgpack.Decoder(list[Delta])


def merge(deltas: list[Delta], queue_seconds: float | None = None) -> Chunk:
    """One chunk equivalent to `deltas` in order (all of one stream)."""
    last = deltas[-1]
    text = last.text if len(deltas) == 1 else "".join(d.text for d in deltas)
    finish = FinishReason(last.finish) if last.finish is not None else None
    logprobs = ()
    if last.logprobs is not None or (len(deltas) > 1 and any(d.logprobs for d in deltas)):
        logprobs = tuple(TokenLogprob(token, logprob, tuple(tuple(a) for a in top))
                         for d in deltas if d.logprobs for token, logprob, top in d.logprobs)
    return Chunk(text, last.prompt_tokens, last.completion_tokens, finish, queue_seconds, logprobs=logprobs)


def channel_address(host: str, port: int) -> str:
    """The address replicas are given: tcp://host:port (an IPv6 host in brackets)."""
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


def parse_channel_address(address: str) -> tuple[str, int]:
    """(host, port) of a channel address; ValueError for anything else."""
    if not address.startswith("tcp://"):
        raise ValueError(f"not a delta channel address: {address[:80]!r}")
    host, _, port = address[len("tcp://"):].rpartition(":")
    return host.strip("[]"), int(port)
